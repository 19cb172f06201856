//! `rainbow replay`: the master dataset through the processor's core into Parquet (backfill).
//!
//! Contract: the archived partitions are merged by [`Merger`] and applied by [`Core`], the very
//! code `rainbow process` runs, so for the same input the collapsed output equals what streaming
//! wrote to ClickHouse (the Kappa invariant). Every segment up to the last selected day is
//! read, from the beginning of the archive: days before the selection only build state, events
//! of the selected days also produce output rows. Output: per warehouse table,
//! `<out>/<table>/part-NNNNN.parquet`, the table as ReplacingMergeTree `FINAL` sees it (per key
//! the row with the highest version), sorted by the table's key; the same archive and
//! selection give byte-identical files.
//!
//! Threads: one reader thread per archived partition fetches its segments in offset order and
//! decodes them (Parquet, then the Debezium JSON) while the calling thread merges and applies;
//! the core runs on the calling thread only, so the order of application is the merge's alone.
//!
//! Memory: one segment per input partition is open at a time, and per input at most
//! `read_batch_rows` records wait in the merge plus one decoded batch in the reader's channel.
//! The collapsed output holds at most `spill_rows` rows in memory; beyond that it goes to sorted
//! runs in the output store ([`crate::spill`]), merged chunk by chunk when the tables are
//! written (at most `rows_per_file` rows of a table are encoded at a time). What remains grows
//! with the input: the core's state, bounded by keys (dimension versions, order lines, groups),
//! not by events.
//!
//! Resumable: a checkpoint (state, the output buffer and the number of runs spilled, merge
//! position, input offsets) is written to `<out>/_replay/checkpoint.bin` every
//! `checkpoint_every_events` and on interrupt; a rerun of the same command resumes from it. The
//! checkpoint and the runs are deleted once the output is complete; `<out>/_replay/summary.json`
//! then describes the run.

use crate::config::{ArchiveConfig, ReplayConfig};
use crate::error::ReplayError;
use crate::master::{SegmentName, SegmentReader};
use crate::spill::{Merged, Output};
use parquet::arrow::ArrowWriter;
use rainbow_processor::core::{Core, State};
use rainbow_processor::event::{decode, ChangeEvent, Position};
use rainbow_processor::merge::{InputName, Merger};
use rainbow_runtime::failpoint::CrashAfter;
use rainbow_runtime::store::Store;
use rainbow_schemas::shape::arrow::{schema_of, BatchBuilder};
use rainbow_schemas::shape::checks::{self, Batches};
use rainbow_schemas::shape::{Outputs, Table, Tables, WarehouseRow};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

/// Leading bytes of a replay checkpoint.
const MAGIC: &[u8; 8] = b"RBWRPLY2";
const CHECKPOINT: &str = "_replay/checkpoint.bin";
const SUMMARY: &str = "_replay/summary.json";
/// Environment variable of the failpoint `crash_after_events=N` (tests): abort the process once
/// N events have been applied in this run.
pub const FAILPOINT_VAR: &str = "RAINBOW_REPLAY_FAILPOINT";

/// Which days' events produce output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Days {
    All,
    /// Inclusive, `YYYY-MM-DD`.
    Range {
        from: String,
        to: String,
    },
    List(BTreeSet<String>),
}

impl Days {
    fn selects(&self, day: &str) -> bool {
        match self {
            Days::All => true,
            Days::Range { from, to } => from.as_str() <= day && day <= to.as_str(),
            Days::List(days) => days.contains(day),
        }
    }

    /// Segments of later days are not read at all.
    fn last(&self) -> Option<&str> {
        match self {
            Days::All => None,
            Days::Range { to, .. } => Some(to),
            Days::List(days) => days.iter().next_back().map(String::as_str),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Days::All => "all days".into(),
            Days::Range { from, to } => format!("{from} .. {to}"),
            Days::List(d) => d.iter().cloned().collect::<Vec<_>>().join(","),
        }
    }
}

