//! `[replay]` settings: serde defaults, validated at start, overridable by environment
//! (`RAINBOW_REPLAY__<KEY>`, handled by the `rainbow` binary). The archive's topic naming is the
//! archiver's (`[archive]`, see `rainbow_archive::ArchiveConfig`).

use rainbow_schemas::setting::{check, InvalidSetting};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Where the Parquet tables go when `rainbow replay --out` is not given: a directory or an
    /// object-store URL. The `rainbow` binary puts it under its state root (`<root>/replay`).
    pub out_url: String,
    /// A resumable checkpoint is written after this many events (and at the end).
    pub checkpoint_every_events: u64,
    /// Output Parquet files hold at most this many rows (a table is split into parts).
    pub rows_per_file: usize,
    /// Records read from a segment at a time, per input. Each input of each shard holds up to
    /// three such batches (being decoded, in its channel, in the merge): 4,096 took about 50 MiB
    /// more than 512 at the seed's volume, for no speed.
    pub read_batch_rows: usize,
    /// Collapsed output rows held in memory; beyond that they are spilled to the output store
    /// as a sorted run (`<out>/_replay/shards/<shard>/runs/`) and merged when the tables are
    /// written. Per shard; 100,000 rows are about 25 MiB of heap at the seed's shape.
    pub spill_rows: usize,
    /// Also write every output table as an Iceberg table (replacing the table of that name),
    /// for loading and comparing with standard tools (the Kappa swap). `rainbow replay --iceberg`.
    pub iceberg: bool,
    /// The catalog of those tables: `sqlite:<path>` or a REST catalog's URL. Unset:
    /// `sqlite:<out>/iceberg/catalog.db` (a local output; an object store needs one named).
    pub catalog_url: Option<String>,
    /// Where their files go. Unset: `<out>/iceberg`.
    pub warehouse_url: Option<String>,
    /// Their namespace.
    pub namespace: String,
    /// Shards of the replay: each runs its own core over every dimension partition and its
    /// share of the fact partitions (`p % shards`), and their outputs combine into the tables a
    /// single core writes. 0: one per core (at most the fact topics' partitions), or
    /// `processes` when that is above 1; a list of days with gaps runs 1. At most the fact topics'
    /// partitions.
    pub shards: usize,
    /// Processes that share the shards (`rainbow replay --processes`, a Kubernetes indexed Job):
    /// process `process` runs the shards `s % processes == process` and leaves their outputs for
    /// `rainbow replay --combine`.
    pub processes: usize,
    /// This process's number, 0 ..= processes - 1 (`RAINBOW_REPLAY__PROCESS`: a Job's completion
    /// index).
    pub process: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            out_url: ".rainbow/replay".into(),
            checkpoint_every_events: 2_000_000,
            rows_per_file: 1_000_000,
            read_batch_rows: 512,
            spill_rows: 100_000,
            iceberg: false,
            catalog_url: None,
            warehouse_url: None,
            namespace: "replay".into(),
            shards: 0,
            processes: 1,
            process: 0,
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
        check((1..=4096).contains(&self.processes), "replay.processes", self.processes, "1 ..= 4096")?;
        check(self.process < 4096, "replay.process", self.process, "0 ..= 4095")?;
        check(self.shards <= 4096, "replay.shards", self.shards, "0 (automatic) ..= 4096")?;
        check(
            (1..=1_000_000).contains(&self.read_batch_rows),
            "replay.read_batch_rows",
            self.read_batch_rows,
            "1 ..= 1000000",
        )
    }
}

impl ReplayConfig {
    /// How the settings split the replay, checked together (each may come from another place:
    /// the file, the environment, the command line): the process is one of the processes, and
    /// each process has a shard at least.
    pub fn check_split(&self) -> Result<(), InvalidSetting> {
        check(self.process < self.processes, "replay.process", self.process, "0 ..= replay.processes - 1")?;
        check(
            self.shards == 0 || self.shards >= self.processes,
            "replay.shards",
            self.shards,
            "0 (automatic), or at least replay.processes",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        ReplayConfig::default().validate().unwrap();
        let c = ReplayConfig { rows_per_file: 1, ..Default::default() };
        assert_eq!(c.validate().unwrap_err().key, "replay.rows_per_file");
        let c = ReplayConfig { processes: 3, process: 3, ..Default::default() };
        assert_eq!(c.check_split().unwrap_err().key, "replay.process");
        let c = ReplayConfig { processes: 3, shards: 2, ..Default::default() };
        assert_eq!(c.check_split().unwrap_err().key, "replay.shards");
        ReplayConfig { processes: 3, process: 2, shards: 6, ..Default::default() }.check_split().unwrap();
    }
}
