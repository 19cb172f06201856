//! `rainbow process` end to end over the real stack: PostgreSQL → `rainbow cdc` → Kafka →
//! `rainbow process` → ClickHouse. The dashboard views are checked against the same figures
//! computed in PostgreSQL from the source rows, and so are the queries of the Superset dashboard's
//! six charts (deploy/superset); a poison record goes to the dead-letter topic
//! while the pipeline goes on; a processor killed mid-stream (failpoint abort and SIGKILL)
//! converges to exactly the tables and views of a clean run.

use crate::common;

use common::cdc::{read_until, CdcProcess};
use common::processor::{clickhouse, ProcessorProcess};
use common::source::{caught_up, churn, pg_rows, place_orders};
use common::TestDb;
use rainbow_schemas::postgres::SOURCE_TABLES;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

/// Every view and table of the warehouse, as text, ordered.
async fn warehouse_text(database: &str) -> String {
    let mut all = String::new();
    for view in rainbow_schemas::warehouse::DASHBOARD_VIEWS {
        all += &format!("== {view}\n");
        all += &clickhouse(&format!("SELECT * FROM {database}.{view}")).await.unwrap();
    }
    for table in rainbow_schemas::shape::TABLES.iter().map(|t| t.name) {
        all += &format!("== {table}\n");
        all +=
            &clickhouse(&format!("SELECT * FROM {database}.{table} FINAL ORDER BY tuple(*)")).await.unwrap();
    }
    all
}

fn cdc_for(db: &TestDb) -> CdcProcess {
    CdcProcess::new(&db.name, &[("RAINBOW_CDC__HEARTBEAT_INTERVAL_MS", "200")])
}

/// The Superset bundle (deploy/superset/bundle): per chart, sorted by name, its title, its
/// dataset's name and the dataset's SQL. Checks that each chart's columns are its dataset's.
fn superset_charts() -> Vec<(String, String, String)> {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/superset/bundle"));
    let yaml = |path: std::path::PathBuf| -> serde_yaml::Value {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let files = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        let mut f: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        f.sort();
        f
    };
    let datasets: Vec<serde_yaml::Value> =
        files(&root.join("datasets/Rainbow_ClickHouse")).into_iter().map(yaml).collect();
    let mut charts = Vec::new();
    for path in files(&root.join("charts")) {
        let chart = yaml(path);
        let title = chart["slice_name"].as_str().unwrap().to_string();
        let dataset = datasets
            .iter()
            .find(|d| d["uuid"] == chart["dataset_uuid"])
            .unwrap_or_else(|| panic!("chart {title}: its dataset is not in the bundle"));
        let columns: Vec<&str> = dataset["columns"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c["column_name"].as_str().unwrap())
            .collect();
        let params = &chart["params"];
        let used = params["all_columns"].as_sequence().or(params["groupby"].as_sequence()).unwrap();
        assert!(!used.is_empty(), "chart {title} shows no column");
        for c in used {
            assert!(
                columns.contains(&c.as_str().unwrap()),
                "chart {title} uses {c:?}, not a column of its dataset"
            );
        }
        let sql = dataset["sql"].as_str().unwrap();
        for c in &columns {
            assert!(sql.contains(c), "dataset column {c} is not in its SQL");
        }
        charts.push((title, dataset["table_name"].as_str().unwrap().to_string(), sql.to_string()));
    }
    charts.sort();
    charts
}

