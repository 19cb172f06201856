//! The subcommands: each turns the configuration into a crate's settings and runs it.

use crate::config::{Config, PostgresConfig};
use crate::{LoadgenArgs, MigrateArgs, MigrateTarget, UpArgs};
use anyhow::Context;
use rainbow_api::{ApiSettings, AppState};
use rainbow_loadgen::{self as loadgen, BenchSettings, LoadgenSettings};
use rainbow_schemas::postgres::MIGRATOR;
use rainbow_schemas::seed::{self, SeedOutcome, SeedSpec};
use rainbow_schemas::shape::checks;
use rainbow_schemas::warehouse::{Connection, Warehouse, WarehouseError};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::path::Path;
use std::time::{Duration, Instant};

fn pg_pool_options(pg: &PostgresConfig) -> (PgPoolOptions, PgConnectOptions) {
    let options = PgConnectOptions::new()
        .host(&pg.host)
        .port(pg.port)
        .username(&pg.user)
        .password(&pg.password)
        .database(&pg.database)
        .application_name("rainbow");
    let pool = PgPoolOptions::new()
        .max_connections(pg.max_connections)
        .acquire_timeout(Duration::from_secs(pg.connect_timeout_secs));
    (pool, options)
}

/// A pool on the source database, with an error that says where it tried and what to do.
pub async fn pg_pool(pg: &PostgresConfig) -> anyhow::Result<PgPool> {
    let (pool, options) = pg_pool_options(pg);
    pool.connect_with(options).await.with_context(|| {
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

/// `rainbow migrate`: the PostgreSQL migrations (sqlx, recorded in `_sqlx_migrations`), the
/// warehouse migrations (recorded in `{db}.rainbow_migrations`, see
/// [`rainbow_schemas::warehouse::Warehouse::migrate`]), and optionally the reference data.
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
        let database = &config.clickhouse.database;
        let report = wh.migrate(database).await?;
        if report.adopted {
            println!(
                "clickhouse: database {database} held a warehouse made before migrations: its tables and \
                 data are kept, the baseline (migrations 1 to {}) is recorded over them",
                rainbow_schemas::warehouse::BASELINE
            );
        }
        for (version, name) in &report.applied {
            println!("clickhouse: applied migration {version} ({name})");
        }
        println!(
            "clickhouse: warehouse up to date ({} migrations, {} applied now, {} statements run) in \
             database {database} (server {}, row validation {})",
            rainbow_schemas::warehouse::MIGRATIONS.len(),
            report.applied.len(),
            report.statements,
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

/// Resolves on SIGINT (Ctrl-C) or SIGTERM; on SIGTERM alone under `rainbow up` (its children).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    if rainbow_runtime::children::supervised() {
        // Under `rainbow up`: SIGINT stays ignored; the supervisor sends SIGTERM in its order.
        term.recv().await;
        return;
    }
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
        max_in_flight: config.api.max_in_flight,
        sold_count_interval: Duration::from_millis(config.api.sold_count_interval_ms),
    }
}

/// Binds `api.listen`, with an error that says what to do when the port is taken.
async fn bind_api(config: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    rainbow_runtime::serve::bind(&config.api.listen).await.map_err(|e| {
        SettingsError(format!(
            "cannot listen on {} ({e}; another `rainbow api` running?); set api.listen / RAINBOW_API__LISTEN",
            config.api.listen
        ))
        .into()
    })
}

/// The pool of the API, connecting as requests need it (the API serves, and answers 503, while
/// PostgreSQL is away), after checking that the schema is migrated when PostgreSQL answers.
async fn api_pool(config: &Config) -> anyhow::Result<PgPool> {
    let (pool, options) = pg_pool_options(&config.postgres);
    let pool = pool.connect_lazy_with(options);
    let tables: Result<(Option<String>, Option<String>), sqlx::Error> = sqlx::query_as(
        "SELECT to_regclass('orders')::text,
                    CASE WHEN to_regclass('api_idempotency_keys') IS NOT NULL
                          AND to_regclass('api_sold_count_pending') IS NOT NULL THEN 'api' END",
    )
    .fetch_one(&pool)
    .await;
    let (orders, keys) = match tables {
        Ok(t) => t,
        Err(e) if rainbow_schemas::postgres::is_transient(&e) => {
            tracing::warn!(
                error = %e,
                "PostgreSQL does not answer at {}:{}; serving anyway, requests are answered 503 until it does",
                config.postgres.host,
                config.postgres.port
            );
            return Ok(pool);
        }
        Err(e) => return Err(e).context("checking the source schema"),
    };
    if orders.is_none() || keys.is_none() {
        return Err(SettingsError(format!(
            "the database {} is not migrated (missing tables); run `rainbow migrate` first",
            config.postgres.database
        ))
        .into());
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
        "archive: Kafka topics {}.{}.<table> -> Iceberg changelog tables under {} (metrics on http://{}/metrics)",
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

/// Runs `work` on the archive's changelog tables (the archive's settings, validated, and the
/// store's URL) on a blocking thread: the tables' catalog is driven synchronously.
async fn on_tables<T: Send + 'static>(
    config: &Config,
    work: impl FnOnce(
            &str,
            &rainbow_archive::ArchiveConfig,
            &tokio::runtime::Handle,
        ) -> Result<T, rainbow_archive::ArchiveError>
        + Send
        + 'static,
) -> anyhow::Result<T> {
    let settings = config.archive_settings();
    settings.validate()?;
    let url = config.storage.url.clone();
    let rt = tokio::runtime::Handle::current();
    Ok(tokio::task::spawn_blocking(move || work(&url, &settings, &rt)).await??)
}

pub async fn archive_expire(config: &Config, hours: Option<u64>) -> anyhow::Result<()> {
    // The command line refuses --older-than-hours 0.
    let hours = match (hours, config.archive_settings().snapshot_retention_hours) {
        (Some(hours), _) => hours,
        (None, 0) => {
            println!(
                "archive expire: archive.snapshot_retention_hours is 0 (every snapshot kept): nothing removed; \
                 --older-than-hours N removes the snapshots older than N hours"
            );
            return Ok(());
        }
        (None, hours) => hours,
    };
    let done = on_tables(config, move |url, settings, rt| {
        rainbow_archive::archiver::expire_snapshots(url, settings, hours, rt)
    })
    .await
    .context("expiring the changelog tables' snapshots failed")?;
    if done.is_empty() {
        println!("archive expire: no snapshot older than {hours} h");
    }
    for (table, n) in done {
        println!("archive expire: {table}: {n} snapshots older than {hours} h removed from the metadata");
    }
    Ok(())
}

pub async fn archive_compact(config: &Config, target_mb: u64) -> anyhow::Result<()> {
    // The command line keeps --target-mb in 1 .. 2^44: the bytes fit a u64.
    let target_bytes = target_mb << 20;
    let done = on_tables(config, move |url, settings, rt| {
        rainbow_archive::archiver::compact_tables(url, settings, target_bytes, rt)
    })
    .await
    .context("compacting the changelog tables failed")?;
    if done.is_empty() {
        println!("archive compact: no changelog table in the catalog yet (nothing archived)");
    }
    for (table, s) in done {
        if s.files_rewritten == 0 {
            println!(
                "archive compact: {table}: {} data files, no run of small files to rewrite",
                s.files_before
            );
        } else {
            println!(
                "archive compact: {table}: {} data files -> {}: {} files rewritten as {} ({} records, {} -> {} bytes{})",
                s.files_before,
                s.files_after,
                s.files_rewritten,
                s.files_written,
                s.records,
                s.bytes_rewritten,
                s.bytes_written,
                if s.retries > 0 { format!("; committed again {} times after appends", s.retries) } else { String::new() }
            );
        }
    }
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
    let out = args.out.clone().unwrap_or_else(|| config.replay.out_url.clone());
    let replay = ReplayArgs {
        archive_url: args.archive.clone().unwrap_or_else(|| config.storage.url.clone()),
        out_url: out.clone(),
        days,
        naming: config.archive_settings(),
        config: rainbow_replay::ReplayConfig {
            iceberg: config.replay.iceberg || args.iceberg,
            shards: args.shards.unwrap_or(config.replay.shards),
            processes: args.processes.unwrap_or(config.replay.processes),
            process: args.process.unwrap_or(config.replay.process),
            ..config.replay.clone()
        },
        progress: !args.quiet,
        combine: args.combine.then(|| std::time::Duration::from_secs(args.wait)),
    };
    let split = (replay.config.processes > 1 && !args.combine)
        .then_some((replay.config.process, replay.config.processes));
    let iceberg =
        replay.config.iceberg.then(|| (replay.config.namespace.clone(), replay.config.catalog_url.clone()));
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
            anyhow::bail!("interrupted: rerun the same command to resume from the checkpoint in {out}")
        }
        other => other.context("the replay failed")?,
    };
    let secs = started.elapsed().as_secs_f64();
    if let Some((process, processes)) = split {
        let mine: Vec<String> = summary.shards.iter().map(|s| s.shard.to_string()).collect();
        println!(
            "replay: process {process} of {processes}: shard(s) {} done ({} records read, {} events applied) in {secs:.1} s; \
             once every process is done, the same command with --combine writes the tables to {out}",
            mine.join(", "),
            summary.records_read,
            summary.events_applied,
        );
        return Ok(());
    }
    println!(
        "replay: {} ({} data files, {} shard(s)): {} records read ({} from their raw envelope), {} events applied{} ({} in the selected days), {} re-deliveries dropped, {} rejected{} in {:.1} s",
        summary.days,
        summary.files,
        summary.shards.len(),
        summary.records_read,
        summary.records_from_envelopes,
        summary.events_applied,
        summary.resumed_at.map(|n| format!(", resumed after {n}")).unwrap_or_default(),
        summary.events_in_selection,
        summary.duplicates,
        summary.rejected,
        if summary.rejected > 0 { " (listed in _rejected.jsonl)" } else { "" },
        secs
    );
    for (table, rows, files) in &summary.tables {
        println!("  {}/{table}/: {rows} rows in {files} file(s)", out.trim_end_matches('/'));
    }
    if let Some((namespace, catalog)) = iceberg {
        println!(
            "  and as Iceberg tables {namespace}.<table> (catalog {})",
            catalog.as_deref().unwrap_or("sqlite:<out>/iceberg/catalog.db")
        );
    }
    Ok(())
}

