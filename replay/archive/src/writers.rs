//! The archiver's segment writers: threads that append segments to the changelog tables while
//! the archiver goes on reading Kafka (decoding the envelopes, encoding Parquet and committing
//! take most of the archiver's time).
//!
//! Contract: a table is written by one writer at a time and its segments are appended in the
//! order they were handed over, so a partition's commits stay in offset order; different tables
//! are written at once, by whichever writer is free. A segment whose table is being written
//! waits for it; [`Writers::append`] waits while more segments wait than there are writers,
//! which bounds the memory held. Each outcome comes back through [`Writers::collect`] (per table
//! in order); a failure is returned by the next call. [`Writers::finish`] (and dropping the pool)
//! lets the writers end what they were given, then joins them: no thread outlives the
//! archiver's attempt.

use crate::error::ArchiveError;
use crate::master::ArchivedRecord;
use crate::metrics::{iceberg_appended, ArchiveMetrics};
use rainbow_iceberg::{AppendStats, ChangeRecord, ChangelogTable, Lake};
use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One partition's consecutive records, to be appended to its topic's table.
pub struct Segment {
    /// The archiver's input (partition) it comes from.
    pub input: usize,
    pub topic: String,
    pub partition: i32,
    pub records: Vec<ArchivedRecord>,
}

/// A segment appended and committed.
pub struct Appended {
    pub input: usize,
    pub table: String,
    pub topic: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    pub stats: AppendStats,
    pub duration: Duration,
}

/// A segment and its table, for a writer; the table comes back with the outcome.
struct Job {
    segment: Segment,
    table: Box<ChangelogTable>,
}

struct Done {
    table: Box<ChangelogTable>,
    given: usize,
    outcome: Result<Appended, ArchiveError>,
}

pub struct Writers {
    jobs: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    done: Receiver<Done>,
    rt: tokio::runtime::Handle,
    lake: Arc<Lake>,
    /// Tables no writer is writing, by topic.
    idle: HashMap<String, Box<ChangelogTable>>,
    /// Segments whose table is being written, by topic, in order.
    waiting: HashMap<String, VecDeque<Segment>>,
    waiting_segments: usize,
    /// Jobs handed to the writers and not back yet.
    busy: usize,
    /// Records handed over and not appended yet.
    in_flight_records: usize,
    /// Segments appended and not collected yet.
    appended: Vec<Appended>,
}

impl Writers {
    /// Starts `n` writer threads (at least one).
    pub fn start(
        n: usize,
        rt: tokio::runtime::Handle,
        lake: Arc<Lake>,
        metrics: ArchiveMetrics,
    ) -> Result<Writers, ArchiveError> {
        let n = n.max(1);
        let (done_tx, done) = mpsc::channel();
        let (jobs, queue) = mpsc::sync_channel(n);
        let queue = Arc::new(Mutex::new(queue));
        let mut threads = Vec::new();
        for k in 0..n {
            let (rt, lake, metrics, queue, done_tx) =
                (rt.clone(), lake.clone(), metrics.clone(), queue.clone(), done_tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("rainbow-archive-writer-{k}"))
                .spawn(move || write(&queue, &rt, &lake, &metrics, &done_tx))
                .map_err(|e| ArchiveError::Thread(e.to_string()))?;
            threads.push(thread);
        }
        Ok(Writers {
            jobs: Some(jobs),
            threads,
            done,
            rt,
            lake,
            idle: HashMap::new(),
            waiting: HashMap::new(),
            waiting_segments: 0,
            busy: 0,
            in_flight_records: 0,
            appended: Vec::new(),
        })
    }

    /// The table of `topic`, to write its segments to.
    pub fn adopt(&mut self, topic: &str, table: ChangelogTable) {
        self.idle.insert(topic.to_string(), Box::new(table));
    }

    /// Hands a segment over: to a writer at once when its table is free, else after the
    /// segments before it. Waits while more segments wait than there are writers.
    pub fn append(&mut self, segment: Segment) -> Result<(), ArchiveError> {
        assert!(
            self.idle.contains_key(&segment.topic) || self.waiting.contains_key(&segment.topic),
            "a table per topic"
        );
        self.in_flight_records += segment.records.len();
        let topic = segment.topic.clone();
        self.waiting.entry(topic.clone()).or_default().push_back(segment);
        self.waiting_segments += 1;
        self.dispatch(&topic)?;
        while self.waiting_segments > self.threads.len() && self.busy > 0 {
            self.wait_one()?;
        }
        Ok(())
    }

    /// Removes the tables' snapshots older than `hours`, once every segment handed over is
    /// appended (see [`crate::archiver`]).
    pub fn expire(&mut self, hours: u64) -> Result<(), ArchiveError> {
        self.drain()?;
        crate::archiver::expire_tables(
            &self.rt,
            &self.lake,
            self.idle.values_mut().map(|t| &mut **t),
            hours,
        )?;
        Ok(())
    }

    /// Records handed over and not appended yet.
    pub fn in_flight_records(&self) -> usize {
        self.in_flight_records
    }

