//! Running `rainbow cdc` as a child process against a test database, and reading what it wrote
//! to Kafka.

use super::process::Service;
use rainbow_schemas::wire::TopicNaming;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::process::Command;
use std::time::{Duration, Instant};

/// One Kafka record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Rec {
    pub fn value_json(&self) -> Option<serde_json::Value> {
        self.value.as_ref().map(|v| serde_json::from_slice(v).expect("values are JSON"))
    }
    pub fn key_json(&self) -> Option<serde_json::Value> {
        self.key.as_ref().map(|v| serde_json::from_slice(v).expect("keys are JSON"))
    }
    /// The envelope's payload (unwrapped when schemas are enabled).
    pub fn payload(&self) -> Option<serde_json::Value> {
        self.value_json().map(|v| if v.get("schema").is_some() { v["payload"].clone() } else { v })
    }
}

/// A `rainbow cdc` process with its own slot, publication, topic prefix and offsets directory.
pub struct CdcProcess {
    pub service: Service,
    pub database: String,
    pub prefix: String,
    pub slot: String,
    pub publication: String,
}

impl std::ops::Deref for CdcProcess {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.service
    }
}

impl std::ops::DerefMut for CdcProcess {
    fn deref_mut(&mut self) -> &mut Service {
        &mut self.service
    }
}

impl CdcProcess {
    pub fn new(database: &str, extra_env: &[(&str, &str)]) -> CdcProcess {
        let prefix = super::unique_name("cdc");
        let dir = std::env::temp_dir().join(&prefix);
        let env: Vec<(String, String)> = vec![
            ("RAINBOW_POSTGRES__DATABASE".into(), database.into()),
            ("RAINBOW_CDC__TOPIC_PREFIX".into(), prefix.clone()),
            ("RAINBOW_CDC__SLOT_NAME".into(), prefix.clone()),
            ("RAINBOW_CDC__PUBLICATION_NAME".into(), prefix.clone()),
            ("RAINBOW_CDC__OFFSETS_DIR".into(), dir.display().to_string()),
            ("RAINBOW_CDC__METRICS_LISTEN".into(), String::new()),
            ("RAINBOW_CDC__STATUS_INTERVAL_MS".into(), "100".into()),
            ("RAINBOW_CDC__HEARTBEAT_INTERVAL_MS".into(), "0".into()),
        ];
        let mut service = Service::new("cdc", &prefix, "info,pg_walstream=warn", env);
        for (k, v) in extra_env {
            service.set_env(k, v);
        }
        CdcProcess {
            service,
            database: database.into(),
            slot: prefix.clone(),
            publication: prefix.clone(),
            prefix,
        }
    }

    /// Serves /metrics on a free port (off by default).
    pub fn serve_metrics(&mut self) {
        let addr = format!("127.0.0.1:{}", super::process::free_port());
        self.service.set_env("RAINBOW_CDC__METRICS_LISTEN", &addr);
        self.service.metrics = Some(addr);
    }

    /// The topic of a table of schema `public`.
    pub fn topic(&self, table: &str) -> String {
        TopicNaming::new(&self.prefix, Default::default()).table_topic("public", table)
    }

    /// The heartbeat topic.
    pub fn heartbeat_topic(&self) -> String {
        TopicNaming::new(&self.prefix, Default::default()).heartbeat_topic()
    }

    /// Every topic it writes: one per source table, and the heartbeat topic.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> =
            rainbow_schemas::postgres::SOURCE_TABLES.iter().map(|t| self.topic(t)).collect();
        topics.push(self.heartbeat_topic());
        topics
    }

    /// The offsets file as JSON.
    pub fn stored_offset(&self) -> Option<serde_json::Value> {
        let path = self.dir.join(format!("{}.offsets.json", self.slot));
        std::fs::read(path).ok().map(|b| serde_json::from_slice(&b).unwrap())
    }

    /// Stops the process if running, drops the database's slots, deletes every topic it writes
    /// ([`CdcProcess::topics`], the heartbeat topic included) and `extra_topics` (a test's own
    /// tables), removes the directory.
    pub async fn cleanup(mut self, extra_topics: &[String]) {
        self.service.remove();
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect_with(&super::pg_options("postgres")).await.unwrap();
        drop_slots_of(&mut admin, &self.database).await;
        let mut topics = self.topics();
        topics.extend(extra_topics.iter().cloned());
        topics.sort();
        topics.dedup();
        delete_topics(&topics).await;
    }
}

