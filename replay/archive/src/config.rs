//! `[archive]` settings: serde defaults, validated at start, overridable by environment
//! (`RAINBOW_ARCHIVE__<KEY>`, handled by the `rainbow` binary). The master dataset lives at
//! `storage.url` (see the root configuration).

use rainbow_schemas::postgres::SOURCE_TABLES;
use rainbow_schemas::setting::{check, InvalidSetting};
use rainbow_schemas::wire::{check_consumer_naming, TopicNaming};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// The archiver's own consumer group: offsets are committed there once the segment holding
    /// them is durable (for lag monitoring; restarts resume after the highest archived offset).
    pub group_id: String,
    /// Topic naming, as the processor's: unset means that of `[cdc]`.
    pub topic_prefix: Option<String>,
    pub schema: String,
    pub topic_map: Option<BTreeMap<String, String>>,
    /// A segment is closed when it holds this many records ...
    pub segment_max_records: usize,
    /// ... or this many bytes of keys and values ...
    pub segment_max_bytes: usize,
    /// ... or its first record waited this long (bounds how stale the archive is).
    pub segment_max_age_ms: u64,
    /// Threads that write the segments to the changelog tables while the next records are read
    /// (a table by one at a time, so its commits stay in order): 0 is one per core.
    pub writers: usize,
    pub metrics_listen: String,
    /// Whether to go on when records were removed from a topic before they were archived
    /// (retention, a recreated topic): counted in `offset_gap_records_total` and alerted. Off:
    /// the archiver stops and says so, since the master dataset would miss those changes.
    pub allow_offset_gap: bool,
    /// The Iceberg catalog of the changelog tables: `sqlite:<path>` (embedded, no server) or a
    /// REST catalog's `http(s)://` URL. Unset: `sqlite:<storage.url>/iceberg/catalog.db` (a
    /// local storage.url; an object store needs a REST catalog or a SQLite file named here).
    pub catalog_url: Option<String>,
    /// Where the changelog tables' files go. Unset: `<storage.url>/iceberg`.
    pub warehouse_url: Option<String>,
    /// The catalog namespace of the changelog tables.
    pub namespace: String,
    /// Snapshots of the changelog tables older than this are removed from their metadata (hourly
    /// by the archiver, or `rainbow archive expire`), the current one always kept: the metadata
    /// rewritten at every commit stays small. Files are never deleted. 0: keep every snapshot.
    pub snapshot_retention_hours: u64,
    /// Settings of the warehouse's storage client (`s3.region`, `s3.endpoint`, ...), passed as
    /// they are.
    pub iceberg_properties: BTreeMap<String, String>,
    /// On a stop (SIGTERM, Ctrl-C), how long the archiver may read on to archive everything its
    /// topics held at that moment; 0 stops at once (the rest is read at the next start).
    pub drain_on_stop_ms: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            group_id: "rainbow-archiver".into(),
            topic_prefix: None,
            schema: "public".into(),
            topic_map: None,
            segment_max_records: 500_000,
            segment_max_bytes: 64 << 20,
            segment_max_age_ms: 60_000,
            writers: 0,
            metrics_listen: "127.0.0.1:9103".into(),
            allow_offset_gap: false,
            catalog_url: None,
            warehouse_url: None,
            namespace: "master".into(),
            snapshot_retention_hours: 24,
            iceberg_properties: BTreeMap::new(),
            drain_on_stop_ms: 10_000,
        }
    }
}