/// Every dashboard view, and every chart of the Superset bundle, in ClickHouse `database` equals
/// the same figures computed in PostgreSQL from the source rows.
async fn assert_views_match_the_source(pool: &sqlx::PgPool, database: &str) {
    let v = |view: &str, cols: &str, order: &str| {
        format!("SELECT {cols} FROM {}.{view} ORDER BY {order}", database)
    };

    // Total sales: quantity, amount, and profit with the seed's discount formulas; the number of
    // orders and the amount per order (truncated to the cent).
    let discount = "least(d.price, CASE pr.coupon_type WHEN 'Percentage' THEN round(d.price * pr.price_treatment / 100, 2)
                    WHEN 'Fixed Amount' THEN pr.price_treatment * 1000 ELSE 0 END)";
    let want = pg_rows(
        pool,
        &format!(
            "SELECT sum(d.quantity), sum(d.quantity * d.price), sum(d.quantity * (d.price - {discount})),
                    (SELECT count(*) FROM orders),
                    trunc(sum(d.quantity * d.price) / (SELECT count(*) FROM orders), 2)
             FROM orderdetails d LEFT JOIN promotions pr ON pr.id = d.promotion_id"
        ),
    )
    .await;
    assert_eq!(clickhouse(&v("v_total_sales", "*", "1")).await.unwrap(), want);

    let want = pg_rows(
        pool,
        "SELECT p.seller_id, sum(d.quantity * d.price) FROM orderdetails d JOIN products p ON p.id = d.product_id
         GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert_eq!(
        clickhouse(&v("v_top_sellers", "seller_id, total_sales_amount", "seller_id")).await.unwrap(),
        want
    );

    let want = pg_rows(
        pool,
        "SELECT extract(isodow FROM o.created_at AT TIME ZONE 'UTC')::int, sum(d.quantity * d.price)
         FROM orderdetails d JOIN orders o ON o.id = d.order_id GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert_eq!(
        clickhouse(&v("v_sales_by_day_of_week", "day_of_week, total_sales_amount", "day_of_week"))
            .await
            .unwrap(),
        want
    );

    let want = pg_rows(
        pool,
        "SELECT o.payment_id, count(DISTINCT o.id), coalesce(sum(d.quantity * d.price), 0)
         FROM orders o LEFT JOIN orderdetails d ON d.order_id = o.id GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert_eq!(
        clickhouse(&v("v_payment_methods", "payment_id, order_count, total_sales_amount", "payment_id"))
            .await
            .unwrap(),
        want
    );

    let want = pg_rows(
        pool,
        "SELECT row_number() OVER (ORDER BY coalesce(sum(d.quantity * d.price), 0) DESC, o.customer_id),
                o.customer_id, count(DISTINCT o.id), coalesce(sum(d.quantity * d.price), 0)
         FROM orders o LEFT JOIN orderdetails d ON d.order_id = o.id GROUP BY o.customer_id ORDER BY 1",
    )
    .await;
    assert_eq!(
        clickhouse(&v(
            "v_customer_ranking",
            "customer_rank, customer_id, order_count, total_sales_amount",
            "customer_rank"
        ))
        .await
        .unwrap(),
        want
    );

    let want = pg_rows(
        pool,
        &format!(
            "SELECT category, product_id, profit FROM (
               SELECT c.name AS category, p.id AS product_id, sum(d.quantity * (d.price - {discount})) AS profit,
                      row_number() OVER (PARTITION BY c.name ORDER BY sum(d.quantity * (d.price - {discount})) DESC, p.id) AS r
               FROM orderdetails d JOIN products p ON p.id = d.product_id JOIN categories c ON c.id = p.category_id
               LEFT JOIN promotions pr ON pr.id = d.promotion_id GROUP BY c.name, p.id) x
             WHERE r <= 5 ORDER BY category, profit DESC, product_id"
        ),
    )
    .await;
    assert_eq!(
        clickhouse(&format!(
            "SELECT category, product_id, total_profit FROM {}.v_top_products_by_category",
            database
        ))
        .await
        .unwrap(),
        want
    );

    // Every chart of the Superset bundle: its dataset's SQL, run against this database, returns
    // the figures PostgreSQL computes from the source rows.
    let charts = superset_charts();
    let names: Vec<&str> = charts.iter().map(|(chart, _, _)| chart.as_str()).collect();
    assert_eq!(
        names,
        [
            "Customer Ranking",
            "Day Of Week With Most Sales",
            "Most Common Payment Methods",
            "Top 5 Most Profitable Products By Category",
            "Top Sellers",
            "Total Sales"
        ]
    );
    let profit = format!("sum(d.quantity * (d.price - {discount}))");
    for (chart, dataset, sql) in &charts {
        let expected = match dataset.as_str() {
            "rainbow_total_sales" => format!(
                "SELECT sum(d.quantity), sum(d.quantity * d.price), {profit}
                 FROM orderdetails d LEFT JOIN promotions pr ON pr.id = d.promotion_id"
            ),
            "rainbow_sales_by_day_of_week" => "SELECT extract(isodow FROM o.created_at AT TIME ZONE 'UTC')::int,
                    to_char(o.created_at AT TIME ZONE 'UTC', 'FMDay'), sum(d.quantity), sum(d.quantity * d.price)
                 FROM orderdetails d JOIN orders o ON o.id = d.order_id GROUP BY 1, 2 ORDER BY 4 DESC, 1"
                .to_string(),
            "rainbow_top_sellers" => format!(
                "SELECT s.id, s.name, sum(d.quantity), sum(d.quantity * d.price), {profit}
                 FROM orderdetails d JOIN products p ON p.id = d.product_id JOIN sellers s ON s.id = p.seller_id
                 LEFT JOIN promotions pr ON pr.id = d.promotion_id GROUP BY 1, 2 ORDER BY 4 DESC, 1 LIMIT 10"
            ),
            "rainbow_top_products_by_category" => format!(
                "SELECT category, product_id, product_name, qty, amount, profit FROM (
                   SELECT c.name AS category, p.id AS product_id, p.name AS product_name, sum(d.quantity) AS qty,
                          sum(d.quantity * d.price) AS amount, {profit} AS profit,
                          row_number() OVER (PARTITION BY c.name ORDER BY {profit} DESC, p.id) AS r
                   FROM orderdetails d JOIN products p ON p.id = d.product_id JOIN categories c ON c.id = p.category_id
                   LEFT JOIN promotions pr ON pr.id = d.promotion_id GROUP BY c.name, p.id, p.name) x
                 WHERE r <= 5 ORDER BY category, profit DESC, product_id"
            ),
            "rainbow_payment_methods" => "SELECT o.payment_id, pm.method, count(DISTINCT o.id), coalesce(sum(d.quantity * d.price), 0)
                 FROM orders o JOIN payments pm ON pm.id = o.payment_id LEFT JOIN orderdetails d ON d.order_id = o.id
                 GROUP BY 1, 2 ORDER BY 3 DESC, 1"
                .to_string(),
            "rainbow_customer_ranking" => "SELECT * FROM (
                   SELECT row_number() OVER (ORDER BY coalesce(sum(d.quantity * d.price), 0) DESC, o.customer_id) AS r,
                          o.customer_id, c.name, count(DISTINCT o.id), coalesce(sum(d.quantity * d.price), 0)
                   FROM orders o JOIN customers c ON c.id = o.customer_id LEFT JOIN orderdetails d ON d.order_id = o.id
                   GROUP BY o.customer_id, c.name) x
                 WHERE r <= 20 ORDER BY r"
                .to_string(),
            other => panic!("chart {chart:?}: dataset {other} has no expected figures in this test"),
        };
        let want = pg_rows(pool, &expected).await;
        assert!(want.lines().count() > 0, "{chart}: no source rows");
        let got = clickhouse(&sql.replace("rainbow.v_", &format!("{}.v_", database))).await.unwrap();
        assert_eq!(got, want, "chart {chart:?} (dataset {dataset})");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn views_match_the_source_and_poison_events_are_parked() {
    let db = TestDb::seeded().await;
    let mut cdc = cdc_for(&db);
    cdc.start();
    let mut p = ProcessorProcess::new(&cdc.prefix);
    p.start(&[]);
    place_orders(&db.pool, 0, 60).await;
    churn(&db.pool).await;

    // A record no one can read, in the middle of the orders topic.
    let producer: rdkafka::producer::FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", common::brokers()).create().unwrap();
    let orders_topic = cdc.topic("orders");
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&orders_topic)
                .key("poison")
                .payload("{not json")
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    place_orders(&db.pool, 60, 40).await;
    caught_up(&db.pool, &p).await;
    assert_views_match_the_source(&db.pool, &p.database).await;

    // SCD2: one current version per product; the renamed brand's products have two versions.
    let want = pg_rows(&db.pool, "SELECT count(*) FROM products").await;
    let sql = format!("SELECT count() FROM {}.dim_products FINAL WHERE is_current = 1", p.database);
    assert_eq!(clickhouse(&sql).await.unwrap(), want);
    let renamed = pg_rows(
        &db.pool,
        "SELECT count(*) FROM products WHERE brand_id = (SELECT brand_id FROM products WHERE id = 2)",
    )
    .await;
    let sql = format!(
        "SELECT count() FROM {}.dim_products FINAL WHERE brand LIKE '% (renamed)' AND is_current = 1",
        p.database
    );
    assert_eq!(clickhouse(&sql).await.unwrap(), renamed);
    let sql = format!("SELECT count() FROM {}.dim_products FINAL WHERE product_id = 3", p.database);
    assert_eq!(clickhouse(&sql).await.unwrap(), "1\n", "an untracked change opens no version");

    // The poison record is parked with its reason, counted, and everything after it went on.
    let parked = read_until(std::slice::from_ref(&p.dead_letter_topic), DEADLINE, "the parked record", |r| {
        !r.is_empty()
    })
    .await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].value.as_deref(), Some(&b"{not json"[..]));
    let reason = parked[0]
        .headers
        .iter()
        .find(|(k, _)| k == "rainbow.dlq.reason")
        .map(|(_, v)| String::from_utf8_lossy(v).to_string());
    assert!(reason.as_deref().is_some_and(|r| r.starts_with("not a Debezium change event")), "{reason:?}");
    // The lag gauges appear once the end offsets were read (every 5 s, at start as well).
    let metrics = common::eventually("consumer lag in /metrics", DEADLINE, || async {
        let m = p.try_metrics().await?;
        m.contains("rainbow_processor_consumer_lag_messages{").then_some(m)
    })
    .await;
    for line in [
        "rainbow_processor_dead_letters_total{reason=\"malformed\"} 1",
        "rainbow_processor_running 1",
        "rainbow_processor_events_applied_total{table=\"orderdetails\"}",
        "rainbow_processor_consumer_lag_messages{",
        "rainbow_processor_watermark_delay_seconds",
        "rainbow_processor_checkpoint_duration_seconds_count",
        "rainbow_processor_state_order_lines",
        "rainbow_processor_sink_batch_rows_count",
    ] {
        assert!(metrics.contains(line), "/metrics lacks {line}:\n{metrics}");
    }
    common::assert_alert_metrics_exported("processor", &metrics);
    p.stop();
    assert!(p.logs().contains("process: ") || p.logs().contains("stopping"), "{}", p.logs());
    p.cleanup().await;
    let topics = cdc.topics();
    cdc.cleanup(&topics).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_processor_killed_mid_stream_converges_to_a_clean_run() {
    let db = TestDb::seeded().await;
    let mut cdc = cdc_for(&db);
    cdc.start();
    place_orders(&db.pool, 0, 150).await;
    churn(&db.pool).await;
    place_orders(&db.pool, 150, 150).await;

    // The clean run.
    let mut clean = ProcessorProcess::new(&cdc.prefix);
    clean.start(&[]);
    caught_up(&db.pool, &clean).await;

    // The crashing run: aborts mid-stream (the snapshot alone is ~3,300 events), restarts,
    // is SIGKILLed while catching up, restarts again on a machine without its state directory.
    // It keeps 20 orders in memory: the others, and the versions only they join, go to disk.
    let mut crashy = ProcessorProcess::new(&cdc.prefix);
    crashy.set_env("RAINBOW_PROCESSOR__HOT_ORDERS", "20");
    crashy.start(&[("RAINBOW_PROCESSOR_FAILPOINT", "crash_after_events=3900")]);
    let status = crashy.wait(DEADLINE);
    assert!(!status.success(), "the failpoint aborts the processor");
    assert!(crashy.logs().contains("failpoint"), "{}", crashy.logs());
    crashy.start(&[]);
    let sql = format!("SELECT count() FROM {}.fact_sales", crashy.database);
    common::eventually("some facts after the restart", DEADLINE, || {
        let sql = sql.clone();
        async move { clickhouse(&sql).await.ok().filter(|n| n.trim() != "0") }
    })
    .await;
    // Killed only once a checkpoint exists, so that the last start resumes from one: the restart
    // may catch up before its first checkpoint is due.
    // Checkpoints live under <checkpoint_url>/<group id>; the group id is the directory's name.
    let checkpoints = crashy.dir.join("checkpoints").join(crashy.dir.file_name().unwrap());
    common::eventually("a checkpoint after the restart", DEADLINE, || {
        let found = std::fs::read_dir(&checkpoints)
            .map(|d| {
                d.flatten().any(|e| {
                    // Not a staged upload (`<name>#<n>`), which may never be renamed into place.
                    let name = e.file_name().to_string_lossy().to_string();
                    name.starts_with("checkpoint-") && name.ends_with(".bin")
                })
            })
            .unwrap_or(false);
        async move { found.then_some(()) }
    })
    .await;
    // And once the checkpoints name orders on disk (the snapshot's orders are more than 20).
    let stored = |kind: &str| std::fs::read_dir(checkpoints.join("cold").join(kind)).map_or(0, |d| d.count());
    common::eventually("orders on disk stored with the checkpoints", DEADLINE, || {
        let n = stored("orders");
        async move { (n > 0).then_some(()) }
    })
    .await;
    crashy.kill();
    // A new machine: the runs the checkpoint names are fetched back from the checkpoint store.
    std::fs::remove_dir_all(crashy.dir.join("state")).unwrap();
    // More source changes while it is down: the catalogue's too (versions that go to disk once
    // the orders that could join them did).
    churn(&db.pool).await;
    place_orders(&db.pool, 300, 50).await;
    crashy.start(&[]);
    assert!(crashy.logs().contains("resuming from checkpoint") || crashy.is_running());
    caught_up(&db.pool, &crashy).await;
    // A line of the oldest order changes: that order is on disk, and is read back.
    sqlx::query(
        "UPDATE orderdetails SET quantity = quantity + 1 WHERE order_id = (SELECT min(id) FROM orders)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    caught_up(&db.pool, &crashy).await;
    caught_up(&db.pool, &clean).await;

    let (a, b) = (warehouse_text(&clean.database).await, warehouse_text(&crashy.database).await);
    assert!(a.lines().count() > 3_000, "a warehouse with data:\n{}", &a[..a.len().min(2000)]);
    if a != b {
        let diff: Vec<String> = a
            .lines()
            .zip(b.lines())
            .filter(|(x, y)| x != y)
            .take(10)
            .map(|(x, y)| format!("clean: {x}\ncrash: {y}"))
            .collect();
        panic!("the crashed run differs from the clean run:\n{}", diff.join("\n"));
    }
    assert!(crashy.logs().contains("resuming from checkpoint"), "{}", crashy.logs());
    // The oldest order was read back from disk.
    let metrics = crashy.metrics().await;
    let read = common::metric_value(&metrics, "rainbow_processor_state_reads_total{kind=\"orders\"}");
    assert!(read.is_some_and(|n| n > 0.0), "orders read back from disk: {read:?}");
    clean.stop();
    crashy.stop();
    assert!(stored("versions") > 0, "dimension versions went to disk too, stored with the last checkpoint");
    clean.cleanup().await;
    crashy.cleanup().await;
    let topics = cdc.topics();
    cdc.cleanup(&topics).await;
    db.drop().await;
}

/// The design's scale-out: two instances split the fact topics' partitions (the CDC routes an
/// order and its lines to the same partition number), each keeps every dimension, and the views,
/// which sum the instances' partial aggregates, equal the source's figures.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_split_the_orders_and_together_match_the_source() {
    let db = TestDb::seeded().await;
    let mut cdc = cdc_for(&db);
    cdc.start();
    let mut a = ProcessorProcess::new(&cdc.prefix);
    let mut b = a.sibling();
    a.start(&[("RAINBOW_PROCESSOR__INSTANCES", "2"), ("RAINBOW_PROCESSOR__PARTITION", "0")]);
    b.start(&[("RAINBOW_PROCESSOR__INSTANCES", "2"), ("RAINBOW_PROCESSOR__PARTITION", "1")]);
    place_orders(&db.pool, 0, 60).await;
    churn(&db.pool).await;
    place_orders(&db.pool, 60, 40).await;
    caught_up(&db.pool, &a).await;
    assert_views_match_the_source(&db.pool, &a.database).await;

    // The fact events were split, not duplicated: what the two applied adds up to what one
    // processor reading every partition applies, and each had a share.
    let applied = |metrics: &str, table: &str| -> u64 {
        let name = format!("rainbow_processor_events_applied_total{{table=\"{table}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&name))
            .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
    };
    let mut whole = ProcessorProcess::new(&cdc.prefix);
    whole.start(&[]);
    caught_up(&db.pool, &whole).await;
    let (ma, mb, mw) = (a.metrics().await, b.metrics().await, whole.metrics().await);
    for table in ["orders", "orderdetails"] {
        let (x, y, all) = (applied(&ma, table), applied(&mb, table), applied(&mw, table));
        assert!(x > 0 && y > 0, "{table}: both instances apply a share: {x} and {y}");
        assert_eq!(x + y, all, "{table}: the instances' shares add up to the whole");
    }
    // Both read every dimension change.
    assert_eq!(applied(&ma, "products"), applied(&mb, "products"));
    let sql =
        format!("SELECT DISTINCT partition FROM {}.agg_total_sales FINAL ORDER BY partition", a.database);
    assert_eq!(clickhouse(&sql).await.unwrap(), "0\n1\n", "each instance writes its own partial aggregates");

    a.stop();
    b.stop();
    whole.stop();
    whole.cleanup().await;
    b.cleanup().await;
    a.cleanup().await;
    let topics = cdc.topics();
    cdc.cleanup(&topics).await;
    db.drop().await;
}

/// The dead-letter producer's contract: a flush succeeds once the brokers acknowledged every letter
/// parked before it, and fails, naming how many and why, when one could not be delivered (here: a
/// topic that does not exist, on brokers that do not create topics), so that the engine does not
/// checkpoint past the records those letters stand for.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_not_delivered_fails_the_flush() {
    use rainbow_processor::engine::{DeadLetter, DeadLetters};
    use rainbow_processor::merge::InputName;
    use rainbow_processor::stream::dead_letter::DeadLetterTopic;
    let kafka = common::kafka();
    let good = common::unique_name("dlq_ok");
    rainbow_runtime::kafka::ensure_topics(
        &kafka.client_config("admin"),
        &[rainbow_runtime::kafka::TopicSpec { name: good.clone(), partitions: 1, replication: -1 }],
    )
    .await
    .unwrap();
    let missing = common::unique_name("dlq_missing");
    let (good2, missing2, kafka2) = (good.clone(), missing.clone(), kafka.clone());
    let (ok, failed) = tokio::task::spawn_blocking(move || {
        let input = InputName { topic: "rainbow.public.orders".into(), partition: 0 };
        let letter = DeadLetter {
            stage: "decode",
            cause: "malformed",
            input: &input,
            offset: 7,
            key: None,
            value: Some(b"{"),
            reason: "bad JSON",
        };
        let mut delivered = DeadLetterTopic::new(&kafka2, &good2).unwrap();
        delivered.park(&letter).unwrap();
        let ok = delivered.flush();
        let mut lost = DeadLetterTopic::new(&kafka2, &missing2).unwrap();
        lost.park(&letter).unwrap();
        (ok, lost.flush())
    })
    .await
    .unwrap();
    assert!(ok.is_ok(), "{ok:?}");
    assert_eq!(common::archive::end_offsets(std::slice::from_ref(&good)).values().sum::<i64>(), 1);
    match failed {
        Err(rainbow_processor::ProcessorError::DeadLetters { count, reason }) => {
            assert_eq!(count, 1);
            assert!(!reason.is_empty());
        }
        other => panic!("a letter to {missing} was not reported as undelivered: {other:?}"),
    }
    common::cdc::delete_topics(&[good]).await;
}

