//! The initial snapshot: every row of every captured table as an `r` event, read in one
//! REPEATABLE READ transaction that imports the snapshot the slot exported when it was created,
//! so the snapshot and the stream that follows meet exactly at the slot's consistent point.

use crate::catalog::quote_ident;
use crate::error::CdcError;
use crate::event::{Op, SnapshotMarker, Source, TableEncoder};
use crate::metrics::{CdcMetrics, SnapshotTableDone};
use crate::pgoutput::Datum;
use crate::sink::{KafkaSink, RecordKind};
use futures_util::TryStreamExt;
use rainbow_schemas::wire::Lsn;
use sqlx::{PgPool, Row};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How a snapshot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// Every row was sent and acknowledged.
    Completed { rows: u64 },
    /// Shutdown was requested part-way; the next start takes the snapshot again.
    Interrupted,
}

/// What to snapshot and how to label it.
pub struct SnapshotRequest<'a> {
    /// The slot's exported snapshot, which meets the stream exactly at `at`; without it the
    /// snapshot is the transaction's own.
    pub exported: Option<&'a str>,
    /// The slot's consistent point: every event's `source.lsn`.
    pub at: Lsn,
    /// Read in this order (Debezium's: the include list's).
    pub tables: &'a [Arc<TableEncoder>],
    /// Put on every record.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// `cdc.server_timeout_ms`: how long the server may take to send the next row.
    pub server_timeout_ms: u64,
}

/// Reads the tables and sends their rows as `r` events.
pub async fn run(
    pool: &PgPool,
    request: SnapshotRequest<'_>,
    sink: &KafkaSink,
    metrics: &CdcMetrics,
    shutdown: &watch::Receiver<bool>,
) -> Result<SnapshotOutcome, CdcError> {
    let SnapshotRequest { exported, at, tables, headers, server_timeout_ms } = request;
    let mut conn = pool.acquire().await?;
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *conn).await?;
    if let Some(name) = exported {
        sqlx::query(&format!("SET TRANSACTION SNAPSHOT '{}'", name.replace('\'', "''")))
            .execute(&mut *conn)
            .await?;
    }
    // Like Debezium, every snapshot event carries the snapshot transaction's id and start time.
    let tx_id: i64 = sqlx::query_scalar("SELECT txid_current()").fetch_one(&mut *conn).await?;
    let started_us = chrono::Utc::now().timestamp_micros();
    sqlx::query("SET LOCAL TIME ZONE 'UTC'").execute(&mut *conn).await?;
    sqlx::query("SET LOCAL DateStyle = 'ISO, YMD'").execute(&mut *conn).await?;
    metrics.snapshot_running.set(1);
    for t in tables {
        let estimate: i64 = sqlx::query_scalar(
            "SELECT GREATEST(reltuples, 0)::int8 FROM pg_class WHERE oid = to_regclass(format('%I.%I', $1::text, $2::text))",
        )
        .bind(&t.shape.schema)
        .bind(&t.shape.name)
        .fetch_one(&mut *conn)
        .await?;
        metrics.snapshot_estimated.with_label_values(&[&t.shape.qualified()]).set(estimate);
    }
    tracing::info!(tables = tables.len(), consistent_point = %at, exported = exported.unwrap_or("-"), "snapshot started");

    let mut emitter = Emitter {
        sink,
        at,
        tx_id: u32::try_from(tx_id & 0xFFFF_FFFF).ok(),
        headers,
        started_us,
        held: None,
        sent: 0,
        last_in_table: false,
    };
    let mut interrupted = false;
    'tables: for t in tables {
        let started = Instant::now();
        // Without ORDER BY, like Debezium: rows in physical order (a sequential scan).
        let columns =
            t.shape.columns.iter().map(|c| format!("{}::text", quote_ident(&c.name))).collect::<Vec<_>>();
        let sql = format!(
            "SELECT {} FROM {}.{}",
            columns.join(", "),
            quote_ident(&t.shape.schema),
            quote_ident(&t.shape.name)
        );
        let table_name = t.shape.qualified();
        let mut rows = 0u64;
        let mut last_progress = Instant::now();
        {
            let mut stream = sqlx::query(&sql).fetch(&mut *conn);
            loop {
                let next = async { Ok(stream.try_next().await?) };
                let Some(row) =
                    crate::reader::bounded(server_timeout_ms, "the snapshot's query", next).await?
                else {
                    break;
                };
                let datums: Vec<Datum> = (0..t.shape.columns.len())
                    .map(|i| row.try_get::<Option<String>, _>(i).map(|v| v.map_or(Datum::Null, Datum::Text)))
                    .collect::<Result<_, _>>()?;
                emitter.push(t, datums, rows == 0).await?;
                rows += 1;
                metrics.snapshot_row(&table_name);
                if rows.is_multiple_of(1024) {
                    if *shutdown.borrow() {
                        interrupted = true;
                        break 'tables;
                    }
                    if last_progress.elapsed() >= Duration::from_secs(10) {
                        tracing::info!(table = %table_name, rows, "snapshot in progress");
                        last_progress = Instant::now();
                    }
                }
            }
        }
        emitter.end_table();
        SnapshotTableDone { table: &table_name, rows, elapsed: started.elapsed() }.emit();
    }
    if interrupted {
        metrics.snapshot_running.set(0);
        sink.flush().await?;
        tracing::warn!(
            rows = emitter.sent,
            "snapshot interrupted by shutdown; the next start takes it again"
        );
        return Ok(SnapshotOutcome::Interrupted);
    }
    emitter.finish().await?;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    sink.flush().await?;
    metrics.snapshot_running.set(0);
    tracing::info!(rows = emitter.sent, "snapshot completed and acknowledged by Kafka");
    Ok(SnapshotOutcome::Completed { rows: emitter.sent })
}

