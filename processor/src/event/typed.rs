//! Change events read from the typed columns of a changelog table (`rainbow_iceberg`), without
//! JSON.
//!
//! Contract: for a row, [`TypedBatch::decode`] gives what [`super::decode`] gives for the row's
//! `_envelope`, or `None`: then the caller decodes the envelope. `None` is the answer for a row
//! without typed columns (a value that is not a change event, a record without a schema), a
//! needed column the row's `_untyped` names (absent from its schema, or not readable as its
//! type), a required value that is null, a type this reading does not reproduce exactly, and
//! every value the JSON decoding refuses (so its error is the one the envelope gives). An
//! update's before image is not read (the changelog holds the after image; an update whose key
//! changed has no typed columns).

use super::{
    Brand, Category, ChangeEvent, Customer, Inventory, Numeric, Order, OrderLine, Payment, Position, Product,
    Promotion, Scales, Seller, Signal, SourceRow, Table,
};
use arrow::array::{
    Array, AsArray, Decimal128Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use rainbow_schemas::money::Money;
use rainbow_schemas::wire::{CommitPosition, Op};
use std::borrow::Cow;

/// A column of the source row, as the changelog typed it.
#[derive(Clone, Copy)]
enum Col<'a> {
    Int(&'a Int32Array),
    Long(&'a Int64Array),
    Double(&'a Float64Array),
    Decimal(&'a Decimal128Array, u32),
    Text(&'a StringArray),
    /// Timestamp with a zone, µs.
    ZonedMicros(&'a TimestampMicrosecondArray),
    /// Any other type: never read (the envelope is).
    Other,
    /// Not in the data file (added to the table after it was written).
    Missing,
}

impl<'a> Col<'a> {
    fn of(a: &'a dyn Array) -> Col<'a> {
        match a.data_type() {
            DataType::Int32 => Col::Int(a.as_primitive()),
            DataType::Int64 => Col::Long(a.as_primitive()),
            DataType::Float64 => Col::Double(a.as_primitive()),
            DataType::Decimal128(_, s) if *s >= 0 => Col::Decimal(a.as_primitive(), *s as u32),
            DataType::Utf8 => Col::Text(a.as_string()),
            DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => Col::ZonedMicros(a.as_primitive()),
            _ => Col::Other,
        }
    }

    fn is_null(&self, i: usize) -> bool {
        match self {
            Col::Int(a) => a.is_null(i),
            Col::Long(a) => a.is_null(i),
            Col::Double(a) => a.is_null(i),
            Col::Decimal(a, _) => a.is_null(i),
            Col::Text(a) => a.is_null(i),
            Col::ZonedMicros(a) => a.is_null(i),
            Col::Other | Col::Missing => true,
        }
    }

    /// An integer column's value (JSON reads an integer from an integer only).
    fn long(&self, i: usize) -> Option<i64> {
        match self {
            _ if self.is_null(i) => None,
            Col::Int(a) => Some(i64::from(a.value(i))),
            Col::Long(a) => Some(a.value(i)),
            _ => None,
        }
    }

    fn text(&self, i: usize) -> Option<&'a str> {
        match self {
            Col::Text(a) if !a.is_null(i) => Some(a.value(i)),
            _ => None,
        }
    }

    /// A money amount as the JSON decoding reads it from the same column, `None` when it would
    /// not (or not exactly this way).
    fn money(&self, table: Table, field: &str, i: usize) -> Option<Money> {
        if self.is_null(i) {
            return None;
        }
        let none = Scales::default();
        match self {
            Col::Decimal(a, scale) => {
                let v = a.value(i);
                // The JSON decoding takes at most 12 bytes of unscaled value.
                if !(-(1i128 << 95)..(1i128 << 95)).contains(&v) {
                    return None;
                }
                let d = rust_decimal::Decimal::try_from_i128_with_scale(v, *scale).ok()?;
                Money::from_decimal(d).ok()
            }
            Col::Double(a) => Numeric::Double(a.value(i)).money(table, field, Some(&none)).ok(),
            Col::Int(a) => Numeric::Double(f64::from(a.value(i))).money(table, field, Some(&none)).ok(),
            Col::Long(a) => Numeric::Double(a.value(i) as f64).money(table, field, Some(&none)).ok(),
            Col::Text(a) => Numeric::Text(Cow::Borrowed(a.value(i))).money(table, field, Some(&none)).ok(),
            _ => None,
        }
    }

    /// A timestamp in µs, as the JSON decoding reads it: a zoned timestamp, ms as an integer.
    fn micros(&self, i: usize) -> Option<i64> {
        match self {
            _ if self.is_null(i) => None,
            Col::ZonedMicros(a) => Some(a.value(i)),
            Col::Int(a) => Some(i64::from(a.value(i)) * 1000),
            Col::Long(a) => a.value(i).checked_mul(1000),
            Col::Text(a) => rainbow_schemas::time::parse_zoned(a.value(i)),
            _ => None,
        }
    }
}

/// One batch of a changelog table's rows.
pub struct TypedBatch<'a> {
    batch: &'a RecordBatch,
    op: &'a StringArray,
    commit_ts: &'a TimestampMicrosecondArray,
    commit_lsn: &'a Int64Array,
    change_lsn: &'a Int64Array,
    table: &'a StringArray,
    untyped: &'a StringArray,
    offset: &'a Int64Array,
    /// The source row's columns by name (typed once per batch, not per row).
    source: Vec<(&'a str, Col<'a>)>,
}

/// The metadata columns a [`TypedBatch`] reads, besides the source row's.
pub const META_COLUMNS: [&str; 7] =
    ["_op", "_commit_ts", "_commit_lsn", "_change_lsn", "_table", "_untyped", "_kafka_offset"];

impl<'a> TypedBatch<'a> {
    /// `Err` names a metadata column that is missing or of another type.
    pub fn new(batch: &'a RecordBatch) -> Result<TypedBatch<'a>, String> {
        fn col<'b, T: 'static>(b: &'b RecordBatch, name: &str) -> Result<&'b T, String> {
            b.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<T>())
                .ok_or_else(|| format!("no column {name} of the changelog's type"))
        }
        Ok(TypedBatch {
            batch,
            op: col(batch, "_op")?,
            commit_ts: col(batch, "_commit_ts")?,
            commit_lsn: col(batch, "_commit_lsn")?,
            change_lsn: col(batch, "_change_lsn")?,
            table: col(batch, "_table")?,
            untyped: col(batch, "_untyped")?,
            offset: col(batch, "_kafka_offset")?,
            source: batch
                .schema_ref()
                .fields()
                .iter()
                .zip(batch.columns())
                .filter(|(f, _)| !f.name().starts_with('_'))
                .map(|(f, c)| (f.name().as_str(), Col::of(c.as_ref())))
                .collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn offset(&self, i: usize) -> i64 {
        self.offset.value(i)
    }

    fn col(&self, name: &str) -> Col<'a> {
        self.source.iter().find(|(n, _)| *n == name).map_or(Col::Missing, |(_, c)| *c)
    }

    /// Row `i`'s event, `None`: decode its `_envelope` instead (see the module's contract).
    pub fn decode(&self, i: usize) -> Option<Option<ChangeEvent>> {
        let untyped = (!self.untyped.is_null(i)).then(|| self.untyped.value(i));
        if untyped.is_some_and(|u| u.split(',').any(|c| c == "*")) {
            return None;
        }
        if self.op.is_null(i) {
            // A tombstone: no value, nothing for the core.
            return Some(None);
        }
        let op = Op::from_code(self.op.value(i)).ok()?;
        if self.table.is_null(i) || self.commit_lsn.is_null(i) || self.change_lsn.is_null(i) {
            return None;
        }
        let table = Table::from_name(self.table.value(i))?;
        let at = CommitPosition {
            commit: self.commit_lsn.value(i) as u64,
            change: self.change_lsn.value(i) as u64,
        };
        if self.commit_ts.is_null(i) {
            return None;
        }
        let ts_ms = self.commit_ts.value(i).div_euclid(1000);
        let row = match op {
            Op::Truncate => None,
            _ => {
                if let Some(u) = untyped {
                    if u.split(',').any(|c| fields(table).contains(&c)) {
                        return None;
                    }
                }
                Some(self.row(table, i)?)
            }
        };
        let (before, after) = if op == Op::Delete { (row, None) } else { (None, row) };
        Some(Some(ChangeEvent { op, position: Position::new(at, table), ts_ms, before, after }))
    }

    fn row(&self, table: Table, i: usize) -> Option<SourceRow> {
        let long = |name: &str| self.col(name).long(i);
        let opt_long = |name: &str| {
            let c = self.col(name);
            match c {
                // Not in the row's data file, or of a type not read: the envelope decides.
                Col::Missing | Col::Other => None,
                _ if c.is_null(i) => Some(None),
                _ => c.long(i).map(Some),
            }
        };
        let text = |name: &str| self.col(name).text(i).map(str::to_string);
        let opt_text = |name: &str| {
            let c = self.col(name);
            match c {
                Col::Text(_) if c.is_null(i) => Some(None),
                Col::Text(_) => c.text(i).map(|s| Some(s.to_string())),
                _ => None,
            }
        };
        let money = |name: &str| self.col(name).money(table, name, i);
        Some(match table {
            Table::Brands => SourceRow::Brand(Brand { id: long("id")?, name: text("name")? }),
            Table::Categories => SourceRow::Category(Category { id: long("id")?, name: text("name")? }),
            Table::Sellers => SourceRow::Seller(Seller { id: long("id")?, name: text("name")? }),
            Table::Customers => SourceRow::Customer(Customer {
                id: long("id")?,
                name: text("name")?,
                email: text("email")?,
                phone: opt_text("phone")?,
                address: opt_text("address")?,
            }),
            Table::Payments => SourceRow::Payment(Payment { id: long("id")?, method: text("method")? }),
            Table::Promotions => {
                let coupon_type = text("coupon_type")?;
                coupon_type.parse::<rainbow_schemas::pricing::CouponType>().ok()?;
                SourceRow::Promotion(Promotion {
                    id: long("id")?,
                    name: text("name")?,
                    coupon_type,
                    price_treatment: money("price_treatment")?,
                })
            }
            Table::Products => SourceRow::Product(Product {
                id: long("id")?,
                name: text("name")?,
                price: money("price")?,
                original_price: money("original_price")?,
                rating_average: money("rating_average")?,
                review_count: long("review_count")?,
                sold_count: long("sold_count")?,
                category_id: long("category_id")?,
                seller_id: long("seller_id")?,
                brand_id: long("brand_id")?,
                promotion_id: opt_long("promotion_id")?,
            }),
            Table::Orders => SourceRow::Order(Order {
                id: long("id")?,
                customer_id: long("customer_id")?,
                payment_id: long("payment_id")?,
                created_at_us: self.col("created_at").micros(i)?,
            }),
            Table::Orderdetails => {
                let quantity = long("quantity")?;
                if quantity <= 0 {
                    return None;
                }
                SourceRow::OrderLine(OrderLine {
                    order_id: long("order_id")?,
                    product_id: long("product_id")?,
                    quantity,
                    price: money("price")?,
                    promotion_id: opt_long("promotion_id")?,
                })
            }
            Table::Inventories => SourceRow::Inventory(Inventory {
                product_id: long("product_id")?,
                quantity: long("quantity")?,
            }),
            Table::Signals => {
                SourceRow::Signal(Signal { id: text("id")?, kind: text("type")?, data: opt_text("data")? })
            }
        })
    }
}

/// The source columns the decoding of `table`'s rows reads.
pub fn fields(table: Table) -> &'static [&'static str] {
    match table {
        Table::Brands | Table::Categories | Table::Sellers => &["id", "name"],
        Table::Customers => &["id", "name", "email", "phone", "address"],
        Table::Payments => &["id", "method"],
        Table::Promotions => &["id", "name", "coupon_type", "price_treatment"],
        Table::Products => &[
            "id",
            "name",
            "price",
            "original_price",
            "rating_average",
            "review_count",
            "sold_count",
            "category_id",
            "seller_id",
            "brand_id",
            "promotion_id",
        ],
        Table::Orders => &["id", "customer_id", "payment_id", "created_at"],
        Table::Orderdetails => &["order_id", "product_id", "quantity", "price", "promotion_id"],
        Table::Inventories => &["product_id", "quantity"],
        Table::Signals => &["id", "type", "data"],
    }
}
