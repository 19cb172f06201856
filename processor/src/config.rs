//! `[processor]` settings: serde defaults, validated at start, overridable by environment
//! (`RAINBOW_PROCESSOR__<KEY>`, handled by the `rainbow` binary).

use rainbow_schemas::wire::{check_consumer_naming, is_topic_name, TopicNaming};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use rainbow_schemas::setting::{check, InvalidSetting};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Kafka consumer group: offsets are committed there after each checkpoint, for lag
    /// monitoring (the checkpoint, not the group, is where a restart resumes).
    pub group_id: String,
    /// Topic naming of the CDC: `<topic_prefix>.<schema>.<table>` unless `topic_map` renames a
    /// table's topic. Unset: those of the `[cdc]` section (the `rainbow` binary fills them in),
    /// else `rainbow` and no renames.
    pub topic_prefix: Option<String>,
    pub schema: String,
    pub topic_map: Option<BTreeMap<String, String>>,
    /// This instance's number, `0 .. instances`, stamped on its aggregate rows (the views sum
    /// them). With several instances it also picks the fact topics' partitions this one reads.
    pub partition: i32,
    /// How many processor instances split the work. Instance `partition` reads the partitions
    /// `p` of the fact topics (orders, orderdetails) with `p % instances == partition`, and every
    /// partition of the dimension topics (global tables: each instance keeps them whole and writes
    /// the same dimension rows, which ClickHouse collapses). Needs the CDC's routing of orders and
    /// their lines by order id (`cdc.partition_by`, the default) and at least `instances`
    /// partitions in both fact topics, with equal counts.
    pub instances: i32,
    /// The sink writes a batch when it holds this many rows ...
    pub batch_rows: usize,
    /// ... and otherwise as soon as rows are released, but at most once per this interval (a
    /// quiet pipeline shows a change at once; a busy one writes once per interval, which bounds
    /// the parts ClickHouse makes and merges).
    pub batch_interval_ms: u64,
    /// Where checkpoints go: a directory or an object-store URL (`file://`, `s3://`, `gs://`,
    /// `az://`; credentials from the environment, as for the archive). Default
    /// `.rainbow/processor/checkpoints`; the `rainbow` binary puts it under its state root
    /// instead, `$RAINBOW_HOME/processor/checkpoints` when `RAINBOW_HOME` is set
    /// (`rainbow::config::state_root`).
    pub checkpoint_url: String,
    /// A local directory for the orders the processor moves out of memory (a folder per instance,
    /// named like its checkpoints' folder). Its files go with the checkpoints that name them, to
    /// `checkpoint_url`, and are fetched back from there at a start. Default
    /// `.rainbow/processor/state`, or `$RAINBOW_HOME/processor/state`, like `checkpoint_url`.
    pub state_dir: String,
    /// Orders (with their lines) kept in memory: beyond this number, the older half is written to
    /// `state_dir` and read back when a change of one of them arrives, and so are the dimension
    /// versions only older orders join, so that memory stays flat however many orders and
    /// versions the source accumulates. 0 keeps everything in memory (what a checkpoint has on disk
    /// already stays there, and is read).
    pub hot_orders: usize,
    pub checkpoint_interval_ms: u64,
    /// Checkpoints kept besides the latest (older ones are deleted).
    pub checkpoints_kept: usize,
    /// Topic for events that cannot be processed, with the reason in headers.
    pub dead_letter_topic: String,
    pub metrics_listen: String,
    /// Events buffered per input partition before it is paused (memory bound of the merge).
    pub max_queued_per_input: usize,
    /// Attempts of a ClickHouse insert that the server refuses (an unknown table, a type error)
    /// before the processor stops. Outages are retried for as long as they last.
    pub sink_attempts: u32,
    /// How long one ClickHouse insert may take before it counts as failed (a hung server).
    pub sink_timeout_ms: u64,
    /// Whether to go on when records were removed from a topic before the processor read them
    /// (retention, a recreated topic): counted in `offset_gap_records_total` and alerted. Off:
    /// the processor stops and says so, since the warehouse would miss those changes.
    pub allow_offset_gap: bool,
    /// On a stop (SIGTERM, Ctrl-C), how long the processor may read on to apply and write
    /// everything its topics held at that moment (the CDC's last heartbeat included) before its
    /// last checkpoint; 0 stops at once (the rest is read at the next start).
    pub drain_on_stop_ms: u64,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            group_id: "rainbow-processor".into(),
            topic_prefix: None,
            schema: "public".into(),
            topic_map: None,
            partition: 0,
            instances: 1,
            batch_rows: 10_000,
            batch_interval_ms: 200,
            checkpoint_url: ".rainbow/processor/checkpoints".into(),
            state_dir: ".rainbow/processor/state".into(),
            hot_orders: 50_000,
            checkpoint_interval_ms: 10_000,
            checkpoints_kept: 2,
            dead_letter_topic: "rainbow.processor.dead_letter".into(),
            metrics_listen: "127.0.0.1:9102".into(),
            max_queued_per_input: 20_000,
            sink_attempts: 6,
            sink_timeout_ms: 30_000,
            allow_offset_gap: false,
            drain_on_stop_ms: 10_000,
        }
    }
}