/// `ALTER TABLE … TYPE NUMERIC(18,4)` of the money columns while the pipeline streams: the CDC
/// sends the new scale in each record's schema and the processor reads every amount at it, so
/// the warehouse stays equal to PostgreSQL to the cent; an amount with more decimal places than
/// money has is parked with its reason and counted, never rounded.
#[tokio::test(flavor = "multi_thread")]
async fn a_widened_numeric_column_keeps_money_exact() {
    let db = TestDb::seeded().await;
    let mut cdc = cdc_for(&db);
    cdc.start();
    let mut p = ProcessorProcess::new(&cdc.prefix);
    p.start(&[]);
    place_orders(&db.pool, 0, 20).await;
    for sql in [
        "ALTER TABLE orderdetails ALTER COLUMN price TYPE NUMERIC(18,4)",
        "ALTER TABLE products ALTER COLUMN price TYPE NUMERIC(18,4)",
        // Amounts that use the new scale's room for whole cents only: 0.5 VND more.
        "UPDATE products SET price = price + 0.5 WHERE id % 7 = 0",
    ] {
        common::source::exec(&db.pool, sql).await;
    }
    place_orders(&db.pool, 20, 40).await;

    // Exact: order lines, their amount, the dashboard's total, the catalogue's current prices.
    let want = pg_rows(
        &db.pool,
        "SELECT count(*), sum(quantity * price)::numeric(38,2), sum(quantity)
         FROM orderdetails",
    )
    .await;
    let facts = format!(
        "SELECT count(), sum(extended_sales_amount), sum(sales_quantity) FROM {}.fact_sales FINAL WHERE is_deleted = 0",
        p.database
    );
    let total =
        pg_rows(&db.pool, "SELECT sum(quantity), sum(quantity * price)::numeric(38,2) FROM orderdetails")
            .await;
    let view = format!("SELECT total_sales_quantity, total_sales_amount FROM {}.v_total_sales", p.database);
    // The aggregates are inserted after the facts of the same flush: both are waited for.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let got = clickhouse(&facts).await.unwrap_or_default();
        let got_total = clickhouse(&view).await.unwrap_or_default();
        if got == want && got_total == total {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fact_sales {got:?} != order lines {want:?} or v_total_sales {got_total:?} != {total:?}\n{}\n{}",
            p.metrics().await,
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let prices = pg_rows(
        &db.pool,
        "SELECT id, price::numeric(18,2) FROM products WHERE id % 7 = 0 ORDER BY id LIMIT 20",
    )
    .await;
    let sql = format!(
        "SELECT product_id, price FROM {}.dim_products FINAL WHERE is_current = 1 AND product_id % 7 = 0
         ORDER BY product_id LIMIT 20",
        p.database
    );
    assert_eq!(clickhouse(&sql).await.unwrap(), prices);
    assert!(prices.contains(".50\n"), "the test changes prices by 0.5 VND: {prices}");

    // 12.3456 VND is not an amount of money (0.01 VND): parked with its reason, counted.
    common::source::exec(
        &db.pool,
        "WITH o AS (INSERT INTO orders (customer_id, payment_id) VALUES (1, 1) RETURNING id)
         INSERT INTO orderdetails (order_id, product_id, quantity, price) SELECT o.id, 5, 1, 12.3456 FROM o",
    )
    .await;
    let reasons = parked_reasons(&p, 1).await;
    let reason = &reasons[0];
    assert!(
        reason.contains("orderdetails.price") && reason.contains("more than 2 decimal places"),
        "{reason}"
    );
    let metrics = p.metrics().await;
    assert!(metrics.contains("rainbow_processor_dead_letters_total{reason=\"schema_drift\"} 1"), "{metrics}");
    // Nothing else was parked, and the amounts before it stay exact.
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert_eq!(clickhouse(&facts).await.unwrap(), want);

    p.stop();
    p.cleanup().await;
    let topics = cdc.topics();
    cdc.cleanup(&topics).await;
    db.drop().await;
}

/// The orders topic's records from its start to its end removed by hand (as retention does).
async fn delete_records(topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let partitions = common::archive::end_offsets(&[topic.to_string()]);
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", common::brokers()).create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (topic, partition) in partitions.keys() {
        tpl.add_partition_offset(topic, *partition, rdkafka::Offset::End).unwrap();
    }
    let done = admin.delete_records(&tpl, &AdminOptions::new()).await.unwrap();
    for e in done.elements() {
        e.error().unwrap_or_else(|err| panic!("deleting the records of {topic}: {err}"));
    }
}

