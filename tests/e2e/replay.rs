//! The Kappa invariant over the real stack: orders and catalogue changes flow PostgreSQL →
//! `rainbow cdc` → Kafka → `rainbow process` → ClickHouse while `rainbow archive` writes the
//! master dataset (and is SIGKILLed and restarted once); `rainbow replay --all` of the archive
//! then gives, for every output table, exactly the rows ClickHouse holds (FINAL). A second
//! replay gives byte-identical Parquet, and a replay aborted mid-way and rerun resumes from its
//! checkpoint to the same bytes.

use crate::common;

use common::archive::ArchiveProcess;
use common::cdc::CdcProcess;
use common::processor::ProcessorProcess;
use common::replay::{replay, replay_with};
use common::source::{caught_up, churn, place_orders};
use common::TestDb;
use rainbow_schemas::postgres::SOURCE_TABLES;
use std::process::Command;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn replaying_the_archive_gives_the_tables_streaming_wrote() {
    let db = TestDb::seeded().await;
    let mut cdc = CdcProcess::new(&db.name, &[("RAINBOW_CDC__HEARTBEAT_INTERVAL_MS", "200")]);
    cdc.start();
    let mut p = ProcessorProcess::new(&cdc.prefix);
    p.start(&[]);
    let mut archive = ArchiveProcess::new(&cdc.prefix);
    archive.start();
    place_orders(&db.pool, 0, 80).await;
    churn(&db.pool).await;
    // The archiver dies without flushing; the restart resumes after the archived offsets.
    common::eventually("a first segment", DEADLINE, || {
        let n = archive.segments().len();
        async move { (n > 0).then_some(()) }
    })
    .await;
    archive.kill();
    place_orders(&db.pool, 80, 60).await;
    archive.start();
    caught_up(&db.pool, &p).await;

    // The archive covers every record of every CDC topic, each offset once.
    let topics: Vec<String> = SOURCE_TABLES.iter().map(|t| cdc.topic(t)).collect();
    let ends = common::archive::end_offsets(&topics);
    let total: i64 = ends.values().sum();
    assert!(total > 1000, "{ends:?}");
    common::archive::assert_every_offset_once(&archive.store, &ends, DEADLINE).await;
    let lines = [
        "rainbow_archive_records_total{topic=\"",
        "rainbow_archive_bytes_total{topic=\"",
        "rainbow_archive_segments_total{topic=\"",
        "rainbow_archive_segment_write_duration_seconds_count",
        "rainbow_archive_consumer_lag_messages{",
        "rainbow_archive_running 1",
    ];
    // The restarted archiver counts its first append just after the commit seen above.
    let metrics = common::eventually("every one of the archiver's series in /metrics", DEADLINE, || {
        let archive = &archive;
        async move { Some(archive.metrics().await).filter(|m| lines.iter().all(|l| m.contains(l))) }
    })
    .await;
    common::assert_alert_metrics_exported("archive", &metrics);
    // The stale alert counts from the archiver's start until its first segment: a real time.
    let started = common::metric_value(&metrics, "rainbow_archive_started_timestamp_seconds")
        .unwrap_or_else(|| panic!("no start time in /metrics:\n{metrics}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - 3600.0..=now).contains(&started), "started {started}, now {now}");
    archive.stop();
    let log = archive.logs();
    assert!(log.contains("segment written"), "{log}");

    // Replay, twice: byte-identical, the second holding at most 100 output rows in memory
    // (the rest spilled to sorted runs and merged).
    let (out1, out2, out3) =
        (archive.dir.join("replay1"), archive.dir.join("replay2"), archive.dir.join("replay3"));
    // At the defaults: one shard per core (2 here, at most the 3 fact partitions).
    let (ok, text) = replay(&cdc.prefix, &archive.store, &out1, &[]);
    assert!(ok, "{text}");
    assert!(text.contains("fact_sales/: ") && text.contains("events applied"), "{text}");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(3);
    assert!(text.contains(&format!("data files, {cores} shard(s))")), "{text}");
    let (ok, text) = replay(&cdc.prefix, &archive.store, &out2, &[("RAINBOW_REPLAY__SPILL_ROWS", "100")]);
    assert!(ok, "{text}");
    let (a, b) = (rainbow_testkit::files(&out1), rainbow_testkit::files(&out2));
    assert!(a.keys().any(|k| k.starts_with("fact_sales/part-")), "{:?}", a.keys());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (path, bytes) in &a {
        assert!(b[path] == *bytes, "{path} differs between two replays");
    }

    // One shard aborted after 1,500 events (a checkpoint at 1,000, which first spills the rows
    // of those events: at most 100 are held), rerun: resumes, same bytes. One shard, so that what
    // is on disk at the abort does not depend on how far another shard's thread got (the
    // replay crate's tests interrupt and resume two shards, and leave runs no checkpoint counts).
    let crash_settings =
        [("RAINBOW_REPLAY__CHECKPOINT_EVERY_EVENTS", "1000"), ("RAINBOW_REPLAY__SPILL_ROWS", "100")];
    let (ok, text) = replay_with(
        &cdc.prefix,
        &archive.store,
        &out3,
        &["--shards", "1"],
        &[crash_settings.as_slice(), &[("RAINBOW_REPLAY_FAILPOINT", "crash_after_events=1500")]].concat(),
    );
    assert!(!ok, "the failpoint aborts: {text}");
    assert!(has_checkpoint(&out3), "the interrupted replay wrote a checkpoint");
    assert!(
        rainbow_testkit::files(&out3).keys().any(|k| k.starts_with("_replay/shards/0000/runs/")),
        "output spilled before the crash"
    );
    let (ok, text) = replay_with(&cdc.prefix, &archive.store, &out3, &["--shards", "1"], &crash_settings);
    assert!(ok && text.contains("resumed after "), "{text}");
    let c = rainbow_testkit::files(&out3);
    for (path, bytes) in a.iter().filter(|(p, _)| !p.starts_with("_replay/")) {
        assert!(c.get(path) == Some(bytes), "{path} differs after a resume");
    }

    // One shard, and 3 shards run by 2 processes then combined: the same bytes again.
    let (out4, out5) = (archive.dir.join("replay4"), archive.dir.join("replay5"));
    let (ok, text) = replay_with(&cdc.prefix, &archive.store, &out4, &["--shards", "1"], &[]);
    assert!(ok && text.contains("1 shard(s)"), "{text}");
    for process in ["0", "1"] {
        let (ok, text) = replay_with(
            &cdc.prefix,
            &archive.store,
            &out5,
            &["--shards", "3", "--processes", "2"],
            &[("RAINBOW_REPLAY__PROCESS", process)],
        );
        assert!(ok && text.contains(&format!("process {process} of 2: shard(s)")), "{text}");
    }
    let (ok, text) = replay_with(
        &cdc.prefix,
        &archive.store,
        &out5,
        &["--shards", "3", "--processes", "2", "--combine"],
        &[],
    );
    assert!(ok && text.contains("3 shard(s)"), "{text}");
    for out in [&out4, &out5] {
        let d = rainbow_testkit::files(out);
        for (path, bytes) in a.iter().filter(|(p, _)| !p.starts_with("_replay/")) {
            assert!(d.get(path) == Some(bytes), "{path} differs in {}", out.display());
        }
    }

    // The Kappa invariant: every table ClickHouse holds equals the replay's, row for row.
    common::replay::assert_same_as_clickhouse(&out1, &p.database).await;

    // The Kappa swap's load step: `rainbow load` puts the replay's tables into a fresh database
    // (RowBinary, as on any ClickHouse version), where they equal the replay's Parquet row for
    // row. A load aborted after its first table, inside its second, resumes when rerun: the first
    // is kept, the second emptied and loaded again (no row twice, FINAL or not). A rerun of a
    // finished load does nothing; a load of another output, or into a database the processor
    // fills, is refused.
    let v2 = format!("{}_v2", p.database);
    let load = |from: &std::path::Path, database: &str, env: &[(&str, &str)]| {
        let o = Command::new(env!("CARGO_BIN_EXE_rainbow"))
            .args(["load", "--from", from.to_str().unwrap()])
            .env("RAINBOW_CLICKHOUSE__DATABASE", database)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let count = |table: String| async move {
        common::processor::clickhouse(&format!("SELECT count() FROM {table}"))
            .await
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let tables = rainbow_schemas::shape::TABLES;
    let (first, second) = (tables[0].name, tables[1].name);
    let first_rows = count(format!("{}.{first} FINAL", p.database)).await;
    let crash = format!("crash_after_events={}", first_rows + 1);
    let (code, text) = load(&out1, &v2, &[("RAINBOW_LOAD_FAILPOINT", &crash)]);
    assert!(code != Some(0) && text.contains(&format!("load: {v2}.{first}: {first_rows} rows")), "{text}");
    assert!(count(format!("{v2}.{second}")).await > 0, "the abort left rows in {second}: {text}");
    let (code, text) = load(&out1, &v2, &[]);
    assert!(code == Some(0), "{text}");
    assert!(text.contains(&format!("load: {v2}.{first}: loaded by an earlier run")), "{text}");
    assert!(text.contains(&format!("load: {v2}.{second}: emptied (")), "{text}");
    common::replay::assert_same_as_clickhouse(&out1, &v2).await;
    for t in tables {
        let (live, loaded) = (
            count(format!("{}.{} FINAL", p.database, t.name)).await,
            count(format!("{v2}.{}", t.name)).await,
        );
        assert_eq!(loaded, live, "{}: every row once, without FINAL", t.name);
    }
    let (code, text) = load(&out1, &v2, &[]);
    assert!(code == Some(0) && text.matches("loaded by an earlier run").count() == tables.len(), "{text}");
    let (code, text) = load(&out2, &v2, &[]);
    assert!(code == Some(2) && text.contains("holds a load of"), "{text}");
    let (code, text) = load(&out1, &p.database, &[]);
    assert!(code == Some(2) && text.contains("already holds"), "{text}");
    common::processor::clickhouse(&format!("DROP DATABASE {v2}")).await.unwrap();

    // `rainbow check` passes on both, also against PostgreSQL's total ...
    let check = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_rainbow"))
            .arg("check")
            .args(args)
            .env("RAINBOW_CLICKHOUSE__DATABASE", &p.database)
            .env("RAINBOW_POSTGRES__DATABASE", &db.name)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (code, text) = check(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("ok      SUM(fact_sales.extended_sales_amount)") && text.contains(", 0 failed"),
        "{text}"
    );
    let (code, text) = check(&["--parquet", out1.to_str().unwrap(), "--source"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("replay output") && text.contains(", 0 failed"), "{text}");
    // ... and names what is wrong once the warehouse holds an unknown coupon type and a fact
    // whose product version does not exist.
    common::processor::clickhouse(&format!(
        "INSERT INTO {}.dim_promotions VALUES ('00000000000000ff', 999, 'Bad', 'Bogus', 0, 0, 4102444800, 1, 1, 0)",
        p.database
    ))
    .await
    .unwrap();
    common::processor::clickhouse(&format!(
        "INSERT INTO {db}.fact_sales SELECT date_key, '00000000000000aa', seller_key, promotion_key, customer_key, \
         payment_key, 424242, product_id, sales_quantity, regular_unit_price, discount_unit_price, net_unit_price, \
         extended_sales_amount, extended_discount_amount, version, is_deleted FROM {db}.fact_sales FINAL WHERE is_deleted = 0 LIMIT 1",
        db = p.database
    ))
    .await
    .unwrap();
    let (code, text) = check(&[]);
    assert_eq!(code, Some(1), "{text}");
    for failed in [
        "FAILED  dim_promotions.coupon_type is Percentage or Fixed Amount: 1 rows: \"Bogus\"",
        "FAILED  fact_sales.product_key exists in dim_products: 1 facts: order 424242",
        "FAILED  SUM(fact_sales.extended_sales_amount)",
    ] {
        assert!(text.contains(failed), "{failed}:\n{text}");
    }

    p.stop();
    p.cleanup().await;
    cdc.cleanup(&[]).await;
    let _ = std::fs::remove_dir_all(&archive.dir);
    db.drop().await;
}

/// Whether a replay's output holds an engine checkpoint
/// (`_replay/shards/<shard>/checkpoints/checkpoint-*.bin`).
fn has_checkpoint(out: &std::path::Path) -> bool {
    rainbow_testkit::files(out)
        .keys()
        .any(|k| k.starts_with("_replay/shards/") && k.contains("/checkpoints/checkpoint-"))
}

/// The archive records the source its records come from (the Kafka cluster, each topic's id, the
/// PostgreSQL cluster, database and slot of the CDC's heartbeats); an archiver reading another
/// source refuses to write there, naming what differs and what to do.
#[tokio::test(flavor = "multi_thread")]
async fn an_archive_of_another_source_is_refused() {
    let db = TestDb::seeded().await;
    let mut cdc = CdcProcess::new(&db.name, &[("RAINBOW_CDC__HEARTBEAT_INTERVAL_MS", "200")]);
    cdc.start();
    // A heartbeat (with the PostgreSQL facts) is in Kafka before the archiver starts.
    let heartbeat = cdc.heartbeat_topic();
    common::cdc::read_until(std::slice::from_ref(&heartbeat), DEADLINE, "a heartbeat", |r| !r.is_empty())
        .await;
    let mut archive = ArchiveProcess::new(&cdc.prefix);
    archive.start();
    common::eventually("a first segment", DEADLINE, || {
        let n = archive.segments().len();
        async move { (n > 0).then_some(()) }
    })
    .await;
    archive.stop();
    let recorded = archive.store.join(rainbow_archive::archiver::SOURCE_OBJECT);
    let cluster = std::fs::read_to_string(&recorded).unwrap();
    assert!(cluster.starts_with("Kafka cluster ") && cluster.len() > 20, "{cluster:?}");
    let facts = archive.store.join(rainbow_archive::archiver::SOURCE_FACTS);
    let fact = |key: &str| std::fs::read_to_string(facts.join(key)).unwrap_or_default();
    assert_eq!(fact("postgres.database"), db.name);
    assert_eq!(fact("postgres.slot"), cdc.slot);
    assert!(fact("postgres.system").len() >= 15, "{:?}", fact("postgres.system"));
    let orders_id = format!("kafka.topic.{}", cdc.topic("orders"));
    assert_eq!(fact(&orders_id).len(), 22, "a topic id in base64: {:?}", fact(&orders_id));

    // The same archive, as if its records came from another cluster, or another PostgreSQL.
    for (path, other, needle) in [
        (recorded.clone(), "Kafka cluster elsewhere".to_string(), "kafka.cluster: elsewhere recorded, "),
        (facts.join("postgres.system"), "42".to_string(), "postgres.system: 42 recorded, "),
    ] {
        let kept = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, other).unwrap();
        archive.start();
        let status = archive.wait(DEADLINE);
        assert_eq!(status.code(), Some(2), "{}", archive.logs());
        let logs = archive.logs();
        assert!(
            logs.contains("holds records of another source")
                && logs.contains(needle)
                && logs.contains("Reset recipes"),
            "{logs}"
        );
        std::fs::write(&path, kept).unwrap();
    }
    // The same source again: it resumes.
    archive.start();
    common::eventually("the archiver to run", DEADLINE, || async {
        archive.try_metrics().await?.contains("rainbow_archive_running 1").then_some(())
    })
    .await;
    archive.stop();

    archive.remove();
    cdc.cleanup(&[]).await;
    db.drop().await;
}
