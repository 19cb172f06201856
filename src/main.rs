//! `rainbow`: the one binary of the platform. It only wires the crates together: each subcommand
//! loads the configuration, sets up logging and hands over to the crate that does the work.

mod commands;
mod config;
mod reset;
mod status;

use clap::{Parser, Subcommand, ValueEnum};
use config::{Config, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

// mimalloc: the processor core allocates many small rows; glibc malloc costs it about half its
// throughput (processor-bench core).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rainbow: a stream-first, Kappa-style sales data platform.
///
/// Order API -> PostgreSQL -> CDC (Debezium format) -> Kafka -> processor (SCD2 dimensions,
/// facts, aggregates) -> ClickHouse; Kafka is archived to object storage and replayed through the
/// same processor code for backfills. Every setting has a default that matches the local stack
/// (deploy/local/start); override it in rainbow.toml or with RAINBOW_<SECTION>__<KEY>. The default
/// paths (CDC offsets, processor checkpoints, master dataset) lie under $RAINBOW_HOME, else under
/// .rainbow in the working directory.
#[derive(Debug, Parser)]
#[command(name = "rainbow", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// Configuration file (TOML). Default: ./rainbow.toml when it exists, else built-in defaults.
    #[arg(long, global = true, env = "RAINBOW_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the effective configuration (defaults + file + environment) as TOML and exit; the
    /// default paths as resolved under $RAINBOW_HOME (else .rainbow).
    #[arg(long)]
    print_config: bool,

    /// Print the warehouse's definition (tables, columns with their ClickHouse types, keys,
    /// versions, references) as JSON and exit.
    #[arg(long, conflicts_with = "print_config")]
    print_warehouse: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the order API (HTTP, axum + sqlx) on `api.listen` until SIGINT/SIGTERM.
    Api,
    /// Stream PostgreSQL changes to Kafka as Debezium-compatible events (snapshot first, then
    /// logical replication) until SIGINT/SIGTERM. Settings: [cdc] / RAINBOW_CDC__*.
    Cdc,
    /// Run the stream processor until SIGINT/SIGTERM: CDC topics merged in commit order -> SCD2
    /// dimensions, fact_sales and dashboard aggregates in ClickHouse, with checkpoints and a
    /// dead-letter topic. Settings: [processor] / RAINBOW_PROCESSOR__*.
    Process,
    /// Archive every CDC topic into the immutable master dataset until SIGINT/SIGTERM: one
    /// Iceberg changelog table per source table (catalog archive.catalog_url, default SQLite
    /// under <storage.url>/iceberg/).
    /// `rainbow archive expire` removes old snapshots from the tables' metadata; `rainbow archive
    /// compact` rewrites runs of small data files.
    /// Settings: [archive] / RAINBOW_ARCHIVE__*.
    Archive(ArchiveArgs),
    /// Replay the master dataset through the processor's core into Parquet (backfill): every
    /// warehouse table under <out>/<table>/ (default out: replay.out_url, <state root>/replay).
    /// Resumable: rerun the same command after an interrupt.
    Replay(ReplayArgs),
    /// Load a replay's output (its Parquet tables) into the ClickHouse database of the settings
    /// (`clickhouse.database`, e.g. RAINBOW_CLICKHOUSE__DATABASE=rainbow_v2), migrated first;
    /// every table must be empty. Resumable: rerun the same command after an interrupt (progress
    /// is kept in the database's rainbow_loads). Any ClickHouse version: rows go in as the
    /// processor writes them (RowBinary). The load step of the Kappa swap (docs/batch.md).
    Load(LoadArgs),
    /// Order producers: POST realistic orders to the API, churn the catalogue in PostgreSQL, or
    /// benchmark the API (--bench).
    Loadgen(LoadgenArgs),
    /// Apply the PostgreSQL migrations and the ClickHouse warehouse migrations (each recorded in
    /// its database: _sqlx_migrations, rainbow_migrations); optionally load reference data.
    Migrate(MigrateArgs),
    /// Data-quality checks of the warehouse in ClickHouse (FINAL), or of a replay's Parquet with
    /// --parquet: keys, SCD2 versions and intervals, relationships, accepted values, amounts, and
    /// the total against PostgreSQL. Prints a report; exit code 1 when a check fails.
    Check(CheckArgs),
    /// Bootstrap the running stack (migrations, reference data), then run every pipeline
    /// component under supervision until Ctrl-C: the API, producers, the CDC reader, the
    /// processor and the archiver; a component that exits is restarted.
    Up(UpArgs),
    /// One screen of every component's state, lag, freshness, last checkpoint, dead letters and
    /// the replication slot's retained WAL, read from their /metrics. Exit code 1 when one does
    /// not answer.
    Status(StatusArgs),
    /// Start a component over from nothing: `warehouse` (drop the ClickHouse database, the
    /// processor's checkpoints and consumer group: the next `rainbow process` rebuilds it from the
    /// topics) or `cdc` (drop the replication slot, the publication and the offsets file: the next
    /// `rainbow cdc` snapshots the source again). A dry run unless --yes.
    Reset(ResetArgs),
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The replay's output (`rainbow replay --out`): a directory or an object-store URL.
    #[arg(long, value_name = "URL")]
    pub from: String,
}

