//! The route table: which path and method go to which handler. [`ROUTES`] is the single list that
//! `GET /`, the OpenAPI document and the tests read.

use crate::handlers;
use crate::middleware;
use crate::server::AppState;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;

pub struct RouteInfo {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
}

pub const ROUTES: [RouteInfo; 9] = [
    RouteInfo { method: "GET", path: "/", summary: "Service information: name, version, uptime, routes" },
    RouteInfo { method: "GET", path: "/ping", summary: "Health check: 200 only when the database answers" },
    RouteInfo { method: "GET", path: "/healthz", summary: "Liveness: 200 while the process serves" },
    RouteInfo {
        method: "GET",
        path: "/readyz",
        summary: "Readiness: 200 when the database answered its last probe, else 503 with the reason",
    },
    RouteInfo { method: "GET", path: "/metrics", summary: "Prometheus metrics (text exposition format)" },
    RouteInfo { method: "GET", path: "/api/v1/openapi.json", summary: "This API's OpenAPI 3.0 document" },
    RouteInfo {
        method: "GET",
        path: "/api/v1/orders",
        summary: "List orders, newest first, with keyset pagination",
    },
    RouteInfo { method: "POST", path: "/api/v1/orders", summary: "Create an order" },
    RouteInfo {
        method: "GET",
        path: "/api/v1/orders/{id}",
        summary: "Get one order with its lines and totals",
    },
];

/// Whether a concrete path matches a route template (`{name}` matches one segment).
pub fn matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.body_limit;
    Router::new()
        .route("/", get(handlers::service_info))
        .route("/ping", get(handlers::ping))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/api/v1/openapi.json", get(handlers::openapi))
        .route("/api/v1/orders", get(handlers::list_orders).post(handlers::create_order))
        .route("/api/v1/orders/{id}", get(handlers::get_order))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::observe))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn templates_match_one_segment_per_parameter() {
        assert!(matches("/api/v1/orders/{id}", "/api/v1/orders/12"));
        assert!(!matches("/api/v1/orders/{id}", "/api/v1/orders/12/x"));
        assert!(!matches("/api/v1/orders/{id}", "/api/v1/orders/"));
        assert!(matches("/ping", "/ping"));
    }
}
