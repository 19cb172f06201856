//! Change events as the core sees them, and their decoding from Debezium JSON envelopes.
//!
//! Decoding is pure and strict: a record either becomes one typed [`ChangeEvent`] or a
//! [`DecodeError`] that names what is wrong (the runtime parks it in the dead-letter topic). Both
//! JSON forms are accepted, with and without the `schema`/`payload` wrapper, and every
//! `decimal.handling.mode` of Debezium: `precise` (base64 of the unscaled big-endian integer, at
//! the scale the record's Connect schema declares for the column, or a `VariableScaleDecimal`
//! struct that carries its own), `string` ("13.34") and `double` (13.34). Money is exact: a
//! value with more decimal places than money has (0.01) is schema drift, never rounded, and a
//! `precise` value without a schema (whose scale is therefore unknown) is refused.

pub mod typed;

use base64::Engine;
use rainbow_schemas::money::Money;
use rainbow_schemas::time::parse_zoned;
pub use rainbow_schemas::wire::Op;
use rainbow_schemas::wire::{CommitPosition, Envelope, WireError};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The source tables the core understands, in the order the CDC snapshots them (parents first).
/// The order is the tie-break between tables at one position (snapshot rows share one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Table {
    Brands,
    Categories,
    Customers,
    Sellers,
    Payments,
    Promotions,
    Products,
    Orders,
    Orderdetails,
    Inventories,
    /// The signal table: on-demand snapshot requests and their completion (no output rows).
    Signals,
}

impl Table {
    pub const ALL: [Table; 11] = [
        Table::Brands,
        Table::Categories,
        Table::Customers,
        Table::Sellers,
        Table::Payments,
        Table::Promotions,
        Table::Products,
        Table::Orders,
        Table::Orderdetails,
        Table::Inventories,
        Table::Signals,
    ];

    pub fn name(self) -> &'static str {
        rainbow_schemas::postgres::SOURCE_TABLES[self as usize]
    }

    pub fn from_name(name: &str) -> Option<Table> {
        rainbow_schemas::postgres::SOURCE_TABLES.iter().position(|t| *t == name).map(|i| Table::ALL[i])
    }

    /// Rank in snapshot order (0 = brands).
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// The fact tables (orders, order lines), whose partitions are split among the instances
    /// of a scale-out (and the shards of a replay); the others are read whole by each.
    pub fn is_fact(self) -> bool {
        matches!(self, Table::Orders | Table::Orderdetails)
    }

    /// Whether instance `instance` of `instances` reads partition `partition` of this table's
    /// topic: every partition of a dimension, the fact partitions `p % instances == instance`.
    pub fn read_by(self, partition: i32, instances: i32, instance: i32) -> bool {
        !self.is_fact() || partition % instances == instance
    }
}

/// Where an event sits in source commit order.
///
/// `commit` is the LSN of the transaction's commit record (Rainbow's `source.sequence[0]`).
/// `change` is the LSN of the row change (`source.lsn`), below its commit's. A snapshot row
/// (`source.sequence` `[null, <consistent point>]`) sits just below the snapshot's consistent
/// point: `commit` = the point - 1, `change` = the point, so it follows everything streamed
/// before the snapshot (a later snapshot of the source, too, is applied in its place rather than
/// dropped) and precedes everything streamed after it; `change > commit` marks it. Ordering by
/// `(commit, change, table)` is commit order; equal triples are rows of one multi-row write (or
/// one snapshot table), whose relative order does not matter to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Position {
    pub commit: u64,
    pub change: u64,
    pub table: u8,
}

impl Position {
    pub const MIN: Position = Position { commit: 0, change: 0, table: 0 };

    /// A change's position on the wire, tie-broken by its table.
    pub fn new(at: CommitPosition, table: Table) -> Position {
        if at.commit == 0 {
            return Position::snapshot(at.change, table);
        }
        Position { commit: at.commit, change: at.change, table: table.rank() }
    }

    /// The position of a row of a snapshot whose consistent point is `at`.
    pub fn snapshot(at: u64, table: Table) -> Position {
        Position { commit: at.saturating_sub(1), change: at, table: table.rank() }
    }

    /// The position as the wire carries it (without the table).
    pub fn commit_position(&self) -> CommitPosition {
        if self.is_snapshot() {
            return CommitPosition { commit: 0, change: self.change };
        }
        CommitPosition { commit: self.commit, change: self.change }
    }

