//! Processor benchmarks (not tests): prints a table.
//!
//! ```text
//! cargo run --release -p rainbow-bench --bin processor-bench -- core  [--orders N]
//! cargo run --release -p rainbow-bench --bin processor-bench -- kafka [--orders N]
//! cargo run --release -p rainbow-bench --bin processor-bench -- dimensions [--customers N] [--products N]
//! ```
//! `core`: the pure core on one thread over a generated workload at the seed's shape (snapshot of
//! the reference data, then orders with ~5.5 lines, 2.3 product changes per order, 2 % churn):
//! events/s of `Core::apply` on typed events, events/s of decode + apply from Debezium JSON, and
//! the resident memory the state takes per million keys; then the state's resident memory per
//! dimension key, from a snapshot of a million customers and a million products.
//! `dimensions`: that last measure alone, of another catalogue if asked (`--products 1` gives the
//! customers' share, `--customers 1` the products').
//! `kafka`: the same workload as Debezium JSON in fresh Kafka topics (3 partitions each) of the
//! local stack, then `rainbow_processor::run` into a fresh ClickHouse database: sustained
//! events/s from start to the last aggregate in ClickHouse.

use rainbow_processor::core::Core;
use rainbow_schemas::shape::Outputs;

// The same allocator as the `rainbow` binary: the core allocates many small rows.
use rainbow_bench::{arg_u64 as arg, rss_kib};
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use rainbow_processor::event::{decode, ChangeEvent, Position};
use rainbow_testkit::workload::{to_debezium_json, Workload, WorkloadConfig};
use std::time::{Duration, Instant};

fn generate(orders: u64) -> Vec<ChangeEvent> {
    let mut w = Workload::new(WorkloadConfig::seed_volume(), 42);
    let mut events = w.snapshot();
    // Steps are orders or other changes; stop after `orders` order transactions.
    let mut placed = 0;
    while placed < orders {
        let tx = w.next_transaction();
        if tx.iter().any(|e| {
            e.table() == rainbow_processor::event::Table::Orders
                && e.op == rainbow_processor::event::Op::Create
        }) {
            placed += 1;
        }
        events.extend(tx);
    }
    events
}

/// Resident memory, after the allocator returned what it held freed (it keeps freed pages for a
/// while, and whether that while had passed made the figures vary from run to run).
fn resident_kib() -> u64 {
    rainbow_runtime::memory::return_freed_memory();
    rss_kib("VmRSS:")
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "core".into());
    let orders = arg("--orders", 220_000);
    // Measured first, while the allocator holds no memory that earlier phases freed (it would
    // be reused, and hide part of what the dimensions take).
    let dimensions = (mode == "core").then(|| dimension_memory(1_000_000, 1_000_000));
    if mode == "dimensions" {
        dimension_memory(arg("--customers", 1_000_000) as i64, arg("--products", 1_000_000) as i64).print();
        return;
    }
    eprintln!("generating a workload of {orders} orders at the seed's shape ...");
    let events = generate(orders);
    match mode.as_str() {
        "core" => core_bench(&events, dimensions.expect("measured above")),
        "kafka" => kafka_bench(&events),
        other => {
            eprintln!("unknown mode {other}: core | kafka | dimensions");
            std::process::exit(2);
        }
    }
}

