//! Data access for orders: plain SQL over one connection, which the service owns as a transaction.
//! Every function here is one statement (one round trip) and assumes nothing about the
//! transaction around it beyond what its doc says.

use crate::model::{Cursor, ListQuery, NewOrder};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

/// A product as an order line captures it, with what the response shows about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductForSale {
    pub id: i64,
    pub name: String,
    pub price: Decimal,
    pub promotion_id: Option<i64>,
    pub promotion_name: Option<String>,
    pub coupon_type: Option<String>,
    pub price_treatment: Option<Decimal>,
}

/// What [`place_order`] did. Only [`Placed::Created`] wrote anything.
#[derive(Debug)]
pub enum Placed {
    Created {
        order: CreatedOrder,
        products: Vec<ProductForSale>,
    },
    /// The line (index into the request's lines) whose product does not exist.
    UnknownProduct(usize),
    /// Products whose inventory is below the ordered quantity: (product id, available), in
    /// product id order.
    ShortOfStock(Vec<(i64, i64)>),
    /// The idempotency key exists already (committed by another request, which this one waited
    /// for if it was in flight): read it with [`find_key`].
    KeyTaken,
}

/// Places an order in one statement, which is its own transaction (run it outside any, in
/// autocommit: the statement commits or rolls back as a whole). It share-locks the order's
/// products in id order (a line captures the price and promotion as they are at commit: a
/// catalogue change waits for the order, or the order for it; orders do not wait for each other),
/// reserves the idempotency key with the order's id and the canonical request, and writes the
/// order row, its lines, its sold quantities to `api_sold_count_pending` (added to
/// `products.sold_count` by [`apply_sold_counts`]) and the stock decrements where an inventory row
/// exists (those rows locked in product id order) — or nothing, when a product is missing, the
/// stock is short or the key is taken.
///
/// The stock check reads the statement's snapshot; an order that raced a concurrent decrement
/// past it fails on `inventories_quantity_check`, so stock never goes negative either way. An
/// unknown customer or payment method fails on the orders' foreign keys.
pub async fn place_order(
    conn: &mut PgConnection,
    order: &NewOrder,
    idempotency_key: Option<&str>,
) -> sqlx::Result<Placed> {
    let ids: Vec<i64> = order.lines.iter().map(|l| l.product_id).collect();
    let quantities: Vec<i32> = order.lines.iter().map(|l| l.quantity as i32).collect();
    let request = idempotency_key.map(|_| order.canonical());
    let rows = sqlx::query(
        "WITH wanted AS (
             SELECT * FROM unnest($3::bigint[], $4::int[]) WITH ORDINALITY AS l(product_id, quantity, line)
         ), locked AS MATERIALIZED (
             SELECT p.id, p.name, p.price, p.promotion_id FROM products p
             WHERE p.id = ANY($3) ORDER BY p.id FOR SHARE
         ), all_locked AS MATERIALIZED (
             SELECT count(*) = (SELECT count(DISTINCT product_id) FROM wanted) AS ok FROM locked
         ), short AS MATERIALIZED (
             SELECT i.product_id, i.quantity FROM inventories i JOIN wanted w USING (product_id)
             WHERE i.quantity < w.quantity
         ), new_id AS MATERIALIZED (
             SELECT nextval(pg_get_serial_sequence('orders', 'id')) AS id
             WHERE (SELECT ok FROM all_locked) AND NOT EXISTS (SELECT 1 FROM short)
         ), key AS (
             INSERT INTO api_idempotency_keys (key, request, order_id)
             SELECT $6, $7, n.id FROM new_id n WHERE $6::text IS NOT NULL
             ON CONFLICT (key) DO NOTHING
             RETURNING key
         ), new_order AS (
             INSERT INTO orders (id, customer_id, payment_id, created_at, updated_at)
             SELECT n.id, $1, $2, COALESCE($5, now()), COALESCE($5, now()) FROM new_id n
             WHERE $6::text IS NULL OR EXISTS (SELECT 1 FROM key)
             RETURNING id, created_at, customer_id, payment_id
         ), lines AS (
             INSERT INTO orderdetails (order_id, product_id, quantity, price, promotion_id, created_at, updated_at)
             SELECT o.id, w.product_id, w.quantity, l.price, l.promotion_id, o.created_at, o.created_at
             FROM new_order o, wanted w JOIN locked l ON l.id = w.product_id
         ), sold AS (
             INSERT INTO api_sold_count_pending (product_id, quantity)
             SELECT w.product_id, w.quantity FROM wanted w, new_order o
         ), stock_locked AS MATERIALIZED (
             SELECT i.product_id FROM inventories i, new_order o
             WHERE i.product_id = ANY($3) ORDER BY i.product_id FOR NO KEY UPDATE
         ), stock AS (
             UPDATE inventories i SET quantity = i.quantity - w.quantity
             FROM wanted w, stock_locked s WHERE i.product_id = w.product_id AND s.product_id = i.product_id
         )
         SELECT o.id, o.created_at, c.name AS customer_name, c.email AS customer_email, pay.method AS payment_method,
                EXISTS (SELECT 1 FROM new_id) AS attempted,
                (SELECT min(line) FROM wanted w WHERE NOT EXISTS (SELECT 1 FROM locked l WHERE l.id = w.product_id))
                    AS missing_line,
                (SELECT array_agg(product_id ORDER BY product_id) FROM short) AS short_products,
                (SELECT array_agg(quantity ORDER BY product_id) FROM short) AS short_available,
                l.id AS product_id, l.name AS product_name, l.price, l.promotion_id,
                pm.name AS promotion_name, pm.coupon_type, pm.price_treatment
         FROM (SELECT 1) AS one
         LEFT JOIN new_order o ON true
         LEFT JOIN customers c ON c.id = o.customer_id
         LEFT JOIN payments pay ON pay.id = o.payment_id
         LEFT JOIN locked l ON o.id IS NOT NULL
         LEFT JOIN promotions pm ON pm.id = l.promotion_id",
    )
    .bind(order.customer_id)
    .bind(order.payment_id)
    .bind(&ids)
    .bind(&quantities)
    .bind(order.created_at)
    .bind(idempotency_key)
    .bind(request)
    .fetch_all(conn)
    .await?;
    let first = rows.first().ok_or(sqlx::Error::RowNotFound)?;
    let id: Option<i64> = first.try_get("id")?;
    let Some(id) = id else {
        if let Some(line) = first.try_get::<Option<i64>, _>("missing_line")? {
            return Ok(Placed::UnknownProduct((line - 1) as usize));
        }
        let products: Vec<i64> = first.try_get::<Option<Vec<i64>>, _>("short_products")?.unwrap_or_default();
        if !products.is_empty() {
            let available: Vec<i64> =
                first.try_get::<Option<Vec<i64>>, _>("short_available")?.unwrap_or_default();
            return Ok(Placed::ShortOfStock(products.into_iter().zip(available).collect()));
        }
        if first.try_get::<bool, _>("attempted")? && idempotency_key.is_some() {
            return Ok(Placed::KeyTaken);
        }
        return Err(sqlx::Error::Protocol("placing an order returned no order and no reason".into()));
    };
    let order = CreatedOrder {
        id,
        created_at: first.try_get("created_at")?,
        customer_name: first.try_get("customer_name")?,
        customer_email: first.try_get("customer_email")?,
        payment_method: first.try_get("payment_method")?,
    };
    let products = rows
        .iter()
        .map(|r| {
            Ok(ProductForSale {
                id: r.try_get("product_id")?,
                name: r.try_get("product_name")?,
                price: r.try_get("price")?,
                promotion_id: r.try_get("promotion_id")?,
                promotion_name: r.try_get("promotion_name")?,
                coupon_type: r.try_get("coupon_type")?,
                price_treatment: r.try_get("price_treatment")?,
            })
        })
        .collect::<sqlx::Result<_>>()?;
    Ok(Placed::Created { order, products })
}