    /// The version stamped on every output row this event produces: the commit LSN, or for a
    /// snapshot row the snapshot's consistent point (below every later commit LSN).
    pub fn version(&self) -> u64 {
        if self.is_snapshot() {
            self.change
        } else {
            self.commit
        }
    }

    /// A snapshot row (a streamed change's LSN is below its commit's).
    pub fn is_snapshot(&self) -> bool {
        self.change > self.commit
    }
}

/// One row change of a source table, typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub op: Op,
    pub position: Position,
    /// Commit time of the source transaction (snapshot: the snapshot's time), ms since the epoch.
    pub ts_ms: i64,
    pub before: Option<SourceRow>,
    pub after: Option<SourceRow>,
}

impl ChangeEvent {
    pub fn table(&self) -> Table {
        Table::ALL[self.position.table as usize]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Brand {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub phone: Option<String>,
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seller {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub id: i64,
    pub method: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub id: i64,
    pub name: String,
    pub coupon_type: String,
    pub price_treatment: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub price: Money,
    pub original_price: Money,
    pub rating_average: Money,
    pub review_count: i64,
    pub sold_count: i64,
    pub category_id: i64,
    pub seller_id: i64,
    pub brand_id: i64,
    pub promotion_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: i64,
    pub customer_id: i64,
    pub payment_id: i64,
    /// `created_at`, µs since the epoch (UTC): the order's business date.
    pub created_at_us: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub order_id: i64,
    pub product_id: i64,
    pub quantity: i64,
    pub price: Money,
    pub promotion_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub product_id: i64,
    pub quantity: i64,
}

/// A row of the signal table (`rainbow_signal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub id: String,
    pub kind: String,
    pub data: Option<String>,
}

/// A row of one source table; `before` and `after` of an event are the same variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceRow {
    Brand(Brand),
    Category(Category),
    Customer(Customer),
    Seller(Seller),
    Payment(Payment),
    Promotion(Promotion),
    Product(Product),
    Order(Order),
    OrderLine(OrderLine),
    Inventory(Inventory),
    Signal(Signal),
}

/// Why a record is not a change event the core can apply. The runtime sends the record to the
/// dead-letter topic with this text as the reason.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not a Debezium change event: {0}")]
    Malformed(String),
    #[error("change event of unknown table {0:?}")]
    UnknownTable(String),
    #[error("unknown op {0:?}: expected c, r, u, d or t")]
    UnknownOp(String),
    #[error("schema drift in {table}.{field}: {reason}")]
    SchemaDrift { table: &'static str, field: String, reason: String },
    #[error("bad source position: {0}")]
    BadPosition(String),
}

impl DecodeError {
    /// The cause as a metric label value (`dead_letters_total{reason}`).
    pub fn cause(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed",
            DecodeError::UnknownTable(_) => "unknown_table",
            DecodeError::UnknownOp(_) => "unknown_op",
            DecodeError::SchemaDrift { .. } => "schema_drift",
            DecodeError::BadPosition(_) => "bad_position",
        }
    }
}

impl From<WireError> for DecodeError {
    fn from(e: WireError) -> DecodeError {
        match e {
            WireError::Malformed(m) => DecodeError::Malformed(m),
            WireError::UnknownOp(op) => DecodeError::UnknownOp(op),
            WireError::BadPosition(p) => DecodeError::BadPosition(p),
        }
    }
}

/// Decodes one Kafka record value. `Ok(None)` for a tombstone (no value), which carries nothing
/// the core needs (the delete before it did).
pub fn decode(value: Option<&[u8]>) -> Result<Option<ChangeEvent>, DecodeError> {
    let Some(value) = value else { return Ok(None) };
    let env = Envelope::parse(value)?;
    let op = env.op;
    let table = Table::from_name(&env.source.table)
        .ok_or_else(|| DecodeError::UnknownTable(env.source.table.to_string()))?;
    let position = Position::new(env.position()?, table);
    let scales = env.schema.map(|schema| Scales::of(table, schema.get())).transpose()?;
    let row = |raw: Option<&serde_json::value::RawValue>| -> Result<Option<SourceRow>, DecodeError> {
        raw.map(|r| decode_row(table, r.get(), scales.as_deref())).transpose()
    };
    let before = row(env.before)?;
    let after = row(env.after)?;
    match op {
        Op::Read | Op::Create if after.is_none() => {
            return Err(DecodeError::Malformed(format!("op {op:?} without `after`")))
        }
        Op::Update if after.is_none() => return Err(DecodeError::Malformed("op u without `after`".into())),
        Op::Delete if before.is_none() => {
            return Err(DecodeError::Malformed(
                "op d without `before` (the table needs REPLICA IDENTITY FULL or a key)".into(),
            ))
        }
        _ => {}
    }
    Ok(Some(ChangeEvent { op, position, ts_ms: env.source.ts_ms, before, after }))
}