/// Records removed before the processor read them (retention) stop it with what to do, unless
/// `processor.allow_offset_gap` (then they are counted); a checkpoint whose topics were
/// recreated under it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn records_removed_before_they_were_read_and_recreated_topics_stop_the_processor() {
    let db = TestDb::seeded().await;
    let mut cdc = cdc_for(&db);
    cdc.start();
    let mut p = ProcessorProcess::new(&cdc.prefix);
    p.start(&[]);
    place_orders(&db.pool, 0, 10).await;
    caught_up(&db.pool, &p).await;
    p.stop();

    // While it is stopped: 20 orders, then the orders topic's records are removed.
    place_orders(&db.pool, 10, 20).await;
    let orders = cdc.topic("orders");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&db.pool).await.unwrap();
    common::eventually("the CDC to publish the orders", DEADLINE, || async {
        let ends = common::archive::end_offsets(std::slice::from_ref(&orders));
        (ends.values().sum::<i64>() == count).then_some(())
    })
    .await;
    delete_records(&orders).await;
    p.start(&[]);
    let status = p.wait(DEADLINE);
    assert_eq!(status.code(), Some(3), "{}", p.logs());
    assert!(
        p.logs().contains(&format!("Kafka topic {orders} partition "))
            && p.logs().contains("records were removed")
            && p.logs().contains("processor.allow_offset_gap=true"),
        "{}",
        p.logs()
    );

    // Allowed: it goes on, and counts how many it went without (20, over the partitions).
    p.start(&[("RAINBOW_PROCESSOR__ALLOW_OFFSET_GAP", "true")]);
    let want = format!("rainbow_processor_offset_gap_records_total{{topic=\"{orders}\"}} 20");
    common::eventually("the gap to be counted", DEADLINE, || async {
        p.try_metrics().await?.contains(&want).then_some(())
    })
    .await;
    p.stop();

    // The topics recreated under the checkpoint: refused, not read as if nothing happened.
    cdc.stop();
    let topics = cdc.topics();
    common::cdc::delete_topics(&topics).await;
    cdc.start();
    let consumer: rdkafka::consumer::BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", common::brokers()).create().unwrap();
    common::eventually("the CDC to recreate its topics", DEADLINE, || {
        // Right after its creation a partition may have no leader yet: not an error, not yet.
        use rdkafka::consumer::Consumer;
        let led = consumer.fetch_watermarks(&orders, 0, Duration::from_secs(5)).is_ok();
        async move { led.then_some(()) }
    })
    .await;
    p.start(&[]);
    let status = p.wait(DEADLINE);
    assert_eq!(status.code(), Some(2), "{}", p.logs());
    // The checkpoint recorded each topic's id: the new topics' ids differ.
    assert!(
        p.logs().contains("written while reading another source")
            && p.logs().contains(&format!("kafka.topic.{orders}: "))
            && p.logs().contains("Reset recipes"),
        "{}",
        p.logs()
    );

    p.cleanup().await;
    cdc.cleanup(&topics).await;
    db.drop().await;
}

