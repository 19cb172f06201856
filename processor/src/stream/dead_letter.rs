//! The dead-letter topic: records the processor cannot use, with why and where they came from in
//! headers (`rainbow.dlq.reason`, `.stage`, `.topic`, `.partition`, `.offset`), through an
//! idempotent producer with `acks=all`.
//!
//! Contract ([`DeadLetters`]): [`DeadLetterTopic::flush`] returns Ok only once every letter parked
//! before was acknowledged by the brokers; a letter whose delivery failed makes it fail, so the
//! checkpoint that would cover its record is not written, and the record is parked again after
//! the restart.

use crate::engine::{DeadLetter, DeadLetters};
use crate::error::ProcessorError;
use rainbow_runtime::kafka::KafkaConnection;
use rdkafka::client::ClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use std::sync::Mutex;
use std::time::Duration;

/// Keeps the first delivery failure since the last flush.
#[derive(Default)]
pub struct Deliveries {
    failed: Mutex<(u64, Option<String>)>,
    /// Logs as the components' other clients do.
    quiet: rainbow_runtime::kafka::QuietContext,
}

impl ClientContext for Deliveries {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.quiet.log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.quiet.error(error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut failed = self.failed.lock().expect("lock");
            failed.0 += 1;
            failed.1.get_or_insert_with(|| e.to_string());
        }
    }
}

/// How long a flush may wait for the brokers to acknowledge the letters parked.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the producer tries to deliver one letter: less than a flush waits.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct DeadLetterTopic {
    topic: String,
    producer: BaseProducer<Deliveries>,
    parked: u64,
}

impl DeadLetterTopic {
    pub fn new(kafka: &KafkaConnection, topic: &str) -> Result<DeadLetterTopic, ProcessorError> {
        let producer: BaseProducer<Deliveries> = kafka
            .client_config("processor-dlq")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // A letter not delivered within a flush's wait is reported as failed by it.
            .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string())
            .create_with_context(Deliveries::default())?;
        Ok(DeadLetterTopic { topic: topic.to_string(), producer, parked: 0 })
    }
}

impl DeadLetters for DeadLetterTopic {
    type Error = ProcessorError;

    fn park(&mut self, letter: &DeadLetter<'_>) -> Result<(), ProcessorError> {
        let (partition, offset) = (letter.input.partition.to_string(), letter.offset.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header { key: "rainbow.dlq.reason", value: Some(letter.reason) })
            .insert(Header { key: "rainbow.dlq.stage", value: Some(letter.stage) })
            .insert(Header { key: "rainbow.dlq.topic", value: Some(letter.input.topic.as_str()) })
            .insert(Header { key: "rainbow.dlq.partition", value: Some(partition.as_str()) })
            .insert(Header { key: "rainbow.dlq.offset", value: Some(offset.as_str()) });
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).headers(headers);
        if let Some(k) = letter.key {
            record = record.key(k);
        }
        if let Some(v) = letter.value {
            record = record.payload(v);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    self.producer.poll(Duration::from_millis(10));
                    record = r;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        self.producer.poll(Duration::ZERO);
        self.parked += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ProcessorError> {
        self.producer.flush(FLUSH_TIMEOUT)?;
        let (count, first) = std::mem::take(&mut *self.producer.context().failed.lock().expect("lock"));
        match first {
            None => Ok(()),
            Some(reason) => Err(ProcessorError::DeadLetters { count, reason }),
        }
    }

    fn finish(mut self) -> Result<u64, ProcessorError> {
        self.flush()?;
        Ok(self.parked)
    }
}
