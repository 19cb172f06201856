//! On-demand incremental snapshots: Debezium's `execute-snapshot` signal of type `incremental`,
//! taken while the stream goes on, in chunks, without locks.
//!
//! Contract. A user inserts into the signal table (`cdc.signal_table`) a row of type
//! `execute-snapshot` with data `{"data-collections": ["public.customers", ..], "type":
//! "incremental"}`. The reader then reads each table in primary-key order, `chunk` rows at a time,
//! each chunk in its own short read-only transaction, and sends the rows as `op` `r` events with
//! `source.snapshot` = `incremental` on the table's topic. A chunk's rows sit in commit order at
//! `H`, the WAL insert position read right after the chunk's snapshot: `sequence` = `[H, H-1]`,
//! after every transaction that committed before the read (and any whose commit record starts
//! at `H`), before every later one. A row that a transaction the chunk's snapshot did not see
//! (running, or started later) changed at or before `H` is dropped from the chunk: the stream
//! carries its newer image first. So every row is sent as it was at its position, and the stream after it
//! applies on top (the watermark idea of Netflix's DBLog, with the snapshot's own visibility in
//! place of watermark rows). When a table's last chunk is in Kafka, the reader inserts a
//! `snapshot-table-done` signal row: consumers that track the keys they saw since the request
//! (chunk rows and streamed changes) know that the table's other rows are gone from the source.
//!
//! Progress (the tables left and the last key read) is kept in the offsets file once Kafka
//! acknowledged the chunk, so a restarted reader resumes where it was.

use crate::catalog::quote_ident;
use crate::error::CdcError;
use crate::event::TableEncoder;
use crate::pgoutput::Datum;
use rainbow_schemas::wire::Lsn;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// A key's column values in text form (the primary key's columns, in key order).
pub type KeyText = Vec<Option<String>>;

/// What an `execute-snapshot` signal asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: String,
    /// `(schema, table)`, in the signal's order.
    pub tables: Vec<(String, String)>,
}

/// Reads a signal row: `Ok(None)` for types this reader does not act on (its own
/// `snapshot-table-done` rows among them), `Err` with the reason for a request it cannot take.
pub fn parse_signal(id: &str, kind: &str, data: Option<&str>) -> Result<Option<Request>, String> {
    if kind != rainbow_schemas::postgres::SIGNAL_EXECUTE_SNAPSHOT {
        return Ok(None);
    }
    #[derive(Deserialize)]
    struct Data {
        #[serde(rename = "data-collections", default)]
        collections: Vec<String>,
        #[serde(rename = "type", default)]
        kind: Option<String>,
    }
    let data: Data = serde_json::from_str(data.unwrap_or("{}")).map_err(|e| {
        format!("`data` is not {{\"data-collections\": [..], \"type\": \"incremental\"}}: {e}")
    })?;
    if let Some(kind) = data.kind.as_deref() {
        if !kind.eq_ignore_ascii_case("incremental") {
            return Err(format!("snapshot type {kind:?} is not supported (only \"incremental\")"));
        }
    }
    if data.collections.is_empty() {
        return Err("`data-collections` names no table".into());
    }
    let mut tables = Vec::new();
    for c in &data.collections {
        let t = crate::config::parse_table_name(c).ok_or_else(|| format!("{c:?} is not a table name"))?;
        if !tables.contains(&t) {
            tables.push(t);
        }
    }
    Ok(Some(Request { id: id.to_string(), tables }))
}

/// `a` comes before `b` in transaction-id order (32-bit ids wrap around, as PostgreSQL's do).
fn precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Which transactions a chunk's snapshot saw (`pg_current_snapshot()`, low 32 bits of each id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visibility {
    pub xmin: u32,
    pub xmax: u32,
    pub running: HashSet<u32>,
}

impl Visibility {
    /// Parses `xmin:xmax:xip,xip,..`.
    pub fn parse(text: &str) -> Result<Visibility, String> {
        let bad = || format!("unexpected snapshot text {text:?}");
        let mut parts = text.trim().split(':');
        let xid = |s: Option<&str>| s.and_then(|s| s.parse::<u64>().ok()).map(|x| x as u32).ok_or_else(bad);
        let xmin = xid(parts.next())?;
        let xmax = xid(parts.next())?;
        let running = match parts.next() {
            Some("") | None => HashSet::new(),
            Some(list) => list.split(',').map(|s| xid(Some(s))).collect::<Result<_, _>>()?,
        };
        Ok(Visibility { xmin, xmax, running })
    }

