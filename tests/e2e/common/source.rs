//! The source side of the end-to-end tests: a workload of orders and catalogue changes written
//! to PostgreSQL, PostgreSQL's own figures, and waiting for the warehouse to catch up.

use super::processor::{clickhouse, ProcessorProcess};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

pub async fn exec(pool: &sqlx::PgPool, sql: &str) {
    sqlx::raw_sql(sql).execute(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Rows of a PostgreSQL query as tab-separated text lines, as PostgreSQL prints them (the
/// simple query protocol returns text).
pub async fn pg_rows(pool: &sqlx::PgPool, sql: &str) -> String {
    use sqlx::{Row, ValueRef};
    let rows = sqlx::raw_sql(sql).fetch_all(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .map(|row| {
            let cols: Vec<String> = (0..row.len())
                .map(|i| {
                    let v = row.try_get_raw(i).unwrap();
                    if v.is_null() {
                        "\\N".to_string()
                    } else {
                        v.as_str().unwrap().to_string()
                    }
                })
                .collect();
            cols.join("\t") + "\n"
        })
        .collect()
}

/// `n` orders, each its own transaction, with 1–3 lines priced from the catalogue.
pub async fn place_orders(pool: &sqlx::PgPool, from: i64, n: i64) {
    for i in from..from + n {
        exec(
            pool,
            &format!(
                "WITH o AS (INSERT INTO orders (customer_id, payment_id) VALUES ({c}, {p}) RETURNING id)
                 INSERT INTO orderdetails (order_id, product_id, quantity, price, promotion_id)
                 SELECT o.id, pr.id, 1 + (pr.id + {i}) % 3, pr.price, pr.promotion_id
                 FROM o, products pr WHERE pr.id IN ({a}, {b}, {d})",
                c = 1 + i % 100,
                p = 1 + i % 4,
                a = 1 + (i * 7) % 3000,
                b = 1 + (i * 13) % 3000,
                d = 1 + (i * 31) % 3000,
            ),
        )
        .await;
    }
}

/// Catalogue and order changes between orders: a price change, a brand rename, a line update
/// and delete, an order's payment change and a cancelled order.
pub async fn churn(pool: &sqlx::PgPool) {
    exec(pool, "UPDATE products SET price = price + 1000 WHERE id IN (8, 14)").await;
    exec(pool, "UPDATE brands SET name = name || ' (renamed)' WHERE id = (SELECT brand_id FROM products WHERE id = 2)").await;
    exec(pool, "UPDATE products SET updated_at = now() WHERE id = 3").await; // no tracked change
    exec(
        pool,
        "UPDATE orderdetails SET quantity = quantity + 5 WHERE order_id = (SELECT min(id) FROM orders)",
    )
    .await;
    exec(pool, "DELETE FROM orderdetails WHERE (order_id, product_id) IN (SELECT order_id, product_id FROM orderdetails ORDER BY order_id DESC, product_id LIMIT 1)").await;
    exec(
        pool,
        "UPDATE orders SET payment_id = 1 + payment_id % 4 WHERE id = (SELECT min(id) + 1 FROM orders)",
    )
    .await;
    exec(pool, "DELETE FROM orders WHERE id = (SELECT min(id) + 2 FROM orders)").await;
}

/// Waits until ClickHouse's live facts match the source's order lines (count and amount), and
/// the aggregate written last in a flush (`agg_customer_ranking`, behind the facts and the other
/// aggregates) holds the same amount: every table of the last flush is in.
pub async fn caught_up(pool: &sqlx::PgPool, p: &ProcessorProcess) {
    let want = pg_rows(pool, "SELECT count(*), sum(quantity * price) FROM orderdetails").await;
    let sql = format!(
        "SELECT count(), sum(extended_sales_amount) FROM {db}.fact_sales FINAL WHERE is_deleted = 0",
        db = p.database
    );
    let last_aggregate = format!("SELECT sum(total_sales_amount) FROM {}.v_customer_ranking", p.database);
    let amount =
        |text: &str| text.trim().rsplit('\t').next().and_then(|v| v.parse::<rust_decimal::Decimal>().ok());
    let mut last = String::new();
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(got) = clickhouse(&sql).await {
            if got == want {
                let ranked = clickhouse(&last_aggregate).await.ok();
                if ranked.as_deref().and_then(amount).unwrap_or_default() == amount(&want).unwrap_or_default()
                {
                    return;
                }
                last = format!("{got} (customer ranking: {ranked:?})");
            } else {
                last = got;
            }
        }
        if std::time::Instant::now() >= deadline {
            // What the merge waits for: queued events, paused partitions, lag, events in and out.
            let metrics =
                match reqwest::get(format!("http://{}/metrics", p.metrics.as_deref().unwrap_or("-"))).await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(e) => format!("(no /metrics: {e})"),
                };
            let state: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    !l.starts_with('#')
                        && ["queued", "paused", "lag", "events_in", "events_applied", "watermark", "running"]
                            .iter()
                            .any(|k| l.contains(k))
                })
                .collect();
            panic!("facts {last:?} never reached {want:?}:\n{}\n{}", state.join("\n"), p.logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
