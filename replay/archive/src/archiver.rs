//! `rainbow archive`: every record of the CDC topics into the master dataset, the Iceberg
//! changelog tables ([`rainbow_iceberg`], one per topic).
//!
//! Delivery contract: at-least-once from Kafka, exactly-once into the archive. Records are
//! gathered per partition into segments; a segment becomes one append to its topic's table, one
//! Iceberg commit whose snapshot summary records the partition's next offset. Only then is the
//! offset committed to the archiver's consumer group (for monitoring). The appends run on writer
//! threads ([`crate::writers`], `archive.writers`, one per core by default; a table on one at a
//! time, different tables at once) while the next records are read. On start the archiver
//! reads the offsets the tables hold and resumes every partition there, so a crash neither loses
//! nor duplicates a record (an append of records already committed adds nothing). Data files
//! are never modified or deleted.
//!
//! An archive written before the tables (Parquet segments of raw JSON under `master/`,
//! [`crate::master`]) is migrated at start: each table is filled from the segments it lacks,
//! then Kafka is read from where the segments end.
//!
//! Besides the captured tables' topics, every topic of the CDC's naming (`<prefix>.<schema>.`)
//! is archived, also one that appears while the archiver runs (a table added to the capture):
//! it is picked up within seconds, from its first offset, without a restart.
//!
//! The archive belongs to one Kafka cluster: its id is written to [`SOURCE_OBJECT`] with the
//! first start, and an archiver reading another cluster refuses to write there. Records removed
//! from a topic before they were archived (an offset that jumps forward, an archived offset
//! beyond the partition's end) stop the archiver, unless `allow_offset_gap` (then counted).
//!
//! A consumer that hears nothing from the brokers for 30 s while they answer a new client has lost
//! its way ([`rainbow_runtime::kafka::LostConsumer`]): the attempt ends, and the next starts with a
//! new consumer after the offsets the tables hold.
//!
//! Segments are cut at `segment_max_records`, `segment_max_bytes` and `segment_max_age_ms`; at
//! shutdown every open segment is committed. Snapshots
//! older than `snapshot_retention_hours` are removed from the tables' metadata hourly.

use crate::config::ArchiveConfig;
use crate::error::ArchiveError;
use crate::master::{self, ArchivedRecord, SegmentName};
use crate::metrics::{ArchiveMetrics, SegmentWritten};
use crate::writers::{append_records, Appended, Segment, Writers};
use rainbow_iceberg::{ChangelogTable, Lake};
use rainbow_runtime::kafka::{self, KafkaConnection};
use rainbow_runtime::resilience::{stopped, supervise, Dependency, StopDrain};
use rainbow_runtime::store::{Created, Store};
use rainbow_runtime::worker::Worker;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The object holding the Kafka cluster id the archive's records come from.
pub const SOURCE_OBJECT: &str = "_archive/kafka-cluster-id";

/// Folder of the archive's other source facts, one object per fact named by its key
/// ([`rainbow_runtime::identity`]): `kafka.topic.<topic>`, `postgres.system`, ...
pub const SOURCE_FACTS: &str = "_archive/source";

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveSummary {
    pub records: u64,
    pub segments: u64,
    pub existing_segments: u64,
    pub bytes: u64,
}

impl ArchiveSummary {
    fn add(&mut self, other: &ArchiveSummary) {
        self.records += other.records;
        self.segments += other.segments;
        self.existing_segments += other.existing_segments;
        self.bytes += other.bytes;
    }
}

