//! Immutable sorted runs of `(key, value)` in files of one local directory: where the core keeps
//! the orders and the dimension versions it moved out of memory ([`crate::core`], "Memory").
//!
//! Contract: [`Runs::write`] writes one run from entries sorted by key (each key once) to
//! `run-<number, 20 digits>-<generation>.bin` (through a temporary name, then renamed) and
//! records it; a run's file never changes afterwards. The generation is unique to the writer's
//! run of the process: a run written again after a resume (whose contents may differ: rows of one
//! position can come in another order) never takes the name of one written before. [`Runs::get`] answers from the newest run that holds the key,
//! so a later run's entry (a tombstone included: the caller's value says so) hides an earlier
//! one's; [`Runs::get_in`] reads one run, by its number.
//! What [`Runs`] serialises (the runs' numbers, id ranges and block indexes) is everything needed
//! to read the files back: a checkpoint holds it, and the files it names go with the checkpoint
//! ([`crate::checkpoint::CheckpointStore::save_encoded`]). Reads depend only on the files'
//! contents, which depend only on what was written: the core stays deterministic.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Entries per block: what one lookup reads and decodes.
const BLOCK_ENTRIES: usize = 64;

/// One run: its file's number, the keys it holds and where each block begins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Run<K> {
    number: u64,
    /// Its file's name ([`file_name`]).
    name: String,
    min: K,
    max: K,
    entries: u64,
    /// Each block's first key and its offset in the file; the last block ends at `bytes`.
    blocks: Vec<(K, u64)>,
    bytes: u64,
}

/// The runs written so far, oldest first, and the next run's number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Runs<K> {
    runs: Vec<Run<K>>,
    next: u64,
}

impl<K> Default for Runs<K> {
    fn default() -> Self {
        Runs { runs: Vec::new(), next: 0 }
    }
}

/// The file name of run `number` written by `generation`.
pub fn file_name(number: u64, generation: &str) -> String {
    format!("run-{number:020}-{generation}.bin")
}

fn invalid(file: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{file}: {e}"))
}

impl<K: Ord + Copy + Serialize + DeserializeOwned> Runs<K> {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Entries in all runs (an id rewritten by a later run counts in each).
    pub fn entries(&self) -> u64 {
        self.runs.iter().map(|r| r.entries).sum()
    }

    /// Every run's file name and size, oldest first.
    pub fn files(&self) -> Vec<(String, u64)> {
        self.runs.iter().map(|r| (r.name.clone(), r.bytes)).collect()
    }

    /// Whether some run's key range covers `key` (without reading anything).
    pub fn may_hold(&self, key: K) -> bool {
        self.runs.iter().any(|r| r.min <= key && key <= r.max)
    }

    /// The number the next run written will have.
    pub fn next_number(&self) -> u64 {
        self.next
    }

