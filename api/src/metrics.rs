//! The API's Prometheus metrics, served at `GET /metrics`, and the telemetry events that update
//! them. Each event is one struct whose `emit` both logs and counts, so logs and metrics agree.
//!
//! Metrics (all prefixed `rainbow_api_`):
//! * `http_requests_total{method,route,status}`: finished requests; `route` is the route template
//!   (`/api/v1/orders/{id}`), `unmatched` for unknown paths, so cardinality stays bounded;
//! * `http_request_duration_seconds{method,route}`: latency histogram;
//! * `http_requests_in_flight`: requests being served now;
//! * `db_pool_connections{state="idle"|"in_use"}` and `db_pool_max_connections`: sampled at scrape;
//! * `orders_created_total`, `order_lines_created_total`, `idempotent_replays_total`,
//!   `orders_rejected_total{code}`;
//! * `order_cache_lookups_total{result="hit"|"miss"}`: `GET /api/v1/orders/{id}` served from the
//!   response cache or from the database;
//! * `sold_count_rows_applied_total`, `sold_count_unknown_product_rows_total` (pending sold
//!   quantities whose product was deleted before they were applied: dropped),
//!   `sold_count_apply_errors_total` and `sold_count_applied_timestamp_seconds` (the last
//!   successful pass): see [`crate::sold`];
//! * `retries_total{dependency}`, `dependency_down_seconds{dependency}`, `restarts_total`,
//!   `started_timestamp_seconds` (`rainbow_runtime::resilience`).

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use rainbow_runtime::resilience::{Dependency, Resilience};
use sqlx::PgPool;

#[derive(Clone)]
pub struct ApiMetrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub in_flight: IntGauge,
    pool_connections: IntGaugeVec,
    pool_max: IntGauge,
    orders_created: IntCounter,
    lines_created: IntCounter,
    idempotent_replays: IntCounter,
    orders_rejected: IntCounterVec,
    cache_lookups: IntCounterVec,
    sold_rows_applied: IntCounter,
    sold_unknown_product_rows: IntCounter,
    sold_apply_errors: IntCounter,
    sold_applied_at: IntGauge,
    /// The database's reachability (probed), retries and health.
    pub resilience: Resilience,
}

