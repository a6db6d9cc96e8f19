//! Test support: the local stack and fresh names per test.
//!
//! Every integration test gets its servers from [`Stack::get`], which runs the same
//! `scripts/stack up --quiet` a person runs (no second implementation), then gives the
//! test its own database ([`Cluster::create_database`]), names ([`unique_name`]) and
//! ports ([`free_port`]). Waits use deadlines ([`wait_until`]), never bare sleeps.
//! Helpers for topics live in [`kafka`]; a test that stops or kills a broker starts its
//! own with [`PrivateBroker`]; a schema registry of its own comes from
//! [`serve_registry`]. Every test that gets the stack runs under a deadline
//! ([`test_deadline`]): past it, its test binary ends with a message naming it.

mod broker;
pub mod events;
pub mod kafka;
mod names;
pub mod procs;
mod registry;
mod stack;
mod tls;
mod wait;
mod watchdog;

pub use broker::PrivateBroker;
pub use names::{free_port, unique_name};
pub use registry::serve_registry;
pub use stack::{coordinator_token, Cluster, SaslListener, Stack};
pub use tls::TestCa;
pub use wait::{wait_listening, wait_until};
pub use watchdog::{deadline as test_deadline, no_deadline as no_test_deadline};
