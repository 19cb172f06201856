//! Helpers shared by the integration tests. They talk to the real servers of the local stack
//! (`deploy/local/start`), located through the same RAINBOW_* variables as the binary.

#![allow(dead_code)]

pub mod archive;
pub mod cdc;
pub mod figures;
pub mod process;
pub mod processor;
pub mod replay;
pub mod source;

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

/// The tests' connection to the local stack's Kafka.
pub fn kafka() -> rainbow_runtime::kafka::KafkaConnection {
    rainbow_runtime::kafka::KafkaConnection { brokers: brokers(), client_id: "rainbow-test".into() }
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

/// A fresh database of the local stack's PostgreSQL for one test; `drop` removes it.
pub struct TestDb {
    pub name: String,
    pub pool: sqlx::PgPool,
}

impl TestDb {
    /// An empty database.
    pub async fn create() -> TestDb {
        use sqlx::{Connection, Executor};
        let name = unique_name("rainbow_test");
        let mut admin = sqlx::PgConnection::connect_with(&pg_options("postgres"))
            .await
            .expect("PostgreSQL of the local stack (deploy/local/start) is reachable");
        admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(20)
            .connect_with(pg_options(&name))
            .await
            .unwrap();
        TestDb { name, pool }
    }

    /// A migrated database with the default reference data.
    pub async fn seeded() -> TestDb {
        let db = TestDb::create().await;
        rainbow_schemas::postgres::MIGRATOR.run(&db.pool).await.expect("migrations apply");
        rainbow_schemas::seed::load(&db.pool, &rainbow_schemas::seed::SeedSpec::default())
            .await
            .expect("reference data loads");
        db
    }

    pub async fn drop(self) {
        use sqlx::Connection;
        self.pool.close().await;
        let mut admin = sqlx::PgConnection::connect_with(&pg_options("postgres")).await.unwrap();
        cdc::drop_slots_of(&mut admin, &self.name).await;
        drop_database(&mut admin, &self.name).await;
    }
}

/// Polls `probe` until it returns `Some`, or panics after `deadline` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: std::time::Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = std::time::Instant::now() + deadline;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(std::time::Instant::now() < until, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `DROP DATABASE .. WITH (FORCE)`, retried for a few seconds while it fails because a backend
/// of another role (an autovacuum worker) is connected, which our role may not terminate.
pub async fn drop_database(admin: &mut sqlx::PgConnection, name: &str) {
    use sqlx::Executor;
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match admin.execute(sql.as_str()).await {
            Ok(_) => return,
            Err(e) if e.to_string().contains("pg_signal_backend") && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

/// The value of one series (`name{labels}` as exposed) of a Prometheus text exposition, read by
/// the parser `rainbow status` uses.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    use rainbow_runtime::exposition::Exposition;
    let want = Exposition::parse(&format!("{} 0", series.trim())).samples.pop()?;
    let got = Exposition::parse(text);
    let value = got.series(&want.name).find(|s| s.labels == want.labels).map(|s| s.value);
    value
}

/// Every `rainbow_<service>_*` metric that deploy/prometheus/rules.yml uses appears in `metrics`
/// (the text of a live `/metrics`), and so does every process metric the rules use
/// (`process_*`, `rainbow_process_*`: every service's): the alert rules watch series the service
/// really exports.
pub fn assert_alert_metrics_exported(service: &str, metrics: &str) {
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/rules.yml"))
        .expect("deploy/prometheus/rules.yml");
    let prefix = format!("rainbow_{service}_");
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let used = |prefix: &str| -> Vec<&str> {
        let mut names: Vec<&str> = rules
            .match_indices(prefix)
            .filter(|(i, _)| !rules[..*i].ends_with(is_name_char))
            .map(|(i, _)| {
                let rest = &rules[i..];
                &rest[..rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len())]
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    };
    let mut names = used(&prefix);
    assert!(!names.is_empty(), "rules.yml uses no {prefix}* metric");
    let process = [used("process_"), used("rainbow_process_")].concat();
    assert!(process.contains(&"process_resident_memory_bytes"), "{process:?}");
    names.extend(process);
    for name in names {
        // A histogram is exported as `<name>_bucket` (and `_sum`, `_count`).
        let exported = metrics.lines().any(|l| {
            l.strip_prefix(name).is_some_and(|rest| {
                rest.starts_with('{') || rest.starts_with(' ') || rest.starts_with("_bucket{")
            })
        });
        assert!(exported, "rules.yml uses {name}, which /metrics does not export:\n{metrics}");
    }
}
