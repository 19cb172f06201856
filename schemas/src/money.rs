//! Exact money. Amounts are VND with two decimal places, stored as integers of hundredths, so
//! sums are exact to the unit and identical however they are grouped.
//!
//! Wire forms: PostgreSQL `NUMERIC(15,2)` (via [`rust_decimal::Decimal`]), ClickHouse
//! `Decimal(18,2)` for [`Money`] and `Decimal(38,2)` for [`MoneySum`] (both are the unscaled integer
//! in RowBinary, which is what the serde representation here is).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Decimal places of every money value.
pub const MONEY_SCALE: u32 = 2;
const UNITS: i64 = 100;

/// Why a decimal could not become money.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error("{0} has more than {MONEY_SCALE} decimal places; money is exact to 0.01 VND")]
    TooPrecise(Decimal),
    #[error("{0} is outside the range of Decimal(18,2)")]
    OutOfRange(Decimal),
}

/// One amount of money, in hundredths of a VND: ClickHouse `Decimal(18,2)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Money(pub i64);

/// A sum of many amounts, in hundredths of a VND: ClickHouse `Decimal(38,2)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MoneySum(pub i128);

impl Money {
    pub const ZERO: Money = Money(0);

    /// A whole number of VND.
    pub const fn from_vnd(vnd: i64) -> Money {
        Money(vnd * UNITS)
    }

    /// Exact conversion; a value with more than two decimal places is an error, never rounded.
    pub fn from_decimal(d: Decimal) -> Result<Money, MoneyError> {
        let normalized = d.normalize();
        if normalized.scale() > MONEY_SCALE {
            return Err(MoneyError::TooPrecise(d));
        }
        let mut scaled = normalized;
        scaled.rescale(MONEY_SCALE);
        i64::try_from(scaled.mantissa())
            .ok()
            .filter(|m| m.unsigned_abs() < 10u64.pow(18))
            .map(Money)
            .ok_or(MoneyError::OutOfRange(d))
    }

    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.0, MONEY_SCALE)
    }
}

impl MoneySum {
    pub fn to_decimal(self) -> Decimal {
        Decimal::from_i128_with_scale(self.0, MONEY_SCALE)
    }
}

impl std::ops::AddAssign for MoneySum {
    fn add_assign(&mut self, rhs: MoneySum) {
        self.0 += rhs.0;
    }
}

impl std::ops::Add<Money> for MoneySum {
    type Output = MoneySum;
    fn add(self, rhs: Money) -> MoneySum {
        MoneySum(self.0 + i128::from(rhs.0))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_decimal().fmt(f)
    }
}

impl fmt::Display for MoneySum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_decimal().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn converts_exactly_and_refuses_rounding() {
        let m = Money::from_decimal(Decimal::from_str("13.34").unwrap()).unwrap();
        assert_eq!(m, Money(1334));
        assert_eq!(m.to_string(), "13.34");
        assert_eq!(Money::from_decimal(Decimal::from_str("7.500").unwrap()), Ok(Money(750)));
        assert!(matches!(
            Money::from_decimal(Decimal::from_str("0.001").unwrap()),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            Money::from_decimal(Decimal::from_str("1e18").unwrap()),
            Err(MoneyError::OutOfRange(_))
        ));
        assert_eq!((MoneySum(5) + Money(-7)).to_string(), "-0.02");
    }
}
