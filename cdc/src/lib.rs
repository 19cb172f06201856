//! Rainbow's change-data-capture reader: PostgreSQL logical replication (pgoutput) to Kafka, in
//! the event format of Debezium's PostgreSQL connector, so consumers written for Debezium read
//! our topics unchanged.
//!
//! One change event flows: [`pgoutput`] decodes the replication stream, [`event`] encodes the
//! Debezium key and envelope with [`types`]' value mapping, [`sink`] hands it to Kafka and tracks
//! acknowledgements, and [`reader`] confirms to the slot only what Kafka acknowledged.
//!
//! # Delivery contract
//! * At-least-once, no gaps: the slot's confirmed position and the stored offset advance only to
//!   the end of a transaction whose every event Kafka acknowledged (acks=all, idempotent
//!   producer). After a crash the server re-sends every transaction after that position, so
//!   duplicates are limited to transactions in flight at the crash; resuming is by whole
//!   transactions, never inside one (so rows sharing an LSN cannot be skipped).
//! * Order: events of a key are in commit order within their partition (the key picks the
//!   partition). Across tables and partitions, every event carries its transaction's commit
//!   position in `source.sequence` = `["<commit LSN>", "<change LSN>"]` (decimal strings) and the
//!   commit time in `source.ts_ms`/`ts_us`/`ts_ns`. A consumer may order events by
//!   `(commit LSN, change LSN)`: commit LSNs increase with commit order; within a transaction
//!   change LSNs do not decrease, and equal change LSNs only occur for rows written by one
//!   multi-row statement to one table. Snapshot events (`op` = `r`) have a null commit LSN and
//!   the slot's consistent point as change LSN: they precede every streamed event. Rows of an
//!   on-demand incremental snapshot (`source.snapshot` = `incremental`, see [`incremental`])
//!   carry a commit and a change LSN like streamed changes and sit at that position.
//!   Note: real Debezium puts the *previous* transaction's commit LSN first in `sequence`;
//!   Rainbow puts the event's own transaction's, which is what commit ordering needs.

pub mod catalog;
pub mod config;
pub mod error;
pub mod event;
pub mod incremental;
pub mod metrics;
pub mod offsets;
pub mod pgoutput;
pub mod reader;
pub mod sink;
pub mod snapshot;
pub mod types;

pub use config::{CdcConfig, InvalidSetting, SnapshotMode};
pub use error::CdcError;
pub use metrics::CdcMetrics;
pub use rainbow_schemas::wire::Lsn;
pub use reader::{run, KafkaConnection, RunSummary, SourceDatabase};
