//! The engine without servers, over an in-memory source, sink and dead letters: the collapsed
//! tables equal the core's in commit order whatever the interleaving and sealing; a stop and a
//! resume from the checkpoint give the same tables as an uninterrupted run, on either side of a
//! selection's boundary; every record it cannot use is parked with its stage; a checkpoint of
//! other input is not resumed and one of another partition is refused.

use rainbow_processor::checkpoint::{Checkpoint, CheckpointStore};
use rainbow_processor::core::{ColdSettings, Core};
use rainbow_processor::engine::*;
use rainbow_processor::event::{decode, Brand, ChangeEvent, Op, Position, SourceRow, Table};
use rainbow_processor::merge::InputName;
use rainbow_processor::metrics::ProcessorMetrics;
use rainbow_schemas::shape::{Outputs, Tables};
use rainbow_testkit::workload::{to_debezium_json, Workload, WorkloadConfig};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
enum TestError {
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// One partition: its name, table and (offset, value) records.
#[derive(Clone)]
struct Partition {
    name: InputName,
    table: Table,
    records: Vec<(i64, Option<Vec<u8>>)>,
}

/// A bounded source over in-memory partitions, delivering `batch` records of each partition per
/// poll (round-robin), and setting `stop` once `stop_after` events were applied.
struct Memory {
    partitions: Vec<Partition>,
    next: Vec<usize>,
    batch: usize,
    emit_from_ms: i64,
    stop: Arc<AtomicBool>,
    stop_after: Option<u64>,
    /// What [`Source::identity`] says.
    identity: String,
    /// At a stop: read on to every record before a position, within a duration
    /// ([`Source::stop_targets`]), as if the source held those at the stop; then a progress mark
    /// at that position per partition, as the CDC's last heartbeat gives.
    drain: Option<(Position, std::time::Duration)>,
    marks: Vec<(usize, i64, Position)>,
}

impl Memory {
    fn new(partitions: Vec<Partition>, batch: usize) -> Memory {
        Memory {
            next: vec![0; partitions.len()],
            partitions,
            batch,
            emit_from_ms: i64::MIN,
            stop: Arc::new(AtomicBool::new(false)),
            stop_after: None,
            identity: "kafka.cluster=A".into(),
            drain: None,
            marks: Vec::new(),
        }
    }
}

impl Source for Memory {
    type Error = TestError;

    fn identity(&mut self) -> Result<String, TestError> {
        Ok(self.identity.clone())
    }

    fn open(&mut self, resume: &BTreeMap<InputName, i64>) -> Result<Vec<Input>, TestError> {
        Ok(self
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let start = resume.get(&p.name).copied().unwrap_or(0);
                self.next[i] = p.records.iter().position(|(o, _)| *o >= start).unwrap_or(p.records.len());
                Input { name: p.name.clone(), table: p.table, start }
            })
            .collect())
    }

    fn stop_targets(&mut self) -> Option<(Vec<i64>, std::time::Duration)> {
        let (cut, within) = self.drain?;
        let position = |v: &Option<Vec<u8>>| decode(v.as_deref()).ok().flatten().map(|e| e.position);
        let targets: Vec<i64> = self
            .partitions
            .iter()
            .map(|p| {
                let at = p.records.iter().find(|(_, v)| position(v).is_some_and(|at| at >= cut));
                at.map_or(p.records.last().map_or(0, |r| r.0 + 1), |r| r.0)
            })
            .collect();
        self.marks = targets.iter().enumerate().map(|(i, t)| (i, *t, cut)).collect();
        Some((targets, within))
    }

    fn poll(&mut self, intake: &mut Intake<'_, TestError>) -> Result<Poll, TestError> {
        for (i, end, at) in self.marks.drain(..) {
            intake.mark(i, end, at);
        }
        if self.stop_after.is_some_and(|n| intake.totals().events >= n) {
            self.stop.store(true, Ordering::SeqCst);
        }
        for (i, p) in self.partitions.iter().enumerate() {
            if intake.is_finished(i) {
                continue;
            }
            let until = (self.next[i] + self.batch).min(p.records.len());
            for (offset, value) in &p.records[self.next[i]..until] {
                let decoded = decode(value.as_deref());
                let emit = decoded
                    .as_ref()
                    .ok()
                    .and_then(Option::as_ref)
                    .is_none_or(|e| e.ts_ms >= self.emit_from_ms);
                intake.record(Record {
                    input: i,
                    offset: *offset,
                    decoded,
                    emit,
                    key: None,
                    value: value.as_deref(),
                    appended_ms: None,
                })?;
            }
            self.next[i] = until;
            if until == p.records.len() {
                intake.finish(i);
            }
        }
        let all = (0..self.partitions.len()).all(|i| intake.is_finished(i));
        Ok(if all { Poll::End } else { Poll::More })
    }
}

