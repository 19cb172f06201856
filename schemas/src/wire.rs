//! The wire contract between the CDC and every consumer of its topics (the processor, the
//! archiver, the workload simulator, any Debezium consumer): what a change event's position is
//! and how it is written, the op codes, the `source` fields consumers read, topic naming and the
//! heartbeat's header. Each format has one formatter and one parser, here.
//!
//! * **Position.** Every change event carries its transaction's commit position in
//!   `source.sequence` = `["<commit LSN>","<change LSN>"]` (decimal strings; [`Sequence`]).
//!   Snapshot rows (`op` = `r`) have a null commit LSN and the snapshot's consistent point as
//!   change LSN: they precede every streamed change. Ordering by `(commit, change)`
//!   ([`CommitPosition`]) is source commit order across tables. Real Debezium puts the
//!   *previous* transaction's commit LSN first; Rainbow puts the event's own, which is what
//!   ordering by commit needs. Without `sequence`, `source.lsn` alone is the position.
//! * **Op codes.** [`Op`]: `c`, `u`, `d`, `r`, `t`.
//! * **Topics.** [`TopicNaming`]: `<prefix>.<schema>.<table>` unless renamed, heartbeats on
//!   `__debezium-heartbeat.<prefix>`, transaction records on `<prefix>.transaction`.
//! * **Heartbeats.** Debezium's record (key `{"serverName": prefix}`, value `{"ts_ms": ..}`) plus
//!   Rainbow's header [`HEARTBEAT_ACKED_LSN_HEADER`]: a WAL position (decimal) before which every
//!   transaction's change events are in Kafka. A consumer that merges topics by commit order
//!   learns from it that an idle partition has nothing earlier to deliver; consumers that do not
//!   know the header ignore it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Why a record does not follow the wire contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a Debezium change event: {0}")]
    Malformed(String),
    #[error("unknown op {0:?}: expected c, r, u, d or t")]
    UnknownOp(String),
    #[error("bad source position: {0}")]
    BadPosition(String),
}

/// A PostgreSQL log sequence number: a byte position in the write-ahead log. Shown and stored as
/// PostgreSQL writes it (`16/B374D848`); change events carry it as a decimal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a WAL position like 16/B374D848")]
pub struct LsnParseError(String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Lsn, LsnParseError> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// Debezium's `op`. Snapshot rows (`r`) are inserts for a consumer that keeps state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Op {
    Read,
    Create,
    Update,
    Delete,
    Truncate,
}

impl Op {
    /// The one-letter code of the envelope.
    pub fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
        }
    }

    pub fn from_code(code: &str) -> Result<Op, WireError> {
        match code {
            "r" => Ok(Op::Read),
            "c" => Ok(Op::Create),
            "u" => Ok(Op::Update),
            "d" => Ok(Op::Delete),
            "t" => Ok(Op::Truncate),
            other => Err(WireError::UnknownOp(other.to_string())),
        }
    }
}

/// `source.sequence` as written: `[commit, change]`, each a decimal string or null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence {
    /// LSN of the transaction's commit record; `None` for snapshot rows.
    pub commit: Option<u64>,
    /// LSN of the change (snapshot rows: the consistent point).
    pub change: Option<u64>,
}

impl Sequence {
    /// The JSON text of the array (the value of the `sequence` string): `["12","10"]`.
    pub fn to_text(self) -> String {
        let part = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |v| format!("\"{v}\""));
        format!("[{},{}]", part(self.commit), part(self.change))
    }

    pub fn parse(text: &str) -> Result<Sequence, WireError> {
        let bad = || WireError::BadPosition(format!("sequence {text:?}"));
        let inner = text.trim().strip_prefix('[').and_then(|s| s.strip_suffix(']')).ok_or_else(bad)?;
        let mut parts = inner.split(',').map(str::trim);
        let mut next = || -> Result<Option<u64>, WireError> {
            match parts.next() {
                Some("null") => Ok(None),
                Some(p) => p.trim_matches('"').parse::<u64>().map(Some).map_err(|_| bad()),
                None => Err(bad()),
            }
        };
        let commit = next()?;
        let change = next()?;
        Ok(Sequence { commit, change })
    }
}