fn drift(table: Table, field: &str, reason: impl Into<String>) -> DecodeError {
    DecodeError::SchemaDrift { table: table.name(), field: field.to_string(), reason: reason.into() }
}

/// The scale of every decimal column of a table's rows, as a record's Connect schema declares it
/// (the `after` struct, else `before`). Records of one table share their schema until the table
/// changes, so each thread keeps the last schema seen per table and parses a schema only when its
/// text differs.
#[derive(Debug, Default, PartialEq)]
struct Scales(Vec<(Box<str>, u32)>);

/// A schema's text and its scales.
type SeenSchema = (Box<str>, std::rc::Rc<Scales>);

impl Scales {
    fn of(table: Table, schema: &str) -> Result<std::rc::Rc<Scales>, DecodeError> {
        thread_local! {
            static LAST: std::cell::RefCell<Vec<Option<SeenSchema>>> =
                std::cell::RefCell::new(vec![None; Table::ALL.len()]);
        }
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            let slot = &mut last[table as usize];
            if let Some((text, scales)) = slot.as_ref() {
                if **text == *schema {
                    return Ok(scales.clone());
                }
            }
            let scales = std::rc::Rc::new(Scales::parse(table, schema)?);
            *slot = Some((schema.into(), scales.clone()));
            Ok(scales)
        })
    }

    fn parse(table: Table, schema: &str) -> Result<Scales, DecodeError> {
        #[derive(Deserialize)]
        struct Field {
            #[serde(default)]
            field: String,
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            parameters: Option<std::collections::HashMap<String, String>>,
            #[serde(default)]
            fields: Vec<Field>,
        }
        let envelope: Field = serde_json::from_str(schema).map_err(|e| {
            DecodeError::Malformed(format!("the record's `schema` is not a Connect schema: {e}"))
        })?;
        let row =
            ["after", "before"].iter().find_map(|side| envelope.fields.iter().find(|f| f.field == *side));
        let mut scales = Vec::new();
        for f in row.map(|r| r.fields.as_slice()).unwrap_or_default() {
            if f.name.as_deref() == Some("org.apache.kafka.connect.data.Decimal") {
                let scale =
                    f.parameters.as_ref().and_then(|p| p.get("scale")).and_then(|s| s.parse::<u32>().ok());
                let scale = scale
                    .ok_or_else(|| drift(table, &f.field, "a Decimal field without a numeric `scale`"))?;
                scales.push((f.field.as_str().into(), scale));
            }
        }
        Ok(Scales(scales))
    }

    fn get(&self, field: &str) -> Option<u32> {
        self.0.iter().find(|(f, _)| &**f == field).map(|(_, s)| *s)
    }
}

/// A numeric column in any `decimal.handling.mode`.
enum Numeric<'a> {
    Double(f64),
    Text(Cow<'a, str>),
    /// Debezium's `VariableScaleDecimal` (a `numeric` without a declared scale, precise mode).
    Variable {
        scale: u32,
        value: Cow<'a, str>,
    },
}

