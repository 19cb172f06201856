//! What the reader asks the source database through an ordinary connection: start-up checks,
//! the publication, the slot's state, and table shapes from the catalog.

use crate::error::CdcError;
use crate::event::{Column, TableShape};
use crate::pgoutput::Relation;
use crate::types::ColumnType;
use rainbow_schemas::wire::Lsn;
use sqlx::PgPool;

/// Refuses to start unless the server can do logical decoding for this role.
pub async fn check_server(pool: &PgPool) -> Result<(), CdcError> {
    let wal_level: String = sqlx::query_scalar("SELECT current_setting('wal_level')").fetch_one(pool).await?;
    let (role, replication): (String, bool) = sqlx::query_as(
        "SELECT rolname::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(pool)
    .await?;
    check_settings(&wal_level, &role, replication)
}

/// The decision of [`check_server`], apart from the queries.
pub fn check_settings(wal_level: &str, role: &str, replication: bool) -> Result<(), CdcError> {
    if wal_level != "logical" {
        return Err(CdcError::WalLevel(wal_level.to_string()));
    }
    if !replication {
        return Err(CdcError::NoReplicationPermission(role.to_string()));
    }
    Ok(())
}

/// Checks that every table of the include list exists; names the missing ones.
pub async fn check_tables(pool: &PgPool, tables: &[(String, String)]) -> Result<(), CdcError> {
    let mut missing = Vec::new();
    for (schema, table) in tables {
        let found: Option<String> =
            sqlx::query_scalar("SELECT to_regclass(format('%I.%I', $1::text, $2::text))::text")
                .bind(schema)
                .bind(table)
                .fetch_one(pool)
                .await?;
        if found.is_none() {
            missing.push(format!("{schema}.{table}"));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CdcError::UnknownTables(missing))
    }
}

/// Creates the publication for exactly `tables`, or makes an existing one publish exactly them
/// (Debezium's `publication.autocreate.mode=filtered`).
pub async fn ensure_publication(
    pool: &PgPool,
    name: &str,
    tables: &[(String, String)],
) -> Result<(), CdcError> {
    let list = tables
        .iter()
        .map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t)))
        .collect::<Vec<_>>()
        .join(", ");
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
        .bind(name)
        .fetch_one(pool)
        .await?;
    if !exists {
        sqlx::query(&format!("CREATE PUBLICATION {} FOR TABLE {list}", quote_ident(name)))
            .execute(pool)
            .await?;
        tracing::info!(publication = name, tables = %list, "created the publication");
        return Ok(());
    }
    let mut published: Vec<(String, String)> = sqlx::query_as(
        "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    published.sort();
    let mut wanted = tables.to_vec();
    wanted.sort();
    if published != wanted {
        sqlx::query(&format!("ALTER PUBLICATION {} SET TABLE {list}", quote_ident(name)))
            .execute(pool)
            .await?;
        tracing::info!(publication = name, tables = %list, "the publication now publishes the include list");
    }
    Ok(())
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub database: Option<String>,
    pub plugin: Option<String>,
    pub active_pid: Option<i32>,
    pub confirmed_flush: Option<Lsn>,
}

pub async fn slot_state(pool: &PgPool, slot: &str) -> Result<Option<SlotState>, CdcError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        database: Option<String>,
        plugin: Option<String>,
        active_pid: Option<i32>,
        confirmed: Option<String>,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT database::text AS database, plugin::text AS plugin, active_pid, confirmed_flush_lsn::text AS confirmed \
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| SlotState {
        database: r.database,
        plugin: r.plugin,
        active_pid: r.active_pid,
        confirmed_flush: r.confirmed.and_then(|c| c.parse().ok()),
    }))
}

