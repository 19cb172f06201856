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
    #[error(
        "Iceberg table {table}: column `{column}` changed from {was} to {now} in the source; Iceberg \
         cannot change that column's type in place. The records are kept in the archive's segments; \
         rename the table's column (or drop the table to rebuild it) and restart the archiver"
    )]
    TypeChanged { table: String, column: String, was: String, now: String },
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
