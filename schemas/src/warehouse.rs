//! The warehouse in ClickHouse: versioned migrations of every output table and dashboard view, and
//! a client factory that adapts to the server.
//!
//! The SQL lives in `schemas/clickhouse/NN_name.sql` ([`MIGRATIONS`]), with `{db}` standing for the
//! database name. It is kept within what ClickHouse 18.16 (the local stack) and current ClickHouse
//! (chdb in the test suite) both accept; see the header of `01_dimensions.sql`.
//! [`Warehouse::migrate`] applies the migrations a database lacks and records them in
//! `{db}.rainbow_migrations`, as sqlx does for PostgreSQL in `_sqlx_migrations`.

use crate::shape::WarehouseRow;
use clickhouse::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as Pool;
use hyper_util::rt::TokioExecutor;
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

/// Every warehouse migration, in the order they run: the files `schemas/clickhouse/NN_name.sql`
/// (version `NN`, name `name`). Versions 1 to 4 are the baseline (the DDL as it was before
/// migrations existed: dimensions, facts, aggregates, views); each later file changes an existing
/// warehouse. A released file never changes (its checksum is recorded where it was applied): a
/// change is a new file with the next version, listed here (a test checks the directory and this
/// list agree).
pub const MIGRATIONS: [Migration; 5] = [
    Migration { file: "01_dimensions.sql", sql: include_str!("../clickhouse/01_dimensions.sql") },
    Migration { file: "02_facts.sql", sql: include_str!("../clickhouse/02_facts.sql") },
    Migration { file: "03_aggregates.sql", sql: include_str!("../clickhouse/03_aggregates.sql") },
    Migration { file: "04_views.sql", sql: include_str!("../clickhouse/04_views.sql") },
    Migration {
        file: "05_total_sales_orders.sql",
        sql: include_str!("../clickhouse/05_total_sales_orders.sql"),
    },
];

/// How many of [`MIGRATIONS`] are the baseline: the DDL of warehouses created before migrations
/// existed, which [`Warehouse::migrate`] adopts.
pub const BASELINE: usize = 4;

/// The table, in the warehouse database, that records every migration applied to it.
pub const MIGRATIONS_TABLE: &str = "rainbow_migrations";

/// The DDL of [`MIGRATIONS_TABLE`]: one row per applied migration (more than one if two runners
/// raced; they agree). Plain MergeTree: rows are only ever added.
pub const MIGRATIONS_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS {db}.rainbow_migrations (
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime,
    applied_by String
) ENGINE = MergeTree() ORDER BY version";

/// One versioned change of the warehouse: a file of `schemas/clickhouse/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// `NN_name.sql`.
    pub file: &'static str,
    /// The SQL, `{db}` standing for the database (see [`statements`]).
    pub sql: &'static str,
}

impl Migration {
    /// The version: the number before the first `_` of the file name.
    pub fn version(&self) -> u32 {
        parse_file_name(self.file).expect("file names of MIGRATIONS are NN_name.sql (tested)").0
    }

    /// The name: the file name without its version and `.sql`.
    pub fn name(&self) -> &'static str {
        parse_file_name(self.file).expect("file names of MIGRATIONS are NN_name.sql (tested)").1
    }

    /// SHA-256 (hex) of the statements as they run, before `{db}` is replaced: comments and blank
    /// lines may change without changing the checksum; anything that runs may not.
    pub fn checksum(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(split(self.sql).join(";\n").as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `NN_name.sql` as (NN, name): NN one or more digits, name `[a-z0-9_]+`.
pub fn parse_file_name(file: &str) -> Option<(u32, &str)> {
    let (number, name) = file.strip_suffix(".sql")?.split_once('_')?;
    let valid_name =
        !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit()) || !valid_name {
        return None;
    }
    Some((number.parse().ok()?, name))
}

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
    #[error(
        "warehouse migration {version} ({name}) was applied to database {database} with checksum \
         {recorded}, but schemas/clickhouse/{file} of this build has checksum {expected}: a migration \
         that has been applied must never change. Restore the file as released and put the change in \
         a new migration; if the database was migrated by another build of Rainbow, migrate it with \
         that build, or drop the database and run `rainbow migrate` again (then replay or reprocess to \
         refill it)"
    )]
    ChecksumMismatch {
        database: String,
        version: u32,
        name: String,
        file: &'static str,
        recorded: String,
        expected: String,
    },
    #[error(
        "database {database} has warehouse migration {version} ({name}) applied, which this build of \
         Rainbow does not know (it knows 1 to {known}): the warehouse was migrated by a newer Rainbow. \
         Run that version, or drop the database and run `rainbow migrate` with this one"
    )]
    UnknownMigration { database: String, version: u32, name: String, known: u32 },
    #[error(
        "table {database}.{table} does not have the columns this build writes after the migrations \
         ran:\n  found:    {found}\n  expected: {expected}\nThe warehouse was changed by hand or made by a \
         Rainbow older than the migrations; rebuild it (drop the database, `rainbow migrate`, replay)"
    )]
    Shape { database: String, table: &'static str, found: String, expected: String },
}

