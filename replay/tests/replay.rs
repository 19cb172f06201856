//! The replay over a synthetic master dataset (no servers): the processor's workload simulator's
//! changes, spread over days and written as archive segments over 3 partitions per topic (an
//! order and its lines in the same partition number, as the CDC routes them), with a poison
//! record and re-deliveries. The replay's Parquet equals the core run directly over the same
//! events; a day range equals the core with output kept for those days only; an interrupted
//! replay resumes to the same bytes; two replays give identical files; a sharded replay, on
//! threads or as processes combined afterwards, gives the single shard's files byte for byte.

use rainbow_archive::master::{self, ArchivedRecord, SegmentName};
use rainbow_archive::ArchiveConfig;
use rainbow_processor::core::Core;
use rainbow_processor::event::{ChangeEvent, Position};
use rainbow_replay::replay::{read_table, run, Days, ReplayArgs};
use rainbow_replay::{ReplayConfig, ReplayError};
use rainbow_runtime::store::Store;
use rainbow_schemas::shape::arrow::to_batch;
use rainbow_schemas::shape::Outputs;
use rainbow_schemas::shape::Tables;
use rainbow_testkit::workload::{
    partition_of, to_debezium_json, to_debezium_json_with_schema, Workload, WorkloadConfig,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// 10 minutes between transactions: about 140 a day.
const STEP_MS: i64 = 600_000;

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rb-replay-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The workload's events, commit times moved `STEP_MS` apart per transaction.
fn events() -> Vec<ChangeEvent> {
    let mut w = Workload::new(WorkloadConfig::default(), 7);
    let mut all = w.snapshot();
    for t in 0..600 {
        for mut e in w.next_transaction() {
            e.ts_ms = 1_722_470_400_000 + (t + 1) * STEP_MS;
            all.push(e);
        }
    }
    all
}

fn day(e: &ChangeEvent) -> String {
    rainbow_schemas::time::day_of_ms(e.ts_ms)
}

/// Writes the events as the archiver would: per topic 3 partitions (by key), segments of at
/// most 50 records that never span two days; plus a poison record and re-deliveries.
fn write_archive(dir: &std::path::Path, events: &[ChangeEvent]) {
    let naming = ArchiveConfig::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(dir.to_str().unwrap()).unwrap();
    type Partitions = BTreeMap<(String, i32), Vec<(ArchivedRecord, String)>>;
    let mut partitions: Partitions = BTreeMap::new();
    fn push(
        partitions: &mut Partitions,
        topic: String,
        p: i32,
        key: Vec<u8>,
        value: Vec<u8>,
        e: Option<&ChangeEvent>,
        d: String,
    ) {
        let list = partitions.entry((topic.clone(), p)).or_default();
        let offset = list.len() as i64;
        list.push((
            ArchivedRecord {
                topic,
                partition: p,
                offset,
                key: Some(key),
                value: Some(value),
                timestamp_ms: e.map(|e| e.ts_ms),
                // As the archiver records them: the wire's position (a snapshot row's commit is 0).
                commit_lsn: e.map(|e| e.position.commit_position().commit),
                change_lsn: e.map(|e| e.position.commit_position().change),
            },
            d,
        ));
    }
    for (i, e) in events.iter().enumerate() {
        // As the CDC writes them at its defaults (typed columns in the changelog), and every
        // seventh without the schema (no typed columns: read from the envelope).
        let (key, value) = if i % 7 == 3 { to_debezium_json(e) } else { to_debezium_json_with_schema(e) };
        let topic = naming.topic_for(e.table().name());
        let p = partition_of(e, &key, 3);
        push(&mut partitions, topic, p, key, value, Some(e), day(e));
        // A CDC restart re-sends recent records (at-least-once): each partition gets again the
        // five records before its last one.
        if i == events.len() * 2 / 3 {
            for list in partitions.values_mut() {
                // Only streamed records: snapshot rows of a table share one position.
                let n = list.len();
                if list.last().is_none_or(|(r, _)| r.commit_lsn.unwrap_or(0) == 0) {
                    continue;
                }
                let again: Vec<_> = list[n.saturating_sub(6)..n - 1]
                    .iter()
                    .filter(|(r, _)| r.commit_lsn.unwrap_or(0) > 0)
                    .cloned()
                    .collect();
                for (mut r, d) in again {
                    r.offset = list.len() as i64;
                    list.push((r, d));
                }
            }
        }
        if i == events.len() / 2 {
            let topic = naming.topic_for("orders");
            push(&mut partitions, topic, 0, b"poison".to_vec(), b"{not json".to_vec(), None, day(e));
        }
    }
    for ((topic, p), records) in partitions {
        let mut start = 0;
        while start < records.len() {
            let d = records[start].1.clone();
            let mut end = start;
            while end < records.len() && end - start < 50 && records[end].1 == d {
                end += 1;
            }
            let seg: Vec<ArchivedRecord> = records[start..end].iter().map(|(r, _)| r.clone()).collect();
            let name = SegmentName {
                topic: topic.clone(),
                date: d,
                partition: p,
                first: seg[0].offset,
                last: seg[seg.len() - 1].offset,
            };
            rt.block_on(store.put_new(&name.path(), master::encode(&seg).unwrap())).unwrap();
            start = end;
        }
    }
    // The changelog tables the replay reads, from the segments, as `rainbow archive` builds them.
    rainbow_archive::archiver::fill_tables(dir.to_str().unwrap(), &naming, rt.handle()).unwrap();
}

/// The core over the events in commit order, keeping the output of events whose day `keep`
/// selects and reading nothing after `last_day`.
fn expected(events: &[ChangeEvent], keep: impl Fn(&str) -> bool, last_day: Option<&str>) -> Tables {
    let mut sorted: Vec<&ChangeEvent> =
        events.iter().filter(|e| last_day.is_none_or(|l| day(e).as_str() <= l)).collect();
    sorted.sort_by_key(|e| e.position);
    let mut core = Core::new(0);
    let (mut out, mut tables) = (Outputs::default(), Tables::default());
    let mut keeping = false;
    for e in sorted {
        // Aggregates sealed at every transaction; at the start of a kept stretch, the groups
        // changed before it are sealed and dropped.
        if keep(&day(e)) != keeping {
            core.seal_before(e.position, &mut out);
            if keeping {
                tables.absorb(&mut out);
            } else {
                out = Outputs::default();
            }
            keeping = !keeping;
        }
        core.request_seal();
        core.apply(e, &mut out).unwrap();
        if keep(&day(e)) {
            tables.absorb(&mut out);
        } else {
            out = Outputs::default();
        }
    }
    core.seal_before(Position { commit: u64::MAX, change: 0, table: 0 }, &mut out);
    tables.absorb(&mut out);
    tables
}

fn args(archive: &std::path::Path, out: &std::path::Path, days: Days) -> ReplayArgs {
    ReplayArgs {
        archive_url: archive.display().to_string(),
        out_url: out.display().to_string(),
        days,
        naming: ArchiveConfig::default(),
        config: ReplayConfig::default(),
        progress: false,
        combine: None,
    }
}

/// `args` on `shards` shards.
fn sharded(archive: &std::path::Path, out: &std::path::Path, shards: usize) -> ReplayArgs {
    let mut a = args(archive, out, Days::All);
    a.config.shards = shards;
    a
}

/// Every file of two outputs is the same, but the replay's own folder (its summary).
fn assert_same_files(a: &std::path::Path, b: &std::path::Path, what: &str) {
    let outputs = |d| {
        let mut files = rainbow_testkit::files(d);
        files.retain(|p, _| !p.starts_with("_replay/"));
        files
    };
    let (x, y) = (outputs(a), outputs(b));
    assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{what}");
    for (path, bytes) in &x {
        assert!(y[path] == *bytes, "{path} differs: {what}");
    }
}

/// Every output table read back from Parquet equals `want`, as Arrow batches.
fn assert_output(out: &std::path::Path, want: &Tables) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(out.to_str().unwrap()).unwrap();
    let read = |name: &str| read_table(&store, rt.handle(), name).unwrap().expect("table written");
    macro_rules! check {
        ($($t:ident),*) => {$(
            let expect = to_batch(want.$t.rows().cloned()).unwrap();
            assert_eq!(read(stringify!($t)), expect, "table {}", stringify!($t));
        )*};
    }
    check!(
        dim_customers,
        dim_products,
        dim_sellers,
        dim_promotions,
        dim_payments,
        dim_dates,
        fact_sales,
        agg_total_sales,
        agg_sales_by_day_of_week,
        agg_top_sellers,
        agg_product_profit,
        agg_payment_methods,
        agg_customer_ranking
    );
}

