//! `rainbow replay`: the master dataset through the processor's core into Parquet (backfill).
//!
//! Contract: the replay is the processor's engine ([`rainbow_processor::engine`]), the very loop
//! and core `rainbow process` runs, with an archive source ([`source`]), a Parquet sink
//! ([`sink`]) and a rejection file ([`rejections`]), so for the same input the collapsed output
//! equals what streaming wrote to ClickHouse (the Kappa invariant). Every data file up to the last
//! selected day is read, from the beginning of the archive: days before the selection only build
//! state, events of the selected days also produce output rows. Output: per warehouse table,
//! `<out>/<table>/part-NNNNN.parquet`, the table as ReplacingMergeTree `FINAL` sees it (per key
//! the row with the highest version), sorted by the table's key; the same archive and
//! selection give byte-identical files, whatever the number of shards.
//!
//! Shards ([`shards`]): a replay of every day runs `replay.shards` engines (default one per
//! core, at most the fact topics' partitions), each over every dimension partition and its share
//! of the fact partitions, as the streaming scale-out splits them; their outputs are combined
//! into the tables a single core writes. With `replay.processes` = N, process i runs its share
//! of the shards and leaves their outputs; the same command with `--combine` writes the tables.
//! A list of days with gaps (`--days`) runs one shard.
//!
//! Threads: per shard, one reader thread per archived partition fetches its data files in offset
//! order and decodes them while the shard's thread runs its engine; a shard's core runs on that
//! thread only, so its order of application is the merge's alone.
//!
//! Memory: one data file per input partition is open at a time, and per input at most three
//! batches of `read_batch_rows` decoded records: one waiting in the merge, one in the reader's
//! channel, one being decoded.
//! Each shard's collapsed output holds at most `spill_rows` rows in memory; beyond that it goes to
//! sorted runs in the output store ([`spill`]), merged chunk by chunk when the tables are
//! written (a table is encoded 8,192 rows at a time into its part). What remains grows
//! with the input: each shard's core state, bounded by keys (dimension versions, order lines,
//! groups), not by events; every shard holds the whole dimension state. Memory freed goes back
//! to the system within [`PURGE_DELAY_MS`] ([`run`] sets it for the process: with the
//! allocator's default of a second, what the readers' threads and the spilled buffers free
//! stayed resident, about 200 MiB more at the seed volume).
//!
//! Resumable: each shard's engine checkpoint (state, merge position, input offsets, the output
//! buffer and the number of runs spilled, the rejections) is written to
//! `<out>/_replay/shards/<shard>/checkpoints/` every `checkpoint_every_events` and on interrupt; a
//! rerun of the same command resumes from them. The shards' folders are deleted once the output
//! is complete; `<out>/_replay/summary.json` then describes the run.

pub mod rejections;
pub mod shards;
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
use shards::{Done, Plan, ShardSummary};
use spill::Output;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use rejections::Rejection;

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

    /// A list of days that leaves gaps between its first and last (not one stretch of
    /// consecutive days, which selects as a range does).
    fn has_gaps(&self) -> bool {
        let Days::List(days) = self else { return false };
        let number = |day: &str| {
            rainbow_schemas::time::parse_zoned(&format!("{day}T00:00:00Z")).map(|us| us / 86_400_000_000)
        };
        days.iter().zip(days.iter().skip(1)).any(|(a, b)| match (number(a), number(b)) {
            (Some(a), Some(b)) => b - a != 1,
            _ => true,
        })
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
    /// Combine the outputs of the shards that `replay.processes` processes left (the same
    /// replay's) into the tables, instead of replaying; waiting at most `wait` for shards that
    /// are not done yet.
    pub combine: Option<Duration>,
}

