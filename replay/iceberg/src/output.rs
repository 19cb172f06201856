//! Whole tables written as Iceberg tables (the replay's output): each write replaces the table
//! of that name with one snapshot holding every row.

use crate::catalog::Lake;
use crate::error::LakeError;
use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, TimeUnit};
use iceberg::arrow::{arrow_schema_to_schema_auto_assign_ids, schema_to_arrow_schema};
use iceberg::spec::DataFileFormat;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::TableCreation;
use std::collections::HashMap;
use std::sync::Arc;

/// The Iceberg-representable type of an Arrow column: unsigned integers become the next wider
/// signed type (UInt64 stays 64 bits: values must be below 2^63), timestamps microseconds.
fn iceberg_able(t: &DataType) -> DataType {
    match t {
        DataType::UInt8 | DataType::UInt16 | DataType::Int8 | DataType::Int16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Timestamp(_, tz) => {
            DataType::Timestamp(TimeUnit::Microsecond, tz.as_ref().map(|_| "+00:00".into()))
        }
        other => other.clone(),
    }
}

/// Writes `batches` (one table's rows, one schema) as the table `name` of the lake's
/// namespace, replacing a table of that name. `properties` go to the snapshot's summary.
/// Returns the rows written.
pub async fn replace_table(
    lake: &Lake,
    name: &str,
    batches: &[RecordBatch],
    properties: HashMap<String, String>,
) -> Result<u64, LakeError> {
    let failed = LakeError::table(name);
    let Some(first) = batches.first() else { return Ok(0) };
    let plain = ArrowSchema::new(
        first
            .schema()
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), iceberg_able(f.data_type()), f.is_nullable()))
            .collect::<Vec<_>>(),
    );
    let schema = arrow_schema_to_schema_auto_assign_ids(&plain).map_err(LakeError::table(name))?;
    let ident = lake.ident(name);
    if lake.catalog.table_exists(&ident).await.map_err(LakeError::table(name))? {
        lake.catalog.drop_table(&ident).await.map_err(LakeError::table(name))?;
    }
    let creation = TableCreation::builder()
        .name(name.to_string())
        .schema(schema)
        .properties([("write.format.default".to_string(), "parquet".to_string())])
        .build();
    let table = lake.catalog.create_table(&lake.namespace, creation).await.map_err(failed)?;
    let schema = table.metadata().current_schema().clone();
    let target = Arc::new(schema_to_arrow_schema(&schema).map_err(LakeError::table(name))?);
    let location = DefaultLocationGenerator::new(table.metadata()).map_err(LakeError::table(name))?;
    let names = DefaultFileNameGenerator::new("part".into(), None, DataFileFormat::Parquet);
    let parquet = ParquetWriterBuilder::new(crate::parquet_properties(), schema.clone());
    let rolling = RollingFileWriterBuilder::new_with_default_file_size(
        parquet,
        table.file_io().clone(),
        location,
        names,
    );
    let mut writer = DataFileWriterBuilder::new(rolling).build(None).await.map_err(LakeError::table(name))?;
    let mut rows = 0u64;
    for batch in batches {
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .zip(target.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
            .collect::<Result<_, _>>()?;
        writer.write(RecordBatch::try_new(target.clone(), columns)?).await.map_err(LakeError::table(name))?;
        rows += batch.num_rows() as u64;
    }
    let files = writer.close().await.map_err(LakeError::table(name))?;
    let tx = Transaction::new(&table);
    let tx = tx
        .fast_append()
        .add_data_files(files)
        .set_snapshot_properties(properties)
        .apply(tx)
        .map_err(LakeError::table(name))?;
    tx.commit(lake.catalog.as_ref()).await.map_err(LakeError::table(name))?;
    Ok(rows)
}
