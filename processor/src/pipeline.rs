//! The streaming runtime: Kafka source → decode → merge → core → ClickHouse sink, with
//! checkpoints and dead letters.
//!
//! The source, merge and core run on one dedicated thread (they are synchronous and CPU-bound);
//! the sink, the checkpoint store and the metrics server run on the tokio runtime.
//!
//! Delivery: at-least-once input (offsets come from the checkpoint), idempotent output (see
//! [`crate::sink`]), so `kill -9` at any moment converges to the same ClickHouse tables.

use crate::checkpoint::{Checkpoint, CheckpointRef, CheckpointStore};
use crate::config::ProcessorConfig;
use crate::core::Core;
use crate::error::ProcessorError;
use crate::event::{decode, ChangeEvent, Position, Table};
use crate::merge::{InputName, Merger, Pushed};
use crate::metrics::{CheckpointWritten, DeadLettered, ProcessorMetrics};
use crate::sink::{ClickHouseSink, SinkMessage};
use rainbow_runtime::failpoint::CrashAfter;
use rainbow_runtime::kafka::{self, TopicSpec};
use rainbow_schemas::shape::Outputs;
use rainbow_schemas::warehouse::{Connection, Warehouse};
use rainbow_schemas::wire;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub use rainbow_runtime::kafka::KafkaConnection;

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub resumed_from: Option<u64>,
    pub events_applied: u64,
    pub dead_letters: u64,
    pub duplicates: u64,
    pub checkpoints: u64,
}

/// Environment variable for crash tests: `crash_after_events=N` aborts the process (like
/// `kill -9`) after the N-th applied event of this run.
pub const FAILPOINT_VAR: &str = "RAINBOW_PROCESSOR_FAILPOINT";

