//! Helpers shared by the integration tests. They talk to the real servers of the local stack
//! (`deploy/local/start`), located through the same RAINBOW_* variables as the binary.

#![allow(dead_code)]

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn pg_options(database: &str) -> sqlx::postgres::PgConnectOptions {
    sqlx::postgres::PgConnectOptions::new()
        .host(&env_or("RAINBOW_POSTGRES__HOST", "127.0.0.1"))
        .port(env_or("RAINBOW_POSTGRES__PORT", "5432").parse().expect("RAINBOW_POSTGRES__PORT"))
        .username(&env_or("RAINBOW_POSTGRES__USER", "rainbow"))
        .password(&env_or("RAINBOW_POSTGRES__PASSWORD", "rainbow"))
        .database(database)
}

pub fn brokers() -> String {
    env_or("RAINBOW_KAFKA__BROKERS", "127.0.0.1:9092")
}

pub fn clickhouse_url() -> String {
    env_or("RAINBOW_CLICKHOUSE__URL", "http://127.0.0.1:8123")
}

/// A name unique to this test process and call site, for databases and topics.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}_{}_{}_{}", std::process::id(), nanos, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A warehouse client on `database` of the local stack's ClickHouse.
pub async fn warehouse(database: &str) -> rainbow_schemas::warehouse::Warehouse {
    rainbow_schemas::warehouse::Warehouse::connect(&rainbow_schemas::warehouse::Connection {
        url: clickhouse_url(),
        user: env_or("RAINBOW_CLICKHOUSE__USER", "default"),
        password: env_or("RAINBOW_CLICKHOUSE__PASSWORD", ""),
        database: database.to_string(),
    })
    .await
    .expect("ClickHouse of the local stack (deploy/local/start) is reachable")
}