/// What to replay and where to.
#[derive(Debug, Clone)]
pub struct ReplayArgs {
    pub archive_url: String,
    pub out_url: String,
    pub days: Days,
    /// The archived topics' naming (the archiver's).
    pub naming: ArchiveConfig,
    pub config: ReplayConfig,
    /// Draw a progress line on stderr.
    pub progress: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaySummary {
    pub days: String,
    pub segments: usize,
    pub records_read: u64,
    pub events_applied: u64,
    pub events_in_selection: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Events applied before this run (from a checkpoint).
    pub resumed_at: Option<u64>,
    /// (table, rows, files).
    pub tables: Vec<(String, usize, usize)>,
}

/// A record the core could not use, with why (written to `<out>/_rejected.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub stage: String,
    pub reason: String,
}

#[derive(Serialize, Deserialize)]
struct ReplayCheckpoint {
    fingerprint: String,
    events: u64,
    in_selection: u64,
    records: u64,
    duplicates: u64,
    last_released: Option<Position>,
    offsets: Vec<(InputName, i64)>,
    state: State,
    /// The output buffer; runs `0..runs` are in the output store.
    buffer: Tables,
    runs: u32,
    rejected: Vec<Rejection>,
}

#[derive(Serialize)]
struct ReplayCheckpointRef<'a> {
    fingerprint: &'a str,
    events: u64,
    in_selection: u64,
    records: u64,
    duplicates: u64,
    last_released: Option<Position>,
    offsets: Vec<(InputName, i64)>,
    state: &'a State,
    buffer: &'a Tables,
    runs: u32,
    rejected: &'a [Rejection],
}

/// One archived partition, read segment by segment.
struct Input {
    name: InputName,
    /// In offset order.
    segments: Vec<SegmentName>,
    /// Records below this offset were applied before the checkpoint this run resumed from.
    resume_at: i64,
}

/// A record as a reader thread decoded it.
struct Decoded {
    offset: i64,
    /// `Ok(None)`: a tombstone.
    event: Result<Option<ChangeEvent>, String>,
}

/// What a reader thread sends for its input, in offset order.
enum Fed {
    /// Records of one segment; `selected` when its day is.
    Batch {
        selected: bool,
        records: Vec<Decoded>,
    },
    /// Every segment was read.
    End,
    Failed(ReplayError),
}

/// Channel capacity per input, in batches.
const READ_AHEAD: usize = 1;

/// A released item: the event and whether its day is selected.
struct Item {
    event: ChangeEvent,
    selected: bool,
}

