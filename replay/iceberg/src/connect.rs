//! Kafka Connect field schemas (as Debezium writes them) to Iceberg types, and JSON values of
//! those fields to Arrow columns.

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder, Float64Builder, Int32Builder,
    Int64Builder, LargeBinaryBuilder, StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, TimeUnit};
use base64::Engine;
use iceberg::spec::{PrimitiveType, Type};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

/// How a field's JSON value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conv {
    Bool,
    Int,
    Long,
    Float,
    Double,
    /// Connect `Decimal`: base64 of the unscaled big-endian integer at `scale`.
    Decimal {
        precision: u32,
        scale: u32,
    },
    /// Days since the epoch.
    Date,
    /// Time of day, in units of `per_sec` per second.
    Time {
        per_sec: i64,
    },
    /// Timestamp without zone, in units of `per_sec` per second.
    Timestamp {
        per_sec: i64,
    },
    /// ISO-8601 text with an offset (`io.debezium.time.ZonedTimestamp`).
    ZonedTimestamp,
    Text,
    /// Base64 text.
    Bytes,
    /// Anything else (structs such as `VariableScaleDecimal`, arrays, maps): its JSON text.
    Json,
}

impl Conv {
    pub(crate) fn iceberg_type(self) -> Type {
        Type::Primitive(match self {
            Conv::Bool => PrimitiveType::Boolean,
            Conv::Int => PrimitiveType::Int,
            Conv::Long => PrimitiveType::Long,
            Conv::Float => PrimitiveType::Float,
            Conv::Double => PrimitiveType::Double,
            Conv::Decimal { precision, scale } => PrimitiveType::Decimal { precision, scale },
            Conv::Date => PrimitiveType::Date,
            Conv::Time { .. } => PrimitiveType::Time,
            Conv::Timestamp { .. } => PrimitiveType::Timestamp,
            Conv::ZonedTimestamp => PrimitiveType::Timestamptz,
            Conv::Text | Conv::Json => PrimitiveType::String,
            Conv::Bytes => PrimitiveType::Binary,
        })
    }
}

#[derive(Debug, Deserialize)]
struct FieldSchema {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    fields: Option<Vec<FieldSchema>>,
}

/// The columns of a row image in a record's Connect schema, in the schema's order.
pub(crate) type RowSchema = Vec<(String, Conv)>;

/// The row image's columns of an envelope's Connect schema (its `after` field, else `before`);
/// `None` when the schema has neither.
pub(crate) fn row_schema(envelope_schema: &str) -> Option<RowSchema> {
    let top: FieldSchema = serde_json::from_str(envelope_schema).ok()?;
    let fields = top.fields?;
    let row = fields
        .iter()
        .find(|f| f.field.as_deref() == Some("after"))
        .or_else(|| fields.iter().find(|f| f.field.as_deref() == Some("before")))?;
    Some(row.fields.as_ref()?.iter().filter_map(|f| Some((f.field.clone()?, conv(f)))).collect())
}

fn conv(f: &FieldSchema) -> Conv {
    let param = |k: &str| {
        f.parameters
            .as_ref()
            .and_then(|p| p.get(k))
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<u32>().ok())
    };
    match (f.kind.as_str(), f.name.as_deref()) {
        ("bytes", Some("org.apache.kafka.connect.data.Decimal")) => match param("scale") {
            Some(scale) => {
                let precision = param("connect.decimal.precision").unwrap_or(38).clamp(scale.max(1), 38);
                if scale > 38 {
                    Conv::Json
                } else {
                    Conv::Decimal { precision, scale }
                }
            }
            None => Conv::Json,
        },
        ("int32", Some("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date")) => Conv::Date,
        ("int32", Some("io.debezium.time.Time" | "org.apache.kafka.connect.data.Time")) => {
            Conv::Time { per_sec: 1_000 }
        }
        ("int64", Some("io.debezium.time.MicroTime")) => Conv::Time { per_sec: 1_000_000 },
        ("int64", Some("io.debezium.time.NanoTime")) => Conv::Time { per_sec: 1_000_000_000 },
        ("int64", Some("io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp")) => {
            Conv::Timestamp { per_sec: 1_000 }
        }
        ("int64", Some("io.debezium.time.MicroTimestamp")) => Conv::Timestamp { per_sec: 1_000_000 },
        ("int64", Some("io.debezium.time.NanoTimestamp")) => Conv::Timestamp { per_sec: 1_000_000_000 },
        ("string", Some("io.debezium.time.ZonedTimestamp")) => Conv::ZonedTimestamp,
        ("boolean", _) => Conv::Bool,
        ("int8" | "int16" | "int32", _) => Conv::Int,
        ("int64", _) => Conv::Long,
        ("float32", _) => Conv::Float,
        ("float64", _) => Conv::Double,
        ("string", _) => Conv::Text,
        ("bytes", _) => Conv::Bytes,
        _ => Conv::Json,
    }
}

