//! The archiver's Prometheus metrics (`GET /metrics` on `archive.metrics_listen`), all prefixed
//! `rainbow_archive_`, and the telemetry event that logs and counts a segment: the records of one
//! partition committed in one append to their changelog table:
//! * `records_total{topic}`, `bytes_total{topic}`: records and Parquet bytes made durable;
//! * `segments_total{topic}`, `segment_write_duration_seconds` (histogram: writing the data files
//!   and committing);
//! * `existing_segments_total`: segments found already committed (a re-delivery after a crash);
//! * `consumer_lag_messages{topic,partition}`: high watermark minus the next offset to archive;
//! * `buffered_records`: records not durable yet (in open segments, or handed to a writer);
//! * `last_segment_timestamp_seconds`; `running`: 1 while the archiver runs;
//! * `iceberg_untyped_records_total{table,reason}`: records kept raw without typed columns
//!   (`tombstone`, `not_a_change_event`); `iceberg_untyped_values_total{table}`: values kept in
//!   the raw envelope only; `iceberg_columns_added_total{table}` and
//!   `iceberg_columns_promoted_total{table}`: schema evolutions;
//! * `retries_total{dependency}`, `dependency_down_seconds{dependency}`, `restarts_total`: the
//!   faults ridden out; `started_timestamp_seconds` (`rainbow_runtime::resilience`).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use rainbow_runtime::resilience::{Dependency, Resilience};
use std::time::Duration;

#[derive(Clone)]
pub struct ArchiveMetrics {
    registry: Registry,
    pub records: IntCounterVec,
    pub bytes: IntCounterVec,
    pub segments: IntCounterVec,
    pub existing: IntCounter,
    pub write_duration: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub offset_gap_records: IntCounterVec,
    pub buffered: IntGauge,
    pub last_segment: IntGauge,
    pub running: IntGauge,
    pub iceberg_untyped: IntCounterVec,
    pub iceberg_untyped_values: IntCounterVec,
    pub iceberg_columns_added: IntCounterVec,
    pub iceberg_columns_promoted: IntCounterVec,
    /// Retries, dependencies' down time, restarts, health.
    pub resilience: Resilience,
}

impl Default for ArchiveMetrics {
    fn default() -> Self {
        ArchiveMetrics::new()
    }
}

impl ArchiveMetrics {
    pub fn new() -> ArchiveMetrics {
        let registry = Registry::new_custom(Some("rainbow_archive".into()), None).expect("registry");
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry.register(Box::new(m.clone())).expect("unique metric");
                m
            }};
        }
        let by_table =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["table"]).expect("metric");
        let by_topic =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["topic"]).expect("metric");
        ArchiveMetrics {
            records: reg!(by_topic("records_total", "Records archived (committed to their changelog table)")),
            bytes: reg!(by_topic("bytes_total", "Parquet bytes of the changelog tables' data files written")),
            segments: reg!(by_topic("segments_total", "Segments committed (one partition's records in one append)")),
            existing: reg!(IntCounter::new(
                "existing_segments_total",
                "Segments whose records were all committed already (a re-delivery after a crash), left out"
            )
            .expect("metric")),
            write_duration: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "segment_write_duration_seconds",
                    "Writing one segment's data files and committing them to the changelog table"
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )
            .expect("metric")),
            consumer_lag: reg!(IntGaugeVec::new(
                Opts::new("consumer_lag_messages", "High watermark minus the next offset to archive"),
                &["topic", "partition"],
            )
            .expect("metric")),
            offset_gap_records: reg!(by_topic(
                "offset_gap_records_total",
                "Records removed from a topic before they were archived (with archive.allow_offset_gap)"
            )),
            buffered: reg!(IntGauge::new("buffered_records", "Records not durable yet: in open segments or being written").expect("metric")),
            last_segment: reg!(IntGauge::new(
                "last_segment_timestamp_seconds",
                "When the last segment was written (Unix seconds)"
            )
            .expect("metric")),
            running: reg!(IntGauge::new("running", "1 while the archiver runs").expect("metric")),
            iceberg_untyped: reg!(IntCounterVec::new(
                Opts::new(
                    "iceberg_untyped_records_total",
                    "Records kept in a changelog table without typed columns, by reason (tombstone, not_a_change_event)"
                ),
                &["table", "reason"],
            )
            .expect("metric")),
            iceberg_untyped_values: reg!(by_table(
                "iceberg_untyped_values_total",
                "Values kept in the raw envelope only: a source column's type changed beyond its Iceberg column's, or a value is not of its column's type"
            )),
            iceberg_columns_added: reg!(by_table(
                "iceberg_columns_added_total",
                "Source columns added to a changelog table's schema (Iceberg schema evolution)"
            )),
            iceberg_columns_promoted: reg!(by_table(
                "iceberg_columns_promoted_total",
                "Changelog table columns promoted to a wider type because their source column widened (Iceberg schema evolution)"
            )),
            resilience: {
                let r = Resilience::register(&registry);
                r.expect(&[Dependency::Kafka, Dependency::ObjectStore]);
                r
            },
            registry,
        }
    }

    pub fn render(&self) -> String {
        rainbow_runtime::serve::render(&self.registry)
    }
}

/// A segment became durable.
pub struct SegmentWritten<'a> {
    pub table: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    pub records: usize,
    pub bytes: usize,
    pub duration: Duration,
    pub existed: bool,
}

impl SegmentWritten<'_> {
    pub fn emit(&self, m: &ArchiveMetrics) {
        if self.existed {
            m.existing.inc();
            tracing::warn!(
                table = self.table,
                partition = self.partition,
                first = self.first,
                last = self.last,
                "records already in the changelog table (a re-delivery after a crash): left out"
            );
        } else {
            m.records.with_label_values(&[self.topic]).inc_by(self.records as u64);
            m.bytes.with_label_values(&[self.topic]).inc_by(self.bytes as u64);
            m.segments.with_label_values(&[self.topic]).inc();
            m.write_duration.observe(self.duration.as_secs_f64());
            m.last_segment.set(chrono::Utc::now().timestamp());
            tracing::info!(
                table = self.table,
                partition = self.partition,
                first = self.first,
                last = self.last,
                records = self.records,
                bytes = self.bytes,
                ms = self.duration.as_millis() as u64,
                "segment written"
            );
        }
    }
}

/// What an append to a changelog table found in its records.
pub fn iceberg_appended(m: &ArchiveMetrics, table: &str, s: &rainbow_iceberg::AppendStats) {
    if s.records == 0 {
        return;
    }
    m.iceberg_untyped.with_label_values(&[table, "tombstone"]).inc_by(s.tombstones);
    m.iceberg_untyped.with_label_values(&[table, "not_a_change_event"]).inc_by(s.not_change_events);
    m.iceberg_columns_added.with_label_values(&[table]).inc_by(s.columns_added);
    m.iceberg_columns_promoted.with_label_values(&[table]).inc_by(s.columns_promoted);
    m.iceberg_untyped_values.with_label_values(&[table]).inc_by(s.untyped_values);
    tracing::debug!(table, records = s.records, files = s.files, bytes = s.bytes, "Iceberg append committed");
}