/// Runs a replay on the calling thread (blocking; store calls go through `rt`). Returns
/// [`ReplayError::Interrupted`] after writing a checkpoint when `stop` is set.
pub fn run(
    args: &ReplayArgs,
    rt: &tokio::runtime::Handle,
    stop: &AtomicBool,
) -> Result<ReplaySummary, ReplayError> {
    args.config.validate()?;
    let archive = Store::open(&args.archive_url)?;
    let out = Store::open(&args.out_url)?;

    // The selected segments, per partition, in offset order.
    let mut by_input: BTreeMap<InputName, Vec<SegmentName>> = BTreeMap::new();
    let mut estimated = 0u64;
    for topic in args.naming.topics() {
        for (path, _) in rt.block_on(archive.list(&format!("master/{topic}")))? {
            let Some(s) = SegmentName::parse(&path) else { continue };
            if args.days.last().is_some_and(|last| s.date.as_str() > last) {
                continue;
            }
            estimated += (s.last - s.first + 1) as u64;
            by_input.entry(InputName { topic: s.topic.clone(), partition: s.partition }).or_default().push(s);
        }
    }
    let segments: usize = by_input.values().map(Vec::len).sum();
    if segments == 0 {
        return Err(ReplayError::NothingToReplay {
            url: args.archive_url.clone(),
            range: args.days.describe(),
        });
    }
    let fingerprint = format!(
        "archive={};days={};topics={:?}",
        args.archive_url,
        args.days.describe(),
        args.naming.topics()
    );

    // Resume?
    let checkpoint = match rt.block_on(out.get_opt(CHECKPOINT))? {
        Some(bytes) => match decode_checkpoint(&bytes) {
            Ok(c) if c.fingerprint == fingerprint => Some(c),
            Ok(_) => {
                tracing::warn!(
                    "the replay checkpoint in the output is for another archive or days: starting over"
                );
                None
            }
            Err(reason) => {
                tracing::warn!(%reason, "unreadable replay checkpoint: starting over");
                None
            }
        },
        None => None,
    };
    let resume: BTreeMap<InputName, i64> =
        checkpoint.as_ref().map(|c| c.offsets.iter().cloned().collect()).unwrap_or_default();
    let mut merger: Merger<Item> = Merger::new(checkpoint.as_ref().and_then(|c| c.last_released));
    let mut inputs = Vec::new();
    for (name, mut segs) in by_input {
        segs.sort_by_key(|s| s.first);
        let resume_at = resume.get(&name).copied().unwrap_or(0);
        segs.retain(|s| s.last >= resume_at);
        merger.add_input(name.clone(), resume_at);
        inputs.push(Input { name, segments: segs, resume_at });
    }
    let (mut core, mut output, mut rejected, mut summary) = match checkpoint {
        Some(c) => {
            tracing::info!(events = c.events, "resuming the replay from its checkpoint");
            let summary = ReplaySummary {
                records_read: c.records,
                events_applied: c.events,
                events_in_selection: c.in_selection,
                duplicates: c.duplicates,
                resumed_at: Some(c.events),
                ..Default::default()
            };
            (Core::from_state(0, c.state), Output { buffer: c.buffer, runs: c.runs }, c.rejected, summary)
        }
        None => {
            Output::clear_runs(&out, rt)?;
            (Core::new(0), Output::default(), Vec::new(), ReplaySummary::default())
        }
    };
    summary.days = args.days.describe();
    summary.segments = segments;
    tracing::info!(
        segments,
        partitions = inputs.len(),
        days = %args.days.describe(),
        archive = %args.archive_url,
        out = %args.out_url,
        "replaying"
    );

    let crash_after = CrashAfter::from_env(FAILPOINT_VAR);
    let started = Instant::now();
    let started_events = summary.events_applied;
    let mut progress = Progress::new(args.progress, estimated, summary.records_read);
    let mut next_checkpoint = summary.events_applied + args.config.checkpoint_every_events;
    let mut outputs = Outputs::default();
    let mut finished = vec![false; inputs.len()];
    let mut selecting = false;
    std::thread::scope(|scope| -> Result<(), ReplayError> {
        let mut feeds: Vec<Receiver<Fed>> = Vec::with_capacity(inputs.len());
        for input in &inputs {
            let (tx, rx) = sync_channel(READ_AHEAD);
            let days = &args.days;
            let batch_rows = args.config.read_batch_rows;
            let archive = &archive;
            std::thread::Builder::new()
                .name(format!("replay-read-{}-{}", input.name.topic, input.name.partition))
                .spawn_scoped(scope, move || read_input(input, archive, rt, batch_rows, days, tx))
                .map_err(|e| ReplayError::Segment { path: "reader thread".into(), reason: e.to_string() })?;
            feeds.push(rx);
        }
        // Returning drops `feeds`: a reader blocked on its channel then stops, and the scope
        // joins it.
        loop {
            // Refill every input whose queue ran dry.
            for (i, input) in inputs.iter().enumerate() {
                if finished[i] || merger.queued(i) > 0 {
                    continue;
                }
                match feeds[i].recv() {
                    Ok(Fed::End) => {
                        merger.finish(i);
                        finished[i] = true;
                    }
                    Ok(Fed::Batch { selected, records }) => {
                        for d in records {
                            summary.records_read += 1;
                            match d.event {
                                Ok(Some(event)) => {
                                    if merger.push(i, d.offset, event.position, Item { event, selected })
                                        == rainbow_processor::merge::Pushed::Duplicate
                                    {
                                        summary.duplicates += 1;
                                    }
                                }
                                Ok(None) => merger.skip(i, d.offset),
                                Err(reason) => {
                                    rejected.push(Rejection {
                                        topic: input.name.topic.clone(),
                                        partition: input.name.partition,
                                        offset: d.offset,
                                        stage: "decode".into(),
                                        reason,
                                    });
                                    merger.skip(i, d.offset);
                                }
                            }
                        }
                    }
                    Ok(Fed::Failed(e)) => return Err(e),
                    Err(_) => {
                        return Err(ReplayError::Segment {
                            path: format!("master/{}", input.name.topic),
                            reason: format!("the reader of partition {} stopped", input.name.partition),
                        })
                    }
                }
            }
            // Apply everything every input has passed.
            let mut released = false;
            while let Some((i, item)) = merger.pop() {
                released = true;
                if item.selected != selecting {
                    // Aggregate rows are emitted lazily (once at the end, see below); at the start
                    // of a selected stretch, the groups changed before it are emitted and dropped,
                    // so that the output holds only rows that the selected days' events produced.
                    core.seal_before(item.event.position, &mut outputs);
                    if selecting {
                        output.absorb(&mut outputs);
                    } else {
                        outputs = Outputs::default();
                    }
                    selecting = item.selected;
                }
                match core.apply(&item.event, &mut outputs) {
                    Ok(()) => {
                        summary.events_applied += 1;
                        if item.selected {
                            summary.events_in_selection += 1;
                        }
                    }
                    Err(e) => {
                        let name = &inputs[i].name;
                        rejected.push(Rejection {
                            topic: name.topic.clone(),
                            partition: name.partition,
                            offset: -1,
                            stage: "core".into(),
                            reason: e.to_string(),
                        });
                    }
                }
                if item.selected {
                    output.absorb(&mut outputs);
                    output.spill_if_full(&out, rt, args.config.spill_rows)?;
                } else if !outputs.is_empty() {
                    outputs = Outputs::default();
                }
                if let Some(crash) = &crash_after {
                    crash.check(summary.events_applied - started_events);
                }
                if summary.events_applied >= next_checkpoint {
                    next_checkpoint = summary.events_applied + args.config.checkpoint_every_events;
                    save_checkpoint(&out, rt, &fingerprint, &summary, &merger, &core, &output, &rejected)?;
                }
                progress.tick(summary.records_read, &summary, false);
            }
            if stop.load(Ordering::SeqCst) {
                save_checkpoint(&out, rt, &fingerprint, &summary, &merger, &core, &output, &rejected)?;
                progress.finish();
                tracing::info!(
                    events = summary.events_applied,
                    "interrupted: checkpoint written; rerun the same command to resume"
                );
                return Err(ReplayError::Interrupted);
            }
            if finished.iter().all(|f| *f) && merger.queued_total() == 0 {
                break Ok(());
            }
            if !released && finished.iter().enumerate().all(|(i, f)| *f || merger.queued(i) > 0) {
                // Every input has records queued and none can be released: impossible for ordered
                // inputs (the minimum frontier always has its record queued), kept as a guard.
                return Err(ReplayError::Segment { path: "merge".into(), reason: "no progress".into() });
            }
        }
    })?;
    // The last transaction's aggregates.
    core.seal_before(Position { commit: u64::MAX, change: 0, table: 0 }, &mut outputs);
    output.absorb(&mut outputs);
    progress.tick(summary.records_read, &summary, true);
    progress.finish();

    summary.rejected = rejected.len() as u64;
    // The state is not needed any more: its memory goes to the table writers.
    drop(core);
    drop(merger);
    summary.tables = write_tables(&out, rt, output, args.config.rows_per_file)?;
    Output::clear_runs(&out, rt)?;
    write_rejections(&out, rt, &rejected)?;
    let json = serde_json::to_vec_pretty(&summary).expect("summary serialises");
    rt.block_on(out.put(SUMMARY, json))?;
    rt.block_on(out.delete(CHECKPOINT))?;
    let elapsed = started.elapsed();
    tracing::info!(
        events = summary.events_applied - started_events,
        secs = elapsed.as_secs_f64(),
        "replay complete"
    );
    Ok(summary)
}

