//! The master dataset: every Kafka record of the CDC topics, immutable, in Parquet segments.
//!
//! Layout: `master/<topic>/date=YYYY-MM-DD/part-<partition, 5 digits>-<first offset, 20
//! digits>-<last offset, 20 digits>.parquet`. The date is the UTC day of the record's source
//! commit (`source.ts_ms`; a record without one, a tombstone or a value that is not a change
//! event, takes the day of the record before it in its partition, else its Kafka timestamp's). One segment holds
//! consecutive records of one partition and one day, in offset order. Segments of a partition
//! never overlap: the archiver resumes after the highest archived offset, so a retry writes the
//! identical file and never a second one over the same records.
//!
//! Columns: `topic` (Utf8), `partition` (Int32), `offset` (Int64), `key` and `value` (Binary,
//! null for null), `timestamp` (Kafka timestamp, Timestamp(ms, UTC), nullable), `commit_lsn`
//! and `change_lsn` (UInt64, the source position of the wire contract; null when the value is
//! not a change event with a position; `commit_lsn` is 0 for snapshot rows).

use crate::error::ArchiveError;
use arrow::array::{
    Array, BinaryArray, BinaryBuilder, Int32Array, Int32Builder, Int64Array, Int64Builder, RecordBatch,
    StringArray, StringBuilder, TimestampMillisecondArray, TimestampMillisecondBuilder, UInt64Array,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use std::sync::Arc;

/// One archived Kafka record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    pub commit_lsn: Option<u64>,
    pub change_lsn: Option<u64>,
}

impl ArchivedRecord {
    /// Payload bytes, for segment size limits.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len) + 48
    }
}

/// A segment's identity, which is its object name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    pub topic: String,
    /// `YYYY-MM-DD`.
    pub date: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

impl SegmentName {
    /// The relative object path.
    pub fn path(&self) -> String {
        format!(
            "master/{}/date={}/part-{:05}-{:020}-{:020}.parquet",
            self.topic, self.date, self.partition, self.first, self.last
        )
    }

    /// Parses a relative object path; `None` for anything that is not a segment.
    pub fn parse(path: &str) -> Option<SegmentName> {
        let mut parts = path.split('/');
        if parts.next()? != "master" {
            return None;
        }
        let topic = parts.next()?.to_string();
        let date = parts.next()?.strip_prefix("date=")?.to_string();
        let file = parts.next()?.strip_prefix("part-")?.strip_suffix(".parquet")?;
        if parts.next().is_some() || !valid_date(&date) {
            return None;
        }
        let mut nums = file.split('-');
        let partition = nums.next()?.parse().ok()?;
        let first = nums.next()?.parse().ok()?;
        let last = nums.next()?.parse().ok()?;
        (nums.next().is_none() && first <= last).then_some(SegmentName {
            topic,
            date,
            partition,
            first,
            last,
        })
    }
}

fn valid_date(d: &str) -> bool {
    let b = d.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && d.bytes().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
        Field::new("commit_lsn", DataType::UInt64, true),
        Field::new("change_lsn", DataType::UInt64, true),
    ]))
}

/// Parquet writer settings of every file Rainbow writes (one definition, with the Iceberg tables').
pub use rainbow_iceberg::parquet_properties as writer_properties;

/// A segment's Parquet bytes.
pub fn encode(records: &[ArchivedRecord]) -> Result<Vec<u8>, ArchiveError> {
    let mut topic = StringBuilder::new();
    let mut partition = Int32Builder::new();
    let mut offset = Int64Builder::new();
    let mut key = BinaryBuilder::new();
    let mut value = BinaryBuilder::new();
    let mut ts = TimestampMillisecondBuilder::new().with_timezone("UTC");
    let mut commit = UInt64Builder::new();
    let mut change = UInt64Builder::new();
    for r in records {
        topic.append_value(&r.topic);
        partition.append_value(r.partition);
        offset.append_value(r.offset);
        key.append_option(r.key.as_deref());
        value.append_option(r.value.as_deref());
        ts.append_option(r.timestamp_ms);
        commit.append_option(r.commit_lsn);
        change.append_option(r.change_lsn);
    }
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(topic.finish()),
            Arc::new(partition.finish()),
            Arc::new(offset.finish()),
            Arc::new(key.finish()),
            Arc::new(value.finish()),
            Arc::new(ts.finish()),
            Arc::new(commit.finish()),
            Arc::new(change.finish()),
        ],
    )?;
    let mut out = Vec::new();
    // No dictionaries for the raw bytes: every value differs.
    let props = writer_properties()
        .into_builder()
        .set_column_dictionary_enabled(parquet::schema::types::ColumnPath::from("key"), false)
        .set_column_dictionary_enabled(parquet::schema::types::ColumnPath::from("value"), false)
        .build();
    let mut w = ArrowWriter::try_new(&mut out, schema(), Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok(out)
}

/// Reads a segment's records, batch by batch (`batch_rows` at a time).
pub struct SegmentReader {
    path: String,
    batches: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
}

