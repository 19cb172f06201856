//! The archive source of the replay's engine: every archived partition of the selected topics,
//! read segment by segment in offset order.
//!
//! Threads: one reader per archived partition fetches its segments and decodes them (Parquet,
//! then the Debezium JSON) while the engine's thread merges and applies; each reader keeps at
//! most one batch ahead. A reader that stops without saying "end" is an error, never a silent
//! end of input. Readers stop when the source is dropped.
//!
//! Selection: a record's events are output when its segment's day is selected ([`Days`]); the
//! earlier days' events only build state.

use super::Days;
use crate::error::ReplayError;
use rainbow_archive::master::{SegmentName, SegmentReader};
use rainbow_processor::engine::{Input, Intake, Poll, Record, Source};
use rainbow_processor::event::{decode, ChangeEvent, DecodeError, Table};
use rainbow_processor::merge::InputName;
use rainbow_runtime::store::Store;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
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
    /// Records of one segment; `selected` when its day is.
    Batch {
        selected: bool,
        records: Vec<Decoded>,
    },
    /// Every segment was read.
    End,
    Failed(ReplayError),
}

/// One archived partition.
struct Partition {
    name: InputName,
    table: Table,
    /// In offset order.
    segments: Vec<SegmentName>,
}

pub struct ArchiveSource {
    archive: Store,
    rt: tokio::runtime::Handle,
    days: Days,
    batch_rows: usize,
    partitions: Vec<Partition>,
    feeds: Vec<Receiver<Fed>>,
    readers: Vec<JoinHandle<()>>,
    finished: Vec<bool>,
    progress: Progress,
}

impl ArchiveSource {
    /// The partitions of `segments` (each a topic of `tables`), read from `archive`.
    pub fn new(
        archive: Store,
        rt: tokio::runtime::Handle,
        segments: BTreeMap<InputName, Vec<SegmentName>>,
        tables: &BTreeMap<String, Table>,
        days: Days,
        batch_rows: usize,
        progress: bool,
    ) -> ArchiveSource {
        let estimated = segments.values().flatten().map(|s| (s.last - s.first + 1) as u64).sum();
        let partitions = segments
            .into_iter()
            .map(|(name, segments)| Partition { table: tables[&name.topic], name, segments })
            .collect();
        ArchiveSource {
            archive,
            rt,
            days,
            batch_rows,
            partitions,
            feeds: Vec::new(),
            readers: Vec::new(),
            finished: Vec::new(),
            progress: Progress::new(progress, estimated),
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
            p.segments.sort_by_key(|s| s.first);
            // Records below this offset were applied before the checkpoint this run resumed from.
            let resume_at = resume.get(&p.name).copied().unwrap_or(0);
            p.segments.retain(|s| s.last >= resume_at);
            let (tx, rx) = sync_channel(READ_AHEAD);
            let reader = Reader {
                segments: p.segments.clone(),
                resume_at,
                archive: self.archive.clone(),
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
        self.progress.base.get_or_insert(intake.totals().records);
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
                        path: format!("master/{}", p.name.topic),
                        reason: format!("the reader of partition {} stopped", p.name.partition),
                    });
                }
            }
        }
        if self.finished.iter().all(|f| *f) {
            self.progress.tick(intake, true);
            self.progress.finish();
            return Ok(Poll::End);
        }
        Ok(Poll::More)
    }

    fn drained(&mut self, intake: &mut Intake<'_, ReplayError>) -> Result<(), ReplayError> {
        self.progress.tick(intake, false);
        Ok(())
    }
}

/// A reader thread's work: fetch and decode one partition's segments in offset order.
struct Reader {
    segments: Vec<SegmentName>,
    resume_at: i64,
    archive: Store,
    rt: tokio::runtime::Handle,
    days: Days,
    batch_rows: usize,
}

impl Reader {
    /// Sends the segments' records, then [`Fed::End`]; stops at the first failure (sent) or
    /// when the receiver is gone.
    fn run(self, tx: SyncSender<Fed>) {
        for seg in &self.segments {
            let path = seg.path();
            let selected = self.days.selects(&seg.date);
            let opened = self
                .rt
                .block_on(self.archive.get(&path))
                .map_err(ReplayError::from)
                .and_then(|data| Ok(SegmentReader::open(&path, data, self.batch_rows)?));
            let mut reader = match opened {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Fed::Failed(e));
                    return;
                }
            };
            loop {
                let batch = reader.next_mapped(|offset, value| {
                    (offset >= self.resume_at).then(|| Decoded { offset, event: decode(value) })
                });
                let batch = batch.map_err(ReplayError::from);
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
}

/// The progress line: records read of the estimate, records/s, ETA.
struct Progress {
    enabled: bool,
    tty: bool,
    total: u64,
    /// Records read before this run (a resume), known at the first poll.
    base: Option<u64>,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(enabled: bool, total: u64) -> Progress {
        let now = Instant::now();
        Progress { enabled, tty: std::io::stderr().is_terminal(), total, base: None, started: now, last: now }
    }

    fn tick(&mut self, intake: &Intake<'_, ReplayError>, force: bool) {
        let every = if self.tty { Duration::from_millis(250) } else { Duration::from_secs(5) };
        if !self.enabled || (!force && self.last.elapsed() < every) {
            return;
        }
        self.last = Instant::now();
        let totals = intake.totals();
        let read = totals.records;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = read.saturating_sub(self.base.unwrap_or(0)) as f64 / secs;
        let pct = if self.total == 0 { 100.0 } else { (read as f64 / self.total as f64 * 100.0).min(100.0) };
        let eta = if rate > 0.0 { (self.total.saturating_sub(read)) as f64 / rate } else { 0.0 };
        let width = 30usize;
        let filled = ((pct / 100.0) * width as f64) as usize;
        let line = format!(
            "replay [{}{}] {pct:5.1}%  {read}/{} records  {} events applied  {rate:.0} records/s  ETA {eta:.0}s",
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.total,
            totals.events,
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
