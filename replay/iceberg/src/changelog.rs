//! A changelog table: one source table's Kafka records as typed rows (see the crate's contract).

use crate::catalog::Lake;
use crate::connect::{self, Column, Conv, RowSchema};
use crate::error::LakeError;
use arrow::array::{ArrayRef, RecordBatch};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{
    DataFileFormat, Literal, NestedField, PartitionKey, PrimitiveType, Schema, Struct, Transform, Type,
    UnboundPartitionSpec,
};
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::TableCreation;
use rainbow_schemas::wire::Envelope;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The snapshot summary property holding the next offset of each partition (JSON object of
/// partition number to offset) after the snapshot's append.
pub const OFFSETS_PROPERTY: &str = "rainbow.kafka.offsets";
/// The snapshot summary property naming the topic.
pub const TOPIC_PROPERTY: &str = "rainbow.kafka.topic";

/// The metadata columns, in order, before the source row's columns.
pub const META_COLUMNS: [&str; 11] = [
    "_op",
    "_commit_ts",
    "_commit_lsn",
    "_change_lsn",
    "_txid",
    "_kafka_topic",
    "_kafka_partition",
    "_kafka_offset",
    "_kafka_ts",
    "_key",
    "_envelope",
];

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
}

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
        NestedField::required(6, "_kafka_topic", p(PrimitiveType::String)),
        NestedField::required(7, "_kafka_partition", p(PrimitiveType::Int)),
        NestedField::required(8, "_kafka_offset", p(PrimitiveType::Long)),
        NestedField::optional(9, "_kafka_ts", tz()),
        NestedField::optional(10, "_key", p(PrimitiveType::Binary)),
        NestedField::optional(11, "_envelope", p(PrimitiveType::Binary)),
    ];
    Schema::builder()
        .with_fields(fields.into_iter().map(Arc::new))
        .build()
        .expect("the metadata columns form a schema")
}

