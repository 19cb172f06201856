//! Errors of the archiver and of the master dataset's segments.

use rainbow_runtime::resilience::{Classify, Dependency, Fault};
use rainbow_runtime::store::StoreError;

/// What went wrong, with the object, URL or setting it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topic {topic} does not exist (is `rainbow cdc` running, with the same topic naming?)")]
    MissingTopic { topic: String },
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("segment {path}: {reason}")]
    Segment { path: String, reason: String },
    #[error(transparent)]
    Setting(#[from] rainbow_schemas::setting::InvalidSetting),
    #[error("metrics endpoint {listen}: {reason}")]
    Metrics { listen: String, reason: String },
    #[error("the archiver's thread stopped unexpectedly: {0}")]
    Thread(String),
}

impl Classify for ArchiveError {
    fn fault(&self) -> Fault {
        match self {
            ArchiveError::Store(StoreError::Failed { .. }) => Fault::Transient(Dependency::ObjectStore),
            ArchiveError::Kafka(_) => Fault::Transient(Dependency::Kafka),
            ArchiveError::Store(StoreError::BadUrl { .. })
            | ArchiveError::Setting(_)
            | ArchiveError::Metrics { .. } => Fault::Input,
            ArchiveError::MissingTopic { .. }
            | ArchiveError::Parquet(_)
            | ArchiveError::Arrow(_)
            | ArchiveError::Segment { .. }
            | ArchiveError::Thread(_) => Fault::Permanent,
        }
    }
}
