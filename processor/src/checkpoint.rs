//! Checkpoints of the engine ([`crate::engine`]), one format for streaming and replay: the
//! core's state, the merge's last released position, every input's resume offset, the counts,
//! and the sink's and the dead letters' own state, written atomically to object storage.
//!
//! Contract: the engine writes a checkpoint only after the sink and the dead letters made
//! everything before it durable, so resuming from it loses nothing; what is produced after it is
//! produced again identically. Objects are `<folder>/checkpoint-<id, 20 digits>.bin`: the magic
//! [`MAGIC`] (format name and version), then the envelope in postcard. A put is atomic and, on
//! a local disk, fsynced ([`rainbow_runtime::store`]); the latest is the highest id, and an
//! unreadable latest (another format version, a torn object) falls back to the one before, or
//! to a fresh start. The runs of orders a core moved out of memory ([`crate::core::cold`]) that
//! a checkpoint's state names are stored beside it, `<folder>/cold/<run file>`, before it
//! ([`CheckpointStore::put_runs`]); they never change, and are fetched back into the local
//! directory at a resume ([`CheckpointStore::fetch_runs`]).

use crate::core::State;
use crate::event::Position;
use crate::merge::InputName;
use rainbow_runtime::forked::{ChildWriter, Forked};
use rainbow_runtime::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

/// Leading bytes of every checkpoint object: format name and version.
/// Version 4: one envelope for streaming and replay (fingerprint, the source it was read from,
/// emitted selection, counts, sink and dead-letter state). Version 5: the core's state tracks
/// incremental snapshots. Version 6: the core's order lines are grouped by order. Version 7: a
/// customer's columns in one text, a product's category and brand ids in its member (and the
/// order lines without a count of their own, which version 6 checkpoints of 46a93c8 had).
/// Version 8: the runs of orders moved out of memory, and the orders read back from them. Older
/// checkpoints are refused with "bad magic or format version" and the engine starts over from
/// the beginning of its input.
pub const MAGIC: &[u8; 8] = b"RBWCKPT8";

/// Counts of what an engine did, kept in its checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Records the source delivered (tombstones and dead letters included).
    pub records: u64,
    /// Events applied to the core.
    pub events: u64,
    /// Events applied whose rows are output (all, in streaming).
    pub emitted: u64,
    /// Re-deliveries dropped by the merge.
    pub duplicates: u64,
    /// Records and events parked in the dead letters.
    pub rejected: u64,
}

/// The folder of an instance's checkpoints under `processor.checkpoint_url`: the consumer
/// group's name, or `<group>-<partition>` for each instance of a scaled-out processor (the
/// instances of a group may share a checkpoint location).
pub fn folder(group_id: &str, instances: i32, partition: i32) -> String {
    if instances > 1 {
        format!("{group_id}-{partition}")
    } else {
        group_id.to_string()
    }
}

/// Whether `folder` is one that [`folder`] gives for `group_id`, whatever the number of
/// instances.
pub fn is_folder_of(group_id: &str, folder: &str) -> bool {
    folder == group_id
        || folder
            .strip_prefix(group_id)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The folders of `store` that hold checkpoints of `group_id`'s instances ([`is_folder_of`]),
/// sorted.
pub async fn folders_of(store: &Store, group_id: &str) -> Result<Vec<String>, CheckpointError> {
    let listed = store
        .list("")
        .await
        .map_err(|e| CheckpointError { url: store.url.clone(), reason: e.to_string() })?;
    let mut folders: Vec<String> = listed
        .iter()
        .filter_map(|(path, _)| path.split_once('/').map(|(first, _)| first))
        .filter(|first| is_folder_of(group_id, first))
        .map(String::from)
        .collect();
    folders.dedup();
    Ok(folders)
}

/// A checkpoint store that could not be read or written.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("checkpoint store {url}: {reason}")]
pub struct CheckpointError {
    pub url: String,
    pub reason: String,
}

/// A checkpoint as read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub id: u64,
    /// What the state is of (see [`crate::engine::Options::fingerprint`]).
    pub fingerprint: String,
    /// The source the inputs were read from ([`crate::engine::Source::identity`]).
    pub source: String,
    /// The instance's number (its share of the fact partitions).
    pub partition: i32,
    /// Whether the events being applied were output.
    pub emitting: bool,
    pub last_released: Option<Position>,
    pub offsets: Vec<(InputName, i64)>,
    pub totals: Totals,
    pub state: State,
    pub sink: Vec<u8>,
    pub dead_letters: Vec<u8>,
}

/// A checkpoint by reference, to write one without copying the state; encodes exactly like
/// [`Checkpoint`].
#[derive(Serialize)]
pub struct CheckpointRef<'a> {
    pub id: u64,
    pub fingerprint: &'a str,
    pub source: &'a str,
    pub partition: i32,
    pub emitting: bool,
    pub last_released: Option<Position>,
    pub offsets: &'a [(InputName, i64)],
    pub totals: &'a Totals,
    pub state: &'a State,
    pub sink: &'a [u8],
    pub dead_letters: &'a [u8],
}