/// Where a change sits in source commit order. `commit` is 0 for snapshot rows, which precede
/// every streamed transaction; `(commit, change)` order is commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct CommitPosition {
    pub commit: u64,
    pub change: u64,
}

impl CommitPosition {
    pub fn is_snapshot(self) -> bool {
        self.commit == 0
    }

    /// The `sequence` this position is written as.
    pub fn sequence(self) -> Sequence {
        Sequence { commit: (!self.is_snapshot()).then_some(self.commit), change: Some(self.change) }
    }

    /// The position of a change from its `op` and `source` fields: `sequence` when present, else
    /// `lsn` alone (commit = change). A snapshot row's commit is 0 whatever `sequence` says,
    /// except for a row of an incremental snapshot (`source.snapshot` = `incremental`), read while
    /// streaming, which sits at its `sequence` like a streamed change; a streamed change must have
    /// a commit LSN.
    pub fn from_source(
        op: Op,
        snapshot: Option<&str>,
        sequence: Option<&str>,
        lsn: Option<u64>,
    ) -> Result<CommitPosition, WireError> {
        let bad = || WireError::BadPosition(format!("sequence {sequence:?}, lsn {lsn:?}"));
        let (commit, change) = match sequence {
            None => {
                let lsn = lsn.ok_or_else(bad)?;
                (lsn, lsn)
            }
            Some(text) => {
                let s = Sequence::parse(text).map_err(|_| bad())?;
                (s.commit.unwrap_or(0), s.change.or(lsn).ok_or_else(bad)?)
            }
        };
        if op == Op::Read && snapshot != Some(INCREMENTAL_SNAPSHOT) {
            return Ok(CommitPosition { commit: 0, change });
        }
        if commit == 0 {
            return Err(WireError::BadPosition("a streamed change without a commit LSN".into()));
        }
        Ok(CommitPosition { commit, change })
    }
}

/// The `source` fields a consumer reads (the others are skipped).
#[derive(Debug, Deserialize)]
pub struct SourceFields<'a> {
    #[serde(borrow)]
    pub table: Cow<'a, str>,
    /// Commit time of the transaction (snapshot: when the row was read), ms since the epoch.
    pub ts_ms: i64,
    pub lsn: Option<u64>,
    #[serde(default, borrow)]
    pub sequence: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub snapshot: Option<Cow<'a, str>>,
    /// The PostgreSQL transaction id.
    #[serde(default, rename = "txId")]
    pub tx_id: Option<i64>,
}

/// `source.snapshot` of a row of an incremental snapshot (read while streaming).
pub const INCREMENTAL_SNAPSHOT: &str = "incremental";

/// A change event's envelope as a consumer reads it: `op`, the `source` fields and the raw
/// `before` / `after` rows (decoded by the consumer, which knows the table).
#[derive(Debug)]
pub struct Envelope<'a> {
    /// The Connect schema of the record (the JSON form with the wrapper), as sent.
    pub schema: Option<&'a RawValue>,
    pub op: Op,
    pub source: SourceFields<'a>,
    pub before: Option<&'a RawValue>,
    pub after: Option<&'a RawValue>,
}

/// Both JSON forms in one pass: with the wrapper, `payload` holds the envelope and `schema` is
/// kept as sent (every field not named here is skipped); without it, the envelope's fields are at
/// the top level.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(default, borrow)]
    schema: Option<&'a RawValue>,
    #[serde(default, borrow)]
    payload: Option<Box<Fields<'a>>>,
    #[serde(default, borrow)]
    before: Option<&'a RawValue>,
    #[serde(default, borrow)]
    after: Option<&'a RawValue>,
    #[serde(default, borrow)]
    source: Option<SourceFields<'a>>,
    #[serde(default, borrow)]
    op: Option<Cow<'a, str>>,
}