/// Archives until `shutdown` resolves, then writes the open segments and returns. Outages of
/// Kafka and of the object store are ridden out: the failed attempt is retried with backoff and
/// resumes after the highest archived offset ([`rainbow_runtime::resilience::supervise`]).
pub async fn run(
    kafka: &KafkaConnection,
    store_url: &str,
    config: &ArchiveConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<ArchiveSummary, ArchiveError> {
    config.validate()?;
    let store = Store::open(store_url)?;
    let metrics = ArchiveMetrics::new();
    let listener = rainbow_runtime::serve::bind(&config.metrics_listen).await.map_err(|e| {
        ArchiveError::Metrics { listen: config.metrics_listen.clone(), reason: e.to_string() }
    })?;
    let stop_rx = rainbow_runtime::resilience::stop_on(shutdown);
    let m = metrics.clone();
    let endpoints = rainbow_runtime::serve::spawn(
        listener,
        move || m.render(),
        metrics.resilience.clone(),
        stop_rx.clone(),
    );
    metrics.running.set(1);
    let total = Arc::new(Mutex::new(ArchiveSummary::default()));
    let outcome = supervise("archive", &metrics.resilience, stop_rx, |stop| {
        attempt(kafka, config, store.clone(), metrics.clone(), stop, total.clone())
    })
    .await;
    metrics.running.set(0);
    // The endpoints end with the component however it ended: a failure sets no stop signal.
    endpoints.abort();
    let _ = endpoints.await;
    let total = total.lock().expect("lock").clone();
    outcome.map(|_| total)
}

/// One attempt: the archiver on a thread of its own until `stop` says so or something fails.
/// What it archived is added to `total`, also when it fails.
async fn attempt(
    kafka: &KafkaConnection,
    config: &ArchiveConfig,
    store: Store,
    metrics: ArchiveMetrics,
    stop: tokio::sync::watch::Receiver<bool>,
    total: Arc<Mutex<ArchiveSummary>>,
) -> Result<(), ArchiveError> {
    let (kafka, config) = (kafka.clone(), config.clone());
    let rt = tokio::runtime::Handle::current();
    let mut worker = Worker::spawn("rainbow-archive", move |stop| {
        match Archiver::start(&kafka, &config, store, rt, metrics, stop) {
            Ok(mut archiver) => {
                let result = archiver.run();
                (result, archiver.summary)
            }
            Err(e) => (Err(e), ArchiveSummary::default()),
        }
    })
    .map_err(|e| ArchiveError::Thread(e.to_string()))?;
    let outcome = tokio::select! {
        _ = stopped(stop) => {
            tracing::info!("stopping: writing the open segments");
            worker.stop();
            worker.finished().await
        }
        r = worker.finished() => r,
    };
    let (result, summary) =
        outcome.ok_or_else(|| ArchiveError::Thread("the archiver's thread panicked".into()))?;
    total.lock().expect("lock").add(&summary);
    result
}

/// Topics of the CDC's naming (`<prefix>.<schema>.<table>`) that exist and are not in `known`
/// (none when the brokers do not answer: the next look finds them).
fn new_topics(consumer: &kafka::RainbowConsumer, config: &ArchiveConfig, known: &[String]) -> Vec<String> {
    let prefix = config.topic_for("");
    let Ok(md) = consumer.fetch_metadata(None, Duration::from_secs(5)) else { return Vec::new() };
    let mut found: Vec<String> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.name().to_string())
        .filter(|name| name.starts_with(&prefix) && name.len() > prefix.len() && !known.contains(name))
        .collect();
    found.sort();
    found
}

/// Records from `expected` up to `got` were removed before they were archived: an error, or
/// with `allow_offset_gap` counted and logged.
fn gap(
    config: &ArchiveConfig,
    metrics: &ArchiveMetrics,
    topic: &str,
    partition: i32,
    expected: i64,
    got: i64,
) -> Result<(), ArchiveError> {
    if !config.allow_offset_gap {
        return Err(ArchiveError::OffsetGap { topic: topic.to_string(), partition, expected, got });
    }
    metrics.offset_gap_records.with_label_values(&[topic]).inc_by((got - expected) as u64);
    tracing::error!(
        topic,
        partition,
        expected,
        got,
        "records were removed before they were archived; going on without them (archive.allow_offset_gap)"
    );
    Ok(())
}

