//! What killed test runs left on the local stack goes at every run: a test that panics or is
//! killed skips its cleanup, and its replication slot pins WAL on a developer's long-lived stack
//! (its databases, topics and ClickHouse databases take disk). An object is a leftover when its
//! name was made by [`common::unique_name`] (`<prefix>_<pid>_<nanos>_<n>`, also inside a topic's
//! or a ClickHouse database's name) and that process is no longer running; nothing else is
//! touched, so it runs beside the other tests (they are this process).

use crate::common::{self, cdc, processor::clickhouse};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::Duration;

/// The process that named `name` with [`common::unique_name`]: the name as it is, the part
/// before the first `.` of a topic (`<name>.public.orders`, `<name>.dead_letter`), after
/// `__debezium-heartbeat.`, or after `rb_` (a processor's ClickHouse database).
fn owner(name: &str) -> Option<u32> {
    let name = name.strip_prefix("__debezium-heartbeat.").unwrap_or(name);
    let name = name.split('.').next()?;
    let name = name.strip_prefix("rb_").unwrap_or(name);
    let mut parts = name.rsplitn(4, '_');
    let (n, nanos, pid, prefix) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let named = !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    (named && digits(n) && digits(nanos) && digits(pid)).then(|| pid.parse().ok()).flatten()
}

/// Whether `name` belongs to a test process that has ended.
fn left_over(name: &str) -> bool {
    owner(name).is_some_and(|pid| {
        pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
}

/// The names of the local stack's topics; `None` when the brokers do not answer within 10 s.
fn topic_names() -> Option<Vec<String>> {
    let consumer: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", common::brokers()).create().ok()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).ok()?;
    Some(metadata.topics().iter().map(|t| t.name().to_string()).collect())
}

/// Removes every leftover: PostgreSQL databases (their slots first), inactive slots in other
/// databases, ClickHouse databases, Kafka topics. Returns what it removed.
async fn sweep() -> Vec<String> {
    use sqlx::Connection;
    let mut removed = Vec::new();
    let mut admin = sqlx::PgConnection::connect_with(&common::pg_options("postgres")).await.unwrap();
    let databases: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database").fetch_all(&mut admin).await.unwrap();
    for db in databases.into_iter().filter(|d| left_over(d)) {
        cdc::drop_slots_of(&mut admin, &db).await;
        common::drop_database(&mut admin, &db).await;
        removed.push(format!("database {db}"));
    }
    let slots: Vec<String> =
        sqlx::query_scalar("SELECT slot_name::text FROM pg_replication_slots WHERE NOT active")
            .fetch_all(&mut admin)
            .await
            .unwrap();
    for slot in slots.into_iter().filter(|s| left_over(s)) {
        sqlx::query("SELECT pg_drop_replication_slot($1)").bind(&slot).execute(&mut admin).await.unwrap();
        removed.push(format!("slot {slot}"));
    }
    let warehouses = clickhouse("SHOW DATABASES").await.unwrap();
    for db in warehouses.lines().filter(|d| left_over(d)) {
        clickhouse(&format!("DROP DATABASE IF EXISTS {db}")).await.unwrap();
        removed.push(format!("ClickHouse database {db}"));
    }
    let topics: Vec<String> =
        topic_names().expect("Kafka's topics").into_iter().filter(|t| left_over(t)).collect();
    cdc::delete_topics(&topics).await;
    removed.extend(topics.iter().map(|t| format!("topic {t}")));
    removed
}

#[test]
fn names_are_told_by_the_process_that_made_them() {
    assert_eq!(owner("rainbow_test_4242_123456789_7"), Some(4242));
    assert_eq!(owner("cdc_4242_123_0.public.orders"), Some(4242));
    assert_eq!(owner("__debezium-heartbeat.cdc_4242_123_0"), Some(4242));
    assert_eq!(owner("rb_proc_4242_123_0"), Some(4242));
    assert_eq!(owner("proc_4242_123_0.dead_letter"), Some(4242));
    for other in [
        "rainbow",
        "rainbow_bench",
        "postgres",
        "__consumer_offsets",
        "rainbow.public.orders",
        "a_1_2",
        "x_1_2_y",
    ] {
        assert_eq!(owner(other), None, "{other}");
    }
}

#[tokio::test]
async fn leftovers_of_ended_test_processes_are_removed_and_nothing_else() {
    use sqlx::{Connection, Executor};
    // A process id that has ended: a child that exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let name = |prefix: &str| format!("{prefix}_{dead}_1_0");
    let (db, slot, warehouse) = (name("rainbow_test"), name("cdc"), format!("rb_{}", name("proc")));
    let topics = [format!("{slot}.public.orders"), format!("__debezium-heartbeat.{slot}")];
    // What a killed run leaves: a database with a slot, a warehouse, topics; and one of this
    // (running) process.
    let live = common::unique_name("rainbow_test");
    let mut admin = sqlx::PgConnection::connect_with(&common::pg_options("postgres")).await.unwrap();
    for d in [&db, &live] {
        admin.execute(format!("CREATE DATABASE {d}").as_str()).await.unwrap();
    }
    let mut in_db = sqlx::PgConnection::connect_with(&common::pg_options(&db)).await.unwrap();
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(&slot)
        .execute(&mut in_db)
        .await
        .unwrap();
    in_db.close().await.unwrap();
    clickhouse(&format!("CREATE DATABASE {warehouse}")).await.unwrap();
    let kafka = common::kafka();
    let specs: Vec<_> = topics
        .iter()
        .map(|t| rainbow_runtime::kafka::TopicSpec { name: t.clone(), partitions: 1, replication: -1 })
        .collect();
    rainbow_runtime::kafka::ensure_topics(&kafka.client_config("admin"), &specs).await.unwrap();

    let removed = sweep().await;
    for object in [format!("database {db}"), format!("ClickHouse database {warehouse}")]
        .into_iter()
        .chain(topics.iter().map(|t| format!("topic {t}")))
    {
        assert!(removed.contains(&object), "{object} not removed: {removed:?}");
    }
    eprintln!("removed: {removed:?}");
    async fn count(admin: &mut sqlx::PgConnection, sql: &'static str, name: &str) -> i64 {
        sqlx::query_scalar(sql).bind(name).fetch_one(admin).await.unwrap()
    }
    let slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1";
    let databases = "SELECT count(*) FROM pg_database WHERE datname = $1";
    assert_eq!(count(&mut admin, slots, &slot).await, 0);
    assert_eq!(count(&mut admin, databases, &db).await, 0);
    assert_eq!(count(&mut admin, databases, &live).await, 1, "a running process's database stays");
    let warehouses = clickhouse("SHOW DATABASES").await.unwrap();
    assert!(!warehouses.lines().any(|d| d == warehouse), "{warehouses}");
    common::eventually("the leftover topics gone from the metadata", Duration::from_secs(30), || async {
        let names = topic_names()?;
        (!topics.iter().any(|t| names.contains(t))).then_some(())
    })
    .await;
    common::drop_database(&mut admin, &live).await;
}
