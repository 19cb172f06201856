//! The one loop of the processor, for streaming and replay alike: a [`Source`] delivers records,
//! the engine decodes nothing itself but merges them by source commit order ([`Merger`]), applies
//! them to the [`Core`], parks what cannot be used ([`DeadLetters`]), seals aggregates, hands the
//! rows to a [`Sink`], writes checkpoints and fires failpoints. `rainbow process` runs it with
//! a Kafka source, the ClickHouse sink and the dead-letter topic ([`crate::stream`]);
//! `rainbow replay` with an archive source, a Parquet sink and a rejection file.
//!
//! Guarantees, whatever the source and sink: events reach the core in commit order, each at most
//! once per run (re-deliveries below the last released position are dropped); a checkpoint is
//! written only after every row produced before it is durable in the sink and every record
//! parked before it is durable in the dead letters, so resuming from it loses nothing, and what
//! is produced again after it is produced identically (same keys, versions and content).
//!
//! The engine is the only place that builds a [`Merger`] or a [`Core`].

pub use crate::checkpoint::Totals;
use crate::checkpoint::{CheckpointError, CheckpointRef, CheckpointStore};
use crate::core::{ColdSettings, Core};
use crate::event::{ChangeEvent, DecodeError, Position, Table};
use crate::merge::{InputName, Merger, Pushed};
use crate::metrics::{CheckpointWritten, DeadLettered, ProcessorMetrics};
use rainbow_runtime::failpoint::CrashAfter;
use rainbow_runtime::forked::ForkError;
use rainbow_runtime::identity::SourceIdentity;
use rainbow_runtime::resilience::StopDrain;
use rainbow_schemas::shape::Outputs;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where change events come from: the partitions of the CDC's topics, live or archived.
///
/// Contract:
/// * **Delivery.** At-least-once. Each input delivers its records in offset order, from the
///   offset the engine asked for in [`Source::open`]; records at or after that offset may be
///   delivered again after a restart (they are, from the last checkpoint's offsets).
/// * **Ordering.** Within an input, positions do not decrease, except for re-deliveries of
///   records already seen. Across inputs, anything goes: the engine merges.
/// * **Progress.** An input that is idle but has nothing earlier to deliver says so with
///   [`Intake::mark`] (a heartbeat) or [`Intake::finish`] (the end of a bounded input);
///   otherwise nothing after its last record can be released.
/// * **Durability.** A source keeps nothing the engine needs: where to resume is in the
///   checkpoint. [`Source::committed`] tells it which offsets a durable checkpoint covers.
pub trait Source {
    type Error: From<EngineError>;

    /// The inputs, in index order, each with the offset it will deliver from: `resume`'s offset
    /// for an input the checkpoint knows, else its first. Called once, before any poll.
    fn open(&mut self, resume: &BTreeMap<InputName, i64>) -> Result<Vec<Input>, Self::Error>;

    /// Which source this is, as facts ([`SourceIdentity`]: `kafka.cluster=<id>; ..`); called
    /// once, before [`Source::open`]. A checkpoint that recorded a fact with another value was
    /// written while reading another source and is refused ([`EngineError::ForeignSource`]):
    /// its offsets and positions mean nothing here. Empty when the source cannot tell (checked
    /// by other means, as an archive's fingerprint).
    fn identity(&mut self) -> Result<String, Self::Error> {
        Ok(String::new())
    }

    /// Facts about the source learnt while reading it (as the PostgreSQL facts of a heartbeat
    /// when none had come before the start), recorded by the next checkpoints.
    fn learnt_identity(&self) -> Option<String> {
        None
    }