impl ProcessorConfig {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check(
            !self.group_id.trim().is_empty(),
            "processor.group_id",
            &self.group_id,
            "a consumer group name",
        )?;
        check_consumer_naming(
            ["processor.topic_prefix", "processor.schema", "processor.topic_map"],
            self.topic_prefix.as_deref(),
            &self.schema,
            self.topic_map.as_ref(),
        )?;
        check((1..=1024).contains(&self.instances), "processor.instances", self.instances, "1 ..= 1024")?;
        check(
            (0..self.instances).contains(&self.partition),
            "processor.partition",
            self.partition,
            "an instance number, 0 ..= processor.instances - 1",
        )?;
        check(
            (1..=1_000_000).contains(&self.batch_rows),
            "processor.batch_rows",
            self.batch_rows,
            "1 ..= 1000000 rows",
        )?;
        check(
            (10..=600_000).contains(&self.batch_interval_ms),
            "processor.batch_interval_ms",
            self.batch_interval_ms,
            "10 ..= 600000 ms",
        )?;
        check(
            !self.checkpoint_url.trim().is_empty(),
            "processor.checkpoint_url",
            &self.checkpoint_url,
            "a directory or an object-store URL (file://, s3://, gs://, az://)",
        )?;
        check(
            !self.state_dir.trim().is_empty() && !self.state_dir.contains("://"),
            "processor.state_dir",
            &self.state_dir,
            "a local directory",
        )?;
        check(
            self.drain_on_stop_ms <= 600_000,
            "processor.drain_on_stop_ms",
            self.drain_on_stop_ms,
            "0 (stop at once) ..= 600000 ms",
        )?;
        check(
            self.checkpoint_interval_ms >= 100,
            "processor.checkpoint_interval_ms",
            self.checkpoint_interval_ms,
            "at least 100 ms",
        )?;
        check(
            is_topic_name(&self.dead_letter_topic),
            "processor.dead_letter_topic",
            &self.dead_letter_topic,
            "a Kafka topic name",
        )?;
        check(
            self.metrics_listen.parse::<std::net::SocketAddr>().is_ok(),
            "processor.metrics_listen",
            &self.metrics_listen,
            "host:port",
        )?;
        check(
            self.max_queued_per_input >= 100,
            "processor.max_queued_per_input",
            self.max_queued_per_input,
            "at least 100 events",
        )?;
        check(self.sink_attempts >= 1, "processor.sink_attempts", self.sink_attempts, "at least 1")?;
        check(
            (1_000..=600_000).contains(&self.sink_timeout_ms),
            "processor.sink_timeout_ms",
            self.sink_timeout_ms,
            "1000 ..= 600000 ms",
        )?;
        Ok(())
    }

    /// The CDC's topic naming (the wire contract's one implementation of it).
    pub fn naming(&self) -> TopicNaming {
        TopicNaming::of_consumer(self.topic_prefix.as_deref(), self.topic_map.as_ref())
    }

    /// The topic of a source table.
    pub fn topic_for(&self, table: &str) -> String {
        self.naming().table_topic(&self.schema, table)
    }

    /// The CDC's heartbeat topic.
    pub fn heartbeat_topic(&self) -> String {
        self.naming().heartbeat_topic()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        ProcessorConfig::default().validate().unwrap();
        let c = ProcessorConfig { batch_rows: 0, ..ProcessorConfig::default() };
        assert_eq!(c.validate().unwrap_err().key, "processor.batch_rows");
        let c = ProcessorConfig {
            topic_map: Some([("coupons".into(), "x".into())].into()),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "processor.topic_map");
        let c = ProcessorConfig {
            topic_map: Some([("orders".into(), "orders".into())].into()),
            ..Default::default()
        };
        assert_eq!(c.topic_for("orders"), "orders");
        assert_eq!(c.topic_for("brands"), "rainbow.public.brands");
    }
}