#[derive(Debug, clap::Args)]
pub struct ArchiveArgs {
    #[command(subcommand)]
    pub action: Option<ArchiveAction>,
}

#[derive(Debug, Subcommand)]
pub enum ArchiveAction {
    /// Remove the changelog tables' snapshots older than --older-than-hours (default
    /// archive.snapshot_retention_hours) from their metadata, keeping each table's current one
    /// (which holds the archived offsets). No file is deleted. The archiver does this hourly.
    Expire {
        #[arg(long, value_name = "HOURS", value_parser = clap::value_parser!(u64).range(1..))]
        older_than_hours: Option<u64>,
    },
    /// Rewrite each changelog table's runs of small data files (consecutive offsets of one
    /// Kafka partition and commit day) as files of up to --target-mb, one `replace` snapshot per
    /// table that keeps the archived offsets. Safe beside a running archiver. No file is deleted.
    Compact {
        /// The largest file a run is rewritten into (files this large or larger stay as they are).
        #[arg(long, value_name = "MIB", default_value_t = 128,
              value_parser = clap::value_parser!(u64).range(1..1 << 44))]
        target_mb: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResetTarget {
    /// The warehouse: ClickHouse database `clickhouse.database`, the processor's checkpoints
    /// of `processor.group_id` under `processor.checkpoint_url`, and that Kafka consumer group.
    Warehouse,
    /// The CDC reader: replication slot `cdc.slot_name`, publication `cdc.publication_name`
    /// and the offsets file under `cdc.offsets_dir`.
    Cdc,
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
warehouse: for a warehouse to rebuild from the topics (its state belongs to another source, a
  table was changed by hand, a bug was fixed in the processor). Drops the ClickHouse database
  clickhouse.database, deletes the checkpoints of consumer group processor.group_id under
  processor.checkpoint_url (every instance's) and that consumer group in Kafka (its offsets only
  feed lag tools). The next `rainbow process` (or `rainbow up`) creates the warehouse again and
  reads every topic from its beginning. The topics, the archive and the CDC are left alone.

cdc: for a lost or invalid replication slot (\"replication slot ... is gone\"), or to take a new
  snapshot of the source. Deletes the offsets file (cdc.offsets_dir/<slot>.offsets.json), drops
  the replication slot cdc.slot_name and the publication cdc.publication_name. The next
  `rainbow cdc` (or `rainbow up`) creates both again and snapshots every table into the same
  topics; the processor reconciles the warehouse with the new snapshot (rows changed or deleted
  meanwhile end up right), so the warehouse needs no reset.

Both refuse while what they reset runs (`rainbow up` on up.metrics_listen; the processor on
processor.metrics_listen; the CDC reader on cdc.metrics_listen or holding the slot): stop it
first. Without --yes nothing is changed: they print what they would do. They print what they did;
a second run finds nothing to reset. --config and RAINBOW_* apply, as for the component reset.

Exit status: 0 done (or nothing to do, or a dry run); 1 refused or failed; 2 invalid settings.")]
pub struct ResetArgs {
    /// What to reset.
    #[arg(value_enum, value_name = "WHAT")]
    pub what: ResetTarget,
    /// Do it. Without it, print what would be done and change nothing.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Where: each component's /metrics and /readyz at its configured address (api.listen,
cdc.metrics_listen, processor.metrics_listen, archive.metrics_listen, up.metrics_listen; --config
and RAINBOW_* apply), all read at once. Nothing is changed anywhere.

Shown, per component (percentiles since it started; '-' for a figure not exported yet, null in
--json):
  api        requests, latency p50/p99
  cdc        streaming, WAL the slot retains, slot lag (WAL bytes past its confirmed position),
             age of the last commit in Kafka, commit -> ack p50/p99, events
  processor  consumer lag, watermark delay, freshness p50/p99, age of the last checkpoint,
             dead letters, events applied
  archiver   consumer lag, age of the last segment, records archived
  up         components running, restarts, those not running
and, for each, the dependencies it cannot reach and /readyz's answer.

Exit status:
  0  every component read answers (one whose metrics are off, an empty cdc.metrics_listen,
     is shown as such and does not count)
  1  at least one does not answer (its line says why and what to start)
  2  invalid settings or arguments")]
pub struct StatusArgs {
    /// Only these components (default: all).
    #[arg(value_enum, value_name = "COMPONENT")]
    pub components: Vec<status::Component>,
    /// Print JSON instead of the screen: raw numbers (bytes, seconds, counts; null when not
    /// exported) under stable keys, `.components.<name>.{state, url, ready, error, figures}`.
    #[arg(long)]
    pub json: bool,
    /// How long each request may take: 2s, 500ms.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigrateTarget {
    /// PostgreSQL and ClickHouse.
    All,
    /// The source schema in PostgreSQL only.
    Postgres,
    /// The warehouse tables and views in ClickHouse only.
    Clickhouse,
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Which database(s) to migrate.
    #[arg(long, value_enum, default_value_t = MigrateTarget::All)]
    pub target: MigrateTarget,
    /// Also load the deterministic reference data (brands, categories, customers, sellers,
    /// payment methods, promotions, products) when the catalogue is empty.
    #[arg(long)]
    pub seed: bool,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Do not load reference data into an empty catalogue.
    #[arg(long)]
    pub no_seed: bool,
    /// Orders per second that built-in producers send to the API (0: none).
    #[arg(long, default_value_t = 5.0, value_name = "N")]
    pub orders_per_sec: f64,
    /// Catalogue changes per second made alongside the orders (0: none).
    #[arg(long, default_value_t = 0.2, value_name = "N")]
    pub churn_per_sec: f64,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).args(["from", "all", "days"])))]