impl WarehouseError {
    /// Whether trying again later may succeed (see [`is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            WarehouseError::BadDatabaseName(_)
            | WarehouseError::ChecksumMismatch { .. }
            | WarehouseError::UnknownMigration { .. }
            | WarehouseError::Shape { .. } => false,
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
    Ok(split(sql).into_iter().map(|s| s.replace("{db}", database)).collect())
}

/// The statements of a DDL file, `{db}` left in place (see [`statements`]).
fn split(sql: &str) -> Vec<String> {
    let body: String =
        sql.lines().filter(|l| !l.trim_start().starts_with("--")).map(|l| format!("{l}\n")).collect();
    body.split(";\n").map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// A column change that ClickHouse 18.16 cannot make conditional (it has no `ADD COLUMN IF NOT
/// EXISTS` / `DROP COLUMN IF EXISTS`): `ALTER TABLE db.table ADD|DROP COLUMN name …`, one action
/// per statement. [`Warehouse::migrate`] runs it only if the column is missing (ADD) or present
/// (DROP), which makes it re-runnable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnChange {
    pub table: String,
    pub column: String,
    pub add: bool,
}

impl ColumnChange {
    /// The change `statement` makes, if it is a single `ADD COLUMN` or `DROP COLUMN` (keywords in
    /// any case; an `IF [NOT] EXISTS` form is left to the server).
    pub fn of(statement: &str) -> Option<ColumnChange> {
        let words: Vec<&str> = statement.split_whitespace().take(6).collect();
        let [alter, table_kw, table, action, column_kw, column] = words[..] else { return None };
        let is = |w: &str, k: &str| w.eq_ignore_ascii_case(k);
        if !is(alter, "ALTER") || !is(table_kw, "TABLE") || !is(column_kw, "COLUMN") || is(column, "IF") {
            return None;
        }
        let add = match action {
            a if is(a, "ADD") => true,
            a if is(a, "DROP") => false,
            _ => return None,
        };
        let table = table.rsplit_once('.').map_or(table, |(_, t)| t);
        let column = column.trim_end_matches(',');
        Some(ColumnChange { table: table.to_string(), column: column.to_string(), add })
    }
}

/// What [`Warehouse::migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// The database held a warehouse made before migrations existed (tables, no
    /// [`MIGRATIONS_TABLE`]); its objects were kept and the baseline recorded over them.
    pub adopted: bool,
    /// The migrations applied now, as (version, name), in order.
    pub applied: Vec<(u32, &'static str)>,
    /// The statements run now.
    pub statements: usize,
}

/// Whether `s` is a plain SQL identifier (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Runs one DDL statement, naming it (file, position) if ClickHouse rejects it.
async fn execute(
    client: &Client,
    file: &'static str,
    index: usize,
    statement: String,
) -> Result<(), WarehouseError> {
    bounded(CALL_TIMEOUT, client.query(&statement).execute())
        .await
        .map_err(|source| WarehouseError::Statement { file, index, statement, source })
}

/// How long an idle pooled connection is kept: below ClickHouse's `keep_alive_timeout` (3 s), so
/// the client never reuses a connection the server is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client whose HTTP transport is the `clickhouse` crate's default (TCP keepalive, the pool's
/// idle timeout) with Nagle's algorithm off. An insert streams its body in chunks; with Nagle on,
/// the last chunk could wait for the server's delayed acknowledgement, about 40 ms, and the
/// processor's flush inserts up to 13 tables one after another (measured, 100 inserts of 3 rows
/// in a row on an idle server: p50 12.7 ms, p90 55.8 ms with Nagle; 12.4 and 14.7 without).
fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::with_http_client(
        Pool::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE_TIMEOUT).build(connector),
    )
}

