//! The processor's Prometheus metrics (`GET /metrics` on `processor.metrics_listen`) and the
//! telemetry events that update them; each event struct both logs and counts.
//!
//! Metrics, all prefixed `rainbow_processor_`:
//! * `events_in_total{table}`: change events decoded from Kafka; `events_applied_total{table}`:
//!   released to the core; `dropped_total{reason}`: events the merge dropped because their
//!   position is behind the last released one: `redelivery` (a streamed change sent again, as
//!   at-least-once delivery does after a restart) or `snapshot_after_stream` (a snapshot row
//!   behind changes already applied: the source's positions went back; the processor stops;
//!   alerted);
//! * `offset_gap_records_total{topic}`: records removed from a topic (retention, a recreated
//!   topic) before the processor read them, skipped with `processor.allow_offset_gap` (without
//!   it the processor stops); alerted;
//! * `rows_written_total{table}`: rows ClickHouse accepted, per output table;
//! * `dead_letters_total{reason}`: events parked in the dead-letter topic, by cause: before the
//!   core (malformed, unknown_table, unknown_op, schema_drift, bad_position, wrong_topic) or
//!   refused by it (unknown_order, unknown_product, unknown_promotion, amount, out_of_order,
//!   missing_row);
//! * `consumer_lag_messages{topic,partition}`: high watermark minus the next offset to consume;
//!   `queued_events`: events waiting in the merge; `paused_partitions`;
//! * `watermark_delay_seconds`: now minus the commit time up to which everything is processed
//!   (heartbeats keep it current when the source is idle; it grows when an input stalls);
//! * `checkpoint_duration_seconds` (histogram: asked to written; the engine goes on while the sink
//!   flushes, a forked child encodes the state and a task writes it), `checkpoint_pause_seconds`
//!   (histogram: the time it held up events), `checkpoint_bytes`,
//!   `last_checkpoint_timestamp_seconds`, `checkpoints_total`, `checkpoint_errors_total`;
//! * `state_dimension_versions`, `state_orders`, `state_order_lines`, `state_aggregate_groups`
//!   (in memory), `state_cold_orders` and `state_cold_versions` (entries of orders and of
//!   dimension versions written to `processor.state_dir`), `state_reads_total{kind}` (entries
//!   read back: `orders` when an order on disk changes, `versions` when a fact of an order older
//!   than those in memory joins a version on disk);
//! * `version_starts_moved_total`: dimension changes whose commit time was before the start of
//!   the version they close, so that the new version begins where the closed one began (which
//!   then lasts zero seconds) instead of at the commit: a change streamed right behind a
//!   snapshot's consistent point, whose rows carry the later time they were read, or commit times
//!   out of commit order;
//! * `sink_batch_rows` and `sink_flush_duration_seconds` (histograms), `sink_errors_total`;
//! * where an event's time goes, per stage (histograms; the CDC's `commit_to_ack_seconds` is the
//!   stage before): `merge_latency_seconds` (in Kafka → released by the merge, per event),
//!   `sink_latency_seconds` (released → acknowledged by ClickHouse, the oldest row of each
//!   write), `freshness_seconds` (commit in PostgreSQL of the newest change a write holds →
//!   ClickHouse acknowledged the write: how old the dashboards' newest figure is; alerted);
//! * `running`: 1 while the pipeline runs;
//! * `retries_total{dependency}`, `dependency_down_seconds{dependency}`, `restarts_total`: the
//!   faults ridden out; `started_timestamp_seconds` (`rainbow_runtime::resilience`).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use rainbow_runtime::resilience::{Dependency, Resilience};
use std::time::Duration;

#[derive(Clone)]
pub struct ProcessorMetrics {
    registry: Registry,
    pub events_in: IntCounterVec,
    pub events_applied: IntCounterVec,
    pub dropped: IntCounterVec,
    pub offset_gap_records: IntCounterVec,
    pub rows_written: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    pub queued: IntGauge,
    pub paused: IntGauge,
    pub watermark_delay: prometheus::Gauge,
    pub checkpoint_duration: Histogram,
    pub checkpoint_pause: Histogram,
    pub checkpoint_bytes: IntGauge,
    pub last_checkpoint: IntGauge,
    pub checkpoints: IntCounter,
    pub checkpoint_errors: IntCounter,
    pub state_versions: IntGauge,
    pub state_orders: IntGauge,
    pub state_lines: IntGauge,
    pub state_cold_orders: IntGauge,
    pub state_cold_versions: IntGauge,
    pub state_reads: IntCounterVec,
    pub state_groups: IntGauge,
    pub version_starts_moved: IntCounter,
    pub sink_batch_rows: Histogram,
    pub sink_flush: Histogram,
    pub merge_latency: Histogram,
    pub sink_latency: Histogram,
    pub freshness: Histogram,
    pub sink_errors: IntCounter,
    pub running: IntGauge,
    /// Retries, dependencies' down time, restarts, health.
    pub resilience: Resilience,
}

