//! The archive source of the replay's engine: every Kafka partition of the selected topics, read
//! from the master dataset's Iceberg changelog tables file by file in offset order.
//!
//! Threads: one reader per archived partition fetches its data files' typed columns, one row
//! group at a time ([`TypedBatches`]), and decodes them ([`rainbow_processor::event::typed`], no
//! JSON) while the engine's thread merges and applies; a row without typed columns is decoded
//! from its `_envelope` (then its file's envelopes are fetched). Each reader keeps at
//! most one batch ahead. A reader that stops without saying "end" is an error, never a silent
//! end of input. Readers stop when the source is dropped.
//!
//! Selection: a record's events are output when its file's commit day is selected ([`Days`]);
//! the earlier days' events only build state.

use super::Days;
use crate::error::ReplayError;
use arrow::array::RecordBatch;
use arrow::array::{Array, AsArray};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::async_reader::ParquetRecordBatchStream;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;
use rainbow_iceberg::changelog::ColumnReader;
use rainbow_iceberg::{ChangelogFile, ChangelogTable};
use rainbow_processor::engine::{Input, Intake, Poll, Record, Source};
use rainbow_processor::event::typed::{TypedBatch, META_COLUMNS};
use rainbow_processor::event::{decode, ChangeEvent, DecodeError, Table};
use rainbow_processor::merge::InputName;
use rainbow_runtime::store::Store;
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Channel capacity per input, in batches.
const READ_AHEAD: usize = 1;

/// A record as a reader thread decoded it.
struct Decoded {
    offset: i64,
    /// `Ok(None)`: a tombstone.
    event: Result<Option<ChangeEvent>, DecodeError>,
}

/// What a reader thread sends for its input, in offset order.
enum Fed {
    /// Records of one data file; `selected` when its day is.
    Batch {
        selected: bool,
        records: Vec<Decoded>,
    },
    /// Every file was read.
    End,
    Failed(ReplayError),
}

/// One archived Kafka partition: its data files in offset order, and the table they are of.
#[derive(Clone)]
pub struct Partition {
    pub name: InputName,
    pub table: Table,
    pub changelog: Arc<ChangelogTable>,
    pub files: Vec<ChangelogFile>,
}

impl Partition {
    /// Records in its files (their offset ranges).
    pub fn records(&self) -> u64 {
        self.files.iter().map(|f| (f.last - f.first + 1) as u64).sum()
    }
}

pub struct ArchiveSource {
    /// Records decoded from their `_envelope` (no typed columns), counted by the readers.
    pub from_envelopes: Arc<AtomicU64>,
    archive: Store,
    rt: tokio::runtime::Handle,
    days: Days,
    batch_rows: usize,
    partitions: Vec<Partition>,
    feeds: Vec<Receiver<Fed>>,
    readers: Vec<JoinHandle<()>>,
    finished: Vec<bool>,
    progress: Arc<Progress>,
    /// This source's line in `progress`.
    shard: usize,
    /// Records read before this run (a resume), known at the first poll.
    base: Option<u64>,
}

impl ArchiveSource {
    /// The `partitions` of the archive at `archive` (its source facts), read through their tables;
    /// its progress is shard `shard`'s of `progress`.
    pub fn new(
        archive: Store,
        rt: tokio::runtime::Handle,
        partitions: Vec<Partition>,
        days: Days,
        batch_rows: usize,
        progress: Arc<Progress>,
        shard: usize,
    ) -> ArchiveSource {
        ArchiveSource {
            from_envelopes: Arc::new(AtomicU64::new(0)),
            archive,
            rt,
            days,
            batch_rows,
            partitions,
            feeds: Vec::new(),
            readers: Vec::new(),
            finished: Vec::new(),
            progress,
            shard,
            base: None,
        }
    }
}