/// What a replay did. The counts are summed over its shards, and each shard reads and applies
/// every dimension record: with S shards, those count S times (`shards` has each shard's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaySummary {
    pub days: String,
    /// Data files of the changelog tables read.
    pub files: usize,
    /// Records in those files, each counted once (however many shards read it).
    #[serde(default)]
    pub archive_records: u64,
    pub records_read: u64,
    pub events_applied: u64,
    pub events_in_selection: u64,
    pub duplicates: u64,
    /// Records listed in `_rejected.jsonl` (once each).
    pub rejected: u64,
    /// Records decoded from their raw envelope, not from typed columns (see
    /// [`rainbow_processor::event::typed`]).
    #[serde(default)]
    pub records_from_envelopes: u64,
    /// Events applied before this run (from checkpoints).
    pub resumed_at: Option<u64>,
    /// (table, rows, files).
    pub tables: Vec<(String, usize, usize)>,
    #[serde(default)]
    pub shards: Vec<ShardSummary>,
}

impl ReplaySummary {
    fn of(days: &Days, (files, archive_records): (usize, u64), shards: Vec<ShardSummary>) -> ReplaySummary {
        let sum = |f: fn(&ShardSummary) -> u64| shards.iter().map(f).sum();
        let resumed: Vec<u64> = shards.iter().filter_map(|s| s.resumed_at).collect();
        ReplaySummary {
            days: days.describe(),
            files,
            archive_records,
            records_read: sum(|s| s.records_read),
            events_applied: sum(|s| s.events_applied),
            events_in_selection: sum(|s| s.events_in_selection),
            duplicates: sum(|s| s.duplicates),
            rejected: 0,
            records_from_envelopes: sum(|s| s.records_from_envelopes),
            resumed_at: (!resumed.is_empty()).then(|| resumed.iter().sum()),
            tables: Vec::new(),
            shards,
        }
    }
}

/// A shard's end: what it did, its output and its rejections.
struct ShardRun {
    summary: ShardSummary,
    output: Output,
    rejections: Vec<Rejection>,
}

/// How soon the replay's process returns freed memory to the system, in milliseconds.
pub const PURGE_DELAY_MS: u32 = 10;

/// Runs a replay (blocking; its shards run on threads of their own, store calls go through
/// `rt`). Returns [`ReplayError::Interrupted`] after writing checkpoints when `stop` is set.
/// Sets the process's purge delay to [`PURGE_DELAY_MS`].
pub fn run(
    args: &ReplayArgs,
    rt: &tokio::runtime::Handle,
    stop: &AtomicBool,
) -> Result<ReplaySummary, ReplayError> {
    args.config.validate()?;
    args.config.check_split()?;
    rainbow_runtime::memory::purge_freed_memory_after(PURGE_DELAY_MS);
    let out = Store::open(&args.out_url)?;
    let fingerprint = format!(
        "archive={};days={};topics={:?}",
        args.archive_url,
        args.days.describe(),
        args.naming.topics()
    );
    if let Some(wait) = args.combine {
        return combine(args, &out, rt, stop, &fingerprint, wait);
    }
    let archive = Store::open(&args.archive_url)?;

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
    let records: u64 = partitions.values().map(source::Partition::records).sum();
    if files == 0 {
        return Err(ReplayError::NothingToReplay {
            url: args.archive_url.clone(),
            range: args.days.describe(),
        });
    }
    let fact_partitions = partitions
        .values()
        .filter(|p| p.table.is_fact())
        .map(|p| p.name.partition as usize + 1)
        .max()
        .unwrap_or(1);
    let c = &args.config;
    let shards = match c.shards {
        0 if c.processes > 1 => c.processes,
        // A list of days with gaps: after a gap, a group's row is its total at the end of the
        // last selected day that changed it: one core (a range, or consecutive days, ends where
        // the reading does, so the shards' partial sums at the end complete it).
        0 if args.days.has_gaps() => 1,
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()).min(fact_partitions),
        n => n,
    };
    if shards > 1 && args.days.has_gaps() {
        return Err(ReplayError::ShardedSelection { shards, days: args.days.describe() });
    }
    if shards > fact_partitions {
        return Err(ReplayError::TooManyShards { shards, partitions: fact_partitions });
    }
    let plan = Plan::new(shards, c.processes, c.process);
    tracing::info!(
        files,
        partitions = partitions.len(),
        shards,
        this_process = ?plan.mine,
        days = %args.days.describe(),
        archive = %args.archive_url,
        out = %args.out_url,
        "replaying"
    );

    let started = Instant::now();
    let runs = run_shards(args, &archive, &out, rt, stop, &partitions, &plan, &fingerprint)?;
    tracing::info!(secs = started.elapsed().as_secs_f64(), "shards done");
    if c.processes > 1 {
        for r in &runs {
            let done = Done {
                shards,
                fingerprint: fingerprint.clone(),
                files: (files, records),
                runs: r.output.runs,
                summary: r.summary.clone(),
                rejections: r.rejections.clone(),
                aggregates: r.output.aggregates.clone(),
            };
            done.write(&out, rt)?;
        }
        tracing::info!(
            shards = ?plan.mine,
            of = shards,
            secs = started.elapsed().as_secs_f64(),
            "shard outputs written: the same command with --combine writes the tables once every process is done"
        );
        return Ok(ReplaySummary::of(
            &args.days,
            (files, records),
            runs.into_iter().map(|r| r.summary).collect(),
        ));
    }
    let summary = write_output(args, &out, rt, (files, records), runs)?;
    tracing::info!(secs = started.elapsed().as_secs_f64(), "replay complete");
    Ok(summary)
}

