//! The warehouse's shape, defined once: every output table with its row type, its columns and
//! their ClickHouse types, its ReplacingMergeTree key and version, and its part in the
//! data-quality checks (SCD2 dimension, date dimension, fact with references to dimensions,
//! accepted values, aggregate).
//!
//! Everything else derives from the [`tables!`] invocation below: the row structs (field order is
//! the DDL's column order: on servers without schema validation the ClickHouse client sends
//! plain RowBinary, which is positional), [`TABLES`] (the table list and each table's
//! [`TableDef`]), [`Versioned`] (key and version), [`Outputs`] (rows as the core emits them),
//! [`Tables`] (the warehouse as ReplacingMergeTree `FINAL` sees it), [`crate::for_each_table!`]
//! (one call per table, for generic code in other crates), the Arrow form ([`arrow`]) and the
//! checks ([`checks`]). Adding a column is one line here plus the DDL in `schemas/clickhouse/`;
//! a test fails when the two disagree (here on the DDL text, and on ClickHouse and chdb by
//! `DESCRIBE`).
//!
//! Encodings (RowBinary): `DateTime` = seconds since the Unix epoch (UTC) as `u32`; `Date` = days
//! since the epoch as `u16`; `Decimal(18, 2)` = [`Money`]; `Decimal(38, 2)` = [`MoneySum`];
//! `Decimal(9, 2)` = hundredths as `i32`; flags (`UInt8`) = 0 or 1.

mod keys;

pub use keys::{KeyText, SurrogateKey, OPEN_VALID_TO};

use crate::money::{Money, MoneySum};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One column: its name and ClickHouse type (the DDL's spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: &'static str,
    pub clickhouse: &'static str,
    /// For a fact's key to a dimension: the table whose key it holds, and whether it may be
    /// empty (no such dimension member, as a line without a promotion).
    pub references: Option<(&'static str, bool)>,
    /// The only values the column may hold, if restricted.
    pub accepted: &'static [&'static str],
}

/// What role a table plays, for the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An SCD Type 2 dimension: `surrogate` is its key, `natural` the source id it versions.
    Dimension { surrogate: &'static str, natural: &'static str },
    /// The generated date dimension.
    Dates,
    /// Facts: their reference columns point into the dimensions.
    Fact,
    /// A dashboard aggregate: partial rows per instance, summed by the views.
    Aggregate,
}

/// One warehouse table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableDef {
    pub name: &'static str,
    pub kind: Kind,
    pub columns: &'static [ColumnDef],
    /// The ReplacingMergeTree `ORDER BY` columns: the row's identity.
    pub key: &'static [&'static str],
    /// The ReplacingMergeTree version column, if any.
    pub version: Option<&'static str>,
}

impl TableDef {
    pub fn column(&self, name: &str) -> Option<&'static ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Every table's definition as JSON (`rainbow --print-warehouse`): for tools outside Rust, such as
/// the test that holds the DDL on chdb against it.
pub fn definition_json() -> serde_json::Value {
    let table = |t: &TableDef| {
        let kind = match t.kind {
            Kind::Dimension { .. } => "dimension",
            Kind::Dates => "dates",
            Kind::Fact => "fact",
            Kind::Aggregate => "aggregate",
        };
        let columns: Vec<serde_json::Value> = t
            .columns
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name,
                    "type": c.clickhouse,
                    "references": c.references.map(|(table, _)| table),
                    "optional": c.references.is_some_and(|(_, optional)| optional),
                    "accepted": c.accepted,
                })
            })
            .collect();
        serde_json::json!({"table": t.name, "kind": kind, "key": t.key, "version": t.version, "columns": columns})
    };
    serde_json::Value::Array(TABLES.iter().map(|t| table(t)).collect())
}

/// The definition of the table `name`.
pub fn table(name: &str) -> Option<&'static TableDef> {
    TABLES.iter().copied().find(|t| t.name == name)
}

