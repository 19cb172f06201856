//! Rainbow's configuration: one TOML file plus environment overrides.
//!
//! Sources, later wins: built-in defaults (those of the local stack, `deploy/local/start`), the
//! TOML file (`--config`, else `rainbow.toml` in the working directory if present), then
//! environment variables `RAINBOW_<SECTION>__<KEY>` (for example `RAINBOW_API__LISTEN`).
//! Unknown keys, unknown `RAINBOW_*` variables and invalid values stop the program at start with
//! a message naming the key and the expected form.
//!
//! Where data lives: every setting whose default is a local path defaults to a place under one
//! directory, the *state root* ([`state_root`], [`STATE_PATHS`]): `$RAINBOW_HOME` when set, else
//! `.rainbow` in the working directory.

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use rainbow_schemas::warehouse::is_identifier;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The default configuration file, read when present and `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "rainbow.toml";
/// What `--print-config` shows instead of a password.
pub const MASK: &str = "********";

/// Prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "RAINBOW_";
/// The variable that moves the state root (see [`state_root`]).
pub const HOME_VAR: &str = "RAINBOW_HOME";
/// The state root when `RAINBOW_HOME` is unset, relative to the working directory.
pub const DEFAULT_HOME: &str = ".rainbow";
/// Every setting whose default lives under the state root, and where under it (set by
/// [`Config::defaults_in`], in this order). The crates' own `Default`s hold these paths under
/// [`DEFAULT_HOME`] (a test keeps them equal).
pub const STATE_PATHS: [(&str, &str); 5] = [
    ("cdc.offsets_dir", "cdc"),
    ("processor.checkpoint_url", "processor/checkpoints"),
    ("processor.state_dir", "processor/state"),
    ("storage.url", "store"),
    ("replay.out_url", "replay"),
];
/// `RAINBOW_*` variables that are not settings: read by the stack scripts and the CLI.
const NON_SETTING_VARS: [&str; 8] = [
    HOME_VAR,
    rainbow_runtime::children::SUPERVISED_VAR,
    "RAINBOW_CONFIG",
    "RAINBOW_LOG",
    "RAINBOW_CDC_FAILPOINT",
    "RAINBOW_PROCESSOR_FAILPOINT",
    "RAINBOW_REPLAY_FAILPOINT",
    "RAINBOW_LOAD_FAILPOINT",
];
const NON_SETTING_PREFIXES: [&str; 1] = ["RAINBOW_STACK_"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: `{}` = {:?}: expected {}", .0.key, .0.value, .0.expected)]
    Invalid(#[from] rainbow_schemas::setting::InvalidSetting),
    #[error(
        "unknown environment variable {0}: settings are RAINBOW_<SECTION>__<KEY> \
         (double underscore), for example RAINBOW_API__LISTEN"
    )]
    UnknownVariable(String),
    #[error(
        "RAINBOW_HOME={value:?} {reason} (RAINBOW_HOME is the local directory under which every \
         default path lies; unset, it is .rainbow in the working directory)"
    )]
    Home { value: String, reason: String },
}

/// The state root, the directory under which every default path lies, from the value of
/// `RAINBOW_HOME` (`None`: unset).
///
/// The contract, in one place:
/// * `RAINBOW_HOME` set: that directory, as given (a relative value stays relative to the
///   working directory). It need not exist yet (each component creates what it writes), but it
///   must be a local directory: empty, a URL, or a path whose first existing part is not a
///   directory is an error ([`ConfigError::Home`]), whether or not a default is used.
/// * Unset: [`DEFAULT_HOME`], `.rainbow` in the working directory. That is where the binary
///   always kept its data and where the stack scripts and `tests/run` put theirs
///   (`<repo>/.rainbow`), so for someone running from the repository root nothing moves.
/// * Each setting of [`STATE_PATHS`] defaults to `<state root>/<its path>` (see
///   [`Config::defaults_in`]); a value from the file or a `RAINBOW_<SECTION>__<KEY>` variable
///   wins, and is used as written. `--print-config` shows the resolved paths.
pub fn state_root(home: Option<&str>) -> Result<PathBuf, ConfigError> {
    let Some(value) = home else { return Ok(PathBuf::from(DEFAULT_HOME)) };
    let unusable = |reason: String| ConfigError::Home { value: value.to_string(), reason };
    if value.trim().is_empty() {
        return Err(unusable("is empty; unset it or give a directory".into()));
    }
    if value.contains("://") {
        return Err(unusable(
            "is a URL, not a local directory; an object store goes in storage.url and \
             processor.checkpoint_url"
                .into(),
        ));
    }
    let root = PathBuf::from(value);
    if let Some(existing) = root.ancestors().find(|a| !a.as_os_str().is_empty() && a.exists()) {
        if !existing.is_dir() {
            let what = if existing == root { "it".to_string() } else { existing.display().to_string() };
            return Err(unusable(format!("is not a usable directory: {what} exists and is not a directory")));
        }
    }
    Ok(root)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub postgres: PostgresConfig,
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub api: ApiConfig,
    /// The change-data-capture reader (`rainbow cdc`); see rainbow_cdc::CdcConfig.
    pub cdc: rainbow_cdc::CdcConfig,
    /// The stream processor (`rainbow process`); see rainbow_processor::ProcessorConfig.
    pub processor: rainbow_processor::ProcessorConfig,
    /// The archiver (`rainbow archive`); see rainbow_archive::ArchiveConfig.
    pub archive: rainbow_archive::ArchiveConfig,
    /// The replay (`rainbow replay`); see rainbow_replay::ReplayConfig.
    pub replay: rainbow_replay::ReplayConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    /// The supervisor (`rainbow up`).
    pub up: UpConfig,
}

/// `rainbow up`: how it keeps the components running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpConfig {
    /// Address of the supervisor's `/metrics` (`rainbow_up_restarts_total{component}`,
    /// `rainbow_up_running{component}`), `/healthz` and `/readyz`.
    pub metrics_listen: String,
    /// How long the bootstrap (migrations, reference data) waits for PostgreSQL and ClickHouse
    /// to answer before giving up.
    pub startup_timeout_secs: u64,
    /// A component that fails this many times in a row, each within a minute of its start, is
    /// given up on: `rainbow up` stops the others and exits non-zero.
    pub give_up_after: u32,
    /// Longest delay between two restarts of a component (they start at 1 s and double).
    pub restart_backoff_max_secs: u64,
    /// On stop, how long a component may take to finish its shutdown before it is killed.
    pub stop_grace_secs: u64,
}

impl Default for UpConfig {
    fn default() -> Self {
        UpConfig {
            metrics_listen: "127.0.0.1:9104".into(),
            startup_timeout_secs: 300,
            give_up_after: 10,
            restart_backoff_max_secs: 30,
            stop_grace_secs: 90,
        }
    }
}

/// The source database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    /// Connections in each service's pool.
    pub max_connections: u32,
    pub connect_timeout_secs: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "rainbow".into(),
            password: "rainbow".into(),
            database: "rainbow".into(),
            max_connections: 10,
            connect_timeout_secs: 10,
        }
    }
}

/// The Kafka cluster every service talks to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` bootstrap servers.
    pub brokers: String,
    /// Client id prefix, visible in broker logs and metrics.
    pub client_id: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig { brokers: "127.0.0.1:9092".into(), client_id: "rainbow".into() }
    }
}

