//! The reader's settings: the `[cdc]` section of rainbow.toml (`RAINBOW_CDC__<KEY>`). Names follow
//! the Debezium connector option each one mirrors.

use crate::types::{DecimalHandling, TimePrecision, TypeMapping};
use rainbow_schemas::wire::TopicNaming;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Debezium's `snapshot.mode`, for the modes Rainbow supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Snapshot once, when no snapshot has completed for this slot yet, then stream.
    #[default]
    Initial,
    /// Never snapshot: stream changes from the slot only.
    NoData,
    /// Snapshot when none has completed yet, then stop without streaming.
    InitialOnly,
    /// Snapshot at every start, then stream. A restart re-reads every row.
    Always,
}

use rainbow_schemas::setting::check;
pub use rainbow_schemas::setting::InvalidSetting;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdcConfig {
    /// `topic.prefix`: data topics are `<prefix>.<schema>.<table>`, heartbeats go to
    /// `__debezium-heartbeat.<prefix>`, transaction records to `<prefix>.transaction`.
    pub topic_prefix: String,
    /// `slot.name`: the logical replication slot (created when missing).
    pub slot_name: String,
    /// `publication.name`: created when missing and kept equal to `tables`.
    pub publication_name: String,
    /// `table.include.list`: `schema.table` or bare `table` (schema `public`).
    pub tables: Vec<String>,
    /// Topic per table instead of `<prefix>.<schema>.<table>`, e.g. `"public.orders" = "orders"`
    /// (the seed's bare table names). Tables not listed keep Debezium's name.
    pub topic_map: BTreeMap<String, String>,
    pub snapshot_mode: SnapshotMode,
    /// `value.converter.schemas.enable`: wrap keys and values in `{"schema":..,"payload":..}`.
    pub schemas_enable: bool,
    /// `tombstones.on.delete`: a null-valued record after each delete.
    pub tombstones_on_delete: bool,
    pub decimal_handling_mode: DecimalHandling,
    pub time_precision_mode: TimePrecision,
    /// `provide.transaction.metadata`: BEGIN/END records and the `transaction` block.
    pub provide_transaction_metadata: bool,
    /// `heartbeat.interval.ms`: heartbeat record and slot feedback period; 0 disables heartbeats.
    /// The processor learns from heartbeats that idle partitions have nothing earlier to deliver:
    /// besides these periodic ones, a heartbeat record follows each advance of what Kafka
    /// acknowledged (at most one per 20 ms), so a fact does not wait for a quiet dimension topic.
    pub heartbeat_interval_ms: u64,
    /// `heartbeat.action.query`: SQL run on the source at each heartbeat (empty: none), for
    /// databases whose captured tables are quiet while others write.
    pub heartbeat_action_query: String,
    /// How often the slot is told what Kafka has acknowledged, and the offsets file written.
    pub status_interval_ms: u64,
    /// How long PostgreSQL may leave the reader without an answer before it counts as away (a
    /// frozen server, a connection cut without a word): the replication connection sends
    /// nothing although a keepalive was asked for (with every heartbeat, and after a third of
    /// this time of silence), or a query of the reader's takes longer. The reader then drops
    /// its connections and reconnects with backoff, as after a restart.
    pub server_timeout_ms: u64,
    /// On a stop (SIGTERM, Ctrl-C), how long the reader may read on to deliver every transaction
    /// committed before the stop (up to the server's WAL position at that moment) and announce
    /// it in a last heartbeat; 0 stops at once (the rest waits in the slot for the next start).
    pub drain_on_stop_ms: u64,
    /// Routes a table's records by one column instead of by the whole key: records with equal
    /// values of that column get the same partition number (Kafka's murmur2 of the value's text,
    /// modulo the topic's partitions). The defaults route `orders` by `id` and `orderdetails` by
    /// `order_id`, so an order and its lines have the same partition number in both topics: what
    /// lets processor instances split the fact topics (`processor.instances`). Per-key order is
    /// kept, since the column is part of the key. An empty column (`public.orders=`) restores
    /// Debezium's partitioning by the whole key.
    pub partition_by: BTreeMap<String, String>,
    /// Partitions and replication factor of topics the reader creates.
    pub topic_partitions: i32,
    pub topic_replication_factor: i32,
    /// Directory of the stored offsets (`<slot>.offsets.json`). Default `.rainbow/cdc`; the
    /// `rainbow` binary puts it under its state root instead, `$RAINBOW_HOME/cdc` when
    /// `RAINBOW_HOME` is set (`rainbow::config::state_root`).
    pub offsets_dir: String,
    /// Address of the /metrics endpoint; empty disables it.
    pub metrics_listen: String,
    /// Events sent to Kafka and not yet acknowledged before reading pauses.
    pub max_in_flight: usize,
    /// `signal.data.collection`: the signal table (`schema.table`), whose `execute-snapshot` rows
    /// ask for an incremental snapshot while streaming. Signals are off when it is empty or not
    /// one of `tables`.
    pub signal_table: String,
    /// `incremental.snapshot.chunk.size`: rows per chunk of an incremental snapshot.
    pub incremental_snapshot_chunk_size: usize,
    /// Compression of the producer's batches (`compression.type`): `lz4` (default), `zstd`,
    /// `snappy`, `gzip` or `none`. Transparent to consumers; Debezium envelopes with schemas
    /// repeat their schema in every record, so compression halves the broker's work or better.
    pub compression: String,
}

