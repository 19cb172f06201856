//! Compaction of a changelog table: runs of small data files rewritten as one.
//!
//! A run is consecutive data files of one Kafka partition and one commit day whose offsets
//! follow each other, so the file written for it holds consecutive offsets of one partition as
//! every data file of a changelog table does (readers rely on it). The rewrite is one Iceberg
//! snapshot of operation `replace`: the run's files leave the table and the new file enters it
//! in the same commit, the other files stay as they were (their snapshot and sequence numbers
//! kept), and the snapshot's summary carries the Kafka offsets of the one it replaces, so a
//! writer resuming from the table (or a later expiry of the older snapshots) sees the same
//! offsets. It commits through crate::commit, only if the table's head is still the snapshot it
//! read: an append committed meanwhile makes it re-read the table and commit again with the new
//! files kept (the archiver's appends and a compaction may run at once); the rewritten files
//! are written once. Rows are copied as they are (columns matched by field id, a column the
//! file predates read as null, as a reader of the old file would): the records, their order and
//! every column's values are unchanged. Files left out of the table by the rewrite stay in the
//! warehouse, as everything the archive wrote does (time travel to older snapshots reads them).

use super::{
    committed_offsets, history, offsets_property, ChangelogFile, ChangelogTable, COMMIT_ATTEMPTS,
    OFFSETS_PROPERTY, TOPIC_PROPERTY,
};
use crate::catalog::Lake;
use crate::commit::{commit, Outcome};
use crate::error::LakeError;
use arrow::array::{new_null_array, ArrayRef, RecordBatch};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{
    DataFile, FormatVersion, Literal, ManifestContentType, ManifestEntryRef, ManifestListWriter,
    ManifestWriterBuilder, Operation, PartitionKey, Snapshot, SnapshotReference, SnapshotRetention, Struct,
    Summary, MAIN_BRANCH,
};
use iceberg::writer::IcebergWriter;
use iceberg::{TableRequirement, TableUpdate};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::PARQUET_FIELD_ID_META_KEY;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Data files of the table before and after.
    pub files_before: u64,
    pub files_after: u64,
    /// Files rewritten, and the files written for them.
    pub files_rewritten: u64,
    pub files_written: u64,
    pub bytes_rewritten: u64,
    pub bytes_written: u64,
    /// Records in the rewritten files (the same in the written ones).
    pub records: u64,
    /// Commits that found the table changed and were made again.
    pub retries: u64,
}

