//! Reads of a data file's byte ranges for Parquet's async reader: a reader that projects some
//! columns fetches their column chunks and the footer, not the whole file (a changelog file's
//! bytes are mostly its `_envelope` column, which the typed decoding does not read).
//!
//! Contract ([`AsyncFileReader`]): the footer is read with one fetch of its last
//! [`FOOTER_HINT`] bytes when it fits in them; the ranges of one request whose gaps are at most
//! [`COALESCE_GAP`] are fetched together, one fetch at a time, in file order.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use iceberg::io::FileRead;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use std::ops::Range;
use std::sync::Arc;

/// Bytes read at the end of a file to find its footer in one fetch.
pub const FOOTER_HINT: usize = 64 * 1024;
/// Ranges apart by at most this many bytes are fetched as one.
pub const COALESCE_GAP: u64 = 64 * 1024;

/// A data file read by byte ranges (see the module's contract).
pub struct ColumnReader {
    file: Box<dyn FileRead>,
    size: u64,
}

impl ColumnReader {
    pub fn new(file: Box<dyn FileRead>, size: u64) -> ColumnReader {
        ColumnReader { file, size }
    }
}

fn external(e: iceberg::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

/// The ranges to fetch for `ranges`: sorted, those apart by at most `gap` bytes merged.
fn coalesce(ranges: &[Range<u64>], gap: u64) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges.to_vec();
    sorted.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match merged.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(gap) => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

impl AsyncFileReader for ColumnReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move { self.file.read(range).await.map_err(external) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            let fetches = coalesce(&ranges, COALESCE_GAP);
            let mut fetched = Vec::with_capacity(fetches.len());
            for f in &fetches {
                fetched.push(self.file.read(f.clone()).await.map_err(external)?);
            }
            Ok(ranges
                .iter()
                .map(|r| {
                    let i = fetches.partition_point(|f| f.start <= r.start) - 1;
                    let start = (r.start - fetches[i].start) as usize;
                    let end = (r.end - fetches[i].start) as usize;
                    fetched[i].slice(start..end.min(fetched[i].len()))
                })
                .collect())
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let mut reader = ParquetMetaDataReader::new().with_prefetch_hint(Some(FOOTER_HINT));
            if let Some(o) = options {
                reader = reader.with_metadata_options(Some(o.metadata_options().clone()));
            }
            let size = self.size;
            Ok(Arc::new(reader.load_and_finish(self, size).await?))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BinaryArray, Int64Array, RecordBatch};
    use parquet::arrow::{ArrowWriter, ParquetRecordBatchStreamBuilder, ProjectionMask};
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A file in memory that counts the bytes read from it.
    struct Counted(Bytes, Arc<AtomicU64>);

    impl FileRead for Counted {
        fn read<'a, 'b>(
            &'a self,
            range: Range<u64>,
        ) -> Pin<Box<dyn Future<Output = iceberg::Result<Bytes>> + Send + 'b>>
        where
            'a: 'b,
            Self: 'b,
        {
            self.1.fetch_add(range.end - range.start, Ordering::Relaxed);
            let bytes = self.0.slice(range.start as usize..range.end as usize);
            Box::pin(async move { Ok(bytes) })
        }
    }

    #[test]
    fn a_projection_fetches_its_columns_not_the_whole_file() {
        let ids = Int64Array::from_iter_values(0..20_000);
        // A large column beside a small one, as `_envelope` is.
        let blobs = BinaryArray::from_iter_values((0..20_000u64).map(|i| {
            (0..64u64)
                .map(|j| ((i * 256 + j).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
                .collect::<Vec<u8>>()
        }));
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(ids) as arrow::array::ArrayRef),
            ("_envelope", Arc::new(blobs) as arrow::array::ArrayRef),
        ])
        .unwrap();
        let mut file = Vec::new();
        let mut w = ArrowWriter::try_new(&mut file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let size = file.len() as u64;
        let read = Arc::new(AtomicU64::new(0));
        let reader = ColumnReader::new(Box::new(Counted(Bytes::from(file), read.clone())), size);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let sum: i64 = rt.block_on(async {
            let builder = ParquetRecordBatchStreamBuilder::new(reader).await.unwrap();
            let mask = ProjectionMask::leaves(builder.parquet_schema(), [0]);
            let mut groups = builder.with_projection(mask).build().unwrap();
            let mut sum = 0;
            while let Some(batches) = groups.next_row_group().await.unwrap() {
                for b in batches {
                    let b = b.unwrap();
                    assert_eq!(b.num_columns(), 1);
                    sum += b
                        .column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .values()
                        .iter()
                        .sum::<i64>();
                }
            }
            sum
        });
        assert_eq!(sum, (0..20_000).sum::<i64>());
        let read = read.load(Ordering::Relaxed);
        assert!(read * 4 < size, "{read} of {size} bytes read for the small column");
    }

    #[test]
    fn near_ranges_are_fetched_together_far_ones_apart() {
        assert_eq!(coalesce(&[10..20, 0..5, 23..30], 4), vec![0..5, 10..30]);
        assert_eq!(coalesce(&[0..5, 100..200, 3..8], 10), vec![0..8, 100..200]);
        assert_eq!(coalesce(&[], 10), Vec::<std::ops::Range<u64>>::new());
    }
}
