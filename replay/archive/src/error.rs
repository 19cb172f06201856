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
    #[error(transparent)]
    ConsumerLost(#[from] rainbow_runtime::kafka::ConsumerLost),
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
    #[error(transparent)]
    Lake(#[from] rainbow_iceberg::LakeError),
    #[error("metrics endpoint {listen}: {reason}")]
    Metrics { listen: String, reason: String },
    #[error("the archiver's thread stopped unexpectedly: {0}")]
    Thread(String),
    #[error(
        "the archive at {url} holds records of another source ({differences}): its offsets belong \
         to that source, and archiving this one there would skip or mix records. Point storage.url \
         at a new archive, or move the old one away to start over (docs/operating.md, \"Reset recipes\")"
    )]
    ForeignSource { url: String, differences: String },
    #[error(
        "Kafka topic {topic} partition {partition} ends at offset {end}, but the archive holds it up to \
         offset {archived}: the topic was recreated or the brokers are new. Point storage.url at a new \
         archive, or move the old one away to start over (docs/operating.md, \"Reset recipes\")"
    )]
    OffsetBeyondEnd { topic: String, partition: i32, archived: i64, end: i64 },
    #[error(
        "Kafka topic {topic} partition {partition}: the next offset to archive is {expected}, but the next \
         record is at offset {got}: {} records were removed (by retention, or the topic was recreated) \
         before they were archived, and the master dataset would miss them. Set \
         archive.allow_offset_gap=true to go on without them (counted in \
         rainbow_archive_offset_gap_records_total)", got - expected
    )]
    OffsetGap { topic: String, partition: i32, expected: i64, got: i64 },
}

impl Classify for ArchiveError {
    fn fault(&self) -> Fault {
        use rainbow_iceberg::LakeError;
        match self {
            ArchiveError::Store(StoreError::Failed { .. }) => Fault::Transient(Dependency::ObjectStore),
            // The catalog or the warehouse did not answer, or another writer committed first.
            ArchiveError::Lake(LakeError::Catalog { source, .. } | LakeError::Table { source, .. })
                if !matches!(
                    source.kind(),
                    iceberg::ErrorKind::DataInvalid | iceberg::ErrorKind::FeatureUnsupported
                ) =>
            {
                Fault::Transient(Dependency::ObjectStore)
            }
            ArchiveError::Lake(LakeError::Setting { .. }) => Fault::Input,
            ArchiveError::Lake(_) => Fault::Permanent,
            ArchiveError::Kafka(_) | ArchiveError::ConsumerLost(_) => Fault::Transient(Dependency::Kafka),
            ArchiveError::Store(StoreError::BadUrl { .. })
            | ArchiveError::Setting(_)
            | ArchiveError::Metrics { .. }
            | ArchiveError::ForeignSource { .. }
            | ArchiveError::OffsetBeyondEnd { .. } => Fault::Input,
            ArchiveError::OffsetGap { .. } => Fault::Permanent,
            ArchiveError::MissingTopic { .. }
            | ArchiveError::Parquet(_)
            | ArchiveError::Arrow(_)
            | ArchiveError::Segment { .. }
            | ArchiveError::Thread(_) => Fault::Permanent,
        }
    }
}
