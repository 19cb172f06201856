//! The warehouse against PostgreSQL, exactly (the fault suite's final check, and the dashboard
//! test's before it opens the charts): the figures the source defines (every order line once with
//! its quantity and price; every dashboard view's quantities, amounts, counts and ranks; the
//! current version of every dimension row), compared as text, row for row.
//!
//! What depends on history rather than on the source's present state (the profit, which uses
//! the promotion in force when each order committed, and the category and names a view shows
//! as of the last sale) cannot be recomputed from PostgreSQL: the suite checks it against a
//! replay of the archive instead (`common::replay`), the same code run over the same log
//! without faults.

use crate::common::processor::clickhouse;
use crate::common::source::pg_rows;

/// Whether ClickHouse holds exactly the order lines of the orders up to `max_order` that
/// PostgreSQL holds (count and amount), and the dashboard's total includes them: the warehouse
/// has caught up with that moment.
pub async fn caught_up_to(pool: &sqlx::PgPool, database: &str, max_order: i64) -> bool {
    let Ok(want) = try_pg_rows(
        pool,
        &format!("SELECT count(*), coalesce(sum(quantity * price), 0) FROM orderdetails WHERE order_id <= {max_order}"),
    )
    .await
    else {
        return false;
    };
    let got = clickhouse(&format!(
        "SELECT count(), sum(extended_sales_amount) FROM {database}.fact_sales FINAL \
         WHERE is_deleted = 0 AND order_transaction <= {max_order}"
    ))
    .await;
    if !got.is_ok_and(|got| normalise(&got) == normalise(&want)) {
        return false;
    }
    // The aggregates too: they are written after the facts of the same batch, and in commit
    // order, so the dashboard's total reaches these orders' amount once they are all in it.
    let amount =
        |text: &str| text.trim().rsplit('\t').next().and_then(|v| v.parse::<rust_decimal::Decimal>().ok());
    let total = clickhouse(&format!("SELECT total_sales_amount FROM {database}.v_total_sales")).await;
    matches!((total.as_deref().ok().and_then(amount), amount(&want)), (Some(t), Some(w)) if t >= w)
}

/// The newest order id in PostgreSQL, None while it does not answer.
pub async fn max_order(pool: &sqlx::PgPool) -> Option<i64> {
    sqlx::query_scalar::<_, Option<i64>>("SELECT max(id) FROM orders")
        .fetch_one(pool)
        .await
        .ok()
        .map(|m| m.unwrap_or(0))
}

async fn try_pg_rows(pool: &sqlx::PgPool, sql: &str) -> Result<String, sqlx::Error> {
    // pg_rows panics on errors; while a server restarts, an error only means "not yet".
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(pg_rows(pool, sql).await)
}

