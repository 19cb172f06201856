//! The master dataset as Apache Iceberg tables: one changelog table per captured source table.
//!
//! Contract: a changelog table holds one row per Kafka record of its topic, in the topic's
//! partitions' offset order, every offset once. A row has the source row's typed columns (the
//! after image; the before image for a delete), the change's metadata (`_op`, `_commit_ts`,
//! `_commit_lsn`, `_change_lsn`, `_txid`), its Kafka coordinates (`_kafka_topic`,
//! `_kafka_partition`, `_kafka_offset`, `_kafka_ts`) and the record's raw `_key` and `_envelope` bytes, kept for exact
//! re-decoding. Tables are partitioned by the commit day (`day(_commit_ts)`). Every append is
//! one Iceberg commit whose snapshot summary records the next offset of each of the topic's
//! partitions (`rainbow.kafka.offsets`), so a writer that crashes resumes from the table itself
//! and neither loses nor doubles a record. A new source column becomes an Iceberg schema
//! evolution (an added optional column); a source column that widened within Iceberg's type
//! promotions (`int` -> `long`, `float` -> `double`, a decimal's precision) has its column
//! promoted (same field id); values of a column whose type changed beyond that, and values that
//! do not read as their type (a decimal wider than its column's precision), are kept in
//! `_envelope` only and named in the row's `_untyped` (counted; never a guessed value).
//!
//! [`ChangelogTable::compact`] rewrites runs of small data files (one `replace` snapshot that
//! keeps the offsets), committed through the catalog by crate::commit, since the `iceberg`
//! crate's transactions cannot remove data files.
//!
//! [`output::replace_table`] writes whole tables (the replay's output) as Iceberg tables.
//!
//! The catalog is named by URL ([`LakeConfig`]): a SQL catalog on SQLite (`sqlite:` + path, the
//! default, no server) or a REST catalog (`http(s)://`); data files go to the warehouse URL
//! (`file://`, `s3://`, `gs://`, `abfss://`).

mod catalog;
pub mod changelog;
mod commit;
mod connect;
mod error;
pub mod output;

pub use catalog::{Lake, LakeConfig};
pub use changelog::{AppendStats, ChangeRecord, ChangelogFile, ChangelogTable, CompactStats};
pub use error::LakeError;

/// Parquet writer settings of every file Rainbow writes: snappy, no wall-clock metadata, so the
/// same rows give the same bytes.
pub fn parquet_properties() -> parquet::file::properties::WriterProperties {
    parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_created_by(format!("rainbow {}", env!("CARGO_PKG_VERSION")))
        .set_max_row_group_row_count(Some(128 * 1024))
        .build()
}
