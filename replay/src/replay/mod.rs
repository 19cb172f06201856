//! `rainbow replay`: the master dataset through the processor's core into Parquet (backfill).
//!
//! Contract: the replay is the processor's engine ([`rainbow_processor::engine`]), the very loop
//! and core `rainbow process` runs, with an archive source ([`source`]), a Parquet sink
//! ([`sink`]) and a rejection file ([`rejections`]), so for the same input the collapsed output
//! equals what streaming wrote to ClickHouse (the Kappa invariant). Every segment up to the last selected day is
//! read, from the beginning of the archive: days before the selection only build state, events
//! of the selected days also produce output rows. Output: per warehouse table,
//! `<out>/<table>/part-NNNNN.parquet`, the table as ReplacingMergeTree `FINAL` sees it (per key
//! the row with the highest version), sorted by the table's key; the same archive and
//! selection give byte-identical files.
//!
//! Threads: one reader thread per archived partition fetches its segments in offset order and
//! decodes them (Parquet, then the Debezium JSON) while the calling thread runs the engine; the
//! core runs on the calling thread only, so the order of application is the merge's alone.
//!
//! Memory: one segment per input partition is open at a time, and per input at most
//! `read_batch_rows` records wait in the merge plus one decoded batch in the reader's channel.
//! The collapsed output holds at most `spill_rows` rows in memory; beyond that it goes to sorted
//! runs in the output store ([`crate::spill`]), merged chunk by chunk when the tables are
//! written (at most `rows_per_file` rows of a table are encoded at a time). What remains grows
//! with the input: the core's state, bounded by keys (dimension versions, order lines, groups),
//! not by events.
//!
//! Resumable: the engine's checkpoint (state, merge position, input offsets, the output buffer
//! and the number of runs spilled, the rejections) is written to `<out>/_replay/checkpoints/`
//! every `checkpoint_every_events` and on interrupt; a rerun of the same command resumes from it.
//! The checkpoint and the runs are deleted once the output is complete;
//! `<out>/_replay/summary.json` then describes the run.

pub mod rejections;
pub mod sink;
pub mod source;
mod spill;

use crate::config::ReplayConfig;
use crate::error::ReplayError;
use rainbow_archive::ArchiveConfig;
use rainbow_iceberg::ChangelogTable;
use rainbow_processor::checkpoint::CheckpointStore;
use rainbow_processor::engine::{Engine, Every, Finished, Options, Seal};
use rainbow_processor::event::Table;
use rainbow_processor::merge::InputName;
use rainbow_processor::metrics::ProcessorMetrics;
use rainbow_runtime::store::Store;
use rainbow_schemas::shape::checks::{self, Batches};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

pub use rejections::Rejection;

/// Where the engine's checkpoints go, relative to the output.
const CHECKPOINTS: &str = "_replay/checkpoints";
const SUMMARY: &str = "_replay/summary.json";
/// Environment variable of the failpoint `crash_after_events=N` (tests): abort the process once
/// N events have been applied in this run.
pub const FAILPOINT_VAR: &str = "RAINBOW_REPLAY_FAILPOINT";

/// Which days' events produce output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Days {
    All,
    /// Inclusive, `YYYY-MM-DD`.
    Range {
        from: String,
        to: String,
    },
    List(BTreeSet<String>),
}

impl Days {
    fn selects(&self, day: &str) -> bool {
        match self {
            Days::All => true,
            Days::Range { from, to } => from.as_str() <= day && day <= to.as_str(),
            Days::List(days) => days.contains(day),
        }
    }

    /// Segments of later days are not read at all.
    fn last(&self) -> Option<&str> {
        match self {
            Days::All => None,
            Days::Range { to, .. } => Some(to),
            Days::List(days) => days.iter().next_back().map(String::as_str),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Days::All => "all days".into(),
            Days::Range { from, to } => format!("{from} .. {to}"),
            Days::List(d) => d.iter().cloned().collect::<Vec<_>>().join(","),
        }
    }
}

