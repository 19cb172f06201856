//! The source schema against a real PostgreSQL: migrations apply (twice), every table has a
//! primary key, REPLICA IDENTITY FULL and an `updated_at` trigger, money is exact, and the
//! reference data loads with the seed's shape.

use crate::common;

use common::TestDb;
use rainbow_schemas::postgres::{MIGRATOR, SIGNAL_TABLE, SOURCE_TABLES};
use rainbow_schemas::seed::{self, SeedOutcome, SeedSpec};
use rust_decimal::Decimal;
use sqlx::Executor;
use std::str::FromStr;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_idempotently_with_the_source_contracts() {
    let db = TestDb::create().await;
    MIGRATOR.run(&db.pool).await.expect("migrations apply");
    MIGRATOR.run(&db.pool).await.expect("a second run is a no-op");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, MIGRATOR.iter().count());

    for table in SOURCE_TABLES {
        let (identity, has_pk, has_trigger): (i8, bool, bool) = sqlx::query_as(
            "SELECT c.relreplident::\"char\" AS ident,
                    EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = c.oid AND contype = 'p'),
                    EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = c.oid AND NOT tgisinternal
                            AND tgname = $1 || '_touch_updated_at')
             FROM pg_class c WHERE c.relname = $1 AND c.relnamespace = 'public'::regnamespace",
        )
        .bind(table)
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("table {table}: {e}"));
        assert_eq!(identity as u8 as char, 'f', "{table} has REPLICA IDENTITY FULL");
        assert!(has_pk, "{table} has a primary key");
        // The signal table holds requests, not business rows: no updated_at.
        assert_eq!(has_trigger, table != SIGNAL_TABLE, "{table} maintains updated_at");
    }

    // No floating point anywhere in the source schema.
    let floats: Vec<String> = sqlx::query_scalar(
        "SELECT table_name || '.' || column_name FROM information_schema.columns
         WHERE table_schema = 'public' AND data_type IN ('real', 'double precision', 'money')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(floats.is_empty(), "floating-point columns: {floats:?}");

    // updated_at moves on UPDATE, by the trigger, not by the writer.
    sqlx::query("INSERT INTO brands (id, name, updated_at) VALUES (1, 'Acme', '2001-01-01T00:00:00Z')")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE brands SET name = 'Acme 2' WHERE id = 1").execute(&db.pool).await.unwrap();
    let moved: bool = sqlx::query_scalar("SELECT updated_at > '2001-01-02' FROM brands WHERE id = 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(moved, "updated_at maintained by the trigger");

    // Exact money: 0.1 + 0.2 stays 0.3.
    sqlx::query("INSERT INTO categories (id, name) VALUES (1, 'c'); ").execute(&db.pool).await.unwrap();
    db.pool
        .execute(
            "INSERT INTO sellers (id, name) VALUES (1, 's');
                  INSERT INTO products (id, name, price, original_price, category_id, seller_id, brand_id)
                  VALUES (1, 'p', 0.10, 0.10, 1, 1, 1), (2, 'q', 0.20, 0.20, 1, 1, 1)",
        )
        .await
        .unwrap();
    let sum: Decimal =
        sqlx::query_scalar("SELECT sum(price) FROM products").fetch_one(&db.pool).await.unwrap();
    assert_eq!(sum, Decimal::from_str("0.30").unwrap());

    // Bad input is refused with the constraint's name, not stored.
    let err =
        sqlx::query("INSERT INTO promotions (name, coupon_type, price_treatment) VALUES ('x', 'Bogus', 1)")
            .execute(&db.pool)
            .await
            .unwrap_err();
    assert!(err.to_string().contains("promotions_coupon_type_check"), "{err}");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_data_loads_once_with_the_seed_shape() {
    let db = TestDb::create().await;
    MIGRATOR.run(&db.pool).await.unwrap();
    let spec = SeedSpec::default();
    let outcome = seed::load(&db.pool, &spec).await.unwrap();
    assert!(matches!(outcome, SeedOutcome::Loaded(_)), "{outcome:?}");

    let count = |table: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("brands").await, 19);
    assert_eq!(count("categories").await, 6);
    assert_eq!(count("customers").await, 100);
    assert_eq!(count("sellers").await, 19);
    assert_eq!(count("payments").await, 4);
    assert_eq!(count("promotions").await, 66);
    assert_eq!(count("products").await, 3_000);
    let types: Vec<(String, i64)> =
        sqlx::query_as("SELECT coupon_type, count(*) FROM promotions GROUP BY 1 ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(types, vec![("Fixed Amount".to_string(), 33), ("Percentage".to_string(), 33)]);

    // The database holds exactly what the pure generator produced.
    let expected = seed::generate(&spec);
    let total: Decimal =
        sqlx::query_scalar("SELECT sum(price) FROM products").fetch_one(&db.pool).await.unwrap();
    assert_eq!(total, expected.products.iter().map(|p| p.price).sum::<Decimal>());

    // Sequences continue after the explicit ids.
    let next_id: i64 = sqlx::query_scalar("INSERT INTO brands (name) VALUES ('New brand') RETURNING id")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(next_id, 20);

    // A second load writes nothing.
    let again = seed::load(&db.pool, &spec).await.unwrap();
    assert_eq!(again, SeedOutcome::AlreadyPresent { brands: 20, products: 3_000 });
    db.drop().await;
}
