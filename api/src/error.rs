//! The API's one error type and its JSON form: `{"error": {"code", "message", "field"}}`.
//!
//! `code` is stable and machine-readable; `message` is for people; `field` names the offending
//! part of the request (a JSON path such as `products[2].quantity`, a query parameter or a header)
//! when there is one.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Code of a deadlock or serialization failure: nothing was written and a retry may succeed.
pub const TRANSACTION_CONFLICT: &str = "transaction_conflict";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    /// 400: the request is malformed or breaks a rule that needs no database to check.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message).with_field(field)
    }

    /// 422: well-formed, but refers to something that does not exist.
    pub fn unknown_reference(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_reference", message).with_field(field)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503: the database did not answer (down, or every pooled connection busy for too long).
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", message)
    }

    /// 500: our fault. The cause is logged with the request id; the client sees no internals.
    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the server failed to complete the request; nothing was changed (see the server log \
             for this request id)",
        )
    }

    /// A database error: unavailability becomes 503, anything else 500 (and is logged).
    pub fn from_database(e: sqlx::Error) -> ApiError {
        match e {
            sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")) => {
                tracing::info!(error = %db, "transaction conflict");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TRANSACTION_CONFLICT,
                    "the transaction conflicted with a concurrent one and was rolled back; retry",
                )
            }
            // Down, restarting (57P01 admin shutdown, 57P03 starting up), out of connections.
            e if rainbow_schemas::postgres::is_transient(&e) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::unavailable("the database is unavailable; nothing was changed, retry later")
            }
            other => {
                tracing::error!(error = %other, "database error");
                ApiError::internal()
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        ApiError::from_database(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            Body { error: Detail { code: self.code, message: &self.message, field: self.field.as_deref() } };
        (self.status, axum::Json(body)).into_response()
    }
}