    /// Whether a committed transaction's changes are in the snapshot.
    pub fn sees(&self, xid: u32) -> bool {
        precedes(xid, self.xmax) && !self.running.contains(&xid)
    }
}

/// A chunk read, waiting for the stream to reach its position.
#[derive(Debug)]
pub struct Chunk {
    /// The WAL insert position read right after the chunk's snapshot.
    pub at: Lsn,
    pub visibility: Visibility,
    pub rows: Vec<(KeyText, Vec<Datum>)>,
    /// The key to read the next chunk after (the last row read, before any was dropped).
    pub last_key: Option<KeyText>,
    /// Fewer rows than asked for: the table's last chunk.
    pub complete: bool,
    /// Rows dropped because the stream carries a newer image of them.
    pub dropped: u64,
}

impl Chunk {
    /// The position of the chunk's rows, `(commit, change)`: at [`Chunk::at`], after a
    /// transaction whose commit record starts there (its changes sit below it).
    pub fn position(&self) -> (Lsn, Lsn) {
        (self.at, Lsn(self.at.0.saturating_sub(1)))
    }

    /// A committed transaction `xid` changed the row with `key` (`None`: every row, a TRUNCATE)
    /// at or before the chunk's position: unless the chunk's snapshot saw it, the row leaves.
    pub fn changed(&mut self, xid: u32, key: Option<&KeyText>) {
        if self.visibility.sees(xid) {
            return;
        }
        let before = self.rows.len();
        match key {
            Some(key) => self.rows.retain(|(k, _)| k != key),
            None => self.rows.clear(),
        }
        self.dropped += (before - self.rows.len()) as u64;
    }
}

/// Where an incremental snapshot stands, as the offsets file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The signal's id.
    pub signal: String,
    /// `schema.table` of the tables still to read; the first is being read.
    pub tables: Vec<String>,
    /// The first table's last key read and acknowledged (`None`: from its start).
    pub after: Option<KeyText>,
}

/// The table being read.
pub struct TableRun {
    pub encoder: Arc<TableEncoder>,
    /// SQL type of each key column, to compare keys in the chunk query.
    key_types: Vec<String>,
    pub after: Option<KeyText>,
    /// Changes of the table since its read began that a later chunk's snapshot may not have
    /// seen: `(xid, key)`, `None` for a TRUNCATE. Pruned to transactions at or after the last
    /// chunk's `xmin` (all older ones are in every later snapshot).
    touched: Vec<(u32, Option<KeyText>)>,
    pub pending: Option<Chunk>,
    pub rows: u64,
    /// Transactions the stream decoded before this table's read began (the most recent ones).
    decoded_before: Vec<u32>,
}

/// An incremental snapshot in progress.
pub struct Incremental {
    pub signal: String,
    /// Tables after the current one.
    pub queue: VecDeque<(String, String)>,
    pub run: Option<TableRun>,
    /// Where the next table's read starts (a resumed snapshot's first table).
    pub resume_after: Option<KeyText>,
}

impl Incremental {
    pub fn new(request: Request) -> Incremental {
        Incremental { signal: request.id, queue: request.tables.into(), run: None, resume_after: None }
    }

    /// Resumes the snapshot that an offsets file recorded.
    pub fn resume(p: Progress) -> Incremental {
        let queue = p.tables.iter().filter_map(|t| crate::config::parse_table_name(t)).collect();
        Incremental { signal: p.signal, queue, run: None, resume_after: p.after }
    }

    /// Adds a request's tables that are not being read or queued yet.
    pub fn add(&mut self, request: Request) {
        for t in request.tables {
            let current = self
                .run
                .as_ref()
                .is_some_and(|r| (&r.encoder.shape.schema, &r.encoder.shape.name) == (&t.0, &t.1));
            if !current && !self.queue.contains(&t) {
                self.queue.push_back(t);
            }
        }
    }

    /// What to store: `None` once every table is read.
    pub fn progress(&self) -> Option<Progress> {
        let mut tables: Vec<String> = self.run.iter().map(|r| r.encoder.shape.qualified()).collect();
        tables.extend(self.queue.iter().map(|(s, t)| format!("{s}.{t}")));
        let after = match &self.run {
            Some(run) => run.after.clone(),
            None => self.resume_after.clone(),
        };
        (!tables.is_empty()).then(|| Progress { signal: self.signal.clone(), tables, after })
    }

