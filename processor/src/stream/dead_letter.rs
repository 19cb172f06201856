//! The dead-letter topic: records the processor cannot use, with why and where they came from in
//! headers (`rainbow.dlq.reason`, `.stage`, `.topic`, `.partition`, `.offset`), through an
//! idempotent producer with `acks=all`.
//!
//! Contract ([`DeadLetters`]): [`DeadLetterTopic::flush`] returns once every letter parked before
//! was delivered, so a checkpoint written after it never covers a record whose letter is lost.

use crate::engine::{DeadLetter, DeadLetters};
use crate::error::ProcessorError;
use rainbow_runtime::kafka::KafkaConnection;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::time::Duration;

/// How long a flush may wait for the brokers to acknowledge the letters parked.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

pub struct DeadLetterTopic {
    topic: String,
    producer: BaseProducer,
    parked: u64,
}

impl DeadLetterTopic {
    pub fn new(kafka: &KafkaConnection, topic: &str) -> Result<DeadLetterTopic, ProcessorError> {
        let producer: BaseProducer = kafka
            .client_config("processor-dlq")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create()?;
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
        Ok(self.producer.flush(FLUSH_TIMEOUT)?)
    }

    fn finish(mut self) -> Result<u64, ProcessorError> {
        self.flush()?;
        Ok(self.parked)
    }
}
