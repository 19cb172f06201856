//! The order service: the business rules of the API. Handlers call it; it calls the repository.
//!
//! Guarantees of [`OrderService::create_order`]:
//! * all or nothing: the order, its lines, the sold counts, the stock decrements and the
//!   idempotency key are written by one statement in its own transaction (one round trip, so the
//!   products' row locks last only as long as the statement and its commit), so they commit
//!   together or not at all;
//! * each line captures its product's price and promotion as they are when the order commits,
//!   under a row lock held until commit;
//! * stock never goes negative: an order that asks for more than an inventory row holds is refused
//!   (409) as a whole; products without an inventory row are not stock-tracked;
//! * with an idempotency key, at most one order exists per key, whatever the concurrency.

use crate::cache::OrderCache;
use crate::error::{ApiError, TRANSACTION_CONFLICT};
use crate::failpoint::{FailPoints, Injected, Step};
use crate::metrics::{ApiMetrics, IdempotentReplay, OrderCreated, OrderRejected};
use crate::model::{
    CustomerRef, LineView, ListQuery, NewOrder, OrderPage, OrderSummary, OrderView, PaymentRef, PromotionRef,
    Totals,
};
use crate::repository::{self as repo, Placed};
use axum::body::Bytes;
use axum::http::StatusCode;
use rainbow_schemas::pricing::{line_amounts, CouponType, PromotionTerms};
use rainbow_schemas::Money;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// Attempts of an order transaction that hits a deadlock or serialization failure (each attempt
/// rolls back completely, so retrying is safe).
const CONFLICT_ATTEMPTS: u32 = 3;

/// How long `/ping` waits for the database.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct OrderService {
    pool: PgPool,
    metrics: ApiMetrics,
    failpoints: FailPoints,
    cache: Arc<OrderCache>,
}

/// The result of a create: a new order, or the existing one of an idempotent retry.
#[derive(Debug)]
pub enum Created {
    New(OrderView),
    Replayed(OrderView),
}

impl OrderService {
    pub fn new(
        pool: PgPool,
        metrics: ApiMetrics,
        failpoints: FailPoints,
        cache: Arc<OrderCache>,
    ) -> OrderService {
        OrderService { pool, metrics, failpoints, cache }
    }

    pub fn cache(&self) -> &Arc<OrderCache> {
        &self.cache
    }