impl Drop for ArchiveSource {
    /// Dropping the channels makes a reader blocked on its channel stop; then they are joined.
    fn drop(&mut self) {
        self.feeds.clear();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Source for ArchiveSource {
    type Error = ReplayError;

    /// The source the archive's records come from, as the archiver recorded it (the Kafka
    /// cluster, topic ids, the PostgreSQL cluster, database and slot; empty for an archive
    /// written before archives recorded it): a replay checkpoint of another source's archive is
    /// refused.
    fn identity(&mut self) -> Result<String, ReplayError> {
        use rainbow_archive::archiver::{SOURCE_FACTS, SOURCE_OBJECT};
        let mut id = rainbow_runtime::identity::SourceIdentity::new();
        let mut listed = self.rt.block_on(self.archive.list(SOURCE_OBJECT))?;
        listed.retain(|(path, _)| path == SOURCE_OBJECT);
        listed.extend(self.rt.block_on(self.archive.list(&format!("{SOURCE_FACTS}/")))?);
        for (path, _) in listed {
            let text = String::from_utf8_lossy(&self.rt.block_on(self.archive.get(&path))?).to_string();
            match path.strip_prefix(&format!("{SOURCE_FACTS}/")) {
                Some(key) => id.insert(key, &text),
                None => id.merge(&rainbow_runtime::identity::SourceIdentity::parse(&text)),
            }
        }
        Ok(id.to_string())
    }

    fn open(&mut self, resume: &BTreeMap<InputName, i64>) -> Result<Vec<Input>, ReplayError> {
        let mut inputs = Vec::new();
        for p in &mut self.partitions {
            // Records below this offset were applied before the checkpoint this run resumed from.
            let resume_at = resume.get(&p.name).copied().unwrap_or(0);
            p.files.retain(|f| f.last >= resume_at);
            let (tx, rx) = sync_channel(READ_AHEAD);
            let reader = Reader {
                from_envelopes: self.from_envelopes.clone(),
                files: p.files.clone(),
                changelog: p.changelog.clone(),
                resume_at,
                rt: self.rt.clone(),
                days: self.days.clone(),
                batch_rows: self.batch_rows,
            };
            let thread = std::thread::Builder::new()
                .name(format!("replay-read-{}-{}", p.name.topic, p.name.partition))
                .spawn(move || reader.run(tx))
                .map_err(|e| ReplayError::Segment { path: "reader thread".into(), reason: e.to_string() })?;
            self.feeds.push(rx);
            self.readers.push(thread);
            self.finished.push(false);
            inputs.push(Input { name: p.name.clone(), table: p.table, start: resume_at });
        }
        Ok(inputs)
    }

    /// Refills every input whose merge queue ran dry (waiting for its reader).
    fn poll(&mut self, intake: &mut Intake<'_, ReplayError>) -> Result<Poll, ReplayError> {
        let base = *self.base.get_or_insert(intake.totals().records);
        for i in 0..self.partitions.len() {
            if self.finished[i] || intake.queued(i) > 0 {
                continue;
            }
            match self.feeds[i].recv() {
                Ok(Fed::End) => {
                    intake.finish(i);
                    self.finished[i] = true;
                }
                Ok(Fed::Batch { selected, records }) => {
                    for d in records {
                        intake.record(Record {
                            input: i,
                            offset: d.offset,
                            decoded: d.event,
                            emit: selected,
                            key: None,
                            value: None,
                            appended_ms: None,
                        })?;
                    }
                }
                Ok(Fed::Failed(e)) => return Err(e),
                Err(_) => {
                    let p = &self.partitions[i];
                    return Err(ReplayError::Segment {
                        path: p.changelog.name.clone(),
                        reason: format!("the reader of partition {} stopped", p.name.partition),
                    });
                }
            }
        }
        if self.finished.iter().all(|f| *f) {
            self.progress.update(self.shard, intake.totals(), base, true);
            return Ok(Poll::End);
        }
        Ok(Poll::More)
    }

    fn drained(&mut self, intake: &mut Intake<'_, ReplayError>) -> Result<(), ReplayError> {
        let base = self.base.unwrap_or(0);
        let ended = self.finished.iter().all(|f| *f);
        self.progress.update(self.shard, intake.totals(), base, ended);
        Ok(())
    }
}

/// A reader thread's work: fetch and decode one partition's data files in offset order.
struct Reader {
    from_envelopes: Arc<AtomicU64>,
    files: Vec<ChangelogFile>,
    changelog: Arc<ChangelogTable>,
    resume_at: i64,
    rt: tokio::runtime::Handle,
    days: Days,
    batch_rows: usize,
}

impl Reader {
    /// Sends the files' records, then [`Fed::End`]; stops at the first failure (sent) or when
    /// the receiver is gone.
    fn run(self, tx: SyncSender<Fed>) {
        for file in &self.files {
            let selected = file.day.is_some_and(|d| {
                self.days.selects(&rainbow_schemas::time::day_of_ms(i64::from(d) * 86_400_000))
            }) || self.days == Days::All;
            match self.read(file, selected, &tx) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    let _ = tx.send(Fed::Failed(e));
                    return;
                }
            }
        }
        let _ = tx.send(Fed::End);
    }

