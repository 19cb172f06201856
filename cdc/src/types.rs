//! Debezium's mapping of PostgreSQL column types to Kafka Connect schemas and JSON values.
//!
//! The input is a column's text output form (what pgoutput sends and what `::text` gives in the
//! snapshot); the output is the JSON that Debezium's PostgreSQL connector, serialised by Kafka
//! Connect's JsonConverter, writes for the same value. Pure functions, unit-tested below.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Debezium's value for an unchanged TOASTed column that the WAL did not carry.
pub const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

/// Debezium's `decimal.handling.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DecimalHandling {
    /// Connect `Decimal`: the unscaled value as big-endian two's-complement bytes (base64 in JSON).
    #[default]
    Precise,
    /// A JSON number (float64); loses precision beyond 15-17 significant digits.
    Double,
    /// The decimal's text, e.g. `"13.34"`.
    String,
}

/// Debezium's `time.precision.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimePrecision {
    /// Debezium's own logical types, with the column's precision (ms or µs timestamps).
    #[default]
    Adaptive,
    /// Kafka Connect's built-in logical types (millisecond timestamps).
    Connect,
}

/// How values are encoded: Debezium's connector options that change the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TypeMapping {
    pub decimal: DecimalHandling,
    pub time: TimePrecision,
}

/// A PostgreSQL column type, as far as the mapping needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Bool,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// `numeric(precision, scale)`.
    Decimal {
        precision: u32,
        scale: u32,
    },
    /// `numeric` without a declared scale.
    VariableDecimal,
    /// text, varchar, char, name and every type without a mapping of its own.
    Text,
    Bytea,
    Date,
    /// `timestamp(precision)`, without time zone.
    Timestamp {
        precision: u32,
    },
    TimestampTz,
    Json,
    Uuid,
}

impl ColumnType {
    /// The type of a column from its type OID and type modifier (`atttypmod`, or the Relation
    /// message's modifier).
    pub fn from_pg(type_oid: u32, type_modifier: i32) -> ColumnType {
        match type_oid {
            16 => ColumnType::Bool,
            17 => ColumnType::Bytea,
            21 => ColumnType::Int16,
            23 | 26 => ColumnType::Int32,
            20 => ColumnType::Int64,
            700 => ColumnType::Float32,
            701 => ColumnType::Float64,
            1700 if type_modifier >= 4 => {
                let m = (type_modifier - 4) as u32;
                ColumnType::Decimal { precision: (m >> 16) & 0xFFFF, scale: m & 0xFFFF }
            }
            1700 => ColumnType::VariableDecimal,
            1082 => ColumnType::Date,
            1114 => {
                ColumnType::Timestamp { precision: if type_modifier < 0 { 6 } else { type_modifier as u32 } }
            }
            1184 => ColumnType::TimestampTz,
            114 | 3802 => ColumnType::Json,
            2950 => ColumnType::Uuid,
            _ => ColumnType::Text,
        }
    }

    /// The Connect field schema of a column named `field`.
    pub fn field_schema(&self, field: &str, optional: bool, mapping: TypeMapping) -> Value {
        let named = |ty: &str, name: &str| json!({"type": ty, "optional": optional, "name": name, "version": 1, "field": field});
        let plain = |ty: &str| json!({"type": ty, "optional": optional, "field": field});
        match (self, mapping.decimal, mapping.time) {
            (ColumnType::Bool, ..) => plain("boolean"),
            (ColumnType::Int16, ..) => plain("int16"),
            (ColumnType::Int32, ..) => plain("int32"),
            (ColumnType::Int64, ..) => plain("int64"),
            (ColumnType::Float32, ..) => plain("float"),
            (ColumnType::Float64, ..) => plain("double"),
            (ColumnType::Decimal { precision, scale }, DecimalHandling::Precise, _) => json!({
                "type": "bytes", "optional": optional, "name": "org.apache.kafka.connect.data.Decimal",
                "version": 1,
                "parameters": {"scale": scale.to_string(), "connect.decimal.precision": precision.to_string()},
                "field": field
            }),
            (ColumnType::VariableDecimal, DecimalHandling::Precise, _) => json!({
                "type": "struct",
                "fields": [
                    {"type": "int32", "optional": false, "field": "scale"},
                    {"type": "bytes", "optional": false, "field": "value"}
                ],
                "optional": optional, "name": "io.debezium.data.VariableScaleDecimal", "version": 1,
                "doc": "Variable scaled decimal", "field": field
            }),
            (ColumnType::Decimal { .. } | ColumnType::VariableDecimal, DecimalHandling::Double, _) => {
                plain("double")
            }
            (ColumnType::Decimal { .. } | ColumnType::VariableDecimal, DecimalHandling::String, _) => {
                plain("string")
            }
            (ColumnType::Text, ..) => plain("string"),
            (ColumnType::Bytea, ..) => plain("bytes"),
            (ColumnType::Date, _, TimePrecision::Adaptive) => named("int32", "io.debezium.time.Date"),
            (ColumnType::Date, _, TimePrecision::Connect) => {
                named("int32", "org.apache.kafka.connect.data.Date")
            }
            (ColumnType::Timestamp { precision }, _, TimePrecision::Adaptive) if *precision <= 3 => {
                named("int64", "io.debezium.time.Timestamp")
            }
            (ColumnType::Timestamp { .. }, _, TimePrecision::Adaptive) => {
                named("int64", "io.debezium.time.MicroTimestamp")
            }
            (ColumnType::Timestamp { .. }, _, TimePrecision::Connect) => {
                named("int64", "org.apache.kafka.connect.data.Timestamp")
            }
            (ColumnType::TimestampTz, ..) => named("string", "io.debezium.time.ZonedTimestamp"),
            (ColumnType::Json, ..) => named("string", "io.debezium.data.Json"),
            (ColumnType::Uuid, ..) => named("string", "io.debezium.data.Uuid"),
        }
    }