/// An open segment of one partition.
struct Open {
    records: Vec<ArchivedRecord>,
    bytes: usize,
    since: Instant,
}

struct Input {
    topic: String,
    partition: i32,
    open: Option<Open>,
    /// Next offset to archive.
    next: i64,
}

impl Input {
    /// The next offset to read: after the open segment's last record, else [`Input::next`].
    fn read_up_to(&self) -> i64 {
        self.open.as_ref().and_then(|o| o.records.last()).map_or(self.next, |r| r.offset + 1)
    }
}

struct Archiver {
    config: ArchiveConfig,
    consumer: kafka::RainbowConsumer,
    rt: tokio::runtime::Handle,
    metrics: ArchiveMetrics,
    stop: Arc<AtomicBool>,
    inputs: Vec<Input>,
    /// Topic → input index per partition number (looked up by `&str`: no String per record).
    by_topic: HashMap<String, Vec<usize>>,
    summary: ArchiveSummary,
    lake: Arc<Lake>,
    /// The writers of the changelog tables (one table per topic).
    writers: Writers,
    kafka: KafkaConnection,
    lost: kafka::LostConsumer,
}

impl Archiver {
    fn start(
        kafka: &KafkaConnection,
        config: &ArchiveConfig,
        store: Store,
        rt: tokio::runtime::Handle,
        metrics: ArchiveMetrics,
        stop: Arc<AtomicBool>,
    ) -> Result<Archiver, ArchiveError> {
        let consumer: kafka::RainbowConsumer = kafka
            .offset_keeping_consumer("archiver", &config.group_id)
            // A fetch answers once 1 MiB is there or after 500 ms: the archive is not on the
            // dashboards' path, and a fetch answered at every record the CDC sends made the
            // archiver and the broker work per few records (docs/performance.md: the archiver's
            // CPU per order at 500 orders/s about halved, Kafka's down a quarter).
            .set("fetch.min.bytes", "1048576")
            .set("fetch.wait.max.ms", "500")
            // Up to 16 MiB of a partition per fetch: with librdkafka's 1 MiB a backlog was read
            // at a round trip per megabyte (archive-bench: 1.5 times the records/s with 16); the
            // prefetch as a whole stays bounded by queued.max.messages.kbytes (64 MiB).
            .set("max.partition.fetch.bytes", "16777216")
            .create_with_context(kafka::QuietContext::default())?;
        // Partitions of every topic: wait for the CDC to create them.
        let mut topics = config.topics();
        topics.extend(new_topics(&consumer, config, &topics));
        let counts = kafka::wait_for_partitions(consumer.client(), &topics, "the CDC", &stop, None)
            .map_err(|e| ArchiveError::MissingTopic { topic: e.topic })?;
        let partitions: Vec<(String, i32)> =
            topics.iter().zip(counts).flat_map(|(t, n)| (0..n).map(move |p| (t.clone(), p))).collect();
        // The archive is of one source: each fact (the cluster, each topic's id, the PostgreSQL
        // cluster, database and slot of the CDC's heartbeats) is recorded when first seen, and
        // compared at every later start.
        let now = kafka::source_identity(kafka, &topics, &config.naming().heartbeat_topic())?;
        let mut conflicts = Vec::new();
        for (key, value) in now.facts() {
            let object = if key == "kafka.cluster" {
                SOURCE_OBJECT.to_string()
            } else {
                format!("{SOURCE_FACTS}/{key}")
            };
            let text =
                if key == "kafka.cluster" { format!("Kafka cluster {value}") } else { value.to_string() };
            if rt.block_on(store.put_new(&object, text.clone().into_bytes()))? == Created::AlreadyThere {
                let found = String::from_utf8_lossy(&rt.block_on(store.get(&object))?).to_string();
                if found != text {
                    conflicts.push(format!(
                        "{key}: {} recorded, {value} now",
                        found.trim_start_matches("Kafka cluster ")
                    ));
                }
            }
        }
        if !conflicts.is_empty() {
            return Err(ArchiveError::ForeignSource {
                url: store.url.clone(),
                differences: conflicts.join("; "),
            });
        }
        let segments = list_segments(&rt, &store, &topics)?;
        // The changelog tables, filled from the segments where they are behind.
        let lake = rt.block_on(Lake::open(&config.lake(&store)?))?;
        let tables = open_tables(&rt, &store, &lake, config, &metrics, &topics, &segments)?;
        // Where each partition resumes: after the last offset its changelog table committed (the
        // segments of an archive from before the tables were appended to them just above, so
        // they are covered). Records past it that a stopped attempt had buffered are read again;
        // nothing before it is.
        let committed: HashMap<(String, i32), i64> = tables
            .iter()
            .flat_map(|(topic, t)| t.committed().iter().map(move |(p, next)| ((topic.clone(), *p), *next)))
            .collect();
        let lake = Arc::new(lake);
        let mut writers = Writers::start(config.writer_threads(), rt.clone(), lake.clone(), metrics.clone())?;
        for (topic, table) in tables {
            writers.adopt(&topic, table);
        }
        let mut tpl = TopicPartitionList::new();
        let mut inputs = Vec::new();
        let mut by_topic: HashMap<String, Vec<usize>> = HashMap::new();
        for (topic, partition) in partitions {
            let mut next = committed.get(&(topic.clone(), partition)).copied().unwrap_or(0);
            if next > 0 {
                let (low, high) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
                if next > high {
                    return Err(ArchiveError::OffsetBeyondEnd {
                        topic,
                        partition,
                        archived: next - 1,
                        end: high,
                    });
                }
                if next < low {
                    gap(config, &metrics, &topic, partition, next, low)?;
                    next = low;
                }
            }
            tpl.add_partition_offset(
                &topic,
                partition,
                if next == 0 { Offset::Beginning } else { Offset::Offset(next) },
            )?;
            // Every topic's series from the start, at 0: the alert's increase() sees the first gap.
            metrics.offset_gap_records.with_label_values(&[&topic]);
            // Partitions arrive in order 0..n per topic, so the position is the partition.
            by_topic.entry(topic.clone()).or_default().push(inputs.len());
            inputs.push(Input { topic, partition, open: None, next });
        }
        consumer.assign(&tpl)?;
        tracing::info!(
            partitions = inputs.len(),
            resumed = inputs.iter().filter(|i| i.next > 0).count(),
            url = %store.url,
            "archiving the CDC topics"
        );
        // Both answered: the archive was listed, the topics' partitions read.
        metrics.resilience.connected(Dependency::ObjectStore);
        metrics.resilience.connected(Dependency::Kafka);
        metrics.resilience.set_ready(true);
        Ok(Archiver {
            config: config.clone(),
            consumer,
            rt,
            metrics,
            stop,
            inputs,
            by_topic,
            summary: ArchiveSummary::default(),
            lake,
            writers,
            kafka: kafka.clone(),
            lost: kafka::LostConsumer::default(),
        })
    }

