//! The end-to-end tests: one test binary, one module per part of the platform, each against the
//! real servers of the local stack (`deploy/local/start`), located through the same RAINBOW_*
//! variables as the binary. `common` holds what they share: the generic `rainbow <command>`
//! process fixture and its per-service wrappers, the test databases, the source workload.

mod common;

mod api;
mod cdc;
mod cdc_golden;
mod cli;
mod clickhouse_warehouse;
mod dashboards;
mod iceberg;
mod kafka_roundtrip;
mod leftovers;
mod postgres_schema;
mod processor;
mod replay;
mod reset;
mod status;
