//! Test support: the local stack and fresh names per test.