/// A reader thread: fetches and decodes the input's segments in offset order and sends them,
/// then [`Fed::End`]; stops at the first failure (sent) or when the receiver is gone.
fn read_input(
    input: &Input,
    archive: &Store,
    rt: &tokio::runtime::Handle,
    batch_rows: usize,
    days: &Days,
    tx: SyncSender<Fed>,
) {
    for seg in &input.segments {
        let path = seg.path();
        let selected = days.selects(&seg.date);
        let opened = rt
            .block_on(archive.get(&path))
            .map_err(ReplayError::from)
            .and_then(|data| SegmentReader::open(&path, data, batch_rows));
        let mut reader = match opened {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Fed::Failed(e));
                return;
            }
        };
        loop {
            let batch = reader.next_mapped(|offset, value| {
                (offset >= input.resume_at)
                    .then(|| Decoded { offset, event: decode(value).map_err(|e| e.to_string()) })
            });
            match batch {
                Ok(Some(records)) => {
                    let records: Vec<Decoded> = records.into_iter().flatten().collect();
                    if !records.is_empty() && tx.send(Fed::Batch { selected, records }).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Fed::Failed(e));
                    return;
                }
            }
        }
    }
    let _ = tx.send(Fed::End);
}

#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    out: &Store,
    rt: &tokio::runtime::Handle,
    fingerprint: &str,
    summary: &ReplaySummary,
    merger: &Merger<Item>,
    core: &Core,
    output: &Output,
    rejected: &[Rejection],
) -> Result<(), ReplayError> {
    let started = Instant::now();
    let c = ReplayCheckpointRef {
        fingerprint,
        events: summary.events_applied,
        in_selection: summary.events_in_selection,
        records: summary.records_read,
        duplicates: summary.duplicates,
        last_released: merger.last_released(),
        offsets: merger.resume_offsets(),
        state: core.state(),
        buffer: &output.buffer,
        runs: output.runs,
        rejected,
    };
    let mut bytes = MAGIC.to_vec();
    bytes.extend(
        postcard::to_allocvec(&c)
            .map_err(|e| ReplayError::Checkpoint { path: CHECKPOINT.into(), reason: e.to_string() })?,
    );
    let size = bytes.len();
    rt.block_on(out.put(CHECKPOINT, bytes))?;
    tracing::debug!(
        events = summary.events_applied,
        bytes = size,
        ms = started.elapsed().as_millis() as u64,
        "replay checkpoint written"
    );
    Ok(())
}