/// The new order's row and what its response needs from other tables.
#[derive(Debug)]
pub struct CreatedOrder {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub customer_name: String,
    pub customer_email: String,
    pub payment_method: String,
}

/// The request and order stored under an idempotency key.
pub async fn find_key(
    conn: &mut PgConnection,
    key: &str,
) -> sqlx::Result<Option<(serde_json::Value, Option<i64>)>> {
    sqlx::query_as("SELECT request, order_id FROM api_idempotency_keys WHERE key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await
}

/// One row per line of an order (one row with null line columns for an order without lines), in
/// product id order: the order, its customer and payment, and each line with its product and the
/// promotion the line captured. One statement, so one consistent snapshot.
pub async fn fetch_order(conn: &mut PgConnection, id: i64) -> sqlx::Result<Vec<OrderRow>> {
    sqlx::query_as::<_, OrderRow>(
        "SELECT o.id, o.created_at, o.updated_at,
                c.id AS customer_id, c.name AS customer_name, c.email AS customer_email,
                pay.id AS payment_id, pay.method AS payment_method,
                d.product_id, pr.name AS product_name, d.quantity, d.price,
                pm.id AS promotion_id, pm.name AS promotion_name, pm.coupon_type, pm.price_treatment
         FROM orders o
         JOIN customers c ON c.id = o.customer_id
         JOIN payments pay ON pay.id = o.payment_id
         LEFT JOIN orderdetails d ON d.order_id = o.id
         LEFT JOIN products pr ON pr.id = d.product_id
         LEFT JOIN promotions pm ON pm.id = d.promotion_id
         WHERE o.id = $1
         ORDER BY d.product_id",
    )
    .bind(id)
    .fetch_all(conn)
    .await
}

#[derive(Debug, sqlx::FromRow)]
pub struct OrderRow {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub customer_id: i64,
    pub customer_name: String,
    pub customer_email: String,
    pub payment_id: i64,
    pub payment_method: String,
    pub product_id: Option<i64>,
    pub product_name: Option<String>,
    pub quantity: Option<i32>,
    pub price: Option<Decimal>,
    pub promotion_id: Option<i64>,
    pub promotion_name: Option<String>,
    pub coupon_type: Option<String>,
    pub price_treatment: Option<Decimal>,
}

/// One page of order summaries, newest first by `(created_at, id)`, strictly after the cursor.
/// Fetches `limit + 1` rows so the caller knows whether another page exists. The predicates are
/// added only when used, so every variant can walk `orders_created_at_id_idx` (or the per-customer
/// index) and stop after `limit + 1` rows; the table is never scanned whole.
pub async fn list_orders(conn: &mut PgConnection, q: &ListQuery) -> sqlx::Result<Vec<SummaryRow>> {
    let mut b: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT o.id, o.customer_id, o.payment_id, o.created_at, o.updated_at,
                t.lines, t.quantity, t.sales_amount
         FROM orders o
         CROSS JOIN LATERAL (
             SELECT count(*) AS lines, COALESCE(sum(d.quantity), 0)::bigint AS quantity,
                    COALESCE(sum(d.price * d.quantity), 0) AS sales_amount
             FROM orderdetails d WHERE d.order_id = o.id
         ) t
         WHERE true",
    );
    if let Some(Cursor { created_at, id }) = q.after {
        b.push(" AND (o.created_at, o.id) < (").push_bind(created_at).push(", ").push_bind(id).push(")");
    }
    if let Some(customer) = q.customer_id {
        b.push(" AND o.customer_id = ").push_bind(customer);
    }
    if let Some(from) = q.from {
        b.push(" AND o.created_at >= ").push_bind(from);
    }
    if let Some(to) = q.to {
        b.push(" AND o.created_at < ").push_bind(to);
    }
    b.push(" ORDER BY o.created_at DESC, o.id DESC LIMIT ").push_bind(q.limit + 1);
    b.build_query_as::<SummaryRow>().fetch_all(conn).await
}

