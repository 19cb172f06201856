//! What wraps every request: a request id (taken from `x-request-id` when the client sends a sane
//! one, else generated) echoed in the response and carried by the request's tracing span; the cap
//! on requests in flight (503 beyond it, before the body is read); the request timeout; and the
//! HTTP metrics, whose labels never carry a string the client chose.

use crate::error::ApiError;
use crate::server::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tracing::Instrument;

pub const REQUEST_ID: &str = "x-request-id";

/// Request ids: `<process tag>-<sequence>`, unique within a process and unlikely to repeat across
/// restarts (the tag is the start time in seconds, in hex).
#[derive(Debug)]
pub struct RequestIds {
    tag: String,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        RequestIds { tag: format!("{secs:x}"), next: AtomicU64::new(1) }
    }

    fn next(&self) -> String {
        format!("{}-{}", self.tag, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds::new()
    }
}

pub async fn observe(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| app.request_ids.next());
    let method = method_label(req.method());
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let route_label = route.as_deref().unwrap_or("unmatched").to_string();
    let probe = matches!(route.as_deref(), Some("/healthz" | "/readyz" | "/metrics" | "/ping"));
    if !probe && app.metrics.in_flight.get() >= app.settings.max_in_flight as i64 {
        app.metrics.requests.with_label_values(&[method, &route_label, "503"]).inc();
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "the server is serving {} requests, its limit; nothing was done, retry shortly",
                app.settings.max_in_flight
            ),
        )
        .into_response();
        response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
        return response;
    }
    if !probe && app.metrics.resilience.is_down(rainbow_runtime::resilience::Dependency::Postgres) {
        // The probe found the database away: answer at once rather than after the pool's
        // connect timeout; served again within a probe interval of its return.
        app.metrics.requests.with_label_values(&[method, &route_label, "503"]).inc();
        let mut response =
            ApiError::unavailable("the database is unavailable; nothing was changed, retry later")
                .into_response();
        response.headers_mut().insert("retry-after", HeaderValue::from_static("2"));
        return response;
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        req.headers_mut().insert(REQUEST_ID, v);
    }
    let span = tracing::info_span!("request", id = %request_id, method, path = %req.uri().path());
    let in_flight = InFlight::enter(&app.metrics.in_flight);
    let timeout = app.settings.request_timeout;
    let mut response = match tokio::time::timeout(timeout, next.run(req).instrument(span.clone())).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            format!(
                "the request did not finish within {} ms and was abandoned; nothing was changed",
                timeout.as_millis()
            ),
        )
        .into_response(),
    };
    drop(in_flight);
    let status = response.status();
    let elapsed = started.elapsed();
    app.metrics.requests.with_label_values(&[method, &route_label, status.as_str()]).inc();
    app.metrics.duration.with_label_values(&[method, &route_label]).observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        let micros = elapsed.as_micros() as u64;
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), micros, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), micros, "request served");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// The `method` label: one of the methods the API knows, else `other` (a client must not be able
/// to create series).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts a request in flight until dropped, so a request abandoned by its client (its future
/// dropped mid-way) is uncounted too.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn enter(gauge: &prometheus::IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
