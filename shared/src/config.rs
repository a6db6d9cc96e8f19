//! Placeholder: replaced by the typed configuration tree.

/// The whole configuration of one Ferry process.
#[derive(Debug, Clone, Default)]
pub struct Config {}
