//! The reader's Prometheus metrics (served at `GET /metrics` on `cdc.metrics_listen`) and the
//! telemetry events that update them; each event struct both logs and counts.
//!
//! Metrics, all prefixed `rainbow_cdc_`:
//! * `events_total{table,op}` and `event_bytes_total{table}`: change events Kafka acknowledged
//!   (key + value bytes);
//! * `transactions_total`: source transactions whose every event Kafka acknowledged;
//! * `commit_to_ack_seconds`: from a transaction's commit in PostgreSQL to Kafka's acknowledgement
//!   of its last event;
//! * `confirmed_lsn` and `last_commit_timestamp_seconds`: the slot position confirmed to the
//!   server, and the commit time of the last acknowledged transaction;
//! * `slot_retained_wal_bytes` (WAL kept for the slot, from its restart position) and
//!   `slot_confirmed_lag_bytes` (WAL written since its confirmed position), sampled every status
//!   interval;
//! * `snapshot_rows_total{table}`, `snapshot_rows_estimated{table}` (from pg_class.reltuples),
//!   `snapshot_running`;
//! * `incremental_snapshot_rows_total{table}`, `incremental_snapshot_chunks_total{table,outcome}`,
//!   `incremental_snapshot_running`, `signals_total{type,outcome}` (on-demand snapshots);
//! * `kafka_delivery_errors_total`, `events_in_flight`;
//! * `last_heartbeat_timestamp_seconds`, `streaming` (1 while the replication stream is open);
//! * `retries_total{dependency}`, `dependency_down_seconds{dependency}`, `restarts_total`: the
//!   faults ridden out; `started_timestamp_seconds` (`rainbow_runtime::resilience`).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use rainbow_runtime::resilience::{Dependency, Resilience};
use std::time::Duration;

#[derive(Clone)]
pub struct CdcMetrics {
    registry: Registry,
    events: IntCounterVec,
    event_bytes: IntCounterVec,
    transactions: IntCounter,
    commit_to_ack: Histogram,
    confirmed_lsn: IntGauge,
    last_commit: IntGauge,
    pub slot_retained: IntGauge,
    pub slot_lag: IntGauge,
    snapshot_rows: IntCounterVec,
    pub snapshot_estimated: IntGaugeVec,
    pub snapshot_running: IntGauge,
    /// Incremental snapshots: rows sent, chunks by outcome, signals by outcome, running.
    pub incremental_rows: IntCounterVec,
    pub incremental_chunks: IntCounterVec,
    pub signals: IntCounterVec,
    pub incremental_running: IntGauge,
    delivery_errors: IntCounter,
    pub in_flight: IntGauge,
    last_heartbeat: IntGauge,
    pub streaming: IntGauge,
    /// Retries, dependencies' down time, restarts, health.
    pub resilience: Resilience,
}

/// Seconds from commit to acknowledgement: a few milliseconds when healthy, minutes when Kafka
/// is down or the reader catches up.
const LATENCY_BUCKETS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

impl Default for CdcMetrics {
    fn default() -> Self {
        CdcMetrics::new()
    }
}