impl<'a> Envelope<'a> {
    /// Parses a record value, with or without the `schema`/`payload` wrapper.
    pub fn parse(value: &'a [u8]) -> Result<Envelope<'a>, WireError> {
        let mut outer: Fields<'a> =
            serde_json::from_slice(value).map_err(|e| WireError::Malformed(e.to_string()))?;
        let schema = outer.schema.take().filter(|s| s.get() != "null");
        let f = match outer.payload {
            Some(payload) => *payload,
            None => outer,
        };
        let source = f.source.ok_or_else(|| WireError::Malformed("no `source` block".into()))?;
        let op = match f.op.as_deref() {
            Some(code) => Op::from_code(code)?,
            None => return Err(WireError::Malformed("no `op`".into())),
        };
        let row = |raw: Option<&'a RawValue>| raw.filter(|r| r.get() != "null");
        Ok(Envelope { schema, op, source, before: row(f.before), after: row(f.after) })
    }

    /// The change's position (see [`CommitPosition::from_source`]).
    pub fn position(&self) -> Result<CommitPosition, WireError> {
        CommitPosition::from_source(
            self.op,
            self.source.snapshot.as_deref(),
            self.source.sequence.as_deref(),
            self.source.lsn,
        )
    }
}

/// Debezium's transaction id: `"<xid>:<LSN of the message at hand>"`.
pub fn transaction_id(xid: u32, lsn: Lsn) -> String {
    format!("{xid}:{}", lsn.0)
}

/// Kafka header of the CDC's heartbeat records: see the module documentation.
pub const HEARTBEAT_ACKED_LSN_HEADER: &str = "rainbow.acked_lsn";

/// The value of [`HEARTBEAT_ACKED_LSN_HEADER`].
pub fn acked_header_value(acked: Lsn) -> String {
    acked.0.to_string()
}

/// Reads [`HEARTBEAT_ACKED_LSN_HEADER`]'s value; `None` when it is not a decimal position.
pub fn parse_acked_header(value: &[u8]) -> Option<Lsn> {
    std::str::from_utf8(value).ok()?.parse::<u64>().ok().map(Lsn)
}

/// The heartbeat record: key `{"serverName": prefix}`, value `{"ts_ms": now_ms}`, each wrapped
/// with its Connect schema when `schemas_enable`.
pub fn heartbeat_record(prefix: &str, schemas_enable: bool, now_ms: i64) -> (Vec<u8>, Vec<u8>) {
    let key_schema = json!({
        "type": "struct",
        "fields": [{"type": "string", "optional": false, "field": "serverName"}],
        "optional": false,
        "name": "io.debezium.connector.common.ServerNameKey",
        "version": 1
    });
    let value_schema = json!({
        "type": "struct",
        "fields": [{"type": "int64", "optional": false, "field": "ts_ms"}],
        "optional": false,
        "name": "io.debezium.connector.common.Heartbeat",
        "version": 1
    });
    (
        wrap(schemas_enable, &key_schema, json!({"serverName": prefix})),
        wrap(schemas_enable, &value_schema, json!({"ts_ms": now_ms})),
    )
}

/// `ts_ms` of a heartbeat value, in either JSON form.
pub fn heartbeat_ts_ms(value: &[u8]) -> Option<i64> {
    let v: Value = serde_json::from_slice(value).ok()?;
    v.get("payload").unwrap_or(&v).get("ts_ms")?.as_i64()
}

/// Wraps a payload in `{"schema":..,"payload":..}` when schemas are enabled (Kafka Connect's
/// JsonConverter with `schemas.enable`).
pub fn wrap(schemas_enable: bool, schema: &Value, payload: Value) -> Vec<u8> {
    let doc = if schemas_enable { json!({"schema": schema, "payload": payload}) } else { payload };
    serde_json::to_vec(&doc).expect("JSON values serialise")
}

/// Whether `s` can be (part of) a Kafka topic name: 1 to 249 letters, digits, `.`, `_`, `-`.
pub fn is_topic_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 249 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// How the CDC names its topics (Debezium's `topic.prefix` and Rainbow's renames); consumers
/// find the topics through the same rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNaming {
    /// `topic.prefix`, also `source.name`.
    pub prefix: String,
    /// Renames: `schema.table` (or `table`, for schema `public`) → topic.
    pub renames: BTreeMap<String, String>,
}