/// The processor records the PostgreSQL source its state comes from (system identifier,
/// database, slot, from the CDC's heartbeats): a CDC reading through another slot behind the same
/// topics stops the running processor, and its checkpoint is refused at the next start, each
/// naming what differs.
#[tokio::test(flavor = "multi_thread")]
async fn a_processor_refuses_another_postgres_source_behind_the_same_topics() {
    let db = TestDb::seeded().await;
    let mut cdc = cdc_for(&db);
    cdc.start();
    let mut p = ProcessorProcess::new(&cdc.prefix);
    p.start(&[("RAINBOW_PROCESSOR__CHECKPOINT_INTERVAL_MS", "200")]);
    place_orders(&db.pool, 0, 5).await;
    caught_up(&db.pool, &p).await;
    // A checkpoint written after the first heartbeats records the facts.
    let checkpoints = p.dir.join("checkpoints");
    common::eventually("a checkpoint naming the slot", DEADLINE, || {
        let found = std::fs::read_dir(&checkpoints).into_iter().flatten().flatten().any(|group| {
            std::fs::read_dir(group.path()).into_iter().flatten().flatten().any(|f| {
                std::fs::read(f.path()).is_ok_and(|b| {
                    let text = String::from_utf8_lossy(&b);
                    text.contains("postgres.slot=") && text.contains("postgres.system=")
                })
            })
        });
        async move { found.then_some(()) }
    })
    .await;

    // Another slot behind the same topics: the running processor stops at its first heartbeat.
    cdc.stop();
    let other_slot = format!("{}_b", cdc.slot);
    cdc.set_env("RAINBOW_CDC__SLOT_NAME", &other_slot);
    cdc.start();
    let status = p.wait(DEADLINE);
    assert_eq!(status.code(), Some(2), "{}", p.logs());
    let needle = format!("postgres.slot: {} recorded, {other_slot} now", cdc.slot);
    assert!(
        p.logs().contains("heartbeats now name another source") && p.logs().contains(&needle),
        "{}",
        p.logs()
    );
    // And at the next start, its checkpoint is refused.
    p.start(&[]);
    let status = p.wait(DEADLINE);
    assert_eq!(status.code(), Some(2), "{}", p.logs());
    let last = p.logs().rsplit("----- restart -----").next().unwrap_or_default().to_string();
    assert!(last.contains("written while reading another source") && last.contains(&needle), "{last}");

    p.cleanup().await;
    let all = cdc.topics();
    cdc.cleanup(&all).await;
    db.drop().await;
}

