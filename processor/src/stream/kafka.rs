//! The Kafka source of the streaming engine: every partition of the CDC's topics that this
//! instance owns, read with one consumer; the CDC's heartbeats tell the merge that idle
//! partitions have nothing earlier to deliver.
//!
//! Offsets come from the engine's checkpoint (a partition it does not know is read from the
//! beginning); the consumer group's offsets are committed after each checkpoint for lag
//! monitoring only. A partition whose merge queue is long is paused, unless the merge waits on
//! it. A consumer that lost its way ([`rainbow_runtime::kafka::LostConsumer`]) ends the attempt:
//! the next resumes from the checkpoint with a new one.

use super::owned_partitions;
use crate::config::ProcessorConfig;
use crate::engine::{Input, Intake, Poll, Record, Source};
use crate::error::ProcessorError;
use crate::event::{decode, Position, Table};
use crate::merge::InputName;
use crate::metrics::ProcessorMetrics;
use rainbow_runtime::identity::{SourceIdentity, HEARTBEAT_SOURCE_HEADER};
use rainbow_runtime::kafka::{self, KafkaConnection};
use rainbow_runtime::resilience::Dependency;
use rainbow_schemas::wire;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages taken per poll before the merge is drained.
const POLL_BATCH: usize = 5_000;

struct Partition {
    topic: String,
    partition: i32,
    paused: bool,
}

pub struct KafkaSource {
    config: ProcessorConfig,
    /// Shared with the messages a poll borrows from it.
    consumer: Arc<kafka::RainbowConsumer>,
    stop: Arc<AtomicBool>,
    metrics: ProcessorMetrics,
    heartbeat_topic: String,
    partitions: Vec<Partition>,
    /// Per topic, the input index of each partition this instance reads (`None`: not read).
    by_topic: HashMap<String, Vec<Option<usize>>>,
    /// Heartbeats read: (acknowledged LSN, heartbeat time ms), oldest first.
    heartbeats: VecDeque<(u64, i64)>,
    kafka: KafkaConnection,
    /// The PostgreSQL facts of the source (from the CDC's heartbeats): a heartbeat naming
    /// another stops the processor.
    postgres: Option<SourceIdentity>,
    poll_errors: u64,
    next_lag: Instant,
    lost: kafka::LostConsumer,
}

/// A heartbeat record's content.
struct Heartbeat {
    acked: Option<rainbow_schemas::wire::Lsn>,
    ts_ms: i64,
    source: Option<SourceIdentity>,
}

impl KafkaSource {
    /// A consumer of the CDC's topics; `stop` ends the wait for them.
    pub fn new(
        kafka: &KafkaConnection,
        config: &ProcessorConfig,
        stop: Arc<AtomicBool>,
        metrics: ProcessorMetrics,
    ) -> Result<KafkaSource, ProcessorError> {
        let consumer: kafka::RainbowConsumer = kafka
            .offset_keeping_consumer("processor", &config.group_id)
            .set("fetch.wait.max.ms", "50")
            .set("queued.max.messages.kbytes", "65536")
            .create_with_context(kafka::QuietContext::default())?;
        Ok(KafkaSource {
            heartbeat_topic: config.heartbeat_topic(),
            config: config.clone(),
            consumer: Arc::new(consumer),
            stop,
            metrics,
            partitions: Vec::new(),
            by_topic: HashMap::new(),
            heartbeats: VecDeque::new(),
            kafka: kafka.clone(),
            postgres: None,
            poll_errors: 0,
            next_lag: Instant::now(),
            lost: kafka::LostConsumer::default(),
        })
    }

    /// What a heartbeat record says (see [`KafkaSource::heartbeat`]).
    fn read_heartbeat(m: &BorrowedMessage<'_>) -> Heartbeat {
        let header =
            |key: &str| m.headers().and_then(|h| h.iter().find(|h| h.key == key).and_then(|h| h.value));
        Heartbeat {
            acked: header(wire::HEARTBEAT_ACKED_LSN_HEADER).and_then(wire::parse_acked_header),
            ts_ms: m.payload().and_then(wire::heartbeat_ts_ms).unwrap_or(0),
            source: header(HEARTBEAT_SOURCE_HEADER)
                .and_then(|v| std::str::from_utf8(v).ok().map(SourceIdentity::parse)),
        }
    }