fn decode_checkpoint(bytes: &[u8]) -> Result<ReplayCheckpoint, String> {
    let body = bytes.strip_prefix(MAGIC.as_slice()).ok_or("not a replay checkpoint")?;
    postcard::from_bytes(body).map_err(|e| e.to_string())
}

/// Writes every table as `<table>/part-NNNNN.parquet` (replacing an earlier run's parts): the
/// merge of the spilled runs and the buffer. The fact table, most of the rows, is written on a
/// thread of its own beside the others.
fn write_tables(
    out: &Store,
    rt: &tokio::runtime::Handle,
    output: Output,
    rows_per_file: usize,
) -> Result<Vec<(String, usize, usize)>, ReplayError> {
    let Output { mut buffer, runs } = output;
    let fact_sales = std::mem::take(&mut buffer.fact_sales);
    std::thread::scope(|scope| {
        let facts = scope.spawn(move || write_table(out, rt, "fact_sales", runs, fact_sales, rows_per_file));
        let mut written = Vec::new();
        macro_rules! table {
            (fact_sales, $row:ty) => {
                written.push(("fact_sales".to_string(), 0, 0));
            };
            ($table:ident, $row:ty) => {
                written.push(write_table(
                    out,
                    rt,
                    stringify!($table),
                    runs,
                    std::mem::take(&mut buffer.$table),
                    rows_per_file,
                )?);
            };
        }
        rainbow_schemas::for_each_table!(table);
        let facts =
            facts.join().map_err(|_| ReplayError::Columns("the fact_sales writer panicked".into()))??;
        let slot = written.iter_mut().find(|w| w.0 == "fact_sales").expect("listed above");
        *slot = facts;
        Ok(written)
    })
}