impl ChangelogTable {
    /// Rewrites every run of at least two data files smaller than `target_bytes` (see the
    /// module's contract) into files of about `target_bytes` at most, in one commit; nothing
    /// to do is not an error (`files_rewritten` 0).
    pub async fn compact(&mut self, lake: &Lake, target_bytes: u64) -> Result<CompactStats, LakeError> {
        let ident = lake.ident(&self.name);
        self.table = lake.catalog.load_table(&ident).await.map_err(LakeError::table(&self.name))?;
        self.check_compactable().await?;
        let files = self.live_files().await?;
        let mut stats = CompactStats { files_before: files.len() as u64, ..Default::default() };
        let runs = runs(&files, target_bytes);
        if runs.is_empty() {
            stats.files_after = stats.files_before;
            return Ok(stats);
        }
        let snapshot_id = new_snapshot_id(&self.table);
        let mut removed: HashSet<String> = HashSet::new();
        let mut written: Vec<DataFile> = Vec::new();
        for run in &runs {
            let (first, last) = (&run[0].1, &run[run.len() - 1].1);
            tracing::info!(
                table = %self.name, partition = first.partition, first = first.first, last = last.last,
                files = run.len(), "compacting"
            );
            for (e, f) in run {
                removed.insert(f.path.clone());
                stats.bytes_rewritten += e.data_file().file_size_in_bytes();
                stats.records += e.data_file().record_count();
            }
            for f in self.rewrite(run, snapshot_id).await? {
                stats.bytes_written += f.file_size_in_bytes();
                written.push(f);
            }
        }
        stats.files_rewritten = removed.len() as u64;
        stats.files_written = written.len() as u64;
        let written_records: u64 = written.iter().map(DataFile::record_count).sum();
        if written_records != stats.records {
            return Err(LakeError::Invalid {
                table: self.name.clone(),
                reason: format!("compaction wrote {written_records} records for {} read", stats.records),
            });
        }

        let mut last = Outcome::Conflict;
        for attempt in 0..COMMIT_ATTEMPTS {
            // The table as it is now: the rewrite took a while, appends may have come.
            self.table = lake.catalog.load_table(&ident).await.map_err(LakeError::table(&self.name))?;
            // An earlier attempt whose outcome was unknown may have landed after all.
            let committed = history(&self.table).any(|s| s.snapshot_id() == snapshot_id);
            if !committed {
                self.check_compactable().await?;
            }
            let live = self.live_files().await?;
            if committed {
                self.committed = committed_offsets(&self.table)?;
                stats.files_after = live.len() as u64;
                return Ok(stats);
            }
            let still: usize = live.iter().filter(|(_, f)| removed.contains(&f.path)).count();
            if still != removed.len() {
                return Err(LakeError::Invalid {
                    table: self.name.clone(),
                    reason: "files being compacted left the table meanwhile (another compaction?): \
                             nothing committed, run it again"
                        .into(),
                });
            }
            let (requirements, updates) =
                self.replace(&live, &removed, &written, snapshot_id, attempt, &stats).await?;
            match commit(lake, &ident, requirements, updates).await? {
                Outcome::Committed => {
                    self.table =
                        lake.catalog.load_table(&ident).await.map_err(LakeError::table(&self.name))?;
                    self.committed = committed_offsets(&self.table)?;
                    stats.files_after = (live.len() - removed.len() + written.len()) as u64;
                    return Ok(stats);
                }
                Outcome::Conflict => {
                    tracing::info!(table = %self.name, attempt, "the table changed during the compaction: committing again on its new head");
                    last = Outcome::Conflict;
                }
                Outcome::Unknown(reason) => {
                    tracing::warn!(table = %self.name, attempt, "the catalog's answer leaves the compaction's commit unknown: reading the table again ({reason})");
                    last = Outcome::Unknown(reason);
                }
            }
            stats.retries += 1;
            tokio::time::sleep(crate::commit::retry_pause(attempt)).await;
        }
        Err(LakeError::Invalid {
            table: self.name.clone(),
            reason: match last {
                Outcome::Unknown(reason) => format!(
                    "{COMMIT_ATTEMPTS} compaction commits did not go through; the last one's outcome is unknown ({reason}): \
                     run it again (it starts from the table as it is)"
                ),
                _ => format!(
                    "{COMMIT_ATTEMPTS} compaction commits found the table changed by other writers: nothing \
                     committed, run it again"
                ),
            },
        })
    }

    /// Refuses tables the rewrite does not handle.
    async fn check_compactable(&self) -> Result<(), LakeError> {
        let meta = self.table.metadata();
        let invalid = |reason: String| LakeError::Invalid { table: self.name.clone(), reason };
        if meta.format_version() != FormatVersion::V2 {
            return Err(invalid(format!(
                "compaction writes format version 2 tables; this one is {}",
                meta.format_version()
            )));
        }
        let Some(snapshot) = meta.current_snapshot() else { return Ok(()) };
        let list =
            self.table.manifest_list_reader(snapshot).load().await.map_err(LakeError::table(&self.name))?;
        for m in list.entries() {
            if m.content != ManifestContentType::Data {
                return Err(invalid(format!(
                    "manifest {} holds delete files, which the changelog's compaction does not apply: \
                     compact it with an engine that does",
                    m.manifest_path
                )));
            }
            if m.partition_spec_id != meta.default_partition_spec_id() {
                return Err(invalid(format!(
                    "manifest {} has partition spec {} where the table's is {}",
                    m.manifest_path,
                    m.partition_spec_id,
                    meta.default_partition_spec_id()
                )));
            }
        }
        Ok(())
    }

