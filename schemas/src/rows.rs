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

/// A surrogate key. In the warehouse (a `String` column) it is 16 lower-case hex digits, and the
/// empty string for 0, "no dimension row" (a fact without a promotion). Serialised without
/// allocating: the processor writes several per fact row. Orders as its text does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SurrogateKey(pub u64);

impl SurrogateKey {
    /// The text form, on the stack: 16 hex digits, or "" for 0.
    pub fn text(self) -> KeyText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 16];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = HEX[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        KeyText { buf, len: if self.0 == 0 { 0 } else { 16 } }
    }
}

/// The text of a [`SurrogateKey`] without a heap allocation.
#[derive(Debug, Clone, Copy)]
pub struct KeyText {
    buf: [u8; 16],
    len: usize,
}

impl KeyText {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Display for SurrogateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl std::str::FromStr for SurrogateKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(SurrogateKey(0));
        }
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("a surrogate key is 16 lower-case hex digits or empty, not {s:?}"));
        }
        u64::from_str_radix(s, 16).map(SurrogateKey).map_err(|e| e.to_string())
    }
}

impl Serialize for SurrogateKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.text().as_str())
    }
}

impl<'de> Deserialize<'de> for SurrogateKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `valid_to` of an open SCD2 version: 2100-01-01 00:00:00 UTC.
pub const OPEN_VALID_TO: u32 = 4_102_444_800;

#[derive(Debug, Clone, Default, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct DimCustomer {
    pub customer_key: SurrogateKey,
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct DimProduct {
    pub product_key: SurrogateKey,
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct DimSeller {
    pub seller_key: SurrogateKey,
    pub seller_id: i64,
    pub name: String,
    pub valid_from: u32,
    pub valid_to: u32,
    pub is_current: u8,
    pub version: u64,
    pub is_deleted: u8,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct DimPromotion {
    pub promotion_key: SurrogateKey,
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct DimPayment {
    pub payment_key: SurrogateKey,
    pub payment_id: i64,
    pub method: String,
    pub valid_from: u32,
    pub valid_to: u32,
    pub is_current: u8,
    pub version: u64,
    pub is_deleted: u8,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Row, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct FactSale {
    pub date_key: u32,
    pub product_key: SurrogateKey,
    pub seller_key: SurrogateKey,
    pub promotion_key: SurrogateKey,
    pub customer_key: SurrogateKey,
    pub payment_key: SurrogateKey,
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct AggTotalSales {
    pub partition: i32,
    pub total_sales_quantity: i64,
    pub total_sales_amount: MoneySum,
    pub total_discount_amount: MoneySum,
    pub version: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct AggSalesByDayOfWeek {
    pub partition: i32,
    pub day_of_week: u8,
    pub total_sales_quantity: i64,
    pub total_sales_amount: MoneySum,
    pub total_discount_amount: MoneySum,
    pub version: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct AggTopSeller {
    pub partition: i32,
    pub seller_id: i64,
    pub seller_name: String,
    pub total_sales_quantity: i64,
    pub total_sales_amount: MoneySum,
    pub total_discount_amount: MoneySum,
    pub version: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Row, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct AggPaymentMethod {
    pub partition: i32,
    pub payment_id: i64,
    pub payment_method: String,
    pub order_count: i64,
    pub total_sales_amount: MoneySum,
    pub version: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct AggCustomerRanking {
    pub partition: i32,
    pub customer_id: i64,
    pub customer_name: String,
    pub order_count: i64,
    pub total_sales_quantity: i64,
    pub total_sales_amount: MoneySum,
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::SurrogateKey;

    #[test]
    fn surrogate_keys_are_16_hex_digits_or_empty_both_ways() {
        for (key, text) in
            [(0, ""), (1, "0000000000000001"), (u64::MAX, "ffffffffffffffff"), (0xab12, "000000000000ab12")]
        {
            assert_eq!(SurrogateKey(key).to_string(), text);
            assert_eq!(text.parse::<SurrogateKey>(), Ok(SurrogateKey(key)));
            let json = serde_json::to_string(&SurrogateKey(key)).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<SurrogateKey>(&json).unwrap(), SurrogateKey(key));
        }
        // Text order is numeric order (fixed width), so tables sorted either way agree.
        assert!(SurrogateKey(0).to_string() < SurrogateKey(1).to_string());
        assert!(SurrogateKey(0xff).to_string() < SurrogateKey(0x100).to_string());
        for bad in ["abc", "000000000000000G", "000000000000000A", "00000000000000001"] {
            assert!(bad.parse::<SurrogateKey>().is_err(), "{bad}");
        }
    }
}