/// Ends the walsenders of `database`'s replication slots, then drops the slots (they would
/// block DROP DATABASE).
pub async fn drop_slots_of(admin: &mut sqlx::PgConnection, database: &str) {
    sqlx::query(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
         WHERE database = $1 AND active_pid IS NOT NULL",
    )
    .bind(database)
    .execute(&mut *admin)
    .await
    .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL",
        )
        .bind(database)
        .fetch_one(&mut *admin)
        .await
        .unwrap();
        if active == 0 || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1")
        .bind(database)
        .execute(&mut *admin)
        .await
        .unwrap();
}

/// Deletes the topics a test created (best effort: cleanup).
pub async fn delete_topics(topics: &[String]) {
    let kafka = super::kafka();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let _ = rainbow_runtime::kafka::delete_topics(&kafka.client_config("admin"), &names).await;
}

/// Every record of `topics` (those that exist), sorted by topic, partition, offset.
pub async fn read_topics(topics: &[String]) -> Vec<Rec> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let list = topics.to_vec();
        match tokio::task::spawn_blocking(move || read_topics_blocking(&list)).await.unwrap() {
            Ok(records) => return records,
            // Right after a topic is created, its leader may not be known yet.
            Err(e) if Instant::now() < until => eprintln!("reading {topics:?}: {e}; retrying"),
            Err(e) => panic!("reading {topics:?}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn read_topics_blocking(topics: &[String]) -> Result<Vec<Rec>, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", super::brokers())
        .set("group.id", super::unique_name("cdc_test_reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    let mut assignment = TopicPartitionList::new();
    let mut remaining = std::collections::HashMap::new();
    for topic in topics {
        let Ok(metadata) = consumer.fetch_metadata(Some(topic), timeout) else { continue };
        for t in metadata.topics() {
            if t.error().is_some() {
                continue;
            }
            for p in t.partitions() {
                let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
                if high > low {
                    assignment.add_partition_offset(topic, p.id(), Offset::Offset(low)).unwrap();
                    remaining.insert((topic.clone(), p.id()), high);
                }
            }
        }
    }
    let mut out = Vec::new();
    if remaining.is_empty() {
        return Ok(out);
    }
    consumer.assign(&assignment).unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() {
        assert!(Instant::now() < until, "reading {topics:?}: records missing below the high watermarks");
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else { continue };
        let msg = msg?;
        let key = (msg.topic().to_string(), msg.partition());
        let headers = msg
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        out.push(Rec {
            topic: key.0.clone(),
            partition: key.1,
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            headers,
        });
        if remaining.get(&key).is_some_and(|high| msg.offset() + 1 >= *high) {
            remaining.remove(&key);
        }
    }
    out.sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    Ok(out)
}

/// Whether the records hold the snapshot's last row.
pub fn snapshot_done(records: &[Rec]) -> bool {
    records.iter().any(|r| r.payload().is_some_and(|p| p["source"]["snapshot"] == "last"))
}

/// Reads `topics` again and again until `done` accepts the records, or panics after `deadline`.
pub async fn read_until(
    topics: &[String],
    deadline: Duration,
    what: &str,
    done: impl Fn(&[Rec]) -> bool,
) -> Vec<Rec> {
    let until = Instant::now() + deadline;
    loop {
        let records = read_topics(topics).await;
        if done(&records) {
            return records;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}; have {} records",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// psql of the local stack's PostgreSQL (Debian's package, installed by deploy/local/start).
pub fn psql(database: &str, args: &[&str]) {
    let bin = std::env::var("RAINBOW_TEST_PSQL").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/psql".into());
    let out = Command::new(bin)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(super::env_or("RAINBOW_POSTGRES__HOST", "127.0.0.1"))
        .args(["-p", &super::env_or("RAINBOW_POSTGRES__PORT", "5432")])
        .args(["-U", &super::env_or("RAINBOW_POSTGRES__USER", "rainbow")])
        .args(["-d", database])
        .args(args)
        .env("PGPASSWORD", super::env_or("RAINBOW_POSTGRES__PASSWORD", "rainbow"))
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "psql {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
