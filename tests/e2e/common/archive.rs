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

/// Segments in the master dataset under `store`: (relative path, topic, partition, first, last).
pub fn segments(store: &Path) -> Vec<(String, String, i32, i64, i64)> {
    rainbow_testkit::relative_paths(store)
        .into_iter()
        .filter_map(|rel| {
            let s = rainbow_archive::master::SegmentName::parse(&rel)?;
            Some((rel, s.topic, s.partition, s.first, s.last))
        })
        .collect()
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
/// that it holds every offset of every partition exactly once: its segments start at 0 and
/// follow each other with neither a gap nor an overlap.
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