impl Default for ProcessorMetrics {
    fn default() -> Self {
        ProcessorMetrics::new()
    }
}

impl ProcessorMetrics {
    pub fn new() -> ProcessorMetrics {
        let registry = Registry::new_custom(Some("rainbow_processor".into()), None).expect("registry");
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric");
                registry.register(Box::new(m.clone())).expect("register");
                m
            }};
        }
        let by_table = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["table"]);
        let seconds = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
        let m = ProcessorMetrics {
            events_in: reg!(by_table("events_in_total", "Change events decoded from Kafka")),
            events_applied: reg!(by_table(
                "events_applied_total",
                "Change events released to the core in commit order"
            )),
            dropped: reg!(IntCounterVec::new(
                Opts::new("dropped_total", "Events dropped by the merge, behind the last released position"),
                &["reason"]
            )),
            rows_written: reg!(by_table("rows_written_total", "Rows ClickHouse accepted, per output table")),
            offset_gap_records: reg!(IntCounterVec::new(
                Opts::new(
                    "offset_gap_records_total",
                    "Records removed from a topic before they were read (with processor.allow_offset_gap)"
                ),
                &["topic"]
            )),
            dead_letters: reg!(IntCounterVec::new(
                Opts::new("dead_letters_total", "Events parked in the dead-letter topic"),
                &["reason"]
            )),
            consumer_lag: reg!(IntGaugeVec::new(
                Opts::new("consumer_lag_messages", "High watermark minus the next offset to consume"),
                &["topic", "partition"]
            )),
            queued: reg!(IntGauge::new(
                "queued_events",
                "Events waiting in the merge for every input to pass them"
            )),
            paused: reg!(IntGauge::new(
                "paused_partitions",
                "Input partitions paused because their queue is full"
            )),
            watermark_delay: reg!(prometheus::Gauge::new(
                "watermark_delay_seconds",
                "Now minus the source commit time up to which everything is processed"
            )),
            checkpoint_duration: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "checkpoint_duration_seconds",
                    "From the start of a checkpoint (sink flush asked, state encoded) until it is written"
                )
                .buckets(seconds.to_vec())
            )),
            checkpoint_pause: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "checkpoint_pause_seconds",
                    "How long a checkpoint held up the processing of events (forking the child that encodes \
                     the state; at stop, and where the process cannot fork, encoding and writing it and \
                     waiting for the sink too)"
                )
                .buckets(seconds.to_vec())
            )),
            checkpoint_bytes: reg!(IntGauge::new("checkpoint_bytes", "Size of the last checkpoint")),
            last_checkpoint: reg!(IntGauge::new(
                "last_checkpoint_timestamp_seconds",
                "When the last checkpoint was written (Unix time)"
            )),
            checkpoints: reg!(IntCounter::new("checkpoints_total", "Checkpoints written")),
            checkpoint_errors: reg!(IntCounter::new("checkpoint_errors_total", "Checkpoints that failed")),
            state_versions: reg!(IntGauge::new(
                "state_dimension_versions",
                "Dimension versions held by the core"
            )),
            state_orders: reg!(IntGauge::new("state_orders", "Orders held by the core in memory")),
            state_lines: reg!(IntGauge::new("state_order_lines", "Order lines held by the core in memory")),
            state_cold_orders: reg!(IntGauge::new(
                "state_cold_orders",
                "Entries of orders (with their lines) the core moved from memory to processor.state_dir"
            )),
            state_reads: reg!(IntCounterVec::new(
                Opts::new(
                    "state_reads_total",
                    "Entries read back from processor.state_dir: orders (with their lines), dimension versions"
                ),
                &["kind"]
            )),
            state_cold_versions: reg!(IntGauge::new(
                "state_cold_versions",
                "Entries of dimension versions the core moved from memory to processor.state_dir (a member's at one time)"
            )),
            state_groups: reg!(IntGauge::new("state_aggregate_groups", "Aggregate groups held by the core")),
            version_starts_moved: reg!(IntCounter::new(
                "version_starts_moved_total",
                "Dimension changes committed before the version they close began, whose new version \
                 begins where the closed one began instead"
            )),
            sink_batch_rows: reg!(Histogram::with_opts(
                HistogramOpts::new("sink_batch_rows", "Rows per ClickHouse write (all tables of one flush)")
                    .buckets(vec![1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0, 100_000.0])
            )),
            sink_flush: reg!(Histogram::with_opts(
                HistogramOpts::new("sink_flush_duration_seconds", "Time to write one batch to ClickHouse")
                    .buckets(seconds.to_vec())
            )),
            merge_latency: reg!(Histogram::with_opts(
                HistogramOpts::new("merge_latency_seconds", "From a record's append to Kafka to its release by the merge")
                    .buckets(LATENCY_BUCKETS.to_vec())
            )),
            sink_latency: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "sink_latency_seconds",
                    "From a row's release by the merge to ClickHouse acknowledging it (the oldest row of each write)"
                )
                .buckets(LATENCY_BUCKETS.to_vec())
            )),
            freshness: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "freshness_seconds",
                    "From the commit of the newest change a ClickHouse write holds to its acknowledgement"
                )
                .buckets(LATENCY_BUCKETS.to_vec())
            )),
            sink_errors: reg!(IntCounter::new(
                "sink_errors_total",
                "Failed ClickHouse writes (each attempt)"
            )),
            running: reg!(IntGauge::new("running", "1 while the pipeline runs")),
            resilience: {
                let r = Resilience::register(&registry);
                r.expect(&[Dependency::Kafka, Dependency::ClickHouse, Dependency::ObjectStore]);
                r
            },
            registry,
        };
        // Every reason's series from the start, at 0: the alert's increase() sees the first letter.
        for reason in ["redelivery", "snapshot_after_stream"] {
            m.dropped.with_label_values(&[reason]);
        }
        for reason in DEAD_LETTER_DECODE_CAUSES.iter().chain(&crate::core::Rejected::CAUSES) {
            m.dead_letters.with_label_values(&[reason]);
        }
        m
    }

    /// The sum of a counter over all its labels.
    pub fn total(counter: &IntCounterVec) -> u64 {
        use prometheus::core::Collector;
        counter
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    pub fn render(&self) -> String {
        rainbow_runtime::serve::render(&self.registry)
    }
}