    /// Appends the JSON value of `text` (the column's text output) to `out`.
    pub fn write_json(&self, text: &str, mapping: TypeMapping, out: &mut Vec<u8>) -> Result<(), ValueError> {
        let bad = |reason: &'static str| ValueError { text: text.to_string(), reason };
        match self {
            ColumnType::Bool => out.extend_from_slice(match text {
                "t" | "true" => b"true",
                "f" | "false" => b"false",
                _ => return Err(bad("not a boolean")),
            }),
            ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => {
                text.parse::<i64>().map_err(|_| bad("not an integer"))?;
                out.extend_from_slice(text.as_bytes());
            }
            ColumnType::Float32 | ColumnType::Float64 => {
                write_float(text, out).map_err(|_| bad("not a number"))?
            }
            ColumnType::Decimal { scale, .. } => match mapping.decimal {
                DecimalHandling::Precise => {
                    let (negative, digits, _) =
                        decimal_digits(text, Some(*scale)).ok_or_else(|| bad("not a decimal"))?;
                    write_str(&BASE64.encode(twos_complement(negative, &digits)), out);
                }
                DecimalHandling::Double => write_float(text, out).map_err(|_| bad("not a decimal"))?,
                DecimalHandling::String => write_str(text, out),
            },
            ColumnType::VariableDecimal => match mapping.decimal {
                DecimalHandling::Precise => {
                    let (negative, digits, scale) =
                        decimal_digits(text, None).ok_or_else(|| bad("not a decimal"))?;
                    out.extend_from_slice(format!("{{\"scale\":{scale},\"value\":").as_bytes());
                    write_str(&BASE64.encode(twos_complement(negative, &digits)), out);
                    out.push(b'}');
                }
                DecimalHandling::Double => write_float(text, out).map_err(|_| bad("not a decimal"))?,
                DecimalHandling::String => write_str(text, out),
            },
            ColumnType::Text | ColumnType::Json | ColumnType::Uuid => write_str(text, out),
            ColumnType::Bytea => {
                let hex = text.strip_prefix("\\x").ok_or_else(|| bad("not bytea hex output"))?;
                let bytes = decode_hex(hex).ok_or_else(|| bad("not bytea hex output"))?;
                write_str(&BASE64.encode(bytes), out);
            }
            ColumnType::Date => {
                let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| bad("not a date"))?;
                let days = date
                    .signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch"))
                    .num_days();
                out.extend_from_slice(days.to_string().as_bytes());
            }
            ColumnType::Timestamp { precision } => {
                let ts = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
                    .map_err(|_| bad("not a timestamp"))?;
                let micros = ts.and_utc().timestamp_micros();
                let value = match mapping.time {
                    TimePrecision::Adaptive if *precision > 3 => micros,
                    _ => micros.div_euclid(1000),
                };
                out.extend_from_slice(value.to_string().as_bytes());
            }
            ColumnType::TimestampTz => {
                let ts = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
                    .map_err(|_| bad("not a timestamp with time zone"))?;
                write_str(&zoned_timestamp(ts.with_timezone(&Utc)), out);
            }
        }
        Ok(())
    }

    /// Appends Debezium's placeholder for an unchanged TOASTed value of this type.
    pub fn write_unavailable(&self, mapping: TypeMapping, out: &mut Vec<u8>) {
        let as_bytes = matches!(self, ColumnType::Bytea)
            || matches!(self, ColumnType::Decimal { .. } | ColumnType::VariableDecimal)
                && mapping.decimal == DecimalHandling::Precise;
        if as_bytes {
            write_str(&BASE64.encode(UNAVAILABLE_VALUE), out);
        } else {
            write_str(UNAVAILABLE_VALUE, out);
        }
    }
}

