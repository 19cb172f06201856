//! The warehouse in ClickHouse: DDL of every output table and dashboard view, and a client
//! factory that adapts to the server.
//!
//! The SQL lives in `schemas/clickhouse/*.sql`, with `{db}` standing for the database name. It is
//! kept within what ClickHouse 18.16 (the local stack) and current ClickHouse (chdb in the test
//! suite) both accept; see the header of `01_dimensions.sql`.

use crate::shape::WarehouseRow;
use clickhouse::Client;
use std::future::Future;
use std::time::Duration;

/// How long one call to ClickHouse may take before it counts as failed: a server that hangs
/// (stopped, overloaded) must not block its caller for ever.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the probes of [`Warehouse::connect`] may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `call`, failing with [`clickhouse::error::Error::TimedOut`] after `limit`.
pub async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, clickhouse::error::Error>>,
) -> Result<T, clickhouse::error::Error> {
    tokio::time::timeout(limit, call).await.unwrap_or(Err(clickhouse::error::Error::TimedOut))
}

/// ClickHouse's error codes that no retry can fix: the statement or the data is wrong for the
/// schema (an unknown table or column, a type or parse error, a syntax error).
const PERMANENT_CODES: [u32; 14] = [6, 16, 26, 27, 36, 38, 41, 44, 47, 53, 60, 62, 81, 117];

/// Whether trying again later may succeed: the network, a timeout, or a server-side condition
/// that passes (memory, too many parts, shutting down); not a statement or data the server
/// refuses for what they are.
pub fn is_transient(e: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error;
    match e {
        Error::Network(_) | Error::TimedOut => true,
        Error::BadResponse(text) => {
            let code = text
                .split("Code: ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u32>().ok());
            !code.is_some_and(|c| PERMANENT_CODES.contains(&c))
        }
        _ => false,
    }
}

/// The DDL files in the order they must run (views last: they reference the tables).
pub const DDL_FILES: [(&str, &str); 4] = [
    ("01_dimensions.sql", include_str!("../clickhouse/01_dimensions.sql")),
    ("02_facts.sql", include_str!("../clickhouse/02_facts.sql")),
    ("03_aggregates.sql", include_str!("../clickhouse/03_aggregates.sql")),
    ("04_views.sql", include_str!("../clickhouse/04_views.sql")),
];

/// The six dashboard views, one per seed chart.
pub const DASHBOARD_VIEWS: [&str; 6] = [
    "v_total_sales",
    "v_sales_by_day_of_week",
    "v_top_sellers",
    "v_top_products_by_category",
    "v_payment_methods",
    "v_customer_ranking",
];

/// Errors talking to ClickHouse, with the statement or step that failed.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("database name {0:?} is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*)")]
    BadDatabaseName(String),
    #[error("ClickHouse at {url} did not answer `SELECT version()`: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("ClickHouse rejected statement {index} of {file}: {source}\n{statement}")]
    Statement {
        file: &'static str,
        index: usize,
        statement: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("reading {table} from ClickHouse: {source}")]
    Read {
        table: String,
        #[source]
        source: clickhouse::error::Error,
    },
}

impl WarehouseError {
    /// Whether trying again later may succeed (see [`is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            WarehouseError::BadDatabaseName(_) => false,
            WarehouseError::Unreachable { source, .. }
            | WarehouseError::Statement { source, .. }
            | WarehouseError::Read { source, .. } => is_transient(source),
        }
    }
}

/// Where and how to reach ClickHouse.
#[derive(Debug, Clone)]
pub struct Connection {
    pub url: String,
    pub user: String,
    pub password: String,
    pub database: String,
}

/// A client plus what was learnt about the server at connect time.
#[derive(Clone)]
pub struct Warehouse {
    pub client: Client,
    pub server_version: String,
    /// Whether rows are validated against the table schema (RowBinaryWithNamesAndTypes). Old
    /// servers (18.16) lack that format; there the client sends plain RowBinary, so the row types
    /// of [`crate::shape`] must match the DDL column order exactly (a test checks each one).
    pub validation: bool,
}

impl std::fmt::Debug for Warehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warehouse")
            .field("server_version", &self.server_version)
            .field("validation", &self.validation)
            .finish()
    }
}