/// Scales a count of `per_sec` units per second to microseconds.
fn micros(v: i64, per_sec: i64) -> i64 {
    match per_sec {
        1_000 => v * 1_000,
        1_000_000 => v,
        _ => v.div_euclid(per_sec / 1_000_000),
    }
}

/// A column being built, typed by its Arrow type (that of the table's Iceberg type).
pub(crate) enum Column {
    Bool(BooleanBuilder),
    Int(Int32Builder),
    Long(Int64Builder),
    Float(Float32Builder),
    Double(Float64Builder),
    Decimal(Decimal128Builder, u32, u32),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder, Option<Arc<str>>),
    Text(StringBuilder),
    Bytes(LargeBinaryBuilder),
}

/// A value that does not read as its schema says.
#[derive(Debug)]
pub(crate) struct BadValue(pub String);

impl Column {
    pub(crate) fn new(t: &DataType) -> Option<Column> {
        Some(match t {
            DataType::Boolean => Column::Bool(BooleanBuilder::new()),
            DataType::Int32 => Column::Int(Int32Builder::new()),
            DataType::Int64 => Column::Long(Int64Builder::new()),
            DataType::Float32 => Column::Float(Float32Builder::new()),
            DataType::Float64 => Column::Double(Float64Builder::new()),
            DataType::Decimal128(p, s) => Column::Decimal(Decimal128Builder::new(), *p as u32, *s as u32),
            DataType::Date32 => Column::Date(Date32Builder::new()),
            DataType::Time64(TimeUnit::Microsecond) => Column::Time(Time64MicrosecondBuilder::new()),
            DataType::Timestamp(TimeUnit::Microsecond, tz) => {
                Column::Timestamp(TimestampMicrosecondBuilder::new(), tz.clone())
            }
            DataType::Utf8 => Column::Text(StringBuilder::new()),
            DataType::LargeBinary => Column::Bytes(LargeBinaryBuilder::new()),
            _ => return None,
        })
    }

    pub(crate) fn null(&mut self) {
        match self {
            Column::Bool(b) => b.append_null(),
            Column::Int(b) => b.append_null(),
            Column::Long(b) => b.append_null(),
            Column::Float(b) => b.append_null(),
            Column::Double(b) => b.append_null(),
            Column::Decimal(b, ..) => b.append_null(),
            Column::Date(b) => b.append_null(),
            Column::Time(b) => b.append_null(),
            Column::Timestamp(b, _) => b.append_null(),
            Column::Text(b) => b.append_null(),
            Column::Bytes(b) => b.append_null(),
        }
    }

