//! Integration tests across Ferry's crates live in `tests/`; this library is empty.
