//! Replay benchmark (not a test): prints a table.
//!
//! ```text
//! cargo run --release -p rainbow-bench --bin replay-bench -- generate --orders 220000 --archive DIR
//! cargo run --release -p rainbow-bench --bin replay-bench -- run --archive DIR --out DIR
//! cargo run --release -p rainbow-bench --bin replay-bench -- decode --archive DIR
//! ```
//! `generate` writes a master dataset at the seed's shape (the test kit's workload simulator:
//! reference data, orders with ~5.5 lines, 2.3 product changes per order, churn) as the
//! archiver would, records as the CDC writes them at its defaults (schema wrapper, precise
//! decimals): 3 partitions per topic (an order and its lines in one partition number, as the CDC
//! routes them), segments of at most 100,000 records per day, then the
//! Iceberg changelog tables built from them (what `rainbow archive` does at start), and prints
//! the sizes: raw JSON, segments, changelog tables.
//! `run` replays it with `--all` into Parquet in its own process, so that its peak RSS is the
//! replay's alone, and prints records/s and memory. `decode` measures the replay's input side
//! alone: every data file of the changelog tables read and its rows decoded (typed columns), one
//! thread per archived partition as in the replay, with no merge and no core: the ceiling of a
//! replay on this machine.

use rainbow_archive::master::{self, ArchivedRecord, SegmentName};
use rainbow_archive::ArchiveConfig;
use rainbow_processor::event::Table;
use rainbow_replay::replay::source::TypedBatches;
use rainbow_replay::replay::{run, Days, ReplayArgs};
use rainbow_replay::ReplayConfig;
use rainbow_runtime::store::Store;
use rainbow_testkit::workload::{to_debezium_json_with_schema, Workload, WorkloadConfig};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

// The same allocator as the `rainbow` binary.
use rainbow_bench::{arg, arg_u64, rss_kib};
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let archive = arg("--archive").unwrap_or_else(|| {
        eprintln!("usage: replay-bench generate --orders N --archive DIR | run --archive DIR --out DIR");
        std::process::exit(2)
    });
    match mode.as_str() {
        "generate" => generate(&archive, arg("--orders").and_then(|n| n.parse().ok()).unwrap_or(220_000)),
        "run" => replay(&archive, &arg("--out").unwrap_or_else(|| format!("{archive}-replayed"))),
        "decode" => decode_only(&archive),
        other => {
            eprintln!("unknown mode {other:?}: generate | run | decode");
            std::process::exit(2);
        }
    }
}