impl CheckpointRef<'_> {
    /// MAGIC + postcard.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut out = MAGIC.to_vec();
        out.extend(postcard::to_allocvec(self)?);
        Ok(out)
    }

    /// The same bytes as [`CheckpointRef::encode`], written by a forked child from the memory
    /// of this moment ([`rainbow_runtime::forked`]): the caller may change the state at once and
    /// collect the bytes with [`Forked::wait`] later. `Unsupported` off Linux.
    pub fn encode_forked(&self) -> std::io::Result<Forked> {
        // SAFETY: postcard's serializer over a ChildWriter allocates nothing (the writer's buffer
        // is allocated before the fork), takes no lock and does not panic: the checkpoint's
        // types serialise through serde's derives and std's impls (maps of known length, strings,
        // integers), and a failed write ends the serialisation with an error.
        unsafe {
            Forked::spawn(|out| {
                out.write(MAGIC) && postcard::serialize_with_flavor(self, IntoChild(out)).is_ok()
            })
        }
    }
}

/// A postcard flavor that writes into a forked child's pipe.
struct IntoChild<'a>(&'a mut ChildWriter);

impl postcard::ser_flavors::Flavor for IntoChild<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.write(data).then_some(()).ok_or(postcard::Error::SerializeBufferFull)
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl Checkpoint {
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
        let body =
            bytes.strip_prefix(MAGIC).ok_or("not a Rainbow checkpoint (bad magic or format version)")?;
        postcard::from_bytes(body).map_err(|e| e.to_string())
    }
}

/// The checkpoints of one engine, under a folder of an object store.
pub struct CheckpointStore {
    store: Store,
    folder: String,
    kept: usize,
    /// Run files known to be in the store (listed once, then added to as they are stored).
    stored_runs: tokio::sync::Mutex<Option<HashSet<String>>>,
}

impl CheckpointStore {
    /// Opens the store at `url` (a directory, created if missing, or an object-store URL:
    /// `file://`, `s3://`, `gs://`, `az://`); checkpoints go under `<folder>/`, and all but the
    /// newest `kept + 1` are deleted after each write.
    pub fn open(url: &str, folder: &str, kept: usize) -> Result<CheckpointStore, CheckpointError> {
        let store =
            Store::open(url).map_err(|e| CheckpointError { url: url.to_string(), reason: e.to_string() })?;
        Ok(CheckpointStore::new(store, folder, kept))
    }

    /// Checkpoints under `folder` of an open store.
    pub fn new(store: Store, folder: &str, kept: usize) -> CheckpointStore {
        CheckpointStore { store, folder: folder.to_string(), kept, stored_runs: Default::default() }
    }

    fn path(&self, id: u64) -> String {
        format!("{}/checkpoint-{id:020}.bin", self.folder)
    }

    /// Where the checkpoints are, for messages: `<store url>/<folder>`.
    pub fn location(&self) -> String {
        format!("{}/{}", self.store.url, self.folder)
    }

    /// An error of this store.
    pub fn error(&self, e: impl std::fmt::Display) -> CheckpointError {
        CheckpointError { url: self.location(), reason: e.to_string() }
    }