    /// Delivers what is available to `intake`, waiting a short while at most when nothing is.
    /// [`Poll::End`] once every input has finished (bounded sources only).
    fn poll(&mut self, intake: &mut Intake<'_, Self::Error>) -> Result<Poll, Self::Error>;

    /// After each drain of the merge: flow control, progress from heartbeats.
    fn drained(&mut self, _intake: &mut Intake<'_, Self::Error>) -> Result<(), Self::Error> {
        Ok(())
    }

    /// About once a second: the source's own telemetry (lag, paused inputs).
    fn tick(&mut self, _intake: &Intake<'_, Self::Error>) {}

    /// A checkpoint that resumes the inputs at `offsets` is durable.
    fn committed(&mut self, _offsets: &[(InputName, i64)]) {}

    /// At a stop: the offset each input (in index order) is to be released up to before the
    /// engine stops, what the source held at that moment, and for how long at most; `None` to
    /// stop at once.
    fn stop_targets(&mut self) -> Option<(Vec<i64>, Duration)> {
        None
    }
}

/// Where the core's rows go.
///
/// Contract:
/// * **Delivery.** At-least-once: after a restart from a checkpoint, rows produced after it are
///   written again, identical. Rows are keyed and versioned (see [`rainbow_schemas::shape`]), so a
///   sink that collapses like ReplacingMergeTree converges to the same tables.
/// * **Ordering.** Rows arrive in emission order; a sink that reorders must keep, per key, the
///   row of the highest version and, among equal versions, the last one written.
/// * **Durability.** Rows given to [`Sink::write`] may be buffered; when [`Sink::flush`]
///   returns Ok every row written before is durable, or is in the state [`Sink::save`] returns
///   (which the engine puts in the checkpoint). A retry after an error may write rows again.
pub trait Sink {
    type Error;
    type Summary;

    /// Takes the rows (leaving `rows` empty).
    fn write(&mut self, rows: &mut Outputs) -> Result<(), Self::Error>;

    /// The commit time (ms since the epoch) of the newest event whose rows the next
    /// [`Sink::write`] holds, for the latency metrics; a sink may ignore it.
    fn newest_commit(&mut self, _ts_ms: i64) {}

    /// Makes every row written so far durable (or part of [`Sink::save`]).
    fn flush(&mut self) -> Result<(), Self::Error>;

    /// Starts making every row written so far durable and returns at once: the engine goes on
    /// applying events and writes the checkpoint when [`Durable::Later`] reports success. A sink
    /// that returns `Later` keeps no state of its own ([`Sink::save`] stays empty). Default:
    /// [`Sink::flush`] now.
    fn flush_begin(&mut self) -> Result<Durable, Self::Error> {
        self.flush().map(|()| Durable::Now)
    }

    /// The sink's own state for a checkpoint (called after [`Sink::flush`]).
    fn save(&self) -> Result<Vec<u8>, Self::Error> {
        Ok(Vec::new())
    }

    /// Restores the state [`Sink::save`] returned (`None`: a fresh start).
    fn restore(&mut self, _state: Option<&[u8]>) -> Result<(), Self::Error> {
        Ok(())
    }

    /// The core as it stands at the end of a bounded input, after its last rows were written and
    /// before [`Sink::finish`] (a replay shard takes its aggregate groups' partial sums from it).
    fn at_end(&mut self, _core: &Core) -> Result<(), Self::Error> {
        Ok(())
    }

    /// The end of a bounded input: write what is left, complete the output.
    fn finish(self) -> Result<Self::Summary, Self::Error>;
}

/// What [`Sink::flush_begin`] started.
pub enum Durable {
    /// Durable already.
    Now,
    /// Durable once this answers `Ok`; an `Err` (or a dropped sender) is the sink failing.
    Later(tokio::sync::oneshot::Receiver<Result<(), String>>),
}

/// A checkpoint's id, bytes (or their encoding under way) and resume offsets.
struct Encoded<B = Vec<u8>> {
    id: u64,
    bytes: B,
    offsets: Vec<(InputName, i64)>,
    /// The run files the state names, stored before it.
    runs: Vec<(String, u64)>,
}

/// A checkpoint's bytes: encoded on the engine's thread, or being encoded by a forked child.
enum Bytes {
    Ready(Vec<u8>),
    Forked(tokio::task::JoinHandle<Result<Vec<u8>, ForkError>>),
}

/// A checkpoint of the interval, off the hot path: a forked child encodes the state as it was
/// when it began, the sink makes the rows before it durable, and a task writes it once both are
/// done, while the engine goes on ([`Engine::complete_checkpoint`] moves it along).
struct PendingCheckpoint {
    id: u64,
    offsets: Vec<(InputName, i64)>,
    runs: Vec<(String, u64)>,
    bytes: Bytes,
    /// The sink's answer, until it came.
    durable: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
    /// The write to the store (its size once done), begun when the bytes and the rows are ready.
    writing: Option<tokio::task::JoinHandle<Result<usize, CheckpointError>>>,
    started: Instant,
    events: u64,
}

/// Where records that cannot be used go, with why: a dead-letter topic, a rejection file.
///
/// Contract: [`DeadLetters::park`] may buffer; when [`DeadLetters::flush`] returns Ok every
/// letter parked before is durable (or in [`DeadLetters::save`]'s state, which the engine puts
/// in the checkpoint). A letter may be parked again after a restart.
pub trait DeadLetters {
    type Error;

    fn park(&mut self, letter: &DeadLetter<'_>) -> Result<(), Self::Error>;

    fn flush(&mut self) -> Result<(), Self::Error>;

    fn save(&self) -> Result<Vec<u8>, Self::Error> {
        Ok(Vec::new())
    }

    fn restore(&mut self, _state: Option<&[u8]>) -> Result<(), Self::Error> {
        Ok(())
    }

    /// The end of a bounded input: complete the output. Returns the letters parked in all.
    fn finish(self) -> Result<u64, Self::Error>
    where
        Self: Sized;
}

/// A record parked, with where it came from and why.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// `decode` (the record is not an event the core understands) or `core` (the core refused
    /// the event).
    pub stage: &'static str,
    /// Why, as a metric label: [`crate::event::DecodeError::cause`], `wrong_topic`, or
    /// [`crate::core::Rejected::cause`].
    pub cause: &'static str,
    pub input: &'a InputName,
    /// -1 when the offset is not known (an event refused by the core after the merge).
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub reason: &'a str,
}

/// One input of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub name: InputName,
    /// The source table whose events this input carries.
    pub table: Table,
    /// The offset it delivers from.
    pub start: i64,
}

/// What a poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Records were delivered (or none were available); poll again.
    More,
    /// Every input finished: nothing will come any more.
    End,
}

