//! HTTP handlers: extract and validate the request, call the service, shape the response. No SQL
//! and no business rules live here.

use crate::error::ApiError;
use crate::model::{parse_order_id, ListQuery, NewOrder, MAX_LINES};
use crate::routes::ROUTES;
use crate::server::AppState;
use crate::service::Created;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// Header carrying a client's idempotency key on `POST /api/v1/orders`.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub async fn service_info(State(app): State<AppState>) -> Json<Value> {
    let routes: Vec<Value> =
        ROUTES.iter().map(|r| json!({"method": r.method, "path": r.path, "summary": r.summary})).collect();
    Json(json!({
        "name": "rainbow-api",
        "description": "Rainbow order service",
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": app.started.elapsed().as_secs(),
        "routes": routes,
    }))
}

pub async fn ping(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    app.service.ping().await?;
    Ok(Json(json!({"status": "ok"})))
}

/// Liveness: the process serves.
pub async fn healthz() -> &'static str {
    "alive\n"
}

/// Readiness: the database answered the last probe (see [`crate::server::serve`]).
pub async fn readyz(State(app): State<AppState>) -> Response {
    match app.metrics.resilience.readiness() {
        Ok(()) => "ready\n".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

pub async fn get_order(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_order_id(&id)?;
    let body = app.service.get_order_json(id).await?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

pub async fn list_orders(
    State(app): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) =
        query.map_err(|e| ApiError::invalid("query", format!("malformed query string: {e}")))?;
    let q = ListQuery::parse(&pairs)?;
    Ok(Json(app.service.list_orders(&q).await?).into_response())
}

pub async fn create_order(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let json =
            ct.to_str().is_ok_and(|s| s.trim_start().to_ascii_lowercase().starts_with("application/json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("the body must be JSON (Content-Type: application/json), got {ct:?}"),
            )
            .with_field("Content-Type"));
        }
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than the limit of {} bytes", app.settings.body_limit),
            )
        } else {
            ApiError::invalid("$", format!("could not read the body: {e}"))
        }
    })?;
    let key = idempotency_key(&headers)?;
    // Bounded before anything is built from it: a body of many tiny values is refused by a scan
    // that allocates nothing.
    let values = json_values(&body);
    if values > MAX_JSON_VALUES {
        return Err(ApiError::invalid(
            "products",
            format!("the body holds {values} JSON values or more; an order has at most {MAX_LINES} lines"),
        ));
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not valid JSON: {e}"))
    })?;
    let order = NewOrder::from_json(&value, chrono::Utc::now())?;
    let (status, view) = match app.service.create_order(&order, key.as_deref()).await? {
        Created::New(view) => (StatusCode::CREATED, view),
        Created::Replayed(view) => (StatusCode::OK, view),
    };
    let location = HeaderValue::from_str(&format!("/api/v1/orders/{}", view.id)).expect("ascii");
    Ok((status, [(header::LOCATION, location)], Json(view)).into_response())
}

/// The most JSON values an order may hold: an object per line with two fields, and the order's
/// own few fields.
const MAX_JSON_VALUES: usize = MAX_LINES * 4 + 64;

/// An upper bound of the JSON values in `body` (arrays, objects and scalars), counted without
/// parsing: commas and opening brackets outside strings, plus one. Invalid JSON is left to the
/// parser.
fn json_values(body: &[u8]) -> usize {
    let (mut count, mut in_string, mut escaped) = (1usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b',' | b'[' | b'{' => count += 1,
                _ => {}
            }
        }
    }
    count
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let bad = || {
        ApiError::invalid(
            "Idempotency-Key",
            "an Idempotency-Key is 1 to 255 visible ASCII characters (a UUID is a good choice)",
        )
    };
    let key = raw.to_str().map_err(|_| bad())?;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(key.to_string()))
}

pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))],
        app.metrics.render(app.service.pool()),
    )
}

pub async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", format!("no route for {}", uri.path()))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let allowed: Vec<&str> =
        ROUTES.iter().filter(|r| crate::routes::matches(r.path, uri.path())).map(|r| r.method).collect();
    let allowed = allowed.join(", ");
    let error = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}; allowed: {allowed}", uri.path()),
    );
    let mut response = error.into_response();
    if let Ok(v) = HeaderValue::from_str(&allowed) {
        response.headers_mut().insert(header::ALLOW, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::json_values;

    #[test]
    fn values_are_counted_outside_strings() {
        // 2 commas, 1 array, 2 objects, plus one: the 6 values (the numbers and the containers).
        assert_eq!(json_values(br#"{"customerId":1,"products":[{"productId":2,"quantity":3}]}"#), 6);
        assert_eq!(json_values(br#"{"a":"x,[{\",y"}"#), 2);
        assert_eq!(json_values(&[b'['; 10_000]), 10_001);
    }
}
