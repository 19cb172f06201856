//! The replay's collapsed output with a bounded buffer: rows are collapsed in memory (per key the
//! row with the highest version, the last emitted among equal versions, as [`Tables::absorb`]
//! does) until the buffer holds `spill_rows` rows; then every table's buffer is written to the
//! output store as a *run*, in key order, and the buffer starts empty. The tables are finally
//! the merge of all runs and the buffer: per key the row of the highest version, and among equal
//! versions the row of the latest run (the buffer counts as the latest). That is exactly what
//! absorbing every row into one table would give, because a run holds rows emitted after every
//! earlier run's.
//!
//! Layout: `<dir>/<table>/run-<5 digits>/chunk-<5 digits>.bin` (`dir` is the shard's, see
//! [`super::shards`]), each chunk a postcard `Vec` of at most [`CHUNK_ROWS`] rows. Runs are numbered from 0; a run is complete before the
//! checkpoint that counts it is written, and writing run N first deletes whatever a run N of an
//! interrupted attempt left. Memory while merging: one chunk per run.

use crate::error::ReplayError;
use rainbow_runtime::store::Store;
use rainbow_schemas::shape::{Outputs, Table, Tables, Versioned};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::VecDeque;

/// Rows per chunk object of a run: the merge holds one decoded chunk per run of the table it
/// writes, so this bounds its memory as runs add up (65,536 rows kept a smaller
/// `replay.spill_rows` from lowering the replay's peak: its more runs took more in the merge).
pub const CHUNK_ROWS: usize = 8_192;

/// The output of a replay (of one shard): the buffer, the number of runs spilled so far and the
/// folder of the output store they are in.
#[derive(Debug)]
pub struct Output {
    pub buffer: Tables,
    pub runs: u32,
    pub dir: String,
    /// Every aggregate group's partial sums at the end, for a sharded day range (see
    /// [`super::shards`]).
    pub aggregates: Option<Outputs>,
}

fn run_dir(dir: &str, table: &str, run: u32) -> String {
    format!("{dir}/{table}/run-{run:05}")
}

impl Output {
    /// An empty output whose runs go to `dir`.
    pub fn new(dir: String) -> Output {
        Output { buffer: Tables::default(), runs: 0, dir, aggregates: None }
    }

    /// Takes in a batch of outputs (emptying it).
    pub fn absorb(&mut self, out: &mut Outputs) {
        self.buffer.absorb(out);
    }

    /// Spills the buffer as the next run when it holds at least `spill_rows` rows.
    pub fn spill_if_full(
        &mut self,
        store: &Store,
        rt: &tokio::runtime::Handle,
        spill_rows: usize,
    ) -> Result<(), ReplayError> {
        if self.buffer.rows_total() < spill_rows {
            return Ok(());
        }
        let run = self.runs;
        macro_rules! spill {
            ($table:ident, $row:ty) => {
                write_run(store, rt, &run_dir(&self.dir, stringify!($table), run), &self.buffer.$table)?;
            };
        }
        rainbow_schemas::for_each_table!(spill);
        tracing::debug!(run, rows = self.buffer.rows_total(), "replay output spilled");
        self.buffer = Tables::default();
        self.runs += 1;
        Ok(())
    }

    /// Spills the buffer as the last run, whatever its size (a shard's output that another
    /// process combines).
    pub fn spill_all(&mut self, store: &Store, rt: &tokio::runtime::Handle) -> Result<(), ReplayError> {
        self.spill_if_full(store, rt, 0)
    }

    /// Removes every run (a fresh start, or the output is complete).
    pub fn clear_runs(&self, store: &Store, rt: &tokio::runtime::Handle) -> Result<(), ReplayError> {
        for (path, _) in rt.block_on(store.list(&self.dir))? {
            rt.block_on(store.delete(&path))?;
        }
        Ok(())
    }
}

