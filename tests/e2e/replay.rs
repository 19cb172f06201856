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
use common::source::{caught_up, churn, place_orders};
use common::TestDb;
use rainbow_schemas::postgres::SOURCE_TABLES;
use rainbow_schemas::shape::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

/// `rainbow replay --all` of `archive` into `out`; (success, stdout + stderr).
fn replay(prefix: &str, archive: &Path, out: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rainbow"));
    cmd.args(["replay", "--all", "--quiet", "--out"])
        .arg(out)
        .arg("--archive")
        .arg(archive)
        .env("RAINBOW_CDC__TOPIC_PREFIX", prefix);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("rainbow runs");
    (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
}

/// Every file under `dir`, relative path → bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A table as ClickHouse sees it after merges (FINAL), ordered as the replay orders it (by
/// key), as an Arrow batch through the warehouse's one row → column conversion.
async fn clickhouse_batch<R: WarehouseRow>(
    wh: &rainbow_schemas::warehouse::Warehouse,
) -> ::arrow::array::RecordBatch {
    let rows = wh.read_final::<R>().await.unwrap();
    rainbow_schemas::shape::arrow::to_batch(rows).unwrap()
}

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
    let consumer: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", common::brokers()).create().unwrap();
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for t in &topics {
        let md = consumer.fetch_metadata(Some(t), Duration::from_secs(10)).unwrap();
        for part in md.topics()[0].partitions() {
            let (_, high) = consumer.fetch_watermarks(t, part.id(), Duration::from_secs(10)).unwrap();
            ends.insert((t.clone(), part.id()), high);
        }
    }
    let total: i64 = ends.values().sum();
    assert!(total > 1000, "{ends:?}");
    common::eventually("the archive to reach every partition's end", DEADLINE, || {
        let segs = archive.segments();
        let mut covered: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (_, topic, partition, first, last) in &segs {
            *covered.entry((topic.clone(), *partition)).or_default() += last - first + 1;
        }
        let done = ends.iter().all(|(k, high)| covered.get(k).copied().unwrap_or(0) == *high);
        async move { done.then_some(()) }
    })
    .await;
    let metrics = archive.metrics().await;
    for line in [
        "rainbow_archive_records_total{topic=\"",
        "rainbow_archive_bytes_total{topic=\"",
        "rainbow_archive_segments_total{topic=\"",
        "rainbow_archive_segment_write_duration_seconds_count",
        "rainbow_archive_consumer_lag_messages{",
        "rainbow_archive_running 1",
    ] {
        assert!(metrics.contains(line), "/metrics lacks {line}:\n{metrics}");
    }
    common::assert_alert_metrics_exported("archive", &metrics);
    archive.stop();
    let segs = archive.segments();
    let mut by_partition: BTreeMap<(String, i32), Vec<(i64, i64)>> = BTreeMap::new();
    for (_, topic, partition, first, last) in &segs {
        by_partition.entry((topic.clone(), *partition)).or_default().push((*first, *last));
    }
    for (k, ranges) in &by_partition {
        let mut next = 0;
        for (first, last) in ranges {
            assert_eq!(*first, next, "{k:?}: segments leave a gap or overlap: {ranges:?}");
            next = last + 1;
        }
    }
    let log = archive.logs();
    assert!(log.contains("segment written"), "{log}");

    // Replay, twice: byte-identical, the second holding at most 100 output rows in memory
    // (the rest spilled to sorted runs and merged).
    let (out1, out2, out3) =
        (archive.dir.join("replay1"), archive.dir.join("replay2"), archive.dir.join("replay3"));
    let (ok, text) = replay(&cdc.prefix, &archive.store, &out1, &[]);
    assert!(ok, "{text}");
    assert!(text.contains("fact_sales/: ") && text.contains("events applied"), "{text}");
    let (ok, text) = replay(&cdc.prefix, &archive.store, &out2, &[("RAINBOW_REPLAY__SPILL_ROWS", "100")]);
    assert!(ok, "{text}");
    let (a, b) = (files(&out1), files(&out2));
    assert!(a.keys().any(|k| k.starts_with("fact_sales/part-")), "{:?}", a.keys());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (path, bytes) in &a {
        assert!(b[path] == *bytes, "{path} differs between two replays");
    }

    // Aborted after 1,500 events (checkpoints every 1,000; spills every 100 rows, so the crash
    // leaves runs its checkpoint does not count), rerun: resumes, same bytes.
    let (ok, text) = replay(
        &cdc.prefix,
        &archive.store,
        &out3,
        &[
            ("RAINBOW_REPLAY_FAILPOINT", "crash_after_events=1500"),
            ("RAINBOW_REPLAY__CHECKPOINT_EVERY_EVENTS", "1000"),
            ("RAINBOW_REPLAY__SPILL_ROWS", "100"),
        ],
    );
    assert!(!ok, "the failpoint aborts: {text}");
    assert!(has_checkpoint(&out3), "the interrupted replay wrote a checkpoint");
    assert!(files(&out3).keys().any(|k| k.starts_with("_replay/runs/")), "output spilled before the crash");
    let (ok, text) = replay(
        &cdc.prefix,
        &archive.store,
        &out3,
        &[("RAINBOW_REPLAY__CHECKPOINT_EVERY_EVENTS", "1000"), ("RAINBOW_REPLAY__SPILL_ROWS", "100")],
    );
    assert!(ok && text.contains("resumed after 1000"), "{text}");
    let c = files(&out3);
    for (path, bytes) in a.iter().filter(|(p, _)| !p.starts_with("_replay/")) {
        assert!(c.get(path) == Some(bytes), "{path} differs after a resume");
    }

    // The Kappa invariant: every table ClickHouse holds equals the replay's, row for row.
    let wh = common::warehouse(&p.database).await;
    let rt = tokio::runtime::Handle::current();
    let store = rainbow_runtime::store::Store::open(out1.to_str().unwrap()).unwrap();
    macro_rules! same {
        ($($table:literal => $row:ty),* $(,)?) => {$(
            let streamed = clickhouse_batch::<$row>(&wh).await;
            let (s, h) = (store.clone(), rt.clone());
            let replayed = tokio::task::spawn_blocking(move || {
                rainbow_replay::replay::read_table(&s, &h, $table).unwrap().expect("table written")
            })
            .await
            .unwrap();
            assert!(streamed.num_rows() > 0, "{} is empty", $table);
            assert_eq!(replayed, streamed, "table {} differs between the replay and ClickHouse", $table);
        )*};
    }
    same!(
        "dim_customers" => DimCustomer,
        "dim_products" => DimProduct,
        "dim_sellers" => DimSeller,
        "dim_promotions" => DimPromotion,
        "dim_payments" => DimPayment,
        "dim_dates" => DimDate,
        "fact_sales" => FactSale,
        "agg_total_sales" => AggTotalSales,
        "agg_sales_by_day_of_week" => AggSalesByDayOfWeek,
        "agg_top_sellers" => AggTopSeller,
        "agg_product_profit" => AggProductProfit,
        "agg_payment_methods" => AggPaymentMethod,
        "agg_customer_ranking" => AggCustomerRanking,
    );

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
    let mut all = topics.clone();
    all.push(format!("__debezium-heartbeat.{}", cdc.prefix));
    cdc.cleanup(&all).await;
    let _ = std::fs::remove_dir_all(&archive.dir);
    db.drop().await;
}

/// Whether a replay's output holds an engine checkpoint (`_replay/checkpoints/checkpoint-*.bin`).
fn has_checkpoint(out: &std::path::Path) -> bool {
    std::fs::read_dir(out.join("_replay/checkpoints"))
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("checkpoint-")))
        .unwrap_or(false)
}
