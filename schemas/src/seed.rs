//! Deterministic reference data shaped like the seed's master dataset: 19 brands, a few
//! categories, about 100 customers, 19 sellers, 4 payment methods, 66 promotions of both coupon
//! types and a few thousand products with Vietnamese names and VND prices.
//!
//! The same [`SeedSpec`] always produces the same rows (a fixed-seed SplitMix64, no clock), so
//! tests and benchmarks can rely on exact ids, names and prices. Orders are not reference data:
//! the order producers (`rainbow loadgen`) create them through the API.

use crate::rng::SplitMix64;
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, QueryBuilder};

/// How much reference data to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedSpec {
    pub customers: usize,
    pub products: usize,
    pub rng_seed: u64,
}

impl Default for SeedSpec {
    fn default() -> Self {
        SeedSpec { customers: 100, products: 3_000, rng_seed: 0x5241_494e_424f_5721 }
    }
}

/// What [`load`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedOutcome {
    Loaded(SeedCounts),
    /// The catalogue already had rows; nothing was written.
    AlreadyPresent {
        brands: i64,
        products: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedCounts {
    pub brands: usize,
    pub categories: usize,
    pub customers: usize,
    pub sellers: usize,
    pub payments: usize,
    pub promotions: usize,
    pub products: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("loading reference data failed while writing {table}: {source}")]
    Write {
        table: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("reading the catalogue failed: {0}")]
    Read(#[source] sqlx::Error),
}

pub const BRANDS: [&str; 19] = [
    "Apple",
    "Samsung",
    "Xiaomi",
    "OPPO",
    "OnePlus",
    "Vivo",
    "Realme",
    "Nokia",
    "Sony",
    "Asus",
    "Lenovo",
    "Dell",
    "HP",
    "Acer",
    "LG",
    "Panasonic",
    "Philips",
    "Sunhouse",
    "Kangaroo",
];

pub const CATEGORIES: [&str; 6] =
    ["Điện thoại smartphone", "Máy tính bảng", "Laptop", "Tai nghe", "Đồng hồ thông minh", "Điện gia dụng"];

pub const PAYMENT_METHODS: [&str; 4] = ["Credit Card", "Cash", "E-Wallet", "Bank Transfer"];

const SELLERS: [&str; 19] = [
    "Tiki Trading",
    "Điện Máy Xanh",
    "FPT Shop",
    "CellphoneS",
    "Hoàng Hà Mobile",
    "Di Động Việt",
    "Phong Vũ",
    "GearVN",
    "An Phát PC",
    "Nguyễn Kim",
    "Mediamart",
    "HC Home",
    "Viettel Store",
    "Minh Tuấn Mobile",
    "Bạch Long Store",
    "Xuân Vinh",
    "Thế Giới Số",
    "ShopDunk",
    "Hnam Mobile",
];

const FAMILY: [&str; 12] =
    ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ"];
const MIDDLE: [&str; 6] = ["Văn", "Thị", "Hữu", "Minh", "Ngọc", "Thanh"];
const GIVEN: [&str; 16] = [
    "An", "Bình", "Châu", "Dũng", "Giang", "Hà", "Hải", "Hạnh", "Khoa", "Lan", "Long", "Mai", "Nam", "Phúc",
    "Quân", "Trang",
];
const CITIES: [&str; 6] = ["Hà Nội", "TP. Hồ Chí Minh", "Đà Nẵng", "Hải Phòng", "Cần Thơ", "Huế"];

/// Per category: the product noun and a price band in thousands of VND.
const CATEGORY_SHAPES: [(&str, u64, u64); 6] = [
    ("Điện thoại", 2_000, 40_000),
    ("Máy tính bảng", 3_000, 35_000),
    ("Laptop", 8_000, 60_000),
    ("Tai nghe", 200, 8_000),
    ("Đồng hồ thông minh", 500, 20_000),
    ("Nồi chiên không dầu", 300, 5_000),
];
const VARIANTS: [&str; 8] = ["", " 5G", " Pro", " Plus", " Lite", " Max", " Ultra", " SE"];
const SUFFIXES: [&str; 4] = [" - Hàng Chính Hãng", " - Chính hãng", " - Bảo hành 12 tháng", " - Nhập khẩu"];

#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub phone: String,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    pub id: i64,
    pub name: String,
    pub coupon_type: &'static str,
    pub price_treatment: Decimal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub price: Decimal,
    pub original_price: Decimal,
    pub rating_average: Decimal,
    pub review_count: i32,
    pub sold_count: i64,
    pub category_id: i64,
    pub seller_id: i64,
    pub brand_id: i64,
    pub promotion_id: Option<i64>,
}