/// The warehouse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface, `http://host:port`.
    pub url: String,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            user: "default".into(),
            password: String::new(),
            database: "rainbow".into(),
        }
    }
}

/// The order API (`rainbow api`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on, `ip:port`.
    pub listen: String,
    pub request_timeout_ms: u64,
    /// Largest accepted request body (an order of 1,000 lines is about 40 KB): what a request may
    /// make the server hold.
    pub body_limit_bytes: usize,
    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish.
    pub shutdown_grace_secs: u64,
    /// Orders kept in the notification-invalidated response cache of GET /api/v1/orders/{id}; 0
    /// disables it.
    pub order_cache_entries: usize,
    /// Requests served at once; more are answered 503 at once, before their body is read.
    pub max_in_flight: usize,
    /// How often the quantities of the orders placed meanwhile are added to `products.sold_count`
    /// (an order appends them to `api_sold_count_pending` instead of holding its products' rows
    /// locked until its commit; docs/api.md).
    pub sold_count_interval_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".into(),
            request_timeout_ms: 10_000,
            body_limit_bytes: 64 << 10,
            shutdown_grace_secs: 30,
            order_cache_entries: 100_000,
            max_in_flight: 512,
            sold_count_interval_ms: 100,
        }
    }
}

/// Object storage for the master dataset (the archive, and the replay's input by default): a
/// local path or an object_store URL (`file://`, `s3://`, `gs://`, `az://`). Default:
/// `<state root>/store` (see [`state_root`]). The processor's checkpoints have their own setting,
/// `processor.checkpoint_url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub url: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { url: ".rainbow/store".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `rainbow=debug,sqlx=warn`, ... (`RUST_LOG` wins).
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info,sqlx=warn,pg_walstream=warn".into(), format: LogFormat::Text }
    }
}