/// A row's ReplacingMergeTree key (its `ORDER BY`) and version.
pub trait Versioned {
    type Key: Ord + Clone + Serialize + DeserializeOwned;
    fn key(&self) -> Self::Key;
    fn version(&self) -> u64;
}

/// A warehouse table's row type, with everything generic code needs: its definition, its key
/// and version, serde (ClickHouse rows, Parquet columns, spill files) and ClickHouse's row
/// traits.
pub trait WarehouseRow:
    Versioned
    + Serialize
    + DeserializeOwned
    + Default
    + Clone
    + PartialEq
    + std::fmt::Debug
    + Send
    + Sync
    + clickhouse::RowOwned
    + clickhouse::RowWrite
    + 'static
{
    const TABLE: &'static TableDef;
}

/// One table collapsed as ReplacingMergeTree does it: key → the row with the highest version,
/// the last one given among equal versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "R: Serialize", deserialize = "R: DeserializeOwned"))]
pub struct Table<R: Versioned>(pub BTreeMap<R::Key, R>);

impl<R: Versioned> Default for Table<R> {
    fn default() -> Self {
        Table(BTreeMap::new())
    }
}

impl<R: Versioned> Table<R> {
    pub fn absorb(&mut self, rows: impl IntoIterator<Item = R>) {
        use std::collections::btree_map::Entry;
        for row in rows {
            match self.0.entry(row.key()) {
                Entry::Vacant(v) => {
                    v.insert(row);
                }
                Entry::Occupied(mut o) => {
                    if o.get().version() <= row.version() {
                        *o.get_mut() = row;
                    }
                }
            }
        }
    }

