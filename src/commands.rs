//! The subcommands: each turns the configuration into a crate's settings and runs it.

use crate::config::{Config, PostgresConfig};
use crate::{LoadgenArgs, MigrateArgs, MigrateTarget, UpArgs};
use anyhow::Context;
use rainbow_api::{ApiSettings, AppState};
use rainbow_loadgen::{self as loadgen, BenchSettings, LoadgenSettings};
use rainbow_schemas::postgres::MIGRATOR;
use rainbow_schemas::seed::{self, SeedOutcome, SeedSpec};
use rainbow_schemas::shape::checks;
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

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The API's settings from `[api]`.
fn api_settings(config: &Config) -> ApiSettings {
    ApiSettings {
        request_timeout: Duration::from_millis(config.api.request_timeout_ms),
        body_limit: config.api.body_limit_bytes,
        shutdown_grace: Duration::from_secs(config.api.shutdown_grace_secs),
        order_cache_entries: config.api.order_cache_entries,
    }
}

/// Binds `api.listen`, with an error that says what to do when the port is taken.
async fn bind_api(config: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(&config.api.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (another `rainbow api` running?); set api.listen / RAINBOW_API__LISTEN",
            config.api.listen
        )
    })
}

/// The pool of the API, after checking that the schema is migrated.
async fn api_pool(config: &Config) -> anyhow::Result<PgPool> {
    let pool = pg_pool(&config.postgres).await?;
    let (orders, keys): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT to_regclass('orders')::text, to_regclass('api_idempotency_keys')::text")
            .fetch_one(&pool)
            .await
            .context("checking the source schema")?;
    if orders.is_none() || keys.is_none() {
        anyhow::bail!(
            "the database {} is not migrated (missing tables); run `rainbow migrate` first",
            config.postgres.database
        );
    }
    Ok(pool)
}

pub async fn api(config: &Config) -> anyhow::Result<()> {
    let pool = api_pool(config).await?;
    let listener = bind_api(config).await?;
    let state = AppState::new(pool.clone(), api_settings(config), Default::default());
    tracing::info!(listen = %config.api.listen, "order API listening (GET / lists the routes)");
    rainbow_api::serve(listener, state, shutdown_signal()).await.context("serving the API")?;
    pool.close().await;
    Ok(())
}

/// Where the CDC reader finds PostgreSQL and Kafka.
fn cdc_endpoints(config: &Config) -> (rainbow_cdc::SourceDatabase, rainbow_cdc::KafkaConnection) {
    let pg = &config.postgres;
    (
        rainbow_cdc::SourceDatabase {
            host: pg.host.clone(),
            port: pg.port,
            user: pg.user.clone(),
            password: pg.password.clone(),
            database: pg.database.clone(),
        },
        rainbow_cdc::KafkaConnection {
            brokers: config.kafka.brokers.clone(),
            client_id: config.kafka.client_id.clone(),
        },
    )
}

pub async fn cdc(config: &Config) -> anyhow::Result<()> {
    let (source, kafka) = cdc_endpoints(config);
    let summary = rainbow_cdc::run(&source, &kafka, &config.cdc, shutdown_signal())
        .await
        .context("the CDC reader stopped")?;
    println!("{}", cdc_summary(&summary));
    Ok(())
}

/// Where the processor finds Kafka and ClickHouse.
fn processor_endpoints(
    config: &Config,
) -> (rainbow_processor::KafkaConnection, rainbow_schemas::warehouse::Connection) {
    let ch = &config.clickhouse;
    (
        rainbow_processor::KafkaConnection {
            brokers: config.kafka.brokers.clone(),
            client_id: config.kafka.client_id.clone(),
        },
        rainbow_schemas::warehouse::Connection {
            url: ch.url.clone(),
            user: ch.user.clone(),
            password: ch.password.clone(),
            database: ch.database.clone(),
        },
    )
}