/// The committed next offsets of the newest snapshot that recorded them.
fn committed_offsets(table: &Table) -> Result<BTreeMap<i32, i64>, LakeError> {
    let meta = table.metadata();
    let mut at = meta.current_snapshot().cloned();
    while let Some(s) = at {
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
        at = s.parent_snapshot_id().and_then(|id| meta.snapshot_by_id(id).cloned());
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
            let spec = UnboundPartitionSpec::builder()
                .add_partition_field(2, "_commit_day", Transform::Day)
                .map_err(LakeError::table(name))?
                .build();
            let creation = TableCreation::builder()
                .name(name.to_string())
                .schema(meta_schema())
                .partition_spec(spec)
                .properties([
                    ("write.format.default".to_string(), "parquet".to_string()),
                    ("write.parquet.compression-codec".to_string(), "snappy".to_string()),
                    ("rainbow.kafka.topic".to_string(), topic.to_string()),
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
        let committed = committed_offsets(&table)?;
        Ok(ChangelogTable {
            name: name.to_string(),
            topic: topic.to_string(),
            table,
            committed,
            last_commit_us: HashMap::new(),
            schemas: HashMap::new(),
        })
    }

    /// The next offset of each partition that the table holds (records below it are in).
    pub fn committed(&self) -> &BTreeMap<i32, i64> {
        &self.committed
    }

    /// The table as of the last commit.
    pub fn table(&self) -> &Table {
        &self.table
    }

    fn row_schema(&mut self, schema_text: &str) -> Option<Arc<RowSchema>> {
        if let Some(s) = self.schemas.get(schema_text) {
            return Some(s.clone());
        }
        let s = Arc::new(connect::row_schema(schema_text)?);
        if self.schemas.len() > 64 {
            self.schemas.clear();
        }
        self.schemas.insert(schema_text.to_string(), s.clone());
        Some(s)
    }

    /// Adds the columns of `rows` that the table lacks (one schema commit); a column whose type
    /// changed beyond what the table's type holds exactly is an error.
    async fn evolve(&mut self, lake: &Lake, rows: &[Arc<RowSchema>]) -> Result<u64, LakeError> {
        let schema = self.table.metadata().current_schema().clone();
        let mut added: Vec<(String, Conv)> = Vec::new();
        for row in rows {
            for (name, conv) in row.iter() {
                match schema.field_by_name(name) {
                    Some(f) => {
                        if META_COLUMNS.contains(&name.as_str()) {
                            return Err(LakeError::Invalid {
                                table: self.name.clone(),
                                reason: format!(
                                    "the source has a column `{name}`, a name of the changelog's own columns"
                                ),
                            });
                        }
                        if !connect::fits(&f.field_type, *conv) {
                            return Err(LakeError::TypeChanged {
                                table: self.name.clone(),
                                column: name.clone(),
                                was: f.field_type.to_string(),
                                now: conv.iceberg_type().to_string(),
                            });
                        }
                    }
                    None => match added.iter().find(|(n, _)| n == name) {
                        Some((_, c)) if c.iceberg_type() != conv.iceberg_type() => {
                            return Err(LakeError::TypeChanged {
                                table: self.name.clone(),
                                column: name.clone(),
                                was: c.iceberg_type().to_string(),
                                now: conv.iceberg_type().to_string(),
                            })
                        }
                        Some(_) => {}
                        None => added.push((name.clone(), *conv)),
                    },
                }
            }
        }
        if added.is_empty() {
            return Ok(0);
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
        Ok(added.len() as u64)
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
        let first = records[0].offset;

        // Parse every envelope once: its metadata, row image and row schema.
        struct Parsed<'a> {
            op: Option<&'static str>,
            commit_us: Option<i64>,
            position: Option<(u64, u64)>,
            txid: Option<i64>,
            row: Option<&'a serde_json::value::RawValue>,
            schema: Option<Arc<RowSchema>>,
        }
        let mut parsed = Vec::with_capacity(records.len());
        let mut schemas: Vec<Arc<RowSchema>> = Vec::new();
        for r in &records {
            let Some(value) = r.value else {
                stats.tombstones += 1;
                parsed.push(Parsed {
                    op: None,
                    commit_us: None,
                    position: None,
                    txid: None,
                    row: None,
                    schema: None,
                });
                continue;
            };
            let Ok(env) = Envelope::parse(value) else {
                stats.not_change_events += 1;
                parsed.push(Parsed {
                    op: None,
                    commit_us: None,
                    position: None,
                    txid: None,
                    row: None,
                    schema: None,
                });
                continue;
            };
            let schema = env.schema.and_then(|s| self.row_schema(s.get()));
            if let Some(s) = &schema {
                if !schemas.iter().any(|k| Arc::ptr_eq(k, s)) {
                    schemas.push(s.clone());
                }
            }
            let row = if env.op == rainbow_schemas::wire::Op::Delete { env.before } else { env.after };
            parsed.push(Parsed {
                op: Some(env.op.code()),
                commit_us: Some(env.source.ts_ms * 1000),
                position: env.position().ok().map(|p| (p.commit, p.change)),
                txid: env.source.tx_id,
                row,
                schema,
            });
        }
        stats.columns_added = self.evolve(lake, &schemas).await?;

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
        let mut by_day: BTreeMap<Option<i32>, Vec<usize>> = BTreeMap::new();
        for (i, t) in commit_us.iter().enumerate() {
            by_day.entry(t.map(|t| t.div_euclid(86_400_000_000) as i32)).or_default().push(i);
        }

        let schema = self.table.metadata().current_schema().clone();
        let arrow_schema = Arc::new(schema_to_arrow_schema(&schema).map_err(LakeError::table(&self.name))?);
        let spec = self.table.metadata().default_partition_spec().as_ref().clone();
        let mut files = Vec::new();
        for (day, rows) in &by_day {
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
            let index: HashMap<&str, usize> =
                arrow_schema.fields().iter().enumerate().map(|(i, f)| (f.name().as_str(), i)).collect();
            let mut filled = vec![false; cols.len()];
            for &i in rows {
                let (r, p) = (records[i], &parsed[i]);
                let text = |c: &mut Column, v: Option<&str>| match (c, v) {
                    (Column::Text(b), Some(v)) => b.append_value(v),
                    (c, _) => c.null(),
                };
                let long = |c: &mut Column, v: Option<i64>| match (c, v) {
                    (Column::Long(b), Some(v)) => b.append_value(v),
                    (Column::Timestamp(b, _), Some(v)) => b.append_value(v),
                    (Column::Int(b), Some(v)) => b.append_value(v as i32),
                    (c, _) => c.null(),
                };
                let bytes = |c: &mut Column, v: Option<&[u8]>| match (c, v) {
                    (Column::Bytes(b), Some(v)) => b.append_value(v),
                    (c, _) => c.null(),
                };
                text(&mut cols[0], p.op);
                long(&mut cols[1], commit_us[i]);
                long(&mut cols[2], p.position.map(|x| x.0 as i64));
                long(&mut cols[3], p.position.map(|x| x.1 as i64));
                long(&mut cols[4], p.txid);
                text(&mut cols[5], Some(&self.topic));
                long(&mut cols[6], Some(partition as i64));
                long(&mut cols[7], Some(r.offset));
                long(&mut cols[8], r.kafka_ts_ms.map(|ms| ms * 1000));
                bytes(&mut cols[9], r.key);
                bytes(&mut cols[10], r.value);
                filled.iter_mut().for_each(|f| *f = false);
                if let (Some(row), Some(rs)) = (p.row, &p.schema) {
                    let values: serde_json::Map<String, serde_json::Value> = serde_json::from_str(row.get())
                        .map_err(|e| LakeError::Invalid {
                            table: self.name.clone(),
                            reason: format!("offset {} of partition {partition}: row image: {e}", r.offset),
                        })?;
                    for (name, conv) in rs.iter() {
                        let (Some(&c), Some(v)) = (index.get(name.as_str()), values.get(name)) else {
                            continue;
                        };
                        cols[c].push(*conv, v).map_err(|e| LakeError::Invalid {
                            table: self.name.clone(),
                            reason: format!(
                                "offset {} of partition {partition}, column `{name}`: {}",
                                r.offset, e.0
                            ),
                        })?;
                        filled[c] = true;
                    }
                }
                for (c, col) in cols.iter_mut().enumerate().skip(META_COLUMNS.len()) {
                    if !filled[c] {
                        col.null();
                    }
                }
            }
            let arrays: Vec<ArrayRef> = cols.into_iter().map(Column::finish).collect();
            let batch = RecordBatch::try_new(arrow_schema.clone(), arrays)?;
            let key =
                PartitionKey::new(spec.clone(), schema.clone(), Struct::from_iter([day.map(Literal::date)]));
            let location =
                DefaultLocationGenerator::new(self.table.metadata()).map_err(LakeError::table(&self.name))?;
            // Named by the offsets: a retry after a crash before the commit writes the same
            // file again, never a second copy that the table would reference.
            let names = DefaultFileNameGenerator::new(
                format!(
                    "p{partition:05}-{first:020}-{last:020}-d{}",
                    day.map_or("null".to_string(), |d| d.to_string())
                ),
                None,
                DataFileFormat::Parquet,
            );
            let parquet = ParquetWriterBuilder::new(crate::parquet_properties(), schema.clone());
            let rolling = RollingFileWriterBuilder::new_with_default_file_size(
                parquet,
                self.table.file_io().clone(),
                location,
                names,
            );
            let mut writer = DataFileWriterBuilder::new(rolling)
                .build(Some(key))
                .await
                .map_err(LakeError::table(&self.name))?;
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
        let offsets: BTreeMap<String, i64> = next.iter().map(|(p, o)| (p.to_string(), *o)).collect();
        let props = HashMap::from([
            (OFFSETS_PROPERTY.to_string(), serde_json::to_string(&offsets).expect("offsets serialise")),
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