fn core_bench(events: &[ChangeEvent], dimensions: DimensionMemory) {
    let json: Vec<Vec<u8>> = events.iter().map(|e| to_debezium_json(e).1).collect();
    let rss_before = resident_kib();
    let mut core = Core::new(0);
    let mut out = Outputs::default();
    let mut rows = 0usize;
    let started = Instant::now();
    for e in events {
        core.apply(e, &mut out).expect("applies");
        if out.len() > 10_000 {
            rows += out.len();
            out = Outputs::default();
            core.request_seal();
        }
    }
    core.seal_before(Position { commit: u64::MAX, change: 0, table: 0 }, &mut out);
    rows += out.len();
    let apply = started.elapsed();
    let rss_state = resident_kib().saturating_sub(rss_before);
    let size = core.size();
    let checkpoint = checkpoint_cost(&core);
    drop(core);

    let mut core = Core::new(0);
    let mut out = Outputs::default();
    let started = Instant::now();
    for bytes in &json {
        let e = decode(Some(bytes)).expect("decodes").expect("not a tombstone");
        core.apply(&e, &mut out).expect("applies");
        if out.len() > 10_000 {
            out = Outputs::default();
            core.request_seal();
        }
    }
    let decode_apply = started.elapsed();
    let keys = size.dimension_versions + size.orders + size.order_lines + size.aggregate_groups;
    let per_sec = |d: Duration| events.len() as f64 / d.as_secs_f64();
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| events (snapshot + streamed changes) | {} |", events.len());
    println!("| output rows | {rows} |");
    println!("| core apply, one thread | {:.0} events/s |", per_sec(apply));
    println!("| decode JSON + core apply, one thread | {:.0} events/s |", per_sec(decode_apply));
    println!(
        "| state: dimension versions / orders / order lines / aggregate groups | {} / {} / {} / {} |",
        size.dimension_versions, size.orders, size.order_lines, size.aggregate_groups
    );
    println!("| resident memory of the state | {:.1} MiB |", rss_state as f64 / 1024.0);
    println!("| checkpoint of the state: size | {:.1} MiB |", checkpoint.bytes as f64 / 1048576.0);
    println!(
        "| checkpoint of the interval: engine held up (fork) / encoded by the child in | {:.1} ms / {} ms |",
        checkpoint.fork.as_secs_f64() * 1000.0,
        checkpoint.in_child.as_millis()
    );
    println!(
        "| checkpoint at a stop: engine held up (encoding in place) | {} ms |",
        checkpoint.in_place.as_millis()
    );
    println!(
        "| resident memory per million keys | {:.0} MiB |",
        rss_state as f64 / 1024.0 / (keys as f64 / 1e6)
    );
    println!(
        "| peak RSS of the process (workload included) | {:.0} MiB |",
        rss_kib("VmHWM:") as f64 / 1024.0
    );
    dimensions.print();
}

/// A checkpoint of the state: its size, and how long the engine's thread is held up by one of
/// the interval (a forked child encodes it: the fork) and by one encoded in place (at a stop).
struct CheckpointCost {
    bytes: usize,
    in_place: Duration,
    fork: Duration,
    in_child: Duration,
}

fn checkpoint_cost(core: &Core) -> CheckpointCost {
    let (offsets, totals) = (vec![], Default::default());
    let c = rainbow_processor::checkpoint::CheckpointRef {
        id: 1,
        fingerprint: "",
        source: "",
        partition: 0,
        emitting: true,
        last_released: core.last_position(),
        offsets: &offsets,
        totals: &totals,
        state: core.state(),
        sink: &[],
        dead_letters: &[],
    };
    let started = Instant::now();
    let bytes = c.encode().expect("encodes");
    let in_place = started.elapsed();
    let started = Instant::now();
    let child = c.encode_forked().expect("forks");
    let fork = started.elapsed();
    let forked = child.wait(0).expect("the child encodes");
    let in_child = started.elapsed();
    assert!(forked == bytes, "the child's bytes are the checkpoint's");
    CheckpointCost { bytes: bytes.len(), in_place, fork, in_child }
}

struct DimensionMemory {
    keys: usize,
    bytes_per_key: f64,
}

impl DimensionMemory {
    /// Its rows of the bench's table.
    fn print(&self) {
        println!("| dimension keys (a catalogue snapshot) | {} |", self.keys);
        println!("| resident memory per dimension key | {:.0} B |", self.bytes_per_key);
    }
}

