//! The warehouse DDL against the real ClickHouse of the local stack: the migrations apply (twice),
//! the result agrees with the warehouse's definition (columns, types, keys, versions), rows
//! of every output table written with the `clickhouse` crate read back equal, and the dashboard
//! views compute the expected figures, with FINAL collapsing re-delivered rows. A warehouse made
//! by the DDL of before the migrations is upgraded by `rainbow migrate`, its data kept.

use crate::common;

use clickhouse::Row;
use rainbow_schemas::shape::*;
use rainbow_schemas::warehouse::{Warehouse, DASHBOARD_VIEWS, MIGRATIONS};
use rainbow_schemas::{Money, MoneySum};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

/// Inserts `rows` into `table` and reads them back, ordered by the table's key.
async fn roundtrip<T>(wh: &Warehouse, table: &str, rows: &[T]) -> Vec<T>
where
    T: Row + Serialize + DeserializeOwned + Debug + Send + Sync + 'static + for<'a> Row<Value<'a> = T>,
{
    let mut insert = wh.client.insert::<T>(table).await.unwrap();
    for row in rows {
        insert.write(row).await.unwrap();
    }
    insert.end().await.unwrap();
    wh.client
        .query(&format!("SELECT ?fields FROM {table} FINAL ORDER BY tuple(*)"))
        .fetch_all::<T>()
        .await
        .unwrap_or_else(|e| panic!("reading {table}: {e}"))
}

