//! The HTTP endpoint of a service's telemetry and health, served until the service stops:
//!
//! * `GET /metrics`: Prometheus's text format;
//! * `GET /healthz`: 200 while the process serves (liveness: restart it when this fails);
//! * `GET /readyz`: 200 when its dependencies are connected and its work makes progress, else
//!   503 with the reason (readiness: do not route to it, alert when it lasts).

use crate::resilience::Resilience;
use axum::http::StatusCode;
use axum::routing::get;

/// A registry's metrics in Prometheus's text format.
pub fn render(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf).expect("text encoding");
    String::from_utf8(buf).expect("metrics are UTF-8")
}

/// How long [`bind`] waits for an address in use to be released.
pub const BIND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Binds `addr`, waiting up to [`BIND_PATIENCE`] while it is in use: a component restarted
/// right after its previous instance was told to stop (by `rainbow up`, or after a crash of
/// `rainbow up` itself) finds the port again once that instance has finished its shutdown.
pub async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let started = std::time::Instant::now();
    let mut warned = false;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && started.elapsed() < BIND_PATIENCE => {
                if !warned {
                    tracing::warn!(%addr, "address in use: waiting up to {} s for it to be released", BIND_PATIENCE.as_secs());
                    warned = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

/// What `/readyz` answers, and what brings the metrics up to date before they are rendered.
pub trait Health: Clone + Send + Sync + 'static {
    /// `Ok` when ready, else why not.
    fn readiness(&self) -> Result<(), String>;
    /// Called before each rendering of the metrics.
    fn refresh(&self) {}
}

impl Health for Resilience {
    fn readiness(&self) -> Result<(), String> {
        Resilience::readiness(self)
    }
    fn refresh(&self) {
        Resilience::refresh(self)
    }
}

/// [`endpoints`] on a task of its own until `stop` says so.
pub fn spawn(
    listener: tokio::net::TcpListener,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    health: impl Health,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(endpoints(listener, render, health, crate::resilience::stopped(stop)))
}

/// Serves the endpoints until `shutdown` resolves; `render` gives the metrics' text.
pub async fn endpoints(
    listener: tokio::net::TcpListener,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    resilience: impl Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let r = resilience.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                r.refresh();
                let text = render();
                async move { ([("content-type", "text/plain; version=0.0.4")], text) }
            }),
        )
        .route("/healthz", get(|| async { "alive\n" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = resilience.readiness();
                async move {
                    match readiness {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                    }
                }
            }),
        );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
