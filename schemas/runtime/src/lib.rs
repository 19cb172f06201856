//! The plumbing every long-running Rainbow service shares, written once:
//!
//! * [`store`]: object storage by URL (a local directory, `s3://`, `gs://`, `az://`), for the
//!   processor's checkpoints, the master dataset and the replay's output;
//! * [`kafka`]: where Kafka is, topic creation and deletion, partition discovery, end offsets;
//! * [`resilience`]: fault classification, retries with capped exponential backoff and jitter,
//!   the telemetry of dependencies (retries, down time, restarts) and health;
//! * [`children`]: child processes kept running under supervision, the way `rainbow up` runs
//!   the platform;
//! * [`serve`]: the HTTP endpoint of a service's metrics and health (`/healthz`, `/readyz`);
//! * [`exposition`]: reading that endpoint's Prometheus text format back (samples, sums,
//!   histogram quantiles), for `rainbow status` and the tests;
//! * [`forked`]: a structure serialised by a forked child from a copy-on-write view of memory,
//!   while the parent goes on changing it (the processor's checkpoints);
//! * [`memory`]: how soon the allocator (mimalloc, every Rainbow binary's) returns freed memory;
//! * [`worker`]: a component's blocking loop on a thread of its own, stopped by a flag;
//! * [`failpoint`]: crash and step failpoints for fault tests, compiled in only with the
//!   `failpoints` feature (test builds).
//!
//! It depends on no other Rainbow crate: the contracts live in `rainbow-schemas`, the domain in
//! the service crates.

pub mod children;
pub mod exposition;
pub mod failpoint;
pub mod forked;
pub mod identity;
pub mod kafka;
pub mod memory;
pub mod resilience;
pub mod serve;
pub mod store;
pub mod worker;
