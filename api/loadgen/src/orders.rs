//! What the producers send: realistic order bodies drawn from the live catalogue.
//!
//! * Products by skewed popularity (Zipf, s = 1.1, over a seeded shuffle of the catalogue), so a
//!   few products sell a lot and most sell a little.
//! * 1–10 lines per order, mostly few; 1–5 units per line, mostly one.
//! * Order dates spread over the last `days` days with the weekday shape of the seed's
//!   dashboard (Sunday, Thursday and Saturday carry about 84% of sales).

use chrono::{DateTime, Datelike, Duration, Utc};
use rainbow_schemas::rng::{SplitMix64, Weighted};
use serde_json::{json, Value};
use sqlx::PgPool;

/// Share of sales by weekday, Monday first, from the seed's "day of week" dashboard.
pub const WEEKDAY_WEIGHTS: [f64; 7] = [4.04, 2.97, 2.54, 28.34, 6.29, 26.48, 29.35];
const LINE_COUNT_WEIGHTS: [f64; 10] = [30.0, 22.0, 15.0, 10.0, 8.0, 5.0, 4.0, 3.0, 2.0, 1.0];
const QUANTITY_WEIGHTS: [f64; 5] = [60.0, 20.0, 10.0, 6.0, 4.0];

/// The ids an order can refer to.
#[derive(Debug, Clone)]
pub struct Catalogue {
    pub customers: Vec<i64>,
    pub payments: Vec<i64>,
    pub products: Vec<i64>,
}