    /// Archives until stopped (then writes the open segments) or something fails; what it did is
    /// in `self.summary` either way.
    fn run(&mut self) -> Result<(), ArchiveError> {
        let max_age = Duration::from_millis(self.config.segment_max_age_ms);
        let mut next_lag = Instant::now();
        let mut next_expiry = Instant::now() + Duration::from_secs(60);
        let mut errors = 0u64;
        let mut stopping: Option<Option<StopDrain>> = None;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                let drain = stopping.get_or_insert_with(|| self.stop_targets());
                let reached = || self.inputs.iter().map(Input::read_up_to);
                if drain.as_ref().is_none_or(|d| d.done(reached(), "archive.drain_on_stop_ms")) {
                    break;
                }
            }
            let mut timeout = Duration::from_millis(100);
            let mut received = false;
            for _ in 0..10_000 {
                let Some(m) = self.consumer.poll(timeout) else { break };
                timeout = Duration::ZERO;
                match m {
                    Ok(m) => {
                        received = true;
                        let Some(&i) =
                            self.by_topic.get(m.topic()).and_then(|v| v.get(m.partition() as usize))
                        else {
                            continue;
                        };
                        // Offsets of the CDC's topics are contiguous (no transactions, no compaction).
                        let expected = self.inputs[i].read_up_to();
                        if m.offset() > expected {
                            gap(&self.config, &self.metrics, m.topic(), m.partition(), expected, m.offset())?;
                        } else if m.offset() < expected {
                            // A re-delivery of a record already archived or buffered.
                            continue;
                        }
                        let record = ArchivedRecord {
                            topic: self.inputs[i].topic.clone(),
                            partition: m.partition(),
                            offset: m.offset(),
                            key: m.key().map(<[u8]>::to_vec),
                            value: m.payload().map(<[u8]>::to_vec),
                            timestamp_ms: m.timestamp().to_millis(),
                            commit_lsn: None,
                            change_lsn: None,
                        };
                        self.add(i, record)?;
                    }
                    // librdkafka reconnects by itself; the error says the brokers are away meanwhile.
                    Err(e) => {
                        errors += 1;
                        self.metrics.resilience.failed(Dependency::Kafka);
                        if errors.is_power_of_two() {
                            tracing::warn!(error = %e, count = errors, "Kafka consumer error");
                        }
                    }
                }
            }
            if received {
                self.metrics.resilience.connected(Dependency::Kafka);
            }
            self.metrics.resilience.progressed();
            let aged: Vec<usize> = (0..self.inputs.len())
                .filter(|&i| self.inputs[i].open.as_ref().is_some_and(|o| o.since.elapsed() >= max_age))
                .collect();
            for i in aged {
                self.flush(i)?;
            }
            for appended in self.writers.collect()? {
                self.appended(appended);
            }
            let open: usize =
                self.inputs.iter().map(|i| i.open.as_ref().map_or(0, |o| o.records.len())).sum();
            self.metrics.buffered.set((open + self.writers.in_flight_records()) as i64);
            if Instant::now() >= next_lag {
                next_lag = Instant::now() + Duration::from_secs(5);
                self.update_lag();
                self.pick_up_new_topics()?;
                self.check_consumer()?;
            }
            if Instant::now() >= next_expiry {
                next_expiry = Instant::now() + Duration::from_secs(3600);
                self.writers.expire(self.config.snapshot_retention_hours)?;
            }
        }
        for i in 0..self.inputs.len() {
            self.flush(i)?;
        }
        for appended in self.writers.finish()? {
            self.appended(appended);
        }
        self.metrics.buffered.set(0);
        Ok(())
    }

    /// Adds a record to its partition's open segment, cutting segments at the limits and at
    /// day changes.
    fn add(&mut self, i: usize, record: ArchivedRecord) -> Result<(), ArchiveError> {
        // The envelope is read once, by the append (which also splits a segment at a change of
        // commit day into files of one day each).
        let input = &mut self.inputs[i];
        let open =
            input.open.get_or_insert_with(|| Open { records: Vec::new(), bytes: 0, since: Instant::now() });
        open.bytes += record.size();
        open.records.push(record);
        if open.records.len() >= self.config.segment_max_records
            || open.bytes >= self.config.segment_max_bytes
        {
            self.flush(i)?;
        }
        Ok(())
    }

    /// Hands the partition's open segment to its table's writer (the records after it are read
    /// meanwhile).
    fn flush(&mut self, i: usize) -> Result<(), ArchiveError> {
        let Some(open) = self.inputs[i].open.take() else { return Ok(()) };
        let Some(last) = open.records.last().map(|r| r.offset) else { return Ok(()) };
        let input = &mut self.inputs[i];
        input.next = last + 1;
        let segment = Segment {
            input: i,
            topic: input.topic.clone(),
            partition: input.partition,
            records: open.records,
        };
        self.writers.append(segment)
    }

    /// A segment is durable in its table: counted, and its offsets committed.
    fn appended(&mut self, a: Appended) {
        SegmentWritten {
            table: &a.table,
            topic: &a.topic,
            partition: a.partition,
            first: a.first,
            last: a.last,
            records: a.stats.records as usize,
            bytes: a.stats.bytes as usize,
            duration: a.duration,
            existed: a.stats.records == 0,
        }
        .emit(&self.metrics);
        self.metrics.resilience.connected(Dependency::ObjectStore);
        if a.stats.records > 0 {
            self.summary.records += a.stats.records;
            self.summary.segments += 1;
            self.summary.bytes += a.stats.bytes;
        } else {
            self.summary.existing_segments += 1;
        }
        let mut tpl = TopicPartitionList::new();
        let committed = tpl.add_partition_offset(&a.topic, a.partition, Offset::Offset(a.last + 1));
        if let Err(e) = committed.and_then(|()| self.consumer.commit(&tpl, CommitMode::Async)) {
            tracing::debug!(error = %e, "committing archived offsets failed (monitoring only)");
        }
    }

    /// Starts archiving the topics of the CDC's naming that appeared since the start, from their
    /// first offset.
    fn pick_up_new_topics(&mut self) -> Result<(), ArchiveError> {
        let known: Vec<String> = self.by_topic.keys().cloned().collect();
        let mut tpl = TopicPartitionList::new();
        for topic in new_topics(&self.consumer, &self.config, &known) {
            let Some(n) = kafka::partition_count(self.consumer.client(), &topic) else { continue };
            let table = open_table(&self.rt, &self.lake, &self.config, &self.metrics, &topic)?;
            self.writers.adopt(&topic, table);
            self.metrics.offset_gap_records.with_label_values(&[&topic]);
            for partition in 0..n {
                tpl.add_partition_offset(&topic, partition, Offset::Beginning)?;
                self.by_topic.entry(topic.clone()).or_default().push(self.inputs.len());
                self.inputs.push(Input { topic: topic.clone(), partition, open: None, next: 0 });
            }
            tracing::info!(%topic, partitions = n, "archiving a new topic of the CDC");
        }
        if tpl.count() > 0 {
            self.consumer.incremental_assign(&tpl)?;
        }
        Ok(())
    }

    /// A consumer that lost its way ends the attempt (the next one starts with a new consumer,
    /// after the offsets the tables hold).
    fn check_consumer(&mut self) -> Result<(), ArchiveError> {
        let partitions = partitions(&self.inputs);
        let away = self.metrics.resilience.down_for(Dependency::Kafka);
        Ok(self.lost.check(&self.kafka, &self.consumer, &partitions, away)?)
    }

    /// At a stop: every input's end offset, to read up to within `archive.drain_on_stop_ms`
    /// (`None`: stop at once).
    fn stop_targets(&self) -> Option<StopDrain> {
        if self.config.drain_on_stop_ms == 0 {
            return None;
        }
        let partitions = partitions(&self.inputs);
        match kafka::end_offsets(&self.consumer, &partitions, Duration::from_secs(5)) {
            Ok(ends) => Some(StopDrain::new(ends, Duration::from_millis(self.config.drain_on_stop_ms))),
            Err(e) => {
                tracing::warn!(error = %e, "stopping at once: the topics' end offsets are unknown; the rest is read at the next start");
                None
            }
        }
    }

    fn update_lag(&self) {
        let partitions = partitions(&self.inputs);
        let Ok(ends) = kafka::end_offsets(&self.consumer, &partitions, Duration::from_secs(2)) else {
            return;
        };
        // The brokers answer (also when no record arrives to say so).
        self.metrics.resilience.connected(Dependency::Kafka);
        for (input, high) in self.inputs.iter().zip(ends) {
            self.metrics
                .consumer_lag
                .with_label_values(&[&input.topic, &input.partition.to_string()])
                .set((high - input.next).max(0));
        }
    }
}