#[test]
fn replay_equals_the_core_and_is_byte_identical_twice_with_or_without_spills() {
    let events = events();
    let archive = temp("all-archive");
    write_archive(&archive, &events);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = AtomicBool::new(false);
    let (out1, out2) = (temp("all-out1"), temp("all-out2"));
    let s = run(&sharded(&archive, &out1, 1), rt.handle(), &stop).unwrap();
    assert_eq!(s.shards.len(), 1);
    assert_eq!(s.records_read, s.archive_records, "one shard reads every record once: {s:?}");
    assert_eq!(s.events_applied as usize, events.len(), "every event applied once: {s:?}");
    assert!(s.duplicates > 0, "re-deliveries were dropped: {s:?}");
    assert_eq!(s.rejected, 1, "the poison record: {s:?}");
    // Every seventh record was written without its schema, and the poison record is not a
    // change event: those are read from their envelope, every other from the typed columns.
    assert!(
        (s.records_read / 8..=s.records_read / 6).contains(&s.records_from_envelopes),
        "{} of {} records from their envelope",
        s.records_from_envelopes,
        s.records_read
    );
    let rejected = std::fs::read_to_string(out1.join("_rejected.jsonl")).unwrap();
    assert!(rejected.contains("\"offset\"") && rejected.contains("decode"), "{rejected}");
    let want = expected(&events, |_| true, None);
    assert!(want.fact_sales.len() > 500 && want.dim_products.len() > 40);
    assert_output(&out1, &want);

    // The second replay holds at most 40 output rows in memory: dozens of spilled runs, merged
    // into the same bytes.
    let mut spilling = sharded(&archive, &out2, 1);
    spilling.config.spill_rows = 40;
    assert!(want.rows_total() > 40 * 20, "many runs: {}", want.rows_total());
    run(&spilling, rt.handle(), &stop).unwrap();
    let (a, b) = (rainbow_testkit::files(&out1), rainbow_testkit::files(&out2));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (path, bytes) in &a {
        assert!(b[path] == *bytes, "{path} differs between two replays");
    }
    assert!(!a.keys().any(|p| p.starts_with("_replay/shards/")), "the checkpoint is removed at the end");
    assert!(!b.keys().any(|p| p.starts_with("_replay/shards/")), "the runs are removed at the end");
    for d in [archive, out1, out2] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_sharded_replay_writes_the_single_shards_bytes_on_threads_or_as_processes() {
    let events = events();
    let archive = temp("shards-archive");
    write_archive(&archive, &events);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = AtomicBool::new(false);
    let single = temp("shards-single");
    let one = run(&sharded(&archive, &single, 1), rt.handle(), &stop).unwrap();
    assert_eq!(one.rejected, 1, "{one:?}");

    // On threads: 2 and 3 shards (each its own core over a third of the orders and every
    // dimension), with and without spilled runs.
    for (shards, spill_rows) in [(2, 250_000), (3, 250_000), (3, 40)] {
        let out = temp(&format!("shards-{shards}-{spill_rows}"));
        let mut a = sharded(&archive, &out, shards);
        a.config.spill_rows = spill_rows;
        let s = run(&a, rt.handle(), &stop).unwrap();
        assert_eq!(s.shards.len(), shards, "{s:?}");
        assert_eq!(
            (s.archive_records, s.rejected, s.tables.clone()),
            (one.archive_records, 1, one.tables.clone())
        );
        // Each shard applied its share of the orders: their fact events add up to the single
        // shard's (dimension events are applied by each).
        assert!(s.shards.iter().all(|x| x.events_applied < one.events_applied), "{s:?}");
        assert!(s.events_applied > one.events_applied, "{s:?}");
        assert_same_files(&single, &out, &format!("{shards} shards, spill_rows {spill_rows}"));
        assert!(!rainbow_testkit::files(&out).keys().any(|p| p.starts_with("_replay/shards/")));
        let _ = std::fs::remove_dir_all(out);
    }

    // As processes: 2 processes share 3 shards; the combine waits for both, refuses another
    // replay's shards, and writes the same bytes.
    let out = temp("shards-processes");
    let process = |i: usize| {
        let mut a = sharded(&archive, &out, 3);
        (a.config.processes, a.config.process) = (2, i);
        a
    };
    let mut combine = process(0);
    combine.combine = Some(std::time::Duration::ZERO);
    let s = run(&process(0), rt.handle(), &stop).unwrap();
    assert_eq!(s.shards.iter().map(|x| x.shard).collect::<Vec<_>>(), [0, 2]);
    assert!(s.tables.is_empty(), "a process writes no table: {s:?}");
    assert!(!out.join("fact_sales").exists());
    let e = run(&combine, rt.handle(), &stop).unwrap_err();
    assert!(matches!(&e, ReplayError::ShardsMissing { missing, .. } if missing == "1"), "{e}");
    let mut other = combine.clone();
    other.archive_url = format!("{}/", other.archive_url);
    let s = run(&process(1), rt.handle(), &stop).unwrap();
    assert_eq!(s.shards.iter().map(|x| x.shard).collect::<Vec<_>>(), [1]);
    let e = run(&other, rt.handle(), &stop).unwrap_err();
    assert!(matches!(e, ReplayError::ShardOfAnotherReplay { shard: 0, .. }), "{e}");
    let s = run(&combine, rt.handle(), &stop).unwrap();
    assert_eq!((s.archive_records, s.rejected, s.shards.len()), (one.archive_records, 1, 3), "{s:?}");
    assert_same_files(&single, &out, "3 shards in 2 processes, combined");
    assert!(!rainbow_testkit::files(&out).keys().any(|p| p.starts_with("_replay/shards/")));

    // A list of days with a gap is replayed by one core; asking for shards is an error that
    // says so (consecutive days select as a range does, and are sharded).
    let (days_out, many_out) = (temp("shards-days"), temp("shards-many"));
    let mut days = sharded(&archive, &days_out, 2);
    days.days = Days::List(["2024-08-02".to_string(), "2024-08-04".to_string()].into());
    let e = run(&days, rt.handle(), &stop).unwrap_err();
    assert!(matches!(e, ReplayError::ShardedSelection { shards: 2, .. }), "{e}");
    let e = run(&sharded(&archive, &many_out, 4), rt.handle(), &stop).unwrap_err();
    assert!(matches!(e, ReplayError::TooManyShards { shards: 4, partitions: 3 }), "{e}");
    for d in [archive, single, out, days_out, many_out] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_day_range_builds_state_from_earlier_days_and_outputs_only_its_days() {
    let events = events();
    let mut days: Vec<String> = events.iter().map(day).collect();
    days.sort();
    days.dedup();
    assert!(days.len() >= 4, "{days:?}");
    let (from, to) = (days[1].clone(), days[2].clone());
    let archive = temp("range-archive");
    write_archive(&archive, &events);
    let out = temp("range-out");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let range = Days::Range { from: from.clone(), to: to.clone() };
    let mut one = args(&archive, &out, range.clone());
    one.config.shards = 1;
    let s = run(&one, rt.handle(), &AtomicBool::new(false)).unwrap();
    let want = expected(&events, |d| from.as_str() <= d && d <= to.as_str(), Some(&to));
    assert_output(&out, &want);
    // Later days were not read; earlier days were applied (state) without output.
    let upto: usize = events.iter().filter(|e| day(e) <= to).count();
    assert_eq!(s.events_applied as usize, upto);
    let in_range = events.iter().filter(|e| from <= day(e) && day(e) <= to).count();
    assert_eq!(s.events_in_selection as usize, in_range);
    // Facts of the range only, joined to dimension versions opened on earlier days.
    assert!(
        want.fact_sales.len() > 100
            && want.fact_sales.len() < expected(&events, |_| true, None).fact_sales.len()
    );

    // Sharded, on threads and as 2 processes combined: the same bytes. A shard whose orders did
    // not change an aggregate group in the range still holds part of its total.
    // Two consecutive days listed select as the range does.
    let consecutive = Days::List([from.clone(), to.clone()].into());
    for (shards, processes, selection) in
        [(2, 1, &range), (3, 1, &range), (3, 2, &range), (2, 1, &consecutive)]
    {
        let sharded_out = temp(&format!("range-{shards}-{processes}-{}", selection.describe().len()));
        let mut a = args(&archive, &sharded_out, selection.clone());
        (a.config.shards, a.config.processes) = (shards, processes);
        for process in 0..processes {
            a.config.process = process;
            let s = run(&a, rt.handle(), &AtomicBool::new(false)).unwrap();
            assert_eq!(s.shards.len(), shards / processes + usize::from(process < shards % processes));
        }
        if processes > 1 {
            a.combine = Some(std::time::Duration::ZERO);
            run(&a, rt.handle(), &AtomicBool::new(false)).unwrap();
        }
        assert_same_files(&out, &sharded_out, &format!("{shards} shards in {processes} process(es)"));
        let _ = std::fs::remove_dir_all(sharded_out);
    }

    // A list of days that is not in the archive.
    let none_out = temp("range-none");
    let e = run(
        &args(&archive, &none_out, Days::Range { from: "2001-01-01".into(), to: "2001-01-02".into() }),
        rt.handle(),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(matches!(e, ReplayError::NothingToReplay { .. }), "{e}");
    for d in [archive, out, none_out] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn an_interrupted_replay_resumes_to_the_same_bytes() {
    let events = events();
    let archive = temp("resume-archive");
    write_archive(&archive, &events);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (clean, resumed) = (temp("resume-clean"), temp("resume-out"));
    run(&sharded(&archive, &clean, 1), rt.handle(), &AtomicBool::new(false)).unwrap();

    // Two shards, each interrupted and resumed from its own checkpoint.
    let mut a = args(&archive, &resumed, Days::All);
    a.config = ReplayConfig {
        read_batch_rows: 7,
        checkpoint_every_events: 1000,
        spill_rows: 25,
        shards: 2,
        ..ReplayConfig::default()
    };
    // Interrupted once output rows have been spilled (every row is spilled at once in this
    // attempt; the resume may use other settings): it finishes its round of reads, writes a
    // checkpoint and returns. The resume then merges runs of both attempts.
    let mut first = a.clone();
    first.config.spill_rows = 1;
    let (stop, finished) = (AtomicBool::new(false), AtomicBool::new(false));
    let spilled = || {
        let files = rainbow_testkit::files(&resumed);
        (0..2).all(|s| files.keys().any(|p| p.starts_with(&format!("_replay/shards/{s:04}/runs/"))))
    };
    let e = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !finished.load(Ordering::SeqCst) && !spilled() {
                std::thread::yield_now();
            }
            stop.store(true, Ordering::SeqCst);
        });
        let result = run(&first, rt.handle(), &stop);
        finished.store(true, Ordering::SeqCst);
        result
    })
    .unwrap_err();
    assert!(matches!(e, ReplayError::Interrupted), "{e}");
    for shard in 0..2 {
        let prefix = format!("_replay/shards/{shard:04}/checkpoints/checkpoint-");
        assert!(
            rainbow_testkit::files(&resumed).keys().any(|p| p.starts_with(&prefix)),
            "the interrupted replay's shard {shard} wrote a checkpoint"
        );
    }
    // Output rows were spilled before the checkpoint: the resume merges runs of both attempts.
    assert!(spilled(), "output rows were spilled before the checkpoint");
    // Runs that the checkpoint does not count (a crash after a spill leaves them) are rewritten
    // from their first chunk on, never merged: here, garbage in the next run numbers.
    let counted = rainbow_testkit::files(&resumed)
        .keys()
        .filter(|p| p.starts_with("_replay/shards/0000/runs/"))
        .filter_map(|p| p.split('/').nth(5)?.strip_prefix("run-")?.parse::<u32>().ok())
        .max()
        .expect("a run")
        + 1;
    for run in counted..counted + 20 {
        for table in ["fact_sales", "dim_products", "agg_total_sales"] {
            let dir = resumed.join(format!("_replay/shards/0000/runs/{table}/run-{run:05}"));
            std::fs::create_dir_all(&dir).unwrap();
            for chunk in 0..3 {
                std::fs::write(dir.join(format!("chunk-{chunk:05}.bin")), b"left by a crash").unwrap();
            }
        }
    }
    let s = run(&a, rt.handle(), &AtomicBool::new(false)).unwrap();
    assert!(s.shards.iter().all(|x| x.resumed_at.is_some_and(|at| at > 0)), "each shard resumed: {s:?}");
    let (x, y) = (rainbow_testkit::files(&clean), rainbow_testkit::files(&resumed));
    for (path, bytes) in &x {
        if path.starts_with("_replay/") {
            continue; // the summary records the resume
        }
        assert!(y.get(path) == Some(bytes), "{path} differs after a resume");
    }
    for d in [archive, clean, resumed] {
        let _ = std::fs::remove_dir_all(d);
    }
}