/// Rows per insert of `rainbow load` (one block: ClickHouse inserts it whole or not at all).
const LOAD_CHUNK_ROWS: usize = 100_000;

/// The table, in the database `rainbow load` fills, that records its progress: a row with an
/// empty `table_name` when a load of `source` starts, then one row per table loaded whole.
const LOADS_TABLE: &str = "rainbow_loads";
const LOADS_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS {db}.rainbow_loads (
    source String,
    table_name String,
    rows UInt64,
    loaded_at DateTime DEFAULT now()
) ENGINE = MergeTree() ORDER BY (source, table_name)";

/// Environment variable of the failpoint `crash_after_events=N` (tests): abort `rainbow load`
/// once N rows have been inserted in this run, before the table being loaded is recorded.
const LOAD_FAILPOINT_VAR: &str = "RAINBOW_LOAD_FAILPOINT";

/// `rainbow load --from URL`: every table of a replay's output into the ClickHouse database of
/// the settings, migrated first. A fresh load needs every table empty (so a load never mixes with
/// other rows). It is resumable: progress is recorded in [`LOADS_TABLE`], and a rerun of the same
/// `--from` skips the tables loaded whole and empties the one it was interrupted in before loading
/// it again; a database holding a load of another source is refused. Rows go in as RowBinary
/// inserts of [`LOAD_CHUNK_ROWS`], each bounded by `processor.sink_timeout_ms` and retried with
/// backoff while the failure is transient (a chunk inserted twice collapses under `FINAL`, as the
/// processor's re-deliveries do).
pub async fn load(config: &Config, from: &str) -> anyhow::Result<()> {
    use rainbow_schemas::shape::{arrow::row_binary, TABLES};
    use rainbow_schemas::warehouse::bounded;
    let store = rainbow_runtime::store::Store::open(from)?;
    // What the load records as its source: a local directory by its absolute path, so that a
    // rerun from elsewhere (or with a trailing '/') is recognised as the same load.
    let source = std::fs::canonicalize(from)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| from.trim_end_matches('/').to_string());
    let source = source.as_str();
    for t in TABLES {
        if store.list(t.name).await?.is_empty() {
            return Err(SettingsError(format!(
                "{from} has no table {} (`rainbow replay --out` writes <out>/<table>/part-*.parquet)",
                t.name
            ))
            .into());
        }
    }
    let wh = warehouse(config).await?;
    let database = &config.clickhouse.database;
    wh.migrate(database).await?;
    let limit = Duration::from_millis(config.processor.sink_timeout_ms);
    let execute = |sql: String| {
        let wh = wh.clone();
        async move { bounded(limit, wh.client.query(&sql).execute()).await.with_context(|| sql) }
    };
    let query = wh
        .client
        .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
        .bind(database.as_str())
        .bind(LOADS_TABLE);
    let recorded: Vec<(String, String)> = if bounded(limit, query.fetch_one::<u64>()).await? > 0 {
        let query = wh.client.query(&format!("SELECT source, table_name FROM {database}.{LOADS_TABLE}"));
        bounded(limit, query.fetch_all()).await?
    } else {
        Vec::new()
    };
    if let Some((other, _)) = recorded.iter().find(|(s, _)| s != source) {
        return Err(SettingsError(format!(
            "{database} holds a load of {other}: load {from} into a fresh database \
             (RAINBOW_CLICKHOUSE__DATABASE=<new name>; docs/batch.md, the Kappa swap)"
        ))
        .into());
    }
    let resuming = !recorded.is_empty();
    let loaded = |name: &str| recorded.iter().any(|(_, t)| t == name);
    let mut held = Vec::with_capacity(TABLES.len());
    for t in TABLES {
        let query = wh.client.query(&format!("SELECT count() FROM {}", t.name));
        let rows: u64 = bounded(limit, query.fetch_one()).await?;
        if rows > 0 && !resuming {
            return Err(SettingsError(format!(
                "{database}.{} already holds {rows} rows: load into a fresh database \
                 (RAINBOW_CLICKHOUSE__DATABASE=<new name>; docs/batch.md, the Kappa swap)",
                t.name
            ))
            .into());
        }
        held.push(rows);
    }
    let record = |table: &str, rows: u64| {
        let sql = format!("INSERT INTO {database}.{LOADS_TABLE} (source, table_name, rows) VALUES (?, ?, ?)");
        let insert = wh.client.query(&sql).bind(source).bind(table).bind(rows);
        async move {
            bounded(limit, insert.execute())
                .await
                .with_context(|| format!("recording the load in {LOADS_TABLE}"))
        }
    };
    if resuming {
        let done = TABLES.iter().filter(|t| loaded(t.name)).count();
        println!(
            "load: resuming the load of {source} into {database} ({done} of {} tables loaded)",
            TABLES.len()
        );
    } else {
        execute(LOADS_TABLE_DDL.replace("{db}", database)).await?;
        record("", 0).await?;
    }
    let crash = rainbow_runtime::failpoint::CrashAfter::from_env(LOAD_FAILPOINT_VAR);
    let mut inserted = 0u64;
    let rt = tokio::runtime::Handle::current();
    for (t, held) in TABLES.iter().zip(held) {
        if loaded(t.name) {
            println!("load: {database}.{}: loaded by an earlier run", t.name);
            continue;
        }
        if held > 0 {
            execute(format!("TRUNCATE TABLE {database}.{}", t.name)).await?;
            println!("load: {database}.{}: emptied ({held} rows of the interrupted load)", t.name);
        }
        let started = Instant::now();
        let (s, h, wh) = (store.clone(), rt.clone(), wh.clone());
        let rows = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            let mut rows = 0;
            rainbow_replay::replay::each_batch(
                &s,
                &h,
                t.name,
                LOAD_CHUNK_ROWS,
                |batch| -> anyhow::Result<()> {
                    if batch.num_rows() == 0 {
                        return Ok(());
                    }
                    let body = row_binary(t, &batch)?;
                    h.block_on(insert_row_binary(&wh, t.name, body, limit))?;
                    rows += batch.num_rows();
                    if let Some(crash) = crash {
                        crash.check(inserted + rows as u64);
                    }
                    Ok(())
                },
            )?;
            Ok(rows)
        })
        .await??;
        inserted += rows as u64;
        record(t.name, rows as u64).await?;
        println!("load: {database}.{}: {rows} rows in {:.1} s", t.name, started.elapsed().as_secs_f64());
    }
    println!("load: every table of {from} is in {database}; compare, then swap (docs/batch.md)");
    Ok(())
}

