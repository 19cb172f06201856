//! `rainbow process` as a child process with its own ClickHouse database, consumer group,
//! checkpoint directory, dead-letter topic and metrics port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct ProcessorProcess {
    pub database: String,
    pub dead_letter_topic: String,
    pub metrics: String,
    pub dir: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    runs: u32,
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl ProcessorProcess {
    /// A processor reading the topics of the CDC with `topic_prefix`.
    pub fn new(topic_prefix: &str) -> ProcessorProcess {
        let name = super::unique_name("proc");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let metrics = format!("127.0.0.1:{}", free_port());
        let database = format!("rb_{name}");
        let dead_letter_topic = format!("{name}.dead_letter");
        let env = vec![
            ("RAINBOW_CDC__TOPIC_PREFIX".into(), topic_prefix.to_string()),
            ("RAINBOW_CLICKHOUSE__DATABASE".into(), database.clone()),
            ("RAINBOW_PROCESSOR__GROUP_ID".into(), name.clone()),
            ("RAINBOW_PROCESSOR__CHECKPOINT_URL".into(), dir.join("checkpoints").display().to_string()),
            ("RAINBOW_PROCESSOR__CHECKPOINT_INTERVAL_MS".into(), "300".into()),
            ("RAINBOW_PROCESSOR__BATCH_INTERVAL_MS".into(), "50".into()),
            ("RAINBOW_PROCESSOR__DEAD_LETTER_TOPIC".into(), dead_letter_topic.clone()),
            ("RAINBOW_PROCESSOR__METRICS_LISTEN".into(), metrics.clone()),
        ];
        ProcessorProcess { database, dead_letter_topic, metrics, dir, env, child: None, runs: 0 }
    }

    /// Another instance writing into the same ClickHouse database (own consumer group,
    /// checkpoints, dead-letter topic and metrics port): the second member of a scaled-out
    /// processor. Its cleanup drops the shared database too.
    pub fn sibling(&self) -> ProcessorProcess {
        let prefix = self
            .env
            .iter()
            .find(|(k, _)| k == "RAINBOW_CDC__TOPIC_PREFIX")
            .map(|(_, v)| v.clone())
            .expect("prefix set by new()");
        let mut other = ProcessorProcess::new(&prefix);
        other.database = self.database.clone();
        for (k, v) in &mut other.env {
            if k == "RAINBOW_CLICKHOUSE__DATABASE" {
                v.clone_from(&self.database);
            }
        }
        other
    }

    /// Starts the processor (extra environment for this run only); log in `<dir>/process-<n>.log`.
    pub fn start(&mut self, extra_env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "already running");
        self.runs += 1;
        let log = std::fs::File::create(self.dir.join(format!("process-{}.log", self.runs))).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rainbow"));
        cmd.arg("process").env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("rainbow binary runs"));
    }

    pub fn logs(&self) -> String {
        (1..=self.runs)
            .map(|n| std::fs::read_to_string(self.dir.join(format!("process-{n}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----- restart -----\n")
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Waits for the process to end by itself (a failpoint).
    pub fn wait(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let until = std::time::Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < until, "processor did not exit:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM; panics with the log unless it exits 0.
    pub fn stop(&mut self) {
        let child = self.child.as_ref().expect("running");
        let ok = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success();
        assert!(ok);
        let status = self.wait(Duration::from_secs(60));
        assert!(status.success(), "rainbow process exited with {status}:\n{}", self.logs());
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics)).await.unwrap().text().await.unwrap()
    }

    /// Stops the process, drops its ClickHouse database and dead-letter topic, removes its files.
    pub async fn cleanup(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = clickhouse(&format!("DROP DATABASE IF EXISTS {}", self.database)).await;
        super::cdc::delete_topics(std::slice::from_ref(&self.dead_letter_topic)).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for ProcessorProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `sql` on the local ClickHouse over HTTP; the result as TabSeparated text.
pub async fn clickhouse(sql: &str) -> Result<String, String> {
    let response = reqwest::Client::new()
        .post(super::clickhouse_url())
        .body(sql.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let ok = response.status().is_success();
    let text = response.text().await.map_err(|e| e.to_string())?;
    if ok {
        Ok(text)
    } else {
        Err(format!("{sql}: {text}"))
    }
}