    /// Writes one run's rows as new data files (one, unless it outgrows the writer's file size).
    async fn rewrite(
        &self,
        run: &[(ManifestEntryRef, ChangelogFile)],
        snapshot_id: i64,
    ) -> Result<Vec<DataFile>, LakeError> {
        let failed = || LakeError::table(&self.name);
        let meta = self.table.metadata();
        let schema = meta.current_schema().clone();
        let arrow_schema = Arc::new(schema_to_arrow_schema(&schema).map_err(failed())?);
        let spec = meta.default_partition_spec().as_ref().clone();
        let (head, tail) = (&run[0].1, &run[run.len() - 1].1);
        let key = PartitionKey::new(spec, schema, Struct::from_iter([head.day.map(Literal::date)]));
        // Named by the offsets and the snapshot: never the name of a file the table has.
        let prefix = format!("p{:05}-{:020}-{:020}-c{snapshot_id}", head.partition, head.first, tail.last);
        let mut writer = self.data_file_writer(key, prefix).await?;
        for (_, f) in run {
            let bytes = self.read_file(&f.path).await?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .and_then(|b| b.with_batch_size(8192).build())
                .map_err(|e| LakeError::Invalid {
                    table: self.name.clone(),
                    reason: format!("{}: {e}", f.path),
                })?;
            for batch in reader {
                let batch = batch.map_err(|e| LakeError::Invalid {
                    table: self.name.clone(),
                    reason: format!("{}: {e}", f.path),
                })?;
                writer.write(conform(&batch, &arrow_schema, &self.name, &f.path)?).await.map_err(failed())?;
            }
        }
        writer.close().await.map_err(failed())
    }