    /// Appends `v` (read as `conv` says); JSON null is a null.
    pub(crate) fn push(&mut self, conv: Conv, v: &Value) -> Result<(), BadValue> {
        if v.is_null() {
            self.null();
            return Ok(());
        }
        let bad = || BadValue(format!("{v} is not a {conv:?} value"));
        match (self, conv) {
            (Column::Bool(b), Conv::Bool) => b.append_value(v.as_bool().ok_or_else(bad)?),
            (Column::Int(b), Conv::Int) => {
                b.append_value(v.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or_else(bad)?)
            }
            (Column::Long(b), Conv::Int | Conv::Long) => b.append_value(v.as_i64().ok_or_else(bad)?),
            (Column::Float(b), Conv::Float) => b.append_value(v.as_f64().ok_or_else(bad)? as f32),
            (Column::Double(b), Conv::Float | Conv::Double) => b.append_value(v.as_f64().ok_or_else(bad)?),
            (Column::Decimal(b, table_precision, table_scale), Conv::Decimal { scale, .. }) => {
                let text = v.as_str().ok_or_else(bad)?;
                let raw = base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| bad())?;
                if raw.is_empty() || raw.len() > 16 {
                    return Err(bad());
                }
                // Sign-extend the big-endian two's complement.
                let fill = if raw[0] & 0x80 != 0 { 0xff } else { 0 };
                let mut bytes = [fill; 16];
                bytes[16 - raw.len()..].copy_from_slice(&raw);
                let unscaled = i128::from_be_bytes(bytes);
                // A value at a smaller scale than the table's is widened exactly.
                let up = table_scale.checked_sub(scale).ok_or_else(bad)?;
                let value = 10i128.checked_pow(up).and_then(|f| unscaled.checked_mul(f)).ok_or_else(bad)?;
                // More digits than the column's precision would not survive Parquet's fixed width.
                if 10u128.checked_pow(*table_precision).is_some_and(|limit| value.unsigned_abs() >= limit) {
                    return Err(bad());
                }
                b.append_value(value)
            }
            (Column::Date(b), Conv::Date) => {
                b.append_value(v.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or_else(bad)?)
            }
            (Column::Time(b), Conv::Time { per_sec }) => {
                b.append_value(micros(v.as_i64().ok_or_else(bad)?, per_sec))
            }
            (Column::Timestamp(b, None), Conv::Timestamp { per_sec }) => {
                b.append_value(micros(v.as_i64().ok_or_else(bad)?, per_sec))
            }
            // The processor's own reading of a ZonedTimestamp: what it refuses is not typed.
            (Column::Timestamp(b, Some(_)), Conv::ZonedTimestamp) => b.append_value(
                rainbow_schemas::time::parse_zoned(v.as_str().ok_or_else(bad)?).ok_or_else(bad)?,
            ),
            (Column::Text(b), Conv::Text) => b.append_value(v.as_str().ok_or_else(bad)?),
            (Column::Text(b), Conv::Json) => b.append_value(v.to_string()),
            (Column::Bytes(b), Conv::Bytes) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().ok_or_else(bad)?)
                    .map_err(|_| bad())?;
                b.append_value(raw)
            }
            _ => return Err(bad()),
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> ArrayRef {
        match self {
            Column::Bool(mut b) => Arc::new(b.finish()),
            Column::Int(mut b) => Arc::new(b.finish()),
            Column::Long(mut b) => Arc::new(b.finish()),
            Column::Float(mut b) => Arc::new(b.finish()),
            Column::Double(mut b) => Arc::new(b.finish()),
            Column::Decimal(mut b, p, s) => Arc::new(
                b.finish().with_precision_and_scale(p as u8, s as i8).expect("the table's decimal type"),
            ),
            Column::Date(mut b) => Arc::new(b.finish()),
            Column::Time(mut b) => Arc::new(b.finish()),
            Column::Timestamp(mut b, tz) => Arc::new(b.finish().with_timezone_opt(tz)),
            Column::Text(mut b) => Arc::new(b.finish()),
            Column::Bytes(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Whether values read as `new` fit a column made for `was` (exactly, without rounding).
pub(crate) fn fits(was: &Type, new: Conv) -> bool {
    let now = new.iceberg_type();
    if *was == now {
        return true;
    }
    match (was, &now) {
        (Type::Primitive(PrimitiveType::Long), Type::Primitive(PrimitiveType::Int)) => true,
        (Type::Primitive(PrimitiveType::Double), Type::Primitive(PrimitiveType::Float)) => true,
        (
            Type::Primitive(PrimitiveType::Decimal { precision: p0, scale: s0 }),
            Type::Primitive(PrimitiveType::Decimal { precision: p1, scale: s1 }),
        ) => s1 <= s0 && p1 - s1 <= p0 - s0,
        _ => false,
    }
}

/// The type Iceberg's schema evolution may promote a column of type `was` to (`int` -> `long`,
/// `float` -> `double`, a decimal's precision at the same scale) so that it holds, exactly,
/// both its values so far and values read as `new`; `None` when no promotion does (a decimal's
/// scale growing, `int` -> `decimal`, any other change).
pub(crate) fn promotion(was: &Type, new: Conv) -> Option<Type> {
    use PrimitiveType::{Decimal, Double, Float, Int, Long};
    let to = match (was, new.iceberg_type()) {
        (Type::Primitive(Int), Type::Primitive(Long)) => Type::Primitive(Long),
        (Type::Primitive(Float), Type::Primitive(Double)) => Type::Primitive(Double),
        (
            Type::Primitive(Decimal { precision: p0, scale: s0 }),
            Type::Primitive(Decimal { precision: p1, scale: s1 }),
        ) if s1 <= *s0 => {
            let digits = (p0.saturating_sub(*s0)).max(p1.saturating_sub(s1));
            let precision = digits + s0;
            if precision <= *p0 || precision > 38 {
                return None;
            }
            Type::Primitive(Decimal { precision, scale: *s0 })
        }
        _ => return None,
    };
    fits(&to, new).then_some(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debezium_field_schemas_map_to_iceberg_types() {
        let schema = r#"{"type":"struct","fields":[
          {"type":"struct","optional":true,"field":"before","fields":[{"type":"int32","optional":false,"field":"id"}]},
          {"type":"struct","optional":true,"field":"after","fields":[
            {"type":"int32","optional":false,"field":"id"},
            {"type":"bytes","optional":false,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"2","connect.decimal.precision":"12"},"field":"price"},
            {"type":"int64","optional":true,"name":"io.debezium.time.MicroTimestamp","version":1,"field":"at"},
            {"type":"string","optional":true,"name":"io.debezium.time.ZonedTimestamp","version":1,"field":"zoned"},
            {"type":"struct","optional":true,"name":"io.debezium.data.VariableScaleDecimal","fields":[],"field":"any"},
            {"type":"string","optional":true,"field":"name"}]}]}"#;
        let row = row_schema(schema).unwrap();
        let convs: Vec<_> = row.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        assert_eq!(
            convs,
            vec![
                ("id", Conv::Int),
                ("price", Conv::Decimal { precision: 12, scale: 2 }),
                ("at", Conv::Timestamp { per_sec: 1_000_000 }),
                ("zoned", Conv::ZonedTimestamp),
                ("any", Conv::Json),
                ("name", Conv::Text),
            ]
        );
    }

    #[test]
    fn decimals_read_exactly_and_widen_to_the_table_scale() {
        let mut c = Column::new(&DataType::Decimal128(14, 4)).unwrap();
        // -1234.56 at scale 2 is unscaled -123456 = 0xFE1DC0.
        let v = Value::String(base64::engine::general_purpose::STANDARD.encode([0xfe, 0x1d, 0xc0]));
        c.push(Conv::Decimal { precision: 12, scale: 2 }, &v).unwrap();
        assert!(c.push(Conv::Decimal { precision: 12, scale: 6 }, &v).is_err());
        // 123,456,789,012.34 has 14 digits: not a value of a DECIMAL(12,2) column.
        let mut narrow = Column::new(&DataType::Decimal128(12, 2)).unwrap();
        let wide = Value::String(
            base64::engine::general_purpose::STANDARD.encode(12_345_678_901_234_i64.to_be_bytes()),
        );
        assert!(narrow.push(Conv::Decimal { precision: 14, scale: 2 }, &wide).is_err());
        let a = c.finish();
        let a = a.as_any().downcast_ref::<arrow::array::Decimal128Array>().unwrap();
        assert_eq!(a.value_as_string(0), "-1234.5600");
        assert!(fits(
            &Conv::Decimal { precision: 14, scale: 4 }.iceberg_type(),
            Conv::Decimal { precision: 12, scale: 2 }
        ));
        assert!(!fits(
            &Conv::Decimal { precision: 12, scale: 2 }.iceberg_type(),
            Conv::Decimal { precision: 14, scale: 4 }
        ));
        assert!(!fits(&Conv::Int.iceberg_type(), Conv::Long));
    }

    #[test]
    fn only_iceberg_promotions_that_hold_both_types_exactly() {
        let dec = |precision, scale| Conv::Decimal { precision, scale };
        let int = Conv::Int.iceberg_type();
        assert_eq!(promotion(&int, Conv::Long), Some(Conv::Long.iceberg_type()));
        assert_eq!(promotion(&Conv::Float.iceberg_type(), Conv::Double), Some(Conv::Double.iceberg_type()));
        // NUMERIC(15,2) -> NUMERIC(18,2): the precision grows at the same scale.
        assert_eq!(promotion(&dec(15, 2).iceberg_type(), dec(18, 2)), Some(dec(18, 2).iceberg_type()));
        // A smaller scale with more integer digits: the table's scale, enough digits for both.
        assert_eq!(promotion(&dec(12, 2).iceberg_type(), dec(16, 1)), Some(dec(17, 2).iceberg_type()));
        // A scale that grows, beyond 38 digits, or another kind of type: no promotion.
        assert_eq!(promotion(&dec(12, 2).iceberg_type(), dec(18, 4)), None);
        assert_eq!(promotion(&dec(38, 2).iceberg_type(), dec(38, 0)), None);
        assert_eq!(promotion(&int, dec(10, 0)), None);
        assert_eq!(promotion(&int, Conv::Text), None);
        // Values that already fit need none.
        assert_eq!(promotion(&Conv::Long.iceberg_type(), Conv::Int), None);
    }
}