    /// Sends one file's records; `false` when the receiver is gone.
    fn read(&self, file: &ChangelogFile, selected: bool, tx: &SyncSender<Fed>) -> Result<bool, ReplayError> {
        let bad = ReplayError::segment(&file.path);
        let mut envelopes: Option<HashMap<i64, Option<Vec<u8>>>> = None;
        let mut expected = file.first;
        for batch in TypedBatches::open(&self.changelog, file, &self.rt, self.batch_rows)? {
            let batch = batch?;
            let typed = TypedBatch::new(&batch).map_err(|e| bad(&e))?;
            let mut records = Vec::with_capacity(typed.len());
            for i in 0..typed.len() {
                let offset = typed.offset(i);
                if offset != expected {
                    return Err(bad(&format!("offset {offset} where {expected} was due")));
                }
                expected += 1;
                if offset < self.resume_at {
                    continue;
                }
                let event = match typed.decode(i) {
                    Some(event) => Ok(event),
                    None => {
                        self.from_envelopes.fetch_add(1, Ordering::Relaxed);
                        let all = match &mut envelopes {
                            Some(all) => all,
                            None => {
                                let data = self
                                    .rt
                                    .block_on(self.changelog.read_file(&file.path))
                                    .map_err(|e| bad(&e))?;
                                envelopes.insert(read_envelopes(&data).map_err(|e| bad(&e))?)
                            }
                        };
                        let value = all
                            .get(&offset)
                            .ok_or_else(|| bad(&format!("no envelope at offset {offset}")))?;
                        decode(value.as_deref())
                    }
                };
                records.push(Decoded { offset, event });
            }
            if !records.is_empty() && tx.send(Fed::Batch { selected, records }).is_err() {
                return Ok(false);
            }
        }
        if expected != file.last + 1 {
            return Err(bad(&format!(
                "ends at offset {} where the manifest says {}",
                expected - 1,
                file.last
            )));
        }
        Ok(true)
    }
}

/// A changelog data file's typed columns ([`typed_projection`]) as record batches of at most
/// `batch_rows` rows, in the file's order. Only those columns' chunks are fetched (not
/// `_envelope`, most of a file's bytes), one row group at a time, through `rt`. Errors name the
/// file ([`ReplayError::Segment`]).
pub struct TypedBatches {
    path: String,
    rt: tokio::runtime::Handle,
    groups: ParquetRecordBatchStream<ColumnReader>,
    group: Option<ParquetRecordBatchReader>,
}

impl TypedBatches {
    pub fn open(
        changelog: &ChangelogTable,
        file: &ChangelogFile,
        rt: &tokio::runtime::Handle,
        batch_rows: usize,
    ) -> Result<TypedBatches, ReplayError> {
        let bad = ReplayError::segment(&file.path);
        let reader = rt.block_on(changelog.open_file(file)).map_err(|e| bad(&e))?;
        let builder = rt.block_on(ParquetRecordBatchStreamBuilder::new(reader)).map_err(|e| bad(&e))?;
        let mask = typed_projection(builder.parquet_schema());
        let groups =
            builder.with_projection(mask).with_batch_size(batch_rows).build().map_err(|e| bad(&e))?;
        Ok(TypedBatches { path: file.path.clone(), rt: rt.clone(), groups, group: None })
    }
}

impl Iterator for TypedBatches {
    type Item = Result<RecordBatch, ReplayError>;

    fn next(&mut self) -> Option<Self::Item> {
        let bad = ReplayError::segment(&self.path);
        loop {
            if let Some(batch) = self.group.as_mut().and_then(Iterator::next) {
                return Some(batch.map_err(|e| bad(&e)));
            }
            match self.rt.block_on(self.groups.next_row_group()) {
                Ok(Some(group)) => self.group = Some(group),
                Ok(None) => return None,
                Err(e) => return Some(Err(bad(&e))),
            }
        }
    }
}

/// The columns of a changelog data file that the typed decoding reads: its metadata columns and
/// the source row's; not the raw bytes.
pub fn typed_projection(schema: &parquet::schema::types::SchemaDescriptor) -> ProjectionMask {
    let wanted: Vec<usize> = schema
        .columns()
        .iter()
        .enumerate()
        .filter(|(_, c)| META_COLUMNS.contains(&c.name()) || !c.name().starts_with('_'))
        .map(|(i, _)| i)
        .collect();
    ProjectionMask::leaves(schema, wanted)
}

