//! The ClickHouse sink: batches the core's rows and writes them to the ReplacingMergeTree tables.
//!
//! Contract:
//! * **Delivery.** At-least-once: rows may be written again after a restart (from the last
//!   checkpoint); every row is keyed by its table's deterministic key and versioned by the
//!   commit position, so `FINAL` (and the views) converge to the same result.
//! * **Batching.** Rows are collapsed per key as ReplacingMergeTree would (highest version, last
//!   among equal versions) and written when the batch holds `batch_rows` rows or its oldest row
//!   waited `batch_interval_ms`, and on every [`SinkMessage::Flush`].
//! * **Durability.** A flush is acknowledged only after ClickHouse accepted every table's insert;
//!   the engine writes a checkpoint only after such an acknowledgement.
//! * **Order.** Dimensions are written before facts, facts before aggregates, so a reader never
//!   sees a fact whose dimension row is not there yet (within one flush).
//! * **Errors.** A failed insert is retried with exponential backoff (`sink_attempts` in all);
//!   then the sink stops with the error and the processor stops without checkpointing.
//!
//! The writes run on the tokio runtime ([`ClickHouseSink::run`]); the engine's thread hands rows
//! over through [`ClickHouseWriter`], its [`Sink`].

use crate::engine::Sink;
use crate::error::ProcessorError;
use crate::metrics::{BatchWritten, ProcessorMetrics, SinkFailed};
use clickhouse::Client;
use rainbow_schemas::shape::Outputs;
use rainbow_schemas::shape::{Table, Tables, WarehouseRow};
use rainbow_schemas::warehouse::Warehouse;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub enum SinkMessage {
    Rows(Box<Outputs>),
    /// Write everything buffered; answer when ClickHouse has it.
    Flush(oneshot::Sender<Result<(), String>>),
}

/// The engine's side of the sink: rows go to the writing task through a bounded channel (the
/// engine waits when ClickHouse falls behind).
pub struct ClickHouseWriter {
    tx: mpsc::Sender<SinkMessage>,
}

impl ClickHouseWriter {
    pub fn new(tx: mpsc::Sender<SinkMessage>) -> ClickHouseWriter {
        ClickHouseWriter { tx }
    }

    fn stopped() -> ProcessorError {
        ProcessorError::Pipeline("the ClickHouse sink stopped".into())
    }
}

impl Sink for ClickHouseWriter {
    type Error = ProcessorError;
    type Summary = ();

    fn write(&mut self, rows: &mut Outputs) -> Result<(), ProcessorError> {
        let rows = Box::new(std::mem::take(rows));
        self.tx.blocking_send(SinkMessage::Rows(rows)).map_err(|_| Self::stopped())
    }

    fn flush(&mut self) -> Result<(), ProcessorError> {
        let (tx, rx) = oneshot::channel();
        self.tx.blocking_send(SinkMessage::Flush(tx)).map_err(|_| Self::stopped())?;
        match rx.blocking_recv() {
            Ok(Ok(())) => Ok(()),
            _ => Err(ProcessorError::Pipeline("the ClickHouse sink failed".into())),
        }
    }

    /// Closing the channel makes the task write what is left and end.
    fn finish(self) -> Result<(), ProcessorError> {
        Ok(())
    }
}

pub struct ClickHouseSink {
    client: Client,
    batch: Tables,
    oldest: Option<Instant>,
    batch_rows: usize,
    interval: Duration,
    attempts: u32,
    metrics: ProcessorMetrics,
}

impl ClickHouseSink {
    pub fn new(
        warehouse: &Warehouse,
        batch_rows: usize,
        interval: Duration,
        attempts: u32,
        metrics: ProcessorMetrics,
    ) -> ClickHouseSink {
        ClickHouseSink {
            client: warehouse.client.clone(),
            batch: Tables::default(),
            oldest: None,
            batch_rows,
            interval,
            attempts,
            metrics,
        }
    }

    /// Runs until the channel closes (then writes what is left) or a write fails for good.
    pub async fn run(mut self, mut rx: mpsc::Receiver<SinkMessage>) -> Result<(), ProcessorError> {
        loop {
            let deadline = self.oldest.map(|t| t + self.interval);
            tokio::select! {
                message = rx.recv() => match message {
                    None => return self.flush().await,
                    Some(SinkMessage::Rows(mut rows)) => {
                        let rows = &mut *rows;
                        if rows.is_empty() {
                            continue;
                        }
                        self.oldest.get_or_insert_with(Instant::now);
                        self.batch.absorb(rows);
                        if self.batch.rows_total() >= self.batch_rows {
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
        self.oldest = None;
        if rows == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let b = std::mem::take(&mut self.batch);
        macro_rules! write_table {
            ($table:ident, $row:ty) => {
                self.write(b.$table).await?;
            };
        }
        rainbow_schemas::for_each_table!(write_table);
        BatchWritten { rows, duration: started.elapsed() }.emit(&self.metrics);
        Ok(())
    }

    async fn write<R: WarehouseRow>(&self, rows: Table<R>) -> Result<(), ProcessorError> {
        let table = R::TABLE.name;
        if rows.is_empty() {
            return Ok(());
        }
        let mut backoff = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            match self.insert(table, &rows).await {
                Ok(()) => {
                    self.metrics.rows_written.with_label_values(&[table]).inc_by(rows.len() as u64);
                    return Ok(());
                }
                Err(e) => {
                    SinkFailed { table, attempt, error: &e.to_string() }.emit(&self.metrics);
                    if attempt >= self.attempts {
                        return Err(ProcessorError::Sink { table, attempts: attempt, source: e });
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    attempt += 1;
                }
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