impl Warehouse {
    /// Connects and probes the server: its version, and whether it understands
    /// RowBinaryWithNamesAndTypes (then schema validation of rows is switched on). The database
    /// itself need not exist yet ([`Warehouse::migrate`] creates it).
    pub async fn connect(conn: &Connection) -> Result<Warehouse, WarehouseError> {
        let base = client()
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

    /// Brings the warehouse in `database` up to date: [`Warehouse::migrate`] (the processor calls
    /// it by this name when it starts).
    pub async fn apply_ddl(&self, database: &str) -> Result<MigrationReport, WarehouseError> {
        self.migrate(database).await
    }

    /// Brings the warehouse in `database` up to date, keeping its data: creates the database and
    /// [`MIGRATIONS_TABLE`] if missing, applies every migration of [`MIGRATIONS`] not recorded
    /// there, in version order, and records each (version, name, checksum, time, Rainbow
    /// version) once its last statement has run. Then checks that every output table has the
    /// columns of [`crate::shape`], which the processor and the replay write.
    ///
    /// * A database made before migrations existed (tables of the baseline, no
    ///   [`MIGRATIONS_TABLE`]) is adopted: the baseline's `CREATE … IF NOT EXISTS` keep every
    ///   object that is there, create what is missing, and are recorded; later migrations then
    ///   apply as usual. Nothing is dropped or recreated except what a migration says.
    /// * A recorded migration whose checksum differs from this build's file is an error
    ///   ([`WarehouseError::ChecksumMismatch`]), as is a recorded version this build does not know
    ///   ([`WarehouseError::UnknownMigration`], a newer Rainbow migrated it); nothing is applied.
    /// * ClickHouse has no transactions: a migration interrupted half-way (a crash, a lost
    ///   connection) is not recorded and runs again, from its first statement, on the next call.
    ///   Every statement of every migration must therefore be re-runnable: `CREATE … IF NOT
    ///   EXISTS`; a changed view as `DROP TABLE IF EXISTS` then `CREATE VIEW` (18.16 has neither
    ///   `CREATE OR REPLACE VIEW` nor `DROP VIEW`; the view is missing between the two); a column
    ///   as one `ALTER TABLE … ADD|DROP COLUMN` per statement, which this runner skips when the
    ///   column is already there (ADD) or gone (DROP), 18.16 having no `IF [NOT] EXISTS` there
    ///   ([`ColumnChange`]); a backfill only into a ReplacingMergeTree with the same key and
    ///   version, so that a second run collapses into the first. A unit test holds the files to
    ///   the forms it knows.
    /// * Two runners at once (`rainbow migrate` and a starting processor) may both apply a
    ///   migration; its statements being re-runnable, the worst case is one of them failing on a
    ///   view the other just created, and a duplicate record, which is harmless.
    pub async fn migrate(&self, database: &str) -> Result<MigrationReport, WarehouseError> {
        if !is_identifier(database) {
            return Err(WarehouseError::BadDatabaseName(database.to_string()));
        }
        // DDL runs without a current database: the first statement creates it.
        let client = self.client.clone().with_database("default");
        let read = |table: &str| {
            let table = table.to_string();
            move |source| WarehouseError::Read { table, source }
        };
        let names: Vec<String> = bounded(
            CALL_TIMEOUT,
            client.query("SELECT name FROM system.tables WHERE database = ?").bind(database).fetch_all(),
        )
        .await
        .map_err(read("system.tables"))?;
        let mut baseline_objects = crate::shape::TABLES.iter().map(|t| t.name).chain(DASHBOARD_VIEWS);
        let adopted = !names.iter().any(|n| n == MIGRATIONS_TABLE)
            && baseline_objects.any(|o| names.iter().any(|n| n == o));

        let mut report = MigrationReport { adopted, ..Default::default() };
        let setup = [
            format!("CREATE DATABASE IF NOT EXISTS {database}"),
            MIGRATIONS_TABLE_DDL.replace("{db}", database),
        ];
        for (index, statement) in setup.into_iter().enumerate() {
            execute(&client, MIGRATIONS_TABLE, index + 1, statement).await?;
        }

        let recorded: Vec<(u32, String, String)> = bounded(
            CALL_TIMEOUT,
            client
                .query(&format!(
                    "SELECT version, name, checksum FROM {database}.{MIGRATIONS_TABLE} ORDER BY version"
                ))
                .fetch_all(),
        )
        .await
        .map_err(read(MIGRATIONS_TABLE))?;
        let known = MIGRATIONS.iter().map(Migration::version).max().unwrap_or(0);
        for (version, name, checksum) in &recorded {
            let Some(m) = MIGRATIONS.iter().find(|m| m.version() == *version) else {
                return Err(WarehouseError::UnknownMigration {
                    database: database.to_string(),
                    version: *version,
                    name: name.clone(),
                    known,
                });
            };
            if *checksum != m.checksum() {
                return Err(WarehouseError::ChecksumMismatch {
                    database: database.to_string(),
                    version: *version,
                    name: name.clone(),
                    file: m.file,
                    recorded: checksum.clone(),
                    expected: m.checksum(),
                });
            }
        }

        for m in MIGRATIONS.iter().filter(|m| !recorded.iter().any(|r| r.0 == m.version())) {
            for (index, statement) in statements(m.sql, database)?.into_iter().enumerate() {
                if let Some(change) = ColumnChange::of(&statement) {
                    let present: u64 = bounded(
                        CALL_TIMEOUT,
                        client
                            .query("SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?")
                            .bind(database)
                            .bind(&change.table)
                            .bind(&change.column)
                            .fetch_one(),
                    )
                    .await
                    .map_err(read("system.columns"))?;
                    if (present > 0) == change.add {
                        continue;
                    }
                }
                execute(&client, m.file, index + 1, statement).await?;
                report.statements += 1;
            }
            let record = client
                .query(&format!(
                    "INSERT INTO {database}.{MIGRATIONS_TABLE} (version, name, checksum, applied_at, applied_by) \
                     SELECT toUInt32(?), ?, ?, now(), ?"
                ))
                .bind(m.version())
                .bind(m.name())
                .bind(m.checksum())
                .bind(concat!("rainbow ", env!("CARGO_PKG_VERSION")));
            bounded(CALL_TIMEOUT, record.execute()).await.map_err(read(MIGRATIONS_TABLE))?;
            report.applied.push((m.version(), m.name()));
        }

        self.check_shape(database).await?;
        Ok(report)
    }

    /// Whether every output table of `database` has the columns, types and order of
    /// [`crate::shape`] (rows are sent as plain RowBinary to 18.16, by column position).
    async fn check_shape(&self, database: &str) -> Result<(), WarehouseError> {
        let columns: Vec<(String, String, String)> = bounded(
            CALL_TIMEOUT,
            self.client
                .query("SELECT table, name, type FROM system.columns WHERE database = ?")
                .bind(database)
                .fetch_all(),
        )
        .await
        .map_err(|source| WarehouseError::Read { table: "system.columns".into(), source })?;
        for t in crate::shape::TABLES {
            let found: Vec<String> =
                columns.iter().filter(|c| c.0 == t.name).map(|c| format!("{} {}", c.1, c.2)).collect();
            let expected: Vec<String> =
                t.columns.iter().map(|c| format!("{} {}", c.name, c.clickhouse)).collect();
            if found != expected {
                return Err(WarehouseError::Shape {
                    database: database.to_string(),
                    table: t.name,
                    found: found.join(", "),
                    expected: expected.join(", "),
                });
            }
        }
        Ok(())
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

    fn all_statements() -> Vec<String> {
        MIGRATIONS.iter().flat_map(|m| statements(m.sql, "rb").unwrap()).collect()
    }

    #[test]
    fn every_output_table_and_view_has_ddl() {
        let all = all_statements();
        for name in TABLES.iter().map(|t| t.name) {
            let head = format!("CREATE TABLE IF NOT EXISTS rb.{name} (");
            assert_eq!(all.iter().filter(|s| s.starts_with(&head)).count(), 1, "{name}");
        }
        for name in DASHBOARD_VIEWS {
            let heads =
                [format!("CREATE VIEW IF NOT EXISTS rb.{name} AS"), format!("CREATE VIEW rb.{name} AS")];
            assert!(all.iter().any(|s| heads.iter().any(|h| s.starts_with(h))), "{name}");
        }
        // The baseline: database + 13 tables + 6 views.
        let baseline: Vec<String> =
            MIGRATIONS[..BASELINE].iter().flat_map(|m| statements(m.sql, "rb").unwrap()).collect();
        assert_eq!(baseline.len(), 1 + TABLES.len() + DASHBOARD_VIEWS.len());
        assert!(all.iter().all(|s| !s.contains("{db}") && !s.contains(';')));
    }

    #[test]
    fn migrations_are_the_files_of_the_directory_in_version_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/clickhouse");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.file).collect();
        assert_eq!(files, listed, "every file of schemas/clickhouse/ is listed in MIGRATIONS, in order");
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert!(parse_file_name(m.file).is_some(), "{} is NN_name.sql", m.file);
            assert_eq!(m.version() as usize, i + 1, "versions are 1, 2, 3, … without gaps: {}", m.file);
            assert_eq!(std::fs::read_to_string(format!("{dir}/{}", m.file)).unwrap(), m.sql);
        }
        let names: Vec<&str> = MIGRATIONS.iter().map(Migration::name).collect();
        assert_eq!(&names[..BASELINE], ["dimensions", "facts", "aggregates", "views"]);
    }

