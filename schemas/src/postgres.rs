//! The source database's schema: sqlx migrations embedded at compile time from
//! `schemas/migrations/`, applied by `rainbow migrate`; and what its errors mean
//! ([`is_transient`], [`is_settings`]).

use sqlx::migrate::Migrator;

/// Every migration of the source schema, in order. Applying it is idempotent: sqlx records
/// applied versions in `_sqlx_migrations` and refuses a migration whose checksum changed.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The captured source tables, parents before children (the order reference data is loaded in),
/// then the signal table ([`SIGNAL_TABLE`]).
pub const SOURCE_TABLES: [&str; 11] = [
    "brands",
    "categories",
    "customers",
    "sellers",
    "payments",
    "promotions",
    "products",
    "orders",
    "orderdetails",
    "inventories",
    SIGNAL_TABLE,
];

/// The signal table (migration `0004_rainbow_signal.sql`): on-demand snapshots are asked for,
/// and reported done, by rows inserted into it.
pub const SIGNAL_TABLE: &str = "rainbow_signal";

/// Signal `type` of a request for an incremental snapshot (Debezium's name).
pub const SIGNAL_EXECUTE_SNAPSHOT: &str = "execute-snapshot";

/// Signal `type` that `rainbow cdc` writes when a table's incremental snapshot is in Kafka.
pub const SIGNAL_SNAPSHOT_TABLE_DONE: &str = "snapshot-table-done";

/// The SQLSTATE class of a server error (its first two characters).
fn sqlstate_class(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.chars().take(2).collect()),
        _ => None,
    }
}

/// Whether trying again later may succeed: the connection failed or was lost, the server is
/// shutting down or starting (class 57), out of resources (53), or the transaction conflicted
/// with another (40); a failed migration counts by its cause.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Migrate(m) => matches!(&**m, sqlx::migrate::MigrateError::Execute(e) if is_transient(e)),
        _ => matches!(sqlstate_class(e).as_deref(), Some("08" | "57" | "53" | "40")),
    }
}

/// Whether the user's settings are the cause: the connection options, the credentials or
/// privileges (classes 28 and 42).
pub fn is_settings(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Configuration(_)) || matches!(sqlstate_class(e).as_deref(), Some("28" | "42"))
}