/// The (topic, partition) of each input, in order.
fn partitions(inputs: &[Input]) -> Vec<(&str, i32)> {
    inputs.iter().map(|i| (i.topic.as_str(), i.partition)).collect()
}

/// Removes the snapshots older than `hours` from the tables' metadata (none when 0); returns
/// (table, snapshots removed) per table that had some.
pub(crate) fn expire_tables<'a>(
    rt: &tokio::runtime::Handle,
    lake: &Lake,
    tables: impl Iterator<Item = &'a mut ChangelogTable>,
    hours: u64,
) -> Result<Vec<(String, usize)>, ArchiveError> {
    let mut done = Vec::new();
    if hours == 0 {
        return Ok(done);
    }
    let cutoff = chrono::Utc::now().timestamp_millis() - (hours as i64).saturating_mul(3_600_000);
    for table in tables {
        let n = rt.block_on(table.expire(lake, cutoff))?;
        if n > 0 {
            tracing::info!(table = %table.name, snapshots = n, hours, "expired old snapshots of the changelog table");
            done.push((table.name.clone(), n));
        }
    }
    done.sort();
    Ok(done)
}

/// `rainbow archive expire`: removes the changelog tables' snapshots older than `hours` from
/// their metadata (files stay); returns (table, snapshots removed).
pub fn expire_snapshots(
    store_url: &str,
    config: &ArchiveConfig,
    hours: u64,
    rt: &tokio::runtime::Handle,
) -> Result<Vec<(String, usize)>, ArchiveError> {
    let store = Store::open(store_url)?;
    let lake = rt.block_on(Lake::open(&config.lake(&store)?))?;
    let mut tables = Vec::new();
    for topic in config.topics() {
        if let Some(t) = rt.block_on(ChangelogTable::load(&lake, &config.table_of(&topic), &topic))? {
            tables.push(t);
        }
    }
    expire_tables(rt, &lake, tables.iter_mut(), hours.max(1))
}

