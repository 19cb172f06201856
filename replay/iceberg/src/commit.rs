//! Commits of table updates that the `iceberg` crate's transactions cannot express.
//!
//! Contract: [`commit`] applies `updates` to a table only if every one of `requirements` holds
//! against the table's metadata at the moment of the swap, by the same protocol as the crate's
//! own catalog clients: on the SQL catalog, the new metadata file is written and the table's
//! metadata location swapped from the one the requirements were checked against in one
//! conditional UPDATE; on a REST catalog, the server's commit endpoint checks the requirements
//! and applies the updates. [`Outcome::Conflict`] means nothing changed: the caller re-reads
//! the table and tries again. A REST answer that leaves the outcome unknown (5xx, a timeout) is
//! [`Outcome::Unknown`]: the caller settles it by reading the table back.
//!
//! The crate (0.10) commits appends, added and deleted columns, property changes and snapshot
//! expiry, but its commit request (`TableCommit`) can only be built by its own actions: none of
//! them removes data files, which compaction (crate::changelog) needs, or changes a column's
//! type, which the promotion of a widened source column needs.

use crate::catalog::{Endpoint, Lake, CATALOG_NAME};
use crate::error::LakeError;
use iceberg::{MetadataLocation, TableIdent, TableRequirement, TableUpdate};
use std::str::FromStr;
use std::time::Duration;

/// What became of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Committed,
    /// A requirement did not hold (another writer committed meanwhile): nothing changed.
    Conflict,
    /// The catalog's answer (a 5xx, a lost connection) leaves it unknown whether the updates
    /// were applied: the caller reads the table to find out, and tries again if they were not.
    Unknown(String),
}

/// The pause before commit attempt `attempt + 1` after one that did not go through: 100 ms,
/// doubling, at most 3.2 s.
pub(crate) fn retry_pause(attempt: u64) -> Duration {
    Duration::from_millis(100 << attempt.min(5))
}

/// How long one request to the catalog may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Commits `updates` to `ident` if `requirements` hold (see the module's contract).
pub(crate) async fn commit(
    lake: &Lake,
    ident: &TableIdent,
    requirements: Vec<TableRequirement>,
    updates: Vec<TableUpdate>,
) -> Result<Outcome, LakeError> {
    match &lake.endpoint {
        Endpoint::Sqlite(url) => commit_sql(lake, url, ident, requirements, updates).await,
        Endpoint::Rest { uri, warehouse, properties } => {
            commit_rest(uri, warehouse, properties, ident, &requirements, &updates).await
        }
    }
}

async fn commit_sql(
    lake: &Lake,
    url: &str,
    ident: &TableIdent,
    requirements: Vec<TableRequirement>,
    updates: Vec<TableUpdate>,
) -> Result<Outcome, LakeError> {
    use sqlx::ConnectOptions;
    let name = ident.name();
    let failed = |reason: String| LakeError::Commit { table: ident.to_string(), reason };
    let table = lake.catalog.load_table(ident).await.map_err(LakeError::table(name))?;
    let current = table.metadata_location_result().map_err(LakeError::table(name))?.to_string();
    for r in &requirements {
        if r.check(Some(table.metadata())).is_err() {
            if let TableRequirement::UuidMatch { uuid } = r {
                return Err(failed(format!(
                    "the table was replaced meanwhile (UUID {} where {uuid} was read)",
                    table.metadata().uuid()
                )));
            }
            return Ok(Outcome::Conflict);
        }
    }
    let mut builder = table.metadata().clone().into_builder(Some(current.clone()));
    for u in updates {
        builder = u.apply(builder).map_err(LakeError::table(name))?;
    }
    let metadata = builder.build().map_err(LakeError::table(name))?.metadata;
    let location = MetadataLocation::from_str(&current)
        .map_err(LakeError::table(name))?
        .with_next_version()
        .with_new_metadata(&metadata);
    metadata.write_to(table.file_io(), &location).await.map_err(LakeError::table(name))?;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .map_err(|e| failed(format!("{url}: {e}")))?
        .busy_timeout(TIMEOUT)
        .connect()
        .await
        .map_err(|e| failed(format!("{url}: {e}")))?;
    // The crate's SQL catalog swaps the location by the same statement.
    let swapped = sqlx::query(
        "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ?
         WHERE catalog_name = ? AND table_name = ? AND table_namespace = ?
           AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = ?",
    )
    .bind(location.to_string())
    .bind(&current)
    .bind(CATALOG_NAME)
    .bind(name)
    .bind(ident.namespace().join("."))
    .bind(&current)
    .execute(&mut conn)
    .await
    .map_err(|e| failed(format!("{url}: {e}")))?
    .rows_affected();
    Ok(if swapped == 1 { Outcome::Committed } else { Outcome::Conflict })
}

