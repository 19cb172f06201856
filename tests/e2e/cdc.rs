//! `rainbow cdc` end to end against the real PostgreSQL and Kafka of the local stack: snapshot
//! then streaming over every source table, clean restarts, crashes (a failpoint mid-transaction
//! and `kill -9` under load), heartbeats on an idle database, snapshot modes and start-up errors.
//! Each test has its own database, slot, publication, topic prefix and offsets directory.

use crate::common;

use common::cdc::{psql, read_topics, read_until, snapshot_done, CdcProcess, Rec};
use common::TestDb;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rainbow_schemas::postgres::SOURCE_TABLES as TABLES;
/// An event's `after` with its commit position.
type Positioned = ((u64, u64), Value);

const DEADLINE: Duration = Duration::from_secs(90);

async fn exec(pool: &sqlx::PgPool, sql: &str) {
    sqlx::raw_sql(sql).execute(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn scalar<T>(pool: &sqlx::PgPool, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn all_topics(cdc: &CdcProcess) -> Vec<String> {
    let mut t: Vec<String> = TABLES.iter().map(|t| cdc.topic(t)).collect();
    t.push(format!("__debezium-heartbeat.{}", cdc.prefix));
    t
}

/// Change events (not tombstones) of one table, in offset order per partition.
fn events<'a>(records: &'a [Rec], topic: &'a str) -> impl Iterator<Item = Value> + 'a {
    records.iter().filter(move |r| r.topic == topic).filter_map(Rec::payload)
}

fn count_ops(records: &[Rec], topic: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for p in events(records, topic) {
        *m.entry(p["op"].as_str().unwrap().to_string()).or_default() += 1;
    }
    m
}

/// The commit position of an event: (commit LSN, change LSN) from `source.sequence`.
fn position(p: &Value) -> (u64, u64) {
    let seq: Vec<Option<String>> = serde_json::from_str(p["source"]["sequence"].as_str().unwrap()).unwrap();
    let n = |s: &Option<String>| s.as_deref().map_or(0, |s| s.parse().unwrap());
    (n(&seq[0]), n(&seq[1]))
}

fn decimal(base64: &str, scale: u32) -> f64 {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(base64).unwrap();
    let mut v: i128 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
    for b in bytes {
        v = (v << 8) | i128::from(b);
    }
    v as f64 / 10f64.powi(scale as i32)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream_over_every_table() {
    let db = TestDb::seeded().await;
    exec(
        &db.pool,
        "INSERT INTO inventories (product_id, quantity) SELECT id, 100 FROM products WHERE id <= 50;
         INSERT INTO orders (id, customer_id, payment_id) VALUES (1, 1, 1);
         INSERT INTO orderdetails (order_id, product_id, quantity, price) VALUES (1, 1, 2, 10.50), (1, 2, 1, 3.00);
         INSERT INTO api_idempotency_keys (key, request, order_id) VALUES ('k1', '{}', 1);",
    )
    .await;
    let mut expected_rows = BTreeMap::new();
    for t in TABLES {
        expected_rows.insert(t, scalar::<i64>(&db.pool, &format!("SELECT count(*) FROM {t}")).await as usize);
    }
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut cdc = CdcProcess::new(
        &db.name,
        &[("RAINBOW_CDC__METRICS_LISTEN", &metrics), ("RAINBOW_CDC__HEARTBEAT_INTERVAL_MS", "300")],
    );
    let orders_topic = format!("{}_orders", cdc.prefix);
    cdc.env.push(("RAINBOW_CDC__TOPIC_MAP".into(), format!("public.orders={orders_topic}")));
    let mut topics = all_topics(&cdc);
    topics.push(orders_topic.clone());
    cdc.start();

    let snapshot_rows = |records: &[Rec], t: &str| {
        let topic = if t == "orders" { orders_topic.clone() } else { cdc.topic(t) };
        count_ops(records, &topic).get("r").copied().unwrap_or(0)
    };
    // Partitions become readable independently: the `last` record can show before earlier rows
    // of other partitions, so wait for the counts themselves.
    let records = read_until(&topics, DEADLINE, "the snapshot", |r| {
        snapshot_done(r) && TABLES.iter().all(|t| snapshot_rows(r, t) >= expected_rows[t])
    })
    .await;
    for t in TABLES {
        assert_eq!(snapshot_rows(&records, t), expected_rows[t], "snapshot rows of {t}\n{}", cdc.logs());
    }
    assert!(read_topics(&[cdc.topic("orders")]).await.is_empty(), "orders renamed by the topic map");
    let published: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1")
            .bind(&cdc.publication)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let mut want: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    want.sort();
    assert_eq!(published, want, "the publication holds the source tables and nothing else");

    // Streaming: every table, every operation; each statement its own transaction.
    for sql in [
        "INSERT INTO brands (id, name) VALUES (1000, 'Brand X')",
        "UPDATE brands SET name = 'Brand Y' WHERE id = 1000",
        "UPDATE categories SET name = name || ' (new)' WHERE id = 1",
        "INSERT INTO customers (id, name, email) VALUES (1000, 'Ann', 'ann@example.com')",
        "DELETE FROM customers WHERE id = 1000",
        "UPDATE sellers SET name = 'Seller Z' WHERE id = 1",
        "INSERT INTO payments (id, method) VALUES (1000, 'Voucher')",
        "UPDATE promotions SET price_treatment = price_treatment + 1 WHERE id = 1",
        "UPDATE products SET price = 1234.56 WHERE id = 1",
        "INSERT INTO orders (id, customer_id, payment_id) VALUES (2, 2, 2)",
        "UPDATE orders SET payment_id = 3 WHERE id = 2",
        "INSERT INTO orderdetails (order_id, product_id, quantity, price) VALUES (2, 3, 1, 5.00), (2, 4, 2, 6.00)",
        "UPDATE orderdetails SET quantity = 3 WHERE order_id = 2 AND product_id = 3",
        "DELETE FROM orderdetails WHERE order_id = 2 AND product_id = 4",
        "UPDATE inventories SET quantity = 99 WHERE product_id = 1",
        "INSERT INTO api_idempotency_keys (key, request, order_id) VALUES ('k2', '{}', 2)",
        "TRUNCATE inventories",
    ] {
        exec(&db.pool, sql).await;
    }
    let want = [
        ("brands", "c1 u1"),
        ("categories", "u1"),
        ("customers", "c1 d1"),
        ("sellers", "u1"),
        ("payments", "c1"),
        ("promotions", "u1"),
        ("products", "u1"),
        ("orders", "c1 u1"),
        ("orderdetails", "c2 d1 u1"),
        ("inventories", "t1 u1"),
    ];
    let streamed = |records: &[Rec], table: &str| {
        let topic = if table == "orders" { orders_topic.clone() } else { cdc.topic(table) };
        let mut m = count_ops(records, &topic);
        m.remove("r");
        m.into_iter().map(|(k, v)| format!("{k}{v}")).collect::<Vec<_>>().join(" ")
    };
    // Partitions are acknowledged independently: wait for all of them, not just the last event.
    let records = read_until(&topics, DEADLINE, "the streamed changes", |r| {
        want.iter().all(|(table, ops)| streamed(r, table) == *ops)
    })
    .await;
    for (table, ops) in want {
        assert_eq!(streamed(&records, table), ops, "streamed events of {table}\n{}", cdc.logs());
    }
    // The product's price change, as Debezium's Decimal bytes, with the old row in `before`.
    let update = events(&records, &cdc.topic("products")).find(|p| p["op"] == "u").unwrap();
    assert_eq!(update["after"]["id"], 1);
    assert_eq!(decimal(update["after"]["price"].as_str().unwrap(), 2), 1234.56);
    assert_ne!(update["before"]["price"], update["after"]["price"]);
    assert_eq!(update["source"]["table"], "products");
    assert_eq!(update["source"]["db"], db.name.as_str());
    // A tombstone (same key, no value) follows the delete.
    let customers: Vec<&Rec> = records.iter().filter(|r| r.topic == cdc.topic("customers")).collect();
    let d = customers.iter().position(|r| r.payload().is_some_and(|p| p["op"] == "d")).unwrap();
    let tombstone = customers.iter().skip(d + 1).find(|r| r.key == customers[d].key).unwrap();
    assert!(tombstone.value.is_none());
    // Commit order: within the stream, commit positions increase across tables.
    let mut streamed_positions: Vec<(u64, u64)> = records
        .iter()
        .filter_map(Rec::payload)
        .filter(|p| p.get("op").is_some_and(|op| op != "r"))
        .map(|p| position(&p))
        .collect();
    streamed_positions.sort();
    streamed_positions.dedup_by_key(|p| p.0);
    assert_eq!(streamed_positions.len(), 17 - 1, "one commit per statement that touched a captured table");

    // Metrics of the running reader. A transaction is counted when Kafka acknowledged it, which
    // can come after a consumer read it: wait for the last one.
    let body = common::eventually("every streamed transaction counted in /metrics", DEADLINE, || async {
        let body = reqwest::get(format!("http://{metrics}/metrics")).await.ok()?.text().await.ok()?;
        let acked = common::metric_value(&body, "rainbow_cdc_commit_to_ack_seconds_count")?;
        (acked >= 16.0).then_some(body)
    })
    .await;
    for needle in [
        "rainbow_cdc_events_total{op=\"u\",table=\"public.products\"} 1",
        "rainbow_cdc_snapshot_rows_total{table=\"public.products\"} 3000",
        "rainbow_cdc_streaming 1",
        "rainbow_cdc_kafka_delivery_errors_total 0",
    ] {
        assert!(body.contains(needle), "/metrics lacks {needle:?}:\n{body}");
    }
    common::assert_alert_metrics_exported("cdc", &body);
    let value = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("{name} missing:\n{body}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(value("rainbow_cdc_commit_to_ack_seconds_count") >= 16.0);
    assert!(value("rainbow_cdc_last_heartbeat_timestamp_seconds") > 1.7e9);
    assert!(value("rainbow_cdc_confirmed_lsn") > 0.0);
    let heartbeats = records.iter().filter(|r| r.topic.starts_with("__debezium-heartbeat.")).count();
    assert!(heartbeats >= 1, "heartbeat records");

    cdc.stop();
    cdc.cleanup(&topics).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_restart_loses_nothing_and_repeats_nothing() {
    let db = TestDb::seeded().await;
    let mut cdc = CdcProcess::new(&db.name, &[("RAINBOW_CDC__TOMBSTONES_ON_DELETE", "false")]);
    let topics = all_topics(&cdc);
    let products = cdc.topic("products");
    let updates = |r: &[Rec]| count_ops(r, &products).get("u").copied().unwrap_or(0);
    cdc.start();
    read_until(&topics, DEADLINE, "the snapshot", snapshot_done).await;
    for id in 1..=20 {
        exec(&db.pool, &format!("UPDATE products SET review_count = review_count + 1 WHERE id = {id}")).await;
    }
    read_until(&topics, DEADLINE, "20 updates", |r| updates(r) == 20).await;
    cdc.stop();

    // The stored offset and the slot agree, and cover the last update's commit.
    let stored: String = cdc.stored_offset().unwrap()["lsn"].as_str().unwrap().to_string();
    let (confirmed, covers): (String, bool) = sqlx::query_as(
        "SELECT confirmed_flush_lsn::text, confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&cdc.slot)
    .bind(&stored)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(confirmed, stored);
    assert!(covers);
    assert_eq!(cdc.stored_offset().unwrap()["snapshot_completed"], true);

    // Changes while the reader is down, then more after it restarted.
    for id in 21..=40 {
        exec(&db.pool, &format!("UPDATE products SET review_count = review_count + 1 WHERE id = {id}")).await;
    }
    cdc.start();
    for id in 41..=60 {
        exec(&db.pool, &format!("UPDATE products SET review_count = review_count + 1 WHERE id = {id}")).await;
    }
    exec(&db.pool, "INSERT INTO customers (id, name, email) VALUES (5000, 'Bo', 'bo@example.com')").await;
    exec(&db.pool, "DELETE FROM customers WHERE id = 5000").await;
    let records = read_until(&topics, DEADLINE, "60 updates and the delete", |r| {
        updates(r) >= 60 && count_ops(r, &cdc.topic("customers")).contains_key("d")
    })
    .await;
    cdc.stop();

    // Partitions interleave; commit positions order them.
    let mut updates: Vec<Value> = events(&records, &products).filter(|p| p["op"] == "u").collect();
    updates.sort_by_key(position);
    let ids: Vec<i64> = updates.iter().map(|p| p["after"]["id"].as_i64().unwrap()).collect();
    assert_eq!(
        ids,
        (1..=60).collect::<Vec<_>>(),
        "each update exactly once, in commit order\n{}",
        cdc.logs()
    );
    let snapshot_rows = records.iter().filter(|r| r.payload().is_some_and(|p| p["op"] == "r")).count();
    let total: i64 = scalar(
        &db.pool,
        "SELECT (SELECT count(*) FROM brands) + (SELECT count(*) FROM categories) + (SELECT count(*) FROM customers) \
         + (SELECT count(*) FROM sellers) + (SELECT count(*) FROM payments) + (SELECT count(*) FROM promotions) \
         + (SELECT count(*) FROM products)",
    )
    .await;
    assert_eq!(snapshot_rows as i64, total, "the restart took no second snapshot");
    let tombstones = records.iter().filter(|r| r.value.is_none()).count();
    assert_eq!(tombstones, 0, "tombstones_on_delete = false");

    // A slot that vanished (dropped by hand, a failover) is not silently recreated: a new slot
    // would start at the present and skip what happened in between (Debezium's DBZ-5739).
    exec(&db.pool, &format!("SELECT pg_drop_replication_slot('{}')", cdc.slot)).await;
    cdc.start();
    let status = cdc.wait(DEADLINE);
    // Exit code 3: a permanent error, which `rainbow up` does not retry.
    assert_eq!(status.code(), Some(3));
    assert!(cdc.logs().contains(&format!("replication slot \"{}\" is gone", cdc.slot)), "{}", cdc.logs());
    cdc.cleanup(&topics).await;
    db.drop().await;
}

/// The failpoint aborts the reader in the middle of a large transaction: rows of a COPY (which
/// share one WAL position) and rows of one INSERT statement (which share a commit position).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_inside_a_transaction_then_restart() {
    let db = TestDb::seeded().await;
    exec(&db.pool, "INSERT INTO orders (id, customer_id, payment_id) VALUES (1, 1, 1)").await;
    let mut cdc = CdcProcess::new(&db.name, &[]);
    let topics = all_topics(&cdc);
    cdc.env.push(("RAINBOW_CDC_FAILPOINT".into(), "crash_after_events=1510".into()));
    cdc.start();
    read_until(&topics, DEADLINE, "the snapshot", snapshot_done).await;
    // Transaction 1: 10 updates in one statement. Transaction 2: 2,000 order lines by COPY.
    // Transaction 3: 2,000 inventory rows by one INSERT ... SELECT.
    exec(&db.pool, "UPDATE products SET sold_count = sold_count + 1 WHERE id <= 10").await;
    let copy: String = (1..=2000).map(|p| format!("1\t{p}\t1\t10.00\t\\N\n")).collect();
    let file = cdc.dir.join("lines.tsv");
    std::fs::write(&file, copy).unwrap();
    psql(
        &db.name,
        &[
            "-c",
            &format!(
                "\\copy orderdetails (order_id, product_id, quantity, price, promotion_id) FROM '{}'",
                file.display()
            ),
        ],
    );
    exec(
        &db.pool,
        "INSERT INTO inventories (product_id, quantity) SELECT id, 5 FROM products WHERE id <= 2000",
    )
    .await;
    let status = cdc.wait(DEADLINE);
    assert!(!status.success(), "the failpoint aborts the reader: {status}");
    let crashed_at: Option<u64> = cdc.stored_offset().and_then(|o| {
        o["lsn"].as_str().map(|l| {
            let (hi, lo) = l.split_once('/').unwrap();
            (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
        })
    });

    cdc.env.retain(|(k, _)| k != "RAINBOW_CDC_FAILPOINT");
    cdc.start();
    let lines = cdc.topic("orderdetails");
    let inventories = cdc.topic("inventories");
    let distinct = |r: &[Rec], topic: &str| {
        events(r, topic)
            .filter(|p| p["op"] == "c")
            .map(|p| p["after"].to_string())
            .collect::<BTreeSet<_>>()
            .len()
    };
    let products = cdc.topic("products");
    let records = read_until(&topics, DEADLINE, "every row after the restart", |r| {
        distinct(r, &lines) == 2000
            && distinct(r, &inventories) == 2000
            && events(r, &products).filter(|p| p["op"] == "u").count() >= 10
    })
    .await;
    cdc.stop();

    // Nothing lost; repeats only of transactions past the offset stored before the crash.
    let mut seen: HashMap<(String, u64, u64, String), usize> = HashMap::new();
    for r in records.iter().filter(|r| !r.topic.starts_with("__")) {
        if let Some(p) = r.payload() {
            if p["op"] != "r" {
                let (commit, lsn) = position(&p);
                *seen.entry((r.topic.clone(), commit, lsn, p["after"].to_string())).or_default() += 1;
            }
        }
    }
    let updates = events(&records, &products).filter(|p| p["op"] == "u").count();
    assert!(updates >= 10);
    for ((topic, commit, _, _), n) in &seen {
        if *n > 1 {
            let boundary = crashed_at.unwrap_or(0);
            assert!(
                *commit >= boundary,
                "{topic}: an event committed before the stored offset was sent twice"
            );
        }
    }
    // Rows of the COPY share a WAL position; none was skipped on resume (checked by `distinct`).
    let copy_positions: BTreeSet<(u64, u64)> =
        events(&records, &lines).filter(|p| p["op"] == "c").map(|p| position(&p)).collect();
    assert!(copy_positions.len() < 2000, "COPY rows share WAL positions: {}", copy_positions.len());
    cdc.cleanup(&topics).await;
    db.drop().await;
}

/// `kill -9` while a writer commits transactions: every committed transaction is in Kafka, and
/// each key's events are in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart() {
    let db = TestDb::seeded().await;
    let mut cdc = CdcProcess::new(&db.name, &[]);
    let topics = all_topics(&cdc);
    cdc.start();
    read_until(&topics, DEADLINE, "the snapshot", snapshot_done).await;

    let pool = db.pool.clone();
    let writer = tokio::spawn(async move {
        let mut xids = BTreeSet::new();
        for i in 0..600i64 {
            let mut tx = pool.begin().await.unwrap();
            let xid: i64 = sqlx::query_scalar("SELECT txid_current()").fetch_one(&mut *tx).await.unwrap();
            let product = 1 + i % 300;
            sqlx::query(
                "INSERT INTO inventories (product_id, quantity) VALUES ($1, $2) \
                 ON CONFLICT (product_id) DO UPDATE SET quantity = EXCLUDED.quantity",
            )
            .bind(product)
            .bind(i)
            .execute(&mut *tx)
            .await
            .unwrap();
            sqlx::query("UPDATE products SET sold_count = sold_count + 1 WHERE id = $1")
                .bind(product)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            xids.insert(xid);
        }
        xids
    });
    // Kill once part of the stream is in Kafka, while the writer goes on.
    read_until(&topics, DEADLINE, "some streamed events", |r| {
        count_ops(r, &cdc.topic("inventories")).get("c").copied().unwrap_or(0) >= 50
    })
    .await;
    cdc.kill();
    cdc.start();
    let xids = writer.await.unwrap();
    // Both tables of every transaction: their partitions become readable independently.
    let records = read_until(&topics, DEADLINE, "every committed transaction", |r| {
        ["inventories", "products"].iter().all(|table| {
            let got: BTreeSet<i64> =
                events(r, &cdc.topic(table)).filter_map(|p| p["source"]["txId"].as_i64()).collect();
            xids.iter().all(|x| got.contains(&(x & 0xFFFF_FFFF)))
        })
    })
    .await;
    cdc.stop();

    // Per key: commit order (ignoring whole repeats), and the last event equals the table.
    for (table, key_col) in [("inventories", "product_id"), ("products", "id")] {
        let mut per_key: BTreeMap<i64, Vec<Positioned>> = BTreeMap::new();
        for p in events(&records, &cdc.topic(table)).filter(|p| p["op"] != "r") {
            per_key
                .entry(p["after"][key_col].as_i64().unwrap())
                .or_default()
                .push((position(&p), p["after"].clone()));
        }
        for (key, list) in &per_key {
            let mut first_seen: Vec<&((u64, u64), Value)> = Vec::new();
            for e in list {
                if !first_seen.iter().any(|f| f.0 == e.0) {
                    first_seen.push(e);
                }
            }
            assert!(
                first_seen.windows(2).all(|w| w[0].0 < w[1].0),
                "{table} {key}: events out of commit order"
            );
        }
        let sql = format!("SELECT {key_col}, row_to_json(t)::text FROM {table} t WHERE {key_col} <= 300");
        let rows: Vec<(i64, String)> = sqlx::query_as(&sql).fetch_all(&db.pool).await.unwrap();
        for (key, _) in rows {
            if let Some(list) = per_key.get(&key) {
                let last = &list.last().unwrap().1;
                let want: i64 = if table == "inventories" {
                    scalar(&db.pool, &format!("SELECT quantity FROM inventories WHERE product_id = {key}"))
                        .await
                } else {
                    scalar(&db.pool, &format!("SELECT sold_count FROM products WHERE id = {key}")).await
                };
                let field = if table == "inventories" { "quantity" } else { "sold_count" };
                assert_eq!(last[field].as_i64(), Some(want), "{table} {key}: last event equals the row");
            }
        }
    }
    cdc.cleanup(&topics).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_idle_slot_moving() {
    let db = TestDb::create().await;
    rainbow_schemas::postgres::MIGRATOR.run(&db.pool).await.unwrap();
    let mut cdc = CdcProcess::new(
        &db.name,
        &[
            ("RAINBOW_CDC__HEARTBEAT_INTERVAL_MS", "300"),
            (
                "RAINBOW_CDC__HEARTBEAT_ACTION_QUERY",
                "SELECT pg_logical_emit_message(false, 'rainbow', 'heartbeat')",
            ),
        ],
    );
    let topics = all_topics(&cdc);
    cdc.start();
    let until = std::time::Instant::now() + DEADLINE;
    while cdc.stored_offset().is_none_or(|o| o["snapshot_completed"] != true) {
        assert!(std::time::Instant::now() < until, "snapshot of the empty tables\n{}", cdc.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No captured table changes from here on; only the action query (and PostgreSQL) write WAL.
    let confirmed = || async {
        let v: Option<String> = sqlx::query_scalar(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&cdc.slot)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        v.unwrap()
    };
    let start_confirmed = confirmed().await;
    let wal_now: String = scalar(&db.pool, "SELECT pg_current_wal_lsn()::text").await;
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        let passed: bool = sqlx::query_scalar(
            "SELECT confirmed_flush_lsn > $2::pg_lsn AND confirmed_flush_lsn >= $3::pg_lsn \
             FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&cdc.slot)
        .bind(&start_confirmed)
        .bind(&wal_now)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if passed {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the slot stayed at {}\n{}",
            confirmed().await,
            cdc.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = read_until(&topics, DEADLINE, "heartbeat records", |r| {
        r.iter().filter(|r| r.topic.starts_with("__debezium-heartbeat.")).count() >= 3
    })
    .await;
    let beats: Vec<i64> = records
        .iter()
        .filter(|r| r.topic.starts_with("__debezium-heartbeat."))
        .map(|r| r.payload().unwrap()["ts_ms"].as_i64().unwrap())
        .collect();
    assert!(beats.windows(2).all(|w| w[0] <= w[1]), "heartbeat times increase: {beats:?}");
    let key =
        records.iter().find(|r| r.topic.starts_with("__debezium-heartbeat.")).unwrap().key_json().unwrap();
    assert_eq!(key["payload"]["serverName"], cdc.prefix.as_str());
    assert!(records.iter().all(|r| r.topic.starts_with("__debezium-heartbeat.")), "no change events");
    cdc.stop();
    cdc.cleanup(&topics).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_modes() {
    let db = TestDb::seeded().await;
    let brands: i64 = scalar(&db.pool, "SELECT count(*) FROM brands").await;
    let reads = |r: &[Rec], topic: &str| count_ops(r, topic).get("r").copied().unwrap_or(0) as i64;

    // initial_only: the snapshot, then exit 0 without streaming.
    let mut cdc = CdcProcess::new(&db.name, &[("RAINBOW_CDC__SNAPSHOT_MODE", "initial_only")]);
    let topics = all_topics(&cdc);
    cdc.start();
    let status = cdc.wait(DEADLINE);
    assert!(status.success(), "initial_only exits 0: {status}\n{}", cdc.logs());
    assert_eq!(cdc.stored_offset().unwrap()["snapshot_completed"], true);
    assert_eq!(reads(&read_topics(&topics).await, &cdc.topic("brands")), brands);

    // initial on the same slot: no second snapshot, streams what changed since.
    exec(&db.pool, "UPDATE brands SET name = name || '!' WHERE id = 1").await;
    cdc.env.retain(|(k, _)| k != "RAINBOW_CDC__SNAPSHOT_MODE");
    cdc.start();
    let records =
        read_until(&topics, DEADLINE, "the update", |r| count_ops(r, &cdc.topic("brands")).contains_key("u"))
            .await;
    assert_eq!(reads(&records, &cdc.topic("brands")), brands);
    cdc.stop();

    // always: a new snapshot at each start, then streaming.
    cdc.env.push(("RAINBOW_CDC__SNAPSHOT_MODE".into(), "always".into()));
    cdc.start();
    read_until(&topics, DEADLINE, "a second snapshot", |r| reads(r, &cdc.topic("brands")) == 2 * brands)
        .await;
    cdc.stop();
    cdc.cleanup(&topics).await;

    // no_data: no snapshot at all, only changes.
    let mut cdc = CdcProcess::new(&db.name, &[("RAINBOW_CDC__SNAPSHOT_MODE", "no_data")]);
    let topics = all_topics(&cdc);
    cdc.start();
    let until = std::time::Instant::now() + DEADLINE;
    while !cdc.logs().contains("streaming changes") {
        assert!(std::time::Instant::now() < until, "{}", cdc.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exec(&db.pool, "UPDATE brands SET name = name || '?' WHERE id = 2").await;
    let records =
        read_until(&topics, DEADLINE, "the update", |r| count_ops(r, &cdc.topic("brands")).contains_key("u"))
            .await;
    assert_eq!(reads(&records, &cdc.topic("brands")), 0);
    cdc.stop();
    cdc.cleanup(&topics).await;
    db.drop().await;
}

/// The reader's exit at start-up on a setting or a permission to fix: code 2 (`rainbow up` does not
/// restart it), and its log.
fn failure(cdc: &mut CdcProcess) -> String {
    let status = cdc.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(2), "{}", cdc.logs());
    cdc.logs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_errors_are_specific() {
    let db = TestDb::seeded().await;

    let mut cdc = CdcProcess::new(&db.name, &[("RAINBOW_CDC__TABLES", "public.brands,public.nope")]);
    cdc.start();
    let log = failure(&mut cdc);
    assert!(log.contains("cdc.tables names tables that do not exist: public.nope"), "{log}");
    cdc.cleanup(&[]).await;

    // Kafka away (or a wrong address: the two look the same): a transient fault, retried with
    // backoff for as long as it lasts, said in the log, the metrics and /readyz.
    let addr = format!("127.0.0.1:{}", common::process::free_port());
    let mut cdc = CdcProcess::new(
        &db.name,
        &[("RAINBOW_KAFKA__BROKERS", "127.0.0.1:1"), ("RAINBOW_CDC__METRICS_LISTEN", &addr)],
    );
    cdc.metrics = Some(addr);
    cdc.start();
    let until = std::time::Instant::now() + DEADLINE;
    while cdc.logs().matches("cannot reach Kafka at 127.0.0.1:1").count() < 2 {
        assert!(cdc.is_running() && std::time::Instant::now() < until, "{}", cdc.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cdc.logs().contains("transient failure: retrying"), "{}", cdc.logs());
    let metrics = cdc.metrics().await;
    let retries = common::metric_value(&metrics, "rainbow_cdc_retries_total{dependency=\"kafka\"}");
    assert!(retries.is_some_and(|n| n >= 2.0), "{metrics}");
    let ready = reqwest::get(format!("http://{}/readyz", cdc.metrics.as_deref().unwrap())).await.unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.text().await.unwrap().contains("kafka unreachable"));
    cdc.stop();
    cdc.cleanup(&[]).await;

    let role = common::unique_name("norepl");
    exec(&db.pool, &format!("CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT ALL ON SCHEMA public TO {role}"))
        .await;
    let mut cdc =
        CdcProcess::new(&db.name, &[("RAINBOW_POSTGRES__USER", &role), ("RAINBOW_POSTGRES__PASSWORD", "pw")]);
    cdc.start();
    let log = failure(&mut cdc);
    assert!(log.contains(&format!("role \"{role}\" may not use replication")), "{log}");
    cdc.cleanup(&[]).await;
    exec(&db.pool, &format!("REVOKE ALL ON SCHEMA public FROM {role}; DROP ROLE {role}")).await;

    // A second reader on a slot that one is streaming from.
    let mut first = CdcProcess::new(&db.name, &[]);
    let topics = all_topics(&first);
    first.start();
    read_until(&topics, DEADLINE, "the snapshot", snapshot_done).await;
    let until = std::time::Instant::now() + DEADLINE;
    while !first.logs().contains("streaming changes") {
        assert!(std::time::Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A second reader on the same slot (a restart while the previous instance still finishes its
    // shutdown, say) waits, retrying, and takes over once the first has stopped.
    let mut second = CdcProcess::new(&db.name, &[]);
    second.env = first.env.clone();
    second.start();
    let busy = format!("replication slot \"{}\" is in use by another process", first.slot);
    let until = std::time::Instant::now() + DEADLINE;
    while !second.logs().contains(&busy) {
        assert!(second.is_running() && std::time::Instant::now() < until, "{}", second.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(first.is_running());
    first.stop();
    let until = std::time::Instant::now() + DEADLINE;
    while !second.logs().contains("streaming changes") {
        assert!(second.is_running() && std::time::Instant::now() < until, "{}", second.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.stop();
    first.cleanup(&topics).await;
    db.drop().await;
}

/// The offsets file records the PostgreSQL cluster's system identifier: a file of another cluster
/// (a re-initialised or restored server under the same settings) stops the reader (exit 3) with
/// both identifiers and the way to start over, and its heartbeats name the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offsets_file_of_another_postgres_cluster_is_refused() {
    let db = TestDb::seeded().await;
    let mut cdc = CdcProcess::new(&db.name, &[("RAINBOW_CDC__HEARTBEAT_INTERVAL_MS", "200")]);
    let topics = all_topics(&cdc);
    cdc.start();
    let heartbeat = cdc.heartbeat_topic();
    let beats =
        read_until(std::slice::from_ref(&heartbeat), DEADLINE, "a heartbeat", |r| !r.is_empty()).await;
    let system: String = scalar(&db.pool, "SELECT system_identifier::text FROM pg_control_system()").await;
    let facts = beats[0]
        .headers
        .iter()
        .find(|(k, _)| k == rainbow_runtime::identity::HEARTBEAT_SOURCE_HEADER)
        .map(|(_, v)| String::from_utf8_lossy(v).to_string());
    assert_eq!(
        facts.as_deref(),
        Some(
            format!("postgres.database={}; postgres.slot={}; postgres.system={system}", db.name, cdc.slot)
                .as_str()
        )
    );
    cdc.stop();
    let mut offsets = cdc.stored_offset().unwrap();
    assert_eq!(offsets["system_identifier"], system.as_str());

    offsets["system_identifier"] = "1".into();
    let path = cdc.dir.join(format!("{}.offsets.json", cdc.slot));
    std::fs::write(&path, serde_json::to_vec(&offsets).unwrap()).unwrap();
    cdc.start();
    let status = cdc.wait(DEADLINE);
    assert_eq!(status.code(), Some(3), "{}", cdc.logs());
    let want = format!("system identifier 1, and this server's is {system}");
    assert!(cdc.logs().contains(&want) && cdc.logs().contains("Reset recipes"), "{}", cdc.logs());

    cdc.cleanup(&topics).await;
    db.drop().await;
}