    /// The rows in key order.
    pub fn rows(&self) -> impl Iterator<Item = &R> {
        self.0.values()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The version of a row with a version column, 0 for a table without one.
macro_rules! version_of {
    ($row:ident, none) => {{
        let _ = $row;
        0
    }};
    ($row:ident, $field:ident) => {
        $row.$field
    };
}

/// A single-column key is the column's value, a composite one the tuple of its columns' values.
macro_rules! key_type {
    ($t:ty) => {
        $t
    };
    ($($t:ty),+) => {
        ($($t,)+)
    };
}

macro_rules! key_of {
    ($row:ident, $field:ident) => {
        $row.$field.clone()
    };
    ($row:ident, $($field:ident),+) => {
        ($($row.$field.clone(),)+)
    };
}

macro_rules! version_name {
    (none) => {
        None
    };
    ($field:ident) => {
        Some(stringify!($field))
    };
}

macro_rules! references {
    () => {
        None
    };
    ($table:ident) => {
        Some((stringify!($table), false))
    };
    ($table:ident optional) => {
        Some((stringify!($table), true))
    };
}

/// Defines every warehouse table from one description; see the module documentation. `$d` is a
/// literal `$`, for the exported macro it defines.
macro_rules! tables {
    (
        $d:tt
        $(
            $(#[doc = $doc:literal])*
            $table:ident: $Row:ident {
                kind: $kind:expr,
                key: [$($key:ident: $kty:ty),+],
                version: $version:ident,
                columns: {
                    $(
                        $(#[doc = $cdoc:literal])*
                        $col:ident: $ty:ty = $ch:literal
                        $(=> $refs:ident $($optional:ident)?)?
                        $(in [$($accepted:literal),+])?
                    ),+ $(,)?
                }
            }
        )+
    ) => {
        $(
            $(#[doc = $doc])*
            #[derive(Debug, Clone, Default, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
            pub struct $Row {
                $( $(#[doc = $cdoc])* pub $col: $ty, )+
            }

            impl Versioned for $Row {
                type Key = key_type!($($kty),+);
                fn key(&self) -> Self::Key {
                    key_of!(self, $($key),+)
                }
                fn version(&self) -> u64 {
                    version_of!(self, $version)
                }
            }

            impl WarehouseRow for $Row {
                const TABLE: &'static TableDef = &TableDef {
                    name: stringify!($table),
                    kind: $kind,
                    columns: &[$(ColumnDef {
                        name: stringify!($col),
                        clickhouse: $ch,
                        references: references!($($refs $($optional)?)?),
                        accepted: &[$($($accepted),+)?],
                    }),+],
                    key: &[$(stringify!($key)),+],
                    version: version_name!($version),
                };
            }
        )+

        /// Every warehouse table, in the order the sink writes them (dimensions before facts,
        /// facts before aggregates).
        pub static TABLES: &[&TableDef] = &[$(<$Row as WarehouseRow>::TABLE),+];

        /// Rows produced by the core, per warehouse table, in emission order.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Outputs {
            $( pub $table: Vec<$Row>, )+
        }

        impl Outputs {
            /// Rows in all tables.
            pub fn len(&self) -> usize {
                0 $( + self.$table.len() )+
            }

            pub fn is_empty(&self) -> bool {
                $( self.$table.is_empty() )&&+
            }

            /// Appends `other`'s rows after this one's.
            pub fn append(&mut self, other: &mut Outputs) {
                $( self.$table.append(&mut other.$table); )+
            }

            /// Empties every table, keeping the allocations.
            pub fn clear(&mut self) {
                $( self.$table.clear(); )+
            }
        }

        /// Every warehouse table collapsed as ReplacingMergeTree `FINAL` sees it.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Tables {
            $( pub $table: Table<$Row>, )+
        }

        impl Tables {
            /// Takes in a batch of outputs (emptying it).
            pub fn absorb(&mut self, out: &mut Outputs) {
                $( self.$table.absorb(out.$table.drain(..)); )+
            }

            /// Rows in all tables.
            pub fn rows_total(&self) -> usize {
                0 $( + self.$table.len() )+
            }
        }

        /// Calls `$m!(table, RowType)` once per warehouse table, in [`TABLES`] order: the field
        /// of [`Outputs`] and [`Tables`] named `table` holds rows of `RowType`. For generic code
        /// in other crates; `stringify!(table)` is the table's name.
        #[macro_export]
        macro_rules! for_each_table {
            ($d m:ident) => {
                $( $d m!($table, $d crate::shape::$Row); )+
            };
        }
    };
}

tables! { $
    /// SCD Type 2 customers.
    dim_customers: DimCustomer {
        kind: Kind::Dimension { surrogate: "customer_key", natural: "customer_id" },
        key: [customer_key: SurrogateKey],
        version: version,
        columns: {
            customer_key: SurrogateKey = "String",
            customer_id: i64 = "Int64",
            name: String = "String",
            email: String = "String",
            phone: String = "String",
            address: String = "String",
            valid_from: u32 = "DateTime",
            valid_to: u32 = "DateTime",
            is_current: u8 = "UInt8",
            version: u64 = "UInt64",
            is_deleted: u8 = "UInt8",
        }
    }
    /// SCD Type 2 products, with their category and brand names denormalised in.
    dim_products: DimProduct {
        kind: Kind::Dimension { surrogate: "product_key", natural: "product_id" },
        key: [product_key: SurrogateKey],
        version: version,
        columns: {
            product_key: SurrogateKey = "String",
            product_id: i64 = "Int64",
            /// Shared with the processor's state (a new version of a product copies no text).
            name: Arc<str> = "String",
            price: Money = "Decimal(18, 2)",
            original_price: Money = "Decimal(18, 2)",
            /// Hundredths: 4.75 is 475.
            rating_average: i32 = "Decimal(9, 2)",
            review_count: i64 = "Int64",
            sold_count: i64 = "Int64",
            category: Arc<str> = "String",
            brand: Arc<str> = "String",
            seller_id: i64 = "Int64",
            valid_from: u32 = "DateTime",
            valid_to: u32 = "DateTime",
            is_current: u8 = "UInt8",
            version: u64 = "UInt64",
            is_deleted: u8 = "UInt8",
        }
    }
    /// SCD Type 2 sellers.
    dim_sellers: DimSeller {
        kind: Kind::Dimension { surrogate: "seller_key", natural: "seller_id" },
        key: [seller_key: SurrogateKey],
        version: version,
        columns: {
            seller_key: SurrogateKey = "String",
            seller_id: i64 = "Int64",
            name: String = "String",
            valid_from: u32 = "DateTime",
            valid_to: u32 = "DateTime",
            is_current: u8 = "UInt8",
            version: u64 = "UInt64",
            is_deleted: u8 = "UInt8",
        }
    }
    /// SCD Type 2 promotions.
    dim_promotions: DimPromotion {
        kind: Kind::Dimension { surrogate: "promotion_key", natural: "promotion_id" },
        key: [promotion_key: SurrogateKey],
        version: version,
        columns: {
            promotion_key: SurrogateKey = "String",
            promotion_id: i64 = "Int64",
            name: String = "String",
            coupon_type: String = "String" in ["Percentage", "Fixed Amount"],
            /// Hundredths, as money: a percentage for `Percentage`, thousands of VND for `Fixed Amount`.
            price_treatment: Money = "Decimal(18, 2)",
            valid_from: u32 = "DateTime",
            valid_to: u32 = "DateTime",
            is_current: u8 = "UInt8",
            version: u64 = "UInt64",
            is_deleted: u8 = "UInt8",
        }
    }
    /// SCD Type 2 payment methods.
    dim_payments: DimPayment {
        kind: Kind::Dimension { surrogate: "payment_key", natural: "payment_id" },
        key: [payment_key: SurrogateKey],
        version: version,
        columns: {
            payment_key: SurrogateKey = "String",
            payment_id: i64 = "Int64",
            method: String = "String",
            valid_from: u32 = "DateTime",
            valid_to: u32 = "DateTime",
            is_current: u8 = "UInt8",
            version: u64 = "UInt64",
            is_deleted: u8 = "UInt8",
        }
    }
    /// The calendar, one row per day that an order falls on.
    dim_dates: DimDate {
        kind: Kind::Dates,
        key: [date_key: u32],
        version: none,
        columns: {
            /// YYYYMMDD.
            date_key: u32 = "UInt32",
            /// Days since 1970-01-01.
            date: u16 = "Date",
            /// 1 = Monday .. 7 = Sunday.
            day_of_week: u8 = "UInt8",
            day_name: String = "String",
            day_of_month: u8 = "UInt8",
            month: u8 = "UInt8",
            month_name: String = "String",
            quarter: u8 = "UInt8",
            year: u16 = "UInt16",
            is_weekend: u8 = "UInt8",
        }
    }
    /// One row per order line, with the dimension versions valid when its order committed.
    fact_sales: FactSale {
        kind: Kind::Fact,
        key: [order_transaction: i64, product_id: i64],
        version: version,
        columns: {
            date_key: u32 = "UInt32" => dim_dates,
            product_key: SurrogateKey = "String" => dim_products,
            seller_key: SurrogateKey = "String" => dim_sellers,
            promotion_key: SurrogateKey = "String" => dim_promotions optional,
            customer_key: SurrogateKey = "String" => dim_customers,
            payment_key: SurrogateKey = "String" => dim_payments,
            order_transaction: i64 = "Int64",
            product_id: i64 = "Int64",
            sales_quantity: i64 = "Int64",
            regular_unit_price: Money = "Decimal(18, 2)",
            discount_unit_price: Money = "Decimal(18, 2)",
            net_unit_price: Money = "Decimal(18, 2)",
            extended_sales_amount: Money = "Decimal(18, 2)",
            extended_discount_amount: Money = "Decimal(18, 2)",
            version: u64 = "UInt64",
            is_deleted: u8 = "UInt8",
        }
    }
    /// Total sales: quantity, amount and discount.
    agg_total_sales: AggTotalSales {
        kind: Kind::Aggregate,
        key: [partition: i32],
        version: version,
        columns: {
            partition: i32 = "Int32",
            total_sales_quantity: i64 = "Int64",
            total_sales_amount: MoneySum = "Decimal(38, 2)",
            total_discount_amount: MoneySum = "Decimal(38, 2)",
            version: u64 = "UInt64",
        }
    }
    /// Sales by day of the week of the order (1 = Monday .. 7 = Sunday).
    agg_sales_by_day_of_week: AggSalesByDayOfWeek {
        kind: Kind::Aggregate,
        key: [partition: i32, day_of_week: u8],
        version: version,
        columns: {
            partition: i32 = "Int32",
            day_of_week: u8 = "UInt8",
            total_sales_quantity: i64 = "Int64",
            total_sales_amount: MoneySum = "Decimal(38, 2)",
            total_discount_amount: MoneySum = "Decimal(38, 2)",
            version: u64 = "UInt64",
        }
    }
    /// Sales per seller.
    agg_top_sellers: AggTopSeller {
        kind: Kind::Aggregate,
        key: [partition: i32, seller_id: i64],
        version: version,
        columns: {
            partition: i32 = "Int32",
            seller_id: i64 = "Int64",
            seller_name: String = "String",
            total_sales_quantity: i64 = "Int64",
            total_sales_amount: MoneySum = "Decimal(38, 2)",
            total_discount_amount: MoneySum = "Decimal(38, 2)",
            version: u64 = "UInt64",
        }
    }
    /// Sales and profit per product, with its category.
    agg_product_profit: AggProductProfit {
        kind: Kind::Aggregate,
        key: [partition: i32, product_id: i64],
        version: version,
        columns: {
            partition: i32 = "Int32",
            product_id: i64 = "Int64",
            product_name: String = "String",
            category: String = "String",
            total_sales_quantity: i64 = "Int64",
            total_sales_amount: MoneySum = "Decimal(38, 2)",
            total_discount_amount: MoneySum = "Decimal(38, 2)",
            version: u64 = "UInt64",
        }
    }
    /// Orders and sales per payment method.
    agg_payment_methods: AggPaymentMethod {
        kind: Kind::Aggregate,
        key: [partition: i32, payment_id: i64],
        version: version,
        columns: {
            partition: i32 = "Int32",
            payment_id: i64 = "Int64",
            payment_method: String = "String",
            order_count: i64 = "Int64",
            total_sales_amount: MoneySum = "Decimal(38, 2)",
            version: u64 = "UInt64",
        }
    }
    /// Orders and sales per customer.
    agg_customer_ranking: AggCustomerRanking {
        kind: Kind::Aggregate,
        key: [partition: i32, customer_id: i64],
        version: version,
        columns: {
            partition: i32 = "Int32",
            customer_id: i64 = "Int64",
            customer_name: String = "String",
            order_count: i64 = "Int64",
            total_sales_quantity: i64 = "Int64",
            total_sales_amount: MoneySum = "Decimal(38, 2)",
            version: u64 = "UInt64",
        }
    }
}

// Declared after the definition: they use `for_each_table!` by its textual scope.
pub mod arrow;
pub mod checks;

impl Tables {
    /// Live fact rows (not retracted).
    pub fn live_facts(&self) -> impl Iterator<Item = &FactSale> {
        self.fact_sales.rows().filter(|f| f.is_deleted == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `CREATE TABLE` statement of the DDL: table, [(column, type)], ORDER BY, version.
    type DdlTable = (String, Vec<(String, String)>, Vec<String>, Option<String>);

    fn ddl_tables() -> Vec<DdlTable> {
        // Tables are created by the baseline; a migration that changes a table's columns must
        // teach this parser its ALTER too.
        let all: Vec<String> = crate::warehouse::MIGRATIONS
            .iter()
            .flat_map(|m| crate::warehouse::statements(m.sql, "db").unwrap())
            .collect();
        assert!(!all.iter().any(|s| s.starts_with("ALTER TABLE")), "extend ddl_tables for ALTER TABLE");
        all.iter()
            .filter_map(|s| s.strip_prefix("CREATE TABLE IF NOT EXISTS db."))
            .map(|s| {
                let (name, rest) = s.split_once(" (").unwrap();
                let (body, engine) = rest.rsplit_once(") ENGINE = ").unwrap();
                let columns = body
                    .lines()
                    .map(|l| l.trim().trim_end_matches(','))
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (c, t) = l.split_once(' ').unwrap();
                        (c.to_string(), t.to_string())
                    })
                    .collect();
                let version = engine
                    .strip_prefix("ReplacingMergeTree(")
                    .and_then(|e| e.split_once(')'))
                    .map(|(v, _)| v.to_string())
                    .filter(|v| !v.is_empty());
                let order = engine.split_once("ORDER BY ").unwrap().1.trim();
                let key = order
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(", ")
                    .map(String::from)
                    .collect();
                (name.to_string(), columns, key, version)
            })
            .collect()
    }

    #[test]
    fn the_ddl_and_the_definition_agree() {
        let ddl = ddl_tables();
        let names: Vec<&str> = ddl.iter().map(|t| t.0.as_str()).collect();
        let defined: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        assert_eq!(names, defined, "tables of schemas/clickhouse/*.sql and of the definition, in order");
        for (name, columns, key, version) in &ddl {
            let def = table(name).unwrap();
            let want: Vec<(String, String)> =
                def.columns.iter().map(|c| (c.name.to_string(), c.clickhouse.to_string())).collect();
            assert_eq!(columns, &want, "columns of {name}");
            assert_eq!(key, &def.key.iter().map(|k| k.to_string()).collect::<Vec<_>>(), "ORDER BY of {name}");
            assert_eq!(version.as_deref(), def.version, "version column of {name}");
        }
    }

    #[test]
    fn rows_serialise_in_column_order_and_key_by_their_definition() {
        let row = FactSale { order_transaction: 7, product_id: 9, version: 3, ..Default::default() };
        assert_eq!(row.key(), (7, 9));
        assert_eq!(row.version(), 3);
        assert_eq!(DimDate { date_key: 20240801, ..Default::default() }.version(), 0);
        let json = serde_json::to_value(&row).unwrap();
        let fields: Vec<&String> = json.as_object().unwrap().keys().collect();
        let columns: Vec<&str> = FactSale::TABLE.columns.iter().map(|c| c.name).collect();
        assert_eq!(fields, columns);
        let promo = FactSale::TABLE.column("promotion_key").unwrap();
        assert_eq!(promo.references, Some(("dim_promotions", true)));
        assert_eq!(FactSale::TABLE.column("product_key").unwrap().references, Some(("dim_products", false)));
        assert_eq!(
            DimPromotion::TABLE.column("coupon_type").unwrap().accepted,
            ["Percentage", "Fixed Amount"]
        );
    }

    #[test]
    fn tables_collapse_like_replacing_merge_tree() {
        let mut t: Table<AggTotalSales> = Table::default();
        let row =
            |v, q| AggTotalSales { partition: 0, total_sales_quantity: q, version: v, ..Default::default() };
        t.absorb([row(2, 20), row(1, 10), row(2, 21)]);
        assert_eq!(t.rows().collect::<Vec<_>>(), [&row(2, 21)], "highest version, last among equals");
        let mut out = Outputs::default();
        out.agg_total_sales.push(row(3, 30));
        assert_eq!(out.len(), 1);
        let mut all = Tables::default();
        all.absorb(&mut out);
        assert!(out.is_empty());
        assert_eq!(all.rows_total(), 1);
    }
}
