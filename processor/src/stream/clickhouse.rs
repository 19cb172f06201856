//! The ClickHouse sink: batches the core's rows and writes them to the ReplacingMergeTree tables.
//!
//! Contract:
//! * **Delivery.** At-least-once: rows may be written again after a restart (from the last
//!   checkpoint); every row is keyed by its table's deterministic key and versioned by the
//!   commit position, so `FINAL` (and the views) converge to the same result.
//! * **Batching.** Rows are collapsed per key as ReplacingMergeTree would (highest version, last
//!   among equal versions). The engine hands rows over each time the merge is drained; they are
//!   written at once when the previous write ended at least `batch_interval_ms` ago (a quiet
//!   pipeline shows a change as soon as it is applied), else when that interval has passed (a
//!   busy one writes at most once per interval, which bounds ClickHouse's parts); and when the
//!   batch holds `batch_rows` rows, and on every [`SinkMessage::Flush`].
//! * **Durability.** A flush is acknowledged only after ClickHouse accepted every table's insert;
//!   the engine writes a checkpoint only after such an acknowledgement. The interval's checkpoints
//!   ask for it without waiting ([`Sink::flush_begin`]): the engine goes on meanwhile.
//! * **Order.** Dimensions are written before facts, facts before aggregates, so a reader never
//!   sees a fact whose dimension row is not there yet (within one flush). One insert at a time:
//!   concurrent inserts made a flush four times faster on an idle server, but kept ClickHouse's
//!   graceful shutdown waiting for a minute (measured) while the processor retried them.
//! * **Errors.** Every insert has a timeout (`sink_timeout_ms`: a hung server counts as failed).
//!   An outage (network, timeout, a server-side condition that passes) is retried with capped
//!   exponential backoff and jitter for as long as it lasts, ClickHouse counted as down
//!   meanwhile; the engine waits (the channel is bounded) and resumes where it was. An insert the
//!   server refuses for what it is (an unknown table, a type error) is tried `sink_attempts`
//!   times; then the sink stops with the error and the processor stops without checkpointing.
//!
//! The writes run on the tokio runtime ([`ClickHouseSink::run`]); the engine's thread hands rows
//! over through [`ClickHouseWriter`], its [`Sink`].

use crate::engine::{Durable, Sink};
use crate::error::ProcessorError;
use crate::metrics::{BatchWritten, ProcessorMetrics, SinkFailed};
use clickhouse::Client;
use rainbow_runtime::resilience::{Backoff, Dependency};
use rainbow_schemas::shape::Outputs;
use rainbow_schemas::shape::{Table, Tables, WarehouseRow};
use rainbow_schemas::warehouse::{self, Warehouse};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

pub enum SinkMessage {
    Rows {
        rows: Box<Outputs>,
        /// When the merge released them.
        released: Instant,
        /// Commit time of the newest change among them, ms since the epoch.
        newest_commit_ms: Option<i64>,
    },
    /// Write everything buffered; answer when ClickHouse has it.
    Flush(oneshot::Sender<Result<(), String>>),
}

/// The engine's side of the sink: rows go to the writing task through a bounded channel (the
/// engine waits when ClickHouse falls behind).
pub struct ClickHouseWriter {
    tx: mpsc::Sender<SinkMessage>,
    newest_commit_ms: Option<i64>,
}

impl ClickHouseWriter {
    pub fn new(tx: mpsc::Sender<SinkMessage>) -> ClickHouseWriter {
        ClickHouseWriter { tx, newest_commit_ms: None }
    }

    fn stopped() -> ProcessorError {
        ProcessorError::Pipeline("the ClickHouse sink stopped".into())
    }
}

impl Sink for ClickHouseWriter {
    type Error = ProcessorError;
    type Summary = ();

    fn newest_commit(&mut self, ts_ms: i64) {
        self.newest_commit_ms = Some(ts_ms);
    }

    fn write(&mut self, rows: &mut Outputs) -> Result<(), ProcessorError> {
        let message = SinkMessage::Rows {
            rows: Box::new(std::mem::take(rows)),
            released: Instant::now(),
            newest_commit_ms: self.newest_commit_ms.take(),
        };
        self.tx.blocking_send(message).map_err(|_| Self::stopped())
    }

    fn flush(&mut self) -> Result<(), ProcessorError> {
        let (tx, rx) = oneshot::channel();
        self.tx.blocking_send(SinkMessage::Flush(tx)).map_err(|_| Self::stopped())?;
        match rx.blocking_recv() {
            Ok(Ok(())) => Ok(()),
            _ => Err(ProcessorError::Pipeline("the ClickHouse sink failed".into())),
        }
    }

    /// Queues a flush behind the rows written so far; its answer says when ClickHouse has them.
    fn flush_begin(&mut self) -> Result<Durable, ProcessorError> {
        let (tx, rx) = oneshot::channel();
        self.tx.blocking_send(SinkMessage::Flush(tx)).map_err(|_| Self::stopped())?;
        Ok(Durable::Later(rx))
    }

