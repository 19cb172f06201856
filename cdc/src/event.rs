//! Debezium change events: the key and the envelope (value) of each record, in Kafka Connect
//! JsonConverter's JSON, with or without the `schema`/`payload` wrapper.
//!
//! A [`TableEncoder`] is built once per table shape: it serialises the Connect schemas once and
//! then writes each event's payload straight into a byte buffer, in Debezium's field order.

use crate::pgoutput::Datum;
use crate::types::{ColumnType, TypeMapping, ValueError};
use rainbow_schemas::wire::Lsn;
pub use rainbow_schemas::wire::Op;
use rainbow_schemas::wire::{wrap, Sequence};
use serde_json::{json, Value};
use std::io::Write;
use std::sync::Arc;

/// The `source.version` of our events: Rainbow's, so that a consumer can tell the producers apart.
pub const SOURCE_VERSION: &str = concat!("rainbow-", env!("CARGO_PKG_VERSION"));

/// A column as the events describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub optional: bool,
    /// The column default as a literal in text form (`42`, `none`, `false`), when it is a
    /// constant; Debezium shows it in the field schema.
    pub default: Option<String>,
}

/// A captured table: its columns in table order and which of them form the primary key (the
/// event key, in key order; empty for a table without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    pub key: Vec<usize>,
}

impl TableShape {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// `source.snapshot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMarker {
    False,
    True,
    First,
    FirstInDataCollection,
    LastInDataCollection,
    Last,
    /// A row of an on-demand incremental snapshot (read while streaming).
    Incremental,
}

impl SnapshotMarker {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMarker::False => "false",
            SnapshotMarker::True => "true",
            SnapshotMarker::First => "first",
            SnapshotMarker::FirstInDataCollection => "first_in_data_collection",
            SnapshotMarker::LastInDataCollection => "last_in_data_collection",
            SnapshotMarker::Last => "last",
            SnapshotMarker::Incremental => rainbow_schemas::wire::INCREMENTAL_SNAPSHOT,
        }
    }
}

/// What `source` says about where an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// Commit time of the transaction (snapshot: when the snapshot read the row), µs since epoch.
    pub ts_us: i64,
    pub snapshot: SnapshotMarker,
    pub tx_id: Option<u32>,
    /// WAL position of the change (snapshot: the slot's consistent point).
    pub lsn: Option<Lsn>,
    /// WAL position of the transaction's commit record: the first element of `sequence`.
    pub commit_lsn: Option<Lsn>,
}

/// The envelope's `transaction` block (transaction metadata on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxBlock<'a> {
    pub id: &'a str,
    pub total_order: u64,
    pub data_collection_order: u64,
}

/// Options shared by every table's encoder.
#[derive(Debug, Clone)]
pub struct EncoderSettings {
    /// `topic.prefix`, also `source.name` and the first part of schema names.
    pub prefix: String,
    /// `source.db`.
    pub database: String,
    pub schemas_enable: bool,
    pub mapping: TypeMapping,
}

/// A value that could not be encoded, with the column it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{table}.{column}: {source}")]
    Value { table: String, column: String, source: ValueError },
    #[error("{table}: the row has {found} columns, the table {expected}")]
    Arity { table: String, expected: usize, found: usize },
}

