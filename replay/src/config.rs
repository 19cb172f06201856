//! `[archive]` and `[replay]` settings: serde defaults, validated at start, overridable by
//! environment (`RAINBOW_ARCHIVE__<KEY>`, `RAINBOW_REPLAY__<KEY>`, handled by the `rainbow`
//! binary). The master dataset lives at `storage.url` (see the root configuration).

use rainbow_processor::config::{check, InvalidSetting};
use rainbow_processor::ProcessorConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// The archiver's own consumer group: offsets are committed there once the segment holding
    /// them is durable (for lag monitoring; restarts resume after the highest archived offset).
    pub group_id: String,
    /// Topic naming, as the processor's: unset means that of `[cdc]`.
    pub topic_prefix: Option<String>,
    pub schema: String,
    pub topic_map: Option<BTreeMap<String, String>>,
    /// A segment is closed when it holds this many records ...
    pub segment_max_records: usize,
    /// ... or this many bytes of keys and values ...
    pub segment_max_bytes: usize,
    /// ... or its first record waited this long (bounds how stale the archive is).
    pub segment_max_age_ms: u64,
    pub metrics_listen: String,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            group_id: "rainbow-archiver".into(),
            topic_prefix: None,
            schema: "public".into(),
            topic_map: None,
            segment_max_records: 500_000,
            segment_max_bytes: 64 << 20,
            segment_max_age_ms: 60_000,
            metrics_listen: "127.0.0.1:9103".into(),
        }
    }
}

impl ArchiveConfig {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check(!self.group_id.trim().is_empty(), "archive.group_id", &self.group_id, "a consumer group name")?;
        self.naming().validate().map_err(|e| InvalidSetting {
            key: match e.key {
                "processor.topic_prefix" => "archive.topic_prefix",
                "processor.schema" => "archive.schema",
                "processor.topic_map" => "archive.topic_map",
                other => other,
            },
            ..e
        })?;
        check(
            (1..=50_000_000).contains(&self.segment_max_records),
            "archive.segment_max_records",
            self.segment_max_records,
            "1 ..= 50000000 records",
        )?;
        check(
            (1024..=(1 << 31)).contains(&self.segment_max_bytes),
            "archive.segment_max_bytes",
            self.segment_max_bytes,
            "1 KiB ..= 2 GiB",
        )?;
        check(
            (100..=86_400_000).contains(&self.segment_max_age_ms),
            "archive.segment_max_age_ms",
            self.segment_max_age_ms,
            "100 ms ..= 1 day",
        )?;
        check(
            self.metrics_listen.parse::<std::net::SocketAddr>().is_ok(),
            "archive.metrics_listen",
            &self.metrics_listen,
            "host:port",
        )
    }

    /// The CDC topic naming, through the processor's settings (one implementation of it).
    pub fn naming(&self) -> ProcessorConfig {
        ProcessorConfig {
            topic_prefix: self.topic_prefix.clone(),
            schema: self.schema.clone(),
            topic_map: self.topic_map.clone(),
            ..ProcessorConfig::default()
        }
    }

    /// The archived topics: one per captured table, in `Table::ALL` order.
    pub fn topics(&self) -> Vec<String> {
        let naming = self.naming();
        rainbow_processor::event::Table::ALL.iter().map(|t| naming.topic_for(t.name())).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// A resumable checkpoint is written after this many events (and at the end).
    pub checkpoint_every_events: u64,
    /// Output Parquet files hold at most this many rows (a table is split into parts).
    pub rows_per_file: usize,
    /// Records read from a segment at a time, per input.
    pub read_batch_rows: usize,
    /// Collapsed output rows held in memory; beyond that they are spilled to the output store
    /// as a sorted run (`<out>/_replay/runs/`) and merged when the tables are written.
    pub spill_rows: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            checkpoint_every_events: 2_000_000,
            rows_per_file: 1_000_000,
            read_batch_rows: 4096,
            spill_rows: 250_000,
        }
    }
}

impl ReplayConfig {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check(
            self.checkpoint_every_events >= 1000,
            "replay.checkpoint_every_events",
            self.checkpoint_every_events,
            "at least 1000 events",
        )?;
        check(self.rows_per_file >= 1000, "replay.rows_per_file", self.rows_per_file, "at least 1000 rows")?;
        check(self.spill_rows >= 1, "replay.spill_rows", self.spill_rows, "at least 1 row")?;
        check(
            (1..=1_000_000).contains(&self.read_batch_rows),
            "replay.read_batch_rows",
            self.read_batch_rows,
            "1 ..= 1000000",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        ArchiveConfig::default().validate().unwrap();
        ReplayConfig::default().validate().unwrap();
        let c = ArchiveConfig { segment_max_age_ms: 5, ..Default::default() };
        assert_eq!(c.validate().unwrap_err().key, "archive.segment_max_age_ms");
        let c = ArchiveConfig { topic_prefix: Some("bad prefix".into()), ..Default::default() };
        assert_eq!(c.validate().unwrap_err().key, "archive.topic_prefix");
        let c = ReplayConfig { rows_per_file: 1, ..Default::default() };
        assert_eq!(c.validate().unwrap_err().key, "replay.rows_per_file");
        assert_eq!(ArchiveConfig::default().topics()[7], "rainbow.public.orders");
    }
}