/// Collapses what it is given, as ReplacingMergeTree would.
#[derive(Default)]
struct Collapse {
    tables: Tables,
}

impl Sink for Collapse {
    type Error = TestError;
    type Summary = Tables;

    fn write(&mut self, rows: &mut Outputs) -> Result<(), TestError> {
        self.tables.absorb(rows);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TestError> {
        Ok(())
    }

    fn save(&self) -> Result<Vec<u8>, TestError> {
        Ok(postcard::to_allocvec(&self.tables).unwrap())
    }

    fn restore(&mut self, state: Option<&[u8]>) -> Result<(), TestError> {
        self.tables = state.map(|b| postcard::from_bytes(b).unwrap()).unwrap_or_default();
        Ok(())
    }

    fn finish(self) -> Result<Tables, TestError> {
        Ok(self.tables)
    }
}

/// (stage, topic, offset, reason) of a letter.
type Letter = (String, String, i64, String);

/// Keeps every letter, where the test can read them.
#[derive(Default, Clone)]
struct Letters {
    parked: Arc<Mutex<Vec<Letter>>>,
}

impl DeadLetters for Letters {
    type Error = TestError;

    fn park(&mut self, l: &DeadLetter<'_>) -> Result<(), TestError> {
        self.parked.lock().unwrap().push((l.stage.into(), l.input.topic.clone(), l.offset, l.reason.into()));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TestError> {
        Ok(())
    }

    fn save(&self) -> Result<Vec<u8>, TestError> {
        Ok(postcard::to_allocvec(&*self.parked.lock().unwrap()).unwrap())
    }

    fn restore(&mut self, state: Option<&[u8]>) -> Result<(), TestError> {
        *self.parked.lock().unwrap() = state.map(|b| postcard::from_bytes(b).unwrap()).unwrap_or_default();
        Ok(())
    }

    fn finish(self) -> Result<u64, TestError> {
        Ok(self.parked.lock().unwrap().len() as u64)
    }
}

/// A workload's events in commit order.
fn events(seed: u64, txs: usize) -> Vec<ChangeEvent> {
    events_of(WorkloadConfig::default(), seed, txs)
}

fn events_of(config: WorkloadConfig, seed: u64, txs: usize) -> Vec<ChangeEvent> {
    let mut w = Workload::new(config, seed);
    let mut all = w.snapshot();
    for _ in 0..txs {
        all.extend(w.next_transaction());
    }
    all
}

/// The events as the CDC would publish them: a topic per table, orders and their lines routed to
/// one of two partitions by order id.
fn partitions(events: &[ChangeEvent]) -> Vec<Partition> {
    let mut by: BTreeMap<(String, i32), Partition> = BTreeMap::new();
    for e in events {
        let table = e.table();
        let order_id = match e.after.as_ref().or(e.before.as_ref()) {
            Some(SourceRow::Order(o)) => Some(o.id),
            Some(SourceRow::OrderLine(l)) => Some(l.order_id),
            _ => None,
        };
        let name = InputName {
            topic: format!("t.{}", table.name()),
            partition: order_id.map_or(0, |id| (id % 2) as i32),
        };
        let p = by.entry((name.topic.clone(), name.partition)).or_insert_with(|| Partition {
            name,
            table,
            records: Vec::new(),
        });
        let offset = p.records.len() as i64;
        p.records.push((offset, Some(to_debezium_json(e).1)));
    }
    by.into_values().collect()
}

fn options(seal: Seal, every: u64) -> Options {
    Options {
        partition: 0,
        fingerprint: "test".into(),
        seal,
        checkpoint_every: Every::Events(every),
        failpoint: "RAINBOW_TEST_ENGINE_FAILPOINT",
        cold: None,
    }
}

fn store(dir: &std::path::Path) -> CheckpointStore {
    CheckpointStore::open(dir.to_str().unwrap(), "engine", 1).unwrap()
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rb-engine-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// An engine with fresh sink and letters.
fn open(
    source: Memory,
    options: Options,
    store: CheckpointStore,
    rt: &tokio::runtime::Runtime,
) -> Result<Engine<Memory, Collapse, Letters>, TestError> {
    Engine::open(
        source,
        Collapse::default(),
        Letters::default(),
        options,
        store,
        rt.handle().clone(),
        ProcessorMetrics::new(),
    )
}

/// Runs an engine to the end of its input (or to its stop) with fresh sink and letters.
fn run(
    source: Memory,
    options: Options,
    store: CheckpointStore,
    rt: &tokio::runtime::Runtime,
) -> Finished<Tables> {
    let stop = source.stop.clone();
    open(source, options, store, rt).unwrap().run(&stop).unwrap()
}

/// The error of an engine that `Engine::open` refuses.
fn refused(
    source: Memory,
    options: Options,
    store: CheckpointStore,
    rt: &tokio::runtime::Runtime,
) -> TestError {
    open(source, options, store, rt).err().expect("refused")
}

fn ended(f: Finished<Tables>) -> (EngineSummary, Tables, u64) {
    match f {
        Finished::Ended(e) => e,
        Finished::Stopped(s) => panic!("stopped: {s:?}"),
    }
}

#[test]
fn the_tables_are_the_cores_in_commit_order_whatever_the_interleaving_and_sealing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let events = events(3, 400);
    // The oracle: the core applied in commit order, sealed at the end.
    let mut core = Core::new(0);
    let (mut out, mut want) = (Outputs::default(), Tables::default());
    for e in &events {
        core.apply(e, &mut out).unwrap();
    }
    core.seal_before(Position { commit: u64::MAX, change: 0, table: 0 }, &mut out);
    want.absorb(&mut out);
    for (batch, seal) in [(1, Seal::AtFrontier), (7, Seal::AtEnd), (1000, Seal::AtFrontier)] {
        let dir = temp(&format!("order-{batch}"));
        let (summary, tables, parked) =
            ended(run(Memory::new(partitions(&events), batch), options(seal, 1_000_000), store(&dir), &rt));
        assert_eq!(tables, want, "batch {batch}, {seal:?}");
        assert_eq!(
            (summary.totals.events, summary.totals.emitted, parked),
            (events.len() as u64, events.len() as u64, 0)
        );
        assert!(
            !dir.join("engine").exists() || std::fs::read_dir(dir.join("engine")).unwrap().next().is_none(),
            "the checkpoints are deleted at the end of the input"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_stop_and_a_resume_give_the_tables_of_an_uninterrupted_run_on_both_sides_of_a_selection() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The seed's catalogue: many aggregate groups are changed only once, on one side of a stop.
    let events = events_of(WorkloadConfig::seed_volume(), 11, 1_500);
    let snapshot = events.iter().filter(|e| e.position.is_snapshot()).count();
    let streamed = events.len() - snapshot;
    let cutoff = events[snapshot + streamed / 2].ts_ms;
    let source = |stop_after: Option<u64>| {
        let mut m = Memory::new(partitions(&events), 5);
        m.emit_from_ms = cutoff;
        m.stop_after = stop_after;
        m
    };
    let dir = temp("whole");
    let (whole, want, _) = ended(run(source(None), options(Seal::AtEnd, 1_000), store(&dir), &rt));
    assert!(whole.totals.emitted > 0 && whole.totals.emitted < whole.totals.events, "{whole:?}");
    // Stopped before the selected days start, and after.
    for stop_after in [snapshot + streamed / 4, snapshot + streamed * 3 / 4].map(|n| n as u64) {
        let dir = temp(&format!("resume-{stop_after}"));
        match run(source(Some(stop_after)), options(Seal::AtEnd, 1_000), store(&dir), &rt) {
            Finished::Stopped(s) => {
                assert!(s.checkpoints >= 1 && s.totals.events < events.len() as u64, "{s:?}");
                assert_eq!(s.totals.emitted > 0, stop_after > (snapshot + streamed / 2) as u64, "{s:?}");
            }
            Finished::Ended(_) => panic!("the stop came after the end"),
        }
        let (resumed, tables, _) = ended(run(source(None), options(Seal::AtEnd, 1_000), store(&dir), &rt));
        assert!(resumed.resumed.is_some(), "resumed from the checkpoint");
        assert_eq!(resumed.totals.events, whole.totals.events, "stop after {stop_after}");
        assert_eq!(resumed.totals.emitted, whole.totals.emitted, "stop after {stop_after}");
        assert_eq!(tables, want, "stop after {stop_after}: the resumed tables differ");
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Orders kept on disk go with the checkpoints: a resume on a machine without the local files
/// (an empty state directory) fetches them from the checkpoint store, and the tables equal those
/// of a run that kept every order in memory.
#[test]
fn the_run_files_of_orders_on_disk_go_with_the_checkpoints() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let events = events(21, 1_200);
    let whole_dir = temp("cold-whole");
    let (whole, want, _) =
        ended(run(Memory::new(partitions(&events), 3), options(Seal::AtEnd, 300), store(&whole_dir), &rt));
    let (dir, local) = (temp("cold"), temp("cold-local"));
    let cold = |every| Options {
        cold: Some(ColdSettings { dir: local.clone(), hot_orders: 4, generation: String::new() }),
        ..options(Seal::AtEnd, every)
    };
    let mut first = Memory::new(partitions(&events), 3);
    first.stop_after = Some(events.len() as u64 / 2);
    let Finished::Stopped(s) = run(first, cold(300), store(&dir), &rt) else { panic!("stops") };
    assert!(s.checkpoints >= 1, "{s:?}");
    let stored = |kind: &str| std::fs::read_dir(dir.join("engine/cold").join(kind)).map_or(0, |d| d.count());
    for kind in ["orders", "versions"] {
        assert!(stored(kind) > 1, "the runs of {kind} the checkpoints name are in the store");
    }
    std::fs::remove_dir_all(&local).unwrap();

    let (resumed, tables, _) = ended(run(Memory::new(partitions(&events), 3), cold(300), store(&dir), &rt));
    assert!(resumed.resumed.is_some(), "resumed from the checkpoint");
    assert_eq!(resumed.totals.events, whole.totals.events);
    assert_eq!(tables, want, "the resumed tables differ from those of orders kept in memory");
    assert_eq!(
        [stored("orders"), stored("versions")],
        [0, 0],
        "the end of a bounded input deletes the checkpoints and their runs"
    );

    // A checkpoint that names runs, opened by an engine that keeps every order in memory.
    let mut again = Memory::new(partitions(&events), 3);
    again.stop_after = Some(events.len() as u64 / 2);
    let Finished::Stopped(_) = run(again, cold(300), store(&dir), &rt) else { panic!("stops") };
    let e = refused(Memory::new(partitions(&events), 3), options(Seal::AtEnd, 300), store(&dir), &rt);
    assert!(e.to_string().contains("run file(s) of state kept on disk"), "{e}");
    // processor.hot_orders = 0 (nothing more to disk): what the checkpoint has there is read.
    let all_in_memory = Options {
        cold: Some(ColdSettings { dir: local.clone(), hot_orders: usize::MAX, generation: String::new() }),
        ..options(Seal::AtEnd, 300)
    };
    let (_, tables, _) = ended(run(Memory::new(partitions(&events), 3), all_in_memory, store(&dir), &rt));
    assert_eq!(tables, want, "resumed with every new order in memory");
    for d in [whole_dir, dir, local] {
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn a_stop_reads_on_to_what_the_source_held_at_the_stop_within_its_bound() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let events = events(3, 400);
    // The source held every event before the 800th at the stop (which comes after the 200th).
    let cut = events[800].position;
    let below = events.iter().filter(|e| e.position < cut).count() as u64;
    let source = |drain: Option<std::time::Duration>| {
        let mut m = Memory::new(partitions(&events), 5);
        m.stop_after = Some(200);
        m.drain = drain.map(|within| (cut, within));
        m
    };
    let stopped = |m: Memory, name: &str| {
        let dir = temp(name);
        let out = match run(m, options(Seal::AtFrontier, 1_000_000), store(&dir), &rt) {
            Finished::Stopped(s) => s.totals.events,
            Finished::Ended(_) => panic!("{name}: the stop came after the end"),
        };
        let _ = std::fs::remove_dir_all(&dir);
        out
    };
    // Without draining: stopped soon after the 200th event.
    let at_once = stopped(source(None), "drain-off");
    assert!(at_once < below, "without draining, {at_once} events; before the cut {below}");
    // Draining: every event before the cut is applied before the stop.
    let drained = stopped(source(Some(std::time::Duration::from_secs(60))), "drain-on");
    assert!(drained >= below, "draining applied {drained} events, {below} before the cut");
    // A bound already passed: stopped at once.
    assert!(stopped(source(Some(std::time::Duration::ZERO)), "drain-zero") < below);
}

#[test]
fn every_record_it_cannot_use_is_parked_with_its_stage() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let events = events(5, 50);
    let mut parts = partitions(&events);
    let brands = parts.iter().position(|p| p.table == Table::Brands).unwrap();
    let at = |p: &Partition| p.records.len() as i64;
    // Not JSON; a tombstone (skipped, not parked); an event of another table on this topic.
    let offset_bad = at(&parts[brands]);
    parts[brands].records.push((offset_bad, Some(b"{not json".to_vec())));
    parts[brands].records.push((offset_bad + 1, None));
    let customer = events.iter().find(|e| e.table() == Table::Customers).unwrap();
    parts[brands].records.push((offset_bad + 2, Some(to_debezium_json(customer).1)));
    // A line of an order nobody placed, after everything else: the core refuses it.
    let lines = parts.iter().position(|p| p.table == Table::Orderdetails).unwrap();
    let mut orphan = events.iter().rev().find(|e| e.table() == Table::Orderdetails).unwrap().clone();
    if let Some(SourceRow::OrderLine(l)) = orphan.after.as_mut() {
        l.order_id = 999_999;
    }
    orphan.position.commit += 1_000_000;
    orphan.position.change += 1_000_000;
    let offset = at(&parts[lines]);
    parts[lines].records.push((offset, Some(to_debezium_json(&orphan).1)));

    let dir = temp("letters");
    let stop = Arc::new(AtomicBool::new(false));
    let letters = Letters::default();
    let engine = Engine::open(
        Memory::new(parts, 10),
        Collapse::default(),
        letters.clone(),
        options(Seal::AtFrontier, 1_000_000),
        store(&dir),
        rt.handle().clone(),
        ProcessorMetrics::new(),
    )
    .unwrap();
    let (summary, _, parked) = ended(engine.run(&stop).unwrap());
    assert_eq!(parked, 3);
    assert_eq!(summary.totals.rejected, 3);
    assert_eq!(summary.totals.events, events.len() as u64, "everything else was applied");
    let got = letters.parked.lock().unwrap().clone();
    let brands_topic = "t.brands".to_string();
    assert_eq!((got[0].0.as_str(), &got[0].1, got[0].2), ("decode", &brands_topic, offset_bad));
    assert!(got[0].3.starts_with("not a Debezium change event"), "{got:?}");
    assert_eq!((got[1].0.as_str(), &got[1].1, got[1].2), ("decode", &brands_topic, offset_bad + 2));
    assert_eq!(got[1].3, "event of table customers on the topic of brands");
    assert_eq!((got[2].0.as_str(), got[2].1.as_str(), got[2].2), ("core", "t.orderdetails", -1));
    assert!(got[2].3.contains("999999") && got[2].3.contains("unknown"), "{got:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_checkpoint_of_other_input_is_not_resumed_and_one_of_another_partition_is_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let events = events(7, 100);
    let dir = temp("foreign");
    let mut first = Memory::new(partitions(&events), 3);
    first.stop_after = Some(events.len() as u64 / 2);
    let Finished::Stopped(_) = run(first, options(Seal::AtEnd, 100), store(&dir), &rt) else {
        panic!("stops")
    };

    let other = Options { fingerprint: "another archive".into(), ..options(Seal::AtEnd, 100) };
    let (summary, _, _) = ended(run(Memory::new(partitions(&events), 3), other, store(&dir), &rt));
    assert_eq!(summary.resumed, None, "a checkpoint of other input is not resumed");
    assert_eq!(summary.totals.events, events.len() as u64);

    let mut again = Memory::new(partitions(&events), 3);
    again.stop_after = Some(10);
    let Finished::Stopped(_) = run(again, options(Seal::AtEnd, 100), store(&dir), &rt) else {
        panic!("stops")
    };
    let wrong = Options { partition: 1, ..options(Seal::AtEnd, 100) };
    let e = refused(Memory::new(partitions(&events), 3), wrong, store(&dir), &rt);
    assert!(matches!(e, TestError::Engine(EngineError::PartitionMismatch { found: 0, expected: 1 })), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_checkpoint_written_while_reading_another_source_is_refused_with_what_differs() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let events = events(8, 60);
    let dir = temp("other-source");
    let mut first = Memory::new(partitions(&events), 3);
    first.stop_after = Some(events.len() as u64 / 2);
    let Finished::Stopped(_) = run(first, options(Seal::AtEnd, 100), store(&dir), &rt) else {
        panic!("stops")
    };
    let mut other = Memory::new(partitions(&events), 3);
    other.identity = "kafka.cluster=B; postgres.system=7".into();
    let e = refused(other, options(Seal::AtEnd, 100), store(&dir), &rt);
    let text = e.to_string();
    assert!(
        matches!(&e, TestError::Engine(EngineError::ForeignSource { differences, .. })
            if differences == "kafka.cluster: A recorded, B now"),
        "{text}"
    );
    assert!(text.contains(dir.to_str().unwrap()) && text.contains("rainbow reset warehouse --yes"), "{text}");
    // The same source resumes, and one that tells more about itself (a topic id, the PostgreSQL
    // facts of a heartbeat) too.
    let mut more = Memory::new(partitions(&events), 3);
    more.identity = "kafka.cluster=A; postgres.system=7".into();
    let (summary, _, _) = ended(run(more, options(Seal::AtEnd, 100), store(&dir), &rt));
    assert!(summary.resumed.is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A snapshot behind what was applied (a source whose positions went back: a new PostgreSQL
/// behind the same topics) stops the engine with what happened, instead of being dropped.
#[test]
fn a_snapshot_behind_what_was_applied_stops_the_engine() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let events = events(9, 40);
    let mut parts = partitions(&events);
    // After everything, on the brands topic: a snapshot row of a source at an earlier position.
    let old = ChangeEvent {
        op: Op::Read,
        position: Position::snapshot(5, Table::Brands),
        ts_ms: 0,
        before: None,
        after: Some(SourceRow::Brand(Brand { id: 1, name: "B".into() })),
    };
    let brands = parts.iter_mut().find(|p| p.table == Table::Brands).unwrap();
    let offset = brands.records.len() as i64;
    brands.records.push((offset, Some(to_debezium_json(&old).1)));
    let dir = temp("rewound");
    let source = Memory::new(parts, 3);
    let stop = source.stop.clone();
    let engine = Engine::open(
        source,
        Collapse::default(),
        Letters::default(),
        options(Seal::AtEnd, 1_000),
        store(&dir),
        rt.handle().clone(),
        ProcessorMetrics::new(),
    )
    .unwrap();
    let Err(e) = engine.run(&stop) else { panic!("a snapshot behind what was applied was accepted") };
    assert!(matches!(e, TestError::Engine(EngineError::SourceRewound { snapshot: 5, .. })), "{e}");
    assert!(e.to_string().contains("the source's positions went back"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where [`Deferred`] leaves the sender that answers its pending flush.
type Answer = Arc<Mutex<Option<tokio::sync::oneshot::Sender<Result<(), String>>>>>;

/// A sink whose flushes the test answers: [`Sink::flush_begin`] hands its sender to the test;
/// the rest is [`Collapse`]'s.
#[derive(Default)]
struct Deferred {
    collapse: Collapse,
    answer: Answer,
}

impl Sink for Deferred {
    type Error = TestError;
    type Summary = Tables;

    fn write(&mut self, rows: &mut Outputs) -> Result<(), TestError> {
        self.collapse.write(rows)
    }

    fn flush(&mut self) -> Result<(), TestError> {
        self.collapse.flush()
    }

    fn flush_begin(&mut self) -> Result<Durable, TestError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.answer.lock().unwrap() = Some(tx);
        Ok(Durable::Later(rx))
    }

    fn finish(self) -> Result<Tables, TestError> {
        self.collapse.finish()
    }
}

/// Delivers one record per partition per poll. While the interval's checkpoint waits for the
/// sink, it checks that events go on being applied and that nothing is written to the store; 200
/// events later it answers the sink; then it stops the engine.
struct Gated {
    inner: Memory,
    answer: Answer,
    dir: std::path::PathBuf,
    /// Events applied when the pending checkpoint was seen first, and when it was answered.
    pending_since: Option<u64>,
    answered_at: Option<u64>,
    seen: Arc<Mutex<(u64, u64, bool)>>,
}

impl Source for Gated {
    type Error = TestError;

    fn identity(&mut self) -> Result<String, TestError> {
        self.inner.identity()
    }

    fn open(&mut self, resume: &BTreeMap<InputName, i64>) -> Result<Vec<Input>, TestError> {
        self.inner.open(resume)
    }

    fn poll(&mut self, intake: &mut Intake<'_, TestError>) -> Result<Poll, TestError> {
        let events = intake.totals().events;
        let written = std::fs::read_dir(self.dir.join("engine")).map(|d| d.count()).unwrap_or(0);
        if self.answered_at.is_none() && self.answer.lock().unwrap().is_some() {
            let since = *self.pending_since.get_or_insert(events);
            assert_eq!(written, 0, "a checkpoint was written before the sink had its rows");
            if events >= since + 200 {
                let tx = self.answer.lock().unwrap().take().unwrap();
                tx.send(Ok(())).unwrap();
                self.answered_at = Some(events);
                *self.seen.lock().unwrap() = (since, events, false);
            }
        } else if let Some(at) = self.answered_at {
            if written > 0 {
                // Encoded (in a forked child) as the state was when it began: before the answer.
                let file = std::fs::read_dir(self.dir.join("engine")).unwrap().next().unwrap().unwrap();
                let interval = Checkpoint::decode(&std::fs::read(file.path()).unwrap()).unwrap();
                let since = self.pending_since.unwrap();
                assert!(
                    interval.totals.events <= since && interval.totals.events > 0,
                    "{:?}",
                    interval.totals
                );
                self.seen.lock().unwrap().2 = true;
                self.inner.stop.store(true, Ordering::SeqCst);
            }
            assert!(events < at + 5_000, "the answered checkpoint was never written");
        }
        self.inner.poll(intake)
    }
}

#[test]
fn an_interval_checkpoint_waits_for_the_sink_without_holding_up_events() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let events = events(11, 2_000);
    let dir = temp("deferred");
    let inner = Memory::new(partitions(&events), 1);
    let stop = inner.stop.clone();
    let sink = Deferred::default();
    let seen = Arc::new(Mutex::new((0, 0, false)));
    let source = Gated {
        inner,
        answer: sink.answer.clone(),
        dir: dir.clone(),
        pending_since: None,
        answered_at: None,
        seen: seen.clone(),
    };
    let options = Options {
        checkpoint_every: Every::Interval(std::time::Duration::ZERO),
        ..options(Seal::AtFrontier, 0)
    };
    let engine = Engine::open(
        source,
        sink,
        Letters::default(),
        options,
        store(&dir),
        rt.handle().clone(),
        ProcessorMetrics::new(),
    )
    .unwrap();
    let finished = engine.run(&stop).unwrap();
    let (since, answered, written) = *seen.lock().unwrap();
    assert!(answered >= since + 200, "events went on while the checkpoint waited: {since} -> {answered}");
    assert!(written, "the checkpoint was written once the sink answered");
    let Finished::Stopped(summary) = finished else { panic!("the input ended before the test stopped it") };
    // The interval's checkpoint and the one written at stop.
    assert!(summary.checkpoints >= 2, "{summary:?}");
    // Resumed from the last checkpoint, the engine holds every event applied before the stop.
    let resumed = rt.block_on(store(&dir).latest()).unwrap().expect("a checkpoint");
    assert_eq!(resumed.totals.events, summary.totals.events);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(target_os = "linux")]
#[test]
fn a_checkpoint_encoded_by_a_forked_child_is_the_one_encoded_in_place() {
    use rainbow_processor::checkpoint::{CheckpointRef, Totals};
    let mut core = Core::new(0);
    let mut out = Outputs::default();
    let all = events(5, 3_300);
    let (before, after) = all.split_at(all.len() * 9 / 10);
    for e in before {
        core.apply(e, &mut out).unwrap();
    }
    let offsets = vec![(InputName { topic: "t".into(), partition: 2 }, 41)];
    let totals = Totals { records: 9, events: 8, emitted: 7, duplicates: 1, rejected: 0 };
    let c = CheckpointRef {
        id: 3,
        fingerprint: "f",
        source: "s",
        partition: 0,
        emitting: true,
        last_released: core.last_position(),
        offsets: &offsets,
        totals: &totals,
        state: core.state(),
        sink: b"sink",
        dead_letters: b"",
    };
    let in_place = c.encode().unwrap();
    let forked = c.encode_forked().expect("forks");
    // The state changes while the child writes: the child's bytes are of the fork's moment.
    let size = core.size();
    for e in after {
        core.apply(e, &mut out).unwrap();
    }
    assert!(core.size().order_lines > size.order_lines);
    let bytes = forked.wait(0).expect("the child ends well");
    assert!(bytes.len() > 100_000, "{} bytes", bytes.len());
    assert!(bytes == in_place, "the same bytes ({} against {})", bytes.len(), in_place.len());
    assert_eq!(Checkpoint::decode(&bytes).unwrap().totals, totals);
}
