//! A changelog table: one source table's Kafka records as typed rows (see the crate's contract).

use crate::catalog::Lake;
use crate::connect::{self, Column, Conv, RowSchema};
use crate::error::LakeError;
use arrow::array::{ArrayRef, RecordBatch};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{
    DataFileFormat, Literal, ManifestEntryRef, NestedField, PartitionKey, PrimitiveType, Schema, Struct,
    Transform, Type, UnboundPartitionField, UnboundPartitionSpec,
};
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::TableCreation;
use rainbow_schemas::wire::Envelope;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

mod compact;
mod ranges;
pub use compact::CompactStats;
pub use ranges::ColumnReader;

/// The snapshot summary property holding the next offset of each partition (JSON object of
/// partition number to offset) after the snapshot's append.
pub const OFFSETS_PROPERTY: &str = "rainbow.kafka.offsets";
/// The snapshot summary property naming the topic (also a table property).
pub const TOPIC_PROPERTY: &str = "rainbow.kafka.topic";

/// The metadata columns, in order, before the source row's columns.
pub const META_COLUMNS: [&str; 13] = [
    "_op",
    "_commit_ts",
    "_commit_lsn",
    "_change_lsn",
    "_txid",
    "_table",
    "_untyped",
    "_kafka_topic",
    "_kafka_partition",
    "_kafka_offset",
    "_kafka_ts",
    "_key",
    "_envelope",
];

/// A data file of a changelog table: consecutive offsets of one Kafka partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogFile {
    pub path: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    /// The commit day (days since the epoch) of its records; `None` for records without one.
    pub day: Option<i32>,
    /// Its size in bytes (the manifest's).
    pub size: u64,
}

/// One Kafka record to append.
#[derive(Debug, Clone, Copy)]
pub struct ChangeRecord<'a> {
    pub offset: i64,
    pub kafka_ts_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// What an append did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendStats {
    pub records: u64,
    pub files: u64,
    pub bytes: u64,
    /// Records at offsets already in the table (a re-delivery), left out.
    pub already_there: u64,
    /// Records without a value (Kafka tombstones): kept, without typed columns.
    pub tombstones: u64,
    /// Values that are not change events: kept raw, without typed columns.
    pub not_change_events: u64,
    /// Columns added to the table by this append.
    pub columns_added: u64,
    /// Columns promoted to a wider type by this append (the source column's type widened).
    pub columns_promoted: u64,
    /// Values that do not read as their column's type says: kept in `_envelope` only, their
    /// column named in the row's `_untyped`.
    pub untyped_values: u64,
}

/// The schema changes of one append.
struct Evolved {
    added: u64,
    promoted: u64,
}

/// How many times a commit of our own ([`crate::commit`]) is tried when the table changed
/// meanwhile or the catalog's answer was lost.
const COMMIT_ATTEMPTS: u64 = 10;

pub struct ChangelogTable {
    pub name: String,
    pub topic: String,
    table: Table,
    /// Next offset per partition, as of the table's current snapshot.
    committed: BTreeMap<i32, i64>,
    /// Commit time of the last change event seen per partition (µs), for the tombstone after it.
    last_commit_us: HashMap<i32, i64>,
    /// Row schemas by the envelope schema's text.
    schemas: HashMap<String, Arc<RowSchema>>,
    /// Columns whose source type changed beyond the table's (logged once).
    type_changes: std::collections::HashSet<String>,
    /// The last schema text seen and its row schema.
    last_schema: Option<(String, Arc<RowSchema>)>,
}

fn meta_schema() -> Schema {
    let p = |t| Type::Primitive(t);
    let tz = || p(PrimitiveType::Timestamptz);
    let fields = vec![
        NestedField::optional(1, "_op", p(PrimitiveType::String)),
        NestedField::optional(2, "_commit_ts", tz()),
        NestedField::optional(3, "_commit_lsn", p(PrimitiveType::Long)),
        NestedField::optional(4, "_change_lsn", p(PrimitiveType::Long)),
        NestedField::optional(5, "_txid", p(PrimitiveType::Long)),
        NestedField::optional(6, "_table", p(PrimitiveType::String)),
        NestedField::optional(7, "_untyped", p(PrimitiveType::String)),
        NestedField::required(8, "_kafka_topic", p(PrimitiveType::String)),
        NestedField::required(9, "_kafka_partition", p(PrimitiveType::Int)),
        NestedField::required(10, "_kafka_offset", p(PrimitiveType::Long)),
        NestedField::optional(11, "_kafka_ts", tz()),
        NestedField::optional(12, "_key", p(PrimitiveType::Binary)),
        NestedField::optional(13, "_envelope", p(PrimitiveType::Binary)),
    ];
    Schema::builder()
        .with_fields(fields.into_iter().map(Arc::new))
        .build()
        .expect("the metadata columns form a schema")
}