fn generate(dir: &str, orders: u64) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = Store::open(dir).expect("archive directory");
    let naming = ArchiveConfig::default();
    let mut w = Workload::new(WorkloadConfig::seed_volume(), 42);
    let mut open: BTreeMap<(String, i32), (String, Vec<ArchivedRecord>)> = BTreeMap::new();
    let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let (mut placed, mut records, mut segments, mut json_bytes) = (0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    let mut flush = |k: &(String, i32), date: String, recs: Vec<ArchivedRecord>| {
        if recs.is_empty() {
            return;
        }
        let name = SegmentName {
            topic: k.0.clone(),
            date,
            partition: k.1,
            first: recs[0].offset,
            last: recs[recs.len() - 1].offset,
        };
        rt.block_on(store.put_new(&name.path(), master::encode(&recs).expect("encodes"))).expect("writes");
        segments += 1;
    };
    let mut tx = w.snapshot();
    loop {
        for e in &tx {
            let (key, value) = to_debezium_json_with_schema(e);
            json_bytes += (key.len() + value.len()) as u64;
            let topic = naming.topic_for(e.table().name());
            let p = rainbow_testkit::workload::partition_of(e, &key, 3);
            let k = (topic.clone(), p);
            let offset = offsets.entry(k.clone()).or_default();
            let r = ArchivedRecord {
                topic,
                partition: p,
                offset: *offset,
                key: Some(key),
                value: Some(value),
                timestamp_ms: Some(e.ts_ms),
                commit_lsn: Some(e.position.commit),
                change_lsn: Some(e.position.change),
            };
            *offset += 1;
            records += 1;
            let day = rainbow_schemas::time::day_of_ms(e.ts_ms);
            let entry = open.entry(k.clone()).or_insert_with(|| (day.clone(), Vec::new()));
            if entry.0 != day || entry.1.len() >= 100_000 {
                let (d, recs) = std::mem::replace(entry, (day, Vec::new()));
                flush(&k, d, recs);
            }
            open.get_mut(&k).expect("inserted").1.push(r);
        }
        if tx.iter().any(|e| e.table() == Table::Orders && e.op == rainbow_processor::event::Op::Create) {
            placed += 1;
        }
        if placed >= orders {
            break;
        }
        tx = w.next_transaction();
    }
    for (k, (d, recs)) in std::mem::take(&mut open) {
        flush(&k, d, recs);
    }
    println!(
        "generated {records} records ({orders} orders) in {segments} segments under {dir} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let filled =
        rainbow_archive::archiver::fill_tables(dir, &naming, rt.handle()).expect("builds the tables");
    let secs = started.elapsed().as_secs_f64();
    let size = |sub: &str| -> u64 {
        rainbow_testkit::relative_paths(&std::path::Path::new(dir).join(sub))
            .iter()
            .map(|p| std::fs::metadata(std::path::Path::new(dir).join(sub).join(p)).map_or(0, |m| m.len()))
            .sum()
    };
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| records | {records} |");
    println!("| changelog tables built from the segments | {filled} records in {secs:.1} s |");
    println!("| changelog append throughput | {:.0} records/s |", filled as f64 / secs);
    println!("| raw JSON (keys + values) | {:.1} MiB |", mib(json_bytes));
    println!("| segments (raw JSON in Parquet) | {:.1} MiB |", mib(size("master")));
    println!("| changelog tables (typed columns + raw envelope) | {:.1} MiB |", mib(size("iceberg")));
}

fn replay(archive: &str, out: &str) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let defaults = ReplayConfig::default();
    let args = ReplayArgs {
        archive_url: archive.into(),
        out_url: out.into(),
        days: Days::All,
        naming: ArchiveConfig::default(),
        config: ReplayConfig {
            checkpoint_every_events: u64::MAX / 2,
            // `--shards N`, `--read-batch-rows N`, `--spill-rows N`: overrides, for comparing (the
            // suite runs the defaults).
            shards: arg_u64("--shards", 0) as usize,
            read_batch_rows: arg_u64("--read-batch-rows", defaults.read_batch_rows as u64) as usize,
            spill_rows: arg_u64("--spill-rows", defaults.spill_rows as u64) as usize,
            ..defaults
        },
        progress: false,
        combine: None,
    };
    let started = Instant::now();
    let s = run(&args, rt.handle(), &AtomicBool::new(false)).expect("replays");
    let secs = started.elapsed().as_secs_f64();
    let rows: usize = s.tables.iter().map(|t| t.1).sum();
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| archived records | {} |", s.archive_records);
    println!(
        "| shards (replay.shards = 0: one per core, at most the fact partitions) | {} |",
        s.shards.len()
    );
    println!("| records read by the shards (each reads every dimension record) | {} |", s.records_read);
    println!("| events applied by the shards | {} |", s.events_applied);
    println!("| data files | {} |", s.files);
    println!("| records decoded from their raw envelope | {} |", s.records_from_envelopes);
    println!("| output rows (13 tables, collapsed) | {rows} |");
    println!("| wall time, archive to Parquet | {secs:.1} s |");
    println!("| replay throughput | {:.0} records/s |", s.archive_records as f64 / secs);
    println!("| peak RSS of the replay | {:.0} MiB |", rss_kib("VmHWM:") as f64 / 1024.0);
}

fn decode_only(archive: &str) {
    use rainbow_iceberg::{ChangelogTable, Lake};
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = Store::open(archive).expect("archive directory");
    let naming = ArchiveConfig::default();
    let lake =
        rt.block_on(Lake::open(&naming.lake(&store).expect("a local archive"))).expect("opens the catalog");
    type Files = Vec<(std::sync::Arc<ChangelogTable>, rainbow_iceberg::ChangelogFile)>;
    let mut by_partition: BTreeMap<(String, i32), Files> = BTreeMap::new();
    for topic in naming.topics() {
        let t = rt.block_on(ChangelogTable::load(&lake, &naming.table_of(&topic), &topic)).expect("loads");
        let Some(t) = t.map(std::sync::Arc::new) else { continue };
        for f in rt.block_on(t.files()).expect("lists the files") {
            by_partition.entry((topic.clone(), f.partition)).or_default().push((t.clone(), f));
        }
    }
    let batch_rows = ReplayConfig::default().read_batch_rows;
    let started = Instant::now();
    let (records, untyped) = std::thread::scope(|scope| {
        let workers: Vec<_> = by_partition
            .values()
            .map(|files| {
                let handle = rt.handle();
                scope.spawn(move || {
                    let (mut records, mut untyped) = (0u64, 0u64);
                    for (table, file) in files {
                        let batches = TypedBatches::open(table, file, handle, batch_rows).expect("opens");
                        for batch in batches {
                            let batch = batch.expect("a batch");
                            let typed =
                                rainbow_processor::event::typed::TypedBatch::new(&batch).expect("typed");
                            for i in 0..typed.len() {
                                records += 1;
                                untyped += u64::from(typed.decode(i).is_none());
                            }
                        }
                    }
                    (records, untyped)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    let secs = started.elapsed().as_secs_f64();
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| archived records read and decoded from typed columns (no merge, no core) | {records} |");
    println!("| rows without typed columns (decoded from the envelope in a replay) | {untyped} |");
    println!("| reader threads (one per archived partition) | {} |", by_partition.len());
    println!("| wall time | {secs:.1} s |");
    println!("| read + decode throughput | {:.0} records/s |", records as f64 / secs);
}