impl SegmentReader {
    pub fn open(path: &str, data: bytes::Bytes, batch_rows: usize) -> Result<SegmentReader, ArchiveError> {
        let bad = |e: &dyn std::fmt::Display| ArchiveError::Segment {
            path: path.to_string(),
            reason: e.to_string(),
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(data).map_err(|e| bad(&e))?;
        if builder.schema().fields() != schema().fields() {
            return Err(bad(&format!("unexpected columns {:?}", builder.schema().fields())));
        }
        let batches = builder.with_batch_size(batch_rows).build().map_err(|e| bad(&e))?;
        Ok(SegmentReader { path: path.to_string(), batches })
    }

    /// The next records, `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<Vec<ArchivedRecord>>, ArchiveError> {
        let Some(batch) = self.batches.next() else { return Ok(None) };
        let batch =
            batch.map_err(|e| ArchiveError::Segment { path: self.path.clone(), reason: e.to_string() })?;
        Ok(Some(decode_batch(&batch)))
    }

    /// The next batch as `f(offset, value)` per record, without copying keys and values out of
    /// the batch; `None` at the end.
    pub fn next_mapped<T>(
        &mut self,
        mut f: impl FnMut(i64, Option<&[u8]>) -> T,
    ) -> Result<Option<Vec<T>>, ArchiveError> {
        let Some(batch) = self.batches.next() else { return Ok(None) };
        let b =
            batch.map_err(|e| ArchiveError::Segment { path: self.path.clone(), reason: e.to_string() })?;
        let offset = b.column(2).as_any().downcast_ref::<Int64Array>().expect("schema checked at open");
        let value = b.column(4).as_any().downcast_ref::<BinaryArray>().expect("schema checked at open");
        Ok(Some(
            (0..b.num_rows())
                .map(|i| f(offset.value(i), (!value.is_null(i)).then(|| value.value(i))))
                .collect(),
        ))
    }
}

fn decode_batch(b: &RecordBatch) -> Vec<ArchivedRecord> {
    fn col<T: 'static>(b: &RecordBatch, i: usize) -> &T {
        b.column(i).as_any().downcast_ref::<T>().expect("schema checked at open")
    }
    let topic = col::<StringArray>(b, 0);
    let partition = col::<Int32Array>(b, 1);
    let offset = col::<Int64Array>(b, 2);
    let key = col::<BinaryArray>(b, 3);
    let value = col::<BinaryArray>(b, 4);
    let ts = col::<TimestampMillisecondArray>(b, 5);
    let commit = col::<UInt64Array>(b, 6);
    let change = col::<UInt64Array>(b, 7);
    let opt_bytes = |a: &BinaryArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_vec());
    (0..b.num_rows())
        .map(|i| ArchivedRecord {
            topic: topic.value(i).to_string(),
            partition: partition.value(i),
            offset: offset.value(i),
            key: opt_bytes(key, i),
            value: opt_bytes(value, i),
            timestamp_ms: (!ts.is_null(i)).then(|| ts.value(i)),
            commit_lsn: (!commit.is_null(i)).then(|| commit.value(i)),
            change_lsn: (!change.is_null(i)).then(|| change.value(i)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_reject_strangers() {
        let s = SegmentName {
            topic: "rainbow.public.orders".into(),
            date: "2024-08-01".into(),
            partition: 2,
            first: 10,
            last: 99,
        };
        let p = s.path();
        assert_eq!(p, "master/rainbow.public.orders/date=2024-08-01/part-00002-00000000000000000010-00000000000000000099.parquet");
        assert_eq!(SegmentName::parse(&p), Some(s));
        for bad in [
            "master/t/date=2024-8-01/part-00002-1-2.parquet",
            "master/t/date=2024-08-01/part-00002-5-2.parquet",
            "master/t/date=2024-08-01/x.parquet",
            "other/t/date=2024-08-01/part-00002-1-2.parquet",
        ] {
            assert_eq!(SegmentName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn segments_round_trip_byte_identically() {
        let records: Vec<ArchivedRecord> = (0..1000)
            .map(|i| ArchivedRecord {
                topic: "t".into(),
                partition: 1,
                offset: i,
                key: (i % 7 != 0).then(|| format!("k{i}").into_bytes()),
                value: (i % 5 != 0).then(|| format!("{{\"v\":{i}}}").into_bytes()),
                timestamp_ms: Some(1_722_470_400_000 + i),
                commit_lsn: (i % 3 != 0).then_some(i as u64 * 10),
                change_lsn: Some(i as u64 * 10 + 1),
            })
            .collect();
        let bytes = encode(&records).unwrap();
        assert_eq!(bytes, encode(&records).unwrap());
        let mut r = SegmentReader::open("t", bytes::Bytes::from(bytes), 300).unwrap();
        let mut back = Vec::new();
        while let Some(b) = r.next_batch().unwrap() {
            assert!(b.len() <= 300);
            back.extend(b);
        }
        assert_eq!(back, records);
    }
}