/// WAL the slot keeps from being recycled, and how far its confirmed position trails the WAL.
pub async fn slot_lag(pool: &PgPool, slot: &str) -> Result<Option<(i64, i64)>, CdcError> {
    Ok(sqlx::query_as(
        "SELECT COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8, \
                COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::int8 \
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await?)
}

/// The server's WAL position up to which every commit is durable: where a reader that has
/// received that far has seen every transaction committed before now.
pub async fn durable_wal_position(pool: &PgPool) -> Result<Lsn, CdcError> {
    let at: i64 = sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                ELSE pg_current_wal_flush_lsn() END, '0/0')::int8",
    )
    .fetch_one(pool)
    .await?;
    Ok(Lsn(at.max(0) as u64))
}

/// The catalog's view of a table's columns: (name, type oid, type modifier, not null, position in
/// the primary key).
async fn catalog_columns(pool: &PgPool, schema: &str, table: &str) -> Result<Vec<CatalogColumn>, CdcError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        name: String,
        type_oid: i64,
        type_modifier: i32,
        not_null: bool,
        key_position: Option<i32>,
        default_expr: Option<String>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT a.attname::text AS name, a.atttypid::int8 AS type_oid, a.atttypmod AS type_modifier, \
                a.attnotnull AS not_null, array_position(i.indkey::int2[], a.attnum)::int4 AS key_position, \
                pg_get_expr(d.adbin, d.adrelid) AS default_expr \
         FROM pg_attribute a \
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary \
         WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
           AND a.attgenerated = '' \
         ORDER BY a.attnum",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| CatalogColumn {
            default: r
                .default_expr
                .as_deref()
                .and_then(|e| column_default(e, ColumnType::from_pg(r.type_oid as u32, r.type_modifier))),
            name: r.name,
            type_oid: r.type_oid as u32,
            type_modifier: r.type_modifier,
            not_null: r.not_null,
            key_position: r.key_position,
        })
        .collect())
}

struct CatalogColumn {
    name: String,
    type_oid: u32,
    type_modifier: i32,
    not_null: bool,
    key_position: Option<i32>,
    default: Option<String>,
}

/// A column default as Debezium shows it: the constant of a literal default, else (a function
/// such as `now()` or `nextval(..)`) the type's zero value, as Debezium's
/// PostgresDefaultValueConverter does (`1970-01-01T00:00:00.000000Z` for a timestamptz).
pub fn column_default(expr: &str, ty: ColumnType) -> Option<String> {
    if let Some(literal) = default_literal(expr) {
        return Some(literal);
    }
    if !expr.contains('(') {
        return None;
    }
    let zero = match ty {
        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => "0",
        ColumnType::Float32 | ColumnType::Float64 => "0",
        ColumnType::Decimal { .. } | ColumnType::VariableDecimal => "0",
        ColumnType::Date => "1970-01-01",
        ColumnType::Timestamp { .. } => "1970-01-01 00:00:00",
        ColumnType::TimestampTz => "1970-01-01 00:00:00+00",
        ColumnType::Uuid => "00000000-0000-0000-0000-000000000000",
        ColumnType::Bool | ColumnType::Text | ColumnType::Bytea | ColumnType::Json => return None,
    };
    Some(zero.to_string())
}

/// The constant of a column default expression as PostgreSQL prints it (`42`, `'none'::character
/// varying`, `false`), or `None` for anything computed (`now()`, sequences).
pub fn default_literal(expr: &str) -> Option<String> {
    let mut e = expr.trim();
    loop {
        // Strip a trailing cast outside quotes: 'x'::text, (0)::numeric.
        let in_quotes_end = e.rfind('\'').unwrap_or(0);
        match e.rfind("::") {
            Some(i) if i > in_quotes_end || !e.starts_with('\'') => e = e[..i].trim(),
            _ => break,
        }
    }
    while let Some(inner) = e.strip_prefix('(').and_then(|x| x.strip_suffix(')')) {
        e = inner.trim();
    }
    if let Some(quoted) = e.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
        return Some(quoted.replace("''", "'"));
    }
    if e == "true" || e == "false" || e.parse::<f64>().is_ok() {
        return Some(e.to_string());
    }
    None
}