// Numeric and Timestamp deserialise a JSON number or string with a visitor, not as untagged
// enums: those buffer the value and build an error for every variant that misses, a cost paid on
// every numeric column of every event.
impl<'de: 'a, 'a> Deserialize<'de> for Numeric<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Numeric<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number or a decimal string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Numeric::Double(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Numeric::Double(v as f64))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Numeric::Double(v))
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Numeric::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Numeric::Text(Cow::Owned(v.to_string())))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let (mut scale, mut value) = (None, None);
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match &*key {
                        "scale" => scale = Some(map.next_value::<u32>()?),
                        "value" => value = Some(map.next_value::<Cow<'de, str>>()?),
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                match (scale, value) {
                    (Some(scale), Some(value)) => Ok(Numeric::Variable { scale, value }),
                    _ => Err(serde::de::Error::custom("a variable-scale decimal needs `scale` and `value`")),
                }
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Timestamp<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Timestamp<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer or an ISO-8601 timestamp")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Timestamp::Number(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(Timestamp::Number)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Timestamp::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Timestamp::Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl Numeric<'_> {
    /// The amount, exactly. `scales` is the record's schema (None without one): a `precise`
    /// value's scale comes from it.
    fn money(&self, table: Table, field: &str, scales: Option<&Scales>) -> Result<Money, DecodeError> {
        match self {
            Numeric::Double(v) => {
                let scaled = (v * 100.0).round();
                if !scaled.is_finite() || scaled.abs() >= 1e18 {
                    return Err(drift(table, field, format!("{v} is not a money amount")));
                }
                // A double from a column with more decimal places than money: refused, not rounded.
                if (v * 100.0 - scaled).abs() > 1e-6 * scaled.abs().max(1.0) {
                    return Err(drift(table, field, format!("{v} has more than 2 decimal places")));
                }
                Ok(Money(scaled as i64))
            }
            Numeric::Text(s)
                if s.contains('.') || s.starts_with('-') && s[1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                let d: rust_decimal::Decimal =
                    s.parse().map_err(|_| drift(table, field, format!("{s:?} is not a decimal")))?;
                Money::from_decimal(d).map_err(|e| drift(table, field, e.to_string()))
            }
            Numeric::Text(s) => {
                let Some(scale) = scales.and_then(|sc| sc.get(field)) else {
                    return Err(drift(
                        table,
                        field,
                        match scales {
                            None => format!(
                                "{s:?} is a `precise` decimal without the record's schema, so its scale is \
                                 unknown: set cdc.schemas_enable=true or cdc.decimal_handling_mode=string"
                            ),
                            Some(_) => {
                                format!("{s:?} is neither a decimal nor a Decimal of the record's schema")
                            }
                        },
                    ));
                };
                unscaled(table, field, s, scale)
            }
            Numeric::Variable { scale, value } => unscaled(table, field, value, *scale),
        }
    }
}

/// A Connect `Decimal`: the unscaled value as big-endian two's complement, base64, at `scale`.
fn unscaled(table: Table, field: &str, base64: &str, scale: u32) -> Result<Money, DecodeError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64.as_bytes())
        .map_err(|_| drift(table, field, format!("{base64:?} is not base64")))?;
    if bytes.is_empty() || bytes.len() > 12 {
        return Err(drift(table, field, format!("{} bytes do not fit a money amount", bytes.len())));
    }
    let mut v: i128 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
    for b in bytes {
        v = (v << 8) | i128::from(b);
    }
    let d = rust_decimal::Decimal::try_from_i128_with_scale(v, scale)
        .map_err(|e| drift(table, field, format!("unscaled {v} at scale {scale}: {e}")))?;
    Money::from_decimal(d).map_err(|e| drift(table, field, e.to_string()))
}

/// A `TIMESTAMPTZ` as Debezium's ZonedTimestamp ("2024-08-01T10:00:00.123456Z"), or µs / ms as a
/// number (time.precision.mode=connect gives ms).
enum Timestamp<'a> {
    Number(i64),
    Text(Cow<'a, str>),
}

impl Timestamp<'_> {
    fn micros(&self, table: Table, field: &str) -> Result<i64, DecodeError> {
        match self {
            Timestamp::Number(ms) => Ok(ms * 1000),
            Timestamp::Text(s) => parse_zoned(s)
                .ok_or_else(|| drift(table, field, format!("{s:?} is not an ISO-8601 UTC timestamp"))),
        }
    }
}