/// `rainbow archive compact`: rewrites each changelog table's runs of small data files into
/// files of up to `target_bytes` (rainbow_iceberg's compaction); returns what it did per table.
pub fn compact_tables(
    store_url: &str,
    config: &ArchiveConfig,
    target_bytes: u64,
    rt: &tokio::runtime::Handle,
) -> Result<Vec<(String, rainbow_iceberg::CompactStats)>, ArchiveError> {
    let store = Store::open(store_url)?;
    let lake = rt.block_on(Lake::open(&config.lake(&store)?))?;
    let mut done = Vec::new();
    for topic in config.topics() {
        let name = config.table_of(&topic);
        if let Some(mut t) = rt.block_on(ChangelogTable::load(&lake, &name, &topic))? {
            let stats = rt.block_on(t.compact(&lake, target_bytes))?;
            tracing::info!(table = %name, files_before = stats.files_before, files_after = stats.files_after, "compacted the changelog table");
            done.push((name, stats));
        }
    }
    Ok(done)
}

/// The segments of `topics` per partition, in offset order.
fn list_segments(
    rt: &tokio::runtime::Handle,
    store: &Store,
    topics: &[String],
) -> Result<HashMap<(String, i32), Vec<SegmentName>>, ArchiveError> {
    let mut segments: HashMap<(String, i32), Vec<SegmentName>> = HashMap::new();
    for topic in topics {
        for (path, _) in rt.block_on(store.list(&format!("master/{topic}")))? {
            if let Some(s) = SegmentName::parse(&path) {
                segments.entry((s.topic.clone(), s.partition)).or_default().push(s);
            }
        }
    }
    for segs in segments.values_mut() {
        segs.sort_by_key(|s| s.first);
    }
    Ok(segments)
}

