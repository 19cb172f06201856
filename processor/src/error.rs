//! Errors of the processor's runtime. The core's own refusals are [`crate::core::Rejected`] and
//! [`crate::event::DecodeError`]: those park one event and the pipeline goes on; these stop it.

use crate::config::InvalidSetting;
use rainbow_runtime::resilience::{Classify, Dependency, Fault};

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Config(#[from] InvalidSetting),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    ConsumerLost(#[from] rainbow_runtime::kafka::ConsumerLost),
    #[error("Kafka topic {topic} does not exist (is `rainbow cdc` running with the same topic settings?)")]
    MissingTopic { topic: String },
    #[error(transparent)]
    Warehouse(#[from] rainbow_schemas::warehouse::WarehouseError),
    #[error("ClickHouse refused {table} after {attempts} attempts: {source}")]
    Sink {
        table: &'static str,
        attempts: u32,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("processor.instances = {instances}, but {reason}; the fact topics need as many partitions as instances, with equal counts (cdc.topic_partitions)")]
    Instances { instances: i32, reason: String },
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("metrics listener on {addr}: {source}")]
    Metrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Kafka topic {topic} partition {partition}: the processor had read up to offset {expected}, but the \
         next record is at offset {got}: {} records were removed (by retention, or the topic was \
         recreated) before the processor read them, and the warehouse would miss their changes. \
         Rebuild the warehouse from a new snapshot of the source (`rainbow reset cdc --yes` and \
         `rainbow reset warehouse --yes`: docs/operating.md, \"Reset recipes\"), or set \
         processor.allow_offset_gap=true to go on without them (counted in \
         rainbow_processor_offset_gap_records_total)", got - expected
    )]
    OffsetGap { topic: String, partition: i32, expected: i64, got: i64 },
    #[error(
        "Kafka topic {topic} partition {partition} ends at offset {end}, but the checkpoint resumes it at \
         {checkpoint}: the topic was recreated or the brokers are new, and the checkpoint belongs to \
         what was there before. To start over from this source, run `rainbow reset warehouse --yes`, \
         which deletes the processor's checkpoints and the warehouse tables they led to \
         (docs/operating.md, \"Reset recipes\")"
    )]
    OffsetBeyondEnd { topic: String, partition: i32, checkpoint: i64, end: i64 },
    #[error("the pipeline thread stopped unexpectedly: {0}")]
    Pipeline(String),
    #[error("{count} dead letter(s) were not delivered to Kafka ({reason}): not checkpointing past them")]
    DeadLetters { count: u64, reason: String },
    #[error(
        "stopped while ClickHouse did not take {table}: the rows since the last checkpoint are written \
         again at the next start"
    )]
    Interrupted { table: &'static str },
    #[error(
        "the CDC's heartbeats now name another source than the one this processor's state comes \
         from ({differences}): its events would be applied to the state of another database. To \
         start over from this source, run `rainbow reset warehouse --yes`, which deletes the \
         checkpoints and the warehouse tables they led to (docs/operating.md, \"Reset recipes\")"
    )]
    SourceChanged { differences: String },
}

impl Classify for ProcessorError {
    fn fault(&self) -> Fault {
        use crate::engine::EngineError;
        match self {
            ProcessorError::Config(_) | ProcessorError::Instances { .. } | ProcessorError::Metrics { .. } => {
                Fault::Input
            }
            ProcessorError::Kafka(_)
            | ProcessorError::ConsumerLost(_)
            | ProcessorError::DeadLetters { .. } => Fault::Transient(Dependency::Kafka),
            ProcessorError::Warehouse(e) if e.is_transient() => Fault::Transient(Dependency::ClickHouse),
            ProcessorError::Warehouse(_) | ProcessorError::Sink { .. } => Fault::Permanent,
            // A run file of the state that could not be read or written is fetched again from
            // the checkpoint store at the restart.
            ProcessorError::Engine(EngineError::Checkpoint(_) | EngineError::ColdState(_)) => {
                Fault::Transient(Dependency::ObjectStore)
            }
            ProcessorError::Engine(
                EngineError::PartitionMismatch { .. }
                | EngineError::ForeignSource { .. }
                | EngineError::SourceRewound { .. },
            )
            | ProcessorError::OffsetBeyondEnd { .. }
            | ProcessorError::SourceChanged { .. } => Fault::Input,
            ProcessorError::OffsetGap { .. } => Fault::Permanent,
            ProcessorError::Engine(
                EngineError::NoProgress | EngineError::SinkFailed(_) | EngineError::ColdUnexpected(_),
            )
            | ProcessorError::MissingTopic { .. }
            | ProcessorError::Pipeline(_)
            | ProcessorError::Interrupted { .. } => Fault::Permanent,
        }
    }
}