/// A pipeline with an archive, for the reconciliation tests: started with 20 orders in.
struct Archived {
    cdc: CdcProcess,
    p: ProcessorProcess,
    archive: common::archive::ArchiveProcess,
}

impl Archived {
    async fn start(db: &TestDb, mut cdc: CdcProcess) -> Archived {
        cdc.start();
        let mut p = ProcessorProcess::new(&cdc.prefix);
        p.start(&[]);
        let mut archive = common::archive::ArchiveProcess::new(&cdc.prefix);
        archive.start();
        place_orders(&db.pool, 0, 20).await;
        caught_up(&db.pool, &p).await;
        Archived { cdc, p, archive }
    }

    /// The Kappa invariant (the replay of the archive equals the warehouse), then cleans up.
    async fn replay_and_clean_up(mut self, db: TestDb) {
        replay_equals_the_warehouse(&self.cdc, &mut self.archive, &mut self.p).await;
        self.archive.remove();
        self.p.cleanup().await;
        let all = self.cdc.topics();
        self.cdc.cleanup(&all).await;
        db.drop().await;
    }
}

/// Stops the processor and the archiver once the archive holds every CDC record, replays the
/// archive and compares every table with what the processor wrote (the Kappa invariant).
async fn replay_equals_the_warehouse(
    cdc: &CdcProcess,
    archive: &mut common::archive::ArchiveProcess,
    p: &mut ProcessorProcess,
) {
    let topics: Vec<String> = SOURCE_TABLES.iter().map(|t| cdc.topic(t)).collect();
    let ends = common::archive::end_offsets(&topics);
    common::archive::assert_every_offset_once(&archive.store, &ends, DEADLINE).await;
    p.stop();
    archive.stop();
    let out = archive.dir.join("replay");
    let (ok, text) = common::replay::replay(&cdc.prefix, &archive.store, &out, &[]);
    assert!(ok, "{text}");
    common::replay::assert_same_as_clickhouse(&out, &p.database).await;
}

/// The dead letters' reasons so far (from the dead-letter topic).
async fn parked_reasons(p: &ProcessorProcess, at_least: usize) -> Vec<String> {
    let parked = read_until(std::slice::from_ref(&p.dead_letter_topic), DEADLINE, "the parked events", |r| {
        r.len() >= at_least
    })
    .await;
    parked
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k == "rainbow.dlq.reason")
                .map(|(_, v)| String::from_utf8_lossy(v).to_string())
                .unwrap_or_default()
        })
        .collect()
}