/// Runs the processor until `shutdown` resolves (then drains, flushes, checkpoints) or an error
/// stops it.
pub async fn run(
    kafka: &KafkaConnection,
    clickhouse: &Connection,
    config: &ProcessorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunSummary, ProcessorError> {
    config.validate()?;
    let metrics = ProcessorMetrics::new();
    let listener = tokio::net::TcpListener::bind(&config.metrics_listen)
        .await
        .map_err(|source| ProcessorError::Metrics { addr: config.metrics_listen.clone(), source })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let m = metrics.clone();
    let metrics_server =
        tokio::spawn(rainbow_runtime::serve::metrics(listener, move || m.render(), stopped(stop_rx.clone())));

    let warehouse = Warehouse::connect(clickhouse).await?;
    warehouse.apply_ddl(&clickhouse.database).await?;
    // One folder per instance: instances of a scaled-out group may share a checkpoint location.
    let folder = if config.instances > 1 {
        format!("{}-{}", config.group_id, config.partition)
    } else {
        config.group_id.clone()
    };
    let store = Arc::new(CheckpointStore::open(&config.checkpoint_url, &folder, config.checkpoints_kept)?);
    let checkpoint = store.latest().await?;
    if let Some(c) = &checkpoint {
        if c.partition != config.partition {
            return Err(ProcessorError::PartitionMismatch { found: c.partition, expected: config.partition });
        }
        tracing::info!(id = c.id, events = c.events, "resuming from checkpoint");
    } else {
        tracing::info!("no checkpoint: starting from the beginning of every topic");
    }
    let dead_letter_topic =
        TopicSpec { name: config.dead_letter_topic.clone(), partitions: 1, replication: -1 };
    kafka::ensure_topics(&kafka.client_config("processor-admin"), &[dead_letter_topic]).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (sink_tx, sink_rx) = mpsc::channel(256);
    let sink = ClickHouseSink::new(
        &warehouse,
        config.batch_rows,
        Duration::from_millis(config.batch_interval_ms),
        config.sink_attempts,
        metrics.clone(),
    );
    let mut sink_task = tokio::spawn(sink.run(sink_rx));
    let (done_tx, done_rx) = oneshot::channel();
    let thread = {
        let (kafka, config, metrics, stop, store) =
            (kafka.clone(), config.clone(), metrics.clone(), stop.clone(), store.clone());
        let rt = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("rainbow-processor".into())
            .spawn(move || {
                let result = Pipeline::start(&kafka, &config, checkpoint, sink_tx, store, rt, metrics, stop)
                    .and_then(Pipeline::run);
                let _ = done_tx.send(result);
            })
            .map_err(|e| ProcessorError::Pipeline(e.to_string()))?
    };
    metrics.running.set(1);
    tokio::pin!(shutdown);
    let mut done_rx = done_rx;
    let outcome = tokio::select! {
        _ = &mut shutdown => {
            tracing::info!("stopping: draining, flushing to ClickHouse, writing a checkpoint");
            stop.store(true, Ordering::SeqCst);
            (&mut done_rx).await
        }
        r = &mut done_rx => r,
        s = &mut sink_task => {
            // The sink stopped on its own: an error (the pipeline notices its closed channel).
            stop.store(true, Ordering::SeqCst);
            let _ = (&mut done_rx).await;
            let _ = thread.join();
            metrics.running.set(0);
            let _ = stop_tx.send(true);
            return Err(match s {
                Ok(Err(e)) => e,
                Ok(Ok(())) => ProcessorError::Pipeline("the sink stopped".into()),
                Err(e) => ProcessorError::Pipeline(e.to_string()),
            });
        }
    };
    let _ = thread.join();
    metrics.running.set(0);
    let result = match outcome {
        Ok(r) => r,
        Err(_) => Err(ProcessorError::Pipeline("the pipeline thread panicked".into())),
    };
    // The pipeline dropped its sender: the sink writes what is left and ends.
    let sink_result = sink_task.await;
    let _ = stop_tx.send(true);
    let _ = metrics_server.await;
    match (result, sink_result) {
        (Err(ProcessorError::Pipeline(_)), Ok(Err(e))) => Err(e),
        (Ok(summary), Ok(Ok(()))) => Ok(summary),
        (Ok(_), Ok(Err(e))) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(ProcessorError::Pipeline(e.to_string())),
    }
}

/// Of every topic's partitions, those this instance reads: all of the dimension topics', and of
/// the fact topics (orders, orderdetails) the partitions `p % instances == instance`. Fails when
/// the fact topics have different partition counts or fewer partitions than instances.
pub fn owned_partitions(
    all: Vec<(Table, String, i32)>,
    instances: i32,
    instance: i32,
) -> Result<Vec<(Table, String, i32)>, ProcessorError> {
    let is_fact = |t: Table| matches!(t, Table::Orders | Table::Orderdetails);
    let mut counts: Vec<(String, i32)> = Vec::new();
    for (_, topic, _) in all.iter().filter(|(t, _, _)| is_fact(*t)) {
        match counts.iter_mut().find(|(name, _)| name == topic) {
            Some((_, n)) => *n += 1,
            None => counts.push((topic.clone(), 1)),
        }
    }
    let describe = || counts.iter().map(|(t, n)| format!("{t} has {n}")).collect::<Vec<_>>().join(", ");
    if counts.windows(2).any(|w| w[0].1 != w[1].1) || counts.iter().any(|(_, n)| *n < instances) {
        return Err(ProcessorError::Instances { instances, reason: describe() });
    }
    Ok(all.into_iter().filter(|(t, _, p)| !is_fact(*t) || p % instances == instance).collect())
}

struct InputMeta {
    topic: String,
    partition: i32,
    table: Table,
    paused: bool,
    /// `events_in_total{table}` of this input's table, resolved once (not per event).
    events_in: prometheus::IntCounter,
}

struct Pipeline {
    config: ProcessorConfig,
    consumer: Arc<BaseConsumer>,
    dead_letters: BaseProducer,
    merger: Merger<ChangeEvent>,
    core: Core,
    inputs: Vec<InputMeta>,
    /// Per topic, the input index of each partition this instance reads (`None`: not read).
    by_topic: HashMap<String, Vec<Option<usize>>>,
    heartbeat_topic: String,
    sink: mpsc::Sender<SinkMessage>,
    store: Arc<CheckpointStore>,
    rt: tokio::runtime::Handle,
    metrics: ProcessorMetrics,
    stop: Arc<AtomicBool>,
    out: Outputs,
    next_checkpoint: Instant,
    next_metrics: Instant,
    checkpoint_id: u64,
    events: u64,
    /// Heartbeats read: (acknowledged LSN, heartbeat time ms), oldest first.
    heartbeats: VecDeque<(u64, i64)>,
    watermark_ms: i64,
    summary: RunSummary,
    crash_after: Option<CrashAfter>,
    /// `events_applied_total{table}` per table rank, resolved once.
    applied_by_table: Vec<prometheus::IntCounter>,
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    fn start(
        kafka: &KafkaConnection,
        config: &ProcessorConfig,
        checkpoint: Option<Checkpoint>,
        sink: mpsc::Sender<SinkMessage>,
        store: Arc<CheckpointStore>,
        rt: tokio::runtime::Handle,
        metrics: ProcessorMetrics,
        stop: Arc<AtomicBool>,
    ) -> Result<Pipeline, ProcessorError> {
        let consumer: BaseConsumer = kafka
            .client_config("processor")
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "50")
            .set("queued.max.messages.kbytes", "65536")
            .create()?;
        let dead_letters: BaseProducer = kafka
            .client_config("processor-dlq")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create()?;
        let heartbeat_topic = config.heartbeat_topic();
        let mut topics: Vec<(Table, String)> =
            Table::ALL.iter().map(|t| (*t, config.topic_for(t.name()))).collect();
        // Partitions of every topic; wait for the CDC to create them.
        let mut names: Vec<String> = topics.iter().map(|(_, t)| t.clone()).collect();
        names.push(heartbeat_topic.clone());
        let counts = kafka::wait_for_partitions(consumer.client(), &names, "the CDC", &stop, None)
            .map_err(|e| ProcessorError::MissingTopic { topic: e.topic })?;
        let heartbeat_partitions = counts[topics.len()];
        let mut partitions: Vec<(Table, String, i32)> = Vec::new();
        for ((table, topic), n) in topics.iter().zip(&counts) {
            partitions.extend((0..*n).map(|p| (*table, topic.clone(), p)));
        }
        topics.clear();
        if config.instances > 1 {
            partitions = owned_partitions(partitions, config.instances, config.partition)?;
        }
        let resume: HashMap<InputName, i64> =
            checkpoint.as_ref().map(|c| c.offsets.iter().cloned().collect()).unwrap_or_default();
        let mut merger = Merger::new(checkpoint.as_ref().and_then(|c| c.last_released));
        let mut tpl = TopicPartitionList::new();
        let mut inputs = Vec::new();
        let mut by_topic: HashMap<String, Vec<Option<usize>>> = HashMap::new();
        for (table, topic, partition) in partitions {
            let name = InputName { topic: topic.clone(), partition };
            let offset = resume.get(&name).copied();
            let index = merger.add_input(name, offset.unwrap_or(0));
            tpl.add_partition_offset(&topic, partition, offset.map_or(Offset::Beginning, Offset::Offset))?;
            let slots = by_topic.entry(topic.clone()).or_default();
            if slots.len() <= partition as usize {
                slots.resize(partition as usize + 1, None);
            }
            slots[partition as usize] = Some(index);
            let events_in = metrics.events_in.with_label_values(&[table.name()]);
            inputs.push(InputMeta { topic, partition, table, paused: false, events_in });
        }
        for p in 0..heartbeat_partitions {
            // Only heartbeats from now on matter: earlier ones say less.
            tpl.add_partition_offset(&heartbeat_topic, p, Offset::End)?;
        }
        consumer.assign(&tpl)?;
        tracing::info!(
            partitions = inputs.len(),
            resumed = checkpoint.is_some(),
            "consuming the CDC topics in commit order"
        );
        let crash_after = CrashAfter::from_env(FAILPOINT_VAR);
        let (core, checkpoint_id, events, resumed_from) = match checkpoint {
            Some(c) => (Core::from_state(config.partition, c.state), c.id, c.events, Some(c.id)),
            None => (Core::new(config.partition), 0, 0, None),
        };
        Ok(Pipeline {
            config: config.clone(),
            consumer: Arc::new(consumer),
            dead_letters,
            merger,
            core,
            inputs,
            by_topic,
            heartbeat_topic,
            sink,
            store,
            rt,
            stop,
            out: Outputs::default(),
            next_checkpoint: Instant::now() + Duration::from_millis(config.checkpoint_interval_ms),
            next_metrics: Instant::now(),
            checkpoint_id,
            events,
            heartbeats: VecDeque::new(),
            watermark_ms: 0,
            summary: RunSummary { resumed_from, ..RunSummary::default() },
            crash_after,
            applied_by_table: Table::ALL
                .iter()
                .map(|t| metrics.events_applied.with_label_values(&[t.name()]))
                .collect(),
            metrics,
        })
    }

    fn run(mut self) -> Result<RunSummary, ProcessorError> {
        let mut poll_errors = 0u64;
        let consumer = self.consumer.clone();
        let mut next_lag = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            let mut timeout = Duration::from_millis(100);
            for _ in 0..5_000 {
                let Some(result) = consumer.poll(timeout) else { break };
                timeout = Duration::ZERO;
                match result {
                    Ok(m) => {
                        if m.topic() == self.heartbeat_topic {
                            self.heartbeat(&m)?;
                        } else {
                            self.record(m.topic(), m.partition(), m.offset(), m.key(), m.payload())?;
                        }
                    }
                    Err(e) => {
                        poll_errors += 1;
                        if poll_errors.is_power_of_two() {
                            tracing::warn!(error = %e, count = poll_errors, "Kafka consumer error");
                        }
                    }
                }
            }
            self.drain()?;
            self.flow_control()?;
            if Instant::now() >= self.next_metrics {
                self.update_metrics();
            }
            if Instant::now() >= next_lag {
                // Every 5 s; after a failed read (topics just created), again in 1 s.
                let every = if self.update_lag() { 5 } else { 1 };
                next_lag = Instant::now() + Duration::from_secs(every);
            }
            if Instant::now() >= self.next_checkpoint {
                self.checkpoint()?;
            }
        }
        self.drain()?;
        self.checkpoint()?;
        self.update_metrics();
        Ok(self.summary)
    }

    /// A heartbeat: every input consumed up to its current end offset has nothing before the
    /// heartbeat's acknowledged LSN left to deliver.
    fn heartbeat(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) -> Result<(), ProcessorError> {
        let acked = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == wire::HEARTBEAT_ACKED_LSN_HEADER)
                .and_then(|h| wire::parse_acked_header(h.value?))
        });
        let Some(acked) = acked else { return Ok(()) };
        let acked = acked.0;
        let at = Position { commit: acked, change: 0, table: 0 };
        let ts_ms = m.payload().and_then(wire::heartbeat_ts_ms).unwrap_or(0);
        let behind: Vec<usize> = (0..self.inputs.len())
            .filter(|&i| self.merger.input_frontier(i).is_none_or(|f| f < at))
            .collect();
        if !behind.is_empty() {
            let ends = self.end_offsets(&behind, Duration::from_secs(5))?;
            for (i, high) in behind.into_iter().zip(ends) {
                self.merger.mark(i, high, at);
            }
        }
        self.heartbeats.push_back((acked, ts_ms));
        if self.heartbeats.len() > 1_000 {
            self.heartbeats.pop_front();
        }
        Ok(())
    }

    fn record(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(), ProcessorError> {
        let Some(input) = self.by_topic.get(topic).and_then(|v| v.get(partition as usize).copied().flatten())
        else {
            return Ok(()); // a partition added after start: picked up at the next restart
        };
        match decode(value) {
            Ok(Some(event)) => {
                let table = self.inputs[input].table;
                if event.table() != table {
                    let reason =
                        format!("event of table {} on the topic of {}", event.table().name(), table.name());
                    self.park("decode", input, offset, key, value, &reason)?;
                    self.merger.skip(input, offset);
                    return Ok(());
                }
                self.inputs[input].events_in.inc();
                if self.merger.push(input, offset, event.position, event) == Pushed::Duplicate {
                    self.metrics.duplicates.inc();
                    self.summary.duplicates += 1;
                }
            }
            Ok(None) => self.merger.skip(input, offset),
            Err(e) => {
                self.park("decode", input, offset, key, value, &e.to_string())?;
                self.merger.skip(input, offset);
            }
        }
        Ok(())
    }

    /// Sends a record to the dead-letter topic with why and where it came from.
    fn park(
        &mut self,
        stage: &'static str,
        input: usize,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        reason: &str,
    ) -> Result<(), ProcessorError> {
        let meta = &self.inputs[input];
        DeadLettered { stage, topic: &meta.topic, partition: meta.partition, offset, reason }
            .emit(&self.metrics);
        self.summary.dead_letters += 1;
        let (partition, offset_s) = (meta.partition.to_string(), offset.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header { key: "rainbow.dlq.reason", value: Some(reason) })
            .insert(Header { key: "rainbow.dlq.stage", value: Some(stage) })
            .insert(Header { key: "rainbow.dlq.topic", value: Some(meta.topic.as_str()) })
            .insert(Header { key: "rainbow.dlq.partition", value: Some(partition.as_str()) })
            .insert(Header { key: "rainbow.dlq.offset", value: Some(offset_s.as_str()) });
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&self.config.dead_letter_topic).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        let mut record = record;
        loop {
            match self.dead_letters.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    self.dead_letters.poll(Duration::from_millis(10));
                    record = r;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        self.dead_letters.poll(Duration::ZERO);
        Ok(())
    }

    /// Releases what every input has passed to the core, in commit order, and hands the rows to
    /// the sink.
    fn drain(&mut self) -> Result<(), ProcessorError> {
        while let Some((input, event)) = self.merger.pop() {
            match self.core.apply(&event, &mut self.out) {
                Ok(()) => {
                    self.events += 1;
                    self.summary.events_applied += 1;
                    self.watermark_ms = self.watermark_ms.max(event.ts_ms);
                    self.applied_by_table[usize::from(event.position.table)].inc();
                    if let Some(crash) = &self.crash_after {
                        crash.check(self.summary.events_applied);
                    }
                }
                Err(rejected) => {
                    let value = serde_json::to_vec(&event).unwrap_or_default();
                    self.park("core", input, -1, None, Some(&value), &rejected.to_string())?;
                }
            }
        }
        self.core.request_seal();
        if let Some(frontier) = self.merger.frontier() {
            self.core.seal_before(frontier, &mut self.out);
            while let Some(&(lsn, ts)) = self.heartbeats.front() {
                if lsn > frontier.commit {
                    break;
                }
                self.watermark_ms = self.watermark_ms.max(ts);
                self.heartbeats.pop_front();
            }
        }
        if !self.out.is_empty() {
            let rows = std::mem::take(&mut self.out);
            self.sink
                .blocking_send(SinkMessage::Rows(Box::new(rows)))
                .map_err(|_| ProcessorError::Pipeline("the ClickHouse sink stopped".into()))?;
        }
        Ok(())
    }

    /// Pauses inputs whose queue is full (unless the merge waits on them), resumes the others.
    fn flow_control(&mut self) -> Result<(), ProcessorError> {
        let max = self.config.max_queued_per_input;
        for i in 0..self.inputs.len() {
            let queued = self.merger.queued(i);
            let blocking = self.merger.is_blocking(i);
            let meta = &mut self.inputs[i];
            let pause = !meta.paused && queued > max && !blocking;
            let resume = meta.paused && (queued < max / 2 || blocking);
            if pause || resume {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&meta.topic, meta.partition);
                if pause {
                    self.consumer.pause(&tpl)?;
                } else {
                    self.consumer.resume(&tpl)?;
                }
                meta.paused = pause;
            }
        }
        Ok(())
    }

    fn update_metrics(&mut self) {
        self.next_metrics = Instant::now() + Duration::from_secs(1);
        self.metrics.queued.set(self.merger.queued_total() as i64);
        self.metrics.paused.set(self.inputs.iter().filter(|m| m.paused).count() as i64);
        if self.watermark_ms > 0 {
            let now = chrono::Utc::now().timestamp_millis();
            self.metrics.watermark_delay.set(((now - self.watermark_ms).max(0)) as f64 / 1000.0);
        }
        let size = self.core.size();
        self.metrics.state_versions.set(size.dimension_versions as i64);
        self.metrics.state_orders.set(size.orders as i64);
        self.metrics.state_lines.set(size.order_lines as i64);
        self.metrics.state_groups.set(size.aggregate_groups as i64);
    }

    /// The current end offsets (high watermarks) of `inputs`, in their order, read from the
    /// brokers in one ListOffsets round trip per leader: a per-partition query each costs a round
    /// trip queued behind the consumer's fetches, which stalled the loop with 30 partitions.
    fn end_offsets(&self, inputs: &[usize], timeout: Duration) -> Result<Vec<i64>, ProcessorError> {
        let partitions: Vec<(&str, i32)> =
            inputs.iter().map(|&i| (self.inputs[i].topic.as_str(), self.inputs[i].partition)).collect();
        Ok(kafka::end_offsets(&self.consumer, &partitions, timeout)?)
    }

    /// Consumer lag per partition, from the brokers' high watermarks. Whether they were read.
    fn update_lag(&self) -> bool {
        let all: Vec<usize> = (0..self.inputs.len()).collect();
        match self.end_offsets(&all, Duration::from_secs(2)) {
            Ok(ends) => {
                for (i, high) in ends.into_iter().enumerate() {
                    let meta = &self.inputs[i];
                    let lag = (high - self.merger.next_offset(i)).max(0);
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[&meta.topic, &meta.partition.to_string()])
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

    /// Flushes dead letters and the sink, then writes the state and input positions.
    fn checkpoint(&mut self) -> Result<(), ProcessorError> {
        let started = Instant::now();
        self.next_checkpoint = started + Duration::from_millis(self.config.checkpoint_interval_ms);
        self.dead_letters.flush(Duration::from_secs(30))?;
        let (tx, rx) = oneshot::channel();
        self.sink
            .blocking_send(SinkMessage::Flush(tx))
            .map_err(|_| ProcessorError::Pipeline("the ClickHouse sink stopped".into()))?;
        match rx.blocking_recv() {
            Ok(Ok(())) => {}
            _ => return Err(ProcessorError::Pipeline("the ClickHouse sink failed".into())),
        }
        let offsets = self.merger.resume_offsets();
        let id = self.checkpoint_id + 1;
        let ckpt = CheckpointRef {
            id,
            partition: self.config.partition,
            state: self.core.state(),
            last_released: self.merger.last_released(),
            offsets: offsets.clone(),
            events: self.events,
        };
        let bytes = ckpt.encode().map_err(|e| ProcessorError::Checkpoint {
            url: self.config.checkpoint_url.clone(),
            reason: e.to_string(),
        })?;
        let size = bytes.len();
        let store = self.store.clone();
        let result = self.rt.block_on(async move { store.save_encoded(id, bytes).await });
        if let Err(e) = result {
            self.metrics.checkpoint_errors.inc();
            return Err(e);
        }
        self.checkpoint_id = id;
        self.summary.checkpoints += 1;
        CheckpointWritten { id, bytes: size, duration: started.elapsed(), events: self.events }
            .emit(&self.metrics);
        // For lag monitoring only: restarts resume from the checkpoint.
        let mut tpl = TopicPartitionList::new();
        for (name, offset) in offsets {
            tpl.add_partition_offset(&name.topic, name.partition, Offset::Offset(offset))?;
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "committing offsets to the consumer group failed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(fact_partitions: i32) -> Vec<(Table, String, i32)> {
        let mut all = Vec::new();
        for (table, n) in
            [(Table::Products, 3), (Table::Orders, fact_partitions), (Table::Orderdetails, fact_partitions)]
        {
            all.extend((0..n).map(|p| (table, table.name().to_string(), p)));
        }
        all
    }

    #[test]
    fn instances_split_the_fact_partitions_and_share_the_dimensions() {
        let all = topics(3);
        let mut facts_seen = Vec::new();
        for instance in 0..2 {
            let owned = owned_partitions(all.clone(), 2, instance).unwrap();
            let dims: Vec<i32> =
                owned.iter().filter(|(t, _, _)| *t == Table::Products).map(|x| x.2).collect();
            assert_eq!(dims, [0, 1, 2], "every instance reads every dimension partition");
            let orders: Vec<i32> =
                owned.iter().filter(|(t, _, _)| *t == Table::Orders).map(|x| x.2).collect();
            let lines: Vec<i32> =
                owned.iter().filter(|(t, _, _)| *t == Table::Orderdetails).map(|x| x.2).collect();
            assert_eq!(orders, lines, "an order and its lines go to the same instance");
            facts_seen.extend(orders);
        }
        facts_seen.sort();
        assert_eq!(facts_seen, [0, 1, 2], "each fact partition is read by exactly one instance");
    }

    #[test]
    fn too_few_or_unequal_fact_partitions_are_refused() {
        let err = owned_partitions(topics(1), 2, 0).unwrap_err().to_string();
        assert!(err.contains("processor.instances = 2") && err.contains("orders has 1"), "{err}");
        let mut all = topics(3);
        all.retain(|(t, _, p)| !(*t == Table::Orderdetails && *p == 2));
        let err = owned_partitions(all, 2, 1).unwrap_err().to_string();
        assert!(err.contains("orderdetails has 2"), "{err}");
    }
}
