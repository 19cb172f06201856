//! The seed's line arithmetic: how a promotion turns a unit price into discount and net amounts.
//! The order API uses it to show an order's lines and the processor to build `fact_sales`, so the
//! two can never disagree about what a line is worth.
//!
//! Rules (from the seed's fact model):
//! * `Percentage`: the unit discount is `price_treatment`% of the unit price, rounded half away
//!   from zero to 0.01 VND.
//! * `Fixed Amount`: `price_treatment` is in thousands of VND: the unit discount is
//!   `price_treatment × 1,000` VND.
//! * No promotion: no discount.
//!
//! The unit discount never exceeds the unit price (a fixed coupon worth more than the product makes
//! it free, never negative), so every amount is non-negative for non-negative inputs.

use crate::money::{Money, MoneyError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// `promotions.coupon_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CouponType {
    #[serde(rename = "Percentage")]
    Percentage,
    #[serde(rename = "Fixed Amount")]
    FixedAmount,
}

impl CouponType {
    pub const fn as_str(self) -> &'static str {
        match self {
            CouponType::Percentage => "Percentage",
            CouponType::FixedAmount => "Fixed Amount",
        }
    }
}

impl fmt::Display for CouponType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown coupon type {0:?}: expected \"Percentage\" or \"Fixed Amount\"")]
pub struct UnknownCouponType(pub String);

impl FromStr for CouponType {
    type Err = UnknownCouponType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Percentage" => Ok(CouponType::Percentage),
            "Fixed Amount" => Ok(CouponType::FixedAmount),
            other => Err(UnknownCouponType(other.to_string())),
        }
    }
}

/// What a promotion does to a price: its coupon type and `price_treatment` (a percentage, or
/// thousands of VND).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PromotionTerms {
    pub coupon_type: CouponType,
    pub price_treatment: Money,
}

/// The amounts of one order line; the names are those of `fact_sales`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LineAmounts {
    pub regular_unit_price: Money,
    pub discount_unit_price: Money,
    pub net_unit_price: Money,
    /// `quantity × regular_unit_price`.
    pub extended_sales_amount: Money,
    /// `quantity × discount_unit_price`.
    pub extended_discount_amount: Money,
}

impl LineAmounts {
    /// `extended_sales_amount - extended_discount_amount`: what the customer pays for the line.
    pub fn extended_net_amount(&self) -> Money {
        Money(self.extended_sales_amount.0 - self.extended_discount_amount.0)
    }
}

/// Hundredths of a VND in one thousand VND (the unit of a fixed coupon's `price_treatment`).
const FIXED_AMOUNT_FACTOR: i128 = 1_000;

/// The amounts of `quantity` units at `unit_price` under `promotion`.
///
/// Errors only when an extended amount leaves the range of `Decimal(18,2)`; nothing is rounded
/// except the percentage discount, as stated in the module documentation.
pub fn line_amounts(
    unit_price: Money,
    quantity: i64,
    promotion: Option<PromotionTerms>,
) -> Result<LineAmounts, MoneyError> {
    let price = i128::from(unit_price.0);
    let discount = match promotion {
        None => 0,
        Some(PromotionTerms { coupon_type: CouponType::Percentage, price_treatment }) => {
            // price (hundredths) × treatment (hundredths of a percent) / 10,000 (percent and scale).
            div_round_half_away(price * i128::from(price_treatment.0), 10_000)
        }
        Some(PromotionTerms { coupon_type: CouponType::FixedAmount, price_treatment }) => {
            i128::from(price_treatment.0) * FIXED_AMOUNT_FACTOR
        }
    }
    .clamp(0, price.max(0));
    let q = i128::from(quantity);
    Ok(LineAmounts {
        regular_unit_price: unit_price,
        discount_unit_price: to_money(discount)?,
        net_unit_price: to_money(price - discount)?,
        extended_sales_amount: to_money(price * q)?,
        extended_discount_amount: to_money(discount * q)?,
    })
}

fn div_round_half_away(n: i128, d: i128) -> i128 {
    let (q, r) = (n / d, n % d);
    if 2 * r.abs() >= d {
        q + n.signum()
    } else {
        q
    }
}

fn to_money(hundredths: i128) -> Result<Money, MoneyError> {
    i64::try_from(hundredths)
        .ok()
        .filter(|v| v.unsigned_abs() < 10u64.pow(18))
        .map(Money)
        .ok_or_else(|| MoneyError::OutOfRange(rust_decimal::Decimal::from_i128_with_scale(hundredths, 2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(coupon_type: CouponType, treatment: i64) -> Option<PromotionTerms> {
        Some(PromotionTerms { coupon_type, price_treatment: Money::from_vnd(treatment) })
    }

    #[test]
    fn follows_the_seed_formulas() {
        let price = Money::from_vnd(250_000);
        let none = line_amounts(price, 3, None).unwrap();
        assert_eq!(none.discount_unit_price, Money::ZERO);
        assert_eq!(none.extended_sales_amount, Money::from_vnd(750_000));
        assert_eq!(none.extended_net_amount(), Money::from_vnd(750_000));

        let pct = line_amounts(price, 3, terms(CouponType::Percentage, 10)).unwrap();
        assert_eq!(pct.discount_unit_price, Money::from_vnd(25_000));
        assert_eq!(pct.net_unit_price, Money::from_vnd(225_000));
        assert_eq!(pct.extended_discount_amount, Money::from_vnd(75_000));
        assert_eq!(pct.extended_net_amount(), Money::from_vnd(675_000));

        let fixed = line_amounts(price, 2, terms(CouponType::FixedAmount, 30)).unwrap();
        assert_eq!(fixed.discount_unit_price, Money::from_vnd(30_000));
        assert_eq!(fixed.net_unit_price, Money::from_vnd(220_000));
        assert_eq!(fixed.extended_discount_amount, Money::from_vnd(60_000));
    }

    #[test]
    fn rounds_percentages_half_away_and_never_discounts_below_zero() {
        // 12.5% of 0.03 VND = 0.00375 -> 0.00; 50% of 0.03 = 0.015 -> 0.02.
        let tiny = Money(3);
        let pct =
            |t: i64| Some(PromotionTerms { coupon_type: CouponType::Percentage, price_treatment: Money(t) });
        assert_eq!(line_amounts(tiny, 1, pct(1250)).unwrap().discount_unit_price, Money(0));
        assert_eq!(line_amounts(tiny, 1, pct(5000)).unwrap().discount_unit_price, Money(2));
        let free = line_amounts(Money::from_vnd(20_000), 4, terms(CouponType::FixedAmount, 50)).unwrap();
        assert_eq!(free.discount_unit_price, Money::from_vnd(20_000));
        assert_eq!(free.net_unit_price, Money::ZERO);
        assert_eq!(free.extended_net_amount(), Money::ZERO);
    }

    #[test]
    fn reports_overflow_instead_of_wrapping() {
        assert!(line_amounts(Money(999_999_999_999_999), 10_000, None).is_err());
        assert_eq!("Fixed Amount".parse::<CouponType>(), Ok(CouponType::FixedAmount));
        assert!("fixed".parse::<CouponType>().is_err());
    }
}