impl Default for CdcConfig {
    fn default() -> Self {
        CdcConfig {
            topic_prefix: "rainbow".into(),
            slot_name: "rainbow".into(),
            publication_name: "rainbow".into(),
            tables: rainbow_schemas::postgres::SOURCE_TABLES.iter().map(|t| format!("public.{t}")).collect(),
            topic_map: BTreeMap::new(),
            snapshot_mode: SnapshotMode::Initial,
            schemas_enable: true,
            tombstones_on_delete: true,
            decimal_handling_mode: DecimalHandling::Precise,
            time_precision_mode: TimePrecision::Adaptive,
            provide_transaction_metadata: false,
            heartbeat_interval_ms: 1_000,
            heartbeat_action_query: String::new(),
            status_interval_ms: 1_000,
            server_timeout_ms: 30_000,
            drain_on_stop_ms: 10_000,
            partition_by: BTreeMap::from([
                ("public.orders".to_string(), "id".to_string()),
                ("public.orderdetails".to_string(), "order_id".to_string()),
            ]),
            topic_partitions: 3,
            topic_replication_factor: 1,
            offsets_dir: ".rainbow/cdc".into(),
            metrics_listen: "127.0.0.1:9101".into(),
            max_in_flight: 100_000,
            signal_table: format!("public.{}", rainbow_schemas::postgres::SIGNAL_TABLE),
            incremental_snapshot_chunk_size: 1024,
            compression: "lz4".into(),
        }
    }
}

