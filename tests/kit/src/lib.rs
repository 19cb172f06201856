//! What Rainbow's tests and benchmarks share, kept out of the crates that ship:
//!
//! * [`workload`]: a deterministic simulation of the source database at the seed's shape, with
//!   the change events the CDC would write for it (typed, and as Debezium JSON through the wire
//!   contract), and the state an oracle needs.

pub mod workload;