/// All reference rows; ids start at 1 in the order of each vector.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceData {
    pub customers: Vec<Customer>,
    pub promotions: Vec<Promotion>,
    pub products: Vec<Product>,
}

/// Generates the reference data for `spec`. Pure: same spec, same rows.
pub fn generate(spec: &SeedSpec) -> ReferenceData {
    let mut rng = SplitMix64::new(spec.rng_seed);
    let customers = (1..=spec.customers as i64)
        .map(|id| {
            let (f, m, g) = (rng.pick(&FAMILY), rng.pick(&MIDDLE), rng.pick(&GIVEN));
            Customer {
                id,
                name: format!("{f} {m} {g}"),
                email: format!("customer{id:04}@example.vn"),
                phone: format!("09{:08}", rng.below(100_000_000)),
                address: format!(
                    "{} đường số {}, {}",
                    rng.range(1, 300),
                    rng.range(1, 30),
                    rng.pick(&CITIES)
                ),
            }
        })
        .collect();
    // 66 promotions, alternating coupon types. Fixed amounts stay <= 100k VND, below every
    // product's price, so a discount never exceeds the price it applies to.
    let promotions = (1..=66i64)
        .map(|id| {
            let percentage = id % 2 == 1;
            let (coupon_type, treatment) = if percentage {
                ("Percentage", rng.range(1, 10) * 5)
            } else {
                ("Fixed Amount", rng.range(1, 10) * 10)
            };
            let label =
                if percentage { format!("Giảm {treatment}%") } else { format!("Giảm {treatment}K") };
            Promotion {
                id,
                name: format!("{label} - Khuyến mãi #{id}"),
                coupon_type,
                price_treatment: Decimal::from(treatment),
            }
        })
        .collect();
    let products = (1..=spec.products as i64)
        .map(|id| {
            let category = rng.below(CATEGORIES.len() as u64) as usize;
            let brand = rng.below(BRANDS.len() as u64) as usize;
            let (noun, lo, hi) = CATEGORY_SHAPES[category];
            let model = format!("{}{}", (b'A' + rng.below(26) as u8) as char, rng.range(1, 99));
            let name =
                format!("{noun} {} {model}{}{}", BRANDS[brand], rng.pick(&VARIANTS), rng.pick(&SUFFIXES));
            // Prices end in ...000 VND like real listings; original price >= price.
            let price_k = rng.range(lo, hi);
            let original_k = price_k + price_k * rng.below(40) / 100;
            let promotion_id = (rng.below(10) < 7).then(|| rng.range(1, 66) as i64);
            Product {
                id,
                name,
                price: Decimal::from(price_k * 1_000),
                original_price: Decimal::from(original_k * 1_000),
                rating_average: Decimal::new(rng.range(0, 500) as i64, 2),
                review_count: rng.below(5_000) as i32,
                sold_count: rng.below(20_000) as i64,
                category_id: category as i64 + 1,
                seller_id: rng.range(1, SELLERS.len() as u64) as i64,
                brand_id: brand as i64 + 1,
                promotion_id,
            }
        })
        .collect();
    ReferenceData { customers, promotions, products }
}