    #[test]
    fn file_names_parse_into_version_and_name() {
        assert_eq!(parse_file_name("05_total_sales_orders.sql"), Some((5, "total_sales_orders")));
        assert_eq!(parse_file_name("0012_x2.sql"), Some((12, "x2")));
        for bad in ["05-x.sql", "x_05.sql", "05_.sql", "05_x.txt", "_x.sql", "05_Views.sql", "05_a b.sql"] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
        // Versions order by number, not by text.
        let mut v: Vec<u32> =
            ["10_b.sql", "9_a.sql", "011_c.sql"].iter().map(|f| parse_file_name(f).unwrap().0).collect();
        v.sort();
        assert_eq!(v, [9, 10, 11]);
    }

    #[test]
    fn checksums_cover_what_runs_and_ignore_comments() {
        let m = Migration {
            file: "07_x.sql",
            sql: "-- a comment\nCREATE TABLE IF NOT EXISTS {db}.t (a Int32) ENGINE = Log;\n",
        };
        let commented = Migration {
            sql: "-- another comment\n\nCREATE TABLE IF NOT EXISTS {db}.t (a Int32) ENGINE = Log;\n",
            ..m
        };
        let changed = Migration { sql: "CREATE TABLE IF NOT EXISTS {db}.t (a Int64) ENGINE = Log;\n", ..m };
        assert_eq!(m.checksum(), commented.checksum());
        assert_ne!(m.checksum(), changed.checksum());
        assert_eq!(m.checksum().len(), 64);
        // SHA-256 itself (of "abc").
        let abc = Migration { file: "01_abc.sql", sql: "abc" };
        assert_eq!(abc.checksum(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let all: std::collections::BTreeSet<String> = MIGRATIONS.iter().map(Migration::checksum).collect();
        assert_eq!(all.len(), MIGRATIONS.len());
    }

    #[test]
    fn column_changes_are_recognised() {
        assert_eq!(
            ColumnChange::of("ALTER TABLE rb.agg_total_sales ADD COLUMN order_count Int64 DEFAULT 0"),
            Some(ColumnChange { table: "agg_total_sales".into(), column: "order_count".into(), add: true })
        );
        assert_eq!(
            ColumnChange::of("alter table rb.t\n    drop column c"),
            Some(ColumnChange { table: "t".into(), column: "c".into(), add: false })
        );
        assert_eq!(ColumnChange::of("ALTER TABLE rb.t ADD COLUMN IF NOT EXISTS c Int64"), None);
        assert_eq!(ColumnChange::of("ALTER TABLE rb.t MODIFY COLUMN c Int64"), None);
        assert_eq!(ColumnChange::of("CREATE TABLE rb.t (a Int32) ENGINE = Log"), None);
    }

    /// ClickHouse has no transactions: a migration interrupted half-way runs again from its first
    /// statement, so every statement must be one of the forms known to be re-runnable.
    #[test]
    fn every_statement_of_every_migration_is_re_runnable() {
        for m in MIGRATIONS {
            let all = statements(m.sql, "rb").unwrap();
            for (i, s) in all.iter().enumerate() {
                let conditional = [
                    "CREATE DATABASE IF NOT EXISTS ",
                    "CREATE TABLE IF NOT EXISTS ",
                    "CREATE VIEW IF NOT EXISTS ",
                    "DROP TABLE IF EXISTS ",
                ]
                .iter()
                .any(|p| s.starts_with(p));
                let replaced_view =
                    s.strip_prefix("CREATE VIEW ").and_then(|r| r.split_once(' ')).is_some_and(
                        |(name, _)| all[..i].iter().any(|d| *d == format!("DROP TABLE IF EXISTS {name}")),
                    );
                assert!(
                    conditional || replaced_view || ColumnChange::of(s).is_some(),
                    "statement {} of {} is not of a re-runnable form (see Warehouse::migrate):\n{s}",
                    i + 1,
                    m.file
                );
            }
        }
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
