//! Errors of the replay.

use rainbow_runtime::store::StoreError;

/// What went wrong, with the object, URL or setting it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("object store {url}: {reason}")]
    Store { url: String, reason: String },
    #[error("unsupported object store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(transparent)]
    Archive(#[from] rainbow_archive::ArchiveError),
    #[error(transparent)]
    Lake(#[from] rainbow_iceberg::LakeError),
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("segment {path}: {reason}")]
    Segment { path: String, reason: String },
    #[error(transparent)]
    Setting(#[from] rainbow_schemas::setting::InvalidSetting),
    #[error("the {0} writer panicked")]
    Writer(&'static str),
    #[error(transparent)]
    Shape(#[from] rainbow_schemas::shape::arrow::ShapeError),
    #[error("replay checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    #[error(transparent)]
    Engine(#[from] rainbow_processor::engine::EngineError),
    #[error("spilled replay output {path}: {reason}")]
    Spill { path: String, reason: String },
    #[error(
        "the archive at {url} holds no record for the requested days ({range}) in its Iceberg changelog \
         tables (an archive from before the tables: `rainbow archive` builds them from its segments at start)"
    )]
    NothingToReplay { url: String, range: String },
    #[error("{url} has no {table}/ (is it the --out of a rainbow replay?)")]
    NotAReplay { url: String, table: &'static str },
    #[error("interrupted")]
    Interrupted,
}

impl From<StoreError> for ReplayError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Failed { url, reason } => ReplayError::Store { url, reason },
            StoreError::BadUrl { url, reason } => ReplayError::BadUrl { url, reason },
        }
    }
}