/// One RowBinary insert into `table`, bounded by `limit` and tried again with backoff while the
/// failure is transient (at most 10 times).
async fn insert_row_binary(
    wh: &Warehouse,
    table: &str,
    body: Vec<u8>,
    limit: Duration,
) -> anyhow::Result<()> {
    use rainbow_runtime::resilience::Backoff;
    use rainbow_schemas::warehouse::{bounded, is_transient};
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    for attempt in 1.. {
        let mut insert = wh.client.insert_formatted_with(format!("INSERT INTO {table} FORMAT RowBinary"));
        let sent = async {
            insert.send(body.clone().into()).await?;
            insert.end().await
        };
        match bounded(limit, sent).await {
            Ok(()) => return Ok(()),
            Err(e) if is_transient(&e) && attempt < 10 => {
                tracing::warn!(table, attempt, error = %e, "an insert failed; trying again");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("inserting into {table}"))),
        }
    }
    unreachable!("the loop returns")
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

/// `rainbow reset warehouse|cdc` (see [`crate::reset`]): refuses while the component runs, then
/// removes its state (with --yes) or lists what it would remove, and prints the report.
pub async fn reset(config: &Config, args: &crate::ResetArgs) -> anyhow::Result<()> {
    use crate::reset;
    use crate::status::Component;
    use crate::ResetTarget;
    let (command, steps, next) = match args.what {
        ResetTarget::Warehouse => {
            reset::refuse_if_running(config, &[Component::Processor, Component::Up]).await?;
            let wh = warehouse(config).await?;
            ("warehouse", reset::warehouse(config, &wh, args.yes).await?, reset::WAREHOUSE_NEXT)
        }
        ResetTarget::Cdc => {
            reset::refuse_if_running(config, &[Component::Cdc, Component::Up]).await?;
            let pool = pg_pool(&config.postgres).await?;
            let steps = reset::cdc(config, &pool, args.yes).await;
            pool.close().await;
            ("cdc", steps?, reset::CDC_NEXT)
        }
    };
    print!("{}", reset::render(command, &steps, args.yes, next));
    Ok(())
}

