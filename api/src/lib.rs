//! Rainbow's order service (axum + sqlx).
//!
//! Layers, outside in: [`routes`] (paths to handlers) → [`handlers`] (HTTP in and out) →
//! [`service`] (business rules, one transaction per request) → [`repository`] (SQL). The
//! [`model`] holds the request and response types, [`error`] the JSON error form, [`metrics`] the
//! Prometheus metrics and telemetry events, [`openapi`] the OpenAPI document, [`cache`] the
//! notification-invalidated cache of order responses, [`sold`] the batched update of the products'
//! sold counts.
//!
//! Its clients, the order producers, are the `rainbow-loadgen` crate.

pub mod cache;
pub mod error;
pub mod failpoint;
pub mod handlers;
pub mod metrics;
pub mod middleware;
pub mod model;
pub mod openapi;
pub mod repository;
pub mod routes;
pub mod server;
pub mod service;
pub mod sold;

pub use error::ApiError;
pub use server::{serve, ApiSettings, AppState};
