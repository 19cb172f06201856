//! The order service (axum + sqlx): the seed's routes over PostgreSQL, one transaction per
//! request. Not implemented yet; `rainbow api` says so.