    /// The ids of the checkpoints under the folder, oldest first.
    pub async fn ids(&self) -> Result<Vec<u64>, CheckpointError> {
        let listed = self.store.list(&self.folder).await.map_err(|e| self.error(e))?;
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
    pub async fn latest(&self) -> Result<Option<Checkpoint>, CheckpointError> {
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

    /// Writes an encoded checkpoint atomically, then deletes all but the newest `kept + 1`.
    pub async fn save_encoded(&self, id: u64, bytes: Vec<u8>) -> Result<(), CheckpointError> {
        self.store.put(&self.path(id), bytes).await.map_err(|e| self.error(e))?;
        let ids = self.ids().await?;
        let old = ids.len().saturating_sub(self.kept + 1);
        for id in &ids[..old] {
            if let Err(e) = self.store.delete(&self.path(*id)).await {
                tracing::warn!(id, error = %e, "could not delete an old checkpoint");
            }
        }
        Ok(())
    }

    /// Deletes every checkpoint (the output they lead to is complete), and the runs beside them.
    pub async fn clear(&self) -> Result<(), CheckpointError> {
        for id in self.ids().await? {
            self.store.delete(&self.path(id)).await.map_err(|e| self.error(e))?;
        }
        for (path, _) in self.store.list(&self.runs_folder()).await.map_err(|e| self.error(e))? {
            self.store.delete(&path).await.map_err(|e| self.error(e))?;
        }
        *self.stored_runs.lock().await = None;
        Ok(())
    }

    fn runs_folder(&self) -> String {
        format!("{}/cold", self.folder)
    }

    /// Stores the run files `files` (path under `dir`, size) of the local directory `dir` that the
    /// store does not hold yet: before a checkpoint whose state names them.
    pub async fn put_runs(&self, dir: &Path, files: &[(String, u64)]) -> Result<(), CheckpointError> {
        if files.is_empty() {
            return Ok(());
        }
        let mut known = self.stored_runs.lock().await;
        if known.is_none() {
            let prefix = format!("{}/", self.runs_folder());
            let listed = self.store.list(&self.runs_folder()).await.map_err(|e| self.error(e))?;
            *known = Some(
                listed.iter().filter_map(|(path, _)| path.strip_prefix(&prefix).map(String::from)).collect(),
            );
        }
        let stored = known.as_mut().expect("listed");
        for (name, _) in files {
            if stored.contains(name) {
                continue;
            }
            let bytes = tokio::fs::read(dir.join(name))
                .await
                .map_err(|e| self.error(format!("{}: {e}", dir.join(name).display())))?;
            self.store
                .put(&format!("{}/{name}", self.runs_folder()), bytes)
                .await
                .map_err(|e| self.error(e))?;
            stored.insert(name.clone());
        }
        Ok(())
    }

    /// Makes the local directory `dir` hold exactly the run files `files` (name, size) of a
    /// checkpoint's state: those missing (or of another size) are fetched from the store, the
    /// others deleted (written after that checkpoint, or by another state). Returns how many were
    /// fetched.
    pub async fn fetch_runs(&self, dir: &Path, files: &[(String, u64)]) -> Result<usize, CheckpointError> {
        let local = |e: std::io::Error| self.error(format!("{}: {e}", dir.display()));
        tokio::fs::create_dir_all(dir).await.map_err(local)?;
        let wanted: HashSet<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
        // Run files lie one folder down (a folder per kind of runs); nothing else is touched.
        let mut folders = tokio::fs::read_dir(dir).await.map_err(local)?;
        while let Some(folder) = folders.next_entry().await.map_err(local)? {
            if !folder.file_type().await.map_err(local)?.is_dir() {
                continue;
            }
            let kind = folder.file_name().to_string_lossy().into_owned();
            let mut entries = tokio::fs::read_dir(folder.path()).await.map_err(local)?;
            while let Some(entry) = entries.next_entry().await.map_err(local)? {
                let file = entry.file_name().to_string_lossy().into_owned();
                let name = format!("{kind}/{file}");
                if file.starts_with("run-") && !wanted.contains(name.as_str()) {
                    tokio::fs::remove_file(entry.path()).await.map_err(local)?;
                }
            }
        }
        let mut fetched = 0;
        for (name, size) in files {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(local)?;
            }
            if tokio::fs::metadata(&path).await.is_ok_and(|m| m.len() == *size) {
                continue;
            }
            let bytes =
                self.store.get(&format!("{}/{name}", self.runs_folder())).await.map_err(|e| self.error(e))?;
            if bytes.len() as u64 != *size {
                return Err(self
                    .error(format!("{name}: {} bytes stored, the checkpoint expects {size}", bytes.len())));
            }
            let temporary = dir.join(format!("{name}.tmp"));
            tokio::fs::write(&temporary, &bytes).await.map_err(local)?;
            tokio::fs::rename(&temporary, &path).await.map_err(local)?;
            fetched += 1;
        }
        Ok(fetched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_of_a_group_whatever_its_instances() {
        assert_eq!(folder("g", 1, 0), "g");
        assert_eq!(folder("g", 3, 2), "g-2");
        for (f, of) in
            [("g", true), ("g-0", true), ("g-12", true), ("g-", false), ("g-x", false), ("gg", false)]
        {
            assert_eq!(is_folder_of("g", f), of, "{f}");
        }
    }

    #[tokio::test]
    async fn folders_of_lists_the_groups_checkpoint_folders() {
        let dir = std::env::temp_dir().join(format!("rainbow-ckpt-folders-{}", std::process::id()));
        let store = Store::open(dir.to_str().unwrap()).unwrap();
        for (folder, id) in [("g", 1), ("g", 2), ("g-1", 1), ("h", 1)] {
            store.put(&format!("{folder}/checkpoint-{id:020}.bin"), b"x".to_vec()).await.unwrap();
        }
        assert_eq!(folders_of(&store, "g").await.unwrap(), ["g-1", "g"]);
        let checkpoints = CheckpointStore::new(store.clone(), "g", 0);
        assert_eq!(checkpoints.ids().await.unwrap(), [1, 2]);
        checkpoints.clear().await.unwrap();
        assert!(checkpoints.ids().await.unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