    /// The position of the chunk waiting for the stream, if one is.
    pub fn pending_at(&self) -> Option<Lsn> {
        self.run.as_ref().and_then(|r| r.pending.as_ref()).map(|c| c.at)
    }
}

/// The key columns' values of a row.
pub fn key_of(t: &TableEncoder, row: &[Datum]) -> KeyText {
    t.shape
        .key
        .iter()
        .map(|&i| match row.get(i) {
            Some(Datum::Text(s)) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

impl TableRun {
    /// Starts reading a table (after `after`, when resuming). The table needs a primary key.
    pub async fn start(
        pool: &PgPool,
        encoder: Arc<TableEncoder>,
        after: Option<KeyText>,
        decoded_before: &VecDeque<u32>,
    ) -> Result<TableRun, String> {
        let shape = &encoder.shape;
        if shape.key.is_empty() {
            return Err(format!("{} has no primary key to read it in chunks by", shape.qualified()));
        }
        let mut key_types = Vec::new();
        for &i in &shape.key {
            let ty: Option<String> = sqlx::query_scalar(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = to_regclass(format('%I.%I', $1::text, $2::text)) AND attname = $3 AND NOT attisdropped",
            )
            .bind(&shape.schema)
            .bind(&shape.name)
            .bind(&shape.columns[i].name)
            .fetch_optional(pool)
            .await
            .map_err(|e| e.to_string())?;
            key_types.push(ty.ok_or_else(|| format!("{} changed while starting", shape.qualified()))?);
        }
        Ok(TableRun {
            encoder,
            key_types,
            after,
            touched: Vec::new(),
            pending: None,
            rows: 0,
            decoded_before: decoded_before.iter().copied().collect(),
        })
    }

    /// The stream decoded a committed change of this table by `xid`.
    pub fn changed(&mut self, xid: u32, key: Option<KeyText>) {
        if let Some(chunk) = &mut self.pending {
            chunk.changed(xid, key.as_ref());
        }
        self.touched.push((xid, key));
    }

    /// Reads the next chunk and holds it until the stream reaches its position. `Ok(false)`: the
    /// chunk's snapshot did not see a transaction that the stream decoded before this table's
    /// read began (a commit not yet visible when the snapshot was taken), whose changes to the
    /// table are not known here; the chunk is to be read again.
    pub async fn read_chunk(&mut self, pool: &PgPool, size: usize) -> Result<bool, CdcError> {
        let shape = &self.encoder.shape;
        let columns: Vec<String> =
            shape.columns.iter().map(|c| format!("{}::text", quote_ident(&c.name))).collect();
        // Qualified: a bare name in ORDER BY would mean the output column (the text).
        let keys: Vec<String> =
            shape.key.iter().map(|&i| format!("t.{}", quote_ident(&shape.columns[i].name))).collect();
        let mut sql = format!(
            "SELECT {} FROM {}.{} AS t",
            columns.join(", "),
            quote_ident(&shape.schema),
            quote_ident(&shape.name)
        );
        if self.after.is_some() {
            let params: Vec<String> =
                self.key_types.iter().enumerate().map(|(i, ty)| format!("${}::text::{ty}", i + 1)).collect();
            sql += &format!(" WHERE ({}) > ({})", keys.join(", "), params.join(", "));
        }
        sql += &format!(" ORDER BY {} LIMIT {size}", keys.join(", "));

        let mut conn = pool.acquire().await?;
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *conn).await?;
        sqlx::query("SET LOCAL TIME ZONE 'UTC'").execute(&mut *conn).await?;
        sqlx::query("SET LOCAL DateStyle = 'ISO, YMD'").execute(&mut *conn).await?;
        // The first query takes the transaction's snapshot.
        let snapshot: String =
            sqlx::query_scalar("SELECT pg_current_snapshot()::text").fetch_one(&mut *conn).await?;
        let mut query = sqlx::query(&sql);
        for v in self.after.iter().flatten() {
            query = query.bind(v.clone());
        }
        let fetched = query.fetch_all(&mut *conn).await;
        let at: String =
            sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text").fetch_one(&mut *conn).await?;
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        let fetched = fetched?;
        // Something past the position in the WAL, so that an idle server's stream reaches it.
        sqlx::query("SELECT pg_logical_emit_message(false, 'rainbow', 'incremental snapshot chunk')")
            .execute(&mut *conn)
            .await?;
        let visibility = Visibility::parse(&snapshot).map_err(CdcError::IncrementalSnapshot)?;
        let at: Lsn = at
            .parse()
            .map_err(|_| CdcError::IncrementalSnapshot(format!("unexpected WAL position {at:?}")))?;
        if visibility.running.iter().any(|x| self.decoded_before.contains(x)) {
            return Ok(false);
        }
        let mut rows = Vec::with_capacity(fetched.len());
        for row in &fetched {
            let datums: Vec<Datum> = (0..shape.columns.len())
                .map(|i| row.try_get::<Option<String>, _>(i).map(|v| v.map_or(Datum::Null, Datum::Text)))
                .collect::<Result<_, _>>()?;
            rows.push((key_of(&self.encoder, &datums), datums));
        }
        let complete = rows.len() < size;
        tracing::debug!(table = %self.encoder.table, after = ?self.after, read = rows.len(), %at, "chunk read");
        let last_key = rows.last().map(|(k, _)| k.clone()).or_else(|| self.after.clone());
        let mut chunk = Chunk { at, visibility, rows, last_key, complete, dropped: 0 };
        for (xid, key) in &self.touched {
            chunk.changed(*xid, key.as_ref());
        }
        let xmin = chunk.visibility.xmin;
        self.touched.retain(|(xid, _)| !precedes(*xid, xmin));
        self.pending = Some(chunk);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_sees_committed_transactions_before_xmax_and_not_running() {
        let v = Visibility::parse("100:105:101,103").unwrap();
        assert!(v.sees(99) && v.sees(100) && v.sees(102) && v.sees(104));
        assert!(!v.sees(101) && !v.sees(103) && !v.sees(105) && !v.sees(200));
        // 64-bit ids: the low 32 bits, compared with wrap-around.
        let v =
            Visibility::parse(&format!("{}:{}:", (1u64 << 32) + 4_294_967_290, (2u64 << 32) + 3)).unwrap();
        assert!(v.sees(4_294_967_295) && v.sees(2) && !v.sees(3) && !v.sees(10));
        assert_eq!(Visibility::parse("5:9:").unwrap().running.len(), 0);
        assert!(Visibility::parse("x:1:").is_err());
    }

    #[test]
    fn rows_a_later_transaction_changed_leave_the_chunk() {
        let row = |k: &str| (vec![Some(k.to_string())], vec![Datum::Text(k.into())]);
        let mut chunk = Chunk {
            at: Lsn(1000),
            visibility: Visibility::parse("10:20:15").unwrap(),
            rows: vec![row("1"), row("2"), row("3")],
            last_key: Some(vec![Some("3".into())]),
            complete: false,
            dropped: 0,
        };
        chunk.changed(12, Some(&vec![Some("1".into())]));
        assert_eq!(chunk.rows.len(), 3, "a transaction the snapshot saw is in the rows");
        chunk.changed(15, Some(&vec![Some("1".into())]));
        chunk.changed(25, Some(&vec![Some("3".into())]));
        assert_eq!(chunk.rows.iter().map(|r| r.0[0].clone().unwrap()).collect::<Vec<_>>(), ["2"]);
        chunk.changed(21, None);
        assert!(chunk.rows.is_empty());
        assert_eq!(chunk.dropped, 3);
        assert_eq!(chunk.position(), (Lsn(1000), Lsn(999)));
    }

    #[test]
    fn signals_name_tables_and_only_incremental_snapshots() {
        let r = parse_signal(
            "s1",
            "execute-snapshot",
            Some(r#"{"data-collections": ["public.customers", "products", "customers"], "type": "INCREMENTAL"}"#),
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.tables, [("public".into(), "customers".into()), ("public".into(), "products".into())]);
        assert_eq!(parse_signal("s2", "snapshot-table-done", Some("{}")).unwrap(), None);
        assert_eq!(parse_signal("s3", "log", None).unwrap(), None);
        for bad in
            [r#"{"data-collections": []}"#, r#"{"data-collections": ["a.b"], "type": "blocking"}"#, "x"]
        {
            assert!(parse_signal("s4", "execute-snapshot", Some(bad)).is_err(), "{bad}");
        }
    }
}