/// What to replay and where to.
#[derive(Debug, Clone)]
pub struct ReplayArgs {
    pub archive_url: String,
    pub out_url: String,
    pub days: Days,
    /// The archived topics' naming (the archiver's).
    pub naming: ArchiveConfig,
    pub config: ReplayConfig,
    /// Draw a progress line on stderr.
    pub progress: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaySummary {
    pub days: String,
    /// Data files of the changelog tables read.
    pub files: usize,
    pub records_read: u64,
    pub events_applied: u64,
    pub events_in_selection: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Records decoded from their raw envelope, not from typed columns (see
    /// [`rainbow_processor::event::typed`]).
    #[serde(default)]
    pub records_from_envelopes: u64,
    /// Events applied before this run (from a checkpoint).
    pub resumed_at: Option<u64>,
    /// (table, rows, files).
    pub tables: Vec<(String, usize, usize)>,
}

/// Runs a replay on the calling thread (blocking; store calls go through `rt`). Returns
/// [`ReplayError::Interrupted`] after writing a checkpoint when `stop` is set.
pub fn run(
    args: &ReplayArgs,
    rt: &tokio::runtime::Handle,
    stop: &AtomicBool,
) -> Result<ReplaySummary, ReplayError> {
    args.config.validate()?;
    let archive = Store::open(&args.archive_url)?;
    let out = Store::open(&args.out_url)?;

    // The selected data files, per partition, from the changelog tables.
    let lake = rt.block_on(rainbow_iceberg::Lake::open(&args.naming.lake(&archive)?))?;
    let mut partitions: BTreeMap<InputName, source::Partition> = BTreeMap::new();
    for (table, topic) in Table::ALL.iter().zip(args.naming.topics()) {
        let name = args.naming.table_of(&topic);
        let Some(changelog) = rt.block_on(ChangelogTable::load(&lake, &name, &topic))? else { continue };
        let changelog = Arc::new(changelog);
        for f in rt.block_on(changelog.files())? {
            let day = f.day.map(|d| rainbow_schemas::time::day_of_ms(i64::from(d) * 86_400_000));
            if args.days.last().is_some_and(|last| day.as_deref().is_none_or(|d| d > last)) {
                continue;
            }
            let input = InputName { topic: topic.clone(), partition: f.partition };
            partitions
                .entry(input.clone())
                .or_insert_with(|| source::Partition {
                    name: input,
                    table: *table,
                    changelog: changelog.clone(),
                    files: Vec::new(),
                })
                .files
                .push(f);
        }
    }
    let files: usize = partitions.values().map(|p| p.files.len()).sum();
    if files == 0 {
        return Err(ReplayError::NothingToReplay {
            url: args.archive_url.clone(),
            range: args.days.describe(),
        });
    }
    let fingerprint = format!(
        "archive={};days={};topics={:?}",
        args.archive_url,
        args.days.describe(),
        args.naming.topics()
    );
    tracing::info!(
        files,
        partitions = partitions.len(),
        days = %args.days.describe(),
        archive = %args.archive_url,
        out = %args.out_url,
        "replaying"
    );

    let started = Instant::now();
    let c = &args.config;
    let source = source::ArchiveSource::new(
        archive,
        rt.clone(),
        partitions.into_values().collect(),
        args.days.clone(),
        c.read_batch_rows,
        args.progress,
    );
    let from_envelopes = source.from_envelopes.clone();
    let sink = sink::ParquetSink::new(out.clone(), rt.clone(), c.spill_rows, c.rows_per_file);
    let rejections = rejections::RejectionFile::new(out.clone(), rt.clone());
    let options = Options {
        partition: 0,
        fingerprint,
        seal: Seal::AtEnd,
        checkpoint_every: Every::Events(c.checkpoint_every_events),
        failpoint: FAILPOINT_VAR,
    };
    let store = CheckpointStore::new(out.clone(), CHECKPOINTS, 0);
    let engine = Engine::open(source, sink, rejections, options, store, rt.clone(), ProcessorMetrics::new())?;
    let (engine, written, rejected) = match engine.run(stop)? {
        Finished::Ended(ended) => ended,
        Finished::Stopped(s) => {
            tracing::info!(
                events = s.totals.events,
                "interrupted: checkpoint written; rerun the same command to resume"
            );
            return Err(ReplayError::Interrupted);
        }
    };
    let t = &engine.totals;
    let summary = ReplaySummary {
        days: args.days.describe(),
        files,
        records_read: t.records,
        events_applied: t.events,
        events_in_selection: t.emitted,
        duplicates: t.duplicates,
        rejected,
        records_from_envelopes: from_envelopes.load(std::sync::atomic::Ordering::Relaxed),
        resumed_at: engine.resumed.map(|(_, events)| events),
        tables: written,
    };
    if c.iceberg {
        write_iceberg(&out, rt, c, &summary)?;
    }
    let json = serde_json::to_vec_pretty(&summary).expect("summary serialises");
    rt.block_on(out.put(SUMMARY, json))?;
    tracing::info!(
        events = engine.this_run.events,
        secs = started.elapsed().as_secs_f64(),
        "replay complete"
    );
    Ok(summary)
}

/// Every output table as an Iceberg table of `config.namespace` (see [`ReplayConfig::iceberg`]),
/// its snapshot summary naming the run.
fn write_iceberg(
    out: &Store,
    rt: &tokio::runtime::Handle,
    config: &ReplayConfig,
    summary: &ReplaySummary,
) -> Result<(), ReplayError> {
    let lake = rainbow_iceberg::LakeConfig::under(
        out,
        config.catalog_url.as_deref(),
        config.warehouse_url.as_deref(),
        &config.namespace,
        Default::default(),
    )
    .ok_or(rainbow_schemas::setting::InvalidSetting {
        key: "replay.catalog_url",
        value: String::new(),
        expected: "set: the output is an object store, which has no embedded catalog; a REST catalog's \
                   URL, or sqlite:<local path>",
    })?;
    let lake = rt.block_on(rainbow_iceberg::Lake::open(&lake))?;
    let properties = std::collections::HashMap::from([
        ("rainbow.replay.days".to_string(), summary.days.clone()),
        ("rainbow.replay.records".to_string(), summary.records_read.to_string()),
        ("rainbow.replay.events".to_string(), summary.events_applied.to_string()),
    ]);
    for (table, _, _) in &summary.tables {
        let batches: Vec<_> = read_table(out, rt, table)?.into_iter().collect();
        let rows =
            rt.block_on(rainbow_iceberg::output::replace_table(&lake, table, &batches, properties.clone()))?;
        tracing::info!(table, rows, catalog = %lake.url, namespace = %config.namespace, "replayed table written as an Iceberg table");
    }
    Ok(())
}

/// Reads a table of a replay's output back as one batch (tests, `rainbow check`): every part,
/// in order. `None` when the output has no such table.
pub fn read_table(
    out: &Store,
    rt: &tokio::runtime::Handle,
    name: &str,
) -> Result<Option<arrow::array::RecordBatch>, ReplayError> {
    let mut schema = None;
    let mut batches = Vec::new();
    for (path, _) in rt.block_on(out.list(name))? {
        let data = rt.block_on(out.get(&path))?;
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)?;
        schema.get_or_insert_with(|| builder.schema().clone());
        for b in builder.build()? {
            batches.push(b?);
        }
    }
    match schema {
        None => Ok(None),
        Some(schema) => Ok(Some(arrow::compute::concat_batches(&schema, &batches)?)),
    }
}

/// The tables the data-quality checks read ([`rainbow_schemas::shape::checks`]), from a replay's
/// output.
pub fn read_for_checks(out: &Store, rt: &tokio::runtime::Handle) -> Result<Batches, ReplayError> {
    let mut w = Batches::new();
    for t in checks::checked_tables() {
        let batch = read_table(out, rt, t.name)?
            .ok_or_else(|| ReplayError::NotAReplay { url: out.url.clone(), table: t.name })?;
        w.insert(t.name, batch);
    }
    Ok(w)
}
