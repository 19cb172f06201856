//! Errors of the processor's runtime. The core's own refusals are [`crate::core::Rejected`] and
//! [`crate::event::DecodeError`]: those park one event and the pipeline goes on; these stop it.

use crate::config::InvalidSetting;

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Config(#[from] InvalidSetting),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
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
    #[error("the pipeline thread stopped unexpectedly: {0}")]
    Pipeline(String),
}

impl ProcessorError {
    /// Whether trying again later may succeed (the external system may come back).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ProcessorError::Kafka(_)
                | ProcessorError::Sink { .. }
                | ProcessorError::Engine(crate::engine::EngineError::Checkpoint(_))
        )
    }
}
