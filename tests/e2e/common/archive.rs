//! `rainbow archive` as a child process with its own master dataset directory, consumer group
//! and metrics port.

use super::process::{free_port, Service};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct ArchiveProcess {
    pub service: Service,
    /// The master dataset (storage.url).
    pub store: PathBuf,
}

impl std::ops::Deref for ArchiveProcess {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.service
    }
}

impl std::ops::DerefMut for ArchiveProcess {
    fn deref_mut(&mut self) -> &mut Service {
        &mut self.service
    }
}

impl ArchiveProcess {
    /// An archiver of the CDC topics with `topic_prefix`; segments close after 300 ms.
    pub fn new(topic_prefix: &str) -> ArchiveProcess {
        let name = super::unique_name("arch");
        let store = std::env::temp_dir().join(&name).join("store");
        let metrics = format!("127.0.0.1:{}", free_port());
        let env = vec![
            ("RAINBOW_CDC__TOPIC_PREFIX".into(), topic_prefix.to_string()),
            ("RAINBOW_STORAGE__URL".into(), store.display().to_string()),
            ("RAINBOW_ARCHIVE__GROUP_ID".into(), name.clone()),
            ("RAINBOW_ARCHIVE__SEGMENT_MAX_AGE_MS".into(), "300".into()),
            ("RAINBOW_ARCHIVE__METRICS_LISTEN".into(), metrics.clone()),
        ];
        let mut service = Service::new("archive", &name, "info", env);
        service.metrics = Some(metrics);
        ArchiveProcess { service, store }
    }

    /// Segments in the master dataset: see [`segments`].
    pub fn segments(&self) -> Vec<(String, String, i32, i64, i64)> {
        segments(&self.store)
    }
}

/// Runs `f` over the changelog tables of the master dataset under `store` (its default catalog),
/// on a thread and runtime of its own (callers may be async or not).
fn with_tables<T: Send + 'static>(
    store: &Path,
    f: impl FnOnce(&tokio::runtime::Runtime, &[rainbow_iceberg::ChangelogTable]) -> T + Send + 'static,
) -> T {
    let store = store.to_path_buf();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let objects = rainbow_runtime::store::Store::open(store.to_str().unwrap()).unwrap();
        let config = rainbow_archive::ArchiveConfig::default().lake(&objects).unwrap();
        let tables = rt.block_on(async {
            let lake = rainbow_iceberg::Lake::open(&config).await.unwrap();
            rainbow_iceberg::ChangelogTable::load_all(&lake).await.unwrap()
        });
        f(&rt, &tables)
    })
    .join()
    .unwrap()
}

/// The segments of the master dataset under `store`: the data files of its changelog tables,
/// (file path, topic, partition, first offset, last offset), sorted by topic, partition and offset.
pub fn segments(store: &Path) -> Vec<(String, String, i32, i64, i64)> {
    if !store.join("iceberg/catalog.db").exists() {
        return Vec::new();
    }
    with_tables(store, |rt, tables| {
        let mut out = Vec::new();
        for t in tables {
            for f in rt.block_on(t.files()).unwrap() {
                out.push((f.path, t.topic.clone(), f.partition, f.first, f.last));
            }
        }
        out.sort_by(|a, b| (&a.1, a.2, a.3).cmp(&(&b.1, b.2, b.3)));
        out
    })
}

/// The raw values (`_envelope`) of every archived record of `topic` under `store`, in offset order
/// per partition.
pub fn archived_values(store: &Path, topic: &str) -> Vec<Vec<u8>> {
    use arrow::array::{Array, AsArray};
    let topic = topic.to_string();
    with_tables(store, move |rt, tables| {
        let mut values = Vec::new();
        for t in tables.iter().filter(|t| t.topic == topic) {
            for f in rt.block_on(t.files()).unwrap() {
                let data = rt.block_on(t.read_file(&f.path)).unwrap();
                let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)
                    .unwrap()
                    .build()
                    .unwrap();
                for batch in reader {
                    let batch = batch.unwrap();
                    let col = batch.column_by_name("_envelope").unwrap().as_binary::<i64>();
                    values.extend((0..col.len()).filter(|&i| !col.is_null(i)).map(|i| col.value(i).to_vec()));
                }
            }
        }
        values
    })
}

/// The end offset (high watermark) of every partition of `topics`.
pub fn end_offsets(topics: &[String]) -> BTreeMap<(String, i32), i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", super::brokers()).create().unwrap();
    let mut ends = BTreeMap::new();
    for t in topics {
        let md = consumer.fetch_metadata(Some(t), Duration::from_secs(10)).unwrap();
        for part in md.topics()[0].partitions() {
            let (_, high) = consumer.fetch_watermarks(t, part.id(), Duration::from_secs(10)).unwrap();
            ends.insert((t.clone(), part.id()), high);
        }
    }
    ends
}

/// Waits (up to `deadline`) until the master dataset under `store` reaches `ends`, then checks
/// that it holds every offset of every partition exactly once: the data files of its changelog
/// tables start at 0 and follow each other with neither a gap nor an overlap.
pub async fn assert_every_offset_once(store: &Path, ends: &BTreeMap<(String, i32), i64>, deadline: Duration) {
    super::eventually("the archive to reach every partition's end", deadline, || {
        let mut covered: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (_, topic, partition, first, last) in segments(store) {
            *covered.entry((topic, partition)).or_default() += last - first + 1;
        }
        let done = ends.iter().all(|(k, high)| covered.get(k).copied().unwrap_or(0) >= *high);
        async move { done.then_some(()) }
    })
    .await;
    let mut by_partition: BTreeMap<(String, i32), Vec<(i64, i64)>> = BTreeMap::new();
    for (_, topic, partition, first, last) in segments(store) {
        by_partition.entry((topic, partition)).or_default().push((first, last));
    }
    for (k, ranges) in &by_partition {
        let mut next = 0;
        for (first, last) in ranges {
            assert_eq!(*first, next, "{k:?}: segments leave a gap or overlap: {ranges:?}");
            next = last + 1;
        }
        if let Some(high) = ends.get(k) {
            assert!(next >= *high, "{k:?}: archived up to {next}, the partition ends at {high}");
        }
    }
    for (k, high) in ends {
        assert!(*high == 0 || by_partition.contains_key(k), "{k:?}: {high} records, none archived");
    }
}