/// `0` and `0.00` are the same amount: ClickHouse prints the sum of an empty set without
/// decimals.
fn normalise(text: &str) -> String {
    text.lines()
        .map(|l| l.split('\t').map(|v| if v == "0.00" { "0" } else { v }).collect::<Vec<_>>().join("\t"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that the query gives the same rows in both; `what` names the comparison.
/// Every product's `sold_count` in its current `dim_products` version equals PostgreSQL's, with
/// no sold quantity pending in the API's `api_sold_count_pending`; the products compared.
pub async fn assert_sold_counts_exact(pool: &sqlx::PgPool, db: &str) -> usize {
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM api_sold_count_pending")
        .fetch_one(pool)
        .await
        .expect("PostgreSQL answers");
    assert_eq!(pending, 0, "sold quantities still pending in PostgreSQL");
    same(
        pool,
        "dim_products current sold_count",
        "SELECT id, sold_count FROM products ORDER BY 1",
        &format!(
            "SELECT product_id, sold_count FROM {db}.dim_products FINAL \
             WHERE is_current = 1 AND is_deleted = 0 ORDER BY product_id"
        ),
    )
    .await
}

async fn same(pool: &sqlx::PgPool, what: &str, postgres: &str, warehouse: &str) -> usize {
    let want = pg_rows(pool, postgres).await;
    let got = clickhouse(warehouse).await.unwrap_or_else(|e| panic!("{what}: {e}"));
    if normalise(&got) != normalise(&want) {
        let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
        let first = (0..w.len().max(g.len())).find(|&i| w.get(i) != g.get(i)).unwrap_or(0);
        panic!(
            "{what}: the warehouse differs from PostgreSQL ({} rows against {}); first difference at row {first}:\n  \
             PostgreSQL: {:?}\n  warehouse:  {:?}",
            g.len(),
            w.len(),
            w.get(first),
            g.get(first)
        );
    }
    assert!(!want.is_empty(), "{what}: no rows to compare");
    want.lines().count()
}

/// Every comparison; returns a line per comparison with its row count.
pub async fn assert_exactly_the_source(pool: &sqlx::PgPool, db: &str) -> Vec<String> {
    let mut report = Vec::new();
    let mut check = |what: &str, n: usize| report.push(format!("{what}: {n} rows equal"));

    let n = same(
        pool,
        "fact_sales (live lines: order, product, quantity, price, amount)",
        "SELECT order_id, product_id, quantity, price, quantity * price FROM orderdetails ORDER BY 1, 2",
        &format!(
            "SELECT order_transaction, product_id, sales_quantity, regular_unit_price, extended_sales_amount \
             FROM {db}.fact_sales FINAL WHERE is_deleted = 0 ORDER BY order_transaction, product_id"
        ),
    )
    .await;
    check("fact_sales", n);

    let n = same(
        pool,
        "v_total_sales (quantity, amount)",
        "SELECT sum(quantity), sum(quantity * price) FROM orderdetails",
        &format!("SELECT total_sales_quantity, total_sales_amount FROM {db}.v_total_sales"),
    )
    .await;
    check("v_total_sales", n);

    let n = same(
        pool,
        "v_sales_by_day_of_week (day, quantity, amount)",
        "SELECT extract(isodow FROM o.created_at AT TIME ZONE 'UTC')::int, sum(d.quantity), sum(d.quantity * d.price)
         FROM orderdetails d JOIN orders o ON o.id = d.order_id GROUP BY 1 ORDER BY 1",
        &format!(
            "SELECT day_of_week, total_sales_quantity, total_sales_amount FROM {db}.v_sales_by_day_of_week ORDER BY day_of_week"
        ),
    )
    .await;
    check("v_sales_by_day_of_week", n);

    let n = same(
        pool,
        "v_top_sellers (seller, quantity, amount)",
        "SELECT p.seller_id, sum(d.quantity), sum(d.quantity * d.price)
         FROM orderdetails d JOIN products p ON p.id = d.product_id GROUP BY 1 ORDER BY 1",
        &format!(
            "SELECT seller_id, total_sales_quantity, total_sales_amount FROM {db}.v_top_sellers ORDER BY seller_id"
        ),
    )
    .await;
    check("v_top_sellers", n);

    // The products the view shows (its top 5 by profit, a figure of history), each with the
    // quantity and amount PostgreSQL has for it.
    let shown =
        clickhouse(&format!("SELECT product_id FROM {db}.v_top_products_by_category ORDER BY product_id"))
            .await
            .unwrap();
    let ids: Vec<&str> = shown.lines().collect();
    assert!(!ids.is_empty(), "v_top_products_by_category is empty");
    let n = same(
        pool,
        "v_top_products_by_category (product, quantity, amount)",
        &format!(
            "SELECT product_id, sum(quantity), sum(quantity * price) FROM orderdetails
             WHERE product_id IN ({}) GROUP BY 1 ORDER BY 1",
            ids.join(", ")
        ),
        &format!(
            "SELECT product_id, total_sales_quantity, total_sales_amount FROM {db}.v_top_products_by_category ORDER BY product_id"
        ),
    )
    .await;
    check("v_top_products_by_category", n);

    let n = same(
        pool,
        "v_payment_methods (payment, orders, amount)",
        // Every order counts, also one whose lines were all deleted (as the view counts it).
        "SELECT o.payment_id, count(DISTINCT o.id), coalesce(sum(d.quantity * d.price), 0)
         FROM orders o LEFT JOIN orderdetails d ON d.order_id = o.id GROUP BY 1 ORDER BY 1",
        &format!("SELECT payment_id, order_count, total_sales_amount FROM {db}.v_payment_methods ORDER BY payment_id"),
    )
    .await;
    check("v_payment_methods", n);

    let n = same(
        pool,
        "v_customer_ranking (rank, customer, orders, quantity, amount)",
        "SELECT row_number() OVER (ORDER BY coalesce(sum(d.quantity * d.price), 0) DESC, o.customer_id),
                o.customer_id, count(DISTINCT o.id), coalesce(sum(d.quantity), 0),
                coalesce(sum(d.quantity * d.price), 0)
         FROM orders o LEFT JOIN orderdetails d ON d.order_id = o.id GROUP BY o.customer_id ORDER BY 1",
        &format!(
            "SELECT customer_rank, customer_id, order_count, total_sales_quantity, total_sales_amount \
             FROM {db}.v_customer_ranking ORDER BY customer_rank"
        ),
    )
    .await;
    check("v_customer_ranking", n);

    // ClickHouse 18.16 reads `ORDER BY 1` as a constant: its queries order by name.
    let current = |table: &str, cols: &str| {
        let key = cols.split(',').next().unwrap();
        format!(
            "SELECT {cols} FROM {db}.{table} FINAL WHERE is_current = 1 AND is_deleted = 0 ORDER BY {key}"
        )
    };
    let n = same(
        pool,
        "dim_products current versions",
        "SELECT p.id, p.name, p.price, p.rating_average, p.review_count, c.name, b.name, p.seller_id
         FROM products p JOIN categories c ON c.id = p.category_id JOIN brands b ON b.id = p.brand_id ORDER BY 1",
        &current("dim_products", "product_id, name, price, rating_average, review_count, category, brand, seller_id"),
    )
    .await;
    check("dim_products", n);
    let n = same(
        pool,
        "dim_customers current versions",
        "SELECT id, name, address FROM customers ORDER BY 1",
        &current("dim_customers", "customer_id, name, address"),
    )
    .await;
    check("dim_customers", n);
    let n = same(
        pool,
        "dim_sellers current versions",
        "SELECT id, name FROM sellers ORDER BY 1",
        &current("dim_sellers", "seller_id, name"),
    )
    .await;
    check("dim_sellers", n);
    let n = same(
        pool,
        "dim_promotions current versions",
        "SELECT id, name, coupon_type, price_treatment FROM promotions ORDER BY 1",
        &current("dim_promotions", "promotion_id, name, coupon_type, price_treatment"),
    )
    .await;
    check("dim_promotions", n);
    report
}