/// A record as a source delivers it.
#[derive(Debug)]
pub struct Record<'a> {
    pub input: usize,
    pub offset: i64,
    /// The value decoded (`Ok(None)`: a tombstone).
    pub decoded: Result<Option<ChangeEvent>, DecodeError>,
    /// Whether the event's rows are output (a replay's selected days); else it only builds
    /// state.
    pub emit: bool,
    /// The raw record, for a dead letter.
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// When the record was appended to its topic (ms since the epoch), where the source knows
    /// it live (streaming): the merge-latency metric starts there.
    pub appended_ms: Option<i64>,
}

/// An event waiting in the merge.
#[derive(Debug)]
struct Queued {
    event: ChangeEvent,
    emit: bool,
    appended_ms: Option<i64>,
}

/// How aggregates are sealed (emitted at a transaction boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// After every drain, up to the merge's frontier: the freshest aggregates (streaming).
    AtFrontier,
    /// At the end of the input (and where the emitted selection changes): the fewest rows
    /// (replay, whose output is the tables as `FINAL` sees them).
    AtEnd,
}

/// When checkpoints are written (besides at a stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    Interval(Duration),
    Events(u64),
}

/// How an engine runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The instance's number, stamped on its aggregate rows.
    pub partition: i32,
    /// What the state is of (for example the archive and days of a replay): a checkpoint with
    /// another fingerprint is not resumed (the engine starts over, with a warning).
    pub fingerprint: String,
    pub seal: Seal,
    pub checkpoint_every: Every,
    /// The environment variable of the crash failpoint (`crash_after_events=N`).
    pub failpoint: &'static str,
    /// Where the core keeps orders beyond its `hot_orders`, and the versions only they join
    /// (none: all in memory, and a checkpoint whose state has runs on disk is refused).
    pub cold: Option<ColdSettings>,
}

/// Why the engine stopped by itself.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("the checkpoint was written by partition {found}, this instance is partition {expected}")]
    PartitionMismatch { found: i32, expected: i32 },
    #[error(
        "the checkpoint in {store} was written while reading another source ({differences}): its \
         offsets and positions belong to that source, and resuming would drop or misplace this \
         source's events. To start over from this source, run `rainbow reset warehouse --yes`, \
         which deletes the checkpoints ({store}) and the warehouse tables they led to \
         (docs/operating.md, \"Reset recipes\")"
    )]
    ForeignSource { store: String, differences: String },
    #[error(
        "{topic} holds a snapshot of the source at position {snapshot}, but changes up to position \
         {applied} were applied already: the source's positions went back (a new PostgreSQL, a \
         restored backup, behind the same topics), and its events would be dropped as \
         re-deliveries. To start over from this source, run `rainbow reset warehouse --yes`, which \
         deletes the checkpoints and the warehouse tables they led to (docs/operating.md, \
         \"Reset recipes\")"
    )]
    SourceRewound { topic: String, snapshot: u64, applied: u64 },
    #[error("the merge made no progress although every input has records queued")]
    NoProgress,
    #[error("the sink could not make the rows of a checkpoint durable: {0}")]
    SinkFailed(String),
    #[error(
        "{0}. The processor starts again from its last checkpoint, whose files it fetches from the \
         checkpoint store; if this goes on, check the disk of processor.state_dir"
    )]
    ColdState(String),
    #[error(
        "the checkpoint names {0} run file(s) of state kept on disk, but this engine keeps all its \
         state in memory (no state directory)"
    )]
    ColdUnexpected(usize),
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineSummary {
    /// The checkpoint resumed from: (id, events applied before it).
    pub resumed: Option<(u64, u64)>,
    /// Since the stream began (this run included).
    pub totals: Totals,
    /// This run alone.
    pub this_run: Totals,
    pub checkpoints: u64,
}

/// Engine-side knowledge of an input.
struct InputInfo {
    name: InputName,
    table: Table,
    finished: bool,
    events_in: prometheus::IntCounter,
}

/// The engine's view for a source: deliver records, mark progress, read the merge's state.
pub struct Intake<'e, E> {
    merger: &'e mut Merger<Queued>,
    inputs: &'e mut [InputInfo],
    totals: &'e mut Totals,
    this_run: &'e mut Totals,
    watermark_ms: &'e mut i64,
    dead: &'e mut dyn DeadLetters<Error = E>,
    metrics: &'e ProcessorMetrics,
}

