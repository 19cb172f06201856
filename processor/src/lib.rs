//! Rainbow's stream processor.
//!
//! What happens to one change event: the Kafka source ([`source`]) reads it, [`event::decode`]
//! types it, the [`merge::Merger`] releases it in source commit order once every input has
//! progressed past it, the [`core::Core`] turns it into warehouse rows (SCD2 dimensions,
//! `fact_sales`, dashboard aggregates), and the ClickHouse sink ([`sink`]) writes them in batches.
//! Checkpoints ([`checkpoint`]) store the core's state with every input position.
//!
//! The core and the merger are pure (no I/O, no clock): the replay runs the very same code over
//! the archived log.

pub mod core;
pub mod event;
pub mod merge;
pub mod tables;
pub mod workload;