/// Splits a DDL file into statements with `{db}` replaced. Comment lines are dropped; statements
/// end with `;` at the end of a line.
pub fn statements(sql: &str, database: &str) -> Result<Vec<String>, WarehouseError> {
    if !is_identifier(database) {
        return Err(WarehouseError::BadDatabaseName(database.to_string()));
    }
    let body: String =
        sql.lines().filter(|l| !l.trim_start().starts_with("--")).map(|l| format!("{l}\n")).collect();
    Ok(body
        .split(";\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.replace("{db}", database))
        .collect())
}

/// Whether `s` is a plain SQL identifier (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Warehouse {
    /// Connects and probes the server: its version, and whether it understands
    /// RowBinaryWithNamesAndTypes (then schema validation of rows is switched on). The database
    /// itself need not exist yet ([`Warehouse::apply_ddl`] creates it).
    pub async fn connect(conn: &Connection) -> Result<Warehouse, WarehouseError> {
        let base = Client::default()
            .with_url(&conn.url)
            .with_user(&conn.user)
            .with_password(&conn.password)
            .with_validation(false);
        let unreachable = |source| WarehouseError::Unreachable { url: conn.url.clone(), source };
        let server_version: String = bounded(CONNECT_TIMEOUT, base.query("SELECT version()").fetch_one())
            .await
            .map_err(unreachable)?;
        let probe = base.query("SELECT 1 FORMAT RowBinaryWithNamesAndTypes");
        let validation = bounded(CONNECT_TIMEOUT, probe.execute()).await.is_ok();
        let client = base.with_database(&conn.database).with_validation(validation);
        Ok(Warehouse { client, server_version, validation })
    }

    /// Creates the database, every output table and every view, if missing. Idempotent.
    pub async fn apply_ddl(&self, database: &str) -> Result<usize, WarehouseError> {
        // DDL runs without a current database: the first statement creates it.
        let client = self.client.clone().with_database("default");
        let mut applied = 0;
        for (file, sql) in DDL_FILES {
            for (index, statement) in statements(sql, database)?.into_iter().enumerate() {
                bounded(CALL_TIMEOUT, client.query(&statement).execute()).await.map_err(|source| {
                    WarehouseError::Statement { file, index: index + 1, statement, source }
                })?;
                applied += 1;
            }
        }
        Ok(applied)
    }

    /// Every row of an output table as ReplacingMergeTree leaves it (`FINAL`: per key the row
    /// of the highest version), in the table's key order (the order the replay writes).
    pub async fn read_final<R: WarehouseRow>(&self) -> Result<Vec<R>, WarehouseError> {
        let t = R::TABLE;
        let query =
            self.client.query(&format!("SELECT ?fields FROM {} FINAL ORDER BY {}", t.name, t.key.join(", ")));
        bounded(CALL_TIMEOUT, query.fetch_all::<R>())
            .await
            .map_err(|source| WarehouseError::Read { table: t.name.to_string(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::TABLES;

    #[test]
    fn every_output_table_and_view_has_ddl() {
        let all: Vec<String> = DDL_FILES.iter().flat_map(|(_, sql)| statements(sql, "rb").unwrap()).collect();
        for name in TABLES.iter().map(|t| t.name) {
            let head = format!("CREATE TABLE IF NOT EXISTS rb.{name} (");
            assert_eq!(all.iter().filter(|s| s.starts_with(&head)).count(), 1, "{name}");
        }
        for name in DASHBOARD_VIEWS {
            let head = format!("CREATE VIEW IF NOT EXISTS rb.{name} AS");
            assert_eq!(all.iter().filter(|s| s.starts_with(&head)).count(), 1, "{name}");
        }
        // database + 13 tables + 6 views
        assert_eq!(all.len(), 1 + TABLES.len() + DASHBOARD_VIEWS.len());
        assert!(all.iter().all(|s| !s.contains("{db}") && !s.contains(';')));
    }

    #[test]
    fn only_errors_that_may_pass_are_transient() {
        use clickhouse::error::Error;
        assert!(is_transient(&Error::TimedOut));
        assert!(is_transient(&Error::BadResponse("Code: 252. DB::Exception: Too many parts".into())));
        assert!(!is_transient(&Error::BadResponse(
            "Code: 60. DB::Exception: Table rb.x doesn't exist".into()
        )));
        assert!(!is_transient(&Error::NotEnoughData));
    }

    #[test]
    fn refuses_a_database_name_that_is_not_an_identifier() {
        assert!(matches!(statements("SELECT 1;\n", "rb; DROP"), Err(WarehouseError::BadDatabaseName(_))));
    }
}
