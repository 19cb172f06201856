//! The plumbing every long-running Rainbow service shares, written once:
//!
//! * [`store`]: object storage by URL (a local directory, `s3://`, `gs://`, `az://`), for the
//!   processor's checkpoints, the master dataset and the replay's output;
//! * [`kafka`]: where Kafka is, topic creation and deletion, partition discovery, end offsets;
//! * [`serve`]: the HTTP endpoint that serves a service's Prometheus metrics;
//! * [`worker`]: a component's blocking loop on a thread of its own, stopped by a flag;
//! * [`failpoint`]: crash and step failpoints for fault tests, compiled in only with the
//!   `failpoints` feature (test builds).
//!
//! It depends on no other Rainbow crate: the contracts live in `rainbow-schemas`, the domain in
//! the service crates.

pub mod failpoint;
pub mod kafka;
pub mod serve;
pub mod store;
pub mod worker;
