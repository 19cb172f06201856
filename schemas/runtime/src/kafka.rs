//! Kafka administration shared by the CDC, the processor, the archiver and the tools: where the
//! brokers are, topic creation and deletion, partition discovery, end offsets.
//!
//! Every call has a timeout. Topic creation is idempotent (an existing topic is left as it is);
//! partition discovery waits for topics another component creates (the CDC creates the topics
//! the processor and the archiver read) until told to stop.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long an admin operation (create, delete) may take on the brokers.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one metadata request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a component finds Kafka, and how it names itself there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConnection {
    pub brokers: String,
    /// Prefix of the `client.id` of every client (`<client_id>-<role>`).
    pub client_id: String,
}

impl KafkaConnection {
    /// A client configuration with the brokers and `client.id` = `<client_id>-<role>`.
    pub fn client_config(&self, role: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("{}-{role}", self.client_id))
            // Reconnect within a second of a broker's return (librdkafka backs off up to 10 s).
            .set("reconnect.backoff.max.ms", "1000");
        c
    }

    /// A consumer of a component that keeps its own offsets (in a checkpoint, in the archive):
    /// assigned partitions read from the offsets it gives (from the earliest where it gives
    /// none), offsets committed to `group` only when it says so, for lag tools.
    pub fn offset_keeping_consumer(&self, role: &str, group: &str) -> ClientConfig {
        let mut c = self.client_config(role);
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        c
    }
}

/// A topic to create when missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// Replication factor; -1 takes the brokers' default.
    pub replication: i32,
}

/// Creates the topics that do not exist yet; existing ones are left as they are. Returns the
/// names of the topics created.
pub async fn ensure_topics(config: &ClientConfig, topics: &[TopicSpec]) -> Result<Vec<String>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication)))
        .collect();
    let options =
        AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
    let mut created = Vec::new();
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(name) => {
                tracing::info!(topic = name, "created topic");
                created.push(name);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                tracing::error!(topic = name, %code, "cannot create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(created)
}

/// Deletes topics; missing ones are not an error.
pub async fn delete_topics(config: &ClientConfig, topics: &[&str]) -> Result<(), KafkaError> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let options =
        AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
    for result in admin.delete_topics(topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}

/// Whether a broker answers a metadata request within `timeout` (a start-up check, to fail with
/// a clear message rather than wait).
pub fn reachable<C: ClientContext>(client: &Client<C>, timeout: Duration) -> Result<(), KafkaError> {
    client.fetch_metadata(None, timeout).map(|_| ())
}

/// The cluster id of the brokers (KIP-78), which a new cluster does not share with an old one.
pub fn cluster_id<C: ClientContext>(client: &Client<C>, timeout: Duration) -> Result<String, KafkaError> {
    client.fetch_cluster_id(timeout).ok_or(KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut))
}

/// Partitions of `topic`, `None` while it does not exist (or its metadata shows none yet, as
/// right after its creation).
pub fn partition_count<C: ClientContext>(client: &Client<C>, topic: &str) -> Option<i32> {
    let md = client.fetch_metadata(Some(topic), METADATA_TIMEOUT).ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    if t.error().is_some() || t.partitions().is_empty() {
        return None;
    }
    Some(t.partitions().len() as i32)
}

/// A topic that did not appear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Kafka topic {topic} does not exist")]
pub struct MissingTopic {
    pub topic: String,
}

/// The partition count of each topic, in order, waiting for topics that do not exist yet (with a
/// warning naming `creator` every 10 s) until they do, `stop` is set or `deadline` passes; then
/// the first missing topic is the error.
pub fn wait_for_partitions<C: ClientContext>(
    client: &Client<C>,
    topics: &[String],
    creator: &str,
    stop: &AtomicBool,
    deadline: Option<Duration>,
) -> Result<Vec<i32>, MissingTopic> {
    let started = Instant::now();
    let mut warned = Instant::now();
    loop {
        let counts: Vec<Option<i32>> = topics.iter().map(|t| partition_count(client, t)).collect();
        let missing = topics.iter().zip(&counts).find(|(_, n)| n.is_none()).map(|(t, _)| t.clone());
        let Some(topic) = missing else {
            return Ok(counts.into_iter().flatten().collect());
        };
        if stop.load(Ordering::SeqCst) || deadline.is_some_and(|d| started.elapsed() >= d) {
            return Err(MissingTopic { topic });
        }
        if warned.elapsed() > Duration::from_secs(10) {
            tracing::warn!(%topic, "waiting for {creator} to create its topics");
            warned = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The current end offsets (high watermarks) of `partitions`, in their order, in one ListOffsets
/// round trip per leader (a query per partition would queue behind the consumer's fetches).
pub fn end_offsets(
    consumer: &BaseConsumer,
    partitions: &[(&str, i32)],
    timeout: Duration,
) -> Result<Vec<i64>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        // The "timestamp" -1 (Offset::End) asks for the latest offset.
        tpl.add_partition_offset(topic, *partition, Offset::End)?;
    }
    let answered = consumer.offsets_for_times(tpl, timeout)?;
    partitions
        .iter()
        .map(|(topic, partition)| {
            match answered.find_partition(topic, *partition).map(|e| (e.error(), e.offset())) {
                Some((Ok(()), Offset::Offset(high))) => Ok(high),
                Some((Err(e), _)) => Err(e),
                _ => Err(KafkaError::OffsetFetch(RDKafkaErrorCode::UnknownTopicOrPartition)),
            }
        })
        .collect()
}