impl TopicNaming {
    pub fn new(prefix: impl Into<String>, renames: BTreeMap<String, String>) -> TopicNaming {
        TopicNaming { prefix: prefix.into(), renames }
    }

    /// The topic of a table's change events: its rename (by `schema.table`, or by `table` in
    /// schema `public`), else `<prefix>.<schema>.<table>`.
    pub fn table_topic(&self, schema: &str, table: &str) -> String {
        let qualified = format!("{schema}.{table}");
        self.renames
            .get(&qualified)
            .or_else(|| if schema == "public" { self.renames.get(table) } else { None })
            .cloned()
            .unwrap_or_else(|| format!("{}.{qualified}", self.prefix))
    }

    /// `__debezium-heartbeat.<prefix>`.
    pub fn heartbeat_topic(&self) -> String {
        format!("__debezium-heartbeat.{}", self.prefix)
    }

    /// `<prefix>.transaction`.
    pub fn transaction_topic(&self) -> String {
        format!("{}.transaction", self.prefix)
    }

    /// Whether `topic` is a heartbeat topic (of any prefix).
    pub fn is_heartbeat_topic(topic: &str) -> bool {
        topic.starts_with("__debezium-heartbeat.")
    }
}

impl TopicNaming {
    /// The naming a consumer of the CDC's topics (`[processor]`, `[archive]`) configures: its
    /// prefix (unset: [`DEFAULT_PREFIX`]) and renames.
    pub fn of_consumer(prefix: Option<&str>, renames: Option<&BTreeMap<String, String>>) -> TopicNaming {
        TopicNaming::new(prefix.unwrap_or(DEFAULT_PREFIX), renames.cloned().unwrap_or_default())
    }
}

