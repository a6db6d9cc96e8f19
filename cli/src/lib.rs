//! The library half of `ferry`: verbs whose work is tested in-process.

pub mod archive;
pub mod replay;
pub mod schema;
pub mod verify;
pub mod writer;