/// The head of the table's main branch and its ancestors, newest first.
fn history(table: &Table) -> impl Iterator<Item = &iceberg::spec::SnapshotRef> {
    let meta = table.metadata();
    std::iter::successors(meta.current_snapshot(), move |s| {
        s.parent_snapshot_id().and_then(|id| meta.snapshot_by_id(id))
    })
}

/// The snapshot summary property of the next offsets `next` (partition -> offset).
fn offsets_property(next: &BTreeMap<i32, i64>) -> String {
    let offsets: BTreeMap<String, i64> = next.iter().map(|(p, o)| (p.to_string(), *o)).collect();
    serde_json::to_string(&offsets).expect("offsets serialise")
}

/// The committed next offsets of the newest snapshot that recorded them.
fn committed_offsets(table: &Table) -> Result<BTreeMap<i32, i64>, LakeError> {
    for s in history(table) {
        if let Some(text) = s.summary().additional_properties.get(OFFSETS_PROPERTY) {
            let parsed: BTreeMap<String, i64> =
                serde_json::from_str(text).map_err(|e| LakeError::Invalid {
                    table: table.identifier().to_string(),
                    reason: format!("snapshot {} has an unreadable {OFFSETS_PROPERTY}: {e}", s.snapshot_id()),
                })?;
            return parsed
                .into_iter()
                .map(|(p, o)| {
                    p.parse::<i32>().map(|p| (p, o)).map_err(|_| LakeError::Invalid {
                        table: table.identifier().to_string(),
                        reason: format!("partition {p:?} in {OFFSETS_PROPERTY}"),
                    })
                })
                .collect();
        }
    }
    Ok(BTreeMap::new())
}

impl ChangelogTable {
    /// Loads the table `name` of `topic`'s records, creating it (metadata columns only; the
    /// source's columns come with the first records) when it does not exist.
    pub async fn open(lake: &Lake, name: &str, topic: &str) -> Result<ChangelogTable, LakeError> {
        let ident = lake.ident(name);
        let failed = LakeError::table(name);
        let table = if lake.catalog.table_exists(&ident).await.map_err(LakeError::table(name))? {
            lake.catalog.load_table(&ident).await.map_err(failed)?
        } else {
            // Spec and field ids given (what the catalog would assign): Iceberg's Java REST
            // catalog refuses a create-table request whose partition spec lacks them.
            let day = UnboundPartitionField {
                source_id: 2,
                field_id: Some(1000),
                name: "_commit_day".into(),
                transform: Transform::Day,
            };
            let spec = UnboundPartitionSpec::builder()
                .with_spec_id(0)
                .add_partition_fields([day])
                .map_err(LakeError::table(name))?
                .build();
            let creation = TableCreation::builder()
                .name(name.to_string())
                .schema(meta_schema())
                .partition_spec(spec)
                .properties([
                    ("write.format.default".to_string(), "parquet".to_string()),
                    ("write.parquet.compression-codec".to_string(), "snappy".to_string()),
                    (TOPIC_PROPERTY.to_string(), topic.to_string()),
                ])
                .build();
            match lake.catalog.create_table(&lake.namespace, creation).await {
                Ok(t) => t,
                // Created meanwhile by another writer: use it.
                Err(e) => {
                    if lake.catalog.table_exists(&ident).await.unwrap_or(false) {
                        lake.catalog.load_table(&ident).await.map_err(LakeError::table(name))?
                    } else {
                        return Err(failed(e));
                    }
                }
            }
        };
        ChangelogTable::of(name, topic, table)
    }

    /// A loaded table, its committed offsets read from its snapshots.
    fn of(name: &str, topic: &str, table: Table) -> Result<ChangelogTable, LakeError> {
        let committed = committed_offsets(&table)?;
        Ok(ChangelogTable {
            name: name.to_string(),
            topic: topic.to_string(),
            table,
            committed,
            last_commit_us: HashMap::new(),
            schemas: HashMap::new(),
            type_changes: Default::default(),
            last_schema: None,
        })
    }