#[derive(Debug, sqlx::FromRow)]
pub struct SummaryRow {
    pub id: i64,
    pub customer_id: i64,
    pub payment_id: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub lines: i64,
    pub quantity: i64,
    pub sales_amount: Decimal,
}

/// `SELECT 1`: the database answers.
pub async fn ping(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT 1").execute(conn).await.map(|_| ())
}

/// What one [`apply_sold_counts`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SoldApplied {
    /// Pending rows taken (and deleted).
    pub rows: i64,
    /// Of them, rows whose product no longer exists: nothing to add them to.
    pub unknown_product_rows: i64,
}

/// Adds up to `max_rows` pending sold quantities (the oldest first) to `products.sold_count` and
/// deletes them, in one statement (its own transaction: run it in autocommit). Pending rows that
/// another call is applying are skipped, and products are locked in id order, so concurrent calls
/// (several API instances) neither count a row twice nor deadlock with each other or with orders.
pub async fn apply_sold_counts(conn: &mut PgConnection, max_rows: i64) -> sqlx::Result<SoldApplied> {
    let (rows, unknown_product_rows): (i64, i64) = sqlx::query_as(
        "WITH taken AS (
             DELETE FROM api_sold_count_pending WHERE id IN (
                 SELECT id FROM api_sold_count_pending ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING product_id, quantity
         ), sums AS MATERIALIZED (
             SELECT product_id, sum(quantity)::bigint AS quantity FROM taken GROUP BY product_id
         ), locked AS MATERIALIZED (
             SELECT p.id FROM products p WHERE p.id IN (SELECT product_id FROM sums)
             ORDER BY p.id FOR NO KEY UPDATE
         ), applied AS (
             UPDATE products p SET sold_count = p.sold_count + s.quantity
             FROM sums s, locked l WHERE p.id = s.product_id AND l.id = p.id
             RETURNING p.id
         )
         SELECT (SELECT count(*) FROM taken),
                (SELECT count(*) FROM taken t WHERE NOT EXISTS (SELECT 1 FROM applied a WHERE a.id = t.product_id))",
    )
    .bind(max_rows)
    .fetch_one(conn)
    .await?;
    Ok(SoldApplied { rows, unknown_product_rows })
}
