//! The replay's dead letters: every record the engine could not use, with where it came from
//! and why, written as `<out>/_rejected.jsonl` (one JSON object a line) when the input ends.
//!
//! Contract ([`DeadLetters`]): the list is kept in memory and is part of every checkpoint
//! ([`DeadLetters::save`]), so a resumed replay writes the same file.

use crate::error::ReplayError;
use rainbow_processor::engine::{DeadLetter, DeadLetters};
use rainbow_runtime::store::Store;
use serde::{Deserialize, Serialize};

/// Where the rejections go, relative to the output.
pub const PATH: &str = "_rejected.jsonl";

/// A record the core could not use, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub stage: String,
    pub reason: String,
}

pub struct RejectionFile {
    out: Store,
    rt: tokio::runtime::Handle,
    rejected: Vec<Rejection>,
}

impl RejectionFile {
    pub fn new(out: Store, rt: tokio::runtime::Handle) -> RejectionFile {
        RejectionFile { out, rt, rejected: Vec::new() }
    }
}

impl DeadLetters for RejectionFile {
    type Error = ReplayError;

    fn park(&mut self, letter: &DeadLetter<'_>) -> Result<(), ReplayError> {
        self.rejected.push(Rejection {
            topic: letter.input.topic.clone(),
            partition: letter.input.partition,
            offset: letter.offset,
            stage: letter.stage.into(),
            reason: letter.reason.into(),
        });
        Ok(())
    }

    /// The list goes into the checkpoint.
    fn flush(&mut self) -> Result<(), ReplayError> {
        Ok(())
    }

    fn save(&self) -> Result<Vec<u8>, ReplayError> {
        postcard::to_allocvec(&self.rejected)
            .map_err(|e| ReplayError::Checkpoint { path: "rejections".into(), reason: e.to_string() })
    }

    fn restore(&mut self, state: Option<&[u8]>) -> Result<(), ReplayError> {
        self.rejected = match state {
            Some(bytes) => postcard::from_bytes(bytes)
                .map_err(|e| ReplayError::Checkpoint { path: "rejections".into(), reason: e.to_string() })?,
            None => Vec::new(),
        };
        Ok(())
    }

    /// Writes the file (or removes an earlier run's when nothing was rejected).
    fn finish(self) -> Result<u64, ReplayError> {
        if self.rejected.is_empty() {
            self.rt.block_on(self.out.delete(PATH))?;
            return Ok(0);
        }
        let mut body = Vec::new();
        for r in &self.rejected {
            body.extend(serde_json::to_vec(r).expect("serialises"));
            body.push(b'\n');
        }
        self.rt.block_on(self.out.put(PATH, body))?;
        Ok(self.rejected.len() as u64)
    }
}