/// Every record's `_envelope` of a data file, by offset (for the rows without typed columns).
fn read_envelopes(
    data: &bytes::Bytes,
) -> Result<HashMap<i64, Option<Vec<u8>>>, parquet::errors::ParquetError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(data.clone())?;
    let wanted: Vec<usize> = builder
        .parquet_schema()
        .columns()
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c.name(), "_kafka_offset" | "_envelope"))
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::leaves(builder.parquet_schema(), wanted);
    let mut out = HashMap::new();
    for batch in builder.with_projection(mask).build()? {
        let batch = batch?;
        let offsets = batch
            .column_by_name("_kafka_offset")
            .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Int64Type>())
            .ok_or_else(|| parquet::errors::ParquetError::General("no _kafka_offset".into()))?;
        let values = batch
            .column_by_name("_envelope")
            .and_then(|c| c.as_binary_opt::<i64>())
            .ok_or_else(|| parquet::errors::ParquetError::General("no _envelope".into()))?;
        for i in 0..batch.num_rows() {
            out.insert(offsets.value(i), (!values.is_null(i)).then(|| values.value(i).to_vec()));
        }
    }
    Ok(out)
}

/// The progress line of a replay, shared by its shards: records read of the estimate, records/s,
/// ETA, shards done. Every shard reports its totals; whichever reports when the line is due
/// draws it.
pub struct Progress {
    enabled: bool,
    tty: bool,
    /// Records all shards will read (their data files' offsets; dimension files count once per
    /// shard, as each shard reads them).
    total: u64,
    started: Instant,
    shards: std::sync::Mutex<ProgressLine>,
}

struct ProgressLine {
    last: Instant,
    /// The final line (every shard ended) was drawn.
    drawn_final: bool,
    /// Per shard: records read (since the stream began), read before this run, events applied,
    /// ended.
    read: Vec<(u64, u64, u64, bool)>,
}

impl Progress {
    /// A line for `shards` shards that read `total` records together.
    pub fn new(enabled: bool, total: u64, shards: usize) -> Progress {
        let now = Instant::now();
        Progress {
            enabled,
            tty: std::io::stderr().is_terminal(),
            total,
            started: now,
            shards: std::sync::Mutex::new(ProgressLine {
                last: now,
                drawn_final: false,
                read: vec![(0, 0, 0, false); shards],
            }),
        }
    }

    fn update(&self, shard: usize, totals: &rainbow_processor::checkpoint::Totals, base: u64, ended: bool) {
        if !self.enabled {
            return;
        }
        let every = if self.tty { Duration::from_millis(250) } else { Duration::from_secs(5) };
        let Ok(mut line) = self.shards.lock() else { return };
        line.read[shard] = (totals.records, base, totals.events, ended);
        let all_ended = line.read.iter().all(|r| r.3);
        if line.drawn_final || (!all_ended && line.last.elapsed() < every) {
            return;
        }
        line.last = Instant::now();
        line.drawn_final = all_ended;
        let read: u64 = line.read.iter().map(|r| r.0).sum();
        let this_run: u64 = line.read.iter().map(|r| r.0.saturating_sub(r.1)).sum();
        let events: u64 = line.read.iter().map(|r| r.2).sum();
        let done = line.read.iter().filter(|r| r.3).count();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = this_run as f64 / secs;
        let pct = if self.total == 0 { 100.0 } else { (read as f64 / self.total as f64 * 100.0).min(100.0) };
        let eta = if rate > 0.0 { (self.total.saturating_sub(read)) as f64 / rate } else { 0.0 };
        let width = 30usize;
        let filled = ((pct / 100.0) * width as f64) as usize;
        let shards = match line.read.len() {
            1 => String::new(),
            n => format!("  {done}/{n} shards done"),
        };
        let text = format!(
            "replay [{}{}] {pct:5.1}%  {read}/{} records  {events} events applied  {rate:.0} records/s  ETA {eta:.0}s{shards}",
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.total,
        );
        match (self.tty, all_ended) {
            (true, true) => eprintln!("\r{text}"),
            (true, false) => eprint!("\r{text}"),
            (false, _) => eprintln!("{text}"),
        }
    }
}
