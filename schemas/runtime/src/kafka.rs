//! Kafka administration shared by the CDC, the processor, the archiver and the tools: where the
//! brokers are, topic creation and deletion, consumer groups, partition discovery, end offsets;
//! the components' client context ([`QuietContext`]: unreachable brokers logged once per 30 s)
//! and the check that replaces a consumer that lost its way ([`LostConsumer`]).
//!
//! Every call has a timeout. Topic creation is idempotent (an existing topic is left as it is);
//! partition discovery waits for topics another component creates (the CDC creates the topics
//! the processor and the archiver read) until told to stop.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
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

/// How often a client logs that the brokers cannot be reached ([`QuietContext`]).
const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(30);

/// The context of the components' Kafka clients: librdkafka's log lines and global errors go to
/// the log as librdkafka words them, except that the brokers being unreachable (a refused or
/// broken connection, "all brokers down": a Kafka restart or outage) is one warning per client
/// every 30 s, with the count of such messages since the last one, rather than several errors a
/// second. The components count Kafka as away in their metrics
/// (`<service>_dependency_down_seconds{dependency="kafka"}`, the `RainbowDependencyDown` alert) and
/// say so in their own log.
#[derive(Default)]
pub struct QuietContext {
    /// When the last outage line was written, and the outage messages left out since.
    outage: Mutex<(Option<Instant>, u64)>,
}

/// A consumer with the components' context.
pub type RainbowConsumer = BaseConsumer<QuietContext>;
/// A producer with the components' context.
pub type RainbowProducer = FutureProducer<QuietContext>;

impl QuietContext {
    /// Whether an outage message arriving at `now` is written: `Some(messages left out since the
    /// last one written)`, at most once per [`OUTAGE_LOG_EVERY`].
    fn outage_line(&self, now: Instant) -> Option<u64> {
        let mut outage = self.outage.lock().expect("lock");
        match outage.0 {
            Some(last) if now.duration_since(last) < OUTAGE_LOG_EVERY => {
                outage.1 += 1;
                None
            }
            _ => {
                let left_out = outage.1;
                *outage = (Some(now), 0);
                Some(left_out)
            }
        }
    }

    fn outage(&self, what: &str) {
        if let Some(left_out) = self.outage_line(Instant::now()) {
            tracing::warn!(
                target: "librdkafka",
                similar_messages_left_out = left_out,
                "Kafka brokers unreachable: {what} (said at most every {} s)",
                OUTAGE_LOG_EVERY.as_secs()
            );
        }
    }
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            // A broker connection that failed (refused, closed, timed out).
            RDKafkaLogLevel::Error if fac == "FAIL" => self.outage(message),
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure) => {
                self.outage(reason)
            }
            _ => tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}"),
        }
    }
}

impl ConsumerContext for QuietContext {}

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

/// Whether the brokers know consumer group `group` (with committed offsets or members).
pub async fn consumer_group_exists(config: &ClientConfig, group: &str) -> Result<bool, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let name = group.to_string();
    tokio::task::spawn_blocking(move || {
        admin
            .inner()
            .fetch_group_list(Some(&name), ADMIN_TIMEOUT)
            .map(|list| list.groups().iter().any(|g| g.name() == name && !matches!(g.state(), "" | "Dead")))
    })
    .await
    .map_err(|_| KafkaError::Canceled)?
}