    /// The segments appended since the last call, without waiting; the first failure instead.
    pub fn collect(&mut self) -> Result<Vec<Appended>, ArchiveError> {
        while let Ok(done) = self.done.try_recv() {
            self.back(done)?;
        }
        Ok(std::mem::take(&mut self.appended))
    }

    /// Waits until every segment handed over is appended, then ends the writers; the segments
    /// appended since the last [`Writers::collect`], or the first failure.
    pub fn finish(&mut self) -> Result<Vec<Appended>, ArchiveError> {
        let drained = self.drain();
        let panicked = self.join();
        drained?;
        if panicked {
            return Err(ArchiveError::Thread("a segment writer panicked".into()));
        }
        Ok(std::mem::take(&mut self.appended))
    }

    /// Waits until every segment handed over is appended.
    fn drain(&mut self) -> Result<(), ArchiveError> {
        while self.busy > 0 {
            self.wait_one()?;
        }
        debug_assert_eq!(self.waiting_segments, 0, "a free table's segments are always handed over");
        Ok(())
    }

    /// Hands the next waiting segment of `topic` to the writers if its table is free.
    fn dispatch(&mut self, topic: &str) -> Result<(), ArchiveError> {
        let Some(queue) = self.waiting.get_mut(topic) else { return Ok(()) };
        if queue.is_empty() || !self.idle.contains_key(topic) {
            return Ok(());
        }
        let segment = queue.pop_front().expect("not empty");
        self.waiting_segments -= 1;
        let table = self.idle.remove(topic).expect("idle");
        let jobs = self.jobs.as_ref().expect("writers running");
        if jobs.send(Job { segment, table }).is_err() {
            return Err(self.stopped());
        }
        self.busy += 1;
        Ok(())
    }

    fn wait_one(&mut self) -> Result<(), ArchiveError> {
        match self.done.recv() {
            Ok(done) => self.back(done),
            Err(_) => Err(self.stopped()),
        }
    }

    /// A job came back: its table is free again (and takes its next segment).
    fn back(&mut self, done: Done) -> Result<(), ArchiveError> {
        self.busy -= 1;
        self.in_flight_records -= done.given;
        let topic = done.table.topic.clone();
        self.idle.insert(topic.clone(), done.table);
        self.appended.push(done.outcome?);
        self.dispatch(&topic)
    }

    /// The writers ended without being asked to (every one gone): joined, and said so.
    fn stopped(&mut self) -> ArchiveError {
        let panicked = self.join();
        ArchiveError::Thread(format!(
            "the segment writers stopped{}",
            if panicked { " (one panicked)" } else { "" }
        ))
    }

    /// Closes the queue and joins the threads; whether one panicked.
    fn join(&mut self) -> bool {
        self.jobs = None;
        // Every thread joined (no short cut), then whether one panicked.
        let panicked: Vec<bool> = self.threads.drain(..).map(|t| t.join().is_err()).collect();
        panicked.contains(&true)
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.join();
    }
}

/// A writer thread: jobs from the shared queue until it closes.
fn write(
    queue: &Mutex<Receiver<Job>>,
    rt: &tokio::runtime::Handle,
    lake: &Lake,
    metrics: &ArchiveMetrics,
    done: &Sender<Done>,
) {
    loop {
        let job = queue.lock().map_err(|_| ()).and_then(|q| q.recv().map_err(|_| ()));
        let Ok(Job { segment, mut table }) = job else { return };
        let given = segment.records.len();
        let outcome = append(rt, lake, metrics, &mut table, segment);
        if done.send(Done { table, given, outcome }).is_err() {
            return;
        }
    }
}

fn append(
    rt: &tokio::runtime::Handle,
    lake: &Lake,
    metrics: &ArchiveMetrics,
    table: &mut ChangelogTable,
    segment: Segment,
) -> Result<Appended, ArchiveError> {
    let started = Instant::now();
    let (Some(first), Some(last)) = (segment.records.first(), segment.records.last()) else {
        unreachable!("segments are never empty")
    };
    let (first, last) = (first.offset, last.offset);
    let stats = append_records(rt, lake, metrics, table, segment.partition, &segment.records)?;
    Ok(Appended {
        input: segment.input,
        table: table.name.clone(),
        topic: segment.topic,
        partition: segment.partition,
        first,
        last,
        stats,
        duration: started.elapsed(),
    })
}

