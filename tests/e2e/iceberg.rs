//! The master dataset as Iceberg changelog tables, read by other engines: `rainbow archive`
//! (killed once mid-way) writes one table per source table through the embedded SQL catalog;
//! PyIceberg and ClickHouse's Iceberg reader (chdb `icebergLocal`) both read every table, and
//! each equals the source's change history (tests/iceberg/read_changelog.py): every Kafka offset
//! once, the changes applied in order give PostgreSQL's rows column for column, a column added
//! in the source is a column of the table. A replay of the tables, written as Iceberg tables too,
//! reads the same in both engines as its Parquet.

use crate::common;

use common::archive::{end_offsets, ArchiveProcess};
use common::cdc::{read_until, snapshot_done, CdcProcess};
use common::source::{churn, exec, place_orders};
use common::TestDb;
use rainbow_schemas::postgres::SOURCE_TABLES;
use std::collections::BTreeMap;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

/// The test venv's python (tests/run installs PyIceberg and chdb there).
fn python() -> std::path::PathBuf {
    let home = std::env::var_os("RAINBOW_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".rainbow"));
    let python = home.join("venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: tests/run creates it (pip install -r tests/iceberg/requirements.txt)",
        python.display()
    );
    python
}

/// Records committed to the changelog tables, from the archiver's metrics.
fn committed_records(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("rainbow_archive_records_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs the two readers over the tables against PostgreSQL's rows; returns their summary.
async fn read_with_other_engines(
    db: &TestDb,
    cdc: &CdcProcess,
    archive: &ArchiveProcess,
    ends: &BTreeMap<(String, i32), i64>,
) -> serde_json::Value {
    let mut tables = serde_json::Map::new();
    for t in SOURCE_TABLES {
        let topic = cdc.topic(t);
        let key: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a
               ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY a.attnum",
        )
        .bind(t)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let rows: serde_json::Value =
            sqlx::query_scalar(&format!("SELECT coalesce(json_agg(t), '[]'::json) FROM {t} t"))
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let ends: BTreeMap<String, i64> =
            ends.iter().filter(|((tp, _), _)| *tp == topic).map(|((_, p), e)| (p.to_string(), *e)).collect();
        tables.insert(format!("public_{t}"), serde_json::json!({"ends": ends, "key": key, "rows": rows}));
    }
    let iceberg = archive.store.join("iceberg");
    let expected = serde_json::json!({
        "catalog": iceberg.join("catalog.db"),
        "warehouse": iceberg,
        "namespace": "master",
        "tables": tables,
    });
    let file = archive.dir.join("expected.json");
    std::fs::write(&file, serde_json::to_vec(&expected).unwrap()).unwrap();
    let out = std::process::Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/iceberg/read_changelog.py"))
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the readers disagree with the source:\n{text}");
    let summary = text.lines().find_map(|l| l.strip_prefix("SUMMARY ")).unwrap_or_else(|| panic!("{text}"));
    serde_json::from_str(summary).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pyiceberg_and_clickhouse_read_the_changelog_tables_as_the_source_changed() {
    let db = TestDb::seeded().await;
    let mut cdc = CdcProcess::new(&db.name, &[]);
    cdc.start();
    let topics: Vec<String> = SOURCE_TABLES.iter().map(|t| cdc.topic(t)).collect();
    read_until(&topics, DEADLINE, "the snapshot", snapshot_done).await;
    let mut archive = ArchiveProcess::new(&cdc.prefix);
    archive.start();
    place_orders(&db.pool, 0, 40).await;
    churn(&db.pool).await;
    // A new source column: an Iceberg schema evolution.
    exec(&db.pool, "ALTER TABLE brands ADD COLUMN country TEXT").await;
    exec(&db.pool, "UPDATE brands SET country = 'VN' WHERE id <= 3").await;
    // The archiver dies without flushing; the restart neither loses nor doubles a record.
    common::eventually("a first append", DEADLINE, || {
        let n = archive.segments().len();
        async move { (n > 0).then_some(()) }
    })
    .await;
    archive.kill();
    place_orders(&db.pool, 40, 30).await;
    exec(&db.pool, "DELETE FROM orderdetails WHERE order_id = (SELECT max(id) FROM orders)").await;
    archive.start();
    let last: i64 = sqlx::query_scalar("SELECT max(id) FROM orders").fetch_one(&db.pool).await.unwrap();
    let orders = cdc.topic("orders");
    read_until(std::slice::from_ref(&orders), DEADLINE, "the last order in Kafka", |recs| {
        recs.iter().any(|r| r.payload().is_some_and(|p| p["after"]["id"] == last))
    })
    .await;
    cdc.stop();
    let ends = end_offsets(&topics);
    common::archive::assert_every_offset_once(&archive.store, &ends, DEADLINE).await;
    let metrics = archive.metrics().await;
    archive.stop();
    let total: i64 = ends.values().sum();
    let committed = committed_records(&metrics);
    // Records committed by the killed attempt are not counted by the second one's metrics.
    assert!(committed > 0.0 && committed <= total as f64, "{committed} of {total}:\n{metrics}");
    assert!(
        metrics.contains("rainbow_archive_iceberg_columns_added_total{table=\"public_brands\"}"),
        "{metrics}"
    );

    let summary = read_with_other_engines(&db, &cdc, &archive, &ends).await;
    let n = |table: &str, key: &str| summary[table][key].as_u64().unwrap_or(0);
    let seeded_brands: i64 =
        sqlx::query_scalar("SELECT count(*) FROM brands").fetch_one(&db.pool).await.unwrap();
    assert_eq!(n("public_brands", "r"), seeded_brands as u64, "{summary}");
    assert!(n("public_brands", "u") >= 4, "the rename and the three countries: {summary}");
    assert!(n("public_orders", "c") >= 70 && n("public_orders", "d") >= 1, "{summary}");
    assert!(n("public_orderdetails", "d") >= 2 && n("public_orderdetails", "u") >= 1, "{summary}");
    assert!(n("public_products", "u") >= 2, "{summary}");
    let records: u64 = summary.as_object().unwrap().values().map(|t| t["records"].as_u64().unwrap()).sum();
    assert_eq!(records, total as u64);

    // The archive replayed, its tables written as Iceberg tables too: other engines read them
    // as the replay's Parquet.
    let out = archive.dir.join("replay");
    let (ok, text) =
        common::replay::replay(&cdc.prefix, &archive.store, &out, &[("RAINBOW_REPLAY__ICEBERG", "true")]);
    assert!(ok && text.contains("and as Iceberg tables replay.<table>"), "{text}");
    assert!(text.contains("(0 from their raw envelope)"), "every record from the typed columns: {text}");
    let read = std::process::Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/iceberg/read_replay.py"))
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&read.stdout).to_string() + &String::from_utf8_lossy(&read.stderr);
    assert!(read.status.success(), "{text}");
    assert!(
        text.contains("ok fact_sales: ") && text.lines().filter(|l| l.starts_with("ok ")).count() >= 13,
        "{text}"
    );

    // Old snapshots are removed from the tables' metadata by command (all are recent here).
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rainbow"))
        .args(["archive", "expire", "--older-than-hours", "1"])
        .env("RAINBOW_STORAGE__URL", &archive.store)
        .env("RAINBOW_CDC__TOPIC_PREFIX", &cdc.prefix)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && text.contains("no snapshot older than 1 h"), "{text}");

    archive.remove();
    let all = cdc.topics();
    cdc.cleanup(&all).await;
    db.drop().await;
}
