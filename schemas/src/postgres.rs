//! The source database's schema: sqlx migrations embedded at compile time from
//! `schemas/migrations/`, applied by `rainbow migrate`.

use sqlx::migrate::Migrator;

/// Every migration of the source schema, in order. Applying it is idempotent: sqlx records
/// applied versions in `_sqlx_migrations` and refuses a migration whose checksum changed.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The captured source tables, parents before children (the order reference data is loaded in).
pub const SOURCE_TABLES: [&str; 10] = [
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
];