/// The captured tables change while orders stream, as databases do: a column added (carried
/// through and kept in the archive), a column the pipeline does not need dropped, a table's
/// primary key changed, a new table added to the capture (archived without restarting the
/// archiver): the warehouse stays equal to PostgreSQL. A column the pipeline needs renamed and a
/// type it cannot represent: those events are parked with their reason and counted, never
/// defaulted. Then a replay of the archive equals the warehouse, table by table.
#[tokio::test(flavor = "multi_thread")]
async fn the_captured_tables_change_while_streaming() {
    let db = TestDb::seeded().await;
    let mut cdc = cdc_for(&db);
    cdc.start();
    let mut p = ProcessorProcess::new(&cdc.prefix);
    p.start(&[]);
    let mut archive = common::archive::ArchiveProcess::new(&cdc.prefix);
    archive.start();
    place_orders(&db.pool, 0, 10).await;

    let exec = |sql: &'static str| common::source::exec(&db.pool, sql);
    // A new column; a column nothing downstream reads dropped; a new primary key of the lines.
    exec("ALTER TABLE orders ADD COLUMN channel TEXT NOT NULL DEFAULT 'web'").await;
    exec("ALTER TABLE promotions DROP COLUMN end_date").await;
    exec("UPDATE promotions SET name = name || ' (spring)' WHERE id IN (1, 2)").await;
    exec(
        "ALTER TABLE orderdetails DROP CONSTRAINT orderdetails_pkey,
         ADD COLUMN line_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    )
    .await;
    place_orders(&db.pool, 10, 20).await;
    churn(&db.pool).await;
    // A new table, added to the capture: the CDC restarts with it, the others go on.
    exec("CREATE TABLE returns (id BIGINT PRIMARY KEY, order_id BIGINT NOT NULL, reason TEXT)").await;
    exec("ALTER TABLE returns REPLICA IDENTITY FULL").await;
    cdc.stop();
    let tables = SOURCE_TABLES.join(",") + ",returns";
    cdc.set_env("RAINBOW_CDC__TABLES", &tables);
    cdc.start();
    exec("INSERT INTO returns VALUES (1, 3, 'too small'), (2, 5, NULL)").await;
    place_orders(&db.pool, 30, 10).await;

    caught_up(&db.pool, &p).await;
    assert_views_match_the_source(&db.pool, &p.database).await;
    let promotions =
        pg_rows(&db.pool, "SELECT id, name FROM promotions WHERE id IN (1, 2) ORDER BY id").await;
    let sql = format!(
        "SELECT promotion_id, name FROM {}.dim_promotions FINAL WHERE is_current = 1 AND promotion_id IN (1, 2)
         ORDER BY promotion_id",
        p.database
    );
    assert_eq!(clickhouse(&sql).await.unwrap(), promotions);
    let metrics = p.metrics().await;
    assert!(metrics.contains("rainbow_processor_dead_letters_total{reason=\"schema_drift\"} 0"), "{metrics}");

    // The archive keeps the new column, and archives the new table's topic without a restart.
    let returns = cdc.topic("returns");
    common::eventually("the new table's records in the archive", DEADLINE, || async {
        (common::archive::archived_values(&archive.store, &returns).len() == 2).then_some(())
    })
    .await;
    let orders_topic = cdc.topic("orders");
    common::eventually("the new orders, with their new column, in the archive", DEADLINE, || async {
        let with_channel = common::archive::archived_values(&archive.store, &orders_topic)
            .iter()
            .filter(|v| String::from_utf8_lossy(v).contains("\"channel\":\"web\""))
            .count();
        (with_channel >= 30).then_some(())
    })
    .await;
    assert!(archive.logs().contains("archiving a new topic of the CDC"), "{}", archive.logs());

    // A column the dimension needs, renamed: parked with its reason, not a NULL phone.
    exec("ALTER TABLE customers RENAME COLUMN phone TO phone_number").await;
    exec("UPDATE customers SET name = name || ' Jr.' WHERE id = 1").await;
    let reasons = parked_reasons(&p, 1).await;
    assert!(reasons[0].contains("schema drift in customers.phone"), "{reasons:?}");
    // A type the money model cannot hold (fractional quantities): the lines are parked.
    exec("ALTER TABLE orderdetails ALTER COLUMN quantity TYPE NUMERIC(10,3)").await;
    let before: i64 = sqlx::query_scalar("SELECT max(id) FROM orders").fetch_one(&db.pool).await.unwrap();
    place_orders(&db.pool, 40, 1).await;
    let lines: i64 = sqlx::query_scalar("SELECT count(*) FROM orderdetails WHERE order_id > $1")
        .bind(before)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let reasons = parked_reasons(&p, 1 + lines as usize).await;
    assert_eq!(reasons.len() as i64, 1 + lines, "{reasons:?}");
    assert!(reasons[1..].iter().all(|r| r.contains("schema drift in orderdetails.quantity")), "{reasons:?}");
    let want = format!("rainbow_processor_dead_letters_total{{reason=\"schema_drift\"}} {}", 1 + lines);
    common::eventually("the parked events counted", DEADLINE, || async {
        p.try_metrics().await?.contains(&want).then_some(())
    })
    .await;
    // Everything before the parked lines is exact.
    let want = pg_rows(
        &db.pool,
        &format!("SELECT count(*), sum(quantity * price)::numeric(38,2) FROM orderdetails WHERE order_id <= {before}"),
    )
    .await;
    let sql = format!(
        "SELECT count(), sum(extended_sales_amount) FROM {}.fact_sales FINAL WHERE is_deleted = 0",
        p.database
    );
    assert_eq!(clickhouse(&sql).await.unwrap(), want);

    // The Kappa invariant across all of it: the replay of the archive equals the warehouse.
    replay_equals_the_warehouse(&cdc, &mut archive, &mut p).await;

    archive.remove();
    p.cleanup().await;
    let mut all = cdc.topics();
    all.push(returns);
    cdc.cleanup(&all).await;
    db.drop().await;
}

/// Counts of current versions per dimension, and the same counts of live rows in PostgreSQL.
async fn assert_one_current_version_per_row(pool: &sqlx::PgPool, database: &str) {
    for (dim, id, table) in [
        ("dim_customers", "customer_id", "customers"),
        ("dim_products", "product_id", "products"),
        ("dim_sellers", "seller_id", "sellers"),
        ("dim_promotions", "promotion_id", "promotions"),
        ("dim_payments", "payment_id", "payments"),
    ] {
        let sql = format!(
            "SELECT count(), uniqExact({id}) FROM {database}.{dim} FINAL WHERE is_current = 1 AND is_deleted = 0"
        );
        let n = pg_rows(pool, &format!("SELECT count(*) FROM {table}")).await;
        let n = n.trim();
        assert_eq!(
            clickhouse(&sql).await.unwrap(),
            format!("{n}\t{n}\n"),
            "{dim}: one current version per {table} row"
        );
    }
}

/// A second snapshot of the source reconciles the warehouse: `rainbow cdc` restarted with
/// snapshot mode `always` after changes it did not stream (it recreates its slot), and again
/// after its slot was dropped while it was stopped. Rows changed or deleted meanwhile end up
/// right in every dimension, fact and view, with one current version per id, and a replay of the
/// archive equals the warehouse.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_snapshot_reconciles_the_warehouse() {
    let db = TestDb::seeded().await;
    let cdc = cdc_for(&db);
    let Archived { mut cdc, p, archive } = Archived::start(&db, cdc).await;

    // Changes while nothing streams them: the new snapshot is all that will tell of them.
    cdc.stop();
    cdc_stopped_changes(&db.pool, 20).await;
    cdc.set_env("RAINBOW_CDC__SNAPSHOT_MODE", "always");
    cdc.start();
    caught_up(&db.pool, &p).await;
    assert_views_match_the_source(&db.pool, &p.database).await;
    assert_one_current_version_per_row(&db.pool, &p.database).await;
    assert!(cdc.logs().contains("snapshot mode always: recreating the slot"), "{}", cdc.logs());

    // The slot lost while the reader was stopped; snapshot mode always takes a new one.
    cdc.stop();
    cdc_stopped_changes(&db.pool, 40).await;
    {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect_with(&common::pg_options("postgres")).await.unwrap();
        sqlx::query("SELECT pg_drop_replication_slot($1)").bind(&cdc.slot).execute(&mut admin).await.unwrap();
    }
    cdc.start();
    caught_up(&db.pool, &p).await;
    assert_views_match_the_source(&db.pool, &p.database).await;
    assert_one_current_version_per_row(&db.pool, &p.database).await;
    // The deleted orders' lines are retracted, not left behind.
    let sql = format!("SELECT count() FROM {}.fact_sales FINAL WHERE is_deleted = 1", p.database);
    assert_ne!(clickhouse(&sql).await.unwrap(), "0\n");
    let metrics = p.metrics().await;
    assert!(
        metrics.contains("rainbow_processor_dropped_total{reason=\"snapshot_after_stream\"} 0"),
        "{metrics}"
    );

    Archived { cdc, p, archive }.replay_and_clean_up(db).await;
}