/// Encodes the events of one table shape.
#[derive(Debug)]
pub struct TableEncoder {
    pub topic: Arc<str>,
    /// `schema.table`, the metrics label.
    pub table: Arc<str>,
    pub shape: TableShape,
    settings: EncoderSettings,
    key_schema: String,
    envelope_schema: String,
    /// Per column, the JSON of its constant default. Kafka Connect's JsonConverter writes a
    /// field's schema default in place of a null value, so Debezium's events do too.
    defaults: Vec<Option<Vec<u8>>>,
    /// `"schema":"public","table":"orders"`, escaped once.
    source_table: String,
    /// Routing by one column (`cdc.partition_by`): its index and the topic's partition count.
    route: Option<(usize, i32)>,
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`), the hash of its default partitioner.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner gives `bytes` among `partitions`.
pub fn partition_of(bytes: &[u8], partitions: i32) -> i32 {
    (murmur2(bytes) & 0x7fff_ffff) % partitions.max(1)
}

/// Characters outside `[A-Za-z0-9_.]` become `_` in Connect schema names.
pub fn schema_name(raw: &str) -> String {
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' { c } else { '_' }).collect()
}

impl TableEncoder {
    /// Routes records by `column` among `partitions` (see `cdc.partition_by`); `None` keeps
    /// Kafka's partitioning by the whole key. Fails when the table has no such column.
    pub fn routed(mut self, column: Option<&str>, partitions: i32) -> Result<TableEncoder, String> {
        self.route = match column {
            None => None,
            Some(c) => match self.shape.columns.iter().position(|col| col.name == c) {
                Some(i) => Some((i, partitions)),
                None => {
                    return Err(format!(
                        "cdc.partition_by routes {} by {c:?}, which is not one of its columns",
                        self.shape.qualified()
                    ))
                }
            },
        };
        Ok(self)
    }

    /// The partition of a row's records when the table is routed by a column (`None`: by key).
    /// A null or unsent column value falls back to the key.
    pub fn partition(&self, row: &[Datum]) -> Option<i32> {
        let (column, partitions) = self.route?;
        match row.get(column)? {
            Datum::Text(v) => Some(partition_of(v.as_bytes(), partitions)),
            Datum::Null | Datum::UnchangedToast => None,
        }
    }

    pub fn new(shape: TableShape, topic: &str, settings: &EncoderSettings) -> TableEncoder {
        let base = schema_name(&format!("{}.{}.{}", settings.prefix, shape.schema, shape.name));
        let defaults: Vec<Option<Vec<u8>>> = shape
            .columns
            .iter()
            .map(|c| {
                c.default.as_deref().and_then(|text| {
                    let mut out = Vec::new();
                    c.ty.write_json(text, settings.mapping, &mut out).ok().map(|_| out)
                })
            })
            .collect();
        let field = |i: usize| {
            let c = &shape.columns[i];
            let mut schema = c.ty.field_schema(&c.name, c.optional, settings.mapping);
            let default = defaults[i].as_deref().and_then(|json| serde_json::from_slice::<Value>(json).ok());
            if let (Some(default), Some(map)) = (default, schema.as_object_mut()) {
                // Connect writes "default" just before "field".
                let name = map.shift_remove("field").expect("field schemas name their field");
                map.insert("default".into(), default);
                map.insert("field".into(), name);
            }
            schema
        };
        let key_schema = json!({
            "type": "struct",
            "fields": shape.key.iter().map(|&i| field(i)).collect::<Vec<_>>(),
            "optional": false,
            "name": format!("{base}.Key")
        });
        let row_schema = |name: &str| {
            json!({
                "type": "struct",
                "fields": (0..shape.columns.len()).map(field).collect::<Vec<_>>(),
                "optional": true,
                "name": format!("{base}.Value"),
                "field": name
            })
        };
        let envelope = json!({
            "type": "struct",
            "fields": [
                row_schema("before"),
                row_schema("after"),
                source_schema(),
                transaction_block_schema(),
                {"type": "string", "optional": false, "field": "op"},
                {"type": "int64", "optional": true, "field": "ts_ms"},
                {"type": "int64", "optional": true, "field": "ts_us"},
                {"type": "int64", "optional": true, "field": "ts_ns"}
            ],
            "optional": false,
            "name": format!("{base}.Envelope"),
            "version": 2
        });
        let source_table = format!(
            "\"schema\":{},\"table\":{}",
            Value::from(shape.schema.as_str()),
            Value::from(shape.name.as_str())
        );
        TableEncoder {
            topic: Arc::from(topic),
            table: Arc::from(shape.qualified()),
            shape,
            settings: settings.clone(),
            defaults,
            key_schema: key_schema.to_string(),
            envelope_schema: envelope.to_string(),
            source_table,
            route: None,
        }
    }

    /// The key's payload alone (what Debezium's `__debezium.oldkey`/`newkey` headers carry).
    pub fn key_payload(&self, row: &[Datum]) -> Result<Option<Vec<u8>>, EncodeError> {
        if self.shape.key.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(32);
        self.write_row(row, Some(&self.shape.key), &mut out)?;
        Ok(Some(out))
    }

    /// The record key for a row: the primary-key columns, or `None` for a table without one.
    pub fn key(&self, row: &[Datum]) -> Result<Option<Vec<u8>>, EncodeError> {
        if self.shape.key.is_empty() {
            return Ok(None);
        }
        self.check_arity(row)?;
        let mut out = Vec::with_capacity(64);
        if self.settings.schemas_enable {
            out.extend_from_slice(b"{\"schema\":");
            out.extend_from_slice(self.key_schema.as_bytes());
            out.extend_from_slice(b",\"payload\":");
        }
        self.write_row(row, Some(&self.shape.key), &mut out)?;
        if self.settings.schemas_enable {
            out.push(b'}');
        }
        Ok(Some(out))
    }

    /// The envelope of one change. `processed_ns` is when the reader handled it (the top-level
    /// `ts_*`).
    pub fn value(
        &self,
        op: Op,
        before: Option<&[Datum]>,
        after: Option<&[Datum]>,
        source: &Source,
        tx: Option<&TxBlock<'_>>,
        processed_ns: i64,
    ) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(
            256 + if self.settings.schemas_enable { self.envelope_schema.len() } else { 0 },
        );
        if self.settings.schemas_enable {
            out.extend_from_slice(b"{\"schema\":");
            out.extend_from_slice(self.envelope_schema.as_bytes());
            out.extend_from_slice(b",\"payload\":");
        }
        out.extend_from_slice(b"{\"before\":");
        match before {
            Some(row) => self.write_row(row, None, &mut out)?,
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"after\":");
        match after {
            Some(row) => self.write_row(row, None, &mut out)?,
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"source\":");
        self.write_source(source, &mut out);
        out.extend_from_slice(b",\"transaction\":");
        match tx {
            Some(tx) => {
                write!(
                    out,
                    "{{\"id\":{},\"total_order\":{},\"data_collection_order\":{}}}",
                    Value::from(tx.id),
                    tx.total_order,
                    tx.data_collection_order
                )
                .expect("Vec write");
            }
            None => out.extend_from_slice(b"null"),
        }
        write!(
            out,
            ",\"op\":\"{}\",\"ts_ms\":{},\"ts_us\":{},\"ts_ns\":{}}}",
            op.code(),
            processed_ns.div_euclid(1_000_000),
            processed_ns.div_euclid(1_000),
            processed_ns
        )
        .expect("Vec write");
        if self.settings.schemas_enable {
            out.push(b'}');
        }
        Ok(out)
    }

    fn check_arity(&self, row: &[Datum]) -> Result<(), EncodeError> {
        if row.len() != self.shape.columns.len() {
            return Err(EncodeError::Arity {
                table: self.shape.qualified(),
                expected: self.shape.columns.len(),
                found: row.len(),
            });
        }
        Ok(())
    }

    fn write_row(&self, row: &[Datum], only: Option<&[usize]>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.check_arity(row)?;
        out.push(b'{');
        let mut write_column = |n: usize, i: usize| -> Result<(), EncodeError> {
            let column = &self.shape.columns[i];
            if n > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, &column.name).expect("Vec write");
            out.push(b':');
            match &row[i] {
                Datum::Null => match &self.defaults[i] {
                    Some(default) => out.extend_from_slice(default),
                    None => out.extend_from_slice(b"null"),
                },
                Datum::UnchangedToast => column.ty.write_unavailable(self.settings.mapping, out),
                Datum::Text(text) => {
                    column.ty.write_json(text, self.settings.mapping, out).map_err(|source| {
                        EncodeError::Value {
                            table: self.shape.qualified(),
                            column: column.name.clone(),
                            source,
                        }
                    })?
                }
            }
            Ok(())
        };
        match only {
            Some(indices) => {
                for (n, &i) in indices.iter().enumerate() {
                    write_column(n, i)?;
                }
            }
            None => {
                for i in 0..row.len() {
                    write_column(i, i)?;
                }
            }
        }
        out.push(b'}');
        Ok(())
    }

    fn write_source(&self, s: &Source, out: &mut Vec<u8>) {
        let opt = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |v| v.to_string());
        let sequence = Sequence { commit: s.commit_lsn.map(|l| l.0), change: s.lsn.map(|l| l.0) }.to_text();
        write!(
            out,
            "{{\"version\":\"{}\",\"connector\":\"postgresql\",\"name\":{},\"ts_ms\":{},\"snapshot\":\"{}\",\"db\":{},\
             \"sequence\":{},\"ts_us\":{},\"ts_ns\":{},{},\"txId\":{},\"lsn\":{},\"xmin\":null}}",
            SOURCE_VERSION,
            Value::from(self.settings.prefix.as_str()),
            s.ts_us.div_euclid(1000),
            s.snapshot.as_str(),
            Value::from(self.settings.database.as_str()),
            Value::from(sequence),
            s.ts_us,
            s.ts_us.saturating_mul(1000),
            self.source_table,
            opt(s.tx_id.map(u64::from)),
            opt(s.lsn.map(|l| l.0)),
        )
        .expect("Vec write");
    }
}

/// The Connect schema of `source` (io.debezium.connector.postgresql.Source).
pub fn source_schema() -> Value {
    let f = |ty: &str, optional: bool, field: &str| json!({"type": ty, "optional": optional, "field": field});
    json!({
        "type": "struct",
        "fields": [
            f("string", false, "version"),
            f("string", false, "connector"),
            f("string", false, "name"),
            f("int64", false, "ts_ms"),
            {
                "type": "string", "optional": true, "name": "io.debezium.data.Enum", "version": 1,
                "parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
                "default": "false", "field": "snapshot"
            },
            f("string", false, "db"),
            f("string", true, "sequence"),
            f("int64", true, "ts_us"),
            f("int64", true, "ts_ns"),
            f("string", false, "schema"),
            f("string", false, "table"),
            f("int64", true, "txId"),
            f("int64", true, "lsn"),
            f("int64", true, "xmin")
        ],
        "optional": false,
        "name": "io.debezium.connector.postgresql.Source",
        "version": 1,
        "field": "source"
    })
}

fn transaction_block_schema() -> Value {
    json!({
        "type": "struct",
        "fields": [
            {"type": "string", "optional": false, "field": "id"},
            {"type": "int64", "optional": false, "field": "total_order"},
            {"type": "int64", "optional": false, "field": "data_collection_order"}
        ],
        "optional": true,
        "name": "event.block",
        "version": 1,
        "field": "transaction"
    })
}

/// A transaction's event count on one table, for the END record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionCount {
    pub data_collection: String,
    pub event_count: u64,
}

/// A BEGIN (`counts` = None) or END record of the transaction topic.
pub fn transaction_record(
    schemas_enable: bool,
    id: &str,
    commit_ms: i64,
    counts: Option<&[CollectionCount]>,
) -> (Vec<u8>, Vec<u8>) {
    let key_schema = json!({
        "type": "struct",
        "fields": [{"type": "string", "optional": false, "field": "id"}],
        "optional": false,
        "name": "io.debezium.connector.common.TransactionMetadataKey",
        "version": 1
    });
    let value_schema = json!({
        "type": "struct",
        "fields": [
            {"type": "string", "optional": false, "field": "status"},
            {"type": "string", "optional": false, "field": "id"},
            {"type": "int64", "optional": true, "field": "event_count"},
            {"type": "array", "items": {
                "type": "struct",
                "fields": [
                    {"type": "string", "optional": false, "field": "data_collection"},
                    {"type": "int64", "optional": false, "field": "event_count"}
                ],
                "optional": true,
                "name": "event.collection",
                "version": 1
            }, "optional": true, "field": "data_collections"},
            {"type": "int64", "optional": false, "field": "ts_ms"}
        ],
        "optional": false,
        "name": "io.debezium.connector.common.TransactionMetadataValue",
        "version": 1
    });
    let payload = match counts {
        None => {
            json!({"status": "BEGIN", "id": id, "event_count": null, "data_collections": null, "ts_ms": commit_ms})
        }
        Some(counts) => json!({
            "status": "END",
            "id": id,
            "event_count": counts.iter().map(|c| c.event_count).sum::<u64>(),
            "data_collections": counts.iter().map(|c| json!({
                "data_collection": c.data_collection, "event_count": c.event_count
            })).collect::<Vec<_>>(),
            "ts_ms": commit_ms
        }),
    };
    (wrap(schemas_enable, &key_schema, json!({"id": id})), wrap(schemas_enable, &value_schema, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_is_kafkas() {
        // The vectors of Kafka's own UtilsTest.
        for (data, want) in [
            (&b"21"[..], -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(murmur2(data), want, "{}", String::from_utf8_lossy(data));
        }
        let p = partition_of(b"42", 3);
        assert!((0..3).contains(&p));
        assert_eq!(p, partition_of(b"42", 3));
    }

    fn customers(schemas_enable: bool) -> TableEncoder {
        let shape = TableShape {
            schema: "public".into(),
            name: "customers".into(),
            columns: vec![
                Column { name: "id".into(), ty: ColumnType::Int64, optional: false, default: None },
                Column { name: "name".into(), ty: ColumnType::Text, optional: false, default: None },
                Column {
                    name: "amount".into(),
                    ty: ColumnType::Decimal { precision: 15, scale: 2 },
                    optional: true,
                    default: Some("0".into()),
                },
                Column {
                    name: "created_at".into(),
                    ty: ColumnType::TimestampTz,
                    optional: false,
                    default: None,
                },
            ],
            key: vec![0],
        };
        let settings = EncoderSettings {
            prefix: "rainbow".into(),
            database: "rainbow".into(),
            schemas_enable,
            mapping: TypeMapping::default(),
        };
        TableEncoder::new(shape, "rainbow.public.customers", &settings)
    }

    fn row(amount: &str) -> Vec<Datum> {
        vec![
            Datum::Text("1".into()),
            Datum::Text("alice".into()),
            Datum::Text(amount.into()),
            Datum::Text("2026-11-22 00:15:53.517506+00".into()),
        ]
    }

    #[test]
    fn update_event_matches_the_documented_shape() {
        let enc = customers(false);
        let source = Source {
            ts_us: 1_795_306_915_327_441,
            snapshot: SnapshotMarker::False,
            tx_id: Some(774),
            lsn: Some(Lsn(29_886_768)),
            commit_lsn: Some(Lsn(29_886_664)),
        };
        let value = enc
            .value(
                Op::Update,
                Some(&row("13.34")),
                Some(&row("14.34")),
                &source,
                None,
                1_795_306_915_401_234_567,
            )
            .unwrap();
        let v: Value = serde_json::from_slice(&value).unwrap();
        let want = json!({
            "before": {"id": 1, "name": "alice", "amount": "BTY=", "created_at": "2026-11-22T00:15:53.517506Z"},
            "after": {"id": 1, "name": "alice", "amount": "BZo=", "created_at": "2026-11-22T00:15:53.517506Z"},
            "source": {"version": SOURCE_VERSION, "connector": "postgresql", "name": "rainbow", "ts_ms": 1795306915327i64,
                "snapshot": "false", "db": "rainbow", "sequence": "[\"29886664\",\"29886768\"]",
                "ts_us": 1795306915327441i64, "ts_ns": 1795306915327441000i64, "schema": "public", "table": "customers",
                "txId": 774, "lsn": 29886768, "xmin": null},
            "transaction": null, "op": "u", "ts_ms": 1795306915401i64, "ts_us": 1795306915401234i64,
            "ts_ns": 1795306915401234567i64
        });
        assert_eq!(v, want);
        // Field order is Debezium's too.
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["before", "after", "source", "transaction", "op", "ts_ms", "ts_us", "ts_ns"]);
        assert_eq!(enc.key(&row("1")).unwrap().unwrap(), br#"{"id":1}"#);
    }

    #[test]
    fn wrapped_events_carry_connect_schemas() {
        let enc = customers(true);
        let key: Value = serde_json::from_slice(&enc.key(&row("1")).unwrap().unwrap()).unwrap();
        assert_eq!(key["schema"]["name"], "rainbow.public.customers.Key");
        assert_eq!(key["payload"], json!({"id": 1}));
        let source = Source {
            ts_us: 0,
            snapshot: SnapshotMarker::First,
            tx_id: None,
            lsn: Some(Lsn(1)),
            commit_lsn: None,
        };
        let v: Value =
            serde_json::from_slice(&enc.value(Op::Read, None, Some(&row("1")), &source, None, 0).unwrap())
                .unwrap();
        assert_eq!(v["schema"]["name"], "rainbow.public.customers.Envelope");
        assert_eq!(v["schema"]["fields"][0]["name"], "rainbow.public.customers.Value");
        assert_eq!(v["schema"]["fields"][2]["name"], "io.debezium.connector.postgresql.Source");
        assert_eq!(v["payload"]["source"]["snapshot"], "first");
        assert_eq!(v["payload"]["source"]["sequence"], "[null,\"1\"]");
        assert_eq!(v["payload"]["op"], "r");
        let amount = &v["schema"]["fields"][0]["fields"][2];
        assert_eq!(amount["default"], "AA==");
        let keys: Vec<&String> = amount.as_object().unwrap().keys().collect();
        assert_eq!(keys.last().unwrap().as_str(), "field");
    }

    #[test]
    fn bad_values_name_table_and_column() {
        let enc = customers(false);
        let source =
            Source { ts_us: 0, snapshot: SnapshotMarker::False, tx_id: None, lsn: None, commit_lsn: None };
        let err = enc.value(Op::Create, None, Some(&row("abc")), &source, None, 0).unwrap_err();
        assert_eq!(err.to_string(), "public.customers.amount: value \"abc\" is not a decimal");
        let err = enc.key(&[Datum::Null]).unwrap_err();
        assert!(matches!(err, EncodeError::Arity { expected: 4, found: 1, .. }));
    }
}