/// A value that does not parse as its column's type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("value {text:?} is {reason}")]
pub struct ValueError {
    pub text: String,
    pub reason: &'static str,
}

/// Debezium's ZonedTimestamp text: UTC, ISO-8601 with exactly six fraction digits, `Z`.
pub fn zoned_timestamp(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn write_float(text: &str, out: &mut Vec<u8>) -> Result<(), std::num::ParseFloatError> {
    let v: f64 = text.parse()?;
    serde_json::to_writer(&mut *out, &v).expect("writing to a Vec cannot fail");
    Ok(())
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect()
}

/// The sign, the unscaled decimal digits and the scale of a decimal's text. With `scale`, the
/// digits are padded to that many fraction digits (a numeric(p,s) value never has more).
fn decimal_digits(text: &str, scale: Option<u32>) -> Option<(bool, Vec<u8>, u32)> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let all = int.bytes().chain(frac.bytes());
    if !all.clone().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: Vec<u8> = all.map(|b| b - b'0').collect();
    let mut actual = frac.len() as u32;
    if let Some(scale) = scale {
        if actual > scale {
            return None;
        }
        digits.extend(std::iter::repeat_n(0, (scale - actual) as usize));
        actual = scale;
    }
    Some((negative, digits, actual))
}

/// The minimal big-endian two's-complement bytes of ±digits, as Java's
/// `BigInteger.toByteArray` gives them (what Connect's Decimal serialises).
fn twos_complement(negative: bool, digits: &[u8]) -> Vec<u8> {
    // Magnitude in base 256, big-endian.
    let mut magnitude: Vec<u8> = Vec::with_capacity(digits.len() / 2 + 1);
    for &d in digits {
        let mut carry = u32::from(d);
        for byte in magnitude.iter_mut().rev() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = (v & 0xFF) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            magnitude.insert(0, (carry & 0xFF) as u8);
            carry >>= 8;
        }
    }
    let zero = magnitude.iter().all(|b| *b == 0);
    if zero {
        return vec![0];
    }
    let first = magnitude.iter().position(|b| *b != 0).expect("non-zero");
    let mut bytes = magnitude[first..].to_vec();
    if !negative {
        if bytes[0] & 0x80 != 0 {
            bytes.insert(0, 0);
        }
        return bytes;
    }
    // Two's complement: invert and add one.
    for b in bytes.iter_mut() {
        *b = !*b;
    }
    for b in bytes.iter_mut().rev() {
        let (v, overflow) = b.overflowing_add(1);
        *b = v;
        if !overflow {
            break;
        }
    }
    if bytes[0] & 0x80 == 0 {
        bytes.insert(0, 0xFF);
    }
    while bytes.len() > 1 && bytes[0] == 0xFF && bytes[1] & 0x80 != 0 {
        bytes.remove(0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_of(ty: ColumnType, text: &str, mapping: TypeMapping) -> String {
        let mut out = Vec::new();
        ty.write_json(text, mapping, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn type_modifiers_give_precision_and_scale() {
        assert_eq!(
            ColumnType::from_pg(1700, (15 << 16 | 2) + 4),
            ColumnType::Decimal { precision: 15, scale: 2 }
        );
        assert_eq!(ColumnType::from_pg(1700, -1), ColumnType::VariableDecimal);
        assert_eq!(ColumnType::from_pg(1114, 3), ColumnType::Timestamp { precision: 3 });
        assert_eq!(ColumnType::from_pg(1114, -1), ColumnType::Timestamp { precision: 6 });
        assert_eq!(ColumnType::from_pg(1043, 24), ColumnType::Text);
    }

    #[test]
    fn twos_complement_matches_java_big_integer() {
        let cases: [(bool, &[u8], &[u8]); 8] = [
            (false, &[0], &[0x00]),
            (false, &[1, 3, 3, 4], &[0x05, 0x36]),
            (false, &[1, 2, 8], &[0x00, 0x80]),
            (true, &[1], &[0xFF]),
            (true, &[1, 2, 8], &[0x80]),
            (true, &[1, 2, 9], &[0xFF, 0x7F]),
            (true, &[2, 5, 5], &[0xFF, 0x01]),
            (true, &[2, 5, 6], &[0xFF, 0x00]),
        ];
        for (negative, digits, want) in cases {
            assert_eq!(twos_complement(negative, digits), want, "{negative} {digits:?}");
        }
        // 2^70 needs more than 64 bits.
        let digits: Vec<u8> = "1180591620717411303424".bytes().map(|b| b - b'0').collect();
        assert_eq!(twos_complement(false, &digits), [0x40, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn decimals_in_every_handling_mode() {
        let ty = ColumnType::Decimal { precision: 15, scale: 2 };
        let precise = TypeMapping::default();
        assert_eq!(json_of(ty, "13.34", precise), r#""BTY=""#);
        assert_eq!(json_of(ty, "13.3", precise), r#""BTI=""#);
        assert_eq!(json_of(ty, "-0.01", precise), r#""/w==""#);
        assert_eq!(json_of(ColumnType::VariableDecimal, "1.5", precise), r#"{"scale":1,"value":"Dw=="}"#);
        let double = TypeMapping { decimal: DecimalHandling::Double, ..precise };
        assert_eq!(json_of(ty, "13.34", double), "13.34");
        let string = TypeMapping { decimal: DecimalHandling::String, ..precise };
        assert_eq!(json_of(ty, "13.34", string), r#""13.34""#);
        let schema = ty.field_schema("price", false, precise);
        assert_eq!(schema["name"], "org.apache.kafka.connect.data.Decimal");
        assert_eq!(schema["parameters"]["scale"], "2");
        assert_eq!(schema["parameters"]["connect.decimal.precision"], "15");
    }

    #[test]
    fn temporal_values_in_both_precision_modes() {
        let adaptive = TypeMapping::default();
        let connect = TypeMapping { time: TimePrecision::Connect, ..adaptive };
        assert_eq!(json_of(ColumnType::Date, "2024-08-01", adaptive), "19936");
        assert_eq!(json_of(ColumnType::Date, "1969-12-31", connect), "-1");
        let ts3 = ColumnType::Timestamp { precision: 3 };
        let ts6 = ColumnType::Timestamp { precision: 6 };
        assert_eq!(json_of(ts3, "2024-08-01 10:00:00.123", adaptive), "1722506400123");
        assert_eq!(json_of(ts6, "2024-08-01 10:00:00.123456", adaptive), "1722506400123456");
        assert_eq!(json_of(ts6, "2024-08-01 10:00:00.123456", connect), "1722506400123");
        assert_eq!(ts6.field_schema("t", true, adaptive)["name"], "io.debezium.time.MicroTimestamp");
        assert_eq!(ts3.field_schema("t", true, adaptive)["name"], "io.debezium.time.Timestamp");
        assert_eq!(ts6.field_schema("t", true, connect)["name"], "org.apache.kafka.connect.data.Timestamp");
        let tz = ColumnType::TimestampTz;
        assert_eq!(
            json_of(tz, "2026-11-22 00:15:53.517506+00", adaptive),
            r#""2026-11-22T00:15:53.517506Z""#
        );
        assert_eq!(json_of(tz, "2026-11-22 07:15:53.5+07", adaptive), r#""2026-11-22T00:15:53.500000Z""#);
        assert_eq!(json_of(tz, "2026-11-22 05:45:00+05:30", adaptive), r#""2026-11-22T00:15:00.000000Z""#);
    }

    #[test]
    fn other_types_and_bad_values() {
        let m = TypeMapping::default();
        assert_eq!(json_of(ColumnType::Bool, "t", m), "true");
        assert_eq!(json_of(ColumnType::Int64, "-42", m), "-42");
        assert_eq!(json_of(ColumnType::Text, "a\"b\n", m), r#""a\"b\n""#);
        assert_eq!(json_of(ColumnType::Json, r#"{"a": 1}"#, m), r#""{\"a\": 1}""#);
        assert_eq!(json_of(ColumnType::Bytea, "\\x0102ff", m), r#""AQL/""#);
        assert_eq!(json_of(ColumnType::Float64, "1.5", m), "1.5");
        let mut out = Vec::new();
        let err = ColumnType::Int32.write_json("12a", m, &mut out).unwrap_err();
        assert_eq!(err.to_string(), r#"value "12a" is not an integer"#);
        let mut out = Vec::new();
        ColumnType::Text.write_unavailable(m, &mut out);
        assert_eq!(out, br#""__debezium_unavailable_value""#);
    }
}