/// An on-demand incremental snapshot reconciles the warehouse while the stream goes on: changes
/// made while five tables were out of the publication (nothing captured them) are set right by an
/// `execute-snapshot` signal, read in chunks of 100 while orders, catalogue updates and deletes
/// keep streaming; every dimension, fact and view then equals PostgreSQL, with one current
/// version per id, and a replay of the archive equals the warehouse.
#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_snapshot_reconciles_the_warehouse_while_streaming() {
    let db = TestDb::seeded().await;
    let mut cdc = CdcProcess::new(
        &db.name,
        &[
            ("RAINBOW_CDC__HEARTBEAT_INTERVAL_MS", "200"),
            ("RAINBOW_CDC__INCREMENTAL_SNAPSHOT_CHUNK_SIZE", "100"),
        ],
    );
    cdc.serve_metrics();
    let Archived { cdc, p, archive } = Archived::start(&db, cdc).await;

    // Changes nothing captures: the tables are out of the publication meanwhile.
    let tables = "customers, sellers, products, orders, orderdetails";
    let publication = &cdc.publication;
    let temporary = "INSERT INTO customers (name, email) VALUES ('Temporary', 'temporary@example.com')";
    common::source::exec(&db.pool, temporary).await;
    common::source::exec(&db.pool, &format!("ALTER PUBLICATION {publication} DROP TABLE {tables}")).await;
    cdc_stopped_changes(&db.pool, 20).await;
    common::source::exec(&db.pool, "DELETE FROM customers WHERE email = 'temporary@example.com'").await;
    common::source::exec(&db.pool, &format!("ALTER PUBLICATION {publication} ADD TABLE {tables}")).await;
    // The warehouse has missed them: an order placed now arrives, the new customer does not.
    place_orders(&db.pool, 100, 1).await;
    let last = pg_rows(&db.pool, "SELECT max(id) FROM orders").await;
    let sql = format!(
        "SELECT count() FROM {}.fact_sales FINAL WHERE order_transaction = {}",
        p.database,
        last.trim()
    );
    common::eventually("the order placed after the uncaptured changes", DEADLINE, || async {
        clickhouse(&sql).await.ok().filter(|n| n != "0\n")
    })
    .await;
    // The warehouse still has the deleted customer and lacks the new one.
    let sql = format!(
        "SELECT email FROM {}.dim_customers FINAL WHERE is_current = 1 AND is_deleted = 0 \
         AND email IN ('temporary@example.com', 'new20@example.com')",
        p.database
    );
    assert_eq!(clickhouse(&sql).await.unwrap(), "temporary@example.com\n");

    // Ask for the snapshot; keep writing while it runs.
    let request = r#"{"data-collections": ["public.customers", "public.sellers", "public.products", "public.orders", "public.orderdetails"], "type": "incremental"}"#;
    common::source::exec(
        &db.pool,
        &format!("INSERT INTO rainbow_signal (id, type, data) VALUES ('incremental-1', 'execute-snapshot', '{request}')"),
    )
    .await;
    for round in 0..10 {
        place_orders(&db.pool, 200 + round * 3, 3).await;
        for sql in [
            format!("UPDATE products SET price = price + 7 WHERE id % 10 = {round}"),
            format!("UPDATE customers SET name = name || ' {round}' WHERE id % 10 = {round}"),
            "DELETE FROM orders WHERE id = (SELECT min(id) FROM orders)".to_string(),
        ] {
            common::source::exec(&db.pool, &sql).await;
        }
    }
    let done = "SELECT count(*) FROM rainbow_signal WHERE type = 'snapshot-table-done'";
    common::eventually("the incremental snapshot's five tables done", DEADLINE, || async {
        (pg_rows(&db.pool, done).await.trim() == "5").then_some(())
    })
    .await;
    place_orders(&db.pool, 300, 1).await;
    caught_up(&db.pool, &p).await;
    assert_views_match_the_source(&db.pool, &p.database).await;
    assert_one_current_version_per_row(&db.pool, &p.database).await;
    let metrics = cdc.metrics().await;
    for line in [
        "rainbow_cdc_signals_total{outcome=\"accepted\",type=\"execute-snapshot\"} 1",
        "rainbow_cdc_incremental_snapshot_running 0",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    let chunks = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "rainbow_cdc_incremental_snapshot_chunks_total{outcome=\"sent\",table=\"public.products\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert!(chunks >= Some(30), "3,000 products in chunks of 100: {chunks:?}\n{metrics}");

    Archived { cdc, p, archive }.replay_and_clean_up(db).await;
}

/// What changes while `rainbow cdc` is stopped: new orders from `from`, a cancelled order (its
/// lines go with it), a line's quantity, a product's price and a seller's name, a new customer,
/// and the customer the previous round added deleted.
async fn cdc_stopped_changes(pool: &sqlx::PgPool, from: i64) {
    place_orders(pool, from, 5).await;
    for sql in [
        "DELETE FROM orders WHERE id = (SELECT min(id) FROM orders)".to_string(),
        "UPDATE orderdetails SET quantity = quantity + 3 WHERE order_id = (SELECT max(id) FROM orders)"
            .into(),
        format!("UPDATE products SET price = price + 1000 WHERE id = {}", 5 + from),
        format!("UPDATE sellers SET name = name || ' {from}' WHERE id = 1"),
        format!("INSERT INTO customers (name, email) VALUES ('New {from}', 'new{from}@example.com')"),
        format!("DELETE FROM customers WHERE email = 'new{}@example.com'", from - 20),
    ] {
        common::source::exec(pool, &sql).await;
    }
}