impl CdcMetrics {
    pub fn new() -> CdcMetrics {
        let registry = Registry::new_custom(Some("rainbow_cdc".into()), None).expect("registry");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let m = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(m.clone())).expect("register");
            m
        };
        let gauge = |name: &str, help: &str| {
            let m = IntGauge::new(name, help).expect("metric");
            registry.register(Box::new(m.clone())).expect("register");
            m
        };
        let counter = |name: &str, help: &str| {
            let m = IntCounter::new(name, help).expect("metric");
            registry.register(Box::new(m.clone())).expect("register");
            m
        };
        let commit_to_ack = Histogram::with_opts(
            HistogramOpts::new(
                "commit_to_ack_seconds",
                "From a transaction's commit in PostgreSQL to Kafka acknowledging its last event",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("metric");
        registry.register(Box::new(commit_to_ack.clone())).expect("register");
        let snapshot_estimated = IntGaugeVec::new(
            Opts::new("snapshot_rows_estimated", "Rows the snapshot expects per table"),
            &["table"],
        )
        .expect("metric");
        registry.register(Box::new(snapshot_estimated.clone())).expect("register");
        CdcMetrics {
            events: counter_vec("events_total", "Change events acknowledged by Kafka", &["table", "op"]),
            event_bytes: counter_vec(
                "event_bytes_total",
                "Key and value bytes of acknowledged events",
                &["table"],
            ),
            transactions: counter("transactions_total", "Source transactions fully acknowledged by Kafka"),
            commit_to_ack,
            confirmed_lsn: gauge("confirmed_lsn", "WAL position confirmed to the replication slot"),
            last_commit: gauge(
                "last_commit_timestamp_seconds",
                "Commit time of the last transaction Kafka acknowledged (Unix seconds)",
            ),
            slot_retained: gauge(
                "slot_retained_wal_bytes",
                "WAL bytes the replication slot keeps (from restart_lsn)",
            ),
            slot_lag: gauge(
                "slot_confirmed_lag_bytes",
                "WAL bytes written since the slot's confirmed position",
            ),
            snapshot_rows: counter_vec(
                "snapshot_rows_total",
                "Rows the snapshot sent, per table",
                &["table"],
            ),
            snapshot_estimated,
            snapshot_running: gauge("snapshot_running", "1 while the initial snapshot runs"),
            incremental_rows: counter_vec(
                "incremental_snapshot_rows_total",
                "Rows incremental snapshots sent, per table",
                &["table"],
            ),
            incremental_chunks: counter_vec(
                "incremental_snapshot_chunks_total",
                "Chunks of incremental snapshots: sent, read_again (a commit not yet visible), \
                 failed (the table's snapshot was abandoned)",
                &["table", "outcome"],
            ),
            signals: counter_vec(
                "signals_total",
                "Rows of the signal table: accepted requests, rejected ones (see the log), ignored types",
                &["type", "outcome"],
            ),
            incremental_running: gauge(
                "incremental_snapshot_running",
                "1 while an incremental snapshot runs",
            ),
            delivery_errors: counter("kafka_delivery_errors_total", "Records Kafka failed to acknowledge"),
            in_flight: gauge("events_in_flight", "Records sent to Kafka and not acknowledged yet"),
            last_heartbeat: gauge(
                "last_heartbeat_timestamp_seconds",
                "When Kafka last acknowledged a heartbeat record (Unix seconds)",
            ),
            streaming: gauge("streaming", "1 while the replication stream is open"),
            resilience: {
                let r = Resilience::register(&registry);
                r.expect(&[Dependency::Postgres, Dependency::Kafka]);
                r
            },
            registry,
        }
    }

    pub fn render(&self) -> String {
        rainbow_runtime::serve::render(&self.registry)
    }

    pub fn record_event(&self, table: &str, op: &str, bytes: usize) {
        self.events.with_label_values(&[table, op]).inc();
        self.event_bytes.with_label_values(&[table]).inc_by(bytes as u64);
    }

    pub fn snapshot_row(&self, table: &str) {
        self.snapshot_rows.with_label_values(&[table]).inc();
    }
}

/// Every event of a transaction is in Kafka; the slot may move past it.
pub struct TransactionAcknowledged {
    pub end_lsn: rainbow_schemas::wire::Lsn,
    pub commit_time_us: i64,
    pub now_us: i64,
}

impl TransactionAcknowledged {
    pub fn emit(&self, m: &CdcMetrics) {
        let latency = Duration::from_micros((self.now_us - self.commit_time_us).max(0) as u64);
        m.transactions.inc();
        m.commit_to_ack.observe(latency.as_secs_f64());
        m.last_commit.set(self.commit_time_us / 1_000_000);
        tracing::trace!(end_lsn = %self.end_lsn, latency_ms = latency.as_millis() as u64, "transaction acknowledged");
    }
}

/// The slot was told a new confirmed position.
pub struct PositionConfirmed {
    pub lsn: rainbow_schemas::wire::Lsn,
}

impl PositionConfirmed {
    pub fn emit(&self, m: &CdcMetrics) {
        m.confirmed_lsn.set(self.lsn.0 as i64);
        tracing::debug!(lsn = %self.lsn, "confirmed to the replication slot");
    }
}

/// Kafka refused or timed out a record: the reader stops without confirming it.
pub struct DeliveryFailed<'a> {
    pub topic: &'a str,
    pub reason: &'a str,
}

impl DeliveryFailed<'_> {
    pub fn emit(&self, m: &CdcMetrics) {
        m.delivery_errors.inc();
        tracing::error!(topic = self.topic, reason = self.reason, "Kafka did not acknowledge a record");
    }
}

/// Kafka acknowledged a heartbeat record.
pub struct HeartbeatAcknowledged {
    pub now_ms: i64,
}

impl HeartbeatAcknowledged {
    pub fn emit(&self, m: &CdcMetrics) {
        m.last_heartbeat.set(self.now_ms / 1000);
        tracing::trace!("heartbeat acknowledged");
    }
}

/// A table's snapshot is complete.
pub struct SnapshotTableDone<'a> {
    pub table: &'a str,
    pub rows: u64,
    pub elapsed: Duration,
}

impl SnapshotTableDone<'_> {
    pub fn emit(&self) {
        tracing::info!(
            table = self.table,
            rows = self.rows,
            seconds = format!("{:.2}", self.elapsed.as_secs_f64()),
            "snapshot of table done"
        );
    }
}