    /// Writes `entries` (sorted by key, each once) as a new run of `generation` under `dir`;
    /// none: no run.
    pub fn write<T: Serialize>(
        &mut self,
        dir: &Path,
        generation: &str,
        entries: &[(K, T)],
    ) -> io::Result<()> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Ok(()) };
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0), "sorted, each key once");
        let number = self.next;
        let name = file_name(number, generation);
        let mut bytes = Vec::new();
        let mut blocks = Vec::with_capacity(entries.len().div_ceil(BLOCK_ENTRIES));
        for block in entries.chunks(BLOCK_ENTRIES) {
            blocks.push((block[0].0, bytes.len() as u64));
            bytes.extend(postcard::to_allocvec(block).map_err(|e| invalid(&name, e))?);
        }
        std::fs::create_dir_all(dir)?;
        let temporary = dir.join(format!("{name}.tmp"));
        let mut file = File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_data()?;
        std::fs::rename(&temporary, dir.join(&name))?;
        self.runs.push(Run {
            number,
            name,
            min: first.0,
            max: last.0,
            entries: entries.len() as u64,
            blocks,
            bytes: bytes.len() as u64,
        });
        self.next += 1;
        Ok(())
    }

    /// The newest entry of `key`, if a run holds one.
    pub fn get<T: DeserializeOwned>(&self, dir: &Path, key: K) -> io::Result<Option<T>> {
        for run in self.runs.iter().rev() {
            if let Some(v) = find(dir, run, key)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The entry of `key` in run `number`, if it holds one.
    pub fn get_in<T: DeserializeOwned>(&self, dir: &Path, number: u64, key: K) -> io::Result<Option<T>> {
        match self.runs.binary_search_by_key(&number, |r| r.number) {
            Ok(i) => find(dir, &self.runs[i], key),
            Err(_) => Ok(None),
        }
    }

    /// Every key's newest entry, by key.
    pub fn read_all<T: DeserializeOwned>(&self, dir: &Path) -> io::Result<BTreeMap<K, T>> {
        let mut all = BTreeMap::new();
        for run in &self.runs {
            for i in 0..run.blocks.len() {
                all.extend(read_block::<K, T>(dir, run, i)?);
            }
        }
        Ok(all)
    }
}

/// The entry of `key` in `run`.
fn find<K: Ord + Copy + DeserializeOwned, T: DeserializeOwned>(
    dir: &Path,
    run: &Run<K>,
    key: K,
) -> io::Result<Option<T>> {
    if key < run.min || run.max < key {
        return Ok(None);
    }
    let i = run.blocks.partition_point(|(first, _)| *first <= key).saturating_sub(1);
    let block: Vec<(K, T)> = read_block(dir, run, i)?;
    Ok(match block.binary_search_by(|(k, _)| k.cmp(&key)) {
        Ok(at) => block.into_iter().nth(at).map(|(_, v)| v),
        Err(_) => None,
    })
}

fn read_block<K: DeserializeOwned, T: DeserializeOwned>(
    dir: &Path,
    run: &Run<K>,
    i: usize,
) -> io::Result<Vec<(K, T)>> {
    let name = &run.name;
    let start = run.blocks[i].1;
    let end = run.blocks.get(i + 1).map_or(run.bytes, |(_, offset)| *offset);
    let mut bytes = vec![0; (end - start) as usize];
    File::open(dir.join(name))
        .and_then(|f| f.read_exact_at(&mut bytes, start))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(name).display())))?;
    postcard::from_bytes(&bytes).map_err(|e| invalid(name, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_run_answers_and_blocks_are_found() {
        let dir = std::env::temp_dir().join(format!("rainbow-cold-runs-{}", std::process::id()));
        let mut runs = Runs::<i64>::default();
        let first: Vec<(i64, String)> = (0..200).map(|i| (i * 2, format!("a{i}"))).collect();
        runs.write(&dir, "g", &first).unwrap();
        runs.write(&dir, "g", &[(10, "b".to_string()), (1_000, "c".to_string())]).unwrap();
        assert_eq!(runs.get::<String>(&dir, 10).unwrap().as_deref(), Some("b"), "the newer run");
        assert_eq!(runs.get::<String>(&dir, 398).unwrap().as_deref(), Some("a199"), "the last block");
        assert_eq!(runs.get::<String>(&dir, 130).unwrap().as_deref(), Some("a65"), "a later block");
        assert_eq!(runs.get::<String>(&dir, 11).unwrap(), None, "not an id of any run");
        assert_eq!(runs.get_in::<String>(&dir, 0, 10).unwrap().as_deref(), Some("a5"), "the older run");
        assert_eq!(runs.get_in::<String>(&dir, 1, 12).unwrap(), None);
        assert_eq!(runs.next_number(), 2);
        assert!(!runs.may_hold(2_000));
        assert_ne!(file_name(1, "g"), file_name(1, "h"), "another generation, another name");
        assert_eq!(runs.entries(), 202);
        let all = runs.read_all::<String>(&dir).unwrap();
        assert_eq!(all.len(), 201);
        assert_eq!(all[&10], "b");
        assert_eq!(
            runs.files().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            [file_name(0, "g"), file_name(1, "g")]
        );
        std::fs::remove_file(dir.join(file_name(1, "g"))).unwrap();
        let e = runs.get::<String>(&dir, 1_000).unwrap_err();
        assert!(e.to_string().contains(&file_name(1, "g")), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