fn decode_row(table: Table, json: &str, scales: Option<&Scales>) -> Result<SourceRow, DecodeError> {
    fn parse<'a, T: Deserialize<'a>>(table: Table, json: &'a str) -> Result<T, DecodeError> {
        serde_json::from_str(json).map_err(|e| {
            let text = e.to_string();
            // "missing field `price`" names it; "invalid type: ..." does not: then the field is
            // the last key before where the error was found.
            let field = match text.strip_prefix("missing field `") {
                Some(rest) => rest.split('`').next().unwrap_or("?").to_string(),
                None => key_before(json, e.line(), e.column()).unwrap_or("?").to_string(),
            };
            DecodeError::SchemaDrift { table: table.name(), field, reason: text }
        })
    }
    Ok(match table {
        Table::Brands => {
            let r: IdName = parse(table, json)?;
            SourceRow::Brand(Brand { id: r.id, name: r.name })
        }
        Table::Categories => {
            let r: IdName = parse(table, json)?;
            SourceRow::Category(Category { id: r.id, name: r.name })
        }
        Table::Sellers => {
            let r: IdName = parse(table, json)?;
            SourceRow::Seller(Seller { id: r.id, name: r.name })
        }
        Table::Customers => {
            let r: RawCustomer = parse(table, json)?;
            SourceRow::Customer(Customer {
                id: r.id,
                name: r.name,
                email: r.email,
                phone: r.phone,
                address: r.address,
            })
        }
        Table::Payments => {
            let r: RawPayment = parse(table, json)?;
            SourceRow::Payment(Payment { id: r.id, method: r.method })
        }
        Table::Promotions => {
            let r: RawPromotion<'_> = parse(table, json)?;
            if r.coupon_type.parse::<rainbow_schemas::pricing::CouponType>().is_err() {
                return Err(drift(table, "coupon_type", format!("unknown coupon type {:?}", r.coupon_type)));
            }
            SourceRow::Promotion(Promotion {
                id: r.id,
                name: r.name,
                coupon_type: r.coupon_type,
                price_treatment: r.price_treatment.money(table, "price_treatment", scales)?,
            })
        }
        Table::Products => {
            let r: RawProduct<'_> = parse(table, json)?;
            SourceRow::Product(Product {
                id: r.id,
                name: r.name,
                price: r.price.money(table, "price", scales)?,
                original_price: r.original_price.money(table, "original_price", scales)?,
                rating_average: r.rating_average.money(table, "rating_average", scales)?,
                review_count: r.review_count,
                sold_count: r.sold_count,
                category_id: r.category_id,
                seller_id: r.seller_id,
                brand_id: r.brand_id,
                promotion_id: r.promotion_id,
            })
        }
        Table::Orders => {
            let r: RawOrder<'_> = parse(table, json)?;
            SourceRow::Order(Order {
                id: r.id,
                customer_id: r.customer_id,
                payment_id: r.payment_id,
                created_at_us: r.created_at.micros(table, "created_at")?,
            })
        }
        Table::Orderdetails => {
            let r: RawLine<'_> = parse(table, json)?;
            if r.quantity <= 0 {
                return Err(drift(table, "quantity", format!("{} is not a positive quantity", r.quantity)));
            }
            SourceRow::OrderLine(OrderLine {
                order_id: r.order_id,
                product_id: r.product_id,
                quantity: r.quantity,
                price: r.price.money(table, "price", scales)?,
                promotion_id: r.promotion_id,
            })
        }
        Table::Inventories => {
            let r: RawInventory = parse(table, json)?;
            SourceRow::Inventory(Inventory { product_id: r.product_id, quantity: r.quantity })
        }
        Table::Signals => {
            let r: RawSignal = parse(table, json)?;
            SourceRow::Signal(Signal { id: r.id, kind: r.kind, data: r.data })
        }
    })
}

/// The last object key that starts before `line`:`column` (1-based, as serde_json reports) of
/// `json`: the field whose value an error was found in.
fn key_before(json: &str, line: usize, column: usize) -> Option<&str> {
    let start: usize = json.split_inclusive('\n').take(line.saturating_sub(1)).map(str::len).sum();
    let before = json.get(..(start + column).min(json.len()))?;
    let colon = before.rfind("\":")?;
    let key_start = before[..colon].rfind('"')? + 1;
    Some(&before[key_start..colon])
}

#[derive(Deserialize)]
struct IdName {
    id: i64,
    name: String,
}

#[derive(Deserialize)]
struct RawCustomer {
    id: i64,
    name: String,
    email: String,
    // A nullable column must be present (null or a value): absent, it was dropped or renamed,
    // and the event is schema drift rather than a row with a defaulted NULL.
    #[serde(deserialize_with = "Option::deserialize")]
    phone: Option<String>,
    #[serde(deserialize_with = "Option::deserialize")]
    address: Option<String>,
}

#[derive(Deserialize)]
struct RawPayment {
    id: i64,
    method: String,
}