/// Opens (or creates) the changelog tables of `topics` and fills each from the `segments` it
/// does not hold yet.
fn open_tables(
    rt: &tokio::runtime::Handle,
    store: &Store,
    lake: &Lake,
    config: &ArchiveConfig,
    metrics: &ArchiveMetrics,
    topics: &[String],
    segments: &HashMap<(String, i32), Vec<SegmentName>>,
) -> Result<HashMap<String, ChangelogTable>, ArchiveError> {
    let mut tables = HashMap::new();
    for topic in topics {
        tables.insert(topic.clone(), open_table(rt, lake, config, metrics, topic)?);
    }
    let mut behind: Vec<_> = segments.iter().collect();
    behind.sort_by(|a, b| a.0.cmp(b.0));
    for ((topic, partition), segs) in behind {
        let table = tables.get_mut(topic).expect("a table per topic");
        backfill(rt, store, lake, metrics, table, *partition, segs)?;
    }
    Ok(tables)
}

/// Builds (or completes) the changelog tables of the archive at `store_url` from its segments,
/// without Kafka: what `rainbow archive` does at start. Returns the records the tables hold.
pub fn fill_tables(
    store_url: &str,
    config: &ArchiveConfig,
    rt: &tokio::runtime::Handle,
) -> Result<u64, ArchiveError> {
    let store = Store::open(store_url)?;
    let mut topics = config.topics();
    for (path, _) in rt.block_on(store.list("master"))? {
        if let Some(s) = SegmentName::parse(&path) {
            if !topics.contains(&s.topic) {
                topics.push(s.topic);
            }
        }
    }
    let segments = list_segments(rt, &store, &topics)?;
    let lake = rt.block_on(Lake::open(&config.lake(&store)?))?;
    let tables = open_tables(rt, &store, &lake, config, &ArchiveMetrics::new(), &topics, &segments)?;
    Ok(tables.values().flat_map(|t| t.committed().values()).map(|n| *n as u64).sum())
}

