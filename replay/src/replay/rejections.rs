//! The replay's dead letters: every record the engine could not use, with where it came from
//! and why, written as `<out>/_rejected.jsonl` (one JSON object a line, ordered by topic,
//! partition and offset) when the input ends.
//!
//! Contract ([`DeadLetters`]): a shard's list is kept in memory and is part of every checkpoint
//! ([`DeadLetters::save`]), so a resumed replay writes the same file; at the end it is handed to
//! [`write`], which merges the shards' lists (a dimension record is read, and rejected, by every
//! shard: it is listed once).

use crate::error::ReplayError;
use rainbow_processor::engine::{DeadLetter, DeadLetters};
use rainbow_runtime::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Where the rejections go, relative to the output.
pub const PATH: &str = "_rejected.jsonl";

/// A record the core could not use, with why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rejection {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub stage: String,
    pub reason: String,
}

/// Where a shard's list goes when its input ends.
pub type Handover = Arc<Mutex<Vec<Rejection>>>;

pub struct RejectionFile {
    rejected: Vec<Rejection>,
    handover: Handover,
}

impl RejectionFile {
    /// A list that `finish` moves into `handover`.
    pub fn new(handover: Handover) -> RejectionFile {
        RejectionFile { rejected: Vec::new(), handover }
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

    /// Hands the list over.
    fn finish(self) -> Result<u64, ReplayError> {
        let n = self.rejected.len() as u64;
        *self.handover.lock().expect("not poisoned") = self.rejected;
        Ok(n)
    }
}

/// Writes the shards' lists as one file, ordered and listed once (or removes an earlier run's
/// file when nothing was rejected). Returns the records listed.
pub fn write(
    out: &Store,
    rt: &tokio::runtime::Handle,
    shards: impl IntoIterator<Item = Vec<Rejection>>,
) -> Result<u64, ReplayError> {
    let all: BTreeSet<Rejection> = shards.into_iter().flatten().collect();
    if all.is_empty() {
        rt.block_on(out.delete(PATH))?;
        return Ok(0);
    }
    let mut body = Vec::new();
    for r in &all {
        body.extend(serde_json::to_vec(r).expect("serialises"));
        body.push(b'\n');
    }
    rt.block_on(out.put(PATH, body))?;
    Ok(all.len() as u64)
}
