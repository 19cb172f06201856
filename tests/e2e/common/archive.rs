//! `rainbow archive` as a child process with its own master dataset directory, consumer group
//! and metrics port.

use super::process::{free_port, Service};
use std::path::PathBuf;

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

    /// Segments in the master dataset: relative path → (topic, partition, first, last).
    pub fn segments(&self) -> Vec<(String, String, i32, i64, i64)> {
        let mut out = Vec::new();
        let mut stack = vec![self.store.clone()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else { continue };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p.strip_prefix(&self.store).unwrap().display().to_string();
                if let Some(s) = rainbow_archive::master::SegmentName::parse(&rel) {
                    out.push((rel, s.topic, s.partition, s.first, s.last));
                }
            }
        }
        out.sort();
        out
    }
}
