//! `rainbow process` as a child process with its own ClickHouse database, consumer group,
//! checkpoint directory, dead-letter topic and metrics port.

use super::process::{free_port, Service};

pub struct ProcessorProcess {
    pub service: Service,
    pub database: String,
    pub dead_letter_topic: String,
}

impl std::ops::Deref for ProcessorProcess {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.service
    }
}

impl std::ops::DerefMut for ProcessorProcess {
    fn deref_mut(&mut self) -> &mut Service {
        &mut self.service
    }
}

impl ProcessorProcess {
    /// A processor reading the topics of the CDC with `topic_prefix`.
    pub fn new(topic_prefix: &str) -> ProcessorProcess {
        let name = super::unique_name("proc");
        let dir = std::env::temp_dir().join(&name);
        let metrics = format!("127.0.0.1:{}", free_port());
        let database = format!("rb_{name}");
        let dead_letter_topic = format!("{name}.dead_letter");
        let env = vec![
            ("RAINBOW_CDC__TOPIC_PREFIX".into(), topic_prefix.to_string()),
            ("RAINBOW_CLICKHOUSE__DATABASE".into(), database.clone()),
            ("RAINBOW_PROCESSOR__GROUP_ID".into(), name.clone()),
            ("RAINBOW_PROCESSOR__CHECKPOINT_URL".into(), dir.join("checkpoints").display().to_string()),
            ("RAINBOW_PROCESSOR__STATE_DIR".into(), dir.join("state").display().to_string()),
            ("RAINBOW_PROCESSOR__CHECKPOINT_INTERVAL_MS".into(), "300".into()),
            ("RAINBOW_PROCESSOR__BATCH_INTERVAL_MS".into(), "50".into()),
            ("RAINBOW_PROCESSOR__DEAD_LETTER_TOPIC".into(), dead_letter_topic.clone()),
            ("RAINBOW_PROCESSOR__METRICS_LISTEN".into(), metrics.clone()),
        ];
        let mut service = Service::new("process", &name, "info", env);
        service.metrics = Some(metrics);
        ProcessorProcess { service, database, dead_letter_topic }
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
        other.set_env("RAINBOW_CLICKHOUSE__DATABASE", &self.database);
        other
    }

    /// Starts the processor (extra environment for this run only).
    pub fn start(&mut self, extra_env: &[(&str, &str)]) {
        self.service.start_with(extra_env);
    }

    /// Stops the process, drops its ClickHouse database and dead-letter topic, removes its files.
    pub async fn cleanup(mut self) {
        self.service.remove();
        let _ = clickhouse(&format!("DROP DATABASE IF EXISTS {}", self.database)).await;
        super::cdc::delete_topics(std::slice::from_ref(&self.dead_letter_topic)).await;
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