    /// A heartbeat: every input consumed up to its current end offset has nothing before the
    /// heartbeat's acknowledged LSN left to deliver. Of the heartbeats one poll reads, only the
    /// newest is acted on (it says all the others say): a backlog of them, after a stall, costs
    /// one end-offsets request instead of one each.
    fn heartbeat(
        &mut self,
        beat: Heartbeat,
        intake: &mut Intake<'_, ProcessorError>,
    ) -> Result<(), ProcessorError> {
        if let Some(now) = beat.source {
            let known = self.postgres.get_or_insert_with(|| now.clone());
            let conflicts = known.conflicts(&now);
            if !conflicts.is_empty() {
                return Err(ProcessorError::SourceChanged { differences: conflicts.join("; ") });
            }
        }
        let Some(acked) = beat.acked else { return Ok(()) };
        let at = Position { commit: acked.0, change: 0, table: 0 };
        let ts_ms = beat.ts_ms;
        let behind: Vec<usize> =
            (0..intake.inputs()).filter(|&i| intake.input_frontier(i).is_none_or(|f| f < at)).collect();
        if !behind.is_empty() {
            match self.end_offsets(&behind, Duration::from_secs(5)) {
                Ok(ends) => {
                    for (i, high) in behind.into_iter().zip(ends) {
                        intake.mark(i, high, at);
                    }
                }
                // The next heartbeat says as much; meanwhile facts wait for their dimensions.
                Err(e) => {
                    tracing::debug!(error = %e, "reading end offsets for a heartbeat failed");
                    self.metrics.resilience.failed(Dependency::Kafka);
                    return Ok(());
                }
            }
        }
        self.heartbeats.push_back((acked.0, ts_ms));
        if self.heartbeats.len() > 1_000 {
            self.heartbeats.pop_front();
        }
        Ok(())
    }

    fn end_offsets(&self, inputs: &[usize], timeout: Duration) -> Result<Vec<i64>, ProcessorError> {
        let partitions: Vec<(&str, i32)> = inputs
            .iter()
            .map(|&i| (self.partitions[i].topic.as_str(), self.partitions[i].partition))
            .collect();
        Ok(kafka::end_offsets(&self.consumer, &partitions, timeout)?)
    }

    /// Consumer lag per partition, from the brokers' high watermarks. Whether they were read.
    fn update_lag(&self, intake: &Intake<'_, ProcessorError>) -> bool {
        let all: Vec<usize> = (0..self.partitions.len()).collect();
        match self.end_offsets(&all, Duration::from_secs(2)) {
            Ok(ends) => {
                self.metrics.resilience.connected(Dependency::Kafka);
                for (i, high) in ends.into_iter().enumerate() {
                    let p = &self.partitions[i];
                    let lag = (high - intake.next_offset(i)).max(0);
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[&p.topic, &p.partition.to_string()])
                        .set(lag);
                }
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading end offsets for the lag failed");
                false
            }
        }
    }
}

impl KafkaSource {
    /// Records from `expected` up to `got` were removed before they were read: an error, or
    /// with `allow_offset_gap` counted and logged.
    fn gap(&self, topic: &str, partition: i32, expected: i64, got: i64) -> Result<(), ProcessorError> {
        if !self.config.allow_offset_gap {
            return Err(ProcessorError::OffsetGap { topic: topic.to_string(), partition, expected, got });
        }
        self.metrics.offset_gap_records.with_label_values(&[topic]).inc_by((got - expected) as u64);
        tracing::error!(
            topic,
            partition,
            expected,
            got,
            "records were removed before they were read; going on without them (processor.allow_offset_gap)"
        );
        Ok(())
    }
}

impl Source for KafkaSource {
    type Error = ProcessorError;

    /// Every partition's end offset at the stop, within `processor.drain_on_stop_ms`.
    fn stop_targets(&mut self) -> Option<(Vec<i64>, Duration)> {
        if self.config.drain_on_stop_ms == 0 {
            return None;
        }
        let all: Vec<usize> = (0..self.partitions.len()).collect();
        match self.end_offsets(&all, Duration::from_secs(5)) {
            Ok(ends) => Some((ends, Duration::from_millis(self.config.drain_on_stop_ms))),
            Err(e) => {
                tracing::warn!(error = %e, "stopping at once: the topics' end offsets are unknown; the rest is read at the next start");
                None
            }
        }
    }

