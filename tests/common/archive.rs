//! `rainbow archive` as a child process with its own master dataset directory, consumer group
//! and metrics port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct ArchiveProcess {
    pub dir: PathBuf,
    /// The master dataset (storage.url).
    pub store: PathBuf,
    pub metrics: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
    runs: u32,
}

impl ArchiveProcess {
    /// An archiver of the CDC topics with `topic_prefix`; segments close after 300 ms.
    pub fn new(topic_prefix: &str) -> ArchiveProcess {
        let name = super::unique_name("arch");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let store = dir.join("store");
        let metrics = format!("127.0.0.1:{}", super::processor::free_port());
        let env = vec![
            ("RAINBOW_CDC__TOPIC_PREFIX".into(), topic_prefix.to_string()),
            ("RAINBOW_STORAGE__URL".into(), store.display().to_string()),
            ("RAINBOW_ARCHIVE__GROUP_ID".into(), name.clone()),
            ("RAINBOW_ARCHIVE__SEGMENT_MAX_AGE_MS".into(), "300".into()),
            ("RAINBOW_ARCHIVE__METRICS_LISTEN".into(), metrics.clone()),
        ];
        ArchiveProcess { dir, store, metrics, env, child: None, runs: 0 }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.runs += 1;
        let log = std::fs::File::create(self.dir.join(format!("archive-{}.log", self.runs))).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rainbow"));
        cmd.arg("archive").env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("rainbow binary runs"));
    }

    pub fn logs(&self) -> String {
        (1..=self.runs)
            .map(|n| std::fs::read_to_string(self.dir.join(format!("archive-{n}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----- restart -----\n")
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM: it writes its open segments and exits 0.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success();
        assert!(ok);
        let until = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(std::time::Instant::now() < until, "archiver did not exit:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "rainbow archive exited with {status}:\n{}", self.logs());
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics)).await.unwrap().text().await.unwrap()
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
                if let Some(s) = rainbow_replay::master::SegmentName::parse(&rel) {
                    out.push((rel, s.topic, s.partition, s.first, s.last));
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for ArchiveProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
