//! Errors of the replay.

use rainbow_runtime::store::StoreError;

/// What went wrong, with the object, URL or setting it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("object store {url}: {reason}")]
    Store { url: String, reason: String },
    #[error("unsupported object store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(transparent)]
    Archive(#[from] rainbow_archive::ArchiveError),
    #[error(transparent)]
    Lake(#[from] rainbow_iceberg::LakeError),
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("segment {path}: {reason}")]
    Segment { path: String, reason: String },
    #[error(transparent)]
    Setting(#[from] rainbow_schemas::setting::InvalidSetting),
    #[error("the {0} writer panicked")]
    Writer(&'static str),
    #[error(transparent)]
    Shape(#[from] rainbow_schemas::shape::arrow::ShapeError),
    #[error("replay checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    #[error(transparent)]
    Engine(#[from] rainbow_processor::engine::EngineError),
    #[error("spilled replay output {path}: {reason}")]
    Spill { path: String, reason: String },
    #[error(
        "the archive at {url} holds no record for the requested days ({range}) in its Iceberg changelog \
         tables (an archive from before the tables: `rainbow archive` builds them from its segments at start)"
    )]
    NothingToReplay { url: String, range: String },
    #[error("{url} has no {table}/ (is it the --out of a rainbow replay?)")]
    NotAReplay { url: String, table: &'static str },
    #[error("interrupted")]
    Interrupted,
    #[error(
        "replay.shards = {shards}, but the archive's fact topics have {partitions} partitions: a shard \
         reads fact partitions p with p % shards == its number, so at most {partitions} shards"
    )]
    TooManyShards { shards: usize, partitions: usize },
    #[error(
        "replay.shards = {shards} with a list of days with gaps ({days}): such a list is replayed by \
         one shard (after a gap, an aggregate group's row is its total at the end of the last \
         selected day that changed it, which the shards' partial sums at the end cannot give); \
         replay it with --shards 1 and replay.processes = 1, or replay a range (--from/--to), \
         which is sharded"
    )]
    ShardedSelection { shards: usize, days: String },
    #[error(
        "shards {missing} of {shards} have no complete output in {out} after {waited_secs} s: run the \
         replay's processes (replay.process 0 ..= replay.processes - 1) first, or combine with a \
         longer --wait"
    )]
    ShardsMissing { out: String, missing: String, shards: usize, waited_secs: u64 },
    #[error(
        "shard {shard}'s output is of another replay ({found}; this combine is of {expected}): combine \
         with the same command (archive, days, replay.shards, replay.processes) that ran the shards, or \
         use another --out"
    )]
    ShardOfAnotherReplay { shard: usize, found: String, expected: String },
}

impl From<StoreError> for ReplayError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Failed { url, reason } => ReplayError::Store { url, reason },
            StoreError::BadUrl { url, reason } => ReplayError::BadUrl { url, reason },
        }
    }
}

impl ReplayError {
    /// The error of a failed read of data file `path`, for `map_err`.
    pub(crate) fn segment(path: &str) -> impl Fn(&dyn std::fmt::Display) -> ReplayError + '_ {
        move |e| ReplayError::Segment { path: path.to_string(), reason: e.to_string() }
    }
}