impl CdcConfig {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let topic_part = |s: &str| {
            !s.is_empty()
                && s.len() <= 200
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        check(
            topic_part(&self.topic_prefix),
            "cdc.topic_prefix",
            &self.topic_prefix,
            "letters, digits, '.', '_', '-' (a Kafka topic name part)",
        )?;
        let slot_ok = !self.slot_name.is_empty()
            && self.slot_name.len() <= 63
            && self.slot_name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        check(
            slot_ok,
            "cdc.slot_name",
            &self.slot_name,
            "1-63 characters of a-z, 0-9, '_' (PostgreSQL replication slot rules)",
        )?;
        check(
            rainbow_schemas::warehouse::is_identifier(&self.publication_name),
            "cdc.publication_name",
            &self.publication_name,
            "an identifier ([A-Za-z_][A-Za-z0-9_]*)",
        )?;
        check(!self.tables.is_empty(), "cdc.tables", "[]", "at least one table")?;
        for t in &self.tables {
            check(
                parse_table_name(t).is_some(),
                "cdc.tables",
                t,
                "schema.table or table, each an identifier",
            )?;
        }
        for (table, topic) in &self.topic_map {
            check(parse_table_name(table).is_some(), "cdc.topic_map", table, "keys like public.orders")?;
            check(
                topic_part(topic),
                "cdc.topic_map",
                topic,
                "topic names of letters, digits, '.', '_', '-'",
            )?;
        }
        for (table, column) in &self.partition_by {
            check(parse_table_name(table).is_some(), "cdc.partition_by", table, "keys like public.orders")?;
            check(
                column.is_empty()
                    || parse_table_name(column).is_some_and(|(s, _)| s == "public") && !column.contains('.'),
                "cdc.partition_by",
                column,
                "a column name (an identifier), or empty for the whole key",
            )?;
        }
        check(
            self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms >= 100,
            "cdc.heartbeat_interval_ms",
            self.heartbeat_interval_ms,
            "0 (off) or at least 100 ms",
        )?;
        check(
            (10..=60_000).contains(&self.status_interval_ms),
            "cdc.status_interval_ms",
            self.status_interval_ms,
            "10-60000 ms (below the server's wal_sender_timeout)",
        )?;
        check(
            (3_000..=3_600_000).contains(&self.server_timeout_ms),
            "cdc.server_timeout_ms",
            self.server_timeout_ms,
            "3000-3600000 ms",
        )?;
        check(
            self.drain_on_stop_ms <= 600_000,
            "cdc.drain_on_stop_ms",
            self.drain_on_stop_ms,
            "0 (stop at once) to 600000 ms",
        )?;
        check(
            (1..=10_000).contains(&self.topic_partitions),
            "cdc.topic_partitions",
            self.topic_partitions,
            "1-10000",
        )?;
        check(
            (1..=32).contains(&self.topic_replication_factor),
            "cdc.topic_replication_factor",
            self.topic_replication_factor,
            "1-32",
        )?;
        check(!self.offsets_dir.trim().is_empty(), "cdc.offsets_dir", &self.offsets_dir, "a directory")?;
        check(
            self.metrics_listen.is_empty() || self.metrics_listen.parse::<std::net::SocketAddr>().is_ok(),
            "cdc.metrics_listen",
            &self.metrics_listen,
            "ip:port, or empty to disable",
        )?;
        check(self.max_in_flight >= 1, "cdc.max_in_flight", self.max_in_flight, "at least 1")?;
        check(
            (1..=1_000_000).contains(&self.incremental_snapshot_chunk_size),
            "cdc.incremental_snapshot_chunk_size",
            self.incremental_snapshot_chunk_size,
            "1 to 1000000 rows",
        )?;
        if !self.signal_table.is_empty() {
            check(
                parse_table_name(&self.signal_table).is_some(),
                "cdc.signal_table",
                &self.signal_table,
                "a table name (`schema.table` or `table`), or empty for no signals",
            )?;
        }
        check(
            matches!(self.compression.as_str(), "lz4" | "zstd" | "snappy" | "gzip" | "none"),
            "cdc.compression",
            &self.compression,
            "one of lz4, zstd, snappy, gzip, none",
        )?;
        Ok(())
    }

    /// The wire-format options.
    pub fn type_mapping(&self) -> TypeMapping {
        TypeMapping { decimal: self.decimal_handling_mode, time: self.time_precision_mode }
    }