/// Reads every component's /metrics and prints the screen or the JSON; `Ok(false)` when one
/// does not answer.
pub async fn status(config: &Config, args: &crate::StatusArgs) -> anyhow::Result<bool> {
    use crate::status;
    let targets = status::targets(config, &args.components);
    let report = status::probe(&targets, args.timeout).await?;
    if args.json {
        println!("{:#}", status::to_json(&report));
    } else {
        print!("{}", status::render(&report));
    }
    Ok(report.all_answer())
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

/// Bootstraps the stack (migrations, reference data), waiting up to `up.startup_timeout_secs` for
/// PostgreSQL and ClickHouse to answer, then runs every component as a child process of its own
/// (`rainbow api`, `cdc`, `process`, `archive`, and `loadgen` when producers are asked for) under
/// supervision until SIGINT/SIGTERM: a component that exits is restarted with backoff, and the
/// command fails when one cannot be kept running (see rainbow_runtime::children).
pub async fn up(config: &Config, config_file: Option<&Path>, args: &UpArgs) -> anyhow::Result<()> {
    use rainbow_runtime::children::{self, ChildMetrics, Policy};
    let listener = rainbow_runtime::serve::bind(&config.up.metrics_listen).await.map_err(|e| {
        SettingsError(format!(
            "cannot listen on {} ({e}; another `rainbow up` running?); set up.metrics_listen / \
             RAINBOW_UP__METRICS_LISTEN",
            config.up.metrics_listen
        ))
    })?;
    // One `up` per metrics address: a new one waits for the components of a previous one (still
    // finishing their shutdown after a crash of that `up`) instead of running beside them.
    let lock_path = std::env::temp_dir()
        .join(format!("rainbow-up-{}.lock", config.up.metrics_listen.replace([':', '.'], "_")));
    let patience = Duration::from_secs(config.up.stop_grace_secs + 30);
    let lock = children::exclusive(&lock_path, patience).await.map_err(SettingsError)?;
    bootstrap(config, args).await?;
    let registry = prometheus::Registry::new_custom(Some("rainbow_up".into()), None).expect("valid prefix");
    let metrics = ChildMetrics::register(&registry);
    let stop_rx = rainbow_runtime::resilience::stop_on(shutdown_signal());
    rainbow_runtime::serve::spawn(
        listener,
        move || rainbow_runtime::serve::render(&registry),
        metrics.clone(),
        stop_rx.clone(),
    );
    let specs = components(config, config_file, args, lock.fd())?;
    for spec in &specs {
        println!("{}: {}", spec.name, describe_component(config, &spec.name, args));
    }
    println!(
        "up: supervising {} components (metrics and health on http://{}); Ctrl-C stops",
        specs.len(),
        config.up.metrics_listen
    );
    let policy = Policy {
        backoff_cap: Duration::from_secs(config.up.restart_backoff_max_secs),
        give_up_after: config.up.give_up_after,
        grace: Duration::from_secs(config.up.stop_grace_secs),
        ..Policy::default()
    };
    children::supervise(specs, policy, metrics, stop_rx).await.map_err(|gave_up| {
        anyhow::anyhow!(
            "gave up on {gave_up}; every other component was stopped. Fix the cause and run \
             `rainbow up` again: each component resumes where it stopped"
        )
    })?;
    println!("up: every component stopped");
    Ok(())
}

/// Migrations and reference data, retried while PostgreSQL or ClickHouse does not answer (a
/// stack still starting), for up to `up.startup_timeout_secs`.
async fn bootstrap(config: &Config, args: &UpArgs) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(config.up.startup_timeout_secs);
    let mut backoff = rainbow_runtime::resilience::default_backoff();
    let migrate_args = MigrateArgs { target: MigrateTarget::All, seed: !args.no_seed };
    loop {
        match migrate(config, &migrate_args).await {
            Ok(()) => return Ok(()),
            Err(e) if transient(&e) && std::time::Instant::now() < deadline => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "bootstrap: a server does not answer yet; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                return Err(e).context(format!(
                    "bootstrapping the stack (waited up to {} s: up.startup_timeout_secs)",
                    config.up.startup_timeout_secs
                ))
            }
        }
    }
}