/// Latency buckets (seconds): sub-millisecond reads up to the request timeout.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl ApiMetrics {
    pub fn new() -> ApiMetrics {
        let registry = Registry::new_custom(Some("rainbow_api".into()), None).expect("registry");
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests served, by route template and status"),
            &["method", "route", "status"],
        )
        .expect("metric");
        let duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "Time to serve an HTTP request")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "route"],
        )
        .expect("metric");
        let in_flight =
            IntGauge::new("http_requests_in_flight", "HTTP requests being served").expect("metric");
        let pool_connections = IntGaugeVec::new(
            Opts::new("db_pool_connections", "PostgreSQL pool connections by state"),
            &["state"],
        )
        .expect("metric");
        let pool_max =
            IntGauge::new("db_pool_max_connections", "Size limit of the PostgreSQL pool").expect("metric");
        let orders_created = IntCounter::new("orders_created_total", "Orders created").expect("metric");
        let lines_created =
            IntCounter::new("order_lines_created_total", "Order lines created").expect("metric");
        let idempotent_replays = IntCounter::new(
            "idempotent_replays_total",
            "POSTs answered with an existing order because their Idempotency-Key was seen before",
        )
        .expect("metric");
        let orders_rejected = IntCounterVec::new(
            Opts::new("orders_rejected_total", "Order requests refused, by error code"),
            &["code"],
        )
        .expect("metric");
        let cache_lookups = IntCounterVec::new(
            Opts::new("order_cache_lookups_total", "Order reads by whether the response cache had them"),
            &["result"],
        )
        .expect("metric");
        let sold_rows_applied = IntCounter::new(
            "sold_count_rows_applied_total",
            "Pending sold quantities added to products.sold_count",
        )
        .expect("metric");
        let sold_unknown_product_rows = IntCounter::new(
            "sold_count_unknown_product_rows_total",
            "Pending sold quantities dropped because their product was deleted before they were applied",
        )
        .expect("metric");
        let sold_apply_errors = IntCounter::new(
            "sold_count_apply_errors_total",
            "Passes applying pending sold quantities that failed (retried)",
        )
        .expect("metric");
        let sold_applied_at = IntGauge::new(
            "sold_count_applied_timestamp_seconds",
            "When pending sold quantities were last applied (Unix seconds; 0: not yet)",
        )
        .expect("metric");
        for c in [
            Box::new(cache_lookups.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(sold_rows_applied.clone()),
            Box::new(sold_unknown_product_rows.clone()),
            Box::new(sold_apply_errors.clone()),
            Box::new(sold_applied_at.clone()),
            Box::new(requests.clone()),
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(pool_connections.clone()),
            Box::new(pool_max.clone()),
            Box::new(orders_created.clone()),
            Box::new(lines_created.clone()),
            Box::new(idempotent_replays.clone()),
            Box::new(orders_rejected.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        let resilience = Resilience::register(&registry);
        resilience.expect(&[Dependency::Postgres]);
        ApiMetrics {
            resilience,
            registry,
            requests,
            duration,
            in_flight,
            pool_connections,
            pool_max,
            orders_created,
            lines_created,
            idempotent_replays,
            orders_rejected,
            cache_lookups,
            sold_rows_applied,
            sold_unknown_product_rows,
            sold_apply_errors,
            sold_applied_at,
        }
    }

    pub fn cache_hit(&self) {
        self.cache_lookups.with_label_values(&["hit"]).inc();
    }

    pub fn cache_miss(&self) {
        self.cache_lookups.with_label_values(&["miss"]).inc();
    }

    /// The text exposition format, with the pool gauges sampled now.
    pub fn render(&self, pool: &PgPool) -> String {
        let size = i64::from(pool.size());
        let idle = pool.num_idle() as i64;
        self.pool_connections.with_label_values(&["idle"]).set(idle);
        self.pool_connections.with_label_values(&["in_use"]).set((size - idle).max(0));
        self.pool_max.set(i64::from(pool.options().get_max_connections()));
        rainbow_runtime::serve::render(&self.registry)
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics::new()
    }
}

/// An order was committed.
pub struct OrderCreated {
    pub order_id: i64,
    pub lines: usize,
}

impl OrderCreated {
    pub fn emit(&self, m: &ApiMetrics) {
        tracing::debug!(order_id = self.order_id, lines = self.lines, "order created");
        m.orders_created.inc();
        m.lines_created.inc_by(self.lines as u64);
    }
}

/// A POST carried an Idempotency-Key already used by an identical request.
pub struct IdempotentReplay<'a> {
    pub key: &'a str,
    pub order_id: i64,
}

impl IdempotentReplay<'_> {
    pub fn emit(&self, m: &ApiMetrics) {
        tracing::info!(
            idempotency_key = self.key,
            order_id = self.order_id,
            "idempotent retry: returning the original order"
        );
        m.idempotent_replays.inc();
    }
}

/// An order request was refused (validation, unknown references, stock, key reuse).
pub struct OrderRejected<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl OrderRejected<'_> {
    pub fn emit(&self, m: &ApiMetrics) {
        tracing::debug!(code = self.code, message = self.message, "order rejected");
        m.orders_rejected.with_label_values(&[self.code]).inc();
    }
}

/// A pass applied pending sold quantities ([`crate::sold`]).
pub struct SoldCountsApplied {
    pub applied: crate::repository::SoldApplied,
}

impl SoldCountsApplied {
    pub fn emit(&self, m: &ApiMetrics) {
        let a = &self.applied;
        if a.rows > 0 {
            tracing::trace!(rows = a.rows, "sold counts applied");
        }
        if a.unknown_product_rows > 0 {
            tracing::warn!(
                rows = a.unknown_product_rows,
                "sold quantities dropped: their product was deleted before they were applied"
            );
        }
        m.sold_rows_applied.inc_by((a.rows - a.unknown_product_rows).max(0) as u64);
        m.sold_unknown_product_rows.inc_by(a.unknown_product_rows.max(0) as u64);
        m.sold_applied_at.set(chrono::Utc::now().timestamp());
    }
}

/// A pass applying pending sold quantities failed; the next one retries them.
pub struct SoldCountsFailed<'a> {
    pub error: &'a str,
    /// Consecutive failures so far.
    pub failures: u64,
}

impl SoldCountsFailed<'_> {
    pub fn emit(&self, m: &ApiMetrics) {
        // The first failure of an outage and then every power of two: an outage does not flood the log.
        if self.failures.is_power_of_two() {
            tracing::warn!(
                error = self.error,
                failures = self.failures,
                "applying sold counts failed; retrying"
            );
        }
        m.sold_apply_errors.inc();
    }
}