    /// The table `name` as it is, `None` when the catalog has no such table (readers).
    pub async fn load(lake: &Lake, name: &str, topic: &str) -> Result<Option<ChangelogTable>, LakeError> {
        let ident = lake.ident(name);
        if !lake.catalog.table_exists(&ident).await.map_err(LakeError::table(name))? {
            return Ok(None);
        }
        let table = lake.catalog.load_table(&ident).await.map_err(LakeError::table(name))?;
        ChangelogTable::of(name, topic, table).map(Some)
    }

    /// Every changelog table of the lake's namespace (its topic from the table's
    /// `rainbow.kafka.topic` property), sorted by name.
    pub async fn load_all(lake: &Lake) -> Result<Vec<ChangelogTable>, LakeError> {
        let idents = lake
            .catalog
            .list_tables(&lake.namespace)
            .await
            .map_err(|source| LakeError::Catalog { url: lake.url.clone(), source: Box::new(source) })?;
        let mut tables = Vec::new();
        for ident in idents {
            let name = ident.name().to_string();
            let table = lake.catalog.load_table(&ident).await.map_err(LakeError::table(&name))?;
            let Some(topic) = table.metadata().properties().get(TOPIC_PROPERTY).cloned() else { continue };
            if let Some(t) = ChangelogTable::load(lake, &name, &topic).await? {
                tables.push(t);
            }
        }
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tables)
    }

    /// The data files of the current snapshot, with the Kafka partition and offsets each holds
    /// (from the manifests' column bounds), sorted by partition and first offset.
    pub async fn files(&self) -> Result<Vec<ChangelogFile>, LakeError> {
        Ok(self.live_files().await?.into_iter().map(|(_, f)| f).collect())
    }

    /// [`Self::files`] with their manifest entries.
    async fn live_files(&self) -> Result<Vec<(ManifestEntryRef, ChangelogFile)>, LakeError> {
        let failed = LakeError::table(&self.name);
        let meta = self.table.metadata();
        let Some(snapshot) = meta.current_snapshot() else { return Ok(Vec::new()) };
        let schema = meta.current_schema();
        let id = |name: &str| schema.field_by_name(name).map(|f| f.id);
        let (Some(pid), Some(oid)) = (id("_kafka_partition"), id("_kafka_offset")) else {
            return Err(LakeError::Invalid {
                table: self.name.clone(),
                reason: "not a changelog table".into(),
            });
        };
        let list = self.table.manifest_list_reader(snapshot).load().await.map_err(failed)?;
        let mut files = Vec::new();
        for m in list.entries() {
            let manifest =
                m.load_manifest(self.table.file_io()).await.map_err(LakeError::table(&self.name))?;
            for e in manifest.entries().iter().filter(|e| e.is_alive()) {
                let f = e.data_file();
                let long =
                    |b: &HashMap<i32, iceberg::spec::Datum>, id: i32| match b.get(&id).map(|d| d.literal()) {
                        Some(iceberg::spec::PrimitiveLiteral::Long(v)) => Some(*v),
                        Some(iceberg::spec::PrimitiveLiteral::Int(v)) => Some(i64::from(*v)),
                        _ => None,
                    };
                let bounds = (
                    long(f.lower_bounds(), pid),
                    long(f.upper_bounds(), pid),
                    long(f.lower_bounds(), oid),
                    long(f.upper_bounds(), oid),
                );
                let (Some(p0), Some(p1), Some(first), Some(last)) = bounds else {
                    return Err(LakeError::Invalid {
                        table: self.name.clone(),
                        reason: format!(
                            "data file {} has no Kafka partition and offset bounds",
                            f.file_path()
                        ),
                    });
                };
                if p0 != p1 || last - first + 1 != f.record_count() as i64 {
                    return Err(LakeError::Invalid {
                        table: self.name.clone(),
                        reason: format!(
                            "data file {} does not hold consecutive offsets of one partition (partitions {p0}..{p1}, \
                             offsets {first}..{last}, {} records)",
                            f.file_path(),
                            f.record_count()
                        ),
                    });
                }
                let day = match f.partition().fields().first() {
                    Some(Some(iceberg::spec::Literal::Primitive(iceberg::spec::PrimitiveLiteral::Int(
                        d,
                    )))) => Some(*d),
                    _ => None,
                };
                let file = ChangelogFile {
                    path: f.file_path().to_string(),
                    partition: p0 as i32,
                    first,
                    last,
                    day,
                    size: f.file_size_in_bytes(),
                };
                files.push((e.clone(), file));
            }
        }
        files.sort_by_key(|(_, f)| (f.partition, f.first));
        Ok(files)
    }

    /// Removes the snapshots committed before `older_than_ms` (ms since the epoch) from the
    /// table's metadata, keeping at least the current one (whose summary holds the offsets);
    /// returns how many. Data and metadata files stay: the archive deletes nothing.
    pub async fn expire(&mut self, lake: &Lake, older_than_ms: i64) -> Result<usize, LakeError> {
        let before = self.table.metadata().snapshots().len();
        let old = self.table.metadata().snapshots().filter(|s| s.timestamp_ms() < older_than_ms).count();
        if old == 0 || before <= 1 {
            return Ok(0);
        }
        let tx = Transaction::new(&self.table);
        let tx = tx
            .expire_snapshots()
            .expire_older_than_ms(older_than_ms)
            .retain_last(1)
            .apply(tx)
            .map_err(LakeError::table(&self.name))?;
        self.table = tx.commit(lake.catalog.as_ref()).await.map_err(LakeError::table(&self.name))?;
        Ok(before.saturating_sub(self.table.metadata().snapshots().len()))
    }

    /// A data file opened for reads of byte ranges, so that a reader of some columns fetches
    /// only their column chunks ([`ColumnReader`]).
    pub async fn open_file(&self, file: &ChangelogFile) -> Result<ColumnReader, LakeError> {
        let failed = LakeError::table(&self.name);
        let input = self.table.file_io().new_input(&file.path).map_err(LakeError::table(&self.name))?;
        Ok(ColumnReader::new(input.reader().await.map_err(failed)?, file.size))
    }

    /// A data file's bytes.
    pub async fn read_file(&self, path: &str) -> Result<bytes::Bytes, LakeError> {
        let failed = LakeError::table(&self.name);
        self.table
            .file_io()
            .new_input(path)
            .map_err(LakeError::table(&self.name))?
            .read()
            .await
            .map_err(failed)
    }

    /// The next offset of each partition that the table holds (records below it are in).
    pub fn committed(&self) -> &BTreeMap<i32, i64> {
        &self.committed
    }

    /// The table as of the last commit.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// A record's envelope and the row schema of its Connect schema. A record that starts with
    /// the same schema as the one before it (the usual case: records of a table share it until
    /// the table changes) is parsed from its payload on: the schema's text is compared, not
    /// scanned as JSON again.
    fn parse<'v>(&mut self, value: &'v [u8]) -> Result<(Envelope<'v>, Option<Arc<RowSchema>>), ()> {
        const HEAD: &[u8] = b"{\"schema\":";
        const MID: &[u8] = b",\"payload\":";
        if let Some((text, schema)) = &self.last_schema {
            let t = text.as_bytes();
            let n = HEAD.len() + t.len() + MID.len();
            if value.len() > n
                && value.starts_with(HEAD)
                && value[HEAD.len()..].starts_with(t)
                && value[HEAD.len() + t.len()..].starts_with(MID)
                && value.ends_with(b"}")
            {
                let schema = schema.clone();
                let payload = &value[n..value.len() - 1];
                if let Ok(env) = Envelope::parse(payload) {
                    return Ok((env, Some(schema)));
                }
            }
        }
        let env = Envelope::parse(value).map_err(|_| ())?;
        let schema = env.schema.and_then(|s| self.row_schema(s.get()));
        Ok((env, schema))
    }

    fn row_schema(&mut self, schema_text: &str) -> Option<Arc<RowSchema>> {
        // Records of a table share their schema until it changes: compare with the last one
        // before hashing the text.
        if let Some((text, s)) = &self.last_schema {
            if text == schema_text {
                return Some(s.clone());
            }
        }
        if let Some(s) = self.schemas.get(schema_text) {
            self.last_schema = Some((schema_text.to_string(), s.clone()));
            return Some(s.clone());
        }
        let s = Arc::new(connect::row_schema(schema_text)?);
        if self.schemas.len() > 64 {
            self.schemas.clear();
        }
        self.schemas.insert(schema_text.to_string(), s.clone());
        self.last_schema = Some((schema_text.to_string(), s.clone()));
        Some(s)
    }

    /// Evolves the table's schema for `rows`: a column whose source type widened is promoted
    /// where Iceberg allows it (`int` -> `long`, `float` -> `double`, a decimal's precision at its
    /// scale; one schema commit, [`Self::promote`]), and the columns the table lacks are added
    /// (one schema commit). A column whose type changed beyond what any Iceberg promotion holds
    /// exactly keeps its type: such values are not typed (the append names them in `_untyped`).
    async fn evolve(&mut self, lake: &Lake, rows: &[Arc<RowSchema>]) -> Result<Evolved, LakeError> {
        let schema = self.table.metadata().current_schema().clone();
        let mut added: Vec<(String, Conv)> = Vec::new();
        // (field id, name, the type the column gets).
        let mut promoted: Vec<(i32, String, Type)> = Vec::new();
        for row in rows {
            for (name, conv) in row.iter() {
                let Some(f) = schema.field_by_name(name) else {
                    if !added.iter().any(|(n, _)| n == name) {
                        added.push((name.clone(), *conv));
                    }
                    continue;
                };
                if META_COLUMNS.contains(&name.as_str()) {
                    return Err(LakeError::Invalid {
                        table: self.name.clone(),
                        reason: format!(
                            "the source has a column `{name}`, a name of the changelog's own columns"
                        ),
                    });
                }
                let at = promoted.iter().position(|(id, _, _)| *id == f.id);
                let now = at.map_or(f.field_type.as_ref(), |i| &promoted[i].2);
                if connect::fits(now, *conv) {
                    continue;
                }
                match (connect::promotion(now, *conv), at) {
                    (Some(to), Some(i)) => promoted[i].2 = to,
                    (Some(to), None) => promoted.push((f.id, name.clone(), to)),
                    (None, _) => {
                        if self.type_changes.insert(name.clone()) {
                            tracing::warn!(
                                table = %self.name,
                                column = %name,
                                was = %now,
                                now = %conv.iceberg_type(),
                                "a source column changed its type beyond what any Iceberg promotion of the \
                                 column holds exactly: its values are kept in `_envelope` only and named in \
                                 `_untyped` (rainbow_archive_iceberg_untyped_values_total)"
                            );
                        }
                    }
                }
            }
        }
        let evolved = Evolved { added: added.len() as u64, promoted: promoted.len() as u64 };
        if !promoted.is_empty() {
            self.promote(lake, &promoted).await?;
        }
        if added.is_empty() {
            return Ok(evolved);
        }
        let tx = Transaction::new(&self.table);
        let mut update = tx.update_schema();
        for (name, conv) in &added {
            update = update.add_column(AddColumn::optional(name, conv.iceberg_type()));
        }
        let tx = update.apply(tx).map_err(LakeError::table(&self.name))?;
        self.table = tx.commit(lake.catalog.as_ref()).await.map_err(LakeError::table(&self.name))?;
        tracing::info!(
            table = %self.name,
            columns = ?added.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            "Iceberg schema evolved: source columns added"
        );
        Ok(evolved)
    }

    /// Commits a schema whose columns `changes` (field id, name, new type) have their promoted
    /// types, the same field ids kept, so data files written before read as the new types. The
    /// crate's schema action only adds and deletes columns; the commit is
    /// [`crate::commit::commit`]'s, required to find the schema it was built from.
    async fn promote(&mut self, lake: &Lake, changes: &[(i32, String, Type)]) -> Result<(), LakeError> {
        use iceberg::{TableRequirement, TableUpdate};
        let ident = self.table.identifier().clone();
        let invalid = |reason: String| LakeError::Invalid { table: self.name.clone(), reason };
        for attempt in 0..COMMIT_ATTEMPTS {
            let meta = self.table.metadata();
            let current = meta.current_schema();
            // Done already (an earlier attempt whose answer was lost landed after all)?
            if changes
                .iter()
                .all(|(id, _, to)| current.field_by_id(*id).is_some_and(|f| *f.field_type == *to))
            {
                break;
            }
            let fields =
                current.as_struct().fields().iter().map(|f| match changes.iter().find(|c| c.0 == f.id) {
                    Some((_, _, to)) => {
                        Arc::new(NestedField { field_type: Box::new(to.clone()), ..f.as_ref().clone() })
                    }
                    None => f.clone(),
                });
            let next_id = meta.schemas_iter().map(|s| s.schema_id()).max().unwrap_or(0) + 1;
            let schema = Schema::builder()
                .with_schema_id(next_id)
                .with_fields(fields)
                .with_identifier_field_ids(current.identifier_field_ids())
                .build()
                .map_err(LakeError::table(&self.name))?;
            let requirements = vec![
                TableRequirement::UuidMatch { uuid: meta.uuid() },
                TableRequirement::CurrentSchemaIdMatch { current_schema_id: current.schema_id() },
            ];
            let updates =
                vec![TableUpdate::AddSchema { schema }, TableUpdate::SetCurrentSchema { schema_id: -1 }];
            match crate::commit::commit(lake, &ident, requirements, updates).await? {
                crate::commit::Outcome::Committed => {}
                outcome => {
                    tracing::info!(table = %self.name, attempt, ?outcome, "the schema promotion did not commit: reading the table again");
                    tokio::time::sleep(crate::commit::retry_pause(attempt)).await;
                }
            }
            self.table = lake.catalog.load_table(&ident).await.map_err(LakeError::table(&self.name))?;
        }
        let current = self.table.metadata().current_schema();
        let missing: Vec<&str> = changes
            .iter()
            .filter(|(id, _, to)| !current.field_by_id(*id).is_some_and(|f| *f.field_type == *to))
            .map(|(_, name, _)| name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(invalid(format!(
                "{COMMIT_ATTEMPTS} commits of the promoted types of {missing:?} did not go through (the table's \
                 schema changed meanwhile, or the catalog did not answer): the append is retried"
            )));
        }
        tracing::info!(
            table = %self.name,
            columns = ?changes.iter().map(|(_, n, to)| format!("{n}: {to}")).collect::<Vec<_>>(),
            "Iceberg schema evolved: source column types widened, the columns promoted"
        );
        Ok(())
    }

    /// Appends `records` of `partition` (consecutive, in offset order) in one commit that also
    /// records the partition's next offset. Records below the committed offset are left out.
    pub async fn append(
        &mut self,
        lake: &Lake,
        partition: i32,
        records: &[ChangeRecord<'_>],
    ) -> Result<AppendStats, LakeError> {
        let mut stats = AppendStats::default();
        let from = self.committed.get(&partition).copied().unwrap_or(0);
        let given = records.len();
        let records: Vec<&ChangeRecord<'_>> = records.iter().filter(|r| r.offset >= from).collect();
        stats.already_there = (given - records.len()) as u64;
        let Some(last) = records.last().map(|r| r.offset) else { return Ok(stats) };

        // Parse every envelope once: its metadata, row image and row schema.
        let mut parsed = Vec::with_capacity(records.len());
        let mut schemas: Vec<Arc<RowSchema>> = Vec::new();
        for r in &records {
            let p = match r.value {
                None => {
                    stats.tombstones += 1;
                    Parsed::default()
                }
                Some(value) => match self.parse(value) {
                    Err(_) => {
                        stats.not_change_events += 1;
                        Parsed { whole_untyped: true, ..Parsed::default() }
                    }
                    Ok((env, schema)) => {
                        if let Some(s) = &schema {
                            if !schemas.iter().any(|k| Arc::ptr_eq(k, s)) {
                                schemas.push(s.clone());
                            }
                        }
                        let delete = env.op == rainbow_schemas::wire::Op::Delete;
                        Parsed {
                            op: Some(env.op.code()),
                            commit_us: Some(env.source.ts_ms * 1000),
                            position: env.position().ok().map(|p| (p.commit, p.change)),
                            txid: env.source.tx_id,
                            table: Some(env.source.table.to_string()),
                            row: if delete { env.before } else { env.after },
                            // Without a schema there are no typed columns (read from the
                            // envelope).
                            whole_untyped: schema.is_none(),
                            before: if env.op == rainbow_schemas::wire::Op::Update {
                                env.before
                            } else {
                                None
                            },
                            schema,
                        }
                    }
                },
            };
            parsed.push(p);
        }
        let evolved = self.evolve(lake, &schemas).await?;
        (stats.columns_added, stats.columns_promoted) = (evolved.added, evolved.promoted);

        // Commit times: a record without one (a tombstone) takes the one before it in the
        // partition, else its Kafka timestamp's.
        let mut commit_us = Vec::with_capacity(records.len());
        for (r, p) in records.iter().zip(&parsed) {
            let t = p
                .commit_us
                .or_else(|| self.last_commit_us.get(&partition).copied())
                .or(r.kafka_ts_ms.map(|ms| ms * 1000));
            if let Some(t) = p.commit_us {
                self.last_commit_us.insert(partition, t);
            }
            commit_us.push(t);
        }
        // One data file per run of consecutive offsets of one commit day (readers rely on a file
        // holding consecutive offsets of one partition; a gap, with archive.allow_offset_gap,
        // starts a new file).
        let day = |i: usize| commit_us[i].map(|t: i64| t.div_euclid(86_400_000_000) as i32);
        let mut runs: Vec<(Option<i32>, std::ops::Range<usize>)> = Vec::new();
        for i in 0..records.len() {
            match runs.last_mut() {
                Some((d, range)) if *d == day(i) && records[i].offset == records[i - 1].offset + 1 => {
                    range.end = i + 1
                }
                _ => runs.push((day(i), i..i + 1)),
            }
        }

        let schema = self.table.metadata().current_schema().clone();
        let arrow_schema = Arc::new(schema_to_arrow_schema(&schema).map_err(LakeError::table(&self.name))?);
        let index: HashMap<&str, usize> =
            arrow_schema.fields().iter().enumerate().map(|(i, f)| (f.name().as_str(), i)).collect();
        let spec = self.table.metadata().default_partition_spec().as_ref().clone();
        let mut files = Vec::new();
        for (day, range) in runs {
            let mut cols: Vec<Column> = Vec::with_capacity(arrow_schema.fields().len());
            for f in arrow_schema.fields() {
                cols.push(Column::new(f.data_type()).ok_or_else(|| LakeError::Invalid {
                    table: self.name.clone(),
                    reason: format!(
                        "column `{}` has a type the writer does not handle: {}",
                        f.name(),
                        f.data_type()
                    ),
                })?);
            }
            let mut filled = vec![false; cols.len()];
            let mut untyped: Vec<&str> = Vec::new();
            for i in range.clone() {
                let (r, p) = (records[i], &parsed[i]);
                filled.iter_mut().for_each(|f| *f = false);
                untyped.clear();
                let mut whole_untyped = p.whole_untyped;
                let mut values = None;
                if let (false, Some(row), Some(_)) = (whole_untyped, p.row, &p.schema) {
                    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(row.get())
                        .map_err(|e| LakeError::Invalid {
                            table: self.name.clone(),
                            reason: format!("offset {} of partition {partition}: row image: {e}", r.offset),
                        })?;
                    // An update whose before image has another key needs its before image:
                    // read from the envelope.
                    whole_untyped = p.before.is_some_and(|b| key_changed(r.key, b, &v));
                    values = Some(v);
                }
                if whole_untyped {
                    untyped.push("*");
                } else if let (Some(values), Some(rs)) = (&values, &p.schema) {
                    for (name, conv) in rs.iter() {
                        let (Some(&c), Some(v)) = (index.get(name.as_str()), values.get(name)) else {
                            continue;
                        };
                        match cols[c].push(*conv, v) {
                            // A value kept as its JSON text is there for readers, but it is
                            // not the source's type: decoders read it from the envelope.
                            Ok(()) if *conv == Conv::Json => {
                                filled[c] = true;
                                untyped.push(name);
                            }
                            Ok(()) => filled[c] = true,
                            // Kept raw in the envelope; readers of the typed columns are told.
                            Err(e) => {
                                if self.type_changes.insert(format!("{name}\u{0}value")) {
                                    tracing::warn!(
                                        table = %self.name, offset = r.offset, partition, column = %name,
                                        "a value does not read as its column's type, kept in `_envelope` only \
                                         (and so are later ones of this column, counted in \
                                         rainbow_archive_iceberg_untyped_values_total): {}", e.0
                                    );
                                }
                                stats.untyped_values += 1;
                            }
                        }
                    }
                }
                for (c, col) in cols.iter_mut().enumerate().skip(META_COLUMNS.len()) {
                    if !filled[c] {
                        col.null();
                        if p.row.is_some() && !whole_untyped {
                            untyped.push(arrow_schema.field(c).name());
                        }
                    }
                }
                let untyped_text = (!untyped.is_empty()).then(|| untyped.join(","));
                let mut meta = cols.iter_mut();
                let mut next = || meta.next().expect("the metadata columns come first");
                text(next(), p.op);
                long(next(), commit_us[i]);
                long(next(), p.position.map(|x| x.0 as i64));
                long(next(), p.position.map(|x| x.1 as i64));
                long(next(), p.txid);
                text(next(), p.table.as_deref());
                text(next(), untyped_text.as_deref());
                text(next(), Some(&self.topic));
                long(next(), Some(partition as i64));
                long(next(), Some(r.offset));
                long(next(), r.kafka_ts_ms.map(|ms| ms * 1000));
                bytes(next(), r.key);
                bytes(next(), r.value);
            }
            let arrays: Vec<ArrayRef> = cols.into_iter().map(Column::finish).collect();
            let batch = RecordBatch::try_new(arrow_schema.clone(), arrays)?;
            let key =
                PartitionKey::new(spec.clone(), schema.clone(), Struct::from_iter([day.map(Literal::date)]));
            // Named by the offsets: a retry after a crash before the commit writes the same
            // file again, never a second copy that the table would reference.
            let (first, last) = (records[range.start].offset, records[range.end - 1].offset);
            let mut writer =
                self.data_file_writer(key, format!("p{partition:05}-{first:020}-{last:020}")).await?;
            writer.write(batch).await.map_err(LakeError::table(&self.name))?;
            for f in writer.close().await.map_err(LakeError::table(&self.name))? {
                stats.bytes += f.file_size_in_bytes();
                files.push(f);
            }
        }
        stats.files = files.len() as u64;
        stats.records = records.len() as u64;

        let mut next = self.committed.clone();
        next.insert(partition, last + 1);
        let props = HashMap::from([
            (OFFSETS_PROPERTY.to_string(), offsets_property(&next)),
            (TOPIC_PROPERTY.to_string(), self.topic.clone()),
        ]);
        let tx = Transaction::new(&self.table);
        let tx = tx
            .fast_append()
            .with_check_duplicate(false)
            .add_data_files(files)
            .set_snapshot_properties(props)
            .apply(tx)
            .map_err(LakeError::table(&self.name))?;
        self.table = tx.commit(lake.catalog.as_ref()).await.map_err(LakeError::table(&self.name))?;
        self.committed = next;
        Ok(stats)
    }
}

