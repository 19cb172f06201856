//! Kafka side of the reader: topic creation, the idempotent producer, and the acknowledgement
//! tracker that decides how far the slot may be confirmed.
//!
//! Contract: records are handed to [`KafkaSink::send`] in WAL order. The tracker awaits their
//! acknowledgements in that same order, so the position it publishes ([`Acked`]) only ever moves
//! past a transaction once every record sent before the transaction's end marker is acknowledged
//! (acks=all, idempotent producer: no duplicates from producer retries, no reordering within a
//! partition). A record Kafka refuses stops the tracker with an error; nothing after the last
//! fully acknowledged transaction is ever confirmed, so a restart re-sends it.

use crate::error::CdcError;
use crate::metrics::{CdcMetrics, DeliveryFailed, HeartbeatAcknowledged, TransactionAcknowledged};
use rainbow_runtime::kafka::{KafkaConnection, RainbowProducer};
use rainbow_schemas::wire::Lsn;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How far Kafka has acknowledged the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Acked {
    /// Every transaction ending at or before this position is in Kafka.
    pub lsn: Option<Lsn>,
    pub last_commit_lsn: Option<Lsn>,
    pub last_tx_id: Option<u32>,
}

enum Pending {
    Record {
        delivery: DeliveryFuture,
        topic: Arc<str>,
        table: Arc<str>,
        op: &'static str,
        bytes: usize,
    },
    Heartbeat {
        delivery: DeliveryFuture,
        topic: Arc<str>,
        now_ms: i64,
    },
    TransactionEnd {
        end_lsn: Lsn,
        commit_lsn: Lsn,
        tx_id: u32,
        commit_time_us: i64,
    },
    /// The server has nothing unsent before this position (a keepalive outside a transaction).
    Position(Lsn),
    Barrier(oneshot::Sender<()>),
}

/// What a record is, for the tracker's bookkeeping.
pub enum RecordKind {
    Change {
        table: Arc<str>,
        op: &'static str,
    },
    Heartbeat {
        now_ms: i64,
    },
    /// Tombstones and transaction metadata: acknowledged like any record, counted nowhere.
    Other,
}

pub struct KafkaSink {
    producer: RainbowProducer,
    pending: mpsc::Sender<Pending>,
    metrics: CdcMetrics,
}

/// Producer settings for at-least-once delivery without producer-side duplicates, partitioned
/// like Kafka's Java client so keys land where Kafka Connect would put them; batches compressed
/// with `compression` (`cdc.compression`).
pub fn producer_config(kafka: &KafkaConnection, compression: &str) -> ClientConfig {
    let mut c = kafka.client_config("cdc");
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("compression.type", compression)
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "300000");
    c
}

/// Fails with a clear error when no broker answers within `timeout`.
pub async fn check_reachable(
    producer: &RainbowProducer,
    brokers: &str,
    timeout: Duration,
) -> Result<(), CdcError> {
    let client = producer.clone();
    let result =
        tokio::task::spawn_blocking(move || rainbow_runtime::kafka::reachable(client.client(), timeout))
            .await
            .expect("metadata task");
    result.map_err(|e| CdcError::KafkaUnreachable { brokers: brokers.to_string(), reason: e.to_string() })
}

impl KafkaSink {
    /// The sink and its acknowledgement tracker (run it with [`AckTracker::run`]).
    pub fn new(
        producer: RainbowProducer,
        metrics: CdcMetrics,
        max_in_flight: usize,
    ) -> (KafkaSink, AckTracker) {
        let (tx, rx) = mpsc::channel(max_in_flight.max(1));
        let (acked_tx, _) = watch::channel(Acked::default());
        let tracker = AckTracker { pending: rx, acked: acked_tx, metrics: metrics.clone() };
        (KafkaSink { producer, pending: tx, metrics }, tracker)
    }