/// Runs this process's shards, each on a thread of its own. The first failure stops the others
/// (they write a checkpoint) and is returned.
#[allow(clippy::too_many_arguments)]
fn run_shards(
    args: &ReplayArgs,
    archive: &Store,
    out: &Store,
    rt: &tokio::runtime::Handle,
    stop: &AtomicBool,
    partitions: &BTreeMap<InputName, source::Partition>,
    plan: &Plan,
    fingerprint: &str,
) -> Result<Vec<ShardRun>, ReplayError> {
    // Each of this process's shards with its partitions.
    let mine: Vec<(usize, Vec<source::Partition>)> = plan
        .mine
        .iter()
        .map(|&s| {
            let read =
                |p: &&source::Partition| p.table.read_by(p.name.partition, plan.shards as i32, s as i32);
            (s, partitions.values().filter(read).cloned().collect())
        })
        .collect();
    let estimated: u64 = mine.iter().flat_map(|(_, ps)| ps).map(source::Partition::records).sum();
    let progress = Arc::new(source::Progress::new(args.progress, estimated, plan.mine.len()));
    let halt = AtomicBool::new(false);
    let running = AtomicUsize::new(plan.mine.len());
    std::thread::scope(|scope| {
        // The caller's stop reaches every shard; a failed shard stops the others.
        scope.spawn(|| {
            while running.load(Ordering::SeqCst) > 0 && !halt.load(Ordering::SeqCst) {
                if stop.load(Ordering::SeqCst) {
                    halt.store(true, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let threads: Vec<_> = mine
            .into_iter()
            .enumerate()
            .map(|(line, (shard, partitions))| {
                let (progress, halt, running) = (progress.clone(), &halt, &running);
                std::thread::Builder::new()
                    .name(format!("replay-shard-{shard}"))
                    .spawn_scoped(scope, move || {
                        let shard_plan = (shard, plan.shards, line);
                        let result = run_shard(
                            args,
                            archive,
                            out,
                            rt,
                            halt,
                            partitions,
                            shard_plan,
                            fingerprint,
                            progress,
                        );
                        if result.is_err() {
                            halt.store(true, Ordering::SeqCst);
                        }
                        running.fetch_sub(1, Ordering::SeqCst);
                        result
                    })
                    .map_err(|e| ReplayError::Segment { path: "shard thread".into(), reason: e.to_string() })
            })
            .collect();
        let mut runs = Vec::new();
        let mut failed: Option<ReplayError> = None;
        for thread in threads {
            let result = match thread {
                Ok(t) => t.join().unwrap_or(Err(ReplayError::Writer("replay shard"))),
                Err(e) => {
                    halt.store(true, Ordering::SeqCst);
                    running.fetch_sub(1, Ordering::SeqCst);
                    Err(e)
                }
            };
            match result {
                Ok(r) => runs.push(r),
                Err(ReplayError::Interrupted) => failed = failed.or(Some(ReplayError::Interrupted)),
                Err(e) if matches!(failed, None | Some(ReplayError::Interrupted)) => failed = Some(e),
                Err(e) => tracing::error!(error = %e, "another replay shard failed too"),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(runs),
        }
    })
}

/// One shard's engine over its partitions: (shard, shards, its progress line).
#[allow(clippy::too_many_arguments)]
fn run_shard(
    args: &ReplayArgs,
    archive: &Store,
    out: &Store,
    rt: &tokio::runtime::Handle,
    halt: &AtomicBool,
    partitions: Vec<source::Partition>,
    (shard, shards, line): (usize, usize, usize),
    fingerprint: &str,
    progress: Arc<source::Progress>,
) -> Result<ShardRun, ReplayError> {
    let c = &args.config;
    let persist = c.processes > 1;
    if persist {
        Done::remove(out, rt, shard)?;
    }
    let source = source::ArchiveSource::new(
        archive.clone(),
        rt.clone(),
        partitions,
        args.days.clone(),
        c.read_batch_rows,
        progress,
        line,
    );
    let from_envelopes = source.from_envelopes.clone();
    let dir = shards::dir(shard);
    // Every shard builds the same SCD2 dimension rows from the same events: shard 0 keeps them.
    // With a day range, each shard's aggregate groups' partial sums at the end complete the
    // groups another shard changed in the range.
    let partials = shards > 1 && args.days != Days::All;
    let sink = sink::ShardSink::new(
        out.clone(),
        rt.clone(),
        format!("{dir}/runs"),
        c.spill_rows,
        (persist, shard == 0, partials),
    );
    let handover = rejections::Handover::default();
    let rejections = rejections::RejectionFile::new(handover.clone());
    let options = Options {
        // Every shard stamps its aggregates as one core does: the combine adds them up.
        partition: 0,
        fingerprint: format!("{fingerprint};shard={shard}/{shards}"),
        seal: Seal::AtEnd,
        checkpoint_every: Every::Events(c.checkpoint_every_events),
        failpoint: FAILPOINT_VAR,
        // Every order in memory: the replay's state is transient, and its speed the point.
        cold: None,
    };
    let store = CheckpointStore::new(out.clone(), &format!("{dir}/checkpoints"), 0);
    let engine = Engine::open(source, sink, rejections, options, store, rt.clone(), ProcessorMetrics::new())?;
    let (engine, output, rejected) = match engine.run(halt)? {
        Finished::Ended(ended) => ended,
        Finished::Stopped(s) => {
            tracing::info!(
                shard,
                events = s.totals.events,
                "interrupted: checkpoint written; rerun the same command to resume"
            );
            return Err(ReplayError::Interrupted);
        }
    };
    let t = &engine.totals;
    let summary = ShardSummary {
        shard,
        records_read: t.records,
        events_applied: t.events,
        events_in_selection: t.emitted,
        duplicates: t.duplicates,
        rejected,
        records_from_envelopes: from_envelopes.load(Ordering::Relaxed),
        resumed_at: engine.resumed.map(|(_, events)| events),
    };
    let rejections = std::mem::take(&mut *handover.lock().expect("not poisoned"));
    Ok(ShardRun { summary, output, rejections })
}

/// `--combine`: waits (at most `wait`) until every shard of this replay is done, then writes
/// the tables from their outputs.
fn combine(
    args: &ReplayArgs,
    out: &Store,
    rt: &tokio::runtime::Handle,
    stop: &AtomicBool,
    fingerprint: &str,
    wait: Duration,
) -> Result<ReplaySummary, ReplayError> {
    let c = &args.config;
    let shards = if c.shards == 0 { c.processes } else { c.shards };
    let started = Instant::now();
    let mut reported = None;
    let dones = loop {
        let mut dones = Vec::new();
        let mut missing = Vec::new();
        for shard in 0..shards {
            match Done::read(out, rt, shard)? {
                Some(d) if d.shards != shards || d.fingerprint != fingerprint => {
                    return Err(ReplayError::ShardOfAnotherReplay {
                        shard,
                        found: format!("{} shards, {}", d.shards, d.fingerprint),
                        expected: format!("{shards} shards, {fingerprint}"),
                    })
                }
                Some(d) => dones.push(d),
                None => missing.push(shard),
            }
        }
        if missing.is_empty() {
            break dones;
        }
        if started.elapsed() >= wait {
            return Err(ReplayError::ShardsMissing {
                out: out.url.clone(),
                missing: missing.iter().map(usize::to_string).collect::<Vec<_>>().join(", "),
                shards,
                waited_secs: wait.as_secs(),
            });
        }
        if reported != Some(dones.len()) {
            tracing::info!(done = dones.len(), shards, "waiting for the replay's shards");
            reported = Some(dones.len());
        }
        let next = Instant::now() + Duration::from_secs(2);
        while Instant::now() < next {
            if stop.load(Ordering::SeqCst) {
                return Err(ReplayError::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let files = dones.first().map_or((0, 0), |d| d.files);
    let runs = dones
        .into_iter()
        .map(|d| ShardRun {
            output: Output {
                buffer: Default::default(),
                runs: d.runs,
                dir: format!("{}/runs", shards::dir(d.summary.shard)),
                aggregates: d.aggregates,
            },
            summary: d.summary,
            rejections: d.rejections,
        })
        .collect();
    let summary = write_output(args, out, rt, files, runs)?;
    tracing::info!(shards, secs = started.elapsed().as_secs_f64(), "shards combined: replay complete");
    Ok(summary)
}

/// Writes the tables from the shards' outputs, the rejections, the Iceberg copies if asked and
/// the summary; then removes the shards' folders.
fn write_output(
    args: &ReplayArgs,
    out: &Store,
    rt: &tokio::runtime::Handle,
    files: (usize, u64),
    runs: Vec<ShardRun>,
) -> Result<ReplaySummary, ReplayError> {
    let c = &args.config;
    let mut outputs = Vec::new();
    let mut lists = Vec::new();
    let mut shard_summaries = Vec::new();
    for r in runs {
        outputs.push(r.output);
        lists.push(r.rejections);
        shard_summaries.push(r.summary);
    }
    let mut summary = ReplaySummary::of(&args.days, files, shard_summaries);
    let started = Instant::now();
    summary.tables = sink::write_tables(out, rt, outputs, c.rows_per_file)?;
    tracing::info!(secs = started.elapsed().as_secs_f64(), "tables written");
    summary.rejected = rejections::write(out, rt, lists)?;
    if c.iceberg {
        write_iceberg(out, rt, c, &summary)?;
    }
    let json = serde_json::to_vec_pretty(&summary).expect("summary serialises");
    rt.block_on(out.put(SUMMARY, json))?;
    shards::clear(out, rt)?;
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
    each_batch(out, rt, name, 65_536, |b| {
        schema.get_or_insert_with(|| b.schema());
        batches.push(b);
        Ok::<(), ReplayError>(())
    })?;
    match schema {
        None => Ok(None),
        Some(schema) => Ok(Some(arrow::compute::concat_batches(&schema, &batches)?)),
    }
}

/// Hands `each` the record batches (of up to `batch_rows` rows; an empty one for a part without
/// rows) of table `name` of a replay's output in key order, part by part (one part's file in
/// memory at a time); none when there is no such table.
pub fn each_batch<E: From<ReplayError>>(
    out: &Store,
    rt: &tokio::runtime::Handle,
    name: &str,
    batch_rows: usize,
    mut each: impl FnMut(arrow::array::RecordBatch) -> Result<(), E>,
) -> Result<(), E> {
    let parts = rt.block_on(out.list(name)).map_err(ReplayError::from)?;
    for (path, _) in &parts {
        let data = rt.block_on(out.get(path)).map_err(ReplayError::from)?;
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)
            .map_err(ReplayError::from)?;
        let schema = builder.schema().clone();
        let mut any = false;
        for b in builder.with_batch_size(batch_rows).build().map_err(ReplayError::from)? {
            any = true;
            each(b.map_err(ReplayError::from)?)?;
        }
        if !any {
            // An empty table's part: its columns still.
            each(arrow::array::RecordBatch::new_empty(schema))?;
        }
    }
    Ok(())
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