#[derive(Deserialize)]
struct RawPromotion<'a> {
    id: i64,
    name: String,
    coupon_type: String,
    #[serde(borrow)]
    price_treatment: Numeric<'a>,
}

#[derive(Deserialize)]
struct RawProduct<'a> {
    id: i64,
    name: String,
    #[serde(borrow)]
    price: Numeric<'a>,
    #[serde(borrow)]
    original_price: Numeric<'a>,
    #[serde(borrow)]
    rating_average: Numeric<'a>,
    review_count: i64,
    sold_count: i64,
    category_id: i64,
    seller_id: i64,
    brand_id: i64,
    #[serde(deserialize_with = "Option::deserialize")]
    promotion_id: Option<i64>,
}

#[derive(Deserialize)]
struct RawOrder<'a> {
    id: i64,
    customer_id: i64,
    payment_id: i64,
    #[serde(borrow)]
    created_at: Timestamp<'a>,
}

#[derive(Deserialize)]
struct RawLine<'a> {
    order_id: i64,
    product_id: i64,
    quantity: i64,
    #[serde(borrow)]
    price: Numeric<'a>,
    #[serde(deserialize_with = "Option::deserialize")]
    promotion_id: Option<i64>,
}

#[derive(Deserialize)]
struct RawSignal {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<String>,
}

#[derive(Deserialize)]
struct RawInventory {
    product_id: i64,
    quantity: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A products record as the CDC writes it; `schema` is the record's Connect schema or None
    /// (the bare form). `price` is precise at `scale`.
    fn product(schema: Option<(u32, &str)>, price: &str) -> Vec<u8> {
        let payload = format!(
            r#"{{"before":null,"after":{{"id":7,"name":"P","price":{price},"original_price":"13.34","rating_average":4.5,"review_count":2,"sold_count":0,"category_id":1,"seller_id":2,"brand_id":3,"promotion_id":null,"created_at":"2024-08-01T10:00:00.000000Z"}},"source":{{"version":"x","connector":"postgresql","name":"rb","ts_ms":1722506400000,"snapshot":"false","db":"d","sequence":"[\"100\",\"96\"]","schema":"public","table":"products","txId":5,"lsn":96,"xmin":null}},"op":"c","ts_ms":1}}"#
        );
        match schema {
            None => payload.into_bytes(),
            Some((scale, kind)) => {
                let price = match kind {
                    "decimal" => format!(
                        r#"{{"type":"bytes","optional":false,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{{"scale":"{scale}","connect.decimal.precision":"18"}},"field":"price"}}"#
                    ),
                    _ => r#"{"type":"struct","fields":[{"type":"int32","optional":false,"field":"scale"},{"type":"bytes","optional":false,"field":"value"}],"optional":false,"name":"io.debezium.data.VariableScaleDecimal","field":"price"}"#.to_string(),
                };
                let row = format!(
                    r#"{{"type":"struct","fields":[{{"type":"int64","optional":false,"field":"id"}},{price}],"optional":true,"field":"ROW"}}"#
                );
                format!(
                    r#"{{"schema":{{"type":"struct","fields":[{},{},{{"type":"string","optional":false,"field":"op"}}]}},"payload":{payload}}}"#,
                    row.replace("ROW", "before"),
                    row.replace("ROW", "after")
                )
                .into_bytes()
            }
        }
    }