pub async fn process(config: &Config) -> anyhow::Result<()> {
    let (kafka, clickhouse) = processor_endpoints(config);
    println!(
        "process: Kafka topics {}.{}.<table> -> ClickHouse {} (metrics on http://{}/metrics)",
        config.processor_settings().topic_prefix.unwrap_or_default(),
        config.processor.schema,
        config.clickhouse.database,
        config.processor.metrics_listen
    );
    let summary =
        rainbow_processor::run(&kafka, &clickhouse, &config.processor_settings(), shutdown_signal())
            .await
            .context("the processor stopped")?;
    println!("{}", processor_summary(&summary));
    Ok(())
}

pub async fn archive(config: &Config) -> anyhow::Result<()> {
    let (kafka, _) = processor_endpoints(config);
    let settings = config.archive_settings();
    println!(
        "archive: Kafka topics {}.{}.<table> -> {}/master/ (metrics on http://{}/metrics)",
        settings.topic_prefix.as_deref().unwrap_or_default(),
        settings.schema,
        config.storage.url,
        settings.metrics_listen
    );
    let summary = rainbow_archive::archiver::run(&kafka, &config.storage.url, &settings, shutdown_signal())
        .await
        .context("the archiver stopped")?;
    println!("{}", archive_summary(&summary));
    Ok(())
}

fn archive_summary(s: &rainbow_archive::archiver::ArchiveSummary) -> String {
    format!(
        "archive: {} records in {} new segments ({} bytes); {} segments found already written",
        s.records, s.segments, s.bytes, s.existing_segments
    )
}