impl<E: From<EngineError>> Intake<'_, E> {
    /// Takes one record of an input.
    pub fn record(&mut self, r: Record<'_>) -> Result<(), E> {
        self.totals.records += 1;
        self.this_run.records += 1;
        let table = self.inputs[r.input].table;
        let (cause, refused) = match r.decoded {
            Ok(Some(event)) if event.table() == table => {
                self.inputs[r.input].events_in.inc();
                let position = event.position;
                if self.merger.push(
                    r.input,
                    r.offset,
                    position,
                    Queued { event, emit: r.emit, appended_ms: r.appended_ms },
                ) == Pushed::Duplicate
                {
                    let reason = if position.is_snapshot() { "snapshot_after_stream" } else { "redelivery" };
                    self.metrics.dropped.with_label_values(&[reason]).inc();
                    self.totals.duplicates += 1;
                    self.this_run.duplicates += 1;
                    if position.is_snapshot() {
                        // A snapshot meets the stream after everything it follows: one behind
                        // what was applied comes from a source whose positions went back.
                        return Err(EngineError::SourceRewound {
                            topic: self.inputs[r.input].name.topic.clone(),
                            snapshot: position.version(),
                            applied: self.merger.last_released().map_or(0, |p| p.version()),
                        }
                        .into());
                    }
                }
                return Ok(());
            }
            Ok(None) => {
                self.merger.skip(r.input, r.offset);
                return Ok(());
            }
            Ok(Some(event)) => (
                "wrong_topic",
                format!("event of table {} on the topic of {}", event.table().name(), table.name()),
            ),
            Err(e) => (e.cause(), e.to_string()),
        };
        let name = self.inputs[r.input].name.clone();
        let letter = DeadLetter {
            stage: "decode",
            cause,
            input: &name,
            offset: r.offset,
            key: r.key,
            value: r.value,
            reason: &refused,
        };
        self.park(&letter)?;
        self.merger.skip(r.input, r.offset);
        Ok(())
    }

    fn park(&mut self, letter: &DeadLetter<'_>) -> Result<(), E> {
        DeadLettered {
            stage: letter.stage,
            cause: letter.cause,
            topic: &letter.input.topic,
            partition: letter.input.partition,
            offset: letter.offset,
            reason: letter.reason,
        }
        .emit(self.metrics);
        self.totals.rejected += 1;
        self.this_run.rejected += 1;
        self.dead.park(letter)
    }

    /// Progress mark (a heartbeat): once `input` has delivered every record below
    /// `end_offset`, everything it delivers afterwards is at or after `at`.
    pub fn mark(&mut self, input: usize, end_offset: i64, at: Position) {
        self.merger.mark(input, end_offset, at);
    }

    /// `input` has nothing more to deliver.
    pub fn finish(&mut self, input: usize) {
        self.merger.finish(input);
        self.inputs[input].finished = true;
    }

    /// Raises the watermark (the commit time up to which everything is processed) to `ts_ms`.
    pub fn advance_watermark(&mut self, ts_ms: i64) {
        *self.watermark_ms = (*self.watermark_ms).max(ts_ms);
    }

    pub fn inputs(&self) -> usize {
        self.inputs.len()
    }

    /// The engine's counts so far (records delivered, events applied, ...).
    pub fn totals(&self) -> &Totals {
        self.totals
    }

    pub fn queued(&self, input: usize) -> usize {
        self.merger.queued(input)
    }

    pub fn is_finished(&self, input: usize) -> bool {
        self.inputs[input].finished
    }

    pub fn next_offset(&self, input: usize) -> i64 {
        self.merger.next_offset(input)
    }

    pub fn input_frontier(&self, input: usize) -> Option<Position> {
        self.merger.input_frontier(input)
    }

    /// Whether `input` holds back the merge: it must keep being read for anything to be
    /// released.
    pub fn is_blocking(&self, input: usize) -> bool {
        self.merger.is_blocking(input)
    }

    /// The position up to which events have been released.
    pub fn frontier(&self) -> Option<Position> {
        self.merger.frontier()
    }
}

/// An [`Intake`] over the engine's parts (a macro: the borrows are of disjoint fields).
macro_rules! intake {
    ($engine:ident) => {
        Intake {
            merger: &mut $engine.merger,
            inputs: &mut $engine.inputs,
            totals: &mut $engine.totals,
            this_run: &mut $engine.this_run,
            watermark_ms: &mut $engine.watermark_ms,
            dead: &mut $engine.dead,
            metrics: &$engine.metrics,
        }
    };
}

/// Rows handed to the sink once this many are waiting, also in the middle of a drain.
const WRITE_ROWS: usize = 4096;

/// The engine: see the module documentation.
pub struct Engine<S, K, D> {
    source: S,
    sink: K,
    dead: D,
    options: Options,
    /// [`Source::identity`], written into every checkpoint.
    identity: String,
    merger: Merger<Queued>,
    core: Core,
    inputs: Vec<InputInfo>,
    out: Outputs,
    /// Whether the events being applied are output (see [`Record::emit`]).
    emitting: bool,
    totals: Totals,
    this_run: Totals,
    store: Arc<CheckpointStore>,
    rt: tokio::runtime::Handle,
    checkpoint_id: u64,
    checkpoints: u64,
    /// The size of the last checkpoint written (0 before the first): how much a forked
    /// encoding's reader allocates up front.
    last_checkpoint_bytes: usize,
    resumed: Option<(u64, u64)>,
    /// When the next checkpoint is due: at this time (interval) or this many events (count).
    next_checkpoint_at: Option<Instant>,
    next_checkpoint_events: u64,
    /// A checkpoint begun on the interval and not written yet (at most one).
    pending: Option<PendingCheckpoint>,
    watermark_ms: i64,
    /// Commit time of the newest event applied (ms since the epoch), for the sink's metrics.
    newest_event_ms: i64,
    crash_after: Option<CrashAfter>,
    metrics: ProcessorMetrics,
    applied_by_table: Vec<prometheus::IntCounter>,
}