    /// Hands one record to the producer. Waits while the producer queue or the in-flight window
    /// is full (back-pressure on the replication stream).
    pub async fn send(
        &self,
        topic: &Arc<str>,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        kind: RecordKind,
    ) -> Result<(), CdcError> {
        let bytes = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
        let delivery = loop {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
            if let Some(p) = partition {
                record = record.partition(p);
            }
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(v) = value {
                record = record.payload(v);
            }
            if !headers.is_empty() {
                let mut h = OwnedHeaders::new_with_capacity(headers.len());
                for (name, v) in headers {
                    h = h.insert(Header { key: name, value: Some(*v) });
                }
                record = record.headers(h);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // librdkafka's queue drains as the broker acknowledges; FutureProducer::send
                    // waits the same way.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Err(e.into()),
            }
        };
        self.metrics.in_flight.inc();
        let pending = match kind {
            RecordKind::Change { table, op } => {
                Pending::Record { delivery, topic: topic.clone(), table, op, bytes }
            }
            RecordKind::Heartbeat { now_ms } => Pending::Heartbeat { delivery, topic: topic.clone(), now_ms },
            RecordKind::Other => {
                Pending::Record { delivery, topic: topic.clone(), table: Arc::from(""), op: "", bytes: 0 }
            }
        };
        self.push(pending).await
    }

    /// Marks the end of a transaction whose records were all sent.
    pub async fn end_transaction(
        &self,
        end_lsn: Lsn,
        commit_lsn: Lsn,
        tx_id: u32,
        commit_time_us: i64,
    ) -> Result<(), CdcError> {
        self.push(Pending::TransactionEnd { end_lsn, commit_lsn, tx_id, commit_time_us }).await
    }

    /// Everything before `lsn` was sent (the server said so in a keepalive outside a transaction).
    pub async fn position(&self, lsn: Lsn) -> Result<(), CdcError> {
        self.push(Pending::Position(lsn)).await
    }

    /// Resolves once every record sent so far is acknowledged (or the tracker stopped).
    pub async fn flush(&self) -> Result<(), CdcError> {
        let (tx, rx) = oneshot::channel();
        self.push(Pending::Barrier(tx)).await?;
        rx.await.map_err(|_| tracker_gone())
    }

    async fn push(&self, p: Pending) -> Result<(), CdcError> {
        self.pending.send(p).await.map_err(|_| tracker_gone())
    }
}

fn tracker_gone() -> CdcError {
    CdcError::Delivery { topic: "(any)".into(), reason: "the acknowledgement tracker stopped".into() }
}

/// Awaits acknowledgements in send order and publishes the acknowledged position.
pub struct AckTracker {
    pending: mpsc::Receiver<Pending>,
    acked: watch::Sender<Acked>,
    metrics: CdcMetrics,
}

impl AckTracker {
    pub fn subscribe(&self) -> watch::Receiver<Acked> {
        self.acked.subscribe()
    }

    /// Runs until the sink is dropped (Ok) or a record fails (Err).
    pub async fn run(mut self) -> Result<(), CdcError> {
        while let Some(p) = self.pending.recv().await {
            match p {
                Pending::Record { delivery, topic, table, op, bytes } => {
                    self.await_delivery(delivery, &topic).await?;
                    if !op.is_empty() {
                        self.metrics.record_event(&table, op, bytes);
                    }
                }
                Pending::Heartbeat { delivery, topic, now_ms } => {
                    self.await_delivery(delivery, &topic).await?;
                    HeartbeatAcknowledged { now_ms }.emit(&self.metrics);
                }
                Pending::TransactionEnd { end_lsn, commit_lsn, tx_id, commit_time_us } => {
                    TransactionAcknowledged {
                        end_lsn,
                        commit_time_us,
                        now_us: chrono::Utc::now().timestamp_micros(),
                    }
                    .emit(&self.metrics);
                    self.acked.send_modify(|a| {
                        a.lsn = Some(a.lsn.map_or(end_lsn, |l| l.max(end_lsn)));
                        a.last_commit_lsn = Some(commit_lsn);
                        a.last_tx_id = Some(tx_id);
                    });
                }
                Pending::Position(lsn) => self.acked.send_modify(|a| {
                    a.lsn = Some(a.lsn.map_or(lsn, |l| l.max(lsn)));
                }),
                Pending::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
        Ok(())
    }

    async fn await_delivery(&self, delivery: DeliveryFuture, topic: &str) -> Result<(), CdcError> {
        let outcome = delivery.await;
        self.metrics.in_flight.dec();
        let reason = match outcome {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err((e, _))) => e.to_string(),
            Err(_) => "the producer dropped the record".to_string(),
        };
        DeliveryFailed { topic, reason: &reason }.emit(&self.metrics);
        Err(CdcError::Delivery { topic: topic.to_string(), reason })
    }
}
