//! The subcommands that are implemented in the binary itself: `migrate` and `up`.

use crate::config::{Config, PostgresConfig};
use crate::{MigrateArgs, MigrateTarget, UpArgs};
use anyhow::Context;
use rainbow_schemas::postgres::MIGRATOR;
use rainbow_schemas::seed::{self, SeedOutcome, SeedSpec};
use rainbow_schemas::warehouse::{Connection, Warehouse};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::time::Duration;

/// A pool on the source database, with an error that says where it tried and what to do.
pub async fn pg_pool(pg: &PostgresConfig) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::new()
        .host(&pg.host)
        .port(pg.port)
        .username(&pg.user)
        .password(&pg.password)
        .database(&pg.database)
        .application_name("rainbow");
    PgPoolOptions::new()
        .max_connections(pg.max_connections)
        .acquire_timeout(Duration::from_secs(pg.connect_timeout_secs))
        .connect_with(options)
        .await
        .with_context(|| {
            format!(
                "cannot connect to PostgreSQL at {}:{} as {} (database {}); is the stack up \
                 (deploy/local/start)? settings: [postgres] / RAINBOW_POSTGRES__*",
                pg.host, pg.port, pg.user, pg.database
            )
        })
}

pub async fn warehouse(config: &Config) -> anyhow::Result<Warehouse> {
    let ch = &config.clickhouse;
    Warehouse::connect(&Connection {
        url: ch.url.clone(),
        user: ch.user.clone(),
        password: ch.password.clone(),
        database: ch.database.clone(),
    })
    .await
    .context("is the stack up (deploy/local/start)? settings: [clickhouse] / RAINBOW_CLICKHOUSE__*")
}

pub async fn migrate(config: &Config, args: &MigrateArgs) -> anyhow::Result<()> {
    if matches!(args.target, MigrateTarget::All | MigrateTarget::Postgres) || args.seed {
        let pool = pg_pool(&config.postgres).await?;
        let before = applied_migrations(&pool).await;
        MIGRATOR.run(&pool).await.context("applying the PostgreSQL migrations")?;
        let after = applied_migrations(&pool).await;
        println!(
            "postgres: schema up to date ({} migrations, {} applied now) at {}:{}/{}",
            MIGRATOR.iter().count(),
            after.saturating_sub(before),
            config.postgres.host,
            config.postgres.port,
            config.postgres.database
        );
        if args.seed {
            match seed::load(&pool, &SeedSpec::default()).await? {
                SeedOutcome::Loaded(c) => println!(
                    "postgres: reference data loaded: {} brands, {} categories, {} customers, {} sellers, \
                     {} payment methods, {} promotions, {} products",
                    c.brands, c.categories, c.customers, c.sellers, c.payments, c.promotions, c.products
                ),
                SeedOutcome::AlreadyPresent { brands, products } => println!(
                    "postgres: reference data already present ({brands} brands, {products} products); nothing loaded"
                ),
            }
        }
        pool.close().await;
    }
    if matches!(args.target, MigrateTarget::All | MigrateTarget::Clickhouse) {
        let wh = warehouse(config).await?;
        let statements = wh.apply_ddl(&config.clickhouse.database).await?;
        println!(
            "clickhouse: {statements} DDL statements applied to database {} (server {}, row validation {})",
            config.clickhouse.database,
            wh.server_version,
            if wh.validation { "on" } else { "off" }
        );
    }
    Ok(())
}

async fn applied_migrations(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

pub async fn up(config: &Config, args: &UpArgs) -> anyhow::Result<()> {
    migrate(config, &MigrateArgs { target: MigrateTarget::All, seed: !args.no_seed }).await?;
    println!("pipeline components:");
    for (name, what) in [
        ("api", "order API"),
        ("loadgen", "order producers"),
        ("cdc", "PostgreSQL -> Kafka change events"),
        ("process", "Kafka -> ClickHouse processor"),
        ("archive", "Kafka -> master dataset archiver"),
    ] {
        println!("  {name:<8} {what}: not available yet");
    }
    println!("the stack is bootstrapped; the pipeline runs as far as it exists today");
    Ok(())
}