/// The causes of records parked before the core: [`crate::event::DecodeError::cause`] and an
/// event on another table's topic.
pub const DEAD_LETTER_DECODE_CAUSES: [&str; 6] =
    ["malformed", "unknown_table", "unknown_op", "schema_drift", "bad_position", "wrong_topic"];

/// A record was parked in the dead letters (the dead-letter topic, or a replay's rejection file).
pub struct DeadLettered<'a> {
    pub stage: &'static str,
    pub cause: &'static str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub reason: &'a str,
}

impl DeadLettered<'_> {
    pub fn emit(&self, m: &ProcessorMetrics) {
        m.dead_letters.with_label_values(&[self.cause]).inc();
        tracing::warn!(
            stage = self.stage,
            cause = self.cause,
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            reason = self.reason,
            "event parked in the dead letters"
        );
    }
}

/// A checkpoint was written.
pub struct CheckpointWritten {
    pub id: u64,
    pub bytes: usize,
    pub duration: Duration,
    pub events: u64,
}

impl CheckpointWritten {
    pub fn emit(&self, m: &ProcessorMetrics) {
        m.checkpoints.inc();
        m.resilience.connected(Dependency::ObjectStore);
        m.checkpoint_bytes.set(self.bytes as i64);
        m.checkpoint_duration.observe(self.duration.as_secs_f64());
        m.last_checkpoint.set(chrono::Utc::now().timestamp());
        tracing::debug!(
            id = self.id,
            bytes = self.bytes,
            ms = self.duration.as_millis() as u64,
            events = self.events,
            "checkpoint written"
        );
    }
}

/// A batch reached ClickHouse.
pub struct BatchWritten {
    pub rows: usize,
    pub duration: Duration,
    /// Since the oldest row of the write was released by the merge.
    pub since_release: Option<Duration>,
    /// Since the commit of the newest change the write holds (wall clock).
    pub since_commit: Option<Duration>,
}

impl BatchWritten {
    pub fn emit(&self, m: &ProcessorMetrics) {
        m.sink_batch_rows.observe(self.rows as f64);
        m.sink_flush.observe(self.duration.as_secs_f64());
        if let Some(d) = self.since_release {
            m.sink_latency.observe(d.as_secs_f64());
        }
        if let Some(d) = self.since_commit {
            m.freshness.observe(d.as_secs_f64());
        }
        tracing::trace!(rows = self.rows, ms = self.duration.as_millis() as u64, "batch written");
    }
}

/// Buckets of the per-stage latencies: milliseconds when healthy, minutes behind an outage.
const LATENCY_BUCKETS: [f64; 17] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

/// A ClickHouse write failed: an outage (retried for as long as it lasts) or a refusal (retried
/// up to `sink_attempts`).
pub struct SinkFailed<'a> {
    pub table: &'a str,
    /// Refusals so far (0 for an outage).
    pub attempt: u32,
    pub transient: bool,
    pub error: &'a str,
}

impl SinkFailed<'_> {
    pub fn emit(&self, m: &ProcessorMetrics) {
        m.sink_errors.inc();
        tracing::warn!(
            table = self.table,
            refusals = self.attempt,
            outage = self.transient,
            error = self.error,
            "ClickHouse write failed; retrying"
        );
    }
}