/// Deletes a consumer group (its committed offsets); a missing one is not an error.
pub async fn delete_consumer_group(config: &ClientConfig, group: &str) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    for result in admin.delete_groups(&[group], &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
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

/// The topic id of each of `topics` (Kafka's UUID in base64, the same for a topic's whole life and
/// different for a topic deleted and created again under the same name), in order; `None` for a
/// topic that does not exist. librdkafka's DescribeTopics (the Rust wrapper has no call for it).
pub fn topic_ids<C: ClientContext>(
    client: &Client<C>,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<Option<String>>, KafkaError> {
    use rdkafka::bindings as rd;
    use std::ffi::{CStr, CString};
    let failed = |code: RDKafkaErrorCode| KafkaError::MetadataFetch(code);
    let names: Vec<CString> = topics
        .iter()
        .map(|t| CString::new(t.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| failed(RDKafkaErrorCode::InvalidTopic))?;
    let mut pointers: Vec<*const std::os::raw::c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: every object created here is destroyed before returning; the names outlive the
    // collection; results are read before their event is destroyed and copied out.
    unsafe {
        let rk = client.native_ptr();
        let collection = rd::rd_kafka_TopicCollection_of_topic_names(pointers.as_mut_ptr(), pointers.len());
        let options =
            rd::rd_kafka_AdminOptions_new(rk, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS);
        let mut errstr = [0 as std::os::raw::c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(options, timeout_ms, errstr.as_mut_ptr(), errstr.len());
        let queue = rd::rd_kafka_queue_new(rk);
        rd::rd_kafka_DescribeTopics(rk, collection, options, queue);
        // The request times out on its own; wait a little longer for its result.
        let event = rd::rd_kafka_queue_poll(queue, timeout_ms.saturating_add(5_000));
        let result = if event.is_null() {
            Err(failed(RDKafkaErrorCode::OperationTimedOut))
        } else if rd::rd_kafka_event_error(event) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            Err(failed(rd::rd_kafka_event_error(event).into()))
        } else {
            let described = rd::rd_kafka_event_DescribeTopics_result(event);
            let mut count = 0usize;
            let list = rd::rd_kafka_DescribeTopics_result_topics(described, &mut count);
            let mut ids = std::collections::HashMap::new();
            let mut error = None;
            for i in 0..count {
                let d = *list.add(i);
                let name =
                    CStr::from_ptr(rd::rd_kafka_TopicDescription_name(d)).to_string_lossy().into_owned();
                let e = rd::rd_kafka_TopicDescription_error(d);
                let code = if e.is_null() {
                    rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                } else {
                    rd::rd_kafka_error_code(e)
                };
                match code {
                    rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => {}
                    rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART => continue,
                    other => {
                        error.get_or_insert(other.into());
                        continue;
                    }
                }
                let id = rd::rd_kafka_TopicDescription_topic_id(d);
                if !id.is_null() {
                    ids.insert(
                        name,
                        CStr::from_ptr(rd::rd_kafka_Uuid_base64str(id)).to_string_lossy().into_owned(),
                    );
                }
            }
            match error {
                Some(code) => Err(failed(code)),
                None => Ok(topics.iter().map(|t| ids.remove(t)).collect()),
            }
        };
        if !event.is_null() {
            rd::rd_kafka_event_destroy(event);
        }
        rd::rd_kafka_queue_destroy(queue);
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_TopicCollection_destroy(collection);
        result
    }
}

/// The source's identity as Kafka knows it: the cluster id, the id of each of `topics` that
/// exists, and the PostgreSQL facts of the CDC's last heartbeat on `heartbeat_topic` (none when
/// it has none yet). See [`crate::identity`].
pub fn source_identity(
    kafka: &KafkaConnection,
    topics: &[String],
    heartbeat_topic: &str,
) -> Result<crate::identity::SourceIdentity, KafkaError> {
    let consumer: RainbowConsumer = kafka
        .client_config("identity")
        .set("group.id", format!("{}-identity", kafka.client_id))
        .set("enable.auto.commit", "false")
        .create_with_context(QuietContext::default())?;
    let mut id = crate::identity::SourceIdentity::new();
    id.insert("kafka.cluster", &cluster_id(consumer.client(), Duration::from_secs(10))?);
    // The other facts are recorded when they can be read: a topic just created may have no
    // leader yet (a later start records it), which is no reason to stop.
    match topic_ids(consumer.client(), topics, Duration::from_secs(10)) {
        Ok(ids) => {
            for (topic, topic_id) in topics.iter().zip(ids) {
                if let Some(topic_id) = topic_id {
                    id.insert(&format!("kafka.topic.{topic}"), &topic_id);
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "topic ids not read this time"),
    }
    match last_heartbeat_source(&consumer, heartbeat_topic) {
        Ok(Some(pg)) => id.merge(&pg),
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "the last heartbeat not read this time"),
    }
    Ok(id)
}

/// The PostgreSQL facts ([`crate::identity::HEARTBEAT_SOURCE_HEADER`]) of the last heartbeat on
/// `topic`, if there is one that carries them.
fn last_heartbeat_source(
    consumer: &RainbowConsumer,
    topic: &str,
) -> Result<Option<crate::identity::SourceIdentity>, KafkaError> {
    use rdkafka::message::{Headers, Message};
    if partition_count(consumer.client(), topic).is_none() {
        return Ok(None);
    }
    let (low, high) = consumer.fetch_watermarks(topic, 0, METADATA_TIMEOUT)?;
    if high <= low {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(high - 1))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let facts = m.headers().and_then(|h| {
                    h.iter().find(|h| h.key == crate::identity::HEARTBEAT_SOURCE_HEADER).and_then(|h| {
                        std::str::from_utf8(h.value?).ok().map(crate::identity::SourceIdentity::parse)
                    })
                });
                return Ok(facts);
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Err(KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut))
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
pub fn end_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
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

/// How long a consumer may hear nothing from the brokers before [`LostConsumer`] asks whether it
/// lost its way.
pub const LOST_AFTER: Duration = Duration::from_secs(30);

/// Notices a consumer that lost its way, so that its component starts over with a new one.
///
/// librdkafka reconnects by itself after an outage, but after a broker restart a client has been
/// seen never to reach the brokers again (no record, no end offset, every commit "waiting for
/// coordinator" for minutes) while the other clients of the same cluster carried on. A consumer
/// that has heard nothing from Kafka for [`LOST_AFTER`] is checked at most every 10 s: when the
/// brokers answer a new client and the consumer itself still gets no answer right after (its
/// partitions' end offsets, 5 s), it is lost. While the brokers are away for every client, it is
/// not: librdkafka's own reconnection is what brings it back then.
pub struct LostConsumer {
    next_check: Instant,
}

impl Default for LostConsumer {
    fn default() -> Self {
        LostConsumer { next_check: Instant::now() }
    }
}

/// A consumer that lost its way (see [`LostConsumer`]): a transient Kafka failure of its
/// component, which starts over with a new consumer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the Kafka consumer has heard nothing from the brokers for {away_s} s while they answer a new \
     client: starting over with a new consumer"
)]
pub struct ConsumerLost {
    pub away_s: u64,
}

impl LostConsumer {
    /// An error when `consumer` lost its way (see [`LostConsumer`]); `away` is how long it has
    /// heard nothing from the brokers (`None`: it hears them).
    pub fn check<C: ConsumerContext>(
        &mut self,
        kafka: &KafkaConnection,
        consumer: &BaseConsumer<C>,
        partitions: &[(&str, i32)],
        away: Option<Duration>,
    ) -> Result<(), ConsumerLost> {
        let Some(away) = away.filter(|a| *a >= LOST_AFTER) else { return Ok(()) };
        if Instant::now() < self.next_check {
            return Ok(());
        }
        self.next_check = Instant::now() + Duration::from_secs(10);
        let Ok(probe) =
            kafka.client_config("probe").create_with_context::<_, RainbowConsumer>(QuietContext::default())
        else {
            return Ok(());
        };
        if reachable(probe.client(), Duration::from_secs(2)).is_err() {
            return Ok(());
        }
        match end_offsets(consumer, partitions, Duration::from_secs(5)) {
            Ok(_) => Ok(()),
            Err(_) => Err(ConsumerLost { away_s: away.as_secs() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_brokers_are_said_once_per_interval_with_what_was_left_out() {
        let context = QuietContext::default();
        let t0 = Instant::now();
        assert_eq!(context.outage_line(t0), Some(0));
        for s in [1, 10, OUTAGE_LOG_EVERY.as_secs() - 1] {
            assert_eq!(context.outage_line(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(context.outage_line(t0 + OUTAGE_LOG_EVERY), Some(3));
        assert_eq!(context.outage_line(t0 + OUTAGE_LOG_EVERY + Duration::from_secs(1)), None);
        assert_eq!(context.outage_line(t0 + OUTAGE_LOG_EVERY * 2), Some(1));
    }
}