fn key_of(columns: &[CatalogColumn], names: &[String]) -> Vec<usize> {
    let mut key: Vec<(i32, usize)> = columns
        .iter()
        .filter_map(|c| c.key_position.map(|p| (p, names.iter().position(|n| *n == c.name))))
        .filter_map(|(p, i)| i.map(|i| (p, i)))
        .collect();
    key.sort();
    key.into_iter().map(|(_, i)| i).collect()
}

/// A table's shape from the catalog (the snapshot reads columns in this order).
pub async fn table_shape(pool: &PgPool, schema: &str, table: &str) -> Result<TableShape, CdcError> {
    let columns = catalog_columns(pool, schema, table).await?;
    if columns.is_empty() {
        return Err(CdcError::UnknownTables(vec![format!("{schema}.{table}")]));
    }
    let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    Ok(TableShape {
        schema: schema.to_string(),
        name: table.to_string(),
        key: key_of(&columns, &names),
        columns: columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                ty: ColumnType::from_pg(c.type_oid, c.type_modifier),
                optional: !c.not_null,
                default: c.default.clone(),
            })
            .collect(),
    })
}

/// A table's shape for decoding a Relation message: the message's columns (their order and types
/// are what the rows carry), with nullability and the primary key from the catalog. Columns the
/// catalog no longer has (dropped since) are optional and not part of the key.
pub async fn relation_shape(pool: &PgPool, relation: &Relation) -> Result<TableShape, CdcError> {
    let catalog = catalog_columns(pool, &relation.namespace, &relation.name).await?;
    let names: Vec<String> = relation.columns.iter().map(|c| c.name.clone()).collect();
    Ok(TableShape {
        schema: relation.namespace.clone(),
        name: relation.name.clone(),
        key: key_of(&catalog, &names),
        columns: relation
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                ty: ColumnType::from_pg(c.type_oid, c.type_modifier),
                optional: !catalog.iter().any(|k| k.name == c.name && k.not_null),
                default: catalog.iter().find(|k| k.name == c.name).and_then(|k| k.default.clone()),
            })
            .collect(),
    })
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::{check_settings, column_default, default_literal};
    use crate::types::ColumnType;

    #[test]
    fn function_defaults_become_the_zero_value() {
        assert_eq!(
            column_default("now()", ColumnType::TimestampTz).as_deref(),
            Some("1970-01-01 00:00:00+00")
        );
        assert_eq!(column_default("nextval('s'::regclass)", ColumnType::Int64).as_deref(), Some("0"));
        assert_eq!(column_default("'x'::text", ColumnType::Text).as_deref(), Some("x"));
        assert_eq!(column_default("gen_random_text()", ColumnType::Text), None);
    }

    #[test]
    fn server_settings_are_checked_with_clear_errors() {
        check_settings("logical", "rainbow", true).unwrap();
        let err = check_settings("replica", "rainbow", true).unwrap_err().to_string();
        assert!(err.contains("wal_level=replica") && err.contains("wal_level=logical"), "{err}");
        let err = check_settings("logical", "app", false).unwrap_err().to_string();
        assert!(err.contains("ALTER ROLE app REPLICATION"), "{err}");
    }

    #[test]
    fn constant_defaults_only() {
        assert_eq!(default_literal("42").as_deref(), Some("42"));
        assert_eq!(default_literal("'none'::character varying").as_deref(), Some("none"));
        assert_eq!(default_literal("'it''s'::text").as_deref(), Some("it's"));
        assert_eq!(default_literal("'a::b'::text").as_deref(), Some("a::b"));
        assert_eq!(default_literal("false").as_deref(), Some("false"));
        assert_eq!(default_literal("(0)::numeric").as_deref(), Some("0"));
        assert_eq!(default_literal("'-1'::integer").as_deref(), Some("-1"));
        assert_eq!(default_literal("now()"), None);
        assert_eq!(default_literal("nextval('t_id_seq'::regclass)"), None);
    }
}
