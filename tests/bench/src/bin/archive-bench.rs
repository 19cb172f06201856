//! Archiver benchmark (not a test): prints a table.
//!
//! ```text
//! cargo run --release -p rainbow-bench --bin archive-bench -- [--orders N] [--writers N]
//! ```
//! A workload at the seed's shape (the test kit's simulator), as the CDC writes it at its
//! defaults (schema wrapper, precise decimals), produced into fresh topics (3 partitions each)
//! of the local stack's Kafka; then `rainbow_archive::archiver::run` at its default settings into
//! a fresh master dataset. Sustained records/s: the records committed to the Iceberg changelog
//! tables (and their segments written) by the start of the first 10-s pause in commits, over the
//! time to then: the rest of the backlog sits in segments that are not full and waits for
//! `archive.segment_max_age_ms` (60 s, how stale the archive may be), which is printed apart as
//! the time until every record is durable. Also the archive's sizes against the raw JSON's. The
//! topics and the archive are removed at the end.

use rainbow_archive::ArchiveConfig;
use rainbow_iceberg::{ChangelogTable, Lake};
use rainbow_runtime::kafka::{self, KafkaConnection, TopicSpec};
use rainbow_runtime::store::Store;
use rainbow_testkit::workload::{to_debezium_json_with_schema, Workload, WorkloadConfig};
use rdkafka::producer::{FutureRecord, Producer};
use std::time::{Duration, Instant};

use rainbow_bench::arg_u64 as arg;
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn size(dir: &std::path::Path) -> u64 {
    rainbow_testkit::relative_paths(dir)
        .iter()
        .map(|p| std::fs::metadata(dir.join(p)).map_or(0, |m| m.len()))
        .sum()
}

fn main() {
    // RUST_LOG=info shows each segment the archiver commits (records, bytes, ms).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let orders = arg("--orders", 220_000);
    // A named override of archive.writers (0: the default, one per core).
    let writers = arg("--writers", 0) as usize;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let brokers = std::env::var("RAINBOW_KAFKA__BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let prefix = format!("archbench{}", std::process::id());
    let dir = std::env::temp_dir().join(&prefix);
    let config = ArchiveConfig {
        topic_prefix: Some(prefix.clone()),
        group_id: prefix.clone(),
        metrics_listen: "127.0.0.1:0".into(),
        writers,
        ..ArchiveConfig::default()
    };
    let topics = config.topics();
    let kafka = KafkaConnection { brokers: brokers.clone(), client_id: "bench".into() };
    let admin = kafka.client_config("admin");
    let heartbeat = config.naming().heartbeat_topic();

    eprintln!("generating and producing a workload of {orders} orders ...");
    let (records, json_bytes) = rt.block_on(async {
        let mut new: Vec<TopicSpec> =
            topics.iter().map(|t| TopicSpec { name: t.clone(), partitions: 3, replication: 1 }).collect();
        new.push(TopicSpec { name: heartbeat.clone(), partitions: 1, replication: 1 });
        kafka::ensure_topics(&admin, &new).await.expect("creates the topics");
        let producer = rainbow_bench::producer(&brokers);
        let mut w = Workload::new(WorkloadConfig::seed_volume(), 42);
        let (mut placed, mut records, mut bytes) = (0u64, 0u64, 0u64);
        let mut pending = Vec::with_capacity(10_000);
        let mut tx = w.snapshot();
        loop {
            for e in &tx {
                let (key, value) = to_debezium_json_with_schema(e);
                bytes += (key.len() + value.len()) as u64;
                records += 1;
                let topic = config.topic_for(e.table().name());
                let f = producer
                    .send_result(FutureRecord::to(&topic).key(&key).payload(&value))
                    .map_err(|(e, _)| e)
                    .expect("queued");
                pending.push(f);
                if pending.len() >= 10_000 {
                    for f in pending.drain(..) {
                        f.await.expect("sent").expect("acknowledged");
                    }
                }
            }
            if tx.iter().any(|e| {
                e.table() == rainbow_processor::event::Table::Orders
                    && e.op == rainbow_processor::event::Op::Create
            }) {
                placed += 1;
            }
            if placed >= orders {
                break;
            }
            tx = w.next_transaction();
        }
        for f in pending.drain(..) {
            f.await.expect("sent").expect("acknowledged");
        }
        let (hb_key, hb_value) = rainbow_schemas::wire::heartbeat_record(&prefix, false, 0);
        producer
            .send(FutureRecord::to(&heartbeat).key(&hb_key).payload(&hb_value), Duration::from_secs(10))
            .await
            .expect("heartbeat");
        producer.flush(Duration::from_secs(30)).expect("flushed");
        (records, bytes)
    });

    eprintln!("archiving {records} records ...");
    let store_url = dir.join("store").display().to_string();
    let started = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = config.clone();
    let (url, conn) = (store_url.clone(), kafka.clone());
    let run = rt.spawn(async move {
        rainbow_archive::archiver::run(&conn, &url, &cfg, async {
            let _ = stop_rx.await;
        })
        .await
    });
    // Caught up: every record committed to the changelog tables.
    let store = Store::open(&store_url).expect("store");
    let lake_config = config.lake(&store).expect("a local store");
    let mut samples: Vec<(f64, i64)> = Vec::new();
    let caught_up = rt.block_on(async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if run.is_finished() {
                panic!("the archiver stopped");
            }
            let Ok(lake) = Lake::open(&lake_config).await else { continue };
            let mut n = 0i64;
            for topic in &topics {
                if let Ok(Some(t)) = ChangelogTable::load(&lake, &config.table_of(topic), topic).await {
                    n += t.committed().values().sum::<i64>();
                }
            }
            samples.push((started.elapsed().as_secs_f64(), n));
            if n as u64 >= records {
                break started.elapsed();
            }
            assert!(started.elapsed() < Duration::from_secs(1800), "not caught up after 30 minutes");
        }
    });
    let _ = stop_tx.send(());
    let summary = rt.block_on(run).expect("joins").expect("the archiver ends cleanly");
    let secs = caught_up.as_secs_f64();
    // The busy phase: until the first pause of 10 s without a commit (or the end).
    let mut busy = (secs, records as i64);
    let mut last_change = (0.0f64, 0i64);
    for &(t, n) in &samples {
        if n != last_change.1 {
            last_change = (t, n);
        } else if n > 0 && t - last_change.0 >= 10.0 {
            busy = last_change;
            break;
        }
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| records (3 partitions per topic) | {records} |");
    println!("| segments committed | {} |", summary.segments);
    println!("| records committed while busy (until the first 10-s pause) | {} |", busy.1);
    println!("| busy time | {:.1} s |", busy.0);
    println!("| archiver throughput | {:.0} records/s |", busy.1 as f64 / busy.0);
    println!("| wall time, start to every record durable (incl. segment_max_age_ms) | {secs:.1} s |");
    println!("| raw JSON (keys + values) | {:.1} MiB |", mib(json_bytes));
    println!(
        "| changelog tables (typed columns + raw envelope) | {:.1} MiB |",
        mib(size(&dir.join("store/iceberg")))
    );
    let names: Vec<&str> = topics.iter().chain([&heartbeat]).map(String::as_str).collect();
    let _ = rt.block_on(kafka::delete_topics(&admin, &names));
    let _ = std::fs::remove_dir_all(&dir);
}
