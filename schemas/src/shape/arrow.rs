//! Warehouse rows as Arrow record batches: the Parquet form of every output table, and the form
//! the data-quality checks read.
//!
//! The columns, their order and their types derive from the table's definition
//! ([`crate::shape`]): each ClickHouse type has one Arrow type with the same meaning ([`arrow_type`]):
//! `Decimal(p, s)` is `Decimal128(p, s)`, `DateTime` is `Timestamp(Second, "UTC")`, `Date` is
//! `Date32`, `String` is `Utf8` (surrogate keys as their 16 hex digits), integers keep their
//! width and sign (flags stay `UInt8` as in ClickHouse). Every column is non-nullable. Values are
//! appended through serde, in field order, which the definition makes the column order.
//!
//! Conversion is deterministic: the same rows give equal batches, and the Parquet writer then
//! gives identical bytes.

use super::{TableDef, WarehouseRow};
use arrow::array::{
    ArrayRef, Date32Builder, Decimal128Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampSecondBuilder, UInt16Builder, UInt32Builder, UInt64Builder, UInt8Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::ser::{self, Impossible, Serialize};
use std::sync::Arc;

/// Rows that could not become columns.
#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error("columns: {0}")]
    Columns(String),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// The Arrow type of a ClickHouse column type, `None` for a type the warehouse does not use.
pub fn arrow_type(clickhouse: &str) -> Option<DataType> {
    Some(match clickhouse {
        "String" => DataType::Utf8,
        "Int32" => DataType::Int32,
        "Int64" => DataType::Int64,
        "UInt8" => DataType::UInt8,
        "UInt16" => DataType::UInt16,
        "UInt32" => DataType::UInt32,
        "UInt64" => DataType::UInt64,
        "DateTime" => DataType::Timestamp(TimeUnit::Second, Some("UTC".into())),
        "Date" => DataType::Date32,
        decimal => {
            let (p, s) = decimal.strip_prefix("Decimal(")?.strip_suffix(')')?.split_once(", ")?;
            DataType::Decimal128(p.parse().ok()?, s.parse().ok()?)
        }
    })
}

/// The Arrow schema of a table.
pub fn schema(table: &TableDef) -> SchemaRef {
    let fields: Vec<Field> = table
        .columns
        .iter()
        .map(|c| {
            let ty = arrow_type(c.clickhouse)
                .unwrap_or_else(|| panic!("{}.{}: no Arrow type for {}", table.name, c.name, c.clickhouse));
            Field::new(c.name, ty, false)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// The Arrow schema of a row type.
pub fn schema_of<R: WarehouseRow>() -> SchemaRef {
    schema(R::TABLE)
}

/// Builds record batches of one row type.
pub struct BatchBuilder {
    schema: SchemaRef,
    columns: Vec<Column>,
    rows: usize,
}

enum Column {
    Utf8(StringBuilder),
    I32(Int32Builder),
    I64(Int64Builder),
    U8(UInt8Builder),
    U16(UInt16Builder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    Ts(TimestampSecondBuilder),
    Date(Date32Builder),
    Dec(Decimal128Builder, u8, i8),
}

impl BatchBuilder {
    pub fn new(schema: SchemaRef) -> BatchBuilder {
        let columns = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Utf8 => Column::Utf8(StringBuilder::new()),
                DataType::Int32 => Column::I32(Int32Builder::new()),
                DataType::Int64 => Column::I64(Int64Builder::new()),
                DataType::UInt8 => Column::U8(UInt8Builder::new()),
                DataType::UInt16 => Column::U16(UInt16Builder::new()),
                DataType::UInt32 => Column::U32(UInt32Builder::new()),
                DataType::UInt64 => Column::U64(UInt64Builder::new()),
                DataType::Timestamp(..) => Column::Ts(TimestampSecondBuilder::new().with_timezone("UTC")),
                DataType::Date32 => Column::Date(Date32Builder::new()),
                DataType::Decimal128(p, s) => Column::Dec(Decimal128Builder::new(), *p, *s),
                other => unreachable!("schema_of never produces {other}"),
            })
            .collect();
        BatchBuilder { schema, columns, rows: 0 }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one row. The row type must be the one the schema came from.
    pub fn push<R: Serialize>(&mut self, row: &R) -> Result<(), ShapeError> {
        let mut w = Writer { columns: &mut self.columns, at: 0 };
        row.serialize(&mut w)?;
        self.rows += 1;
        Ok(())
    }

    /// The rows appended since the last call, as a batch.
    pub fn finish(&mut self) -> Result<RecordBatch, ShapeError> {
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|c| -> ArrayRef {
                match c {
                    Column::Utf8(b) => Arc::new(b.finish()),
                    Column::I32(b) => Arc::new(b.finish()),
                    Column::I64(b) => Arc::new(b.finish()),
                    Column::U8(b) => Arc::new(b.finish()),
                    Column::U16(b) => Arc::new(b.finish()),
                    Column::U32(b) => Arc::new(b.finish()),
                    Column::U64(b) => Arc::new(b.finish()),
                    Column::Ts(b) => Arc::new(b.finish()),
                    Column::Date(b) => Arc::new(b.finish()),
                    Column::Dec(b, p, s) => Arc::new(
                        b.finish().with_precision_and_scale(*p, *s).expect("precision and scale are valid"),
                    ),
                }
            })
            .collect();
        self.rows = 0;
        Ok(RecordBatch::try_new(self.schema.clone(), arrays)?)
    }
}

/// Rows of one type as one batch.
pub fn to_batch<R: WarehouseRow>(rows: impl IntoIterator<Item = R>) -> Result<RecordBatch, ShapeError> {
    let mut b = BatchBuilder::new(schema_of::<R>());
    for r in rows {
        b.push(&r)?;
    }
    b.finish()
}

/// The rows of `batch`, a table's Arrow form ([`schema`]), in ClickHouse's RowBinary: what
/// `INSERT INTO <table> FORMAT RowBinary` takes, the columns in the table's order and encoded as
/// [`crate::shape`] says (`Decimal(p, s)` as a 32-, 64- or 128-bit integer by its precision), so
/// any ClickHouse version (18.16 included) loads a replay's output as the processor writes rows.
pub fn row_binary(table: &TableDef, batch: &RecordBatch) -> Result<Vec<u8>, ShapeError> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{
        Date32Type, Decimal128Type, Int32Type, Int64Type, TimestampSecondType, UInt16Type, UInt32Type,
        UInt64Type, UInt8Type,
    };
    let bad = |column: &str, what: String| ShapeError::Columns(format!("{}.{column}: {what}", table.name));
    let mut columns = Vec::with_capacity(table.columns.len());
    for c in table.columns {
        let a = batch.column_by_name(c.name).ok_or_else(|| bad(c.name, "not in the batch".into()))?;
        let want = arrow_type(c.clickhouse)
            .ok_or_else(|| bad(c.name, format!("no Arrow type for {}", c.clickhouse)))?;
        if *a.data_type() != want {
            return Err(bad(c.name, format!("is {} where {want} was due", a.data_type())));
        }
        columns.push((c.name, a));
    }
    let mut out = Vec::with_capacity(batch.num_rows() * 16 * columns.len());
    for i in 0..batch.num_rows() {
        for (name, a) in &columns {
            if a.is_null(i) {
                return Err(bad(name, format!("null at row {i}")));
            }
            let range = |what: &str| bad(name, format!("{what} out of the column's range at row {i}"));
            match a.data_type() {
                DataType::Utf8 => {
                    let v = a.as_string::<i32>().value(i);
                    // The length as an unsigned LEB128 varint, then the bytes.
                    let mut n = v.len();
                    while n >= 0x80 {
                        out.push((n as u8) | 0x80);
                        n >>= 7;
                    }
                    out.push(n as u8);
                    out.extend_from_slice(v.as_bytes());
                }
                DataType::Int32 => out.extend(a.as_primitive::<Int32Type>().value(i).to_le_bytes()),
                DataType::Int64 => out.extend(a.as_primitive::<Int64Type>().value(i).to_le_bytes()),
                DataType::UInt8 => out.extend(a.as_primitive::<UInt8Type>().value(i).to_le_bytes()),
                DataType::UInt16 => out.extend(a.as_primitive::<UInt16Type>().value(i).to_le_bytes()),
                DataType::UInt32 => out.extend(a.as_primitive::<UInt32Type>().value(i).to_le_bytes()),
                DataType::UInt64 => out.extend(a.as_primitive::<UInt64Type>().value(i).to_le_bytes()),
                DataType::Timestamp(..) => {
                    let v = a.as_primitive::<TimestampSecondType>().value(i);
                    out.extend(u32::try_from(v).map_err(|_| range("a DateTime"))?.to_le_bytes());
                }
                DataType::Date32 => {
                    let v = a.as_primitive::<Date32Type>().value(i);
                    out.extend(u16::try_from(v).map_err(|_| range("a Date"))?.to_le_bytes());
                }
                DataType::Decimal128(p, _) => {
                    let v = a.as_primitive::<Decimal128Type>().value(i);
                    match p {
                        ..=9 => out.extend(i32::try_from(v).map_err(|_| range("a decimal"))?.to_le_bytes()),
                        10..=18 => {
                            out.extend(i64::try_from(v).map_err(|_| range("a decimal"))?.to_le_bytes())
                        }
                        _ => out.extend(v.to_le_bytes()),
                    }
                }
                other => return Err(bad(name, format!("type {other} has no RowBinary encoding here"))),
            }
        }
    }
    Ok(out)
}

// --- serde plumbing -------------------------------------------------------------------------

fn unsupported(what: &str) -> ShapeError {
    ShapeError::Columns(format!("a warehouse row holds {what}, which has no column type"))
}

impl ser::Error for ShapeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        ShapeError::Columns(msg.to_string())
    }
}