fn sorted<T: Clone + Debug>(rows: &[T], key: impl Fn(&T) -> String) -> Vec<T> {
    let mut v = rows.to_vec();
    v.sort_by_key(|r| key(r));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_applies_and_every_table_round_trips() {
    let db = common::unique_name("rainbow_test");
    let wh = common::warehouse(&db).await;
    let report = wh.migrate(&db).await.expect("the migrations apply");
    assert_eq!(report.applied.len(), MIGRATIONS.len());
    assert!(!report.adopted);
    let again = wh.migrate(&db).await.expect("migrating again is a no-op");
    assert_eq!((again.applied.len(), again.statements), (0, 0));

    // The warehouse's one definition and the tables ClickHouse made of the DDL agree.
    for t in TABLES {
        let columns: Vec<(String, String)> = wh
            .client
            .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
            .bind(&db)
            .bind(t.name)
            .fetch_all()
            .await
            .unwrap();
        let want: Vec<(String, String)> =
            t.columns.iter().map(|c| (c.name.to_string(), c.clickhouse.to_string())).collect();
        assert_eq!(columns, want, "columns of {} in ClickHouse and in the definition", t.name);
        let (sorting_key, engine): (String, String) = wh
            .client
            .query("SELECT sorting_key, engine_full FROM system.tables WHERE database = ? AND name = ?")
            .bind(&db)
            .bind(t.name)
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(sorting_key, t.key.join(", "), "ORDER BY of {}", t.name);
        let version = engine.strip_prefix("ReplacingMergeTree(").and_then(|e| e.split_once(')')).map(|v| v.0);
        assert_eq!(version.filter(|v| !v.is_empty()), t.version, "version column of {}: {engine}", t.name);
    }

    let tables: Vec<String> = wh
        .client
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(&db)
        .fetch_all()
        .await
        .unwrap();
    for name in TABLES.iter().map(|t| t.name).chain(DASHBOARD_VIEWS) {
        assert!(tables.iter().any(|t| t == name), "{name} exists in {tables:?}");
    }

    let customers = vec![
        DimCustomer {
            customer_key: SurrogateKey(0xc1),
            customer_id: 1,
            name: "Nguyễn Văn An".into(),
            email: "a@example.vn".into(),
            phone: "0900000001".into(),
            address: "Huế".into(),
            valid_from: 1_725_148_800,
            valid_to: 1_725_235_200,
            is_current: 0,
            version: 10,
            is_deleted: 0,
        },
        DimCustomer {
            customer_key: SurrogateKey(0xc2),
            customer_id: 1,
            name: "Nguyễn Văn Bình".into(),
            email: "a@example.vn".into(),
            phone: "0900000001".into(),
            address: "Huế".into(),
            valid_from: 1_725_235_200,
            valid_to: OPEN_VALID_TO,
            is_current: 1,
            version: 20,
            is_deleted: 0,
        },
    ];
    assert_eq!(roundtrip(&wh, "dim_customers", &customers).await, customers);

    let products = vec![DimProduct {
        product_key: SurrogateKey(0xa1),
        product_id: 193_366_048,
        name: "Điện thoại OnePlus 10T 5G - Hàng Chính Hãng".into(),
        price: Money::from_vnd(9_990_000),
        original_price: Money::from_vnd(12_990_000),
        rating_average: 475,
        review_count: 10,
        sold_count: 9_637,
        category: "Điện thoại smartphone".into(),
        brand: "OnePlus".into(),
        seller_id: 3,
        valid_from: 1_725_753_600,
        valid_to: OPEN_VALID_TO,
        is_current: 1,
        version: 7,
        is_deleted: 0,
    }];
    assert_eq!(roundtrip(&wh, "dim_products", &products).await, products);

    let sellers = vec![DimSeller {
        seller_key: SurrogateKey(0x51),
        seller_id: 1,
        name: "Tiki Trading".into(),
        valid_from: 0,
        valid_to: OPEN_VALID_TO,
        is_current: 1,
        version: 1,
        is_deleted: 0,
    }];
    assert_eq!(roundtrip(&wh, "dim_sellers", &sellers).await, sellers);

    let promotions = vec![
        DimPromotion {
            promotion_key: SurrogateKey(0xb1),
            promotion_id: 1,
            name: "Giảm 10%".into(),
            coupon_type: "Percentage".into(),
            price_treatment: Money(1_000),
            valid_from: 0,
            valid_to: OPEN_VALID_TO,
            is_current: 1,
            version: 1,
            is_deleted: 0,
        },
        DimPromotion {
            promotion_key: SurrogateKey(0xb2),
            promotion_id: 2,
            name: "Giảm 50K".into(),
            coupon_type: "Fixed Amount".into(),
            price_treatment: Money(5_000),
            valid_from: 0,
            valid_to: OPEN_VALID_TO,
            is_current: 1,
            version: 1,
            is_deleted: 0,
        },
    ];
    assert_eq!(roundtrip(&wh, "dim_promotions", &promotions).await, promotions);

    let payments = vec![DimPayment {
        payment_key: SurrogateKey(0xd1),
        payment_id: 1,
        method: "Credit Card".into(),
        valid_from: 0,
        valid_to: OPEN_VALID_TO,
        is_current: 1,
        version: 1,
        is_deleted: 0,
    }];
    assert_eq!(roundtrip(&wh, "dim_payments", &payments).await, payments);

    let dates = vec![DimDate {
        date_key: 20_240_901,
        date: 19_967,
        day_of_week: 7,
        day_name: "Sunday".into(),
        day_of_month: 1,
        month: 9,
        month_name: "September".into(),
        quarter: 3,
        year: 2024,
        is_weekend: 1,
    }];
    assert_eq!(roundtrip(&wh, "dim_dates", &dates).await, dates);

    // One line delivered twice (same key, same version) plus a retraction of another line.
    let line = FactSale {
        date_key: 20_240_901,
        product_key: SurrogateKey(0xa1),
        seller_key: SurrogateKey(0x51),
        promotion_key: SurrogateKey(0xb1),
        customer_key: SurrogateKey(0xc2),
        payment_key: SurrogateKey(0xd1),
        order_transaction: 42,
        product_id: 193_366_048,
        sales_quantity: 3,
        regular_unit_price: Money::from_vnd(9_990_000),
        discount_unit_price: Money::from_vnd(999_000),
        net_unit_price: Money::from_vnd(8_991_000),
        extended_sales_amount: Money::from_vnd(29_970_000),
        extended_discount_amount: Money::from_vnd(2_997_000),
        version: 100,
        is_deleted: 0,
    };
    let retracted_v1 = FactSale { order_transaction: 43, version: 101, ..line.clone() };
    let retracted_v2 = FactSale { order_transaction: 43, version: 102, is_deleted: 1, ..line.clone() };
    let facts =
        roundtrip(&wh, "fact_sales", &[line.clone(), line.clone(), retracted_v1, retracted_v2.clone()]).await;
    assert_eq!(facts, vec![line.clone(), retracted_v2]);

    // Aggregates: two partitions' partial rows, one of them superseded by a newer version.
    let totals = vec![
        AggTotalSales {
            partition: 0,
            total_sales_quantity: 1,
            total_sales_amount: MoneySum(100),
            total_discount_amount: MoneySum(0),
            version: 1,
        },
        AggTotalSales {
            partition: 0,
            total_sales_quantity: 3,
            total_sales_amount: MoneySum(2_997_000_000),
            total_discount_amount: MoneySum(299_700_000),
            version: 100,
        },
        AggTotalSales {
            partition: 1,
            total_sales_quantity: 2,
            total_sales_amount: MoneySum(1_000_050),
            total_discount_amount: MoneySum(50),
            version: 7,
        },
    ];
    let back = roundtrip(&wh, "agg_total_sales", &totals).await;
    assert_eq!(back, vec![totals[1].clone(), totals[2].clone()]);

    #[derive(Debug, PartialEq, Row, Serialize, Deserialize)]
    struct TotalSalesView {
        total_sales_quantity: i64,
        total_sales_amount: MoneySum,
        total_profit: MoneySum,
    }
    let view: TotalSalesView =
        wh.client.query("SELECT ?fields FROM v_total_sales").fetch_one().await.unwrap();
    assert_eq!(
        view,
        TotalSalesView {
            total_sales_quantity: 5,
            total_sales_amount: MoneySum(2_998_000_050),
            total_profit: MoneySum(2_998_000_050 - 299_700_050),
        }
    );

    let by_day = vec![
        AggSalesByDayOfWeek {
            partition: 0,
            day_of_week: 7,
            total_sales_quantity: 3,
            total_sales_amount: MoneySum(30_000),
            total_discount_amount: MoneySum(0),
            version: 1,
        },
        AggSalesByDayOfWeek {
            partition: 1,
            day_of_week: 7,
            total_sales_quantity: 1,
            total_sales_amount: MoneySum(10_000),
            total_discount_amount: MoneySum(0),
            version: 1,
        },
        AggSalesByDayOfWeek {
            partition: 0,
            day_of_week: 4,
            total_sales_quantity: 2,
            total_sales_amount: MoneySum(60_000),
            total_discount_amount: MoneySum(0),
            version: 1,
        },
    ];
    roundtrip(&wh, "agg_sales_by_day_of_week", &by_day).await;
    let days: Vec<(u8, String, i64, i128, f64)> = wh.client
        .query("SELECT day_of_week, day_name, total_sales_quantity, total_sales_amount, pct_total_sales_amount FROM v_sales_by_day_of_week")
        .fetch_all().await.unwrap();
    assert_eq!(
        days,
        vec![(4, "Thursday".to_string(), 2, 60_000, 60.0), (7, "Sunday".to_string(), 4, 40_000, 40.0),]
    );

    let sellers_agg = vec![
        AggTopSeller {
            partition: 0,
            seller_id: 1,
            seller_name: "Old name".into(),
            total_sales_quantity: 1,
            total_sales_amount: MoneySum(500),
            total_discount_amount: MoneySum(100),
            version: 1,
        },
        AggTopSeller {
            partition: 1,
            seller_id: 1,
            seller_name: "Tiki Trading".into(),
            total_sales_quantity: 1,
            total_sales_amount: MoneySum(700),
            total_discount_amount: MoneySum(0),
            version: 2,
        },
        AggTopSeller {
            partition: 0,
            seller_id: 2,
            seller_name: "FPT Shop".into(),
            total_sales_quantity: 9,
            total_sales_amount: MoneySum(900),
            total_discount_amount: MoneySum(0),
            version: 1,
        },
    ];
    assert_eq!(
        sorted(&roundtrip(&wh, "agg_top_sellers", &sellers_agg).await, |r| format!(
            "{}{}",
            r.partition, r.seller_id
        )),
        sorted(&sellers_agg, |r| format!("{}{}", r.partition, r.seller_id))
    );
    let top: Vec<(i64, String, i128, i128)> = wh
        .client
        .query("SELECT seller_id, seller_name, total_sales_amount, total_profit FROM v_top_sellers")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(top, vec![(1, "Tiki Trading".into(), 1_200, 1_100), (2, "FPT Shop".into(), 900, 900)]);

    // Six products in one category: the view keeps the five most profitable.
    let profit: Vec<AggProductProfit> = (1..=6)
        .map(|i| AggProductProfit {
            partition: 0,
            product_id: i,
            product_name: format!("p{i}"),
            category: "Laptop".into(),
            total_sales_quantity: 1,
            total_sales_amount: MoneySum(i as i128 * 100),
            total_discount_amount: MoneySum(0),
            version: 1,
        })
        .chain(std::iter::once(AggProductProfit {
            partition: 0,
            product_id: 7,
            product_name: "t".into(),
            category: "Tai nghe".into(),
            total_sales_quantity: 1,
            total_sales_amount: MoneySum(50),
            total_discount_amount: MoneySum(10),
            version: 1,
        }))
        .collect();
    assert_eq!(roundtrip(&wh, "agg_product_profit", &profit).await.len(), 7);
    let best: Vec<(String, i64, i128)> = wh
        .client
        .query("SELECT category, product_id, total_profit FROM v_top_products_by_category")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        best,
        vec![
            ("Laptop".into(), 6, 600),
            ("Laptop".into(), 5, 500),
            ("Laptop".into(), 4, 400),
            ("Laptop".into(), 3, 300),
            ("Laptop".into(), 2, 200),
            ("Tai nghe".into(), 7, 40),
        ]
    );

    let methods = vec![
        AggPaymentMethod {
            partition: 0,
            payment_id: 1,
            payment_method: "Credit Card".into(),
            order_count: 3,
            total_sales_amount: MoneySum(300),
            version: 1,
        },
        AggPaymentMethod {
            partition: 1,
            payment_id: 2,
            payment_method: "Cash".into(),
            order_count: 1,
            total_sales_amount: MoneySum(100),
            version: 1,
        },
    ];
    assert_eq!(roundtrip(&wh, "agg_payment_methods", &methods).await, methods);
    let shares: Vec<(String, i64, f64)> = wh
        .client
        .query("SELECT payment_method, order_count, pct_orders FROM v_payment_methods")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(shares, vec![("Credit Card".into(), 3, 75.0), ("Cash".into(), 1, 25.0)]);

    let ranking = vec![
        AggCustomerRanking {
            partition: 0,
            customer_id: 1,
            customer_name: "An".into(),
            order_count: 1,
            total_sales_quantity: 1,
            total_sales_amount: MoneySum(100),
            version: 1,
        },
        AggCustomerRanking {
            partition: 1,
            customer_id: 1,
            customer_name: "An".into(),
            order_count: 1,
            total_sales_quantity: 2,
            total_sales_amount: MoneySum(250),
            version: 1,
        },
        AggCustomerRanking {
            partition: 0,
            customer_id: 2,
            customer_name: "Bình".into(),
            order_count: 5,
            total_sales_quantity: 5,
            total_sales_amount: MoneySum(300),
            version: 1,
        },
    ];
    assert_eq!(roundtrip(&wh, "agg_customer_ranking", &ranking).await.len(), 3);
    let ranks: Vec<(u64, i64, i64, i128)> = wh
        .client
        .query("SELECT customer_rank, customer_id, order_count, total_sales_amount FROM v_customer_ranking")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(ranks, vec![(1, 1, 2, 350), (2, 2, 5, 300)]);

    wh.client.query(&format!("DROP DATABASE {db}")).execute().await.unwrap();
}

