//! Data access for orders: plain SQL over one connection, which the service owns as a transaction.
//! Every function here is one statement (one round trip) and assumes nothing about the
//! transaction around it beyond what its doc says.

use crate::model::{Cursor, ListQuery, NewOrder};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

/// A product as an order line captures it, with what the response shows about it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ProductForSale {
    pub id: i64,
    pub name: String,
    pub price: Decimal,
    pub promotion_id: Option<i64>,
    pub promotion_name: Option<String>,
    pub coupon_type: Option<String>,
    pub price_treatment: Option<Decimal>,
}

/// Reserves an idempotency key with the canonical request. Returns false when the key exists
/// (after waiting for a concurrent transaction holding it to finish, as unique inserts do).
pub async fn reserve_key(
    conn: &mut PgConnection,
    key: &str,
    request: &serde_json::Value,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO api_idempotency_keys (key, request) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING RETURNING 1",
    )
    .bind(key)
    .bind(request)
    .fetch_optional(conn)
    .await?;
    Ok(inserted.is_some())
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

/// Locks the given products (in id order, so concurrent orders never deadlock) and returns the
/// ones that exist with their current price and promotion. The locks serialize concurrent orders
/// on a product, so that the stock check of [`insert_order`], a later statement, sees every
/// earlier order's decrement.
pub async fn lock_products(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<Vec<ProductForSale>> {
    sqlx::query_as(
        "SELECT p.id, p.name, p.price, p.promotion_id, pm.name AS promotion_name, pm.coupon_type, pm.price_treatment
         FROM products p LEFT JOIN promotions pm ON pm.id = p.promotion_id
         WHERE p.id = ANY($1) ORDER BY p.id FOR NO KEY UPDATE OF p",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// What [`insert_order`] did.
#[derive(Debug)]
pub enum Inserted {
    Created(CreatedOrder),
    /// Products whose inventory is below the ordered quantity: (product id, available).
    ShortOfStock(Vec<(i64, i64)>),
}

/// Writes the order in one statement: the order row, its lines (with the captured price and
/// promotion of `products`, which must hold every line's product), the sold counts, the stock
/// decrements where an inventory row exists, and the idempotency key's order id. On
/// [`Inserted::ShortOfStock`] some rows may be written: the caller must roll back.
///
/// Assumes the products are locked by this transaction ([`lock_products`]).
pub async fn insert_order(
    conn: &mut PgConnection,
    order: &NewOrder,
    products: &[ProductForSale],
    idempotency_key: Option<&str>,
) -> sqlx::Result<Inserted> {
    let price_of = |id: i64| products.iter().find(|p| p.id == id).expect("every line's product is locked");
    let ids: Vec<i64> = order.lines.iter().map(|l| l.product_id).collect();
    let quantities: Vec<i32> = order.lines.iter().map(|l| l.quantity as i32).collect();
    let prices: Vec<Decimal> = order.lines.iter().map(|l| price_of(l.product_id).price).collect();
    let promotions: Vec<Option<i64>> =
        order.lines.iter().map(|l| price_of(l.product_id).promotion_id).collect();
    let row = sqlx::query(
        "WITH wanted AS (
             SELECT * FROM unnest($3::bigint[], $4::int[], $5::numeric[], $6::bigint[])
                 AS l(product_id, quantity, price, promotion_id)
         ), short AS (
             SELECT i.product_id, i.quantity FROM inventories i JOIN wanted w USING (product_id)
             WHERE i.quantity < w.quantity
         ), new_order AS (
             INSERT INTO orders (customer_id, payment_id, created_at, updated_at)
             SELECT $1, $2, COALESCE($7, now()), COALESCE($7, now())
             WHERE NOT EXISTS (SELECT 1 FROM short)
             RETURNING id, created_at, customer_id, payment_id
         ), lines AS (
             INSERT INTO orderdetails (order_id, product_id, quantity, price, promotion_id, created_at, updated_at)
             SELECT o.id, w.product_id, w.quantity, w.price, w.promotion_id, o.created_at, o.created_at
             FROM new_order o, wanted w
         ), sold AS (
             UPDATE products p SET sold_count = p.sold_count + w.quantity
             FROM wanted w, new_order o WHERE p.id = w.product_id
         ), stock AS (
             UPDATE inventories i SET quantity = i.quantity - w.quantity
             FROM wanted w, new_order o WHERE i.product_id = w.product_id
         ), key AS (
             UPDATE api_idempotency_keys k SET order_id = o.id FROM new_order o WHERE k.key = $8
         )
         SELECT o.id, o.created_at, c.name AS customer_name, c.email AS customer_email, pay.method AS payment_method,
                (SELECT array_agg(product_id ORDER BY product_id) FROM short) AS short_products,
                (SELECT array_agg(quantity ORDER BY product_id) FROM short) AS short_available
         FROM (SELECT 1) AS one
         LEFT JOIN new_order o ON true
         LEFT JOIN customers c ON c.id = o.customer_id
         LEFT JOIN payments pay ON pay.id = o.payment_id",
    )
    .bind(order.customer_id)
    .bind(order.payment_id)
    .bind(&ids)
    .bind(&quantities)
    .bind(&prices)
    .bind(&promotions)
    .bind(order.created_at)
    .bind(idempotency_key)
    .fetch_one(conn)
    .await?;
    let id: Option<i64> = row.try_get("id")?;
    match id {
        Some(id) => Ok(Inserted::Created(CreatedOrder {
            id,
            created_at: row.try_get("created_at")?,
            customer_name: row.try_get("customer_name")?,
            customer_email: row.try_get("customer_email")?,
            payment_method: row.try_get("payment_method")?,
        })),
        None => {
            let products: Vec<i64> =
                row.try_get::<Option<Vec<i64>>, _>("short_products")?.unwrap_or_default();
            let available: Vec<i64> =
                row.try_get::<Option<Vec<i64>>, _>("short_available")?.unwrap_or_default();
            Ok(Inserted::ShortOfStock(products.into_iter().zip(available).collect()))
        }
    }
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
