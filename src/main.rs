//! `rainbow`: the one binary of the platform. It only wires the crates together: each subcommand
//! loads the configuration, sets up logging and hands over to the crate that does the work.

mod commands;
mod config;

use clap::{Parser, Subcommand, ValueEnum};
use config::{Config, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

/// Rainbow: a stream-first, Kappa-style sales data platform.
///
/// Order API -> PostgreSQL -> CDC (Debezium format) -> Kafka -> processor (SCD2 dimensions,
/// facts, aggregates) -> ClickHouse; Kafka is archived to object storage and replayed through the
/// same processor code for backfills. Every setting has a default that matches the local stack
/// (deploy/local/start); override it in rainbow.toml or with RAINBOW_<SECTION>__<KEY>.
#[derive(Debug, Parser)]
#[command(name = "rainbow", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// Configuration file (TOML). Default: ./rainbow.toml when it exists, else built-in defaults.
    #[arg(long, global = true, env = "RAINBOW_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the effective configuration (defaults + file + environment) as TOML and exit.
    #[arg(long)]
    print_config: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the order API (HTTP, axum + sqlx). Not available yet.
    Api,
    /// Stream PostgreSQL changes to Kafka as Debezium-compatible events. Not available yet.
    Cdc,
    /// Run the stream processor: SCD2 dimensions, fact_sales and aggregates into ClickHouse. Not
    /// available yet.
    Process,
    /// Archive every CDC topic into the immutable master dataset (Parquet in object storage). Not
    /// available yet.
    Archive,
    /// Replay the archived master dataset through the processor core into Parquet (backfill). Not
    /// available yet.
    Replay,
    /// Generate orders against the API and churn the catalogue. Not available yet.
    Loadgen,
    /// Apply the PostgreSQL migrations and the ClickHouse DDL; optionally load reference data.
    Migrate(MigrateArgs),
    /// Run data-quality checks against ClickHouse or a replay's Parquet. Not available yet.
    Check,
    /// Bootstrap the running stack (schemas, reference data) and run every pipeline component
    /// that exists so far.
    Up(UpArgs),
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
}

/// Exit code of a subcommand that a later delivery completes.
const EXIT_NOT_AVAILABLE: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let not_yet = |name: &str, what: &str| {
        eprintln!("rainbow {name}: not available yet: {what} is delivered by a later issue of the project");
        ExitCode::from(EXIT_NOT_AVAILABLE)
    };
    let outcome = match command {
        Command::Api => return not_yet("api", "the order API"),
        Command::Cdc => return not_yet("cdc", "the CDC reader"),
        Command::Process => return not_yet("process", "the stream processor"),
        Command::Archive => return not_yet("archive", "the archiver"),
        Command::Replay => return not_yet("replay", "the replay"),
        Command::Loadgen => return not_yet("loadgen", "the order producers"),
        Command::Check => return not_yet("check", "the data-quality checks"),
        Command::Migrate(args) => runtime().block_on(commands::migrate(&config, &args)),
        Command::Up(args) => runtime().block_on(commands::up(&config, &args)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rainbow: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
