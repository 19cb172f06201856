//! The warehouse DDL against the real ClickHouse of the local stack: it applies (twice), agrees
//! with the warehouse's definition (columns, types, keys, versions), rows
//! of every output table written with the `clickhouse` crate read back equal, and the dashboard
//! views compute the expected figures, with FINAL collapsing re-delivered rows.

use crate::common;

use clickhouse::Row;
use rainbow_schemas::shape::*;
use rainbow_schemas::warehouse::{Warehouse, DASHBOARD_VIEWS};
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
    let statements = wh.apply_ddl(&db).await.expect("DDL applies");
    assert_eq!(statements, 1 + TABLES.len() + DASHBOARD_VIEWS.len());
    wh.apply_ddl(&db).await.expect("DDL is idempotent");

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
