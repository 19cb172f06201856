//! Checkpoints: the core's state, the merge's last released position and every input's resume
//! offset, written atomically to object_store.
//!
//! Contract: a checkpoint is written only after the sink made every row produced before it
//! durable in ClickHouse and the dead-letter producer flushed, so resuming from it loses nothing;
//! rows produced after it are produced again, identically (same keys, versions and content), so
//! ClickHouse converges. Objects are `<prefix>/checkpoint-<id, 20 digits>.bin`; a put is atomic
//! (the local store writes a temporary file and renames it), the latest is the highest id, and a
//! corrupt latest falls back to the one before.

use crate::core::State;
use crate::error::ProcessorError;
use crate::event::Position;
use crate::merge::InputName;
use rainbow_runtime::store::Store;
use serde::{Deserialize, Serialize};

/// Leading bytes of every checkpoint object: format name and version.
/// Version 2: the core state gained `seal_requested` (lazy aggregate sealing); version 1
/// checkpoints are refused with "bad magic or format version" and the processor starts over.
pub const MAGIC: &[u8; 8] = b"RBWCKPT2";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub id: u64,
    pub partition: i32,
    pub state: State,
    pub last_released: Option<Position>,
    pub offsets: Vec<(InputName, i64)>,
    /// Events applied since the stream began.
    pub events: u64,
}

/// A checkpoint by reference, to write one without cloning the state; encodes exactly like
/// [`Checkpoint`].
#[derive(Serialize)]
pub struct CheckpointRef<'a> {
    pub id: u64,
    pub partition: i32,
    pub state: &'a State,
    pub last_released: Option<Position>,
    pub offsets: Vec<(InputName, i64)>,
    pub events: u64,
}

impl CheckpointRef<'_> {
    /// MAGIC + postcard.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut out = MAGIC.to_vec();
        out.extend(postcard::to_allocvec(self)?);
        Ok(out)
    }
}

impl Checkpoint {
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        CheckpointRef {
            id: self.id,
            partition: self.partition,
            state: &self.state,
            last_released: self.last_released,
            offsets: self.offsets.clone(),
            events: self.events,
        }
        .encode()
    }

    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
        let body =
            bytes.strip_prefix(MAGIC).ok_or("not a Rainbow checkpoint (bad magic or format version)")?;
        postcard::from_bytes(body).map_err(|e| e.to_string())
    }
}

pub struct CheckpointStore {
    store: Store,
    folder: String,
    kept: usize,
}

impl CheckpointStore {
    /// Opens the store at `url` (a directory, created if missing, or an object-store URL:
    /// `file://`, `s3://`, `gs://`, `az://`); checkpoints go under `<folder>/`.
    pub fn open(url: &str, folder: &str, kept: usize) -> Result<CheckpointStore, ProcessorError> {
        let store = Store::open(url).map_err(|e| checkpoint_error(url, e))?;
        Ok(CheckpointStore { store, folder: folder.to_string(), kept })
    }

    fn path(&self, id: u64) -> String {
        format!("{}/checkpoint-{id:020}.bin", self.folder)
    }

    fn err(&self, e: impl std::fmt::Display) -> ProcessorError {
        checkpoint_error(&self.store.url, e)
    }

    async fn ids(&self) -> Result<Vec<u64>, ProcessorError> {
        let listed = self.store.list(&self.folder).await.map_err(|e| self.err(e))?;
        let mut ids: Vec<u64> = listed
            .iter()
            .filter_map(|(path, _)| {
                path.rsplit('/').next()?.strip_prefix("checkpoint-")?.strip_suffix(".bin")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The newest readable checkpoint, if any.
    pub async fn latest(&self) -> Result<Option<Checkpoint>, ProcessorError> {
        for id in self.ids().await?.into_iter().rev() {
            let path = self.path(id);
            match self.store.get(&path).await {
                Ok(bytes) => match Checkpoint::decode(&bytes) {
                    Ok(c) => return Ok(Some(c)),
                    Err(reason) => tracing::warn!(%path, %reason, "skipping an unreadable checkpoint"),
                },
                Err(e) => tracing::warn!(%path, error = %e, "skipping an unreadable checkpoint"),
            }
        }
        Ok(None)
    }

    /// Writes `checkpoint` atomically, then deletes all but the newest `kept + 1`. Returns the
    /// size written.
    pub async fn save(&self, checkpoint: &Checkpoint) -> Result<usize, ProcessorError> {
        let bytes = checkpoint.encode().map_err(|e| self.err(e))?;
        self.save_encoded(checkpoint.id, bytes).await
    }

    /// [`CheckpointStore::save`] of a checkpoint already encoded (magic + postcard).
    pub async fn save_encoded(&self, id: u64, bytes: Vec<u8>) -> Result<usize, ProcessorError> {
        let size = bytes.len();
        self.store.put(&self.path(id), bytes).await.map_err(|e| self.err(e))?;
        let ids = self.ids().await?;
        let old = ids.len().saturating_sub(self.kept + 1);
        for id in &ids[..old] {
            if let Err(e) = self.store.delete(&self.path(*id)).await {
                tracing::warn!(id, error = %e, "could not delete an old checkpoint");
            }
        }
        Ok(size)
    }
}

fn checkpoint_error(url: &str, e: impl std::fmt::Display) -> ProcessorError {
    ProcessorError::Checkpoint { url: url.to_string(), reason: e.to_string() }
}