/// Holds one row back so that the last row of a table and of the whole snapshot can be marked.
struct Emitter<'a> {
    sink: &'a KafkaSink,
    at: Lsn,
    tx_id: Option<u32>,
    started_us: i64,
    headers: &'a [(&'a str, &'a [u8])],
    /// (table, row, first in its table)
    held: Option<(Arc<TableEncoder>, Vec<Datum>, bool)>,
    sent: u64,
    last_in_table: bool,
}

impl Emitter<'_> {
    async fn push(
        &mut self,
        t: &Arc<TableEncoder>,
        row: Vec<Datum>,
        first_in_table: bool,
    ) -> Result<(), CdcError> {
        if let Some(prev) = self.held.take() {
            let last_in_table = std::mem::take(&mut self.last_in_table);
            self.send(prev, last_in_table, false).await?;
        }
        self.held = Some((t.clone(), row, first_in_table));
        Ok(())
    }

    /// The held row, if any, is its table's last.
    fn end_table(&mut self) {
        if self.held.is_some() {
            self.last_in_table = true;
        }
    }

    async fn finish(&mut self) -> Result<(), CdcError> {
        if let Some(prev) = self.held.take() {
            self.send(prev, true, true).await?;
        }
        Ok(())
    }

    async fn send(
        &mut self,
        (t, row, first_in_table): (Arc<TableEncoder>, Vec<Datum>, bool),
        last_in_table: bool,
        last: bool,
    ) -> Result<(), CdcError> {
        // Debezium's precedence: a table's only row is its last, not its first.
        let marker = if self.sent == 0 {
            SnapshotMarker::First
        } else if last {
            SnapshotMarker::Last
        } else if last_in_table {
            SnapshotMarker::LastInDataCollection
        } else if first_in_table {
            SnapshotMarker::FirstInDataCollection
        } else {
            SnapshotMarker::True
        };
        let now = chrono::Utc::now();
        let source = Source {
            ts_us: self.started_us,
            snapshot: marker,
            tx_id: self.tx_id,
            lsn: Some(self.at),
            commit_lsn: None,
        };
        let key = t.key(&row)?;
        let value =
            t.value(Op::Read, None, Some(&row), &source, None, now.timestamp_nanos_opt().unwrap_or(0))?;
        let table = t.table.clone();
        self.sink
            .send(
                &t.topic,
                t.partition(&row),
                key.as_deref(),
                Some(&value),
                self.headers,
                RecordKind::Change { table, op: Op::Read.code() },
            )
            .await?;
        self.sent += 1;
        Ok(())
    }
}
