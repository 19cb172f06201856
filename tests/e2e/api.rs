//! The order API against a real PostgreSQL: every route and error case, all-or-nothing orders
//! under injected failures, idempotency, pagination under concurrent inserts, request timeouts
//! and graceful shutdown. Each test runs its own server (in-process, on an ephemeral port) over
//! its own freshly migrated and seeded database.

use crate::common;

use common::{eventually, metric_value, TestDb};
use rainbow_api::failpoint::{Action, FailPoints, Step};
use rainbow_api::routes::ROUTES;
use rainbow_api::{ApiSettings, AppState};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

struct TestApi {
    db: TestDb,
    url: String,
    client: reqwest::Client,
    failpoints: FailPoints,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A server on an ephemeral port, as `rainbow api` runs it: a send on `stop` shuts it down as
/// SIGTERM does.
struct Served {
    url: String,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    metrics: rainbow_api::metrics::ApiMetrics,
}

async fn serve(pool: &sqlx::PgPool, settings: ApiSettings, failpoints: FailPoints) -> Served {
    let state = AppState::new(pool.clone(), settings, failpoints);
    let metrics = state.metrics.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(rainbow_api::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Served { url, stop, server, metrics }
}

impl TestApi {
    async fn start() -> TestApi {
        TestApi::start_with(ApiSettings { body_limit: 64 * 1024, ..ApiSettings::default() }).await
    }

    async fn start_with(settings: ApiSettings) -> TestApi {
        let db = TestDb::seeded().await;
        let failpoints = FailPoints::default();
        let Served { url, stop, server, .. } = serve(&db.pool, settings, failpoints.clone()).await;
        TestApi { db, url, client: reqwest::Client::new(), failpoints, stop: Some(stop), server }
    }

    /// Stops the server and serves the same database again with `settings`; returns the new
    /// server's metrics.
    async fn restart_with(&mut self, settings: ApiSettings) -> rainbow_api::metrics::ApiMetrics {
        self.stop_server().await;
        let served = serve(&self.db.pool, settings, self.failpoints.clone()).await;
        (self.url, self.stop, self.server) = (served.url, Some(served.stop), served.server);
        served.metrics
    }

    async fn finish(mut self) {
        self.stop_server().await;
        self.db.drop().await;
    }

    /// Shuts the server down (as SIGTERM does) and waits until it has stopped.
    async fn stop_server(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.server)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }

    /// Units sold of `product`: its `sold_count` plus the quantities its orders left pending (one
    /// snapshot, so a pass applying them in between changes nothing).
    async fn sold(&self, product: i64) -> i64 {
        self.scalar(&format!(
            "SELECT (SELECT sold_count FROM products WHERE id = {product})
                  + (SELECT COALESCE(sum(quantity), 0) FROM api_sold_count_pending WHERE product_id = {product})"
        ))
        .await
    }

    /// `products.sold_count` of the products `ids` (a SQL list), in id order.
    async fn sold_counts(&self, ids: &str) -> Vec<i64> {
        let sql = format!("SELECT sold_count FROM products WHERE id IN ({ids}) ORDER BY id");
        sqlx::query_scalar(&sql).fetch_all(&self.db.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Waits until no sold quantity is pending (they are in `products.sold_count`).
    async fn sold_counts_applied(&self) {
        eventually("the pending sold quantities to be applied", Duration::from_secs(10), || async {
            (self.scalar::<i64>("SELECT count(*) FROM api_sold_count_pending").await == 0).then_some(())
        })
        .await
    }

    async fn post(&self, body: &Value) -> (StatusCode, Value) {
        self.post_raw(body.to_string(), &[("content-type", "application/json")]).await
    }

    async fn post_raw(&self, body: String, headers: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut req = self.client.post(format!("{}/api/v1/orders", self.url)).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let res = self.client.get(format!("{}{path}", self.url)).send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn metrics(&self) -> String {
        self.client.get(format!("{}/metrics", self.url)).send().await.unwrap().text().await.unwrap()
    }

    async fn cache_hits(&self) -> f64 {
        metric_value(&self.metrics().await, "rainbow_api_order_cache_lookups_total{result=\"hit\"}")
            .unwrap_or(0.0)
    }

    /// GETs `path` until a read is served from the cache; returns that response.
    async fn cached(&self, path: &str) -> Value {
        eventually("the order to be served from the cache", Duration::from_secs(10), || async {
            let before = self.cache_hits().await;
            let (status, body) = self.get(path).await;
            assert_eq!(status, StatusCode::OK);
            (self.cache_hits().await > before).then_some(body)
        })
        .await
    }

    async fn exec(&self, sql: &str) {
        sqlx::query(sql).execute(&self.db.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn scalar<T>(&self, sql: &str) -> T
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        sqlx::query_scalar(sql).fetch_one(&self.db.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Everything an order writes, to compare before and after a refused request.
    async fn footprint(&self) -> (i64, i64, i64, Decimal, i64) {
        let row: (i64, i64, i64, Decimal, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM orderdetails),
                    ((SELECT sum(sold_count) FROM products)
                      + (SELECT COALESCE(sum(quantity), 0) FROM api_sold_count_pending))::bigint,
                    (SELECT COALESCE(sum(quantity), 0) FROM inventories),
                    (SELECT count(*) FROM api_idempotency_keys)",
        )
        .fetch_one(&self.db.pool)
        .await
        .unwrap();
        row
    }
}

fn order(customer: i64, payment: i64, lines: &[(i64, i64)]) -> Value {
    json!({"customerId": customer, "payment_id": payment,
           "products": lines.iter().map(|(p, q)| json!({"productId": p, "quantity": q})).collect::<Vec<_>>()})
}

fn error_of(body: &Value) -> (String, Option<String>) {
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "error has a message: {body}");
    (e["code"].as_str().unwrap_or_default().to_string(), e["field"].as_str().map(str::to_string))
}

fn money(v: &Value) -> Decimal {
    v.as_str().unwrap_or_else(|| panic!("money is a string: {v}")).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_an_order_in_one_transaction_and_reads_it_back() {
    let api = TestApi::start().await;
    // Product 5 is stock-tracked, product 3 is not.
    api.exec("INSERT INTO inventories (product_id, quantity) VALUES (5, 10)").await;
    let sold_before = [api.sold(3).await, api.sold(5).await];

    let res = api
        .client
        .post(format!("{}/api/v1/orders", api.url))
        .json(&order(1, 2, &[(3, 4), (5, 2)]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    assert!(res.headers().contains_key("x-request-id"));
    let created: Value = res.json().await.unwrap();
    let id = created["id"].as_i64().unwrap();
    assert_eq!(location, format!("/api/v1/orders/{id}"));
    assert_eq!(created["customer"]["id"], 1);
    assert_eq!(created["payment"]["id"], 2);
    assert_eq!(created["payment"]["method"], "Cash");

    // Lines captured the products' current price and promotion.
    /// (product, quantity, line price, line promotion, product price, product promotion)
    type Captured = (i64, i32, Decimal, Option<i64>, Decimal, Option<i64>);
    let captured: Vec<Captured> = sqlx::query_as(
        "SELECT d.product_id, d.quantity, d.price, d.promotion_id, p.price, p.promotion_id
         FROM orderdetails d JOIN products p ON p.id = d.product_id WHERE d.order_id = $1 ORDER BY 1",
    )
    .bind(id)
    .fetch_all(&api.db.pool)
    .await
    .unwrap();
    assert_eq!(captured.len(), 2);
    for (product, quantity, price, promo, current_price, current_promo) in &captured {
        assert_eq!((price, promo), (current_price, current_promo), "line of product {product}");
        assert_eq!(*quantity, if *product == 3 { 4 } else { 2 });
    }
    assert_eq!([api.sold(3).await, api.sold(5).await], [sold_before[0] + 4, sold_before[1] + 2]);
    // The sold quantities reach products.sold_count a moment after the commit.
    api.sold_counts_applied().await;
    let sold_after = api.sold_counts("3, 5").await;
    assert_eq!(sold_after, vec![sold_before[0] + 4, sold_before[1] + 2]);
    assert_eq!(api.scalar::<i64>("SELECT quantity FROM inventories WHERE product_id = 5").await, 8);
    assert_eq!(api.scalar::<i64>("SELECT count(*) FROM inventories").await, 1, "no inventory row invented");

    // GET returns the same order; totals add up to the lines and to the database.
    let (status, fetched) = api.get(&location).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, created);
    let lines = fetched["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2);
    let sales: Decimal = lines.iter().map(|l| money(&l["extendedSalesAmount"])).sum();
    let discount: Decimal = lines.iter().map(|l| money(&l["extendedDiscountAmount"])).sum();
    let db_sales: Decimal =
        sqlx::query_scalar("SELECT sum(price * quantity) FROM orderdetails WHERE order_id = $1")
            .bind(id)
            .fetch_one(&api.db.pool)
            .await
            .unwrap();
    assert_eq!(sales, db_sales);
    assert_eq!(money(&fetched["totals"]["salesAmount"]), sales);
    assert_eq!(money(&fetched["totals"]["discountAmount"]), discount);
    assert_eq!(money(&fetched["totals"]["netAmount"]), sales - discount);
    assert_eq!(fetched["totals"]["quantity"], 6);
    for l in lines {
        let (unit, q) = (money(&l["unitPrice"]), Decimal::from(l["quantity"].as_i64().unwrap()));
        assert_eq!(money(&l["extendedSalesAmount"]), unit * q);
        assert_eq!(money(&l["netUnitPrice"]), unit - money(&l["discountUnitPrice"]));
        assert_eq!(
            money(&l["netAmount"]),
            money(&l["extendedSalesAmount"]) - money(&l["extendedDiscountAmount"])
        );
    }
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_a_specific_json_error_and_writes_nothing() {
    let api = TestApi::start().await;
    api.exec("INSERT INTO inventories (product_id, quantity) VALUES (7, 2)").await;
    let before = api.footprint().await;
    let json = [("content-type", "application/json")];
    let too_many: Vec<(i64, i64)> = (1..=10).map(|p| (p, 1)).collect();
    let cases: Vec<(&str, String, StatusCode, &str, Option<&str>)> = vec![
        ("malformed JSON", "{\"customerId\": 1,".into(), StatusCode::BAD_REQUEST, "malformed_json", None),
        ("not an object", "[1, 2]".into(), StatusCode::BAD_REQUEST, "invalid_request", Some("$")),
        (
            "missing customer",
            json!({"payment_id": 2, "products": [{"productId": 3, "quantity": 1}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("customerId"),
        ),
        (
            "missing products",
            json!({"customerId": 1, "payment_id": 2}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("products"),
        ),
        (
            "wrong type",
            json!({"customerId": "one", "payment_id": 2, "products": [{"productId": 3, "quantity": 1}]})
                .to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("customerId"),
        ),
        (
            "wrong type in a line",
            json!({"customerId": 1, "payment_id": 2, "products": [{"productId": 3, "quantity": "2"}]})
                .to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("products[0].quantity"),
        ),
        (
            "empty product list",
            order(1, 2, &[]).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("products"),
        ),
        (
            "quantity zero",
            order(1, 2, &[(3, 1), (4, 0)]).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("products[1].quantity"),
        ),
        (
            "negative quantity",
            order(1, 2, &[(3, -1)]).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("products[0].quantity"),
        ),
        (
            "quantity above 10,000",
            order(1, 2, &[(3, 10_001)]).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("products[0].quantity"),
        ),
        (
            "repeated product",
            order(1, 2, &[(3, 1), (4, 1), (3, 2)]).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("products[2].productId"),
        ),
        (
            "unknown customer",
            order(999_999, 2, &[(3, 1)]).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_reference",
            Some("customerId"),
        ),
        (
            "unknown payment",
            order(1, 99, &[(3, 1)]).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_reference",
            Some("payment_id"),
        ),
        (
            "unknown product",
            order(1, 2, &too_many.iter().copied().chain([(999_999, 1)]).collect::<Vec<_>>()).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_reference",
            Some("products[10].productId"),
        ),
        (
            "short of stock",
            order(1, 2, &[(3, 1), (7, 3)]).to_string(),
            StatusCode::CONFLICT,
            "insufficient_stock",
            Some("products[1].quantity"),
        ),
        (
            "body over the limit",
            format!("{{\"customerId\": 1, \"pad\": \"{}\"}}", "x".repeat(70 * 1024)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            None,
        ),
    ];
    for (name, body, status, code, field) in cases {
        let (got, body) = api.post_raw(body, &json).await;
        assert_eq!(got, status, "{name}: {body}");
        let (got_code, got_field) = error_of(&body);
        assert_eq!(got_code, code, "{name}: {body}");
        assert_eq!(got_field.as_deref(), field, "{name}: {body}");
    }
    let (status, body) =
        api.post_raw(order(1, 2, &[(3, 1)]).to_string(), &[("content-type", "text/plain")]).await;
    assert_eq!(
        (status, error_of(&body).0.as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    assert_eq!(api.footprint().await, before, "no refused request left a trace");

    // Reads and routing.
    for (path, status, code, field) in [
        ("/api/v1/orders/424242", StatusCode::NOT_FOUND, "not_found", None),
        ("/api/v1/orders/0", StatusCode::BAD_REQUEST, "invalid_request", Some("id")),
        ("/api/v1/orders/-3", StatusCode::BAD_REQUEST, "invalid_request", Some("id")),
        ("/api/v1/orders/abc", StatusCode::BAD_REQUEST, "invalid_request", Some("id")),
        ("/api/v1/orders?limit=501", StatusCode::BAD_REQUEST, "invalid_request", Some("limit")),
        ("/api/v1/orders?cursor=garbage", StatusCode::BAD_REQUEST, "invalid_request", Some("cursor")),
        ("/api/v1/orders?from=yesterday", StatusCode::BAD_REQUEST, "invalid_request", Some("from")),
        ("/api/v1/nothing", StatusCode::NOT_FOUND, "route_not_found", None),
    ] {
        let (got, body) = api.get(path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(error_of(&body), (code.to_string(), field.map(str::to_string)), "{path}");
    }
    let res = api.client.delete(format!("{}/api/v1/orders/1", api.url)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "GET");
    assert_eq!(error_of(&res.json().await.unwrap()).0, "method_not_allowed");
    let res = api.client.put(format!("{}/api/v1/orders", api.url)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "GET, POST");
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_before_the_write_leaves_no_trace_and_one_after_the_commit_is_retried_once() {
    let api = TestApi::start().await;
    api.exec("INSERT INTO inventories (product_id, quantity) VALUES (3, 100)").await;
    let before = api.footprint().await;
    let body = order(1, 2, &[(3, 5), (4, 1)]);
    let headers = [("content-type", "application/json"), ("idempotency-key", "retry-me")];
    api.failpoints.arm(Step::BeforeWrite, Action::Fail);
    let (status, res) = api.post_raw(body.to_string(), &headers).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{res}");
    assert_eq!(error_of(&res).0, "internal_error");
    assert_eq!(api.footprint().await, before, "a failure before the write left a trace");
    api.failpoints.disarm(Step::BeforeWrite);
    // The response is lost after the commit: the client sees an error and retries with its key,
    // which returns the order that was created, once.
    api.failpoints.arm(Step::Committed, Action::Fail);
    let (status, res) = api.post_raw(body.to_string(), &headers).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{res}");
    api.failpoints.disarm(Step::Committed);
    let (status, res) = api.post_raw(body.to_string(), &headers).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let (status, again) = api.post_raw(body.to_string(), &headers).await;
    assert_eq!((status, &again), (StatusCode::OK, &res));
    let after = api.footprint().await;
    assert_eq!(
        (after.0, after.1, after.2, after.4),
        (before.0 + 1, before.1 + 2, before.2 + 6, before.4 + 1)
    );
    assert_eq!(after.3, before.3 - Decimal::from(5));
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_return_the_original_order_and_refuse_other_bodies() {
    let api = TestApi::start().await;
    let body = order(3, 1, &[(10, 2)]);
    let headers = [("content-type", "application/json"), ("idempotency-key", "order-0001")];
    let (first_status, first) = api.post_raw(body.to_string(), &headers).await;
    assert_eq!(first_status, StatusCode::CREATED);
    let sold = api.sold(10).await;

    let (status, again) = api.post_raw(body.to_string(), &headers).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, first);
    // The same request in another spelling is the same request.
    let alias = json!({"customer_id": 3, "paymentId": 1, "products": [{"product_id": 10, "quantity": 2}]});
    assert_eq!(api.post_raw(alias.to_string(), &headers).await, (StatusCode::OK, first.clone()));
    let (status, other) = api.post_raw(order(3, 1, &[(10, 3)]).to_string(), &headers).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_of(&other), ("idempotency_key_reused".into(), Some("Idempotency-Key".into())));
    assert_eq!(api.scalar::<i64>("SELECT count(*) FROM orders").await, 1);
    assert_eq!(api.sold(10).await, sold);

    // Concurrent retries of one key: exactly one order, every answer is that order.
    let body = order(4, 2, &[(11, 1), (12, 1)]);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (client, url, body) = (api.client.clone(), api.url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(format!("{url}/api/v1/orders"))
                .header("idempotency-key", "concurrent-key")
                .json(&body)
                .send()
                .await
                .unwrap();
            (res.status(), res.json::<Value>().await.unwrap()["id"].as_i64().unwrap())
        }));
    }
    let mut statuses = Vec::new();
    let mut ids = HashSet::new();
    for t in tasks {
        let (status, id) = t.await.unwrap();
        statuses.push(status);
        ids.insert(id);
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CREATED).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 11, "{statuses:?}");
    assert_eq!(ids.len(), 1);
    assert_eq!(api.scalar::<i64>("SELECT count(*) FROM orders").await, 2);

    let (status, res) = api
        .post_raw(body.to_string(), &[("content-type", "application/json"), ("idempotency-key", "")])
        .await;
    assert_eq!((status, error_of(&res).1), (StatusCode::BAD_REQUEST, Some("Idempotency-Key".into())));
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_never_oversell_a_stock_tracked_product() {
    let api = TestApi::start().await;
    api.exec("INSERT INTO inventories (product_id, quantity) VALUES (7, 10)").await;
    let sold_before = api.sold(7).await;
    // 30 orders race for 10 units; each also takes an untracked product, as real orders do.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (client, url) = (api.client.clone(), api.url.clone());
        let body = order(1 + i % 3, 2, &[(7, 1), (3 + i % 2, 1)]);
        tasks.push(tokio::spawn(async move {
            let res = client.post(format!("{url}/api/v1/orders")).json(&body).send().await.unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap())
        }));
    }
    let mut created = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => assert_eq!(error_of(&body).0, "insufficient_stock", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(created, 10);
    assert_eq!(api.scalar::<i64>("SELECT quantity::bigint FROM inventories WHERE product_id = 7").await, 0);
    assert_eq!(api.scalar::<i64>("SELECT count(*) FROM orderdetails WHERE product_id = 7").await, 10);
    assert_eq!(api.sold(7).await - sold_before, 10);
    api.sold_counts_applied().await;
    assert_eq!(api.scalar::<i64>("SELECT sold_count FROM products WHERE id = 7").await - sold_before, 10);
    api.finish().await;
}

/// Orders that share popular products do not wait for each other: their sold quantities are
/// pending until a pass adds them to `products.sold_count`. Two instances apply them at once, and
/// every quantity is counted exactly once; a quantity of a deleted product is dropped and counted;
/// on shutdown the last requests' quantities are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sold_counts_are_applied_exactly_once_by_every_instance() {
    let settings =
        || ApiSettings { sold_count_interval: Duration::from_millis(10), ..ApiSettings::default() };
    let mut api = TestApi::start_with(settings()).await;
    // A second instance over the same database, applying the same pending rows.
    let other = serve(&api.db.pool, settings(), FailPoints::default()).await;
    let before = api.sold_counts("1, 2, 3").await;

    // 60 orders at once, every one selling products 1 and 2, half of them 3 too, through both.
    let mut tasks = Vec::new();
    for i in 0..60i64 {
        let url = if i % 2 == 0 { api.url.clone() } else { other.url.clone() };
        let client = api.client.clone();
        let lines: Vec<(i64, i64)> =
            if i % 2 == 0 { vec![(1, 1), (2, 2), (3, 3)] } else { vec![(2, 1), (1, 2)] };
        let body = order(1 + i % 5, 1 + i % 4, &lines);
        tasks.push(tokio::spawn(async move {
            client.post(format!("{url}/api/v1/orders")).json(&body).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    api.sold_counts_applied().await;
    let after = api.sold_counts("1, 2, 3").await;
    assert_eq!(after, vec![before[0] + 30 + 60, before[1] + 60 + 30, before[2] + 90]);
    let applied = |text: &str| metric_value(text, "rainbow_api_sold_count_rows_applied_total").unwrap_or(0.0);
    // A pass counts its rows after its commit, which the wait above may see first.
    let both = eventually("the applied rows counted", Duration::from_secs(10), || async {
        let n = applied(&api.metrics().await) + applied(&other.metrics.render(&api.db.pool));
        (n >= 150.0).then_some(n)
    })
    .await;
    assert_eq!(both, 150.0, "every order line applied once, by one instance or the other");
    let when =
        metric_value(&api.metrics().await, "rainbow_api_sold_count_applied_timestamp_seconds").unwrap();
    assert!((when - chrono::Utc::now().timestamp() as f64).abs() < 60.0, "last pass at {when}");

    // A quantity whose product is gone: dropped, counted, not left pending.
    api.exec("INSERT INTO api_sold_count_pending (product_id, quantity) VALUES (999999, 4)").await;
    api.sold_counts_applied().await;
    let dropped =
        |text: &str| metric_value(text, "rainbow_api_sold_count_unknown_product_rows_total").unwrap_or(0.0);
    let both = eventually("the dropped row counted", Duration::from_secs(10), || async {
        let n = dropped(&api.metrics().await) + dropped(&other.metrics.render(&api.db.pool));
        (n >= 1.0).then_some(n)
    })
    .await;
    assert_eq!(both, 1.0);

    // Shutdown: the second instance stops; then the first is stopped right after an order (its
    // interval made long, so only the shutdown pass can apply it).
    let _ = other.stop.send(());
    tokio::time::timeout(Duration::from_secs(30), other.server).await.expect("stops").unwrap().unwrap();
    let metrics = api
        .restart_with(ApiSettings { sold_count_interval: Duration::from_secs(60), ..ApiSettings::default() })
        .await;
    // The pass at start finds nothing; the order after it stays pending until the shutdown.
    eventually("the first pass of the restarted instance", Duration::from_secs(10), || async {
        let text = metrics.render(&api.db.pool);
        (metric_value(&text, "rainbow_api_sold_count_applied_timestamp_seconds")? > 0.0).then_some(())
    })
    .await;
    let sold = api.sold(4).await;
    assert_eq!(api.post(&order(2, 1, &[(4, 5)])).await.0, StatusCode::CREATED);
    assert_eq!(api.scalar::<i64>("SELECT count(*) FROM api_sold_count_pending").await, 1);
    api.stop_server().await;
    assert_eq!(api.scalar::<i64>("SELECT count(*) FROM api_sold_count_pending").await, 0);
    assert_eq!(api.scalar::<i64>("SELECT sold_count FROM products WHERE id = 4").await, sold + 5);
    api.db.drop().await;
}

/// Walks every page of a listing; returns the ids in order.
async fn walk(api: &TestApi, query: &str, limit: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    let mut last: Option<(String, i64)> = None;
    loop {
        let mut path = format!("/api/v1/orders?limit={limit}{query}");
        if let Some(c) = &cursor {
            path += &format!("&cursor={c}");
        }
        let (status, page) = api.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let orders = page["orders"].as_array().unwrap();
        assert!(orders.len() <= limit);
        for o in orders {
            let key = (o["createdAt"].as_str().unwrap().to_string(), o["id"].as_i64().unwrap());
            let at = chrono::DateTime::parse_from_rfc3339(&key.0).unwrap();
            if let Some((prev_at, prev_id)) = &last {
                let prev = chrono::DateTime::parse_from_rfc3339(prev_at).unwrap();
                assert!((at, key.1) < (prev, *prev_id), "newest first: {key:?} after {last:?}");
            }
            ids.push(key.1);
            last = Some(key);
        }
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_returns_each_order_once_while_inserts_run() {
    let api = TestApi::start().await;
    // 240 orders over 12 days; groups of 4 share a timestamp, so ties are broken by id.
    let mut existing = Vec::new();
    for i in 0..240i64 {
        let at = format!("2026-10-{:02}T10:00:{:02}Z", 1 + i % 12, (i / 4) % 60);
        let mut body = order(1 + i % 5, 1 + i % 4, &[(1 + i % 50, 1)]);
        body["createdAt"] = json!(at);
        let (status, created) = api.post(&body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        existing.push(created["id"].as_i64().unwrap());
    }

    // Concurrent writers: new orders (now) and backdated ones, while a reader walks the pages.
    let writer = {
        let (client, url) = (api.client.clone(), api.url.clone());
        tokio::spawn(async move {
            for i in 0..150i64 {
                let mut body = order(2, 1, &[(100 + i % 20, 1)]);
                if i % 2 == 0 {
                    body["createdAt"] = json!(format!("2026-10-{:02}T11:00:00Z", 1 + i % 12));
                }
                let res = client.post(format!("{url}/api/v1/orders")).json(&body).send().await.unwrap();
                assert_eq!(res.status(), StatusCode::CREATED);
            }
        })
    };
    let seen = walk(&api, "", 7).await;
    writer.await.unwrap();
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for id in &seen {
        *counts.entry(*id).or_default() += 1;
    }
    assert!(counts.values().all(|c| *c == 1), "an order appeared twice");
    for id in &existing {
        assert_eq!(counts.get(id), Some(&1), "order {id}, committed before the walk, seen exactly once");
    }

    // Once the writers are done, a full walk sees every order exactly once.
    let all = walk(&api, "", 50).await;
    assert_eq!(all.len() as i64, api.scalar::<i64>("SELECT count(*) FROM orders").await);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len());

    // Filters: by customer, and by a date range (from inclusive, to exclusive).
    let customer = walk(&api, "&customerId=3", 10).await;
    let expected: i64 = api.scalar("SELECT count(*) FROM orders WHERE customer_id = 3").await;
    assert_eq!(customer.len() as i64, expected);
    assert!(expected > 0);
    let ranged = walk(&api, "&from=2026-10-03&to=2026-10-05", 10).await;
    let expected: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM orders WHERE created_at >= '2026-10-03Z' AND created_at < '2026-10-05Z'
         ORDER BY created_at DESC, id DESC",
    )
    .fetch_all(&api.db.pool)
    .await
    .unwrap();
    assert_eq!(ranged, expected);
    assert!(!expected.is_empty());
    let (_, page) = api.get("/api/v1/orders").await;
    assert_eq!(page["orders"].as_array().unwrap().len(), 50, "default page size");
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_routes_openapi_and_metrics() {
    let api = TestApi::start().await;
    let (status, info) = api.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["name"], "rainbow-api");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert!(info["uptimeSeconds"].as_u64().is_some());
    assert_eq!(info["routes"].as_array().unwrap().len(), ROUTES.len());
    assert_eq!(api.get("/ping").await, (StatusCode::OK, json!({"status": "ok"})));

    // The OpenAPI document lists exactly the routes, and the router serves each of them.
    let (status, doc) = api.get("/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} has responses"
            );
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    let mut routes: Vec<(String, String)> =
        ROUTES.iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
    documented.sort();
    routes.sort();
    assert_eq!(documented, routes);
    let (_, created) = api.post(&order(1, 1, &[(1, 1)])).await;
    for (method, path) in &documented {
        let concrete = path.replace("{id}", &created["id"].to_string());
        let req = match method.as_str() {
            "GET" => api.client.get(format!("{}{concrete}", api.url)),
            "POST" => api.client.post(format!("{}{concrete}", api.url)).json(&order(1, 1, &[(2, 1)])),
            other => panic!("undocumented method {other}"),
        };
        let res = req.send().await.unwrap();
        assert!(res.status().is_success(), "{method} {path}: {}", res.status());
        // Every status the route returned is documented.
        let documented_status =
            &doc["paths"][path][method.to_lowercase()]["responses"][res.status().as_str()];
        assert!(!documented_status.is_null(), "{method} {path} documents {}", res.status());
    }

    // Metrics count what happened: 2 orders created so far (3 lines).
    api.post(&order(1, 1, &[(3, 1), (4, 2)])).await;
    api.get("/api/v1/orders/999999").await;
    let text = api.metrics().await;
    common::assert_alert_metrics_exported("api", &text);
    let metric = |line_start: &str| {
        metric_value(&text, line_start).unwrap_or_else(|| panic!("{line_start} in\n{text}"))
    };
    assert_eq!(metric("rainbow_api_orders_created_total "), 3.0);
    assert_eq!(metric("rainbow_api_order_lines_created_total "), 4.0);
    assert_eq!(
        metric("rainbow_api_http_requests_total{method=\"POST\",route=\"/api/v1/orders\",status=\"201\"}"),
        3.0
    );
    assert_eq!(
        metric(
            "rainbow_api_http_requests_total{method=\"GET\",route=\"/api/v1/orders/{id}\",status=\"404\"}"
        ),
        1.0
    );
    assert_eq!(
        metric("rainbow_api_http_request_duration_seconds_count{method=\"POST\",route=\"/api/v1/orders\"}"),
        3.0
    );
    assert_eq!(metric("rainbow_api_http_requests_in_flight "), 1.0, "the scrape itself is in flight");
    // The pool holds connections (the cache's LISTEN one at least); how many are idle at this
    // instant depends on the database probe and the cache.
    let open = metric("rainbow_api_db_pool_connections{state=\"idle\"}")
        + metric("rainbow_api_db_pool_connections{state=\"in_use\"}");
    assert!(open >= 1.0, "{text}");
    assert_eq!(metric("rainbow_api_db_pool_max_connections "), 20.0);
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_503_when_the_database_does_not_answer() {
    // A pool aimed at a port where nothing listens.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy_with(common::pg_options("postgres").port(1));
    let state = AppState::new(pool, ApiSettings::default(), FailPoints::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(rainbow_api::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let res = reqwest::get(format!("{url}/ping")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&res.json().await.unwrap()).0, "database_unavailable");
    let res = reqwest::get(format!("{url}/api/v1/orders/1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_timeout_is_abandoned_without_a_trace() {
    let api = TestApi::start_with(ApiSettings {
        request_timeout: Duration::from_millis(300),
        ..ApiSettings::default()
    })
    .await;
    let before = api.footprint().await;
    let (reached, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    api.failpoints
        .arm(Step::BeforeWrite, Action::Pause { reached: reached.clone(), release: release.clone() });
    let (status, body) = api.post(&order(1, 2, &[(3, 1)])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&body).0, "request_timeout");
    // The abandoned request wrote nothing (the order is one statement, sent after the pause).
    assert_eq!(api.footprint().await, before);
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut api = TestApi::start().await;
    let (reached, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    api.failpoints
        .arm(Step::BeforeWrite, Action::Pause { reached: reached.clone(), release: release.clone() });
    let in_flight = {
        let (client, url) = (api.client.clone(), api.url.clone());
        tokio::spawn(async move {
            let res = client
                .post(format!("{url}/api/v1/orders"))
                .json(&order(5, 3, &[(8, 2)]))
                .send()
                .await
                .unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        })
    };
    reached.notified().await;
    api.stop.take().unwrap().send(()).unwrap();
    // New connections are refused while the paused request is still running.
    let addr = api.url.trim_start_matches("http://").to_string();
    eventually("the listener to close", Duration::from_secs(10), || {
        let addr = addr.clone();
        async move { tokio::net::TcpStream::connect(&addr).await.is_err().then_some(()) }
    })
    .await;
    assert!(!in_flight.is_finished() && !api.server.is_finished());
    release.notify_one();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    tokio::time::timeout(Duration::from_secs(10), &mut api.server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    let id = body["id"].as_i64().unwrap();
    assert_eq!(
        api.scalar::<i64>(&format!("SELECT count(*) FROM orderdetails WHERE order_id = {id}")).await,
        1
    );
    api.db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_churns_the_catalogue_and_sends_valid_skewed_orders() {
    use rainbow_loadgen::{self as loadgen, LoadgenSettings};
    let api = TestApi::start().await;
    let settings = LoadgenSettings {
        api_url: api.url.clone(),
        producers: 4,
        rate: 0.0,
        count: Some(40),
        duration: None,
        days: 28,
        churn_rate: 500.0,
        orders: false,
        seed: 7,
        progress: false,
    };
    // Churn only: 40 real changes, spread over the tracked tables.
    let churn = loadgen::run(api.db.pool.clone(), settings.clone(), std::future::pending()).await.unwrap();
    assert_eq!(churn.counts.churned, 40, "{}", churn.render());
    assert_eq!(churn.churn.values().sum::<u64>(), 40);
    assert!(churn.churn["products"] >= 15, "{:?}", churn.churn);
    for (table, changes) in &churn.churn {
        let changed: i64 =
            api.scalar(&format!("SELECT count(*) FROM {table} WHERE updated_at > created_at")).await;
        assert!(
            changed >= 1 && changed <= *changes as i64,
            "{table}: {changed} rows changed by {changes} changes"
        );
    }

    // Orders: every one accepted, weekday-skewed dates within the window.
    let orders = loadgen::run(
        api.db.pool.clone(),
        LoadgenSettings { count: Some(300), orders: true, churn_rate: 0.0, ..settings },
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!((orders.counts.sent, orders.counts.ok), (300, 300), "{}", orders.render());
    assert_eq!(orders.created.len(), 300);
    assert!(orders.p50 <= orders.p99);
    assert_eq!(api.scalar::<i64>("SELECT count(*) FROM orders").await, 300);
    let (lines_min, lines_max): (i64, i64) = sqlx::query_as(
        "SELECT min(n), max(n) FROM (SELECT count(*) AS n FROM orderdetails GROUP BY order_id) t",
    )
    .fetch_one(&api.db.pool)
    .await
    .unwrap();
    assert!(lines_min >= 1 && lines_max <= 10 && lines_max > lines_min);
    let in_window: i64 = api
        .scalar("SELECT count(*) FROM orders WHERE created_at > now() - interval '28 days' AND created_at <= now()")
        .await;
    assert_eq!(in_window, 300);
    // Sunday (0), Thursday (4) and Saturday (6) carry most orders.
    let top_days: i64 = api
        .scalar(
            "SELECT count(*) FROM orders WHERE extract(dow FROM created_at AT TIME ZONE 'UTC') IN (0, 4, 6)",
        )
        .await;
    assert!(top_days > 200, "{top_days} of 300 orders on Sun/Thu/Sat");
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_orders_follow_changes_made_directly_in_postgres() {
    let api = TestApi::start().await;
    let (_, created) = api.post(&order(1, 2, &[(3, 1), (4, 2)])).await;
    let id = created["id"].as_i64().unwrap();
    let path = format!("/api/v1/orders/{id}");
    assert_eq!(api.cached(&path).await, created);

    // Each change is visible through the API soon after it commits, although the order was cached.
    type Applied = Box<dyn Fn(&Value) -> bool + Send + Sync>;
    let changes: [(&str, Applied); 5] = [
        (
            // A line added to an existing order (an order's own lines, inserted with it, need
            // no notification: nothing can have cached the order before it existed).
            "INSERT INTO orderdetails (order_id, product_id, quantity, price, created_at, updated_at)
             SELECT $, 5, 1, price, now(), now() FROM products WHERE id = 5",
            Box::new(|o: &Value| o["lines"].as_array().map(Vec::len) == Some(3)),
        ),
        (
            "UPDATE orderdetails SET quantity = 7 WHERE order_id = $ AND product_id = 4",
            Box::new(|o: &Value| o["lines"][1]["quantity"] == 7 && o["totals"]["quantity"] == 9),
        ),
        (
            "UPDATE products SET name = 'Renamed product' WHERE id = 3",
            Box::new(|o: &Value| o["lines"][0]["productName"] == "Renamed product"),
        ),
        (
            "UPDATE customers SET email = 'changed@example.vn' WHERE id = 1",
            Box::new(|o: &Value| o["customer"]["email"] == "changed@example.vn"),
        ),
        ("UPDATE orders SET payment_id = 4 WHERE id = $", Box::new(|o: &Value| o["payment"]["id"] == 4)),
    ];
    for (sql, applied) in &changes {
        api.cached(&path).await;
        api.exec(&sql.replace('$', &id.to_string())).await;
        eventually(sql, Duration::from_secs(10), || async {
            let (_, body) = api.get(&path).await;
            applied(&body).then_some(())
        })
        .await;
    }
    api.cached(&path).await;
    api.exec(&format!("DELETE FROM orders WHERE id = {id}")).await;
    eventually("the deleted order to be gone", Duration::from_secs(10), || async {
        (api.get(&path).await.0 == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    api.finish().await;
}

/// What a client can make the API hold is bounded: a body of many tiny values is refused before
/// it is parsed into a tree, requests beyond `max_in_flight` are answered 503 at once (before
/// their body is read), and methods a client makes up never become label values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_client_sends_is_bounded_before_it_is_held() {
    use tokio::io::AsyncWriteExt;
    let api = TestApi::start_with(ApiSettings { max_in_flight: 1, ..ApiSettings::default() }).await;
    let json = [("content-type", "application/json")];

    // 20,000 empty objects fit in the 64 KiB limit; refused by the count of values.
    let body = format!(r#"{{"customerId": 1, "payment_id": 2, "products": [{}{{}}]}}"#, "{},".repeat(19_999));
    assert!(body.len() < 64 * 1024);
    let (status, error) = api.post_raw(body, &json).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error_of(&error), ("invalid_request".to_string(), Some("products".to_string())));
    assert!(error["error"]["message"].as_str().unwrap().contains("at most"), "{error}");

    // A request whose body never comes holds the one slot; the next is refused at once. Should
    // the held request be answered after all (it would be if a probe of the database failed just
    // then), another one takes the slot; every other answer is kept for the failure message.
    let addr = api.url.trim_start_matches("http://").to_string();
    let hold_the_slot = || async {
        let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
        slow.write_all(
            b"POST /api/v1/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
        slow
    };
    let mut slow = hold_the_slot().await;
    let (mut answers, until) = (Vec::new(), std::time::Instant::now() + Duration::from_secs(10));
    let (retry_after, body) = loop {
        let r = api.client.post(format!("{}/api/v1/orders", api.url)).body("{}").send().await.unwrap();
        let (status, retry_after) = (r.status(), r.headers().get("retry-after").cloned());
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status == StatusCode::SERVICE_UNAVAILABLE && error_of(&body).0 == "overloaded" {
            break (retry_after, body);
        }
        answers.push(format!("{status} {body}"));
        assert!(
            std::time::Instant::now() < until,
            "within 10 s, no request was refused while another held the slot; answers: {answers:?}"
        );
        if slow.try_read(&mut [0u8; 64]).map_or_else(|e| e.kind() != std::io::ErrorKind::WouldBlock, |_| true)
        {
            answers.push("(the held request was answered or closed: holding the slot again)".into());
            slow = hold_the_slot().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(retry_after.as_ref().map(|v| v.to_str().unwrap()), Some("1"));
    assert!(body["error"]["message"].as_str().unwrap().contains("its limit"), "{body}");
    // Probes are never refused.
    let ping = api.client.get(format!("{}/healthz", api.url)).send().await.unwrap();
    assert_eq!(ping.status(), StatusCode::OK);
    drop(slow);

    // Made-up methods: 405 (or 404), counted under `other`.
    for method in ["FOO", "BAR", "BAZ"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = common::eventually("the slot to be free again", Duration::from_secs(10), || async {
            let r = api.client.request(m.clone(), format!("{}/api/v1/orders", api.url)).send().await.unwrap();
            (r.status() != StatusCode::SERVICE_UNAVAILABLE).then_some(r)
        })
        .await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
    let text = api.metrics().await;
    for made_up in ["FOO", "BAR", "BAZ"] {
        assert!(!text.contains(made_up), "{made_up} became a label value:\n{text}");
    }
    assert!(text.contains("method=\"other\""), "{text}");
    api.finish().await;
}