impl ChangelogTable {
    /// A writer of data files of the partition `key` in the table's current schema, with the
    /// changelog's Parquet settings, its files named `<prefix>-<n>-....parquet`.
    async fn data_file_writer(
        &self,
        key: PartitionKey,
        prefix: String,
    ) -> Result<
        DataFileWriter<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>,
        LakeError,
    > {
        let meta = self.table.metadata();
        let location = DefaultLocationGenerator::new(meta).map_err(LakeError::table(&self.name))?;
        let names = DefaultFileNameGenerator::new(prefix, None, DataFileFormat::Parquet);
        let parquet = ParquetWriterBuilder::new(changelog_properties(), meta.current_schema().clone());
        let rolling = RollingFileWriterBuilder::new_with_default_file_size(
            parquet,
            self.table.file_io().clone(),
            location,
            names,
        );
        DataFileWriterBuilder::new(rolling).build(Some(key)).await.map_err(LakeError::table(&self.name))
    }
}

/// What an append reads from one record's envelope.
#[derive(Default)]
struct Parsed<'a> {
    op: Option<&'static str>,
    commit_us: Option<i64>,
    position: Option<(u64, u64)>,
    txid: Option<i64>,
    table: Option<String>,
    row: Option<&'a serde_json::value::RawValue>,
    schema: Option<Arc<RowSchema>>,
    /// No typed columns for this record: read it from `_envelope`.
    whole_untyped: bool,
    /// An update's before image.
    before: Option<&'a serde_json::value::RawValue>,
}