/// Loads the reference data in one transaction, unless the catalogue already has brands or
/// products (then nothing is written). Sequences are moved past the explicit ids, so rows
/// created later (by the API) get fresh ids.
pub async fn load(pool: &PgPool, spec: &SeedSpec) -> Result<SeedOutcome, SeedError> {
    let (brands, products): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM brands), (SELECT count(*) FROM products)")
            .fetch_one(pool)
            .await
            .map_err(SeedError::Read)?;
    if brands > 0 || products > 0 {
        return Ok(SeedOutcome::AlreadyPresent { brands, products });
    }
    let data = generate(spec);
    let w = |table| move |source| SeedError::Write { table, source };
    let mut tx = pool.begin().await.map_err(w("(begin)"))?;

    insert_names(&mut tx, "brands", "name", &BRANDS).await.map_err(w("brands"))?;
    insert_names(&mut tx, "categories", "name", &CATEGORIES).await.map_err(w("categories"))?;
    insert_names(&mut tx, "sellers", "name", &SELLERS).await.map_err(w("sellers"))?;
    insert_names(&mut tx, "payments", "method", &PAYMENT_METHODS).await.map_err(w("payments"))?;

    for chunk in data.customers.chunks(1_000) {
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new("INSERT INTO customers (id, name, email, phone, address) ");
        qb.push_values(chunk, |mut b, c| {
            b.push_bind(c.id)
                .push_bind(&c.name)
                .push_bind(&c.email)
                .push_bind(&c.phone)
                .push_bind(&c.address);
        });
        qb.build().execute(&mut *tx).await.map_err(w("customers"))?;
    }
    let mut qb: QueryBuilder<Postgres> =
        QueryBuilder::new("INSERT INTO promotions (id, name, coupon_type, price_treatment) ");
    qb.push_values(&data.promotions, |mut b, p| {
        b.push_bind(p.id).push_bind(&p.name).push_bind(p.coupon_type).push_bind(p.price_treatment);
    });
    qb.build().execute(&mut *tx).await.map_err(w("promotions"))?;

    // 11 binds per row keeps a chunk far below PostgreSQL's 65,535 parameters.
    for chunk in data.products.chunks(2_000) {
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
            "INSERT INTO products (id, name, price, original_price, rating_average, review_count, \
             sold_count, category_id, seller_id, brand_id, promotion_id) ",
        );
        qb.push_values(chunk, |mut b, p| {
            b.push_bind(p.id)
                .push_bind(&p.name)
                .push_bind(p.price)
                .push_bind(p.original_price)
                .push_bind(p.rating_average)
                .push_bind(p.review_count)
                .push_bind(p.sold_count)
                .push_bind(p.category_id)
                .push_bind(p.seller_id)
                .push_bind(p.brand_id)
                .push_bind(p.promotion_id);
        });
        qb.build().execute(&mut *tx).await.map_err(w("products"))?;
    }
    for table in ["brands", "categories", "sellers", "payments", "customers", "promotions", "products"] {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
        ))
        .execute(&mut *tx)
        .await
        .map_err(w(table))?;
    }
    tx.commit().await.map_err(w("(commit)"))?;
    Ok(SeedOutcome::Loaded(SeedCounts {
        brands: BRANDS.len(),
        categories: CATEGORIES.len(),
        customers: data.customers.len(),
        sellers: SELLERS.len(),
        payments: PAYMENT_METHODS.len(),
        promotions: data.promotions.len(),
        products: data.products.len(),
    }))
}

async fn insert_names(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    table: &str,
    column: &str,
    names: &[&str],
) -> Result<(), sqlx::Error> {
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(format!("INSERT INTO {table} (id, {column}) "));
    qb.push_values(names.iter().enumerate(), |mut b, (i, name)| {
        b.push_bind(i as i64 + 1).push_bind(*name);
    });
    qb.build().execute(&mut **tx).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_seed_shaped() {
        let spec = SeedSpec::default();
        let a = generate(&spec);
        assert_eq!(a, generate(&spec));
        assert_eq!(a.customers.len(), 100);
        assert_eq!(a.promotions.len(), 66);
        assert_eq!(a.products.len(), 3_000);
        assert!(a.promotions.iter().any(|p| p.coupon_type == "Percentage"));
        assert!(a.promotions.iter().any(|p| p.coupon_type == "Fixed Amount"));
        for p in &a.products {
            assert!(p.price >= Decimal::from(200_000) && p.original_price >= p.price, "{p:?}");
            assert!(p.price.fract().is_zero());
        }
        // Fixed discounts (treatment x 1000 VND) stay below every price.
        let max_fixed = a
            .promotions
            .iter()
            .filter(|p| p.coupon_type == "Fixed Amount")
            .map(|p| p.price_treatment)
            .max()
            .unwrap();
        assert!(max_fixed * Decimal::from(1_000) < Decimal::from(200_000));
        let emails: std::collections::HashSet<_> = a.customers.iter().map(|c| &c.email).collect();
        assert_eq!(emails.len(), a.customers.len());
        assert_ne!(generate(&SeedSpec { rng_seed: 1, ..spec }), a);
    }
}
