//! Warehouse rows as Arrow record batches: the Parquet form of every output table.
//!
//! The columns and their order are those of the row structs in `rainbow_schemas::rows` (the
//! ClickHouse DDL's), read through serde, so a column added there appears here without a second
//! list. Column types follow the warehouse's meaning, not the wire encoding: money is
//! `Decimal128(18, 2)` (sums `Decimal128(38, 2)`, ratings `Decimal128(9, 2)`), `valid_from` /
//! `valid_to` are `Timestamp(Second, "UTC")`, `date` is `Date32`, surrogate keys are 16-hex UTF-8
//! strings, flags stay `UInt8` as in ClickHouse. Every column is non-nullable.
//!
//! Conversion is deterministic: the same rows give equal batches, and the Parquet writer then
//! gives identical bytes.

use crate::error::ReplayError;
use arrow::array::{
    ArrayRef, Date32Builder, Decimal128Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampSecondBuilder, UInt16Builder, UInt32Builder, UInt64Builder, UInt8Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::ser::{self, Impossible, Serialize};
use std::sync::Arc;

/// A warehouse table's rows: serialisable, with a default row to learn the columns from.
pub trait WarehouseRow: Serialize + Default {}
impl<T: Serialize + Default> WarehouseRow for T {}

/// Arrow type of a column, from its name and the primitive serde saw.
fn column_type(name: &str, primitive: Primitive) -> DataType {
    match (name, primitive) {
        ("valid_from" | "valid_to", Primitive::U32) => {
            DataType::Timestamp(TimeUnit::Second, Some("UTC".into()))
        }
        ("date", Primitive::U16) => DataType::Date32,
        ("rating_average", Primitive::I32) => DataType::Decimal128(9, 2),
        (_, Primitive::I128) => DataType::Decimal128(38, 2),
        (
            "price"
            | "original_price"
            | "price_treatment"
            | "regular_unit_price"
            | "discount_unit_price"
            | "net_unit_price"
            | "extended_sales_amount"
            | "extended_discount_amount",
            Primitive::I64,
        ) => DataType::Decimal128(18, 2),
        (_, Primitive::Str) => DataType::Utf8,
        (_, Primitive::I64) => DataType::Int64,
        (_, Primitive::I32) => DataType::Int32,
        (_, Primitive::U8) => DataType::UInt8,
        (_, Primitive::U16) => DataType::UInt16,
        (_, Primitive::U32) => DataType::UInt32,
        (_, Primitive::U64) => DataType::UInt64,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Primitive {
    Str,
    I32,
    I64,
    I128,
    U8,
    U16,
    U32,
    U64,
}

/// The Arrow schema of a row type.
pub fn schema_of<R: WarehouseRow>() -> Result<SchemaRef, ReplayError> {
    let mut probe = Probe::default();
    R::default().serialize(&mut probe)?;
    let fields: Vec<Field> =
        probe.columns.iter().map(|(name, p)| Field::new(*name, column_type(name, *p), false)).collect();
    Ok(Arc::new(Schema::new(fields)))
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
    pub fn push<R: Serialize>(&mut self, row: &R) -> Result<(), ReplayError> {
        let mut w = Writer { columns: &mut self.columns, at: 0 };
        row.serialize(&mut w)?;
        self.rows += 1;
        Ok(())
    }

    /// The rows appended since the last call, as a batch.
    pub fn finish(&mut self) -> Result<RecordBatch, ReplayError> {
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
pub fn to_batch<R: WarehouseRow>(rows: impl IntoIterator<Item = R>) -> Result<RecordBatch, ReplayError> {
    let mut b = BatchBuilder::new(schema_of::<R>()?);
    for r in rows {
        b.push(&r)?;
    }
    b.finish()
}

// --- serde plumbing -------------------------------------------------------------------------

fn unsupported(what: &str) -> ReplayError {
    ReplayError::Columns(format!("a warehouse row holds {what}, which has no column type"))
}

impl ser::Error for ReplayError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        ReplayError::Columns(msg.to_string())
    }
}

/// Learns column names and primitives from a row.
#[derive(Default)]
struct Probe {
    columns: Vec<(&'static str, Primitive)>,
}

/// Appends a row's fields to the column builders, in order.
struct Writer<'a> {
    columns: &'a mut [Column],
    at: usize,
}

macro_rules! reject_rest {
    () => {
        fn serialize_bool(self, _: bool) -> Result<Self::Ok, ReplayError> {
            Err(unsupported("a bool"))
        }
        fn serialize_i8(self, _: i8) -> Result<Self::Ok, ReplayError> {
            Err(unsupported("an i8"))
        }
        fn serialize_i16(self, _: i16) -> Result<Self::Ok, ReplayError> {
            Err(unsupported("an i16"))
        }
        fn serialize_f32(self, _: f32) -> Result<Self::Ok, ReplayError> {
            Err(unsupported("a float"))
        }
        fn serialize_f64(self, _: f64) -> Result<Self::Ok, ReplayError> {
            Err(unsupported("a float"))
        }
        fn serialize_char(self, _: char) -> Result<Self::Ok, ReplayError> {
            Err(unsupported("a char"))
        }
        fn serialize_bytes(self, _: &[u8]) -> Result<Self::Ok, ReplayError> {
            Err(unsupported("bytes"))
        }
        fn serialize_none(self) -> Result<Self::Ok, ReplayError> {
            Err(unsupported("an Option"))
        }
        fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<Self::Ok, ReplayError> {
            Err(unsupported("an Option"))
        }
        fn serialize_unit(self) -> Result<Self::Ok, ReplayError> {
            Err(unsupported("a unit"))
        }
        fn serialize_unit_struct(self, _: &'static str) -> Result<Self::Ok, ReplayError> {
            Err(unsupported("a unit struct"))
        }
        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
        ) -> Result<Self::Ok, ReplayError> {
            Err(unsupported("an enum"))
        }
        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<Self::Ok, ReplayError> {
            Err(unsupported("an enum"))
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, ReplayError> {
            Err(unsupported("a sequence"))
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, ReplayError> {
            Err(unsupported("a tuple"))
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, ReplayError> {
            Err(unsupported("a tuple struct"))
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, ReplayError> {
            Err(unsupported("an enum"))
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, ReplayError> {
            Err(unsupported("a map"))
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, ReplayError> {
            Err(unsupported("an enum"))
        }
    };
}

/// The outer level: a row must be a struct.
macro_rules! outer_serializer {
    ($t:ty, $field:ty) => {
        impl<'s, 'a> ser::Serializer for &'s mut $t {
            type Ok = ();
            type Error = ReplayError;
            type SerializeSeq = Impossible<(), ReplayError>;
            type SerializeTuple = Impossible<(), ReplayError>;
            type SerializeTupleStruct = Impossible<(), ReplayError>;
            type SerializeTupleVariant = Impossible<(), ReplayError>;
            type SerializeMap = Impossible<(), ReplayError>;
            type SerializeStruct = Self;
            type SerializeStructVariant = Impossible<(), ReplayError>;
            reject_rest!();
            fn serialize_i32(self, _: i32) -> Result<(), ReplayError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_i64(self, _: i64) -> Result<(), ReplayError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_i128(self, _: i128) -> Result<(), ReplayError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_u8(self, _: u8) -> Result<(), ReplayError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_u16(self, _: u16) -> Result<(), ReplayError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_u32(self, _: u32) -> Result<(), ReplayError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_u64(self, _: u64) -> Result<(), ReplayError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_str(self, _: &str) -> Result<(), ReplayError> {
                Err(unsupported("a bare value instead of a struct"))
            }
            fn serialize_newtype_struct<T: ?Sized + Serialize>(
                self,
                _: &'static str,
                v: &T,
            ) -> Result<(), ReplayError> {
                v.serialize(self)
            }
            fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, ReplayError> {
                Ok(self)
            }
        }
    };
}
outer_serializer!(Probe, ());
outer_serializer!(Writer<'a>, ());

impl ser::SerializeStruct for &mut Probe {
    type Ok = ();
    type Error = ReplayError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ReplayError> {
        let p = value.serialize(PrimitiveOf)?;
        self.columns.push((key, p));
        Ok(())
    }
    fn end(self) -> Result<(), ReplayError> {
        Ok(())
    }
}

impl ser::SerializeStruct for &mut Writer<'_> {
    type Ok = ();
    type Error = ReplayError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ReplayError> {
        let column = self
            .columns
            .get_mut(self.at)
            .ok_or_else(|| ReplayError::Columns(format!("field {key} beyond the schema")))?;
        value.serialize(Cell { column, key })?;
        self.at += 1;
        Ok(())
    }
    fn end(self) -> Result<(), ReplayError> {
        Ok(())
    }
}

/// A field's primitive (newtypes such as `Money` are looked through).
struct PrimitiveOf;

macro_rules! leaf_common {
    () => {
        type SerializeSeq = Impossible<Self::Ok, ReplayError>;
        type SerializeTuple = Impossible<Self::Ok, ReplayError>;
        type SerializeTupleStruct = Impossible<Self::Ok, ReplayError>;
        type SerializeTupleVariant = Impossible<Self::Ok, ReplayError>;
        type SerializeMap = Impossible<Self::Ok, ReplayError>;
        type SerializeStruct = Impossible<Self::Ok, ReplayError>;
        type SerializeStructVariant = Impossible<Self::Ok, ReplayError>;
        reject_rest!();
        fn serialize_newtype_struct<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            v: &T,
        ) -> Result<Self::Ok, ReplayError> {
            v.serialize(self)
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, ReplayError> {
            Err(unsupported("a nested struct"))
        }
    };
}

impl ser::Serializer for PrimitiveOf {
    type Ok = Primitive;
    type Error = ReplayError;
    leaf_common!();
    fn serialize_i32(self, _: i32) -> Result<Primitive, ReplayError> {
        Ok(Primitive::I32)
    }
    fn serialize_i64(self, _: i64) -> Result<Primitive, ReplayError> {
        Ok(Primitive::I64)
    }
    fn serialize_i128(self, _: i128) -> Result<Primitive, ReplayError> {
        Ok(Primitive::I128)
    }
    fn serialize_u8(self, _: u8) -> Result<Primitive, ReplayError> {
        Ok(Primitive::U8)
    }
    fn serialize_u16(self, _: u16) -> Result<Primitive, ReplayError> {
        Ok(Primitive::U16)
    }
    fn serialize_u32(self, _: u32) -> Result<Primitive, ReplayError> {
        Ok(Primitive::U32)
    }
    fn serialize_u64(self, _: u64) -> Result<Primitive, ReplayError> {
        Ok(Primitive::U64)
    }
    fn serialize_str(self, _: &str) -> Result<Primitive, ReplayError> {
        Ok(Primitive::Str)
    }
}

/// One field's value into its column builder.
struct Cell<'c> {
    column: &'c mut Column,
    key: &'static str,
}

impl Cell<'_> {
    fn mismatch(&self, got: &str) -> ReplayError {
        ReplayError::Columns(format!("field {} is {got}, not what its column holds", self.key))
    }
}

impl ser::Serializer for Cell<'_> {
    type Ok = ();
    type Error = ReplayError;
    leaf_common!();
    fn serialize_i32(self, v: i32) -> Result<(), ReplayError> {
        match self.column {
            Column::I32(b) => b.append_value(v),
            Column::Dec(b, ..) => b.append_value(i128::from(v)),
            _ => return Err(self.mismatch("an i32")),
        }
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), ReplayError> {
        match self.column {
            Column::I64(b) => b.append_value(v),
            Column::Dec(b, ..) => b.append_value(i128::from(v)),
            _ => return Err(self.mismatch("an i64")),
        }
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), ReplayError> {
        match self.column {
            Column::Dec(b, ..) => b.append_value(v),
            _ => return Err(self.mismatch("an i128")),
        }
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), ReplayError> {
        match self.column {
            Column::U8(b) => b.append_value(v),
            _ => return Err(self.mismatch("a u8")),
        }
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), ReplayError> {
        match self.column {
            Column::U16(b) => b.append_value(v),
            Column::Date(b) => b.append_value(i32::from(v)),
            _ => return Err(self.mismatch("a u16")),
        }
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), ReplayError> {
        match self.column {
            Column::U32(b) => b.append_value(v),
            Column::Ts(b) => b.append_value(i64::from(v)),
            _ => return Err(self.mismatch("a u32")),
        }
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), ReplayError> {
        match self.column {
            Column::U64(b) => b.append_value(v),
            _ => return Err(self.mismatch("a u64")),
        }
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), ReplayError> {
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
    use arrow::array::{Array, Decimal128Array, StringArray, TimestampSecondArray};
    use rainbow_schemas::rows::{DimProduct, FactSale, SurrogateKey};
    use rainbow_schemas::Money;

    #[test]
    fn rows_become_typed_columns_in_ddl_order() {
        let p = DimProduct {
            product_key: SurrogateKey(0xabc),
            product_id: 7,
            name: "Phone".into(),
            price: Money(1_234_500),
            rating_average: 475,
            valid_from: 1_725_000_000,
            valid_to: rainbow_schemas::rows::OPEN_VALID_TO,
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
}