    /// The JSON of `GET /api/v1/orders/{id}`, from the cache when it holds the order.
    pub async fn get_order_json(&self, id: i64) -> Result<Bytes, ApiError> {
        if let Some(body) = self.cache.get(id) {
            self.metrics.cache_hit();
            return Ok(body);
        }
        self.metrics.cache_miss();
        let ticket = self.cache.ticket();
        let view = self.get_order(id).await?;
        let body = Bytes::from(serde_json::to_vec(&view).map_err(|e| {
            tracing::error!(error = %e, "serializing an order");
            ApiError::internal()
        })?);
        self.cache.put(id, body.clone(), ticket);
        Ok(body)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<(), ApiError> {
        let work = async {
            let mut conn = self.pool.acquire().await?;
            repo::ping(&mut conn).await
        };
        match tokio::time::timeout(PING_TIMEOUT, work).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the database does not answer");
                Err(ApiError::unavailable("the database does not answer"))
            }
            Err(_) => Err(ApiError::unavailable(format!(
                "the database did not answer within {} s",
                PING_TIMEOUT.as_secs()
            ))),
        }
    }

    pub async fn get_order(&self, id: i64) -> Result<OrderView, ApiError> {
        let mut conn = self.pool.acquire().await?;
        let rows = repo::fetch_order(&mut conn, id).await?;
        order_view(rows)?.ok_or_else(|| ApiError::not_found(format!("order {id} does not exist")))
    }

    pub async fn list_orders(&self, q: &ListQuery) -> Result<OrderPage, ApiError> {
        let mut conn = self.pool.acquire().await?;
        let mut rows = repo::list_orders(&mut conn, q).await?;
        let more = rows.len() as i64 > q.limit;
        rows.truncate(q.limit as usize);
        let next = if more {
            rows.last().map(|r| crate::model::Cursor { created_at: r.created_at, id: r.id }.encode())
        } else {
            None
        };
        let orders = rows
            .into_iter()
            .map(|r| {
                Ok(OrderSummary {
                    id: r.id,
                    customer_id: r.customer_id,
                    payment_id: r.payment_id,
                    created_at: r.created_at,
                    updated_at: r.updated_at,
                    lines: r.lines,
                    quantity: r.quantity,
                    sales_amount: money(r.sales_amount)?,
                    href: format!("/api/v1/orders/{}", r.id),
                })
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(OrderPage { orders, next })
    }

    /// Creates an order (see the module documentation for the guarantees).
    pub async fn create_order(&self, order: &NewOrder, key: Option<&str>) -> Result<Created, ApiError> {
        let mut attempt = 1;
        let outcome = loop {
            match self.create_in_transaction(order, key).await {
                Err(e) if e.code == TRANSACTION_CONFLICT && attempt < CONFLICT_ATTEMPTS => {
                    tracing::debug!(attempt, error = %e, "retrying the order transaction");
                    attempt += 1;
                }
                outcome => break outcome,
            }
        };
        match &outcome {
            Ok(Created::New(view)) => {
                OrderCreated { order_id: view.id, lines: view.lines.len() }.emit(&self.metrics)
            }
            Ok(Created::Replayed(view)) => {
                IdempotentReplay { key: key.unwrap_or_default(), order_id: view.id }.emit(&self.metrics)
            }
            Err(e) => OrderRejected { code: e.code, message: &e.message }.emit(&self.metrics),
        }
        outcome
    }

    async fn create_in_transaction(&self, order: &NewOrder, key: Option<&str>) -> Result<Created, ApiError> {
        self.failpoint(Step::BeforeWrite).await?;
        let mut conn = self.pool.acquire().await?;
        let placed = repo::place_order(&mut conn, order, key).await.map_err(reference_error)?;
        let (created, products) = match (placed, key) {
            (Placed::Created { order, products }, _) => (order, products),
            (Placed::KeyTaken, Some(key)) => return self.replay(&mut conn, key, order).await,
            // A refused request whose key is taken is a retry or a reuse of the key: the key decides.
            (Placed::UnknownProduct(_) | Placed::ShortOfStock(_), Some(key))
                if repo::find_key(&mut conn, key).await?.is_some() =>
            {
                return self.replay(&mut conn, key, order).await
            }
            (Placed::KeyTaken, None) => return Err(ApiError::internal()),
            (Placed::UnknownProduct(i), _) => {
                return Err(ApiError::unknown_reference(
                    format!("products[{i}].productId"),
                    format!("product {} does not exist", order.lines[i].product_id),
                ))
            }
            (Placed::ShortOfStock(short), _) => {
                let (product, available) = short[0];
                let i = order.lines.iter().position(|l| l.product_id == product).unwrap_or(0);
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "insufficient_stock",
                    format!(
                        "product {product} has {available} in stock, fewer than the {} ordered",
                        order.lines[i].quantity
                    ),
                )
                .with_field(format!("products[{i}].quantity")));
            }
        };
        self.failpoint(Step::Committed).await?;
        Ok(Created::New(created_view(order, &products, created)?))
    }

    /// The key exists: return its order if the request is the same, else refuse.
    async fn replay(
        &self,
        conn: &mut sqlx::PgConnection,
        key: &str,
        order: &NewOrder,
    ) -> Result<Created, ApiError> {
        let (request, order_id) = repo::find_key(conn, key).await?.ok_or_else(ApiError::internal)?;
        if request != order.canonical() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request; use a new key for a new order",
            )
            .with_field("Idempotency-Key"));
        }
        let order_id = order_id.ok_or_else(ApiError::internal)?;
        let view = order_view(repo::fetch_order(conn, order_id).await?)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                format!("the order {order_id} created with this Idempotency-Key no longer exists"),
            )
            .with_field("Idempotency-Key")
        })?;
        Ok(Created::Replayed(view))
    }

    async fn failpoint(&self, step: Step) -> Result<(), ApiError> {
        self.failpoints.check(step).await.map_err(|fired: Injected| {
            tracing::error!(step = ?fired.0, "failpoint fired; rolling back");
            ApiError::internal()
        })
    }
}