impl Catalogue {
    pub async fn load(pool: &PgPool) -> Result<Catalogue, sqlx::Error> {
        let ids = |table: &'static str| async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT id FROM {table} ORDER BY id")).fetch_all(pool).await
        };
        Ok(Catalogue {
            customers: ids("customers").await?,
            payments: ids("payments").await?,
            products: ids("products").await?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.customers.is_empty() || self.payments.is_empty() || self.products.is_empty()
    }
}

/// Draws order bodies. One per producer (each with its own seed), so producers never contend.
pub struct OrderMaker {
    rng: SplitMix64,
    catalogue: std::sync::Arc<Catalogue>,
    /// Products in popularity order (a seeded shuffle of the catalogue).
    by_popularity: std::sync::Arc<Vec<i64>>,
    popularity: std::sync::Arc<Weighted>,
    lines: Weighted,
    quantity: Weighted,
    weekdays: Weighted,
    /// Spread orders over this many days before `now`; 0 leaves the date to the server.
    days: u32,
}

/// What every producer's maker shares: the catalogue and the popularity table.
#[derive(Clone)]
pub struct Shared {
    catalogue: std::sync::Arc<Catalogue>,
    by_popularity: std::sync::Arc<Vec<i64>>,
    popularity: std::sync::Arc<Weighted>,
}

impl Shared {
    pub fn new(catalogue: Catalogue, seed: u64) -> Shared {
        let mut products = catalogue.products.clone();
        let mut rng = SplitMix64::new(seed ^ 0x5EED_CAFE);
        for i in (1..products.len()).rev() {
            products.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let popularity = Weighted::zipf(products.len(), 1.1);
        Shared {
            catalogue: std::sync::Arc::new(catalogue),
            by_popularity: std::sync::Arc::new(products),
            popularity: std::sync::Arc::new(popularity),
        }
    }

    pub fn maker(&self, seed: u64, days: u32) -> OrderMaker {
        OrderMaker {
            rng: SplitMix64::new(seed),
            catalogue: self.catalogue.clone(),
            by_popularity: self.by_popularity.clone(),
            popularity: self.popularity.clone(),
            lines: Weighted::new(&LINE_COUNT_WEIGHTS),
            quantity: Weighted::new(&QUANTITY_WEIGHTS),
            weekdays: Weighted::new(&WEEKDAY_WEIGHTS),
            days,
        }
    }
}

impl OrderMaker {
    /// One `POST /api/v1/orders` body.
    pub fn next_order(&mut self, now: DateTime<Utc>) -> Value {
        let c = &self.catalogue;
        let customer = c.customers[self.rng.below(c.customers.len() as u64) as usize];
        let payment = c.payments[self.rng.below(c.payments.len() as u64) as usize];
        let wanted = (self.lines.sample(&mut self.rng) + 1).min(self.by_popularity.len());
        let mut products: Vec<Value> = Vec::with_capacity(wanted);
        let mut chosen: Vec<i64> = Vec::with_capacity(wanted);
        // Redraw on a repeat; bounded, since a small catalogue may not have `wanted` distinct hits.
        for _ in 0..wanted * 8 {
            if chosen.len() == wanted {
                break;
            }
            let product = self.by_popularity[self.popularity.sample(&mut self.rng)];
            if !chosen.contains(&product) {
                chosen.push(product);
                let quantity = self.quantity.sample(&mut self.rng) + 1;
                products.push(json!({"productId": product, "quantity": quantity}));
            }
        }
        let mut body = json!({"customerId": customer, "payment_id": payment, "products": products});
        if self.days > 0 {
            body["createdAt"] =
                json!(self.order_time(now).to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        }
        body
    }

    /// A moment in the last `days` days (never in the future), on a weekday drawn by weight.
    fn order_time(&mut self, now: DateTime<Utc>) -> DateTime<Utc> {
        let weekday = self.weekdays.sample(&mut self.rng) as u32;
        // Days back (0 = today) that fall on that weekday, within the window.
        let today = now.weekday().num_days_from_monday();
        let first_back = (today + 7 - weekday) % 7;
        let candidates: Vec<u32> = (first_back..self.days.max(1)).step_by(7).collect();
        let back = if candidates.is_empty() {
            0
        } else {
            candidates[self.rng.below(candidates.len() as u64) as usize]
        };
        let day_start = (now - Duration::days(i64::from(back)))
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc();
        let at = day_start + Duration::microseconds(self.rng.below(86_400_000_000) as i64);
        if at > now {
            now - Duration::microseconds(self.rng.below(60_000_000) as i64)
        } else {
            at
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maker(days: u32) -> OrderMaker {
        let catalogue = Catalogue {
            customers: (1..=100).collect(),
            payments: (1..=4).collect(),
            products: (1..=3000).collect(),
        };
        Shared::new(catalogue, 42).maker(1, days)
    }

    #[test]
    fn orders_are_valid_and_skewed() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z").unwrap().with_timezone(&Utc);
        let mut m = maker(28);
        let mut per_weekday = [0u32; 7];
        let mut per_product = std::collections::HashMap::<i64, u32>::new();
        for _ in 0..20_000 {
            let o = m.next_order(now);
            let lines = o["products"].as_array().unwrap();
            assert!((1..=10).contains(&lines.len()));
            let mut ids: Vec<i64> = lines.iter().map(|l| l["productId"].as_i64().unwrap()).collect();
            for id in &ids {
                *per_product.entry(*id).or_default() += 1;
            }
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), lines.len(), "no repeated product");
            let at =
                DateTime::parse_from_rfc3339(o["createdAt"].as_str().unwrap()).unwrap().with_timezone(&Utc);
            assert!(at <= now && at > now - Duration::days(28));
            per_weekday[at.weekday().num_days_from_monday() as usize] += 1;
        }
        let top3 = per_weekday[3] + per_weekday[5] + per_weekday[6];
        assert!(f64::from(top3) / 20_000.0 > 0.75, "{per_weekday:?}");
        let mut counts: Vec<u32> = per_product.into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top_1pct: u32 = counts.iter().take(30).sum();
        let total: u32 = counts.iter().sum();
        assert!(
            f64::from(top_1pct) / f64::from(total) > 0.25,
            "the 30 most popular products carry a quarter of lines"
        );
    }

    #[test]
    fn zero_days_leaves_the_date_to_the_server() {
        assert!(maker(0).next_order(Utc::now()).get("createdAt").is_none());
    }
}