pub struct ReplayArgs {
    /// First day whose events produce output (YYYY-MM-DD, UTC day of the source commit); the
    /// days before it are replayed too, to build the state. Needs --to.
    #[arg(long, value_name = "DAY", requires = "to", value_parser = parse_day)]
    pub from: Option<String>,
    /// Last day replayed (inclusive).
    #[arg(long, value_name = "DAY", requires = "from", value_parser = parse_day)]
    pub to: Option<String>,
    /// Replay the whole archive.
    #[arg(long)]
    pub all: bool,
    /// Output only for these days (comma-separated YYYY-MM-DD).
    #[arg(long, value_name = "DAYS", value_delimiter = ',', value_parser = parse_day)]
    pub days: Option<Vec<String>>,
    /// Where the Parquet tables go: a directory or an object-store URL (s3://, gs://, az://).
    /// Default: replay.out_url, `<state root>/replay`. Rerunning the same command into the same
    /// place resumes from its checkpoint.
    #[arg(long, value_name = "URL")]
    pub out: Option<String>,
    /// The master dataset. Default: storage.url.
    #[arg(long, value_name = "URL")]
    pub archive: Option<String>,
    /// Also write every output table as an Iceberg table (replay.namespace in replay.catalog_url,
    /// default a SQLite catalog under <out>/iceberg/), for loading and comparing with standard
    /// tools: ClickHouse's iceberg functions, Spark, Trino, PyIceberg (the Kappa swap).
    #[arg(long)]
    pub iceberg: bool,
    /// Shards: cores' worth of engines, each over its share of the fact partitions, combined into
    /// the same tables. Default: replay.shards (0: one per core).
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Processes sharing the shards (machines, or a Kubernetes indexed Job's pods): each runs
    /// with --process 0 ..= N-1 (replay.process), then `--combine` writes the tables.
    #[arg(long, value_name = "N")]
    pub processes: Option<usize>,
    /// This process's number (replay.process, RAINBOW_REPLAY__PROCESS).
    #[arg(long, value_name = "I")]
    pub process: Option<usize>,
    /// Combine the shard outputs that the processes of the same command left into the tables.
    #[arg(long)]
    pub combine: bool,
    /// With --combine: wait this long for processes that are not done yet.
    #[arg(long, value_name = "SECONDS", default_value_t = 0, requires = "combine")]
    pub wait: u64,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// A `YYYY-MM-DD` day that exists in the calendar.
fn parse_day(raw: &str) -> Result<String, String> {
    use rainbow_schemas::time::{civil_from_days, days_from_civil};
    let bad = || format!("{raw:?} is not a day like 2024-08-01");
    let mut parts = raw.trim().splitn(3, '-');
    let mut next = |len: usize| {
        parts
            .next()
            .filter(|p| p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<i64>().ok())
    };
    let (y, m, d): (i64, u32, u32) = match (next(4), next(2), next(2)) {
        (Some(y), Some(m), Some(d)) => (y, m as u32, d as u32),
        _ => return Err(bad()),
    };
    // A day that exists: converting to days and back gives it again (no 2024-02-30).
    if !(1..=12).contains(&m) || civil_from_days(days_from_civil(y, m, d)) != (y, m, d) {
        return Err(bad());
    }
    Ok(format!("{y:04}-{m:02}-{d:02}"))
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Check a replay's output (its --out URL) instead of ClickHouse.
    #[arg(long, value_name = "URL")]
    pub parquet: Option<String>,
    /// Skip the comparison with PostgreSQL (on by default for ClickHouse).
    #[arg(long, conflicts_with = "source")]
    pub no_source: bool,
    /// Compare a replay's output with PostgreSQL too (off by default for --parquet: a replay of
    /// an older archive differs from the source as it is now).
    #[arg(long)]
    pub source: bool,
}

#[derive(Debug, clap::Args)]
pub struct LoadgenArgs {
    /// Base URL of the order API. Default: http://<api.listen>.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Concurrent producers (each keeps at most one request in flight).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub producers: usize,
    /// Target orders per second over all producers; 0 = as fast as possible.
    #[arg(long, default_value_t = 50.0, value_name = "N")]
    pub rate: f64,
    /// Stop after this many orders (catalogue changes with --no-orders).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this long: 90s, 5m, 1h (plain numbers are seconds). Default: until Ctrl-C,
    /// or 15s with --bench.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Spread order dates over the last N days with the seed's weekday shape (Sunday, Thursday
    /// and Saturday dominate); 0 stamps orders with the server's clock.
    #[arg(long, default_value_t = 28, value_name = "N")]
    pub days: u32,
    /// Catalogue changes per second, made directly in PostgreSQL (products' price, rating,
    /// reviews and name; now and then customers, sellers, promotions, brands, categories).
    #[arg(long, default_value_t = 0.0, value_name = "N")]
    pub churn_rate: f64,
    /// Only churn the catalogue; send no orders.
    #[arg(long)]
    pub no_orders: bool,
    /// Seed of the pseudo-random choices (same seed, same sequence of orders).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Benchmark the API instead: POST orders as fast as possible, then GET them by id, and print
    /// throughput and p50/p99 per phase (each phase lasts --duration).
    #[arg(long)]
    pub bench: bool,
    /// Concurrent connections of the benchmark.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub connections: usize,
}

/// `90`, `90s`, `1500ms`, `5m`, `1h`.
fn parse_duration(raw: &str) -> Result<std::time::Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{raw:?} is not a duration like 90s, 5m or 1h"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {raw:?}: use ms, s, m or h")),
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("{raw:?}: a duration must be positive"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_warehouse {
        println!("{:#}", rainbow_schemas::shape::definition_json());
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("rainbow: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        eprintln!("rainbow: no command given; see `rainbow --help`");
        return ExitCode::from(2);
    };
    init_logging(&config);
    let outcome = match command {
        Command::Api => runtime().block_on(commands::api(&config)),
        Command::Cdc => runtime().block_on(commands::cdc(&config)),
        Command::Process => runtime().block_on(commands::process(&config)),
        Command::Archive(ArchiveArgs { action: None }) => runtime().block_on(commands::archive(&config)),
        Command::Archive(ArchiveArgs { action: Some(ArchiveAction::Expire { older_than_hours }) }) => {
            runtime().block_on(commands::archive_expire(&config, older_than_hours))
        }
        Command::Archive(ArchiveArgs { action: Some(ArchiveAction::Compact { target_mb }) }) => {
            runtime().block_on(commands::archive_compact(&config, target_mb))
        }
        Command::Replay(args) => runtime().block_on(commands::replay(&config, &args)),
        Command::Loadgen(args) => runtime().block_on(commands::loadgen(&config, &args)),
        Command::Load(args) => runtime().block_on(commands::load(&config, &args.from)),
        Command::Check(args) => match runtime().block_on(commands::check(&config, &args)) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Migrate(args) => runtime().block_on(commands::migrate(&config, &args)),
        Command::Up(args) => runtime().block_on(commands::up(&config, cli.config.as_deref(), &args)),
        Command::Reset(args) => runtime().block_on(commands::reset(&config, &args)),
        Command::Status(args) => match runtime().block_on(commands::status(&config, &args)) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rainbow: error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit code of a failed command, from whose fault the error is: 2 for the user's settings
/// or input, 3 for a permanent failure that needs a person (`rainbow up` restarts neither), 1 for
/// anything else (a transient failure: `rainbow up` restarts the component).
fn exit_code(e: &anyhow::Error) -> u8 {
    use rainbow_runtime::children::{EXIT_PERMANENT, EXIT_SETTINGS};
    use rainbow_runtime::resilience::{Classify, Fault};
    let fault = e.chain().find_map(|cause| {
        if cause.is::<config::ConfigError>() || cause.is::<commands::SettingsError>() {
            return Some(Fault::Input);
        }
        if let Some(e) = cause.downcast_ref::<rainbow_loadgen::LoadgenError>() {
            return matches!(
                e,
                rainbow_loadgen::LoadgenError::Invalid(_) | rainbow_loadgen::LoadgenError::EmptyCatalogue
            )
            .then_some(Fault::Input);
        }
        cause
            .downcast_ref::<rainbow_cdc::CdcError>()
            .map(Classify::fault)
            .or_else(|| cause.downcast_ref::<rainbow_processor::ProcessorError>().map(Classify::fault))
            .or_else(|| cause.downcast_ref::<rainbow_archive::ArchiveError>().map(Classify::fault))
    });
    match fault {
        Some(Fault::Input) => EXIT_SETTINGS as u8,
        Some(Fault::Permanent) => EXIT_PERMANENT as u8,
        Some(Fault::Transient(_)) | None => 1,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
