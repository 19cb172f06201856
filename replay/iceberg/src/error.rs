use thiserror::Error;

#[derive(Debug, Error)]
pub enum LakeError {
    #[error("the Iceberg catalog at {url} failed: {source}")]
    Catalog {
        url: String,
        #[source]
        source: Box<iceberg::Error>,
    },
    #[error("Iceberg table {table}: {source}")]
    Table {
        table: String,
        #[source]
        source: Box<iceberg::Error>,
    },
    #[error("Iceberg table {table}: {reason}")]
    Invalid { table: String, reason: String },
    /// A commit of our own (crate::commit) failed.
    #[error("Iceberg table {table}: the commit failed: {reason}")]
    Commit { table: String, reason: String },
    #[error("Iceberg setting {key} = {value:?}: {reason}")]
    Setting { key: &'static str, value: String, reason: String },
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

impl LakeError {
    pub(crate) fn table(table: &str) -> impl FnOnce(iceberg::Error) -> LakeError + '_ {
        move |source| LakeError::Table { table: table.to_string(), source: Box::new(source) }
    }
}