    /// The include list as `(schema, table)` pairs, in the configured order without repeats.
    pub fn table_names(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for t in &self.tables {
            if let Some(name) = parse_table_name(t) {
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// How the topics are named (the wire contract's one implementation of it).
    pub fn naming(&self) -> TopicNaming {
        TopicNaming::new(&self.topic_prefix, self.topic_map.clone())
    }

    /// The signal table as `(schema, table)`, if signals are on: it is named and captured (one
    /// of `tables`; the reader sees its rows in the stream).
    pub fn signal_table(&self) -> Option<(String, String)> {
        parse_table_name(&self.signal_table)
            .filter(|t| !self.signal_table.is_empty() && self.table_names().contains(t))
    }

    /// The topic of a table's change events.
    pub fn topic_for(&self, schema: &str, table: &str) -> String {
        self.naming().table_topic(schema, table)
    }

    /// The column that routes a table's records (`partition_by`), if any.
    pub fn partition_column(&self, schema: &str, table: &str) -> Option<&str> {
        self.partition_by
            .get(&format!("{schema}.{table}"))
            .or_else(|| if schema == "public" { self.partition_by.get(table) } else { None })
            .map(String::as_str)
            .filter(|c| !c.is_empty())
    }

    pub fn heartbeat_topic(&self) -> String {
        self.naming().heartbeat_topic()
    }

    pub fn transaction_topic(&self) -> String {
        self.naming().transaction_topic()
    }
}

/// `schema.table` or `table` (schema `public`), each an unquoted identifier.
pub fn parse_table_name(raw: &str) -> Option<(String, String)> {
    let (schema, table) = raw.trim().split_once('.').unwrap_or(("public", raw.trim()));
    let ident = |s: &str| {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
    };
    (ident(schema) && ident(table)).then(|| (schema.to_string(), table.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_capture_the_source_tables_and_validate() {
        let c = CdcConfig::default();
        c.validate().unwrap();
        assert_eq!(c.table_names().len(), 11, "the ten source tables and the signal table");
        assert!(c.table_names().iter().all(|(s, _)| s == "public"));
        assert_eq!(c.signal_table(), Some(("public".into(), "rainbow_signal".into())));
        let mut off = c.clone();
        off.signal_table = String::new();
        off.validate().unwrap();
        assert_eq!(off.signal_table(), None);
        let mut uncaptured = c.clone();
        uncaptured.tables.retain(|t| !t.ends_with("rainbow_signal"));
        uncaptured.validate().unwrap();
        assert_eq!(uncaptured.signal_table(), None, "not captured: signals off");
        let mut bad = c.clone();
        bad.signal_table = "no such".into();
        assert!(bad.validate().unwrap_err().to_string().contains("cdc.signal_table"));
        assert!(!c.tables.iter().any(|t| t.contains("idempotency")));
        assert_eq!(c.topic_for("public", "orders"), "rainbow.public.orders");
    }

    #[test]
    fn topic_map_renames_to_bare_table_names() {
        let mut c = CdcConfig::default();
        c.topic_map.insert("public.orders".into(), "orders".into());
        c.topic_map.insert("products".into(), "products".into());
        assert_eq!(c.topic_for("public", "orders"), "orders");
        assert_eq!(c.topic_for("public", "products"), "products");
        assert_eq!(c.topic_for("public", "brands"), "rainbow.public.brands");
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut c = CdcConfig { tables: vec!["public.Orders".into()], ..CdcConfig::default() };
        assert_eq!(c.validate().unwrap_err().key, "cdc.tables");
        c = CdcConfig { heartbeat_interval_ms: 5, ..CdcConfig::default() };
        assert_eq!(c.validate().unwrap_err().key, "cdc.heartbeat_interval_ms");
        c = CdcConfig { metrics_listen: "nowhere".into(), ..CdcConfig::default() };
        assert_eq!(c.validate().unwrap_err().key, "cdc.metrics_listen");
        c = CdcConfig { server_timeout_ms: 500, ..CdcConfig::default() };
        assert_eq!(c.validate().unwrap_err().key, "cdc.server_timeout_ms");
        c = CdcConfig { compression: "brotli".into(), ..CdcConfig::default() };
        assert_eq!(c.validate().unwrap_err().key, "cdc.compression");
        assert_eq!(parse_table_name("orders"), Some(("public".into(), "orders".into())));
        assert_eq!(parse_table_name("a.b.c"), None);
    }
}