pub async fn replay(config: &Config, args: &crate::ReplayArgs) -> anyhow::Result<()> {
    use rainbow_replay::replay::{Days, ReplayArgs};
    let days = match (&args.from, &args.to, &args.days) {
        (Some(from), Some(to), _) => {
            anyhow::ensure!(from <= to, "--from {from} is after --to {to}");
            Days::Range { from: from.clone(), to: to.clone() }
        }
        (_, _, Some(list)) => Days::List(list.iter().cloned().collect()),
        _ => Days::All,
    };
    let replay = ReplayArgs {
        archive_url: args.archive.clone().unwrap_or_else(|| config.storage.url.clone()),
        out_url: args.out.clone(),
        days,
        naming: config.archive_settings(),
        config: config.replay.clone(),
        progress: !args.quiet,
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            eprintln!("\nreplay: interrupted; writing a checkpoint");
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    let rt = tokio::runtime::Handle::current();
    let started = std::time::Instant::now();
    let summary = tokio::task::spawn_blocking(move || rainbow_replay::replay::run(&replay, &rt, &stop))
        .await
        .context("the replay thread")?;
    let summary = match summary {
        Err(rainbow_replay::ReplayError::Interrupted) => {
            anyhow::bail!("interrupted: rerun the same command to resume from the checkpoint in {}", args.out)
        }
        other => other.context("the replay failed")?,
    };
    let secs = started.elapsed().as_secs_f64();
    println!(
        "replay: {} ({} segments): {} records read, {} events applied{} ({} in the selected days), {} re-deliveries dropped, {} rejected{} in {:.1} s",
        summary.days,
        summary.segments,
        summary.records_read,
        summary.events_applied,
        summary.resumed_at.map(|n| format!(", resumed after {n}")).unwrap_or_default(),
        summary.events_in_selection,
        summary.duplicates,
        summary.rejected,
        if summary.rejected > 0 { " (listed in _rejected.jsonl)" } else { "" },
        secs
    );
    for (table, rows, files) in &summary.tables {
        println!("  {}/{table}/: {rows} rows in {files} file(s)", args.out.trim_end_matches('/'));
    }
    Ok(())
}

/// Runs the checks and prints the report; `Ok(false)` when one failed.
pub async fn check(config: &Config, args: &crate::CheckArgs) -> anyhow::Result<bool> {
    let (w, what) = match &args.parquet {
        Some(url) => {
            let store = rainbow_runtime::store::Store::open(url)?;
            let rt = tokio::runtime::Handle::current();
            let w = tokio::task::spawn_blocking(move || rainbow_replay::replay::read_for_checks(&store, &rt))
                .await??;
            (w, format!("the replay output {url}"))
        }
        None => {
            let wh = warehouse(config).await?;
            (
                checks::from_clickhouse(&wh).await?,
                format!("ClickHouse database {}", config.clickhouse.database),
            )
        }
    };
    let mut findings = checks::run(&w);
    let compare = if args.parquet.is_some() { args.source } else { !args.no_source };
    if compare {
        let pool = pg_pool(&config.postgres).await?;
        findings.push(checks::against_source(&w, &pool).await?);
        pool.close().await;
    }
    println!("rainbow check of {what}:");
    for f in &findings {
        println!("  {}  {}: {}", if f.ok { "ok    " } else { "FAILED" }, f.check, f.detail);
    }
    let failed = findings.iter().filter(|f| !f.ok).count();
    println!("{} checks, {} failed", findings.len(), failed);
    Ok(failed == 0)
}

fn processor_summary(s: &rainbow_processor::RunSummary) -> String {
    format!(
        "process: {} events applied{}, {} re-deliveries dropped, {} dead letters, {} checkpoints written",
        s.events_applied,
        s.resumed_from.map(|id| format!(" (resumed from checkpoint {id})")).unwrap_or_default(),
        s.duplicates,
        s.dead_letters,
        s.checkpoints
    )
}

fn cdc_summary(s: &rainbow_cdc::RunSummary) -> String {
    format!(
        "cdc: {}{} transactions, {} change events sent; slot confirmed at {}",
        s.snapshot_rows.map(|r| format!("snapshot of {r} rows, ")).unwrap_or_default(),
        s.transactions,
        s.events,
        s.confirmed.map_or_else(|| "-".to_string(), |l| l.to_string())
    )
}

pub async fn loadgen(config: &Config, args: &LoadgenArgs) -> anyhow::Result<()> {
    let url = args.url.clone().unwrap_or_else(|| format!("http://{}", config.api.listen));
    if args.bench {
        let settings = BenchSettings {
            api_url: url,
            connections: args.connections,
            duration: args.duration.unwrap_or(Duration::from_secs(15)),
            seed: args.seed,
        };
        let pool = pg_pool(&config.postgres).await?;
        eprintln!(
            "benchmarking {} with {} connections, {} s per phase ...",
            settings.api_url,
            settings.connections,
            settings.duration.as_secs_f64()
        );
        let results = loadgen::bench(pool, settings).await?;
        print!("{}", loadgen::render_bench(&results, args.connections));
        return Ok(());
    }
    let settings = LoadgenSettings {
        api_url: url,
        producers: args.producers,
        rate: args.rate,
        count: args.count,
        duration: args.duration,
        days: args.days,
        churn_rate: args.churn_rate,
        orders: !args.no_orders,
        seed: args.seed,
        progress: !args.quiet,
    };
    settings.validate()?;
    let pool = pg_pool(&config.postgres).await?;
    let summary = loadgen::run(pool, settings, shutdown_signal()).await?;
    print!("{}", summary.render());
    if summary.counts.sent > 0 && summary.counts.ok == 0 {
        anyhow::bail!("no order succeeded");
    }
    Ok(())
}

/// Bootstraps the stack, then runs every pipeline component that exists in this process until
/// SIGINT/SIGTERM: the order API, producers that feed it, and the CDC reader.
pub async fn up(config: &Config, args: &UpArgs) -> anyhow::Result<()> {
    migrate(config, &MigrateArgs { target: MigrateTarget::All, seed: !args.no_seed }).await?;
    let pool = api_pool(config).await?;
    let listener = bind_api(config).await?;
    let state = AppState::new(pool.clone(), api_settings(config), Default::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let api = tokio::spawn(rainbow_api::serve(listener, state, stopped(stop_rx.clone())));
    println!("api: listening on http://{} (GET / lists the routes)", config.api.listen);
    let producers = (args.orders_per_sec > 0.0 || args.churn_per_sec > 0.0).then(|| {
        println!(
            "loadgen: {} orders/s to the API, {} catalogue changes/s",
            args.orders_per_sec, args.churn_per_sec
        );
        tokio::spawn(loadgen::run(
            pool.clone(),
            LoadgenSettings {
                api_url: format!("http://{}", config.api.listen),
                producers: 4,
                rate: args.orders_per_sec,
                count: None,
                duration: None,
                days: 28,
                churn_rate: args.churn_per_sec,
                orders: args.orders_per_sec > 0.0,
                seed: 42,
                progress: false,
            },
            stopped(stop_rx.clone()),
        ))
    });
    let (source, kafka) = cdc_endpoints(config);
    let cdc_config = config.cdc.clone();
    let cdc_stop = stopped(stop_rx.clone());
    let cdc = tokio::spawn(async move { rainbow_cdc::run(&source, &kafka, &cdc_config, cdc_stop).await });
    println!(
        "cdc: PostgreSQL changes -> Kafka topics {}.public.<table> (metrics on http://{}/metrics)",
        config.cdc.topic_prefix, config.cdc.metrics_listen
    );
    let (kafka, clickhouse) = processor_endpoints(config);
    let processor_config = config.processor_settings();
    let processor_stop = stopped(stop_rx.clone());
    let processor = tokio::spawn(async move {
        rainbow_processor::run(&kafka, &clickhouse, &processor_config, processor_stop).await
    });
    println!(
        "process: Kafka -> ClickHouse database {} (metrics on http://{}/metrics)",
        config.clickhouse.database, config.processor.metrics_listen
    );
    let (kafka, _) = processor_endpoints(config);
    let archive_config = config.archive_settings();
    let store_url = config.storage.url.clone();
    let archive_stop = stopped(stop_rx.clone());
    let archiver = tokio::spawn(async move {
        rainbow_archive::archiver::run(&kafka, &store_url, &archive_config, archive_stop).await
    });
    println!(
        "archive: Kafka -> master dataset {}/master/ (metrics on http://{}/metrics)",
        config.storage.url, config.archive.metrics_listen
    );
    println!("running; Ctrl-C stops");
    let mut cdc = cdc;
    let mut processor = processor;
    let mut archiver = archiver;
    let (cdc_outcome, processor_outcome, archive_outcome) = tokio::select! {
        _ = shutdown_signal() => (None, None, None),
        // The reader stops by itself only on an error (or with snapshot mode initial_only).
        outcome = &mut cdc => (Some(outcome), None, None),
        outcome = &mut processor => (None, Some(outcome), None),
        outcome = &mut archiver => (None, None, Some(outcome)),
    };
    let _ = stop_tx.send(true);
    let archive_outcome = match archive_outcome {
        Some(outcome) => outcome,
        None => archiver.await,
    };
    match archive_outcome? {
        Ok(summary) => println!("{}", archive_summary(&summary)),
        Err(e) => eprintln!("archive: stopped with an error: {e}"),
    }
    let cdc_outcome = match cdc_outcome {
        Some(outcome) => outcome,
        None => cdc.await,
    };
    match cdc_outcome? {
        Ok(summary) => println!("{}", cdc_summary(&summary)),
        Err(e) => eprintln!("cdc: stopped with an error: {e}"),
    }
    let processor_outcome = match processor_outcome {
        Some(outcome) => outcome,
        None => processor.await,
    };
    match processor_outcome? {
        Ok(summary) => println!("{}", processor_summary(&summary)),
        Err(e) => eprintln!("process: stopped with an error: {e}"),
    }
    if let Some(p) = producers {
        print!("{}", p.await?.context("order producers")?.render());
    }
    api.await?.context("serving the API")?;
    pool.close().await;
    Ok(())
}