/// Writes one table from its runs and buffer, `rows_per_file` rows per part (at least one part).
fn write_table<R: WarehouseRow>(
    out: &Store,
    rt: &tokio::runtime::Handle,
    name: &str,
    runs: u32,
    buffer: Table<R>,
    rows_per_file: usize,
) -> Result<(String, usize, usize), ReplayError> {
    for (path, _) in rt.block_on(out.list(name))? {
        rt.block_on(out.delete(&path))?;
    }
    let schema = schema_of::<R>();
    let mut rows = Merged::new(out, rt, name, runs, buffer)?;
    let mut next = rows.next_row()?;
    let (mut part, mut total) = (0usize, 0usize);
    loop {
        let mut b = BatchBuilder::new(schema.clone());
        let mut n = 0;
        while n < rows_per_file {
            let Some(row) = next.take() else { break };
            b.push(&row)?;
            n += 1;
            next = rows.next_row()?;
        }
        let batch = b.finish()?;
        let mut bytes = Vec::new();
        let mut w =
            ArrowWriter::try_new(&mut bytes, schema.clone(), Some(crate::master::writer_properties()))?;
        w.write(&batch)?;
        w.close()?;
        rt.block_on(out.put(&format!("{name}/part-{part:05}.parquet"), bytes))?;
        part += 1;
        total += n;
        if next.is_none() {
            break;
        }
    }
    Ok((name.to_string(), total, part))
}

fn write_rejections(
    out: &Store,
    rt: &tokio::runtime::Handle,
    rejected: &[Rejection],
) -> Result<(), ReplayError> {
    const PATH: &str = "_rejected.jsonl";
    if rejected.is_empty() {
        return Ok(rt.block_on(out.delete(PATH))?);
    }
    let mut body = Vec::new();
    for r in rejected {
        body.extend(serde_json::to_vec(r).expect("serialises"));
        body.push(b'\n');
    }
    Ok(rt.block_on(out.put(PATH, body))?)
}

/// Reads a table of a replay's output back as one batch (tests, `rainbow check`): every part,
/// in order. `None` when the output has no such table.
pub fn read_table(
    out: &Store,
    rt: &tokio::runtime::Handle,
    name: &str,
) -> Result<Option<arrow::array::RecordBatch>, ReplayError> {
    let mut schema = None;
    let mut batches = Vec::new();
    for (path, _) in rt.block_on(out.list(name))? {
        let data = rt.block_on(out.get(&path))?;
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)?;
        schema.get_or_insert_with(|| builder.schema().clone());
        for b in builder.build()? {
            batches.push(b?);
        }
    }
    match schema {
        None => Ok(None),
        Some(schema) => Ok(Some(arrow::compute::concat_batches(&schema, &batches)?)),
    }
}

/// The tables the data-quality checks read ([`rainbow_schemas::shape::checks`]), from a replay's
/// output.
pub fn read_for_checks(out: &Store, rt: &tokio::runtime::Handle) -> Result<Batches, ReplayError> {
    let mut w = Batches::new();
    for t in checks::checked_tables() {
        let batch = read_table(out, rt, t.name)?
            .ok_or_else(|| ReplayError::NotAReplay { url: out.url.clone(), table: t.name })?;
        w.insert(t.name, batch);
    }
    Ok(w)
}

/// The progress line: records read of the estimate, events/s, ETA.
struct Progress {
    enabled: bool,
    tty: bool,
    total: u64,
    started: Instant,
    base: u64,
    last: Instant,
}

impl Progress {
    fn new(enabled: bool, total: u64, base: u64) -> Progress {
        Progress {
            enabled,
            tty: std::io::stderr().is_terminal(),
            total,
            started: Instant::now(),
            base,
            last: Instant::now(),
        }
    }

    fn tick(&mut self, read: u64, s: &ReplaySummary, force: bool) {
        let every = if self.tty { Duration::from_millis(250) } else { Duration::from_secs(5) };
        if !self.enabled || (!force && self.last.elapsed() < every) {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = (read - self.base) as f64 / secs;
        let pct = if self.total == 0 { 100.0 } else { (read as f64 / self.total as f64 * 100.0).min(100.0) };
        let eta = if rate > 0.0 { (self.total.saturating_sub(read)) as f64 / rate } else { 0.0 };
        let width = 30usize;
        let filled = ((pct / 100.0) * width as f64) as usize;
        let line = format!(
            "replay [{}{}] {pct:5.1}%  {read}/{} records  {} events applied  {rate:.0} records/s  ETA {eta:.0}s",
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.total,
            s.events_applied,
        );
        if self.tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        if self.enabled && self.tty {
            eprintln!();
        }
    }
}
