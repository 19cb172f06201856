//! The warehouse as ReplacingMergeTree sees it after a merge (`FINAL`): per table and key, the row
//! with the highest version, the last emitted among equal versions. The replay writes these
//! tables; the tests compare them with ClickHouse and with each other.

use crate::core::Outputs;
use rainbow_schemas::rows::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Calls `$m!("table", field)` once per warehouse table, in the warehouse's order: the one
/// list of the thirteen tables that [`Outputs`], [`Tables`], the sink and the replay iterate
/// (each field of both structs is named after its table).
#[macro_export]
macro_rules! for_each_table {
    ($m:ident) => {
        $m!("dim_customers", dim_customers);
        $m!("dim_products", dim_products);
        $m!("dim_sellers", dim_sellers);
        $m!("dim_promotions", dim_promotions);
        $m!("dim_payments", dim_payments);
        $m!("dim_dates", dim_dates);
        $m!("fact_sales", fact_sales);
        $m!("agg_total_sales", agg_total_sales);
        $m!("agg_sales_by_day_of_week", agg_sales_by_day_of_week);
        $m!("agg_top_sellers", agg_top_sellers);
        $m!("agg_product_profit", agg_product_profit);
        $m!("agg_payment_methods", agg_payment_methods);
        $m!("agg_customer_ranking", agg_customer_ranking);
    };
}

/// A row's ReplacingMergeTree key (its `ORDER BY`) and version.
pub trait Versioned {
    type Key: Ord + Clone;
    fn key(&self) -> Self::Key;
    fn version(&self) -> u64;
}

macro_rules! versioned {
    ($t:ty, |$r:ident| $key:expr, $kt:ty) => {
        impl Versioned for $t {
            type Key = $kt;
            fn key(&self) -> $kt {
                let $r = self;
                $key
            }
            fn version(&self) -> u64 {
                self.version
            }
        }
    };
}

versioned!(DimCustomer, |r| r.customer_key, SurrogateKey);
versioned!(DimProduct, |r| r.product_key, SurrogateKey);
versioned!(DimSeller, |r| r.seller_key, SurrogateKey);
versioned!(DimPromotion, |r| r.promotion_key, SurrogateKey);
versioned!(DimPayment, |r| r.payment_key, SurrogateKey);
versioned!(FactSale, |r| (r.order_transaction, r.product_id), (i64, i64));
versioned!(AggTotalSales, |r| r.partition, i32);
versioned!(AggSalesByDayOfWeek, |r| (r.partition, i64::from(r.day_of_week)), (i32, i64));
versioned!(AggTopSeller, |r| (r.partition, r.seller_id), (i32, i64));
versioned!(AggProductProfit, |r| (r.partition, r.product_id), (i32, i64));
versioned!(AggPaymentMethod, |r| (r.partition, r.payment_id), (i32, i64));
versioned!(AggCustomerRanking, |r| (r.partition, r.customer_id), (i32, i64));

impl Versioned for DimDate {
    type Key = u32;
    fn key(&self) -> u32 {
        self.date_key
    }
    fn version(&self) -> u64 {
        0
    }
}

/// One table: key → surviving row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "R: Serialize, R::Key: Serialize",
    deserialize = "R: Deserialize<'de>, R::Key: Deserialize<'de>"
))]
pub struct Table<R: Versioned>(pub BTreeMap<R::Key, R>);

impl<R: Versioned> Default for Table<R> {
    fn default() -> Self {
        Table(BTreeMap::new())
    }
}

impl<R: Versioned> Table<R> {
    pub fn absorb(&mut self, rows: impl IntoIterator<Item = R>) {
        for row in rows {
            match self.0.get(&row.key()) {
                Some(old) if old.version() > row.version() => {}
                _ => {
                    self.0.insert(row.key(), row);
                }
            }
        }
    }

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

/// Every output table, collapsed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tables {
    pub dim_customers: Table<DimCustomer>,
    pub dim_products: Table<DimProduct>,
    pub dim_sellers: Table<DimSeller>,
    pub dim_promotions: Table<DimPromotion>,
    pub dim_payments: Table<DimPayment>,
    pub dim_dates: Table<DimDate>,
    pub fact_sales: Table<FactSale>,
    pub agg_total_sales: Table<AggTotalSales>,
    pub agg_sales_by_day_of_week: Table<AggSalesByDayOfWeek>,
    pub agg_top_sellers: Table<AggTopSeller>,
    pub agg_product_profit: Table<AggProductProfit>,
    pub agg_payment_methods: Table<AggPaymentMethod>,
    pub agg_customer_ranking: Table<AggCustomerRanking>,
}

impl Tables {
    /// Takes in a batch of outputs (emptying it).
    pub fn absorb(&mut self, out: &mut Outputs) {
        macro_rules! absorb {
            ($name:literal, $field:ident) => {
                self.$field.absorb(out.$field.drain(..));
            };
        }
        crate::for_each_table!(absorb);
    }

    /// Rows in all tables.
    pub fn rows_total(&self) -> usize {
        let mut rows = 0;
        macro_rules! count {
            ($name:literal, $field:ident) => {
                rows += self.$field.len();
            };
        }
        crate::for_each_table!(count);
        rows
    }

    /// Live fact rows (not retracted).
    pub fn live_facts(&self) -> impl Iterator<Item = &FactSale> {
        self.fact_sales.rows().filter(|f| f.is_deleted == 0)
    }
}
