/// Why a schema can't be used or bytes can't be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AvroError {
    /// The schema JSON is not one Ferry can read.
    #[error("unsupported Avro schema: {0}")]
    Schema(String),
    /// Bytes ended early or hold an impossible value.
    #[error("malformed Avro data: {0}")]
    Malformed(String),
    /// A value does not fit the schema.
    #[error("value does not fit the schema: {0}")]
    Mismatch(String),
}