/// The state's resident memory per dimension key: the snapshot of a catalogue (the benchmark's: a
/// million customers and a million products, one current version each), applied to an empty core.
fn dimension_memory(customers: i64, products: i64) -> DimensionMemory {
    let config = WorkloadConfig { customers, products, ..WorkloadConfig::seed_volume() };
    let events = Workload::new(config, 7).snapshot();
    let rss_before = resident_kib();
    let mut core = Core::new(0);
    let mut out = Outputs::default();
    for e in &events {
        core.apply(e, &mut out).expect("applies");
        if out.len() > 10_000 {
            out = Outputs::default();
            core.request_seal();
        }
    }
    drop(out);
    let rss = resident_kib().saturating_sub(rss_before);
    let keys = core.size().dimension_versions;
    DimensionMemory { keys, bytes_per_key: rss as f64 * 1024.0 / keys as f64 }
}

fn kafka_bench(events: &[ChangeEvent]) {
    use rainbow_runtime::kafka::{self, KafkaConnection, TopicSpec};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureRecord, Producer};
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let brokers = std::env::var("RAINBOW_KAFKA__BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let ch_url = std::env::var("RAINBOW_CLICKHOUSE__URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let run_id = std::process::id();
    let prefix = format!("bench{run_id}");
    let database = format!("rb_bench_{run_id}");
    let dir = std::env::temp_dir().join(&prefix);
    let config = rainbow_processor::ProcessorConfig {
        topic_prefix: Some(prefix.clone()),
        group_id: prefix.clone(),
        checkpoint_url: dir.display().to_string(),
        dead_letter_topic: format!("{prefix}.dead_letter"),
        metrics_listen: "127.0.0.1:0".into(),
        ..Default::default()
    };
    let mut topics: Vec<String> =
        rainbow_processor::event::Table::ALL.iter().map(|t| config.topic_for(t.name())).collect();
    let expected: (i64, i64) = {
        let mut core = Core::new(0);
        let mut out = Outputs::default();
        let mut tables = rainbow_schemas::shape::Tables::default();
        for e in events {
            core.apply(e, &mut out).unwrap();
            tables.absorb(&mut out);
        }
        core.seal_before(Position { commit: u64::MAX, change: 0, table: 0 }, &mut out);
        tables.absorb(&mut out);
        let t = tables.agg_total_sales.rows().next().unwrap();
        (t.total_sales_quantity, tables.live_facts().count() as i64)
    };
    rt.block_on(async {
        let admin =
            KafkaConnection { brokers: brokers.clone(), client_id: "bench".into() }.client_config("admin");
        let mut new: Vec<TopicSpec> =
            topics.iter().map(|t| TopicSpec { name: t.clone(), partitions: 3, replication: 1 }).collect();
        let hb = config.heartbeat_topic();
        new.push(TopicSpec { name: hb.clone(), partitions: 1, replication: 1 });
        kafka::ensure_topics(&admin, &new).await.unwrap();
        topics.push(hb.clone());
        let producer = rainbow_bench::producer(&brokers);
        eprintln!("producing {} events ...", events.len());
        let started = Instant::now();
        let mut pending = Vec::with_capacity(10_000);
        for e in events {
            let (key, value) = to_debezium_json(e);
            let topic = config.topic_for(e.table().name());
            let f = producer
                .send_result(FutureRecord::to(&topic).key(&key).payload(&value))
                .map_err(|(e, _)| e)
                .unwrap();
            pending.push(f);
            if pending.len() >= 10_000 {
                for f in pending.drain(..) {
                    f.await.unwrap().unwrap();
                }
            }
        }
        for f in pending.drain(..) {
            f.await.unwrap().unwrap();
        }
        let last = events.iter().map(|e| e.position.commit).max().unwrap_or(0) + 1;
        let acked = rainbow_schemas::wire::acked_header_value(rainbow_schemas::wire::Lsn(last));
        let (hb_key, hb_value) = rainbow_schemas::wire::heartbeat_record(&prefix, false, 0);
        producer
            .send(
                FutureRecord::to(&hb).key(&hb_key).payload(&hb_value).headers(OwnedHeaders::new().insert(
                    Header { key: rainbow_schemas::wire::HEARTBEAT_ACKED_LSN_HEADER, value: Some(&acked) },
                )),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        producer.flush(Duration::from_secs(30)).unwrap();
        eprintln!("produced in {:.1} s; processing ...", started.elapsed().as_secs_f64());

        let kafka =
            rainbow_processor::KafkaConnection { brokers: brokers.clone(), client_id: "bench".into() };
        let ch = rainbow_schemas::warehouse::Connection {
            url: ch_url.clone(),
            user: "default".into(),
            password: String::new(),
            database: database.clone(),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // The heartbeat topic is read from its end: send heartbeats while the processor runs.
        let hb_task = {
            let producer = producer.clone();
            let hb = hb.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = producer
                        .send(
                            FutureRecord::to(&hb).key(&hb_key).payload(&hb_value).headers(
                                OwnedHeaders::new().insert(Header {
                                    key: rainbow_schemas::wire::HEARTBEAT_ACKED_LSN_HEADER,
                                    value: Some(&acked),
                                }),
                            ),
                            Duration::from_secs(10),
                        )
                        .await;
                }
            })
        };
        let started = Instant::now();
        let cfg = config.clone();
        let run = tokio::spawn(async move {
            rainbow_processor::run(&kafka, &ch, &cfg, async {
                let _ = stop_rx.await;
            })
            .await
        });
        let http = clickhouse_text(&ch_url);
        let want = format!("{}\t{}\n", expected.0, expected.1);
        let sql = format!(
            "SELECT (SELECT sum(total_sales_quantity) FROM {database}.agg_total_sales FINAL), \
             (SELECT count() FROM {database}.fact_sales FINAL WHERE is_deleted = 0)"
        );
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if http(&sql).await == want {
                break;
            }
            if started.elapsed() > Duration::from_secs(1800) {
                panic!("not caught up after 30 minutes");
            }
        }
        let elapsed = started.elapsed();
        let _ = stop_tx.send(());
        let summary = run.await.unwrap().unwrap();
        hb_task.abort();
        println!("| measure | value |");
        println!("| --- | --- |");
        println!("| events in Kafka (3 partitions per topic) | {} |", events.len());
        println!("| events applied | {} |", summary.events_applied);
        println!(
            "| re-deliveries dropped / dead letters | {} / {} |",
            summary.duplicates, summary.dead_letters
        );
        println!("| start to the last aggregate in ClickHouse | {:.1} s |", elapsed.as_secs_f64());
        println!(
            "| Kafka -> ClickHouse sustained | {:.0} events/s |",
            events.len() as f64 / elapsed.as_secs_f64()
        );
        println!(
            "| peak RSS of the process (workload included) | {:.0} MiB |",
            rss_kib("VmHWM:") as f64 / 1024.0
        );
        let _ = http(&format!("DROP DATABASE IF EXISTS {database}")).await;
        // The processor's dead-letter topic too (created by the processor when it starts).
        topics.push(config.dead_letter_topic.clone());
        let _ = kafka::delete_topics(&admin, &topics.iter().map(String::as_str).collect::<Vec<_>>()).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// A minimal ClickHouse HTTP client: POST the query, return the body.
fn clickhouse_text(
    url: &str,
) -> impl Fn(&str) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>> {
    let url = url.to_string();
    move |sql: &str| {
        let (url, sql) = (url.clone(), sql.to_string());
        Box::pin(async move {
            let client = clickhouse::Client::default().with_url(&url).with_validation(false);
            client
                .query(&sql)
                .fetch_all::<(u64, u64)>()
                .await
                .map(|r| r.into_iter().map(|(a, b)| format!("{a}\t{b}\n")).collect::<String>())
                .unwrap_or_else(|e| e.to_string())
        })
    }
}
