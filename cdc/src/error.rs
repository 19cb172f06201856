//! Errors of the reader. Each says whose fault it is and what to do; [`CdcError::is_transient`]
//! tells a supervisor whether restarting the reader can help.

use crate::config::InvalidSetting;
use crate::event::EncodeError;
use crate::pgoutput::DecodeError;
use rainbow_schemas::wire::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    #[error(transparent)]
    Config(#[from] InvalidSetting),
    /// A `cdc.partition_by` column the table does not have.
    #[error("invalid configuration: {0}")]
    Routing(String),
    #[error(
        "PostgreSQL runs with wal_level={0}; logical decoding needs wal_level=logical \
         (set it in postgresql.conf and restart the server)"
    )]
    WalLevel(String),
    #[error("role {0:?} may not use replication: a superuser must run ALTER ROLE {0} REPLICATION")]
    NoReplicationPermission(String),
    #[error("cdc.tables names tables that do not exist: {}", .0.join(", "))]
    UnknownTables(Vec<String>),
    #[error(
        "replication slot {slot:?} is in use by another process (pid {pid}): another reader is \
         running on it; stop it, or give this one its own cdc.slot_name"
    )]
    SlotActive { slot: String, pid: i32 },
    #[error("replication slot {slot:?} exists for {what}; drop it or choose another cdc.slot_name")]
    SlotMismatch { slot: String, what: String },
    #[error(
        "replication slot {slot:?} is gone, but {path} records that streaming had reached {lsn}: \
         a new slot would start at the present and silently skip the changes in between. Take a \
         new snapshot instead: delete {path} (with snapshot_mode initial or always)"
    )]
    SlotLost { slot: String, lsn: Lsn, path: String },
    #[error("cannot reach Kafka at {brokers}: {reason} (is the stack up? settings: [kafka] brokers)")]
    KafkaUnreachable { brokers: String, reason: String },
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0}: its partitions did not show in the brokers' metadata within 30 s of its creation")]
    TopicMissing(#[from] rainbow_runtime::kafka::MissingTopic),
    #[error("Kafka did not acknowledge a record for {topic}: {reason}; nothing past the last acknowledged transaction was confirmed")]
    Delivery { topic: String, reason: String },
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("replication connection: {0}")]
    Replication(#[from] pg_walstream::ReplicationError),
    #[error("replication stream: {0}")]
    Decode(#[from] DecodeError),
    #[error("encoding an event: {0}")]
    Encode(#[from] EncodeError),
    #[error("replication stream: a row for relation {0} arrived before its Relation message")]
    UnknownRelation(u32),
    #[error("offsets file {path}: {reason}")]
    Offsets { path: String, reason: String },
    #[error("metrics endpoint on {addr}: {reason}")]
    Metrics { addr: String, reason: String },
}

impl CdcError {
    /// True when the cause may go away by itself (a server restarting, a network blip), so that
    /// restarting the reader is worth it. Configuration and permission errors are not.
    pub fn is_transient(&self) -> bool {
        match self {
            CdcError::KafkaUnreachable { .. }
            | CdcError::Kafka(_)
            | CdcError::TopicMissing(_)
            | CdcError::Delivery { .. }
            | CdcError::Postgres(_)
            | CdcError::SlotActive { .. } => true,
            CdcError::Replication(e) => e.is_transient(),
            _ => false,
        }
    }
}
