//! Catalogue churn: direct updates in PostgreSQL of the tables the SCD2 dimensions track, the way
//! back-office tools and sync jobs change a real catalogue. Every update is a real change of a
//! tracked attribute (never a no-op), so each one should open a new dimension version downstream.
//!
//! Mix: about 70% products (price, rating_average, review_count or name), the rest spread over
//! customers, sellers, promotions, brands and categories.

use rainbow_schemas::rng::{SplitMix64, Weighted};
use sqlx::PgPool;

/// The kinds of change, with their share of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    ProductPrice,
    ProductRating,
    ProductReviews,
    ProductName,
    Customer,
    Seller,
    Promotion,
    Brand,
    Category,
}

impl Change {
    pub const ALL: [Change; 9] = [
        Change::ProductPrice,
        Change::ProductRating,
        Change::ProductReviews,
        Change::ProductName,
        Change::Customer,
        Change::Seller,
        Change::Promotion,
        Change::Brand,
        Change::Category,
    ];
    const WEIGHTS: [f64; 9] = [25.0, 20.0, 15.0, 10.0, 12.0, 6.0, 6.0, 3.0, 3.0];

    pub fn table(self) -> &'static str {
        match self {
            Change::ProductPrice | Change::ProductRating | Change::ProductReviews | Change::ProductName => {
                "products"
            }
            Change::Customer => "customers",
            Change::Seller => "sellers",
            Change::Promotion => "promotions",
            Change::Brand => "brands",
            Change::Category => "categories",
        }
    }

    /// The statement; `$1` is a random row's position, `$2` a run-unique sequence number, `$3` a
    /// random number in [0, 1).
    fn sql(self) -> &'static str {
        // Rows are picked by position among existing ids (OFFSET $1 % count), so deleted or
        // added rows never make the churn miss.
        match self {
            Change::ProductPrice => {
                "UPDATE products SET price = GREATEST(1000, round(price * (0.9 + 0.2 * $3::float8)::numeric / 1000) * 1000
                        + CASE WHEN round(price * (0.9 + 0.2 * $3::float8)::numeric / 1000) * 1000 = price THEN 1000 ELSE 0 END)
                 WHERE id = (SELECT id FROM products ORDER BY id OFFSET ($1 % (SELECT count(*) FROM products)) LIMIT 1)"
            }
            Change::ProductRating => {
                "UPDATE products SET rating_average = CASE WHEN round((5 * $3::float8)::numeric, 2) = rating_average
                        THEN (rating_average + 0.01) % 5 ELSE round((5 * $3::float8)::numeric, 2) END
                 WHERE id = (SELECT id FROM products ORDER BY id OFFSET ($1 % (SELECT count(*) FROM products)) LIMIT 1)"
            }
            Change::ProductReviews => {
                "UPDATE products SET review_count = review_count + 1 + ($2 % 7)
                 WHERE id = (SELECT id FROM products ORDER BY id OFFSET ($1 % (SELECT count(*) FROM products)) LIMIT 1)"
            }
            Change::ProductName => {
                "UPDATE products SET name = regexp_replace(name, ' \\(rev [0-9]+\\)$', '') || ' (rev ' || $2 || ')'
                 WHERE id = (SELECT id FROM products ORDER BY id OFFSET ($1 % (SELECT count(*) FROM products)) LIMIT 1)"
            }
            Change::Customer => {
                "UPDATE customers SET address = 'Số ' || (1 + $2 % 500) || ', Phường ' || (1 + ($1 % 30)) || ', TP. Hồ Chí Minh'
                 WHERE id = (SELECT id FROM customers ORDER BY id OFFSET ($1 % (SELECT count(*) FROM customers)) LIMIT 1)"
            }
            Change::Seller => {
                "UPDATE sellers SET name = regexp_replace(name, ' \\(rev [0-9]+\\)$', '') || ' (rev ' || $2 || ')'
                 WHERE id = (SELECT id FROM sellers ORDER BY id OFFSET ($1 % (SELECT count(*) FROM sellers)) LIMIT 1)"
            }
            Change::Promotion => {
                "UPDATE promotions SET price_treatment = CASE WHEN coupon_type = 'Percentage'
                        THEN 5 + (price_treatment::bigint + 5) % 46 ELSE 10 + (price_treatment::bigint + 10) % 100 END
                 WHERE id = (SELECT id FROM promotions ORDER BY id OFFSET ($1 % (SELECT count(*) FROM promotions)) LIMIT 1)"
            }
            Change::Brand => {
                "UPDATE brands SET name = regexp_replace(name, ' \\(rev [0-9]+\\)$', '') || ' (rev ' || $2 || ')'
                 WHERE id = (SELECT id FROM brands ORDER BY id OFFSET ($1 % (SELECT count(*) FROM brands)) LIMIT 1)"
            }
            Change::Category => {
                "UPDATE categories SET name = regexp_replace(name, ' \\(rev [0-9]+\\)$', '') || ' (rev ' || $2 || ')'
                 WHERE id = (SELECT id FROM categories ORDER BY id OFFSET ($1 % (SELECT count(*) FROM categories)) LIMIT 1)"
            }
        }
    }
}

/// Applies random catalogue changes.
pub struct Churner {
    rng: SplitMix64,
    mix: Weighted,
    /// Makes renames unique within a run and across runs with different seeds.
    sequence: i64,
}

impl Churner {
    pub fn new(seed: u64) -> Churner {
        Churner {
            rng: SplitMix64::new(seed ^ 0xC4u64 << 56),
            mix: Weighted::new(&Change::WEIGHTS),
            sequence: (seed % 1_000_000) as i64 * 1_000_000,
        }
    }

    /// Makes one change; returns what it changed (None when the table is empty).
    pub async fn step(&mut self, pool: &PgPool) -> Result<Option<Change>, sqlx::Error> {
        let change = Change::ALL[self.mix.sample(&mut self.rng)];
        self.sequence += 1;
        let done = sqlx::query(change.sql())
            .bind(self.rng.below(1 << 40) as i64)
            .bind(self.sequence)
            .bind(self.rng.unit())
            .execute(pool)
            .await?;
        Ok((done.rows_affected() > 0).then_some(change))
    }
}