async fn commit_rest(
    uri: &str,
    warehouse: &str,
    properties: &std::collections::HashMap<String, String>,
    ident: &TableIdent,
    requirements: &[TableRequirement],
    updates: &[TableUpdate],
) -> Result<Outcome, LakeError> {
    let table = ident.to_string();
    let failed = |reason: String| LakeError::Commit { table: table.clone(), reason };
    if properties.contains_key("credential") {
        return Err(failed(
            "the REST catalog is configured with OAuth2 client credentials (`credential`), which this \
             commit does not obtain tokens for: give a `token` instead"
                .into(),
        ));
    }
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in properties.iter().filter_map(|(k, v)| Some((k.strip_prefix("header.")?, v))) {
        let (Ok(k), Ok(v)) =
            (reqwest::header::HeaderName::from_str(k), reqwest::header::HeaderValue::from_str(v))
        else {
            return Err(failed(format!("the REST catalog header {k:?} is not a valid HTTP header")));
        };
        headers.insert(k, v);
    }
    if let Some(token) = properties.get("token") {
        let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| failed("the REST catalog token is not a valid HTTP header value".into()))?;
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .default_headers(headers)
        .build()
        .map_err(|e| failed(e.to_string()))?;
    // The server's settings: the base URL and the path prefix it wants (GET /v1/config).
    let config: serde_json::Value = client
        .get(format!("{}/v1/config", uri.trim_end_matches('/')))
        .query(&[("warehouse", warehouse)])
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| failed(format!("reading the catalog's configuration: {e}")))?
        .json()
        .await
        .map_err(|e| failed(format!("reading the catalog's configuration: {e}")))?;
    let setting = |key: &str| {
        config["overrides"][key]
            .as_str()
            .or(properties.get(key).map(String::as_str))
            .or(config["defaults"][key].as_str())
            .map(str::to_string)
    };
    let base = setting("uri").unwrap_or_else(|| uri.to_string());
    let mut url = format!("{}/v1/", base.trim_end_matches('/'));
    if let Some(prefix) = setting("prefix") {
        url.push_str(&prefix);
        url.push('/');
    }
    url.push_str(&format!("namespaces/{}/tables/{}", ident.namespace().to_url_string(), ident.name()));
    let body = serde_json::json!({
        "identifier": {"namespace": ident.namespace().as_ref(), "name": ident.name()},
        "requirements": requirements,
        "updates": updates,
    });
    let answer = match client.post(&url).json(&body).send().await {
        Ok(a) => a,
        Err(e) if e.is_connect() => return Err(failed(format!("POST {url}: {e}"))),
        // Sent but unanswered: the server may have applied it.
        Err(e) => return Ok(Outcome::Unknown(format!("POST {url}: {e}"))),
    };
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    match status.as_u16() {
        200..=299 => Ok(Outcome::Committed),
        409 => Ok(Outcome::Conflict),
        500..=599 => Ok(Outcome::Unknown(format!("POST {url}: {status}: {text}"))),
        _ => Err(failed(format!("POST {url}: {status}: {text}"))),
    }
}