impl Config {
    /// The built-in defaults with every path of [`STATE_PATHS`] under the state root `root`
    /// (see [`state_root`]). `Config::default()` is `Config::defaults_in(".rainbow")`.
    pub fn defaults_in(root: &Path) -> Config {
        let mut config = Config::default();
        let settings = [
            &mut config.cdc.offsets_dir,
            &mut config.processor.checkpoint_url,
            &mut config.processor.state_dir,
            &mut config.storage.url,
            &mut config.replay.out_url,
        ];
        for ((_, under), value) in STATE_PATHS.iter().zip(settings) {
            *value = root.join(under).display().to_string();
        }
        config
    }

    /// Loads defaults, then the file, then the process environment; validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        if let Some(path) = file.filter(|p| !p.exists()) {
            return Err(ConfigError::MissingFile(path.to_path_buf()));
        }
        let mut home = None;
        let mut settings = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
            if name == HOME_VAR {
                home = Some(value);
                continue;
            }
            if NON_SETTING_VARS.contains(&name.as_str())
                || NON_SETTING_PREFIXES.iter().any(|p| name.starts_with(p))
            {
                continue;
            }
            let Some((section, key)) = rest.split_once("__") else {
                return Err(ConfigError::UnknownVariable(name));
            };
            let key = format!("{}.{}", section.to_lowercase(), key.to_lowercase());
            settings.push(EnvSetting { name, key, value });
        }
        let root = state_root(home.as_deref())?;
        let mut figment = Figment::from(Serialized::defaults(Config::defaults_in(&root)));
        match file {
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE))
            }
            None => {}
        }
        // Sorted so that the outcome never depends on the order of the process environment.
        settings.sort_by(|a, b| a.name.cmp(&b.name));
        for setting in settings {
            figment = figment.merge(setting);
        }
        let config: Config = figment.extract().map_err(|e| ConfigError::Parse(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// The archiver's settings with its unset topic naming taken from `[cdc]`, as the processor's.
    pub fn archive_settings(&self) -> rainbow_archive::ArchiveConfig {
        let mut a = self.archive.clone();
        if a.topic_prefix.is_none() {
            a.topic_prefix = Some(self.cdc.topic_prefix.clone());
            if a.topic_map.is_none() {
                a.topic_map = Some(self.cdc.topic_map.clone());
            }
        }
        a
    }

    /// The processor's settings with its unset topic naming taken from `[cdc]`: it reads the
    /// topics the CDC writes unless told otherwise.
    pub fn processor_settings(&self) -> rainbow_processor::ProcessorConfig {
        let mut p = self.processor.clone();
        if p.topic_prefix.is_none() {
            p.topic_prefix = Some(self.cdc.topic_prefix.clone());
            if p.topic_map.is_none() {
                p.topic_map = Some(self.cdc.topic_map.clone());
            }
        }
        p
    }

    /// Checks every value whose type alone does not say it is valid.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use rainbow_schemas::setting::check;
        let p = &self.postgres;
        check(!p.host.trim().is_empty(), "postgres.host", &p.host, "a host name or IP address")?;
        check(p.port > 0, "postgres.port", p.port, "a TCP port, 1-65535")?;
        check(!p.user.is_empty(), "postgres.user", &p.user, "a role name")?;
        check(!p.database.is_empty(), "postgres.database", &p.database, "a database name")?;
        check(
            (1..=1000).contains(&p.max_connections),
            "postgres.max_connections",
            p.max_connections,
            "1-1000",
        )?;
        check(
            p.connect_timeout_secs > 0,
            "postgres.connect_timeout_secs",
            p.connect_timeout_secs,
            "seconds > 0",
        )?;
        let brokers_ok = !self.kafka.brokers.is_empty()
            && self.kafka.brokers.split(',').all(|b| {
                matches!(b.trim().rsplit_once(':'),
                Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
            });
        check(
            brokers_ok,
            "kafka.brokers",
            &self.kafka.brokers,
            "comma-separated host:port pairs, e.g. 127.0.0.1:9092",
        )?;
        check(
            is_name(&self.kafka.client_id),
            "kafka.client_id",
            &self.kafka.client_id,
            "letters, digits, '.', '_', '-'",
        )?;
        let ch = &self.clickhouse;
        let url_ok = (ch.url.starts_with("http://") || ch.url.starts_with("https://"))
            && ch.url.split("://").nth(1).is_some_and(|rest| !rest.is_empty());
        check(url_ok, "clickhouse.url", &ch.url, "an http:// or https:// URL, e.g. http://127.0.0.1:8123")?;
        check(
            is_identifier(&ch.database),
            "clickhouse.database",
            &ch.database,
            "an identifier ([A-Za-z_][A-Za-z0-9_]*)",
        )?;
        check(
            self.api.listen.parse::<SocketAddr>().is_ok(),
            "api.listen",
            &self.api.listen,
            "ip:port, e.g. 127.0.0.1:8080",
        )?;
        check(
            self.api.request_timeout_ms > 0,
            "api.request_timeout_ms",
            self.api.request_timeout_ms,
            "milliseconds > 0",
        )?;
        check(
            self.api.body_limit_bytes >= 1024,
            "api.body_limit_bytes",
            self.api.body_limit_bytes,
            "bytes >= 1024",
        )?;
        check(
            (1..=100_000).contains(&self.api.max_in_flight),
            "api.max_in_flight",
            self.api.max_in_flight,
            "1 ..= 100000 requests",
        )?;
        check(
            self.api.shutdown_grace_secs <= 3600,
            "api.shutdown_grace_secs",
            self.api.shutdown_grace_secs,
            "seconds, 0-3600",
        )?;
        check(
            (10..=60_000).contains(&self.api.sold_count_interval_ms),
            "api.sold_count_interval_ms",
            self.api.sold_count_interval_ms,
            "10 ..= 60000 ms",
        )?;
        let up = &self.up;
        check(
            up.metrics_listen.parse::<SocketAddr>().is_ok(),
            "up.metrics_listen",
            &up.metrics_listen,
            "ip:port, e.g. 127.0.0.1:9104",
        )?;
        check(
            up.startup_timeout_secs > 0,
            "up.startup_timeout_secs",
            up.startup_timeout_secs,
            "seconds > 0",
        )?;
        check(
            (1..=1000).contains(&up.give_up_after),
            "up.give_up_after",
            up.give_up_after,
            "1-1000 failures",
        )?;
        check(
            (1..=3600).contains(&up.restart_backoff_max_secs),
            "up.restart_backoff_max_secs",
            up.restart_backoff_max_secs,
            "seconds, 1-3600",
        )?;
        check(up.stop_grace_secs <= 3600, "up.stop_grace_secs", up.stop_grace_secs, "seconds, 0-3600")?;
        self.cdc.validate()?;
        self.processor_settings().validate()?;
        self.archive_settings().validate()?;
        self.replay.validate()?;
        check(
            !self.storage.url.trim().is_empty(),
            "storage.url",
            &self.storage.url,
            "a directory path or an object store URL",
        )?;
        check(
            tracing_subscriber::EnvFilter::try_new(&self.log.level).is_ok(),
            "log.level",
            &self.log.level,
            "a tracing filter such as info, debug or rainbow=debug,sqlx=warn",
        )?;
        Ok(())
    }

    /// The configuration as TOML, every setting with its effective value, passwords masked (a
    /// printed configuration ends up in logs and tickets).
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        for password in [&mut shown.postgres.password, &mut shown.clickhouse.password] {
            if !password.is_empty() {
                *password = MASK.into();
            }
        }
        toml::to_string_pretty(&shown).expect("configuration is always representable as TOML")
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// One `RAINBOW_<SECTION>__<KEY>` variable, as a figment provider so that errors name it.
struct EnvSetting {
    name: String,
    key: String,
    value: String,
}

impl figment::Provider for EnvSetting {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(format!("environment variable {}", self.name))
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let nested = figment::util::nest(&self.key, env_value(&self.key, &self.value));
        let dict = nested.into_dict().expect("nest() of a dotted key is a dictionary");
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// Settings that hold a map but are unset by default (`None`: "those of `[cdc]`"), so their
/// default cannot tell [`env_value`] to read key=value pairs.
const UNSET_MAPS: [&str; 2] = ["processor.topic_map", "archive.topic_map"];

/// An environment value, typed like the setting's default: environment variables are strings,
/// and figment does not turn "5432" into a port by itself. A string setting keeps digits as
/// written (`RAINBOW_POSTGRES__PASSWORD=1234`). A value that does not parse stays a string, so
/// the error names the key, the variable and the expected type.
fn env_value(key: &str, raw: &str) -> figment::value::Value {
    use figment::value::{Num, Value};
    let default = Figment::from(Serialized::defaults(Config::default())).find_value(key).ok();
    // Maps as comma-separated key=value pairs.
    let pairs = || {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|pair| {
                pair.split_once('=').map(|(k, v)| (k.trim().to_string(), Value::from(v.trim().to_string())))
            })
            .collect::<Option<figment::value::Dict>>()
            .map(Value::from)
    };
    let typed = match default {
        Some(Value::Num(..)) => raw
            .parse::<u64>()
            .map(Num::U64)
            .or_else(|_| raw.parse::<i64>().map(Num::I64))
            .ok()
            .map(Value::from),
        Some(Value::Bool(..)) => raw.parse::<bool>().ok().map(Value::from),
        // Lists as comma-separated items.
        Some(Value::Array(..)) => Some(Value::from(
            raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect::<Vec<_>>(),
        )),
        Some(Value::Dict(..)) => pairs(),
        _ if UNSET_MAPS.contains(&key) => pairs(),
        _ => None,
    };
    typed.unwrap_or_else(|| Value::from(raw.to_string()))
}

/// Figment's error, reworded to name the key, the source and the expected form.
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|err| {
            let key = if err.path.is_empty() { "(top level)".to_string() } else { err.path.join(".") };
            let source = err
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(figment::Source::File(p)) => format!(" in {}", p.display()),
                    _ => format!(" from {}", m.name),
                })
                .unwrap_or_default();
            format!("`{key}`{source}: {}", err.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load_from(None, env(vars))
    }

    #[test]
    fn defaults_match_the_local_stack_and_validate() {
        let c = load(&[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.api.listen, "127.0.0.1:8080");
        assert_eq!((c.postgres.host.as_str(), c.postgres.port), ("127.0.0.1", 5432));
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.clickhouse.url, "http://127.0.0.1:8123");
    }

    #[test]
    fn environment_overrides_with_types_of_the_setting() {
        let c = load(&[
            ("RAINBOW_POSTGRES__PORT", "6543"),
            ("RAINBOW_POSTGRES__PASSWORD", "1234"),
            ("RAINBOW_API__LISTEN", "127.0.0.1:9999"),
            ("RAINBOW_LOG__FORMAT", "json"),
            ("RAINBOW_HOME", "/elsewhere"),
            ("RAINBOW_STACK_KAFKA_HEAP", "1g"),
            ("UNRELATED", "x"),
        ])
        .unwrap();
        assert_eq!(c.postgres.port, 6543);
        assert_eq!(c.postgres.password, "1234");
        assert_eq!(c.api.listen, "127.0.0.1:9999");
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn file_then_environment() {
        let dir = std::env::temp_dir().join(format!("rainbow-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rainbow.toml");
        std::fs::write(&file, "[api]\nlisten = \"127.0.0.1:7000\"\n[cdc]\ntopic_prefix = \"shop\"\n")
            .unwrap();
        let c = Config::load_from(Some(&file), env(&[("RAINBOW_API__LISTEN", "127.0.0.1:7001")])).unwrap();
        assert_eq!(c.api.listen, "127.0.0.1:7001");
        assert_eq!(c.cdc.topic_prefix, "shop");

        std::fs::write(&file, "[api]\nlisten = \"127.0.0.1:7000\"\nlisten_port = 1\n").unwrap();
        let err = Config::load_from(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(err.contains("`api.listen_port`") && err.contains("rainbow.toml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();

        let missing = Config::load_from(Some(Path::new("/nonexistent/rainbow.toml")), env(&[]));
        assert!(matches!(missing, Err(ConfigError::MissingFile(_))));
    }

    #[test]
    fn bad_settings_name_the_key_and_the_expected_form() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: [Case; 11] = [
            (&[("RAINBOW_API__LISTEN", "localhost")], &["`api.listen`", "ip:port"]),
            (&[("RAINBOW_POSTGRES__PORT", "abc")], &["`postgres.port`", "RAINBOW_POSTGRES__PORT", "u16"]),
            (&[("RAINBOW_POSTGRES__PORT", "70000")], &["`postgres.port`", "u16"]),
            (&[("RAINBOW_KAFKA__BROKERS", "127.0.0.1")], &["`kafka.brokers`", "host:port"]),
            (&[("RAINBOW_API__LISTN", "x")], &["`api.listn`", "unknown field", "listen"]),
            (&[("RAINBOW_APILISTEN", "x")], &["RAINBOW_APILISTEN", "RAINBOW_<SECTION>__<KEY>"]),
            (&[("RAINBOW_CDC__SLOT_NAME", "Bad-Slot")], &["`cdc.slot_name`", "a-z"]),
            (
                &[("RAINBOW_API__SOLD_COUNT_INTERVAL_MS", "0")],
                &["`api.sold_count_interval_ms`", "10 ..= 60000"],
            ),
            (&[("RAINBOW_CDC__DRAIN_ON_STOP_MS", "600001")], &["`cdc.drain_on_stop_ms`", "0 (stop at once)"]),
            (
                &[("RAINBOW_PROCESSOR__DRAIN_ON_STOP_MS", "600001")],
                &["`processor.drain_on_stop_ms`", "0 (stop at once)"],
            ),
            (
                &[("RAINBOW_ARCHIVE__DRAIN_ON_STOP_MS", "600001")],
                &["`archive.drain_on_stop_ms`", "0 (stop at once)"],
            ),
        ];
        for (vars, needles) in cases {
            let err = load(vars).unwrap_err().to_string();
            for needle in needles {
                assert!(err.contains(needle), "{vars:?}: {err:?} lacks {needle:?}");
            }
        }
    }

    #[test]
    fn lists_and_maps_from_the_environment() {
        let c = load(&[
            ("RAINBOW_CDC__TABLES", "orders, public.customers"),
            ("RAINBOW_CDC__TOPIC_MAP", "public.orders=orders,public.customers=customers"),
            ("RAINBOW_CDC__SNAPSHOT_MODE", "no_data"),
        ])
        .unwrap();
        assert_eq!(c.cdc.tables, ["orders", "public.customers"]);
        assert_eq!(c.cdc.topic_for("public", "orders"), "orders");
        assert_eq!(c.cdc.snapshot_mode, rainbow_cdc::SnapshotMode::NoData);
        let err = load(&[("RAINBOW_CDC__TOPIC_MAP", "public.orders")]).unwrap_err().to_string();
        assert!(err.contains("cdc.topic_map"), "{err}");
        // The processor's and the archiver's maps are unset by default (they take the CDC's).
        let c = load(&[
            ("RAINBOW_PROCESSOR__TOPIC_MAP", "public.orders=o2"),
            ("RAINBOW_ARCHIVE__TOPIC_MAP", "public.orders=o3"),
        ])
        .unwrap();
        let one =
            |t: &str| Some(std::collections::BTreeMap::from([("public.orders".to_string(), t.to_string())]));
        assert_eq!((c.processor.topic_map, c.archive.topic_map), (one("o2"), one("o3")));
        let err = load(&[("RAINBOW_ARCHIVE__TOPIC_MAP", "public.orders")]).unwrap_err().to_string();
        assert!(err.contains("archive.topic_map"), "{err}");
        let err = load(&[("RAINBOW_CDC__SNAPSHOT_MODE", "sometimes")]).unwrap_err().to_string();
        assert!(err.contains("cdc.snapshot_mode"), "{err}");
    }

    #[test]
    fn partition_routing_and_instances_from_the_environment() {
        let c = load(&[]).unwrap();
        assert_eq!(c.cdc.partition_column("public", "orderdetails"), Some("order_id"));
        assert_eq!(c.cdc.partition_column("public", "orders"), Some("id"));
        assert_eq!(c.cdc.partition_column("public", "products"), None);
        let c = load(&[("RAINBOW_CDC__PARTITION_BY", "public.orders=")]).unwrap();
        assert_eq!(c.cdc.partition_column("public", "orders"), None, "empty: the whole key");
        let c =
            load(&[("RAINBOW_PROCESSOR__INSTANCES", "3"), ("RAINBOW_PROCESSOR__PARTITION", "2")]).unwrap();
        assert_eq!((c.processor.instances, c.processor.partition), (3, 2));
        let err = load(&[("RAINBOW_PROCESSOR__INSTANCES", "2"), ("RAINBOW_PROCESSOR__PARTITION", "2")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("processor.partition"), "{err}");
        let err = load(&[("RAINBOW_CDC__PARTITION_BY", "public.orders=bad column")]).unwrap_err().to_string();
        assert!(err.contains("cdc.partition_by"), "{err}");
    }

    /// Each setting of STATE_PATHS, as the loaded configuration holds it.
    fn state_paths(c: &Config) -> Vec<(&'static str, String)> {
        let f = Figment::from(Serialized::defaults(c));
        STATE_PATHS.iter().map(|(key, _)| (*key, f.extract_inner::<String>(key).unwrap())).collect()
    }

    #[test]
    fn default_paths_lie_under_dot_rainbow_without_rainbow_home() {
        let c = load(&[]).unwrap();
        assert_eq!(
            state_paths(&c),
            [
                ("cdc.offsets_dir", ".rainbow/cdc".to_string()),
                ("processor.checkpoint_url", ".rainbow/processor/checkpoints".into()),
                ("processor.state_dir", ".rainbow/processor/state".into()),
                ("storage.url", ".rainbow/store".into()),
                ("replay.out_url", ".rainbow/replay".into()),
            ]
        );
        // The crates' own defaults are the same paths: one rule, not two.
        assert_eq!(Config::defaults_in(Path::new(DEFAULT_HOME)), Config::default());
    }

    #[test]
    fn rainbow_home_moves_every_default_path() {
        for (home, prefix) in [("/x", "/x/"), ("/x/", "/x/"), ("state/here", "state/here/")] {
            let c = load(&[("RAINBOW_HOME", home)]).unwrap();
            let paths = state_paths(&c);
            for ((key, under), (_, value)) in STATE_PATHS.iter().zip(&paths) {
                assert_eq!(value, &format!("{prefix}{under}"), "{key} with RAINBOW_HOME={home}");
            }
            assert_eq!(paths[0].1, format!("{prefix}cdc"));
            let printed = c.to_toml();
            assert!(printed.contains(&format!("offsets_dir = \"{prefix}cdc\"")), "{printed}");
            assert!(printed.contains(&format!("url = \"{prefix}store\"")), "{printed}");
            // Nothing else changes.
            let mut same = c.clone();
            same.cdc.offsets_dir.clone_from(&Config::default().cdc.offsets_dir);
            same.processor.checkpoint_url.clone_from(&Config::default().processor.checkpoint_url);
            same.processor.state_dir.clone_from(&Config::default().processor.state_dir);
            same.storage.url.clone_from(&Config::default().storage.url);
            same.replay.out_url.clone_from(&Config::default().replay.out_url);
            assert_eq!(same, Config::default());
        }
    }

    #[test]
    fn an_explicit_path_wins_over_rainbow_home() {
        let c = load(&[
            ("RAINBOW_HOME", "/x"),
            ("RAINBOW_CDC__OFFSETS_DIR", "/var/lib/rainbow/cdc"),
            ("RAINBOW_STORAGE__URL", "s3://bucket/rainbow"),
        ])
        .unwrap();
        assert_eq!(c.cdc.offsets_dir, "/var/lib/rainbow/cdc");
        assert_eq!(c.storage.url, "s3://bucket/rainbow");
        assert_eq!(c.processor.checkpoint_url, "/x/processor/checkpoints", "the one not set");

        let dir = std::env::temp_dir().join(format!("rainbow-config-home-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rainbow.toml");
        std::fs::write(&file, "[processor]\ncheckpoint_url = \"relative/checkpoints\"\n").unwrap();
        let c = Config::load_from(Some(&file), env(&[("RAINBOW_HOME", "/x")])).unwrap();
        assert_eq!(c.processor.checkpoint_url, "relative/checkpoints", "as written in the file");
        assert_eq!(c.cdc.offsets_dir, "/x/cdc");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unusable_rainbow_home_is_refused_clearly() {
        let file = std::env::temp_dir().join(format!("rainbow-config-home-file-{}", std::process::id()));
        std::fs::write(&file, "").unwrap();
        let below = file.join("below").display().to_string();
        let cases = [
            ("", "is empty"),
            ("  ", "is empty"),
            ("s3://bucket/rainbow", "is a URL"),
            (file.to_str().unwrap(), "exists and is not a directory"),
            (below.as_str(), "exists and is not a directory"),
        ];
        for (home, needle) in cases {
            let err = load(&[("RAINBOW_HOME", home)]).unwrap_err();
            assert!(matches!(err, ConfigError::Home { .. }), "{home:?}: {err:?}");
            let err = err.to_string();
            assert!(err.contains("RAINBOW_HOME") && err.contains(needle), "{home:?}: {err}");
        }
        // Refused even when every path is set explicitly: the variable is wrong either way.
        let err = load(&[
            ("RAINBOW_HOME", ""),
            ("RAINBOW_CDC__OFFSETS_DIR", "/a"),
            ("RAINBOW_PROCESSOR__CHECKPOINT_URL", "/b"),
            ("RAINBOW_STORAGE__URL", "/c"),
        ]);
        assert!(matches!(err, Err(ConfigError::Home { .. })));
        std::fs::remove_file(&file).unwrap();
        // A directory that does not exist yet is fine: components create what they write.
        assert!(load(&[("RAINBOW_HOME", "/nonexistent/rainbow/home")]).is_ok());
    }

    #[test]
    fn printed_configuration_reads_back_identically_but_for_the_masked_passwords() {
        let c = load(&[("RAINBOW_CLICKHOUSE__DATABASE", "wh"), ("RAINBOW_CLICKHOUSE__PASSWORD", "s3cret")])
            .unwrap();
        let printed = c.to_toml();
        assert!(!printed.contains("s3cret") && !printed.contains("password = \"rainbow\""), "{printed}");
        let mut back: Config = toml::from_str(&printed).unwrap();
        assert_eq!((back.postgres.password.as_str(), back.clickhouse.password.as_str()), (MASK, MASK));
        back.postgres.password.clone_from(&c.postgres.password);
        back.clickhouse.password.clone_from(&c.clickhouse.password);
        assert_eq!(back, c);
    }
}
