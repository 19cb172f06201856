//! Rows of the warehouse tables, as the processor writes them to ClickHouse and the replay to
//! Parquet. Field order is the DDL's column order: on servers without schema validation the client
//! sends plain RowBinary, which is positional.
//!
//! Encodings (RowBinary): `DateTime` = seconds since the Unix epoch (UTC) as `u32`; `Date` = days
//! since the epoch as `u16`; `Decimal(18,2)` = [`Money`]; `Decimal(38,2)` = [`MoneySum`];
//! `Decimal(9,2)` = hundredths as `i32`; flags (`UInt8`) = 0 or 1.

use crate::money::{Money, MoneySum};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

/// `valid_to` of an open SCD2 version: 2100-01-01 00:00:00 UTC.
pub const OPEN_VALID_TO: u32 = 4_102_444_800;

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct DimCustomer {
    pub customer_key: String,
    pub customer_id: i64,
    pub name: String,
    pub email: String,
    pub phone: String,
    pub address: String,
    pub valid_from: u32,
    pub valid_to: u32,
    pub is_current: u8,
    pub version: u64,
    pub is_deleted: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct DimProduct {
    pub product_key: String,
    pub product_id: i64,
    pub name: String,
    pub price: Money,
    pub original_price: Money,
    /// Hundredths: 4.75 is 475.
    pub rating_average: i32,
    pub review_count: i64,
    pub sold_count: i64,
    pub category: String,
    pub brand: String,
    pub seller_id: i64,
    pub valid_from: u32,
    pub valid_to: u32,
    pub is_current: u8,
    pub version: u64,
    pub is_deleted: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct DimSeller {
    pub seller_key: String,
    pub seller_id: i64,
    pub name: String,
    pub valid_from: u32,
    pub valid_to: u32,
    pub is_current: u8,
    pub version: u64,
    pub is_deleted: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct DimPromotion {
    pub promotion_key: String,
    pub promotion_id: i64,
    pub name: String,
    /// `Percentage` or `Fixed Amount`.
    pub coupon_type: String,
    /// Hundredths, as money: a percentage for `Percentage`, thousands of VND for `Fixed Amount`.
    pub price_treatment: Money,
    pub valid_from: u32,
    pub valid_to: u32,
    pub is_current: u8,
    pub version: u64,
    pub is_deleted: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct DimPayment {
    pub payment_key: String,
    pub payment_id: i64,
    pub method: String,
    pub valid_from: u32,
    pub valid_to: u32,
    pub is_current: u8,
    pub version: u64,
    pub is_deleted: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct DimDate {
    /// YYYYMMDD.
    pub date_key: u32,
    /// Days since 1970-01-01.
    pub date: u16,
    /// 1 = Monday .. 7 = Sunday.
    pub day_of_week: u8,
    pub day_name: String,
    pub day_of_month: u8,
    pub month: u8,
    pub month_name: String,
    pub quarter: u8,
    pub year: u16,
    pub is_weekend: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct FactSale {
    pub date_key: u32,
    pub product_key: String,
    pub seller_key: String,
    pub promotion_key: String,
    pub customer_key: String,
    pub payment_key: String,
    pub order_transaction: i64,
    pub product_id: i64,
    pub sales_quantity: i64,
    pub regular_unit_price: Money,
    pub discount_unit_price: Money,
    pub net_unit_price: Money,
    pub extended_sales_amount: Money,
    pub extended_discount_amount: Money,
    pub version: u64,
    pub is_deleted: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct AggTotalSales {
    pub partition: i32,
    pub total_sales_quantity: i64,
    pub total_sales_amount: MoneySum,
    pub total_discount_amount: MoneySum,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct AggSalesByDayOfWeek {
    pub partition: i32,
    pub day_of_week: u8,
    pub total_sales_quantity: i64,
    pub total_sales_amount: MoneySum,
    pub total_discount_amount: MoneySum,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct AggTopSeller {
    pub partition: i32,
    pub seller_id: i64,
    pub seller_name: String,
    pub total_sales_quantity: i64,
    pub total_sales_amount: MoneySum,
    pub total_discount_amount: MoneySum,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct AggProductProfit {
    pub partition: i32,
    pub product_id: i64,
    pub product_name: String,
    pub category: String,
    pub total_sales_quantity: i64,
    pub total_sales_amount: MoneySum,
    pub total_discount_amount: MoneySum,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct AggPaymentMethod {
    pub partition: i32,
    pub payment_id: i64,
    pub payment_method: String,
    pub order_count: i64,
    pub total_sales_amount: MoneySum,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct AggCustomerRanking {
    pub partition: i32,
    pub customer_id: i64,
    pub customer_name: String,
    pub order_count: i64,
    pub total_sales_quantity: i64,
    pub total_sales_amount: MoneySum,
    pub version: u64,
}