impl<S, K, D> Engine<S, K, D>
where
    S: Source,
    K: Sink<Error = S::Error>,
    D: DeadLetters<Error = S::Error>,
{
    /// Restores the latest checkpoint of `store` (if it is of this fingerprint), opens the
    /// source at its offsets and restores the sink's and the dead letters' state.
    pub fn open(
        mut source: S,
        mut sink: K,
        mut dead: D,
        options: Options,
        store: CheckpointStore,
        rt: tokio::runtime::Handle,
        metrics: ProcessorMetrics,
    ) -> Result<Self, S::Error> {
        let now = SourceIdentity::parse(&source.identity()?);
        let latest = rt.block_on(store.latest()).map_err(EngineError::from)?;
        // What checkpoints record: what the last one recorded, and what this start adds.
        let mut identity = latest.as_ref().map(|c| SourceIdentity::parse(&c.source)).unwrap_or_default();
        let conflicts = identity.conflicts(&now);
        identity.merge(&now);
        let identity = identity.to_string();
        let checkpoint = match latest {
            Some(_) if !conflicts.is_empty() => {
                return Err(EngineError::ForeignSource {
                    store: store.location(),
                    differences: conflicts.join("; "),
                }
                .into())
            }
            Some(c) if c.fingerprint != options.fingerprint => {
                tracing::warn!(
                    found = %c.fingerprint,
                    expected = %options.fingerprint,
                    "the checkpoint is of other input: starting over"
                );
                None
            }
            Some(c) if c.partition != options.partition => {
                return Err(EngineError::PartitionMismatch {
                    found: c.partition,
                    expected: options.partition,
                }
                .into())
            }
            other => other,
        };
        let resume: BTreeMap<InputName, i64> =
            checkpoint.as_ref().map(|c| c.offsets.iter().cloned().collect()).unwrap_or_default();
        let opened = source.open(&resume)?;
        let mut merger = Merger::new(checkpoint.as_ref().and_then(|c| c.last_released));
        let inputs: Vec<InputInfo> = opened
            .into_iter()
            .map(|input| {
                merger.add_input(input.name.clone(), input.start);
                InputInfo {
                    events_in: metrics.events_in.with_label_values(&[input.table.name()]),
                    name: input.name,
                    table: input.table,
                    finished: false,
                }
            })
            .collect();
        sink.restore(checkpoint.as_ref().map(|c| c.sink.as_slice()))?;
        dead.restore(checkpoint.as_ref().map(|c| c.dead_letters.as_slice()))?;
        let (core, checkpoint_id, totals, emitting, resumed) = match checkpoint {
            Some(c) => {
                tracing::info!(id = c.id, events = c.totals.events, "resuming from checkpoint");
                let resumed = Some((c.id, c.totals.events));
                (Core::from_state(options.partition, c.state), c.id, c.totals, c.emitting, resumed)
            }
            None => (Core::new(options.partition), 0, Totals::default(), true, None),
        };
        let core = match &options.cold {
            Some(cold) => {
                let files = core.cold_files();
                let fetched = rt.block_on(store.fetch_runs(&cold.dir, &files)).map_err(EngineError::from)?;
                if !files.is_empty() {
                    tracing::info!(runs = files.len(), fetched, dir = %cold.dir.display(), "state kept on disk");
                }
                // Runs written from here on are named apart from any written before (after the
                // same checkpoint, their contents may differ).
                let since_epoch =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let generation = format!("{:x}{:05x}", since_epoch.as_nanos(), std::process::id());
                core.with_cold(ColdSettings { generation, ..cold.clone() })
            }
            None if !core.cold_files().is_empty() => {
                return Err(EngineError::ColdUnexpected(core.cold_files().len()).into())
            }
            None => core,
        };
        let applied_by_table =
            Table::ALL.iter().map(|t| metrics.events_applied.with_label_values(&[t.name()])).collect();
        Ok(Engine {
            crash_after: CrashAfter::from_env(options.failpoint),
            source,
            sink,
            dead,
            options,
            identity,
            merger,
            core,
            inputs,
            out: Outputs::default(),
            emitting,
            totals,
            this_run: Totals::default(),
            store: Arc::new(store),
            rt,
            checkpoint_id,
            checkpoints: 0,
            last_checkpoint_bytes: 0,
            resumed,
            next_checkpoint_at: None,
            next_checkpoint_events: u64::MAX,
            pending: None,
            watermark_ms: 0,
            newest_event_ms: 0,
            metrics,
            applied_by_table,
        })
    }

    /// Schedules the next checkpoint after one written now (or after the start).
    fn schedule_checkpoint(&mut self) {
        match self.options.checkpoint_every {
            Every::Interval(d) => self.next_checkpoint_at = Some(Instant::now() + d),
            Every::Events(n) => self.next_checkpoint_events = self.totals.events.saturating_add(n),
        }
    }

    /// Runs until `stop` is set (then drains, writes a checkpoint and returns) or a bounded
    /// input ends (then seals, finishes the sink and the dead letters, deletes the checkpoints
    /// and returns their summaries).
    pub fn run(mut self, stop: &AtomicBool) -> Result<Finished<K::Summary>, S::Error> {
        self.schedule_checkpoint();
        let mut next_tick = Instant::now();
        let mut stopping: Option<Option<StopDrain>> = None;
        loop {
            if stop.load(Ordering::SeqCst) {
                let drain = stopping.get_or_insert_with(|| {
                    self.source.stop_targets().map(|(targets, within)| StopDrain::new(targets, within))
                });
                let reached = || self.merger.resume_offsets().into_iter().map(|(_, at)| at);
                if drain.as_ref().is_none_or(|d| d.done(reached(), "processor.drain_on_stop_ms")) {
                    self.drain()?;
                    self.checkpoint()?;
                    self.tick();
                    return Ok(Finished::Stopped(self.summary()));
                }
            }
            let poll = self.source.poll(&mut intake!(self))?;
            let released = self.drain()?;
            self.source.drained(&mut intake!(self))?;
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + Duration::from_secs(1);
            }
            self.complete_checkpoint()?;
            if self.pending.is_none() && self.next_checkpoint_at.is_some_and(|at| Instant::now() >= at) {
                self.begin_checkpoint()?;
            }
            if poll == Poll::End && self.merger.queued_total() == 0 {
                return self.finish().map(Finished::Ended);
            }
            if released == 0
                && (0..self.inputs.len()).all(|i| self.inputs[i].finished || self.merger.queued(i) > 0)
            {
                // Impossible for ordered inputs (the minimum frontier always has its record
                // queued); a guard against a merge that would otherwise spin.
                return Err(EngineError::NoProgress.into());
            }
        }
    }

    /// Releases what every input has passed to the core, in commit order, and hands the rows
    /// to the sink. Returns how many events were released.
    fn drain(&mut self) -> Result<u64, S::Error> {
        let mut released = 0;
        let mut now_ms = None;
        while let Some((input, Queued { event, emit, appended_ms })) = self.merger.pop() {
            released += 1;
            if let Some(appended) = appended_ms {
                let now = *now_ms.get_or_insert_with(|| chrono::Utc::now().timestamp_millis());
                self.metrics.merge_latency.observe((now - appended).max(0) as f64 / 1000.0);
            }
            if emit != self.emitting {
                // Where the output selection changes, the aggregates changed before are sealed
                // and belong to the side they were changed on.
                self.core.seal_before(event.position, &mut self.out);
                self.route()?;
                self.emitting = emit;
            }
            let applied = self.core.apply(&event, &mut self.out);
            if let Some(reason) = self.core.failure() {
                return Err(self.cold_failed(reason).into());
            }
            match applied {
                Ok(()) => {
                    self.totals.events += 1;
                    self.this_run.events += 1;
                    if emit {
                        self.totals.emitted += 1;
                        self.this_run.emitted += 1;
                    }
                    self.watermark_ms = self.watermark_ms.max(event.ts_ms);
                    self.newest_event_ms = self.newest_event_ms.max(event.ts_ms);
                    self.applied_by_table[usize::from(event.position.table)].inc();
                    if let Some(crash) = &self.crash_after {
                        crash.check(self.this_run.events);
                    }
                }
                Err(rejected) => {
                    let value = serde_json::to_vec(&event).unwrap_or_default();
                    let reason = rejected.to_string();
                    let name = self.inputs[input].name.clone();
                    let letter = DeadLetter {
                        stage: "core",
                        cause: rejected.cause(),
                        input: &name,
                        offset: -1,
                        key: None,
                        value: Some(&value),
                        reason: &reason,
                    };
                    intake!(self).park(&letter)?;
                }
            }
            if self.out.len() >= WRITE_ROWS {
                self.route()?;
            }
            if self.totals.events >= self.next_checkpoint_events {
                self.checkpoint()?;
            }
        }
        if self.options.seal == Seal::AtFrontier {
            self.core.request_seal();
            if let Some(frontier) = self.merger.frontier() {
                self.core.seal_before(frontier, &mut self.out);
            }
        }
        self.route()?;
        Ok(released)
    }

    /// Hands the rows produced so far to the sink, or drops them where the output is not
    /// selected.
    fn route(&mut self) -> Result<(), S::Error> {
        if let Some(reason) = self.core.failure() {
            return Err(self.cold_failed(reason).into());
        }
        if self.out.is_empty() {
            return Ok(());
        }
        if self.emitting {
            self.sink.newest_commit(self.newest_event_ms);
            self.sink.write(&mut self.out)?;
        } else {
            self.out.clear();
        }
        Ok(())
    }

    /// Flushes the dead letters and the sink, then writes the state and input positions, all on
    /// the engine's thread (at a stop, and every N events of a replay). A checkpoint of the
    /// interval still in flight is settled first ([`Engine::settle_pending`]).
    fn checkpoint(&mut self) -> Result<(), S::Error> {
        self.settle_pending();
        self.start_checkpoint(false)
    }

    /// The interval's checkpoint, off the hot path: the sink is asked to make the rows before it
    /// durable and a forked child to encode the state of this moment, and the engine goes on;
    /// [`Engine::complete_checkpoint`] writes it once both are done.
    fn begin_checkpoint(&mut self) -> Result<(), S::Error> {
        self.start_checkpoint(true)
    }

    /// Begins a checkpoint: deferred (`may_defer`) as [`Engine::begin_checkpoint`] says, or
    /// encoded and written at once.
    fn start_checkpoint(&mut self, may_defer: bool) -> Result<(), S::Error> {
        let started = Instant::now();
        self.schedule_checkpoint();
        self.route()?;
        self.dead.flush()?;
        let durable = if may_defer {
            self.sink.flush_begin()?
        } else {
            self.sink.flush()?;
            Durable::Now
        };
        let Encoded { id, bytes, offsets, runs } = self.encode_checkpoint(may_defer)?;
        let events = self.totals.events;
        match bytes {
            Bytes::Ready(bytes) if !may_defer => {
                self.save_checkpoint(Encoded { id, bytes, offsets, runs }, started, events)?
            }
            bytes => {
                let durable = match durable {
                    Durable::Now => None,
                    Durable::Later(answer) => Some(answer),
                };
                self.pending = Some(PendingCheckpoint {
                    id,
                    offsets,
                    runs,
                    bytes,
                    durable,
                    writing: None,
                    started,
                    events,
                });
            }
        }
        self.metrics.checkpoint_pause.observe(started.elapsed().as_secs_f64());
        if may_defer {
            self.complete_checkpoint()?;
        }
        Ok(())
    }

    /// Moves the pending checkpoint along without waiting: once the sink has its rows and its
    /// bytes are encoded, a task writes it; once written, the source is told its positions. A
    /// forked child that failed costs this checkpoint only (counted, logged); the next interval
    /// begins another.
    fn complete_checkpoint(&mut self) -> Result<(), S::Error> {
        let Some(p) = self.pending.as_mut() else { return Ok(()) };
        if let Some(answer) = p.durable.as_mut() {
            match answer.try_recv() {
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return Ok(()),
                Ok(Ok(())) => p.durable = None,
                Ok(Err(reason)) => {
                    self.pending = None;
                    return Err(EngineError::SinkFailed(reason).into());
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    self.pending = None;
                    return Err(EngineError::SinkFailed(
                        "the sink stopped before its rows were durable".into(),
                    )
                    .into());
                }
            }
        }
        if let Bytes::Forked(child) = &mut p.bytes {
            if !child.is_finished() {
                return Ok(());
            }
            let encoded = match self.rt.block_on(child) {
                Ok(encoded) => encoded.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match encoded {
                Ok(bytes) => p.bytes = Bytes::Ready(bytes),
                Err(error) => {
                    self.metrics.checkpoint_errors.inc();
                    tracing::warn!(id = p.id, %error, "encoding a checkpoint in a forked child failed; the next interval's checkpoint is another try");
                    self.pending = None;
                    return Ok(());
                }
            }
        }
        match &p.writing {
            None => {
                let Bytes::Ready(bytes) = std::mem::replace(&mut p.bytes, Bytes::Ready(Vec::new())) else {
                    unreachable!("encoded above")
                };
                let (store, id, size) = (self.store.clone(), p.id, bytes.len());
                let dir = self.options.cold.as_ref().map(|c| c.dir.clone()).unwrap_or_default();
                let runs = std::mem::take(&mut p.runs);
                p.writing = Some(self.rt.spawn(async move {
                    store.put_runs(&dir, &runs).await?;
                    store.save_encoded(id, bytes).await.map(|()| size)
                }));
                Ok(())
            }
            Some(write) if !write.is_finished() => Ok(()),
            Some(_) => {
                let p = self.pending.take().expect("pending checkpoint");
                let written = self.rt.block_on(p.writing.expect("writing"));
                let size = written.unwrap_or_else(|e| Err(self.store.error(e))).map_err(|e| {
                    self.metrics.checkpoint_errors.inc();
                    EngineError::from(e)
                })?;
                self.checkpoint_written(p.id, size, &p.offsets, p.started, p.events);
                Ok(())
            }
        }
    }

    /// Before a checkpoint on the engine's thread (or the end): a pending checkpoint's write is
    /// waited for, so that ids follow each other and nothing is written after the end; one that
    /// still waits for the sink or its child is superseded (the child ends by itself).
    fn settle_pending(&mut self) {
        let Some(p) = self.pending.take() else { return };
        let Some(write) = p.writing else { return };
        match self.rt.block_on(write).unwrap_or_else(|e| Err(self.store.error(e))) {
            Ok(size) => self.checkpoint_written(p.id, size, &p.offsets, p.started, p.events),
            Err(e) => {
                self.metrics.checkpoint_errors.inc();
                tracing::warn!(id = p.id, error = %e, "writing a checkpoint failed; the one written now replaces it");
            }
        }
    }

    /// The next checkpoint's id, bytes (state, positions, sink and dead-letter state) and resume
    /// offsets, as of now. The bytes come from a forked child (`in_child`, where the platform
    /// forks) or are encoded here.
    fn encode_checkpoint(&mut self, in_child: bool) -> Result<Encoded<Bytes>, S::Error> {
        let offsets = self.merger.resume_offsets();
        let id = self.checkpoint_id + 1;
        let sink = self.sink.save()?;
        let dead_letters = self.dead.save()?;
        if let Some(learnt) = self.source.learnt_identity() {
            let mut identity = SourceIdentity::parse(&self.identity);
            identity.merge(&SourceIdentity::parse(&learnt));
            self.identity = identity.to_string();
        }
        let runs = self.core.cold_files();
        let c = CheckpointRef {
            id,
            fingerprint: &self.options.fingerprint,
            source: &self.identity,
            partition: self.options.partition,
            emitting: self.emitting,
            last_released: self.merger.last_released(),
            offsets: &offsets,
            totals: &self.totals,
            state: self.core.state(),
            sink: &sink,
            dead_letters: &dead_letters,
        };
        if in_child {
            match c.encode_forked() {
                Ok(child) => {
                    // About the last one's size, with room to grow.
                    let expected = self.last_checkpoint_bytes * 9 / 8;
                    let bytes = Bytes::Forked(self.rt.spawn_blocking(move || child.wait(expected)));
                    return Ok(Encoded { id, bytes, offsets, runs });
                }
                Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not fork to encode a checkpoint; encoding it here")
                }
            }
        }
        match c.encode() {
            Ok(bytes) => Ok(Encoded { id, bytes: Bytes::Ready(bytes), offsets, runs }),
            Err(e) => {
                self.metrics.checkpoint_errors.inc();
                Err(EngineError::from(self.store.error(e)).into())
            }
        }
    }

    /// Writes an encoded checkpoint to the store, then tells the source its positions.
    fn save_checkpoint(&mut self, encoded: Encoded, started: Instant, events: u64) -> Result<(), S::Error> {
        let Encoded { id, bytes, offsets, runs } = encoded;
        let size = bytes.len();
        let saved = self.rt.block_on(async {
            self.store.put_runs(&self.cold_dir(), &runs).await?;
            self.store.save_encoded(id, bytes).await
        });
        if let Err(e) = saved {
            self.metrics.checkpoint_errors.inc();
            return Err(EngineError::from(e).into());
        }
        self.checkpoint_written(id, size, &offsets, started, events);
        Ok(())
    }

    /// The core could not read or write a run: its local directory goes (every run the last
    /// checkpoint names is in the checkpoint store, and is fetched again at the restart, so that a
    /// file damaged in place is replaced too).
    fn cold_failed(&self, reason: String) -> EngineError {
        if let Some(cold) = &self.options.cold {
            if let Err(e) = std::fs::remove_dir_all(&cold.dir) {
                tracing::warn!(dir = %cold.dir.display(), error = %e, "could not empty the state directory");
            }
        }
        EngineError::ColdState(reason)
    }

    /// The directory of the core's runs (empty without one: then they name no file).
    fn cold_dir(&self) -> std::path::PathBuf {
        self.options.cold.as_ref().map(|c| c.dir.clone()).unwrap_or_default()
    }

    /// A checkpoint is in the store: counted, and its positions told to the source.
    fn checkpoint_written(
        &mut self,
        id: u64,
        bytes: usize,
        offsets: &[(InputName, i64)],
        started: Instant,
        events: u64,
    ) {
        self.checkpoint_id = id;
        self.checkpoints += 1;
        self.last_checkpoint_bytes = bytes;
        CheckpointWritten { id, bytes, duration: started.elapsed(), events }.emit(&self.metrics);
        self.source.committed(offsets);
    }

    /// The end of a bounded input.
    fn finish(mut self) -> Result<(EngineSummary, K::Summary, u64), S::Error> {
        // The last transaction's aggregates.
        let end = Position { commit: u64::MAX, change: 0, table: 0 };
        self.settle_pending();
        self.core.seal_before(end, &mut self.out);
        self.route()?;
        self.sink.at_end(&self.core)?;
        self.tick();
        let summary = self.summary();
        let Engine { sink, dead, core, merger, store, rt, .. } = self;
        // The state is not needed any more: its memory goes to the sink's last writes.
        drop(core);
        drop(merger);
        let written = sink.finish()?;
        let parked = dead.finish()?;
        rt.block_on(store.clear()).map_err(EngineError::from)?;
        Ok((summary, written, parked))
    }

    fn summary(&self) -> EngineSummary {
        EngineSummary {
            resumed: self.resumed,
            totals: self.totals.clone(),
            this_run: self.this_run.clone(),
            checkpoints: self.checkpoints,
        }
    }

    /// Telemetry of the merge, the core and the source.
    fn tick(&mut self) {
        let m = &self.metrics;
        m.resilience.progressed();
        m.queued.set(self.merger.queued_total() as i64);
        if self.watermark_ms > 0 {
            let now = chrono::Utc::now().timestamp_millis();
            m.watermark_delay.set(((now - self.watermark_ms).max(0)) as f64 / 1000.0);
        }
        let size = self.core.size();
        m.state_versions.set(size.dimension_versions as i64);
        m.state_orders.set(size.orders as i64);
        m.state_lines.set(size.order_lines as i64);
        m.state_cold_orders.set(size.cold_orders as i64);
        m.state_cold_versions.set(size.cold_versions as i64);
        let (orders_read, versions_read) = self.core.take_cold_reads();
        m.state_reads.with_label_values(&["orders"]).inc_by(orders_read);
        m.state_reads.with_label_values(&["versions"]).inc_by(versions_read);
        m.state_groups.set(size.aggregate_groups as i64);
        m.version_starts_moved.inc_by(self.core.take_moved_starts());
        self.source.tick(&intake!(self));
    }
}

/// How the engine ended.
#[derive(Debug)]
pub enum Finished<T> {
    /// Stopped on request, after a checkpoint.
    Stopped(EngineSummary),
    /// The input ended: the engine's summary, the sink's, and the letters parked in all.
    Ended((EngineSummary, T, u64)),
}