    fn price(value: &[u8]) -> Result<Money, DecodeError> {
        match decode(Some(value))?.unwrap().after.unwrap() {
            SourceRow::Product(p) => Ok(p.price),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_both_json_forms_and_every_decimal_mode() {
        // 0x2710 = 10000: 100.00 at scale 2, 1.0000 at scale 4.
        let bare = product(None, r#""100.00""#);
        let e = decode(Some(&bare)).unwrap().unwrap();
        assert_eq!(e.position, Position { commit: 100, change: 96, table: Table::Products.rank() });
        let SourceRow::Product(p) = e.after.unwrap() else { panic!() };
        assert_eq!((p.price, p.original_price, p.rating_average), (Money(10000), Money(1334), Money(450)));
        assert_eq!(price(&product(Some((2, "decimal")), r#""JxA=""#)), Ok(Money(10000)));
        assert_eq!(
            decode(Some(&product(Some((2, "decimal")), r#""JxA=""#))).unwrap().unwrap().position.commit,
            100
        );
        assert_eq!(price(&product(None, "100.5")), Ok(Money(10050)));
        assert_eq!(decode(None).unwrap(), None);
    }

    #[test]
    fn a_precise_decimal_is_read_at_the_scale_its_schema_declares() {
        // A column widened to NUMERIC(18,4): 1.0000 is 1 VND, not 100.
        assert_eq!(price(&product(Some((4, "decimal")), r#""JxA=""#)), Ok(Money(100)));
        // 0x01E240 = 123456 at scale 4 = 12.3456: more places than money has, refused.
        match price(&product(Some((4, "decimal")), r#""AeJA""#)) {
            Err(DecodeError::SchemaDrift { field, reason, .. }) => {
                assert_eq!(field, "price");
                assert!(reason.contains("more than 2 decimal places"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Negative, and scale 0.
        assert_eq!(price(&product(Some((0, "decimal")), r#""/w==""#)), Ok(Money(-100)));
        // A numeric without a declared scale: the value carries it.
        assert_eq!(price(&product(Some((0, "variable")), r#"{"scale":4,"value":"JxA="}"#)), Ok(Money(100)));
        // Without a schema the scale is unknown: refused with what to do, never assumed.
        match price(&product(None, r#""JxA=""#)) {
            Err(DecodeError::SchemaDrift { reason, .. }) => {
                assert!(reason.contains("schemas_enable"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // A double with more places than money has: refused, not rounded.
        assert!(matches!(price(&product(None, "12.3456")), Err(DecodeError::SchemaDrift { .. })));
        // The same schema twice, then another: each record is read at its own schema's scale.
        assert_eq!(price(&product(Some((2, "decimal")), r#""JxA=""#)), Ok(Money(10000)));
        assert_eq!(price(&product(Some((4, "decimal")), r#""JxA=""#)), Ok(Money(100)));
    }

    #[test]
    fn snapshot_rows_sort_before_streamed_changes() {
        let v = br#"{"before":null,"after":{"id":1,"name":"B"},"source":{"ts_ms":5,"table":"brands","lsn":500,"sequence":"[null,\"500\"]"},"op":"r"}"#;
        let e = decode(Some(v)).unwrap().unwrap();
        assert!(e.position.is_snapshot());
        assert_eq!(e.position.version(), 500);
    }

    #[test]
    fn names_what_is_wrong() {
        let unknown = br#"{"after":{"id":1},"source":{"ts_ms":5,"table":"coupons","lsn":5},"op":"c"}"#;
        assert_eq!(decode(Some(unknown)), Err(DecodeError::UnknownTable("coupons".into())));
        let drift = br#"{"after":{"id":1},"source":{"ts_ms":5,"table":"brands","lsn":5,"sequence":"[\"6\",\"5\"]"},"op":"c"}"#;
        match decode(Some(drift)) {
            Err(DecodeError::SchemaDrift { table: "brands", field, .. }) => assert_eq!(field, "name"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode(Some(b"{not json")), Err(DecodeError::Malformed(_))));
        // A nullable column that is absent (dropped, renamed) is drift, not NULL.
        let no_phone = br#"{"after":{"id":1,"name":"a","email":"e","address":null},"source":{"ts_ms":5,"table":"customers","lsn":5,"sequence":"[\"6\",\"5\"]"},"op":"c"}"#;
        match decode(Some(no_phone)) {
            Err(DecodeError::SchemaDrift { table: "customers", field, .. }) => assert_eq!(field, "phone"),
            other => panic!("{other:?}"),
        }
        let mistyped = br#"{"after":{"order_id":1,"product_id":2,"quantity":"A+g=","price":"1.00","promotion_id":null},"source":{"ts_ms":5,"table":"orderdetails","lsn":5,"sequence":"[\"6\",\"5\"]"},"op":"c"}"#;
        match decode(Some(mistyped)) {
            Err(DecodeError::SchemaDrift { table: "orderdetails", field, .. }) => {
                assert_eq!(field, "quantity")
            }
            other => panic!("{other:?}"),
        }
        let bad_op =
            br#"{"after":{"id":1,"name":"x"},"source":{"ts_ms":5,"table":"brands","lsn":5},"op":"x"}"#;
        assert_eq!(decode(Some(bad_op)), Err(DecodeError::UnknownOp("x".into())));
    }
}