    /// The Kafka cluster, the ids of the CDC topics that exist, and the PostgreSQL cluster,
    /// database and slot of the CDC's last heartbeat.
    fn identity(&mut self) -> Result<String, ProcessorError> {
        let mut topics: Vec<String> = Table::ALL.iter().map(|t| self.config.topic_for(t.name())).collect();
        topics.push(self.heartbeat_topic.clone());
        let id = kafka::source_identity(&self.kafka, &topics, &self.heartbeat_topic)?;
        let mut postgres = SourceIdentity::new();
        for (k, v) in id.facts().filter(|(k, _)| k.starts_with("postgres.")) {
            postgres.insert(k, v);
        }
        self.postgres = (!postgres.is_empty()).then_some(postgres);
        Ok(id.to_string())
    }

    fn learnt_identity(&self) -> Option<String> {
        self.postgres.as_ref().map(SourceIdentity::to_string)
    }

    fn open(&mut self, resume: &BTreeMap<InputName, i64>) -> Result<Vec<Input>, ProcessorError> {
        let topics: Vec<(Table, String)> =
            Table::ALL.iter().map(|t| (*t, self.config.topic_for(t.name()))).collect();
        // Partitions of every topic; wait for the CDC to create them.
        let mut names: Vec<String> = topics.iter().map(|(_, t)| t.clone()).collect();
        names.push(self.heartbeat_topic.clone());
        let counts = kafka::wait_for_partitions(self.consumer.client(), &names, "the CDC", &self.stop, None)
            .map_err(|e| ProcessorError::MissingTopic { topic: e.topic })?;
        let heartbeat_partitions = counts[topics.len()];
        let mut partitions: Vec<(Table, String, i32)> = Vec::new();
        for ((table, topic), n) in topics.iter().zip(&counts) {
            partitions.extend((0..*n).map(|p| (*table, topic.clone(), p)));
        }
        if self.config.instances > 1 {
            partitions = owned_partitions(partitions, self.config.instances, self.config.partition)?;
        }
        let mut tpl = TopicPartitionList::new();
        let mut inputs = Vec::new();
        for (table, topic, partition) in partitions {
            let name = InputName { topic: topic.clone(), partition };
            // Every topic's series from the start, at 0: the alert's increase() sees the first gap.
            self.metrics.offset_gap_records.with_label_values(&[&topic]);
            let mut offset = resume.get(&name).copied();
            if let Some(at) = offset {
                // The checkpoint's offset must be within what the partition holds now.
                let (low, high) =
                    self.consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
                if at > high {
                    return Err(ProcessorError::OffsetBeyondEnd {
                        topic,
                        partition,
                        checkpoint: at,
                        end: high,
                    });
                }
                if at < low {
                    self.gap(&topic, partition, at, low)?;
                    offset = Some(low);
                }
            }
            tpl.add_partition_offset(&topic, partition, offset.map_or(Offset::Beginning, Offset::Offset))?;
            let slots = self.by_topic.entry(topic.clone()).or_default();
            if slots.len() <= partition as usize {
                slots.resize(partition as usize + 1, None);
            }
            slots[partition as usize] = Some(inputs.len());
            self.partitions.push(Partition { topic, partition, paused: false });
            inputs.push(Input { name, table, start: offset.unwrap_or(0) });
        }
        for p in 0..heartbeat_partitions {
            // Only heartbeats from now on matter: earlier ones say less.
            tpl.add_partition_offset(&self.heartbeat_topic, p, Offset::End)?;
        }
        self.consumer.assign(&tpl)?;
        tracing::info!(
            partitions = inputs.len(),
            resumed = !resume.is_empty(),
            "consuming the CDC topics in commit order"
        );
        Ok(inputs)
    }

