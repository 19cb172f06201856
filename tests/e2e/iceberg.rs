//! The master dataset as Iceberg changelog tables, read by other engines: `rainbow archive`
//! (killed once mid-way) writes one table per source table through the embedded SQL catalog;
//! PyIceberg and ClickHouse's Iceberg reader (chdb `icebergLocal`) both read every table, and
//! each equals the source's change history (tests/iceberg/read_changelog.py): every Kafka offset
//! once, the changes applied in order give PostgreSQL's rows column for column, a column added
//! in the source is a column of the table. A replay of the tables, written as Iceberg tables too,
//! reads the same in both engines as its Parquet. The same through a REST catalog: Apache
//! Iceberg's own REST server (tests/iceberg/rest/serve) holds the archive's and the replay's
//! tables.

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
    rest: Option<&RestCatalog>,
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
        // As text: the reader parses its numbers as decimals (f64 would round wide NUMERICs).
        let rows: String =
            sqlx::query_scalar(&format!("SELECT coalesce(json_agg(t), '[]'::json)::text FROM {t} t"))
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let ends: BTreeMap<String, i64> =
            ends.iter().filter(|((tp, _), _)| *tp == topic).map(|((_, p), e)| (p.to_string(), *e)).collect();
        tables.insert(format!("public_{t}"), serde_json::json!({"ends": ends, "key": key, "rows": rows}));
    }
    let iceberg = archive.store.join("iceberg");
    let (catalog, warehouse) = match rest {
        Some(r) => (serde_json::json!(r.url), r.warehouse.clone()),
        None => (serde_json::json!(iceberg.join("catalog.db")), iceberg),
    };
    let expected = serde_json::json!({
        "catalog": catalog,
        "warehouse": warehouse,
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

/// `rainbow archive compact` over the archive's tables (`env`: the catalog when not the
/// default); returns its output.
fn compact(cdc: &CdcProcess, archive: &ArchiveProcess, env: &[(&str, &str)]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rainbow"))
        .args(["archive", "compact"])
        .env("RAINBOW_STORAGE__URL", &archive.store)
        .env("RAINBOW_CDC__TOPIC_PREFIX", &cdc.prefix)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    text
}

/// A seeded database, its CDC past the snapshot, the CDC's topics and an archiver of them (not
/// started).
async fn source_and_archiver() -> (TestDb, CdcProcess, Vec<String>, ArchiveProcess) {
    let db = TestDb::seeded().await;
    let mut cdc = CdcProcess::new(&db.name, &[]);
    cdc.start();
    let topics: Vec<String> = SOURCE_TABLES.iter().map(|t| cdc.topic(t)).collect();
    read_until(&topics, DEADLINE, "the snapshot", snapshot_done).await;
    let archive = ArchiveProcess::new(&cdc.prefix);
    (db, cdc, topics, archive)
}

/// Widens two columns of `products` (`integer` -> `bigint`, `NUMERIC(15,2)` -> `NUMERIC(18,2)`)
/// and writes values only the wider types hold: the archiver promotes the Iceberg columns.
async fn widen_products(db: &TestDb) {
    exec(
        &db.pool,
        "ALTER TABLE products ALTER COLUMN review_count TYPE BIGINT, ALTER COLUMN price TYPE NUMERIC(18,2)",
    )
    .await;
    exec(
        &db.pool,
        "UPDATE products SET review_count = 3000000000, price = 1234567890123456.78 WHERE id <= 2",
    )
    .await;
}

/// Waits for [`widen_products`]'s two changes in Kafka.
async fn widened_products_in_kafka(cdc: &CdcProcess) {
    read_until(&[cdc.topic("products")], DEADLINE, "the widened products in Kafka", |recs| {
        recs.iter()
            .filter(|r| r.payload().is_some_and(|p| p["after"]["review_count"] == 3_000_000_000_i64))
            .count()
            == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pyiceberg_and_clickhouse_read_the_changelog_tables_as_the_source_changed() {
    let (db, mut cdc, topics, mut archive) = source_and_archiver().await;
    // Small segments: many small files for the compaction below.
    archive.env.push(("RAINBOW_ARCHIVE__SEGMENT_MAX_RECORDS".into(), "25".into()));
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
    // Widened source columns (counted by the restarted archiver).
    widen_products(&db).await;
    let last: i64 = sqlx::query_scalar("SELECT max(id) FROM orders").fetch_one(&db.pool).await.unwrap();
    let orders = cdc.topic("orders");
    read_until(std::slice::from_ref(&orders), DEADLINE, "the last order in Kafka", |recs| {
        recs.iter().any(|r| r.payload().is_some_and(|p| p["after"]["id"] == last))
    })
    .await;
    widened_products_in_kafka(&cdc).await;
    cdc.stop();
    let ends = end_offsets(&topics);
    common::archive::assert_every_offset_once(&archive.store, &ends, DEADLINE).await;
    // The archiver counts a promotion just after the commit that the wait above saw.
    let promoted = "rainbow_archive_iceberg_columns_promoted_total{table=\"public_products\"} 2";
    let metrics = common::eventually("the promoted columns counted", DEADLINE, || {
        let archive = &archive;
        async move { Some(archive.metrics().await).filter(|m| m.contains(promoted)) }
    })
    .await;
    archive.stop();
    let total: i64 = ends.values().sum();
    let committed = committed_records(&metrics);
    // Records committed by the killed attempt are not counted by the second one's metrics.
    assert!(committed > 0.0 && committed <= total as f64, "{committed} of {total}:\n{metrics}");
    assert!(
        metrics.contains("rainbow_archive_iceberg_columns_added_total{table=\"public_brands\"}"),
        "{metrics}"
    );
    // The restart resumed after the offsets the tables committed: nothing was read twice.
    assert!(metrics.contains("\nrainbow_archive_existing_segments_total 0\n"), "{metrics}");

    let summary = read_with_other_engines(&db, &cdc, &archive, &ends, None).await;
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

    // Compacted (each append wrote small files): the same history, in fewer files, for every
    // reader; the replay below reads the compacted tables.
    let files_before = archive.segments().len();
    let text = compact(&cdc, &archive, &[]);
    assert!(text.contains("public_orders:") && text.contains("files rewritten as"), "{text}");
    let files_after = archive.segments().len();
    assert!(files_after < files_before, "{files_before} -> {files_after} data files:\n{text}");
    common::archive::assert_every_offset_once(&archive.store, &ends, DEADLINE).await;
    assert_eq!(read_with_other_engines(&db, &cdc, &archive, &ends, None).await, summary);

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
    cdc.cleanup(&[]).await;
    db.drop().await;
}

/// Apache Iceberg's REST catalog server on 127.0.0.1 (tests/iceberg/rest/serve), its catalog and
/// warehouse in a directory of its own; stopped and removed on drop.
struct RestCatalog {
    url: String,
    warehouse: std::path::PathBuf,
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl RestCatalog {
    /// Starts the server (resolving it from Maven Central the first time) and waits until it
    /// listens.
    fn start() -> RestCatalog {
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(common::unique_name("rest"));
        let warehouse = dir.join("warehouse");
        let port = common::process::free_port();
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let mut child =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/iceberg/rest/serve"))
                .arg(port.to_string())
                .arg(dir.join("catalog.db"))
                .arg(&warehouse)
                .stdout(std::process::Stdio::piped())
                .stderr(log)
                .spawn()
                .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        // The first start resolves about 80 MB of jars.
        if rx.recv_timeout(Duration::from_secs(600)).is_err() {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            panic!("the REST catalog did not start:\n{log}");
        }
        RestCatalog { url: format!("http://127.0.0.1:{port}"), warehouse, dir, child }
    }
}

impl Drop for RestCatalog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP gateway on 127.0.0.1 in front of `upstream` that forwards every request (one per
/// connection) and answers the first commit of a `replace` snapshot with 502 once the server has
/// applied it; returns its URL and how many answers it lost.
async fn answer_losing_gateway(upstream: &str) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = upstream.trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let lost = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = lost.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (upstream, lost) = (upstream.clone(), counter.clone());
            tokio::spawn(async move {
                // The request: its head, then Content-Length bytes of body.
                let mut req = Vec::new();
                let mut buf = [0u8; 8192];
                let head_end = loop {
                    let n = client.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&req[..head_end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while req.len() < head_end + length {
                    let n = client.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                // One request per connection, both ways.
                let mut head: Vec<&str> = head
                    .trim_end()
                    .split("\r\n")
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .collect();
                head.push("Connection: close");
                let mut forwarded = (head.join("\r\n") + "\r\n\r\n").into_bytes();
                forwarded.extend_from_slice(&req[head_end..]);
                let mut server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                server.write_all(&forwarded).await.unwrap();
                let mut answer = Vec::new();
                server.read_to_end(&mut answer).await.unwrap();
                let body = String::from_utf8_lossy(&req[head_end..]);
                let replace = head[0].starts_with("POST ") && body.contains("\"operation\":\"replace\"");
                let ok = answer.starts_with(b"HTTP/1.1 200");
                if replace && ok && lost.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    answer = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_vec();
                }
                let _ = client.write_all(&answer).await;
                let _ = client.shutdown().await;
            });
        }
    });
    (url, lost)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_archive_and_the_replay_work_through_a_rest_catalog() {
    let rest = RestCatalog::start();
    let (db, mut cdc, topics, mut archive) = source_and_archiver().await;
    archive.env.push(("RAINBOW_ARCHIVE__CATALOG_URL".into(), rest.url.clone()));
    archive.env.push(("RAINBOW_ARCHIVE__SEGMENT_MAX_RECORDS".into(), "25".into()));
    archive.start();
    place_orders(&db.pool, 0, 30).await;
    churn(&db.pool).await;
    // A type promotion is a commit of the archiver's own through the REST endpoint.
    widen_products(&db).await;
    let last: i64 = sqlx::query_scalar("SELECT max(id) FROM orders").fetch_one(&db.pool).await.unwrap();
    read_until(&[cdc.topic("orders")], DEADLINE, "the last order in Kafka", |recs| {
        recs.iter().any(|r| r.payload().is_some_and(|p| p["after"]["id"] == last))
    })
    .await;
    widened_products_in_kafka(&cdc).await;
    cdc.stop();
    let ends = end_offsets(&topics);
    let total: i64 = ends.values().sum();
    common::eventually("every record committed through the REST catalog", DEADLINE, || {
        let archive = &archive;
        async move { (committed_records(&archive.metrics().await) as i64 == total).then_some(()) }
    })
    .await;
    let metrics = archive.metrics().await;
    assert!(
        metrics.contains("rainbow_archive_iceberg_columns_promoted_total{table=\"public_products\"} 2"),
        "{metrics}"
    );
    archive.stop();
    // Nothing went to the embedded catalog: the tables are the REST catalog's.
    assert!(!archive.store.join("iceberg/catalog.db").exists());

    // Compacted through the REST catalog's commit endpoint before the engines read it, behind a
    // gateway that loses the answer to the first compaction commit (the server applied it): the
    // compaction reads the table back, finds its snapshot there and does not commit it again.
    let (gateway, lost) = answer_losing_gateway(&rest.url).await;
    let text = compact(&cdc, &archive, &[("RAINBOW_ARCHIVE__CATALOG_URL", gateway.as_str())]);
    assert!(text.contains("public_orders:") && text.contains("files rewritten as"), "{text}");
    assert_eq!(lost.load(std::sync::atomic::Ordering::SeqCst), 1, "{text}");
    assert!(text.contains("leaves the compaction's commit unknown"), "{text}");
    let summary = read_with_other_engines(&db, &cdc, &archive, &ends, Some(&rest)).await;
    let records: u64 = summary.as_object().unwrap().values().map(|t| t["records"].as_u64().unwrap()).sum();
    assert_eq!(records, total as u64, "{summary}");
    assert!(summary["public_orders"]["c"].as_u64().unwrap_or(0) >= 30, "{summary}");

    // The replay reads the tables through the catalog and writes its own there too.
    let out = archive.dir.join("replay");
    let (ok, text) = common::replay::replay(
        &cdc.prefix,
        &archive.store,
        &out,
        &[
            ("RAINBOW_ARCHIVE__CATALOG_URL", rest.url.as_str()),
            ("RAINBOW_REPLAY__ICEBERG", "true"),
            ("RAINBOW_REPLAY__CATALOG_URL", rest.url.as_str()),
        ],
    );
    assert!(ok && text.contains(&format!("(catalog {})", rest.url)), "{text}");
    let read = std::process::Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/iceberg/read_replay.py"))
        .arg(&out)
        .arg(&rest.url)
        .arg(&rest.warehouse)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&read.stdout).to_string() + &String::from_utf8_lossy(&read.stderr);
    assert!(read.status.success(), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 13, "{text}");

    archive.remove();
    cdc.cleanup(&[]).await;
    db.drop().await;
}
