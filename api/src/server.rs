//! Serving: the shared state of the handlers, the settings, and [`serve`] with graceful shutdown.

use crate::cache::{follow_invalidations, OrderCache};
use crate::failpoint::FailPoints;
use crate::metrics::ApiMetrics;
use crate::middleware::RequestIds;
use crate::service::OrderService;
use sqlx::PgPool;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Runtime settings of the server (the binary fills them from `[api]`).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// A request still running after this is answered 503 and its work dropped (rolled back).
    pub request_timeout: Duration,
    /// Largest accepted request body; larger ones get 413.
    pub body_limit: usize,
    /// After a shutdown signal, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
    /// Orders kept in the response cache of `GET /api/v1/orders/{id}`; 0 disables it.
    pub order_cache_entries: usize,
    /// Requests served at once; more are answered 503 at once (probes and metrics excepted).
    pub max_in_flight: usize,
    /// How often the orders' pending sold quantities are added to `products.sold_count`.
    pub sold_count_interval: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            request_timeout: Duration::from_secs(10),
            body_limit: 64 << 10,
            shutdown_grace: Duration::from_secs(30),
            order_cache_entries: 100_000,
            max_in_flight: 512,
            sold_count_interval: Duration::from_millis(100),
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub service: OrderService,
    pub metrics: ApiMetrics,
    pub settings: Arc<ApiSettings>,
    pub started: Instant,
    pub request_ids: Arc<RequestIds>,
}

impl AppState {
    pub fn new(pool: PgPool, settings: ApiSettings, failpoints: FailPoints) -> AppState {
        let metrics = ApiMetrics::new();
        let cache = Arc::new(OrderCache::new(settings.order_cache_entries));
        AppState {
            service: OrderService::new(pool, metrics.clone(), failpoints, cache),
            metrics,
            settings: Arc::new(settings),
            started: Instant::now(),
            request_ids: Arc::new(RequestIds::new()),
        }
    }
}

/// Serves the API on `listener` until `shutdown` completes, then stops accepting connections and
/// lets in-flight requests finish, for at most `shutdown_grace`, and applies the sold counts they
/// left pending ([`crate::sold`], which runs meanwhile). Returns when every connection is closed
/// or the grace period is over, and that last pass is done.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = state.settings.shutdown_grace;
    // The cache listens on a connection of its own, so it never takes a slot of the request pool.
    let follower = state.service.cache().enabled().then(|| {
        let pool = state.service.pool();
        let options = (*pool.connect_options()).clone().application_name("rainbow-api-cache");
        let listen_pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_lazy_with(options);
        tokio::spawn(follow_invalidations(state.service.cache().clone(), listen_pool))
    });
    let _stop_follower = AbortOnDrop(follower);
    let _stop_probe = AbortOnDrop(Some(tokio::spawn(probe_database(state.clone()))));
    let (pool, metrics, timeout) =
        (state.service.pool().clone(), state.metrics.clone(), state.settings.request_timeout);
    let sold = AbortOnDrop(Some(tokio::spawn(crate::sold::follow(
        pool.clone(),
        metrics.clone(),
        state.settings.sold_count_interval,
        timeout,
    ))));
    let in_flight = state.metrics.in_flight.clone();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!(
            in_flight = in_flight.get(),
            "shutting down: no new connections; finishing in-flight requests"
        );
        let _ = stopping_tx.send(());
    };
    let server = axum::serve(listener, crate::routes::router(state.clone())).with_graceful_shutdown(signal);
    let deadline = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        result = server => {
            tracing::info!("api stopped");
            result
        }
        () = deadline => {
            tracing::warn!(
                abandoned = state.metrics.in_flight.get(),
                "shutdown grace of {} s is over; abandoning the requests still running (their transactions roll back)",
                grace.as_secs()
            );
            Ok(())
        }
    };
    // A pass cut off here rolls back; the last one takes what the final requests left.
    drop(sold);
    crate::sold::apply_pending(&pool, &metrics, timeout).await;
    result
}

/// How often the database is probed for `/readyz` and the dependency metrics.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Probes the database for ever: its reachability is what `/readyz` answers and what
/// `dependency_down_seconds{dependency="postgres"}` measures. Requests need no probe: while the
/// database is away they are answered 503, and served again as soon as it is back.
async fn probe_database(state: AppState) {
    use rainbow_runtime::resilience::Dependency;
    let r = &state.metrics.resilience;
    loop {
        match state.service.ping().await {
            Ok(()) => {
                r.connected(Dependency::Postgres);
                r.set_ready(true);
            }
            Err(_) => r.failed(Dependency::Postgres),
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}