/// Checks the naming settings of a consumer of the CDC's topics: the prefix, the schema of the
/// captured tables and the renames (keys captured tables, values topic names). `keys` are the
/// settings' names for error messages: `[prefix, schema, renames]`.
pub fn check_consumer_naming(
    keys: [&'static str; 3],
    prefix: Option<&str>,
    schema: &str,
    renames: Option<&BTreeMap<String, String>>,
) -> Result<(), crate::setting::InvalidSetting> {
    use crate::setting::check;
    let prefix = prefix.unwrap_or(DEFAULT_PREFIX);
    check(is_topic_name(prefix), keys[0], prefix, "a Kafka topic name part")?;
    check(is_topic_name(schema), keys[1], schema, "a schema name")?;
    for (table, topic) in renames.into_iter().flatten() {
        let bare = table.strip_prefix(&format!("{schema}.")).unwrap_or(table);
        check(
            crate::postgres::SOURCE_TABLES.contains(&bare),
            keys[2],
            table,
            "a captured table name (`table` or `schema.table`) as key",
        )?;
        check(is_topic_name(topic), keys[2], topic, "a Kafka topic name as value")?;
    }
    Ok(())
}

/// `topic.prefix` when none is configured.
pub const DEFAULT_PREFIX: &str = "rainbow";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_form_round_trips() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::ZERO);
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn positions_round_trip_through_sequence() {
        for p in [CommitPosition { commit: 100, change: 96 }, CommitPosition { commit: 0, change: 500 }] {
            let text = p.sequence().to_text();
            let op = if p.is_snapshot() { Op::Read } else { Op::Update };
            assert_eq!(CommitPosition::from_source(op, None, Some(&text), None).unwrap(), p, "{text}");
        }
        assert_eq!(CommitPosition { commit: 0, change: 500 }.sequence().to_text(), r#"[null,"500"]"#);
        assert_eq!(Sequence { commit: Some(7), change: Some(5) }.to_text(), r#"["7","5"]"#);
        // Without sequence, the lsn alone; a snapshot row's commit is 0 whatever sequence says.
        assert_eq!(
            CommitPosition::from_source(Op::Create, None, None, Some(9)).unwrap(),
            CommitPosition { commit: 9, change: 9 }
        );
        assert_eq!(
            CommitPosition::from_source(Op::Read, Some("true"), Some(r#"["3","4"]"#), None).unwrap().commit,
            0
        );
        // An incremental snapshot's row sits where its sequence says.
        assert_eq!(
            CommitPosition::from_source(Op::Read, Some("incremental"), Some(r#"["8","7"]"#), None).unwrap(),
            CommitPosition { commit: 8, change: 7 }
        );
        for bad in ["[\"x\",\"1\"]", "[1]", "1,2"] {
            assert!(CommitPosition::from_source(Op::Create, None, Some(bad), None).is_err(), "{bad}");
        }
        assert_eq!(
            CommitPosition::from_source(Op::Create, None, Some(r#"[null,"5"]"#), None),
            Err(WireError::BadPosition("a streamed change without a commit LSN".into()))
        );
    }

    #[test]
    fn envelopes_parse_in_both_json_forms() {
        let bare = br#"{"before":null,"after":{"id":1},"source":{"ts_ms":5,"table":"brands","lsn":96,"sequence":"[\"100\",\"96\"]","x":1},"op":"c","ts_ms":9}"#;
        let e = Envelope::parse(bare).unwrap();
        assert_eq!((e.op, e.source.table.as_ref(), e.source.ts_ms), (Op::Create, "brands", 5));
        assert_eq!(e.position().unwrap(), CommitPosition { commit: 100, change: 96 });
        assert!(e.before.is_none() && e.after.unwrap().get() == r#"{"id":1}"#);
        let wrapped =
            format!(r#"{{"schema":{{"type":"struct"}},"payload":{}}}"#, std::str::from_utf8(bare).unwrap());
        assert_eq!(Envelope::parse(wrapped.as_bytes()).unwrap().op, Op::Create);
        assert!(matches!(Envelope::parse(b"{not json"), Err(WireError::Malformed(_))));
        let bad_op = br#"{"source":{"ts_ms":5,"table":"brands","lsn":5},"op":"x"}"#;
        assert_eq!(Envelope::parse(bad_op).unwrap_err(), WireError::UnknownOp("x".into()));
        for op in [Op::Read, Op::Create, Op::Update, Op::Delete, Op::Truncate] {
            assert_eq!(Op::from_code(op.code()), Ok(op));
        }
    }

    #[test]
    fn heartbeats_and_topics() {
        let (key, value) = heartbeat_record("rb", true, 42);
        assert_eq!(heartbeat_ts_ms(&value), Some(42));
        assert!(String::from_utf8(key).unwrap().contains(r#""payload":{"serverName":"rb"}"#));
        assert_eq!(heartbeat_ts_ms(&heartbeat_record("rb", false, 7).1), Some(7));
        assert_eq!(parse_acked_header(acked_header_value(Lsn(123)).as_bytes()), Some(Lsn(123)));
        assert_eq!(parse_acked_header(b"1/2"), None);
        let naming = TopicNaming::new("rb", [("orders".to_string(), "o".to_string())].into());
        assert_eq!(naming.table_topic("public", "orders"), "o");
        assert_eq!(naming.table_topic("sales", "orders"), "rb.sales.orders");
        assert_eq!(naming.table_topic("public", "brands"), "rb.public.brands");
        assert_eq!(naming.heartbeat_topic(), "__debezium-heartbeat.rb");
        assert!(TopicNaming::is_heartbeat_topic(&naming.heartbeat_topic()));
        assert_eq!(naming.transaction_topic(), "rb.transaction");
        assert!(is_topic_name("a.b-c_d") && !is_topic_name("a b") && !is_topic_name(""));
    }
}