/// Whether an error is a server not answering (worth another attempt).
fn transient(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<sqlx::Error>().is_some_and(rainbow_schemas::postgres::is_transient)
            || cause.downcast_ref::<sqlx::migrate::MigrateError>().is_some_and(
                |e| matches!(e, sqlx::migrate::MigrateError::Execute(e) if rainbow_schemas::postgres::is_transient(e)),
            )
            || cause.downcast_ref::<WarehouseError>().is_some_and(WarehouseError::is_transient)
    })
}

/// The child processes of `rainbow up`: this binary with a subcommand each, the same
/// configuration file (the environment, and so every RAINBOW_* override, is inherited).
fn components(
    config: &Config,
    config_file: Option<&Path>,
    args: &UpArgs,
    lock: std::os::fd::RawFd,
) -> anyhow::Result<Vec<rainbow_runtime::children::ChildSpec>> {
    let program = std::env::current_exe().context("finding the rainbow binary to start the components")?;
    let base: Vec<String> = match config_file {
        Some(file) => vec!["--config".into(), file.display().to_string()],
        None => Vec::new(),
    };
    let spec = |name: &str, extra: &[String], wait_for: Option<String>, stop_stage: u8| {
        rainbow_runtime::children::ChildSpec {
            name: name.into(),
            program: program.clone(),
            args: base
                .iter()
                .cloned()
                .chain(std::iter::once(name.to_string()))
                .chain(extra.iter().cloned())
                .collect(),
            wait_for,
            lock: Some(lock),
            stop_stage,
        }
    };
    // Started in this order (the API first: the producers post to it). Stopped in stages: what
    // writes the source first, then the CDC (which reads on until it has delivered every
    // transaction committed before its stop), then the processor and the archiver (which read
    // on until they have what Kafka held at theirs): a stop leaves nothing in flight.
    let mut specs = vec![
        spec("api", &[], Some(config.api.listen.clone()), 0),
        spec("cdc", &[], None, 1),
        spec("process", &[], None, 2),
        spec("archive", &[], None, 2),
    ];
    if args.orders_per_sec > 0.0 || args.churn_per_sec > 0.0 {
        let mut extra = vec![
            "--quiet".to_string(),
            "--producers".into(),
            "4".into(),
            "--churn-rate".into(),
            args.churn_per_sec.to_string(),
        ];
        if args.orders_per_sec > 0.0 {
            extra.extend(["--rate".into(), args.orders_per_sec.to_string()]);
        } else {
            extra.push("--no-orders".into());
        }
        specs.push(spec("loadgen", &extra, None, 0));
    }
    Ok(specs)
}

fn describe_component(config: &Config, name: &str, args: &UpArgs) -> String {
    match name {
        "api" => format!("order API on http://{} (GET / lists the routes)", config.api.listen),
        "cdc" => format!(
            "PostgreSQL changes -> Kafka topics {}.public.<table> (metrics on http://{}/metrics)",
            config.cdc.topic_prefix, config.cdc.metrics_listen
        ),
        "process" => format!(
            "Kafka -> ClickHouse database {} (metrics on http://{}/metrics)",
            config.clickhouse.database, config.processor.metrics_listen
        ),
        "archive" => format!(
            "Kafka -> master dataset {}/master/ (metrics on http://{}/metrics)",
            config.storage.url, config.archive.metrics_listen
        ),
        "loadgen" => {
            format!("{} orders/s to the API, {} catalogue changes/s", args.orders_per_sec, args.churn_per_sec)
        }
        _ => String::new(),
    }
}

/// An error in the user's settings or input: `rainbow` exits with
/// [`rainbow_runtime::children::EXIT_SETTINGS`], and `rainbow up` does not restart the component.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);