/// Foreign-key violations on the order row name the unknown customer or payment method.
fn reference_error(e: sqlx::Error) -> ApiError {
    if let sqlx::Error::Database(db) = &e {
        match db.constraint() {
            Some("orders_customer_id_fkey") => {
                return ApiError::unknown_reference("customerId", "this customer does not exist")
            }
            Some("orders_payment_id_fkey") => {
                return ApiError::unknown_reference("payment_id", "this payment method does not exist")
            }
            Some("inventories_quantity_check") => {
                return ApiError::new(
                    StatusCode::CONFLICT,
                    "insufficient_stock",
                    "stock changed while the order was placed and is now too low",
                )
            }
            _ => {}
        }
    }
    ApiError::from_database(e)
}

fn money(d: rust_decimal::Decimal) -> Result<Money, ApiError> {
    Money::from_decimal(d).map_err(|e| {
        tracing::error!(error = %e, "money out of range in the database");
        ApiError::internal()
    })
}

/// The response of a create, from what the two statements of the transaction returned. Equal to
/// what `GET /api/v1/orders/{id}` returns for the order right after the commit (lines in product
/// id order).
fn created_view(
    order: &NewOrder,
    products: &[repo::ProductForSale],
    created: repo::CreatedOrder,
) -> Result<OrderView, ApiError> {
    let mut lines = Vec::with_capacity(order.lines.len());
    for line in &order.lines {
        let p = products.iter().find(|p| p.id == line.product_id).ok_or_else(ApiError::internal)?;
        let promotion = promotion_ref(p.promotion_id, &p.promotion_name, &p.coupon_type, p.price_treatment)?;
        lines.push(line_view(p.id, p.name.clone(), line.quantity, p.price, promotion)?);
    }
    lines.sort_by_key(|l| l.product_id);
    Ok(OrderView {
        id: created.id,
        customer: CustomerRef {
            id: order.customer_id,
            name: created.customer_name,
            email: created.customer_email,
        },
        payment: PaymentRef { id: order.payment_id, method: created.payment_method },
        created_at: created.created_at,
        updated_at: created.created_at,
        totals: Totals::of(&lines),
        lines,
    })
}

fn promotion_ref(
    id: Option<i64>,
    name: &Option<String>,
    coupon_type: &Option<String>,
    treatment: Option<rust_decimal::Decimal>,
) -> Result<Option<PromotionRef>, ApiError> {
    let (Some(id), Some(name), Some(coupon_type), Some(treatment)) = (id, name, coupon_type, treatment)
    else {
        return Ok(None);
    };
    Ok(Some(PromotionRef {
        id,
        name: name.clone(),
        coupon_type: coupon_type.parse::<CouponType>().map_err(|e| {
            tracing::error!(error = %e, "bad coupon type in the database");
            ApiError::internal()
        })?,
        price_treatment: money(treatment)?,
    }))
}

fn line_view(
    product_id: i64,
    product_name: String,
    quantity: i64,
    price: rust_decimal::Decimal,
    promotion: Option<PromotionRef>,
) -> Result<LineView, ApiError> {
    let terms = promotion
        .as_ref()
        .map(|p| PromotionTerms { coupon_type: p.coupon_type, price_treatment: p.price_treatment });
    let amounts = line_amounts(money(price)?, quantity, terms).map_err(|e| {
        tracing::error!(error = %e, "line amount out of range");
        ApiError::internal()
    })?;
    Ok(LineView::new(product_id, product_name, quantity, promotion, amounts))
}

/// Folds the rows of [`repo::fetch_order`] into an order; `None` when there are no rows.
fn order_view(rows: Vec<repo::OrderRow>) -> Result<Option<OrderView>, ApiError> {
    let Some(first) = rows.first() else { return Ok(None) };
    let mut lines = Vec::with_capacity(rows.len());
    for r in &rows {
        let (Some(product_id), Some(quantity), Some(price)) = (r.product_id, r.quantity, r.price) else {
            continue;
        };
        let promotion = promotion_ref(r.promotion_id, &r.promotion_name, &r.coupon_type, r.price_treatment)?;
        lines.push(line_view(
            product_id,
            r.product_name.clone().unwrap_or_default(),
            i64::from(quantity),
            price,
            promotion,
        )?);
    }
    let totals = Totals::of(&lines);
    Ok(Some(OrderView {
        id: first.id,
        customer: CustomerRef {
            id: first.customer_id,
            name: first.customer_name.clone(),
            email: first.customer_email.clone(),
        },
        payment: PaymentRef { id: first.payment_id, method: first.payment_method.clone() },
        created_at: first.created_at,
        updated_at: first.updated_at,
        lines,
        totals,
    }))
}