/// The warehouse DDL as it was before migrations existed, what an existing installation holds:
/// the baseline migrations 1-4, unchanged since (a released migration is never edited; its
/// checksum is recorded in every warehouse).
const WAREHOUSE_V0: [&str; 4] = [
    include_str!("../../schemas/clickhouse/01_dimensions.sql"),
    include_str!("../../schemas/clickhouse/02_facts.sql"),
    include_str!("../../schemas/clickhouse/03_aggregates.sql"),
    include_str!("../../schemas/clickhouse/04_views.sql"),
];

/// `rainbow migrate --target clickhouse` on `database`, as a user runs it: (success, output).
fn rainbow_migrate(database: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rainbow"))
        .args(["migrate", "--target", "clickhouse"])
        .env("RAINBOW_CLICKHOUSE__DATABASE", database)
        .current_dir(std::env::temp_dir())
        .output()
        .expect("rainbow runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_upgrades_a_warehouse_made_before_migrations_and_keeps_its_data() {
    let db = common::unique_name("rainbow_upgrade");
    let wh = common::warehouse(&db).await;
    let admin = wh.client.clone().with_database("default");
    let sql = |q: String| {
        let admin = admin.clone();
        async move { admin.query(&q).execute().await.unwrap_or_else(|e| panic!("{q}: {e}")) }
    };

    // An installation of the previous release, with data.
    for file in WAREHOUSE_V0 {
        for statement in rainbow_schemas::warehouse::statements(file, &db).unwrap() {
            sql(statement).await;
        }
    }
    sql(format!(
        "INSERT INTO {db}.agg_total_sales VALUES (0, 1, 1.00, 0, 1), (0, 3, 2000.00, 200.00, 5), (1, 2, 1000.50, 0.50, 7)"
    ))
    .await;
    sql(format!(
        "INSERT INTO {db}.agg_payment_methods VALUES (0, 1, 'Cash', 9, 1.00, 1), (0, 1, 'Cash', 2, 2000.00, 5), \
         (1, 2, 'Credit Card', 1, 1000.50, 7)"
    ))
    .await;
    sql(format!(
        "INSERT INTO {db}.fact_sales VALUES (20240901, 'p1', 's1', '', 'c1', 'pay1', 42, 7, 3, 9990000, 0, 9990000, \
         29970000, 0, 100, 0)"
    ))
    .await;
    let count = |q: String| {
        let client = wh.client.clone();
        async move { client.query(&q).fetch_one::<u64>().await.unwrap_or_else(|e| panic!("{q}: {e}")) }
    };
    let view_columns =
        format!("SELECT count() FROM system.columns WHERE database = '{db}' AND table = 'v_total_sales'");
    assert_eq!(count(view_columns.clone()).await, 3, "the previous v_total_sales");
    // As if an earlier upgrade had died after the first statement of migration 5 (no
    // transactions): the view is gone and nothing is recorded; the next run repeats it whole.
    let first = rainbow_schemas::warehouse::statements(MIGRATIONS[4].sql, &db).unwrap().remove(0);
    assert!(first.starts_with("DROP TABLE IF EXISTS"), "{first}");
    sql(first).await;

    // The upgrade: the warehouse is recognised, nothing is recreated, migration 5 applies.
    let (ok, out) = rainbow_migrate(&db);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("database {db} held a warehouse made before migrations")), "{out}");
    assert!(out.contains("applied migration 5 (total_sales_orders)"), "{out}");
    let n = MIGRATIONS.len();
    assert!(out.contains(&format!("({n} migrations, {n} applied now")), "{out}");

    let recorded: Vec<(u32, String, String)> = wh
        .client
        .query("SELECT version, name, checksum FROM rainbow_migrations ORDER BY version")
        .fetch_all()
        .await
        .unwrap();
    let want: Vec<(u32, String, String)> =
        MIGRATIONS.iter().map(|m| (m.version(), m.name().to_string(), m.checksum())).collect();
    assert_eq!(recorded, want);
    assert_eq!(want.iter().map(|w| w.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);

    // The new columns answer with the figures of the rows that were already there.
    #[derive(Debug, PartialEq, Row, Serialize, Deserialize)]
    struct TotalSales {
        total_sales_quantity: i64,
        total_sales_amount: MoneySum,
        total_profit: MoneySum,
        order_count: i64,
        average_order_value: MoneySum,
    }
    let total: TotalSales = wh.client.query("SELECT ?fields FROM v_total_sales").fetch_one().await.unwrap();
    assert_eq!(
        total,
        TotalSales {
            total_sales_quantity: 5,
            total_sales_amount: MoneySum(300_050),
            total_profit: MoneySum(280_000),
            order_count: 3,
            // 3000.50 / 3, truncated to the cent.
            average_order_value: MoneySum(100_016),
        }
    );
    assert_eq!(count(view_columns.clone()).await, 5);
    // The data is all still there, superseded versions included (no table was recreated).
    assert_eq!(count("SELECT count() FROM agg_total_sales".into()).await, 3);
    assert_eq!(count("SELECT count() FROM agg_payment_methods".into()).await, 3);
    assert_eq!(count("SELECT count() FROM fact_sales WHERE order_transaction = 42".into()).await, 1);
    // The other views still answer.
    for view in DASHBOARD_VIEWS {
        count(format!("SELECT count() FROM {view}")).await;
    }

    // Migrating again applies nothing.
    let (ok, out) = rainbow_migrate(&db);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("({n} migrations, 0 applied now, 0 statements run)")), "{out}");
    assert!(!out.contains("made before migrations"), "{out}");
    assert_eq!(count("SELECT count() FROM rainbow_migrations".into()).await, n as u64);

    // A warehouse migrated by a newer Rainbow: refused, nothing applied.
    let record = |version: u32, name: &str, checksum: &str| {
        format!("INSERT INTO {db}.rainbow_migrations SELECT {version}, '{name}', '{checksum}', now(), 'test'")
    };
    sql(record(99, "from_the_future", "00")).await;
    let (ok, out) = rainbow_migrate(&db);
    assert!(!ok, "{out}");
    assert!(
        out.contains("migration 99 (from_the_future) applied, which this build of Rainbow does not know"),
        "{out}"
    );
    assert!(out.contains("migrated by a newer Rainbow"), "{out}");

    // A recorded migration whose file changed: a clear error saying what to do.
    sql(record(2, "facts", "tampered")).await;
    let (ok, out) = rainbow_migrate(&db);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "warehouse migration 2 (facts) was applied to database {db} with checksum tampered, but \
             schemas/clickhouse/02_facts.sql of this build has checksum {}",
            MIGRATIONS[1].checksum()
        )),
        "{out}"
    );
    assert!(out.contains("Restore the file as released and put the change in a new migration"), "{out}");
    assert_eq!(count("SELECT count() FROM rainbow_migrations".into()).await, n as u64 + 2);

    sql(format!("DROP DATABASE {db}")).await;
}
