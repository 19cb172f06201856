//! Errors of the reader. Each says whose fault it is and what to do; [`CdcError::is_transient`]
//! tells a supervisor whether restarting the reader can help.

use crate::config::InvalidSetting;
use crate::event::EncodeError;
use crate::pgoutput::DecodeError;
use rainbow_runtime::resilience::{Classify, Dependency, Fault};
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
    #[error(
        "PostgreSQL did not answer {what} within {ms} ms (cdc.server_timeout_ms): counted as away; \
         reconnecting"
    )]
    Unresponsive { what: &'static str, ms: u64 },
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
    #[error("incremental snapshot: {0}")]
    IncrementalSnapshot(String),
}

impl Classify for CdcError {
    /// Kafka's and PostgreSQL's faults are transient (a restart, an outage): the reader resumes
    /// from its slot. Settings and permissions are the user's; a lost slot and a broken stream
    /// need a person (the message says what to do).
    fn fault(&self) -> Fault {
        match self {
            CdcError::KafkaUnreachable { .. }
            | CdcError::Kafka(_)
            | CdcError::TopicMissing(_)
            | CdcError::Delivery { .. } => Fault::Transient(Dependency::Kafka),
            CdcError::Postgres(e) => postgres_fault(e),
            CdcError::SlotActive { .. } | CdcError::Unresponsive { .. } => {
                Fault::Transient(Dependency::Postgres)
            }
            CdcError::Replication(e) if e.is_transient() => Fault::Transient(Dependency::Postgres),
            CdcError::Config(_)
            | CdcError::Routing(_)
            | CdcError::WalLevel(_)
            | CdcError::NoReplicationPermission(_)
            | CdcError::UnknownTables(_)
            | CdcError::SlotMismatch { .. }
            | CdcError::Metrics { .. } => Fault::Input,
            _ => Fault::Permanent,
        }
    }
}

/// A PostgreSQL error's fault (see [`rainbow_schemas::postgres::is_transient`]): the connection,
/// the server shutting down or overloaded, a conflict are transient; a permission or a missing
/// object is the user's; anything else needs a person.
pub fn postgres_fault(e: &sqlx::Error) -> Fault {
    use rainbow_schemas::postgres::{is_settings, is_transient};
    if is_transient(e) {
        Fault::Transient(Dependency::Postgres)
    } else if is_settings(e) {
        Fault::Input
    } else {
        Fault::Permanent
    }
}