    fn poll(&mut self, intake: &mut Intake<'_, ProcessorError>) -> Result<Poll, ProcessorError> {
        let consumer = self.consumer.clone();
        let mut timeout = Duration::from_millis(100);
        let mut received = false;
        let mut newest_beat: Option<Heartbeat> = None;
        for _ in 0..POLL_BATCH {
            let Some(result) = consumer.poll(timeout) else { break };
            timeout = Duration::ZERO;
            received |= result.is_ok();
            match result {
                Ok(m) if m.topic() == self.heartbeat_topic => newest_beat = Some(Self::read_heartbeat(&m)),
                Ok(m) => {
                    let slot = self.by_topic.get(m.topic()).and_then(|v| v.get(m.partition() as usize));
                    // A partition added after start: picked up at the next restart.
                    let Some(&Some(input)) = slot else { continue };
                    // Offsets of the CDC's topics are contiguous (no transactions, no compaction).
                    let expected = intake.next_offset(input);
                    if m.offset() > expected {
                        self.gap(m.topic(), m.partition(), expected, m.offset())?;
                    }
                    intake.record(Record {
                        input,
                        offset: m.offset(),
                        decoded: decode(m.payload()),
                        emit: true,
                        key: m.key(),
                        value: m.payload(),
                        appended_ms: m.timestamp().to_millis(),
                    })?;
                }
                // librdkafka reconnects by itself; the error says the brokers are away meanwhile.
                Err(e) => {
                    self.poll_errors += 1;
                    self.metrics.resilience.failed(Dependency::Kafka);
                    if self.poll_errors.is_power_of_two() {
                        tracing::warn!(error = %e, count = self.poll_errors, "Kafka consumer error");
                    }
                }
            }
        }
        if let Some(beat) = newest_beat {
            self.heartbeat(beat, intake)?;
        }
        if received {
            self.metrics.resilience.connected(Dependency::Kafka);
        } else if let away @ Some(_) = self.metrics.resilience.down_for(Dependency::Kafka) {
            // A consumer that lost its way ends the attempt: the next resumes from the
            // checkpoint with a new one.
            let partitions: Vec<(&str, i32)> =
                self.partitions.iter().map(|p| (p.topic.as_str(), p.partition)).collect();
            self.lost.check(&self.kafka, &self.consumer, &partitions, away)?;
        }
        Ok(Poll::More)
    }

    /// The heartbeats' commit times raise the watermark once the merge has passed them; inputs
    /// whose queue is full are paused (unless the merge waits on them), the others resumed.
    fn drained(&mut self, intake: &mut Intake<'_, ProcessorError>) -> Result<(), ProcessorError> {
        if let Some(frontier) = intake.frontier() {
            while let Some(&(lsn, ts)) = self.heartbeats.front() {
                if lsn > frontier.commit {
                    break;
                }
                intake.advance_watermark(ts);
                self.heartbeats.pop_front();
            }
        }
        let max = self.config.max_queued_per_input;
        for (i, p) in self.partitions.iter_mut().enumerate() {
            let (queued, blocking) = (intake.queued(i), intake.is_blocking(i));
            let pause = !p.paused && queued > max && !blocking;
            let resume = p.paused && (queued < max / 2 || blocking);
            if pause || resume {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&p.topic, p.partition);
                if pause {
                    self.consumer.pause(&tpl)?;
                } else {
                    self.consumer.resume(&tpl)?;
                }
                p.paused = pause;
            }
        }
        Ok(())
    }

    fn tick(&mut self, intake: &Intake<'_, ProcessorError>) {
        self.metrics.paused.set(self.partitions.iter().filter(|p| p.paused).count() as i64);
        if Instant::now() >= self.next_lag {
            // Every 5 s; after a failed read (topics just created), again in 1 s.
            let every = if self.update_lag(intake) { 5 } else { 1 };
            self.next_lag = Instant::now() + Duration::from_secs(every);
        }
    }

    /// For lag monitoring only: restarts resume from the checkpoint.
    fn committed(&mut self, offsets: &[(InputName, i64)]) {
        let mut tpl = TopicPartitionList::new();
        for (name, offset) in offsets {
            if tpl.add_partition_offset(&name.topic, name.partition, Offset::Offset(*offset)).is_err() {
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "committing offsets to the consumer group failed");
        }
    }
}