    /// The commit of the rewrite on the table as it is now: one manifest listing every live
    /// file (the rewritten ones as deleted, the new ones as added, the rest as existing).
    async fn replace(
        &self,
        live: &[(ManifestEntryRef, ChangelogFile)],
        removed: &HashSet<String>,
        written: &[DataFile],
        snapshot_id: i64,
        attempt: u64,
        stats: &CompactStats,
    ) -> Result<(Vec<TableRequirement>, Vec<TableUpdate>), LakeError> {
        let failed = || LakeError::table(&self.name);
        let meta = self.table.metadata();
        let io = self.table.file_io();
        let parent = meta.current_snapshot_id();
        let sequence = meta.next_sequence_number();
        let dir = format!("{}/metadata", meta.location());
        let output =
            io.new_output(format!("{dir}/compact-{snapshot_id}-{attempt}-m0.avro")).map_err(failed())?;
        let mut manifest = ManifestWriterBuilder::new(
            output,
            Some(snapshot_id),
            meta.current_schema().clone(),
            meta.default_partition_spec().as_ref().clone(),
        )
        .build_v2_data();
        let (mut total_records, mut total_bytes, mut total_files) = (0u64, 0u64, 0u64);
        let mut days = HashSet::new();
        for (e, f) in live {
            let missing = |what: &str| LakeError::Invalid {
                table: self.name.clone(),
                reason: format!("the manifest entry of data file {} has no {what}", f.path),
            };
            let seq = e.sequence_number().ok_or_else(|| missing("sequence number"))?;
            let file_seq = Some(e.file_sequence_number.ok_or_else(|| missing("file sequence number"))?);
            if removed.contains(&f.path) {
                days.insert(f.day);
                manifest.add_delete_file(e.data_file().clone(), seq, file_seq).map_err(failed())?;
            } else {
                let added_by = e.snapshot_id().ok_or_else(|| missing("snapshot id"))?;
                manifest
                    .add_existing_file(e.data_file().clone(), added_by, seq, file_seq)
                    .map_err(failed())?;
                total_records += e.data_file().record_count();
                total_bytes += e.data_file().file_size_in_bytes();
                total_files += 1;
            }
        }
        for f in written {
            manifest.add_file(f.clone(), sequence).map_err(failed())?;
            total_records += f.record_count();
            total_bytes += f.file_size_in_bytes();
            total_files += 1;
        }
        let manifest = manifest.write_manifest_file().await.map_err(failed())?;
        let list_path = format!("{dir}/snap-{snapshot_id}-{attempt}-compact.avro");
        let out = io.new_output(&list_path).map_err(failed())?.writer().await.map_err(failed())?;
        let mut list = ManifestListWriter::v2(out, snapshot_id, parent, sequence);
        list.add_manifests(std::iter::once(manifest)).map_err(failed())?;
        list.close().await.map_err(failed())?;

        let mut summary: HashMap<String, String> = [
            ("added-data-files", stats.files_written),
            ("deleted-data-files", stats.files_rewritten),
            ("added-records", stats.records),
            ("deleted-records", stats.records),
            ("added-files-size", stats.bytes_written),
            ("removed-files-size", stats.bytes_rewritten),
            ("changed-partition-count", days.len() as u64),
            ("total-records", total_records),
            ("total-files-size", total_bytes),
            ("total-data-files", total_files),
            ("total-delete-files", 0),
            ("total-position-deletes", 0),
            ("total-equality-deletes", 0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        summary.insert(OFFSETS_PROPERTY.into(), offsets_property(&committed_offsets(&self.table)?));
        summary.insert(TOPIC_PROPERTY.into(), self.topic.clone());
        let snapshot = Snapshot::builder()
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(parent)
            .with_sequence_number(sequence)
            .with_timestamp_ms(now_ms().max(meta.last_updated_ms() + 1))
            .with_manifest_list(list_path)
            .with_summary(Summary { operation: Operation::Replace, additional_properties: summary })
            .with_schema_id(meta.current_schema_id())
            .build();
        let updates = vec![
            TableUpdate::AddSnapshot { snapshot },
            TableUpdate::SetSnapshotRef {
                ref_name: MAIN_BRANCH.to_string(),
                reference: SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
            },
        ];
        let requirements = vec![
            TableRequirement::UuidMatch { uuid: meta.uuid() },
            TableRequirement::RefSnapshotIdMatch { r#ref: MAIN_BRANCH.to_string(), snapshot_id: parent },
        ];
        Ok((requirements, updates))
    }
}

/// Runs of `files` (sorted by partition and first offset) to rewrite: at least two files, each
/// smaller than `target_bytes`, of one partition and commit day, offsets following each other,
/// together at most `target_bytes`.
fn runs(
    files: &[(ManifestEntryRef, ChangelogFile)],
    target_bytes: u64,
) -> Vec<Vec<(ManifestEntryRef, ChangelogFile)>> {
    let mut out = Vec::new();
    let mut run: Vec<(ManifestEntryRef, ChangelogFile)> = Vec::new();
    let mut bytes = 0u64;
    for (e, f) in files {
        let size = e.data_file().file_size_in_bytes();
        let joins = run.last().is_some_and(|(_, p)| {
            p.partition == f.partition
                && p.day == f.day
                && p.last + 1 == f.first
                && bytes + size <= target_bytes
        });
        if !joins {
            if run.len() >= 2 {
                out.push(std::mem::take(&mut run));
            }
            run.clear();
            bytes = 0;
        }
        if size < target_bytes {
            run.push((e.clone(), f.clone()));
            bytes += size;
        }
    }
    if run.len() >= 2 {
        out.push(run);
    }
    out
}

/// `batch`'s columns as `schema`'s, matched by Iceberg field id: a column the file lacks (added
/// to the table after the file was written) is null; a narrower type is widened as Iceberg's
/// type promotion allows.
fn conform(
    batch: &RecordBatch,
    schema: &Arc<arrow::datatypes::Schema>,
    table: &str,
    path: &str,
) -> Result<RecordBatch, LakeError> {
    let invalid =
        |reason: String| LakeError::Invalid { table: table.to_string(), reason: format!("{path}: {reason}") };
    let id = |f: &arrow::datatypes::Field| f.metadata().get(PARQUET_FIELD_ID_META_KEY).cloned();
    let by_id: HashMap<String, usize> =
        batch.schema().fields().iter().enumerate().filter_map(|(i, f)| Some((id(f)?, i))).collect();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = match id(field).and_then(|i| by_id.get(&i)) {
            Some(&i) if batch.column(i).data_type() == field.data_type() => batch.column(i).clone(),
            Some(&i) => arrow::compute::cast(batch.column(i), field.data_type())
                .map_err(|e| invalid(format!("column `{}`: {e}", field.name())))?,
            None if field.is_nullable() => new_null_array(field.data_type(), batch.num_rows()),
            None => return Err(invalid(format!("the required column `{}` is missing", field.name()))),
        };
        columns.push(column);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| invalid(e.to_string()))
}

/// A snapshot id the table does not have: positive, from the clock and the process.
fn new_snapshot_id(table: &iceberg::table::Table) -> i64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut id = (nanos ^ (u64::from(std::process::id()) << 40)) & (i64::MAX as u64);
    while id == 0 || table.metadata().snapshot_by_id(id as i64).is_some() {
        id = (id.wrapping_mul(6364136223846793005).wrapping_add(1)) & (i64::MAX as u64);
    }
    id as i64
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