impl ArchiveConfig {
    /// The segment writers to run: `writers`, or one per core when 0.
    pub fn writer_threads(&self) -> usize {
        match self.writers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check(!self.group_id.trim().is_empty(), "archive.group_id", &self.group_id, "a consumer group name")?;
        check_consumer_naming(
            ["archive.topic_prefix", "archive.schema", "archive.topic_map"],
            self.topic_prefix.as_deref(),
            &self.schema,
            self.topic_map.as_ref(),
        )?;
        check(
            (1..=50_000_000).contains(&self.segment_max_records),
            "archive.segment_max_records",
            self.segment_max_records,
            "1 ..= 50000000 records",
        )?;
        check(
            (1024..=(1 << 31)).contains(&self.segment_max_bytes),
            "archive.segment_max_bytes",
            self.segment_max_bytes,
            "1 KiB ..= 2 GiB",
        )?;
        check(
            (100..=86_400_000).contains(&self.segment_max_age_ms),
            "archive.segment_max_age_ms",
            self.segment_max_age_ms,
            "100 ms ..= 1 day",
        )?;
        check(self.writers <= 64, "archive.writers", self.writers, "0 (one per core) ..= 64")?;
        check(
            self.drain_on_stop_ms <= 600_000,
            "archive.drain_on_stop_ms",
            self.drain_on_stop_ms,
            "0 (stop at once) ..= 600000 ms",
        )?;
        if let Some(url) = &self.catalog_url {
            check(
                url.starts_with("sqlite:") || url.starts_with("http://") || url.starts_with("https://"),
                "archive.catalog_url",
                url,
                "sqlite:<path> or the http(s) URL of a REST catalog",
            )?;
        }
        check(
            !self.namespace.is_empty()
                && self.namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "archive.namespace",
            &self.namespace,
            "letters, digits and _",
        )?;
        check(
            self.metrics_listen.parse::<std::net::SocketAddr>().is_ok(),
            "archive.metrics_listen",
            &self.metrics_listen,
            "host:port",
        )
    }

    /// The CDC's topic naming (the wire contract's one implementation of it).
    pub fn naming(&self) -> TopicNaming {
        TopicNaming::of_consumer(self.topic_prefix.as_deref(), self.topic_map.as_ref())
    }

    /// The topic of a captured table.
    pub fn topic_for(&self, table: &str) -> String {
        self.naming().table_topic(&self.schema, table)
    }

    /// The catalog and warehouse of the changelog tables, the defaults under `store`.
    pub fn lake(
        &self,
        store: &rainbow_runtime::store::Store,
    ) -> Result<rainbow_iceberg::LakeConfig, InvalidSetting> {
        let properties = self.iceberg_properties.clone().into_iter().collect();
        rainbow_iceberg::LakeConfig::under(
            store,
            self.catalog_url.as_deref(),
            self.warehouse_url.as_deref(),
            &self.namespace,
            properties,
        )
        .ok_or(InvalidSetting {
            key: "archive.catalog_url",
            value: String::new(),
            expected: "set: storage.url is an object store, which has no embedded catalog; a REST \
                       catalog's URL, or sqlite:<local path>",
        })
    }

    /// The changelog table of a topic: the topic's name after the prefix, dots as `_`
    /// (`rainbow.public.orders` -> `public_orders`).
    pub fn table_of(&self, topic: &str) -> String {
        let prefix = format!("{}.", self.naming().prefix);
        topic.strip_prefix(&prefix).unwrap_or(topic).replace(['.', '-'], "_")
    }

    /// The archived topics: one per captured table, in the order of `SOURCE_TABLES`.
    pub fn topics(&self) -> Vec<String> {
        SOURCE_TABLES.iter().map(|t| self.topic_for(t)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        ArchiveConfig::default().validate().unwrap();
        let c = ArchiveConfig { segment_max_age_ms: 5, ..Default::default() };
        assert_eq!(c.validate().unwrap_err().key, "archive.segment_max_age_ms");
        let c = ArchiveConfig { writers: 65, ..Default::default() };
        assert_eq!(c.validate().unwrap_err().key, "archive.writers");
        assert!(ArchiveConfig::default().writer_threads() >= 1);
        assert_eq!(ArchiveConfig { writers: 3, ..Default::default() }.writer_threads(), 3);
        let c = ArchiveConfig { topic_prefix: Some("bad prefix".into()), ..Default::default() };
        assert_eq!(c.validate().unwrap_err().key, "archive.topic_prefix");
        assert_eq!(ArchiveConfig::default().topics()[7], "rainbow.public.orders");
    }
}