    /// Closing the channel makes the task write what is left and end.
    fn finish(self) -> Result<(), ProcessorError> {
        Ok(())
    }
}

/// How the sink batches and retries (from `[processor]`).
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub batch_rows: usize,
    pub interval: Duration,
    /// Attempts of an insert the server refuses (not an outage) before the sink gives up.
    pub attempts: u32,
    /// How long one insert may take.
    pub timeout: Duration,
}

pub struct ClickHouseSink {
    client: Client,
    batch: Tables,
    /// When the batch's oldest rows were released, and when it is to be written.
    oldest: Option<Instant>,
    due: Option<Instant>,
    newest_commit_ms: Option<i64>,
    /// When the last write ended.
    last_write: Option<Instant>,
    settings: SinkSettings,
    metrics: ProcessorMetrics,
    /// Ends a retry during an outage when the processor stops.
    stop: watch::Receiver<bool>,
}

impl ClickHouseSink {
    pub fn new(
        warehouse: &Warehouse,
        settings: SinkSettings,
        metrics: ProcessorMetrics,
        stop: watch::Receiver<bool>,
    ) -> ClickHouseSink {
        ClickHouseSink {
            client: warehouse.client.clone(),
            batch: Tables::default(),
            oldest: None,
            due: None,
            newest_commit_ms: None,
            last_write: None,
            settings,
            metrics,
            stop,
        }
    }

    /// Runs until the channel closes (then writes what is left) or a write fails for good.
    pub async fn run(mut self, mut rx: mpsc::Receiver<SinkMessage>) -> Result<(), ProcessorError> {
        loop {
            if self.due.is_some_and(|due| due <= Instant::now()) {
                self.flush().await?;
            }
            let deadline = self.due;
            tokio::select! {
                message = rx.recv() => match message {
                    None => return self.flush().await,
                    Some(SinkMessage::Rows { mut rows, released, newest_commit_ms }) => {
                        let rows = &mut *rows;
                        if rows.is_empty() {
                            continue;
                        }
                        self.oldest.get_or_insert(released);
                        self.newest_commit_ms = self.newest_commit_ms.max(newest_commit_ms);
                        let earliest = self.last_write.map_or(released, |t| t + self.settings.interval);
                        self.due.get_or_insert(earliest.max(released));
                        self.batch.absorb(rows);
                        if self.batch.rows_total() >= self.settings.batch_rows {
                            self.flush().await?;
                        }
                    }
                    Some(SinkMessage::Flush(reply)) => {
                        let result = self.flush().await;
                        let _ = reply.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                        result?;
                    }
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                    self.flush().await?;
                }
            }
        }
    }

    async fn flush(&mut self) -> Result<(), ProcessorError> {
        let rows = self.batch.rows_total();
        let oldest = self.oldest.take();
        let newest_commit_ms = self.newest_commit_ms.take();
        self.due = None;
        if rows == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let b = std::mem::take(&mut self.batch);
        // In the tables' order: dimensions (and dates), facts, aggregates.
        macro_rules! write_table {
            ($table:ident, $row:ty) => {
                self.write(b.$table).await?;
            };
        }
        rainbow_schemas::for_each_table!(write_table);
        let now = Instant::now();
        self.last_write = Some(now);
        let since_commit = newest_commit_ms.and_then(|ms| {
            let now_ms = chrono::Utc::now().timestamp_millis();
            u64::try_from(now_ms - ms).ok().map(Duration::from_millis)
        });
        BatchWritten { rows, duration: now - started, since_release: oldest.map(|t| now - t), since_commit }
            .emit(&self.metrics);
        Ok(())
    }

    async fn write<R: WarehouseRow>(&self, rows: Table<R>) -> Result<(), ProcessorError> {
        let table = R::TABLE.name;
        if rows.is_empty() {
            return Ok(());
        }
        let resilience = &self.metrics.resilience;
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        let mut refused = 0;
        loop {
            let result = warehouse::bounded(self.settings.timeout, self.insert(table, &rows)).await;
            let e = match result {
                Ok(()) => {
                    resilience.connected(Dependency::ClickHouse);
                    self.metrics.rows_written.with_label_values(&[table]).inc_by(rows.len() as u64);
                    return Ok(());
                }
                Err(e) => e,
            };
            let transient = warehouse::is_transient(&e);
            if !transient {
                refused += 1;
            }
            SinkFailed { table, attempt: refused, transient, error: &e.to_string() }.emit(&self.metrics);
            if transient {
                resilience.failed(Dependency::ClickHouse);
            } else if refused >= self.settings.attempts {
                return Err(ProcessorError::Sink { table, attempts: refused, source: e });
            }
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop.wait_for(|s| *s) => return Err(ProcessorError::Interrupted { table }),
            }
        }
    }

    async fn insert<R: WarehouseRow>(
        &self,
        table: &str,
        rows: &Table<R>,
    ) -> Result<(), clickhouse::error::Error> {
        let mut insert = self.client.insert::<R>(table).await?;
        for row in rows.rows() {
            insert.write(row).await?;
        }
        insert.end().await
    }
}
