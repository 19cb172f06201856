//! The HTTP endpoint of a service's telemetry: `GET /metrics` in Prometheus's text format, served
//! until the service stops.

use axum::routing::get;

/// Serves `GET /metrics` with the text `render` returns at each request, until `shutdown`
/// resolves.
pub async fn metrics(
    listener: tokio::net::TcpListener,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let text = render();
            async move { ([("content-type", "text/plain; version=0.0.4")], text) }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