/// Opens (or creates) the changelog table of `topic`; its series start at 0.
fn open_table(
    rt: &tokio::runtime::Handle,
    lake: &Lake,
    config: &ArchiveConfig,
    metrics: &ArchiveMetrics,
    topic: &str,
) -> Result<ChangelogTable, ArchiveError> {
    let name = config.table_of(topic);
    let table = rt.block_on(ChangelogTable::open(lake, &name, topic))?;
    for reason in ["tombstone", "not_a_change_event"] {
        metrics.iceberg_untyped.with_label_values(&[name.as_str(), reason]);
    }
    metrics.iceberg_untyped_values.with_label_values(&[&name]);
    metrics.iceberg_columns_added.with_label_values(&[&name]);
    metrics.iceberg_columns_promoted.with_label_values(&[&name]);
    Ok(table)
}

/// Appends `records` (consecutive, of one partition) to the changelog table in one commit.
/// Appends the records of `segments` (one partition's, in offset order) that the changelog
/// table does not hold yet.
fn backfill(
    rt: &tokio::runtime::Handle,
    store: &Store,
    lake: &Lake,
    metrics: &ArchiveMetrics,
    table: &mut ChangelogTable,
    partition: i32,
    segments: &[SegmentName],
) -> Result<(), ArchiveError> {
    let from = table.committed().get(&partition).copied().unwrap_or(0);
    let behind: Vec<&SegmentName> = segments.iter().filter(|s| s.last >= from).collect();
    let Some(last) = behind.last().map(|s| s.last) else { return Ok(()) };
    tracing::info!(
        table = %table.name,
        partition,
        from,
        to = last,
        segments = behind.len(),
        "filling the Iceberg changelog table from the archive's segments"
    );
    for seg in behind {
        let path = seg.path();
        let mut reader = master::SegmentReader::open(&path, rt.block_on(store.get(&path))?, 100_000)?;
        while let Some(records) = reader.next_batch()? {
            append_records(rt, lake, metrics, table, partition, &records)?;
        }
    }
    Ok(())
}