/// Appends a row's fields to the column builders, in order.
struct Writer<'a> {
    columns: &'a mut [Column],
    at: usize,
}

macro_rules! reject_rest {
    () => {
        fn serialize_bool(self, _: bool) -> Result<Self::Ok, ShapeError> {
            Err(unsupported("a bool"))
        }
        fn serialize_i8(self, _: i8) -> Result<Self::Ok, ShapeError> {
            Err(unsupported("an i8"))
        }
        fn serialize_i16(self, _: i16) -> Result<Self::Ok, ShapeError> {
            Err(unsupported("an i16"))
        }
        fn serialize_f32(self, _: f32) -> Result<Self::Ok, ShapeError> {
            Err(unsupported("a float"))
        }
        fn serialize_f64(self, _: f64) -> Result<Self::Ok, ShapeError> {
            Err(unsupported("a float"))
        }
        fn serialize_char(self, _: char) -> Result<Self::Ok, ShapeError> {
            Err(unsupported("a char"))
        }
        fn serialize_bytes(self, _: &[u8]) -> Result<Self::Ok, ShapeError> {
            Err(unsupported("bytes"))
        }
        fn serialize_none(self) -> Result<Self::Ok, ShapeError> {
            Err(unsupported("an Option"))
        }
        fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<Self::Ok, ShapeError> {
            Err(unsupported("an Option"))
        }
        fn serialize_unit(self) -> Result<Self::Ok, ShapeError> {
            Err(unsupported("a unit"))
        }
        fn serialize_unit_struct(self, _: &'static str) -> Result<Self::Ok, ShapeError> {
            Err(unsupported("a unit struct"))
        }
        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
        ) -> Result<Self::Ok, ShapeError> {
            Err(unsupported("an enum"))
        }
        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<Self::Ok, ShapeError> {
            Err(unsupported("an enum"))
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, ShapeError> {
            Err(unsupported("a sequence"))
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, ShapeError> {
            Err(unsupported("a tuple"))
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, ShapeError> {
            Err(unsupported("a tuple struct"))
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, ShapeError> {
            Err(unsupported("an enum"))
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, ShapeError> {
            Err(unsupported("a map"))
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, ShapeError> {
            Err(unsupported("an enum"))
        }
    };
}

/// The outer level: a row must be a struct.
macro_rules! outer_serializer {
    ($t:ty, $field:ty) => {
        impl<'s, 'a> ser::Serializer for &'s mut $t {
            type Ok = ();
            type Error = ShapeError;
            type SerializeSeq = Impossible<(), ShapeError>;
            type SerializeTuple = Impossible<(), ShapeError>;
            type SerializeTupleStruct = Impossible<(), ShapeError>;
            type SerializeTupleVariant = Impossible<(), ShapeError>;
            type SerializeMap = Impossible<(), ShapeError>;
            type SerializeStruct = Self;
            type SerializeStructVariant = Impossible<(), ShapeError>;
            reject_rest!();
            fn serialize_i32(self, _: i32) -> Result<(), ShapeError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_i64(self, _: i64) -> Result<(), ShapeError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_i128(self, _: i128) -> Result<(), ShapeError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_u8(self, _: u8) -> Result<(), ShapeError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_u16(self, _: u16) -> Result<(), ShapeError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_u32(self, _: u32) -> Result<(), ShapeError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_u64(self, _: u64) -> Result<(), ShapeError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_str(self, _: &str) -> Result<(), ShapeError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_newtype_struct<T: ?Sized + Serialize>(
                self,
                _: &'static str,
                v: &T,
            ) -> Result<(), ShapeError> {
                v.serialize(self)
            }
            fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, ShapeError> {
                Ok(self)
            }
        }
    };
}
outer_serializer!(Writer<'a>, ());

impl ser::SerializeStruct for &mut Writer<'_> {
    type Ok = ();
    type Error = ShapeError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ShapeError> {
        let column = self
            .columns
            .get_mut(self.at)
            .ok_or_else(|| ShapeError::Columns(format!("field {key} beyond the schema")))?;
        value.serialize(Cell { column, key })?;
        self.at += 1;
        Ok(())
    }
    fn end(self) -> Result<(), ShapeError> {
        Ok(())
    }
}

macro_rules! leaf_common {
    () => {
        type SerializeSeq = Impossible<Self::Ok, ShapeError>;
        type SerializeTuple = Impossible<Self::Ok, ShapeError>;
        type SerializeTupleStruct = Impossible<Self::Ok, ShapeError>;
        type SerializeTupleVariant = Impossible<Self::Ok, ShapeError>;
        type SerializeMap = Impossible<Self::Ok, ShapeError>;
        type SerializeStruct = Impossible<Self::Ok, ShapeError>;
        type SerializeStructVariant = Impossible<Self::Ok, ShapeError>;
        reject_rest!();
        fn serialize_newtype_struct<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            v: &T,
        ) -> Result<Self::Ok, ShapeError> {
            v.serialize(self)
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, ShapeError> {
            Err(unsupported("a nested struct"))
        }
    };
}

/// One field's value into its column builder.
struct Cell<'c> {
    column: &'c mut Column,
    key: &'static str,
}

impl Cell<'_> {
    fn mismatch(&self, got: &str) -> ShapeError {
        ShapeError::Columns(format!("field {} is {got}, not what its column holds", self.key))
    }
}

impl ser::Serializer for Cell<'_> {
    type Ok = ();
    type Error = ShapeError;
    leaf_common!();
    fn serialize_i32(self, v: i32) -> Result<(), ShapeError> {
        match self.column {
            Column::I32(b) => b.append_value(v),
            Column::Dec(b, ..) => b.append_value(i128::from(v)),
            _ => return Err(self.mismatch("an i32")),
        }
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), ShapeError> {
        match self.column {
            Column::I64(b) => b.append_value(v),
            Column::Dec(b, ..) => b.append_value(i128::from(v)),
            _ => return Err(self.mismatch("an i64")),
        }
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), ShapeError> {
        match self.column {
            Column::Dec(b, ..) => b.append_value(v),
            _ => return Err(self.mismatch("an i128")),
        }
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), ShapeError> {
        match self.column {
            Column::U8(b) => b.append_value(v),
            _ => return Err(self.mismatch("a u8")),
        }
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), ShapeError> {
        match self.column {
            Column::U16(b) => b.append_value(v),
            Column::Date(b) => b.append_value(i32::from(v)),
            _ => return Err(self.mismatch("a u16")),
        }
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), ShapeError> {
        match self.column {
            Column::U32(b) => b.append_value(v),
            Column::Ts(b) => b.append_value(i64::from(v)),
            _ => return Err(self.mismatch("a u32")),
        }
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), ShapeError> {
        match self.column {
            Column::U64(b) => b.append_value(v),
            _ => return Err(self.mismatch("a u64")),
        }
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), ShapeError> {
        match self.column {
            Column::Utf8(b) => b.append_value(v),
            _ => return Err(self.mismatch("a string")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::{DimProduct, FactSale, SurrogateKey, OPEN_VALID_TO, TABLES};
    use crate::Money;
    use arrow::array::{Array, Decimal128Array, StringArray, TimestampSecondArray};

    #[test]
    fn rows_become_typed_columns_in_ddl_order() {
        let p = DimProduct {
            product_key: SurrogateKey(0xabc),
            product_id: 7,
            name: "Phone".into(),
            price: Money(1_234_500),
            rating_average: 475,
            valid_from: 1_725_000_000,
            valid_to: OPEN_VALID_TO,
            is_current: 1,
            ..Default::default()
        };
        let batch = to_batch([p]).unwrap();
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(&names[..4], ["product_key", "product_id", "name", "price"]);
        assert_eq!(schema.field_with_name("price").unwrap().data_type(), &DataType::Decimal128(18, 2));
        assert_eq!(
            schema.field_with_name("rating_average").unwrap().data_type(),
            &DataType::Decimal128(9, 2)
        );
        let key = batch.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(key.value(0), "0000000000000abc");
        let price =
            batch.column_by_name("price").unwrap().as_any().downcast_ref::<Decimal128Array>().unwrap();
        assert_eq!(price.value_as_string(0), "12345.00");
        let to = batch.column_by_name("valid_to").unwrap();
        let to = to.as_any().downcast_ref::<TimestampSecondArray>().unwrap();
        assert_eq!(to.value(0), 4_102_444_800);
        assert_eq!(to.len(), 1);

        let f = to_batch(Vec::<FactSale>::new()).unwrap();
        assert_eq!(f.num_rows(), 0);
        assert_eq!(
            f.schema().field_with_name("extended_sales_amount").unwrap().data_type(),
            &DataType::Decimal128(18, 2)
        );
        assert_eq!(f.schema().field_with_name("version").unwrap().data_type(), &DataType::UInt64);
    }

    #[test]
    fn row_binary_encodes_each_column_as_clickhouse_reads_it() {
        let long = "x".repeat(200);
        let p = DimProduct {
            product_key: SurrogateKey(0xabc),
            product_id: 7,
            name: long.as_str().into(),
            price: Money(1_234_500),
            rating_average: 475,
            valid_from: 1_725_000_000,
            valid_to: OPEN_VALID_TO,
            is_current: 1,
            version: 9,
            ..Default::default()
        };
        let table = DimProduct::TABLE;
        let one = row_binary(table, &to_batch([p.clone()]).unwrap()).unwrap();
        let mut want = vec![16u8];
        want.extend(b"0000000000000abc");
        want.extend(7i64.to_le_bytes());
        want.extend([200, 1]); // 200 as a LEB128 varint
        want.extend(long.as_bytes());
        want.extend(1_234_500i64.to_le_bytes()); // Decimal(18, 2): Int64 of hundredths
        want.extend(0i64.to_le_bytes());
        want.extend(475i32.to_le_bytes()); // Decimal(9, 2): Int32
        assert_eq!(&one[..want.len()], want.as_slice());
        // review_count, sold_count, category "", brand "", seller_id, valid_from, valid_to,
        // is_current, version, is_deleted.
        let mut rest = Vec::new();
        rest.extend(0i64.to_le_bytes());
        rest.extend(0i64.to_le_bytes());
        rest.extend([0, 0]);
        rest.extend(0i64.to_le_bytes());
        rest.extend(1_725_000_000u32.to_le_bytes());
        rest.extend(4_102_444_800u32.to_le_bytes());
        rest.push(1);
        rest.extend(9u64.to_le_bytes());
        rest.push(0);
        assert_eq!(&one[want.len()..], rest.as_slice());
        let two = to_batch([p.clone(), p]).unwrap();
        assert_eq!(row_binary(table, &two).unwrap(), [one.clone(), one].concat());
        // Another table's batch is refused, naming the column.
        let err = row_binary(FactSale::TABLE, &two).unwrap_err().to_string();
        assert!(err.contains("fact_sales."), "{err}");
    }

    #[test]
    fn every_column_type_of_the_definition_has_an_arrow_type() {
        for t in TABLES {
            for c in t.columns {
                assert!(arrow_type(c.clickhouse).is_some(), "{}.{}: {}", t.name, c.name, c.clickhouse);
            }
        }
        assert_eq!(arrow_type("Array(String)"), None);
    }
}
