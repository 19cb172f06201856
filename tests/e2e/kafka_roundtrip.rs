//! Kafka of the local stack: a topic is created (automatic creation is off), written with an
//! idempotent acks=all producer, read back by a consumer group that commits its offsets, and a
//! second member of the group resumes from those offsets.

use crate::common;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 3;
const MESSAGES: usize = 300;

fn client_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", common::brokers());
    c
}

fn consumer_config(group: &str) -> ClientConfig {
    let mut c = client_config();
    c.set("group.id", group).set("enable.auto.commit", "false").set("auto.offset.reset", "earliest");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_write_read_commit_and_resume() {
    let topic = common::unique_name("rainbow_test_topic");
    let group = common::unique_name("rainbow_test_group");
    let admin: AdminClient<DefaultClientContext> = client_config().create().unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("Kafka of the local stack (deploy/local/start) is reachable");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");

    let producer: FutureProducer = client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    let mut sent = BTreeMap::new();
    for i in 0..MESSAGES {
        let key = format!("k{}", i % 17);
        let value = format!("{{\"n\":{i}}}");
        let rdkafka::producer::future_producer::Delivery { partition, offset, .. } = producer
            .send(FutureRecord::to(&topic).key(&key).payload(&value), Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("acknowledged");
        assert!(sent.insert((partition, offset), (key, value)).is_none());
    }
    // Idempotent producer: per partition, offsets are 0..n with no gap and no duplicate.
    for p in 0..PARTITIONS {
        let offsets: Vec<i64> = sent.keys().filter(|(q, _)| *q == p).map(|(_, o)| *o).collect();
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>(), "partition {p}");
    }

    // Read the first half with one member, commit, then a fresh member of the group resumes.
    // The consumers use the blocking API on a blocking thread: closing a consumer waits until it
    // has left the group.
    let (topic2, group2) = (topic.clone(), group.clone());
    let received = tokio::task::spawn_blocking(move || read_in_two_sessions(&topic2, &group2))
        .await
        .expect("consumer thread");
    assert_eq!(received, sent, "every record read back exactly, key and value");

    admin.delete_topics(&[&topic], &AdminOptions::new()).await.unwrap();
}

type Records = BTreeMap<(i32, i64), (String, String)>;

fn poll_one(consumer: &BaseConsumer, what: &str) -> (i32, i64, String, String, TopicPartitionList) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no message within 60 s ({what})");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("consumer error");
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            let value = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
            let mut next = TopicPartitionList::new();
            next.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1)).unwrap();
            return (m.partition(), m.offset(), key, value, next);
        }
    }
}

fn read_in_two_sessions(topic: &str, group: &str) -> Records {
    let half = MESSAGES / 2;
    let mut received = Records::new();
    {
        let first: BaseConsumer = consumer_config(group).create().unwrap();
        first.subscribe(&[topic]).unwrap();
        while received.len() < half {
            let (p, o, k, v, next) = poll_one(&first, "first session");
            received.insert((p, o), (k, v));
            first.commit(&next, CommitMode::Sync).unwrap();
        }
        let committed = first.committed(Duration::from_secs(10)).unwrap();
        let mut committed_total = 0;
        for e in committed.elements_for_topic(topic) {
            if let Offset::Offset(o) = e.offset() {
                let read_here = received.keys().filter(|(p, _)| *p == e.partition()).count() as i64;
                assert_eq!(o, read_here, "committed offset of partition {}", e.partition());
                committed_total += o;
            }
        }
        assert_eq!(committed_total as usize, half, "committed offsets cover what was read");
    }
    let second: BaseConsumer = consumer_config(group).create().unwrap();
    second.subscribe(&[topic]).unwrap();
    while received.len() < MESSAGES {
        let (p, o, k, v, _) = poll_one(&second, "second session");
        let previous = received.insert((p, o), (k, v));
        assert!(previous.is_none(), "offset {p}:{o} delivered again after its commit");
    }
    received
}

/// `LostConsumer` tells a consumer that lost its way (it gets no answer while a new client does)
/// from brokers that are away for every client, and from a consumer that answers: only the first
/// is an error, once Kafka has been away for it at least `LOST_AFTER`, and it is asked at most
/// every 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_lost_its_way_is_told_apart_from_brokers_that_are_away() {
    use rainbow_runtime::kafka::{self, ConsumerLost, KafkaConnection, LostConsumer, LOST_AFTER};
    let live = common::kafka();
    // A port nothing listens on: a client there never hears from a broker.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let dead = KafkaConnection { brokers: closed, client_id: "rainbow-test".into() };
    let topic = common::unique_name("rainbow_test_lost");
    kafka::ensure_topics(
        &live.client_config("admin"),
        &[kafka::TopicSpec { name: topic.clone(), partitions: 1, replication: -1 }],
    )
    .await
    .unwrap();
    let (t, l, d) = (topic.clone(), live.clone(), dead);
    tokio::task::spawn_blocking(move || {
        let partitions = [(t.as_str(), 0)];
        let answering: BaseConsumer = l.client_config("answering").create().unwrap();
        let lost: BaseConsumer = d.client_config("lost").create().unwrap();
        let away = Some(LOST_AFTER + Duration::from_secs(1));
        // Not away long enough, or not away at all: not asked.
        assert_eq!(LostConsumer::default().check(&l, &lost, &partitions, None), Ok(()));
        assert_eq!(LostConsumer::default().check(&l, &lost, &partitions, Some(LOST_AFTER / 2)), Ok(()));
        // The consumer answers: not lost.
        assert_eq!(LostConsumer::default().check(&l, &answering, &partitions, away), Ok(()));
        // Nobody reaches the brokers (the probe goes where the lost consumer goes): not lost.
        assert_eq!(LostConsumer::default().check(&d, &lost, &partitions, away), Ok(()));
        // The brokers answer a new client, the consumer does not: lost, then not asked again
        // within 10 s.
        let mut check = LostConsumer::default();
        assert_eq!(
            check.check(&l, &lost, &partitions, away),
            Err(ConsumerLost { away_s: LOST_AFTER.as_secs() + 1 })
        );
        assert_eq!(check.check(&l, &lost, &partitions, away), Ok(()));
    })
    .await
    .unwrap();
    kafka::delete_topics(&live.client_config("admin"), &[&topic]).await.unwrap();
}