fn text(c: &mut Column, v: Option<&str>) {
    match (c, v) {
        (Column::Text(b), Some(v)) => b.append_value(v),
        (c, _) => c.null(),
    }
}

fn long(c: &mut Column, v: Option<i64>) {
    match (c, v) {
        (Column::Long(b), Some(v)) => b.append_value(v),
        (Column::Timestamp(b, _), Some(v)) => b.append_value(v),
        (Column::Int(b), Some(v)) => b.append_value(v as i32),
        (c, _) => c.null(),
    }
}

fn bytes(c: &mut Column, v: Option<&[u8]>) {
    match (c, v) {
        (Column::Bytes(b), Some(v)) => b.append_value(v),
        (c, _) => c.null(),
    }
}

/// Whether an update's before image has another value in a column of the record's key (the
/// key's fields, with or without the schema wrapper) than its after image.
fn key_changed(
    key: Option<&[u8]>,
    before: &serde_json::value::RawValue,
    after: &serde_json::Map<String, serde_json::Value>,
) -> bool {
    use serde_json::Value;
    let Some(key) = key else { return false };
    let Ok(key) = serde_json::from_slice::<Value>(key) else { return false };
    let key = key.get("payload").cloned().unwrap_or(key);
    let Ok(Value::Object(b)) = serde_json::from_str::<Value>(before.get()) else { return false };
    key.as_object().is_some_and(|k| k.keys().any(|f| b.get(f) != after.get(f)))
}

/// The changelog's Parquet settings: Rainbow's, without dictionaries for the raw bytes (every
/// value differs: a dictionary only costs a hash per value).
fn changelog_properties() -> parquet::file::properties::WriterProperties {
    use parquet::schema::types::ColumnPath;
    crate::parquet_properties()
        .into_builder()
        .set_column_dictionary_enabled(ColumnPath::from("_key"), false)
        .set_column_dictionary_enabled(ColumnPath::from("_envelope"), false)
        .build()
}