/// Appends one partition's records to its changelog table in one commit.
pub(crate) fn append_records(
    rt: &tokio::runtime::Handle,
    lake: &Lake,
    metrics: &ArchiveMetrics,
    table: &mut ChangelogTable,
    partition: i32,
    records: &[ArchivedRecord],
) -> Result<AppendStats, ArchiveError> {
    let rows: Vec<ChangeRecord<'_>> = records
        .iter()
        .map(|r| ChangeRecord {
            offset: r.offset,
            kafka_ts_ms: r.timestamp_ms,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
        })
        .collect();
    let stats = rt.block_on(table.append(lake, partition, &rows))?;
    iceberg_appended(metrics, &table.name, &stats);
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ArchiveConfig;
    use rainbow_runtime::store::Store;
    use rainbow_testkit::workload::{to_debezium_json_with_schema, Workload, WorkloadConfig};
    use std::collections::BTreeMap;

    /// The archiver's default lake under a fresh local store.
    fn lake(rt: &tokio::runtime::Runtime, tag: &str) -> (Arc<Lake>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("rainbow-writers-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir.display().to_string()).unwrap();
        let config = ArchiveConfig::default().lake(&store).unwrap();
        (Arc::new(rt.block_on(Lake::open(&config)).unwrap()), dir)
    }

    /// The records of a workload, by topic (one partition each), offsets from 0.
    fn records() -> BTreeMap<String, Vec<ArchivedRecord>> {
        let mut w = Workload::new(WorkloadConfig::default(), 7);
        let mut by_topic: BTreeMap<String, Vec<ArchivedRecord>> = BTreeMap::new();
        let mut tx = w.snapshot();
        for _ in 0..300 {
            for e in &tx {
                let (key, value) = to_debezium_json_with_schema(e);
                let topic = format!("t.public.{}", e.table().name());
                let records = by_topic.entry(topic.clone()).or_default();
                records.push(ArchivedRecord {
                    topic,
                    partition: 0,
                    offset: records.len() as i64,
                    key: Some(key),
                    value: Some(value),
                    timestamp_ms: Some(1_722_470_400_000),
                    commit_lsn: None,
                    change_lsn: None,
                });
            }
            tx = w.next_transaction();
        }
        by_topic
    }

    fn start(rt: &tokio::runtime::Runtime, lake: &Arc<Lake>, topics: &[&String]) -> Writers {
        let metrics = ArchiveMetrics::new();
        let mut writers = Writers::start(2, rt.handle().clone(), lake.clone(), metrics).unwrap();
        for topic in topics {
            let name = topic.rsplit('.').next().unwrap();
            let table = rt.block_on(ChangelogTable::open(lake, name, topic)).unwrap();
            writers.adopt(topic, table);
        }
        writers
    }

    #[test]
    fn segments_of_many_tables_commit_in_order_on_two_writers() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (lake, dir) = lake(&rt, "order");
        let by_topic = records();
        let topics: Vec<&String> = by_topic.keys().collect();
        assert!(topics.len() >= 5, "{topics:?}");
        let mut writers = start(&rt, &lake, &topics);
        // Segments of 50 records, the topics interleaved as Kafka delivers them.
        let mut appended = Vec::new();
        let longest = by_topic.values().map(Vec::len).max().unwrap();
        for from in (0..longest).step_by(50) {
            for (i, (topic, records)) in by_topic.iter().enumerate() {
                let chunk = &records[from.min(records.len())..(from + 50).min(records.len())];
                if !chunk.is_empty() {
                    let segment =
                        Segment { input: i, topic: topic.clone(), partition: 0, records: chunk.to_vec() };
                    writers.append(segment).unwrap();
                }
            }
            appended.extend(writers.collect().unwrap());
        }
        appended.extend(writers.finish().unwrap());
        assert_eq!(writers.in_flight_records(), 0);
        for (i, (topic, records)) in by_topic.iter().enumerate() {
            let ranges: Vec<(i64, i64)> =
                appended.iter().filter(|a| a.input == i).map(|a| (a.first, a.last)).collect();
            let expected: Vec<(i64, i64)> = (0..records.len())
                .step_by(50)
                .map(|f| (f as i64, (f + 50).min(records.len()) as i64 - 1))
                .collect();
            assert_eq!(ranges, expected, "{topic}: every segment once, in offset order");
            let name = topic.rsplit('.').next().unwrap();
            let table = rt.block_on(ChangelogTable::load(&lake, name, topic)).unwrap().unwrap();
            assert_eq!(table.committed(), &BTreeMap::from([(0, records.len() as i64)]), "{topic}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failed_append_is_returned_and_every_writer_ends() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (lake, dir) = lake(&rt, "fail");
        let by_topic = records();
        let topics: Vec<&String> = by_topic.keys().collect();
        let mut writers = start(&rt, &lake, &topics);
        // The tables' folder becomes a file: no data file can be written there any more.
        let tables = dir.join("iceberg").join("master");
        std::fs::remove_dir_all(&tables).unwrap();
        std::fs::write(&tables, b"not a directory").unwrap();
        let mut failure = None;
        for (i, (topic, records)) in by_topic.iter().enumerate() {
            let segment = Segment { input: i, topic: topic.clone(), partition: 0, records: records.clone() };
            if let Err(e) = writers.append(segment).and_then(|()| writers.collect().map(|_| ())) {
                failure = Some(e);
                break;
            }
        }
        let failure = match failure {
            Some(e) => e,
            None => writers.finish().err().expect("the appends fail"),
        };
        assert!(matches!(failure, ArchiveError::Lake(_)), "the table's error, not a generic one: {failure}");
        // The other writer may fail too; either way every thread is joined.
        let _ = writers.finish();
        assert!(writers.threads.is_empty() && writers.jobs.is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