fn write_run<R: Versioned + Serialize>(
    store: &Store,
    rt: &tokio::runtime::Handle,
    dir: &str,
    rows: &Table<R>,
) -> Result<(), ReplayError> {
    let dir = dir.to_string();
    for (path, _) in rt.block_on(store.list(&dir))? {
        rt.block_on(store.delete(&path))?;
    }
    let rows: Vec<&R> = rows.rows().collect();
    for (i, chunk) in rows.chunks(CHUNK_ROWS).enumerate() {
        // Sized for the rows up front (their in-memory size bounds most rows' encoding): grown
        // from empty, the buffer was copied into a larger one a dozen times per chunk.
        let bytes = postcard::to_extend(chunk, Vec::with_capacity(chunk.len() * std::mem::size_of::<R>()))
            .map_err(|e| ReplayError::Spill { path: dir.clone(), reason: e.to_string() })?;
        rt.block_on(store.put(&format!("{dir}/chunk-{i:05}.bin"), bytes))?;
    }
    Ok(())
}

/// One run of a table, read chunk by chunk, in key order.
struct RunReader<'a, R> {
    store: &'a Store,
    rt: &'a tokio::runtime::Handle,
    dir: String,
    next_chunk: usize,
    rows: VecDeque<R>,
    done: bool,
}

impl<R: DeserializeOwned> RunReader<'_, R> {
    fn next(&mut self) -> Result<Option<R>, ReplayError> {
        while self.rows.is_empty() && !self.done {
            let path = format!("{}/chunk-{:05}.bin", self.dir, self.next_chunk);
            match self.rt.block_on(self.store.get_opt(&path))? {
                None => self.done = true,
                Some(bytes) => {
                    let rows: Vec<R> = postcard::from_bytes(&bytes)
                        .map_err(|e| ReplayError::Spill { path, reason: e.to_string() })?;
                    self.rows = rows.into();
                    self.next_chunk += 1;
                }
            }
        }
        Ok(self.rows.pop_front())
    }
}

/// A table's final rows in key order: runs `0..runs` merged with the buffer `last`.
pub struct Merged<'a, R: Versioned> {
    runs: Vec<RunReader<'a, R>>,
    /// The head row of every source (the runs, then the buffer).
    heads: Vec<Option<R>>,
    last: std::collections::btree_map::IntoIter<R::Key, R>,
}

impl<'a, R: Versioned + DeserializeOwned> Merged<'a, R> {
    pub fn new(
        store: &'a Store,
        rt: &'a tokio::runtime::Handle,
        dir: &str,
        table: &str,
        runs: u32,
        last: Table<R>,
    ) -> Result<Merged<'a, R>, ReplayError> {
        let mut m = Merged {
            runs: (0..runs)
                .map(|run| RunReader {
                    store,
                    rt,
                    dir: run_dir(dir, table, run),
                    next_chunk: 0,
                    rows: VecDeque::new(),
                    done: false,
                })
                .collect(),
            heads: Vec::new(),
            last: last.0.into_iter(),
        };
        for i in 0..=m.runs.len() {
            let head = m.pull(i)?;
            m.heads.push(head);
        }
        Ok(m)
    }

    fn pull(&mut self, source: usize) -> Result<Option<R>, ReplayError> {
        match self.runs.get_mut(source) {
            Some(run) => run.next(),
            None => Ok(self.last.next().map(|(_, r)| r)),
        }
    }

    /// The next row: the smallest key among the heads; of the sources holding it, the highest
    /// version, the latest source among equals.
    pub fn next_row(&mut self) -> Result<Option<R>, ReplayError> {
        let Some(key) = self.heads.iter().flatten().map(Versioned::key).min() else { return Ok(None) };
        let mut winner: Option<R> = None;
        for i in 0..self.heads.len() {
            if self.heads[i].as_ref().is_some_and(|r| r.key() == key) {
                let row = self.heads[i].take().expect("checked above");
                self.heads[i] = self.pull(i)?;
                if winner.as_ref().is_none_or(|w| w.version() <= row.version()) {
                    winner = Some(row);
                }
            }
        }
        Ok(winner)
    }
}
