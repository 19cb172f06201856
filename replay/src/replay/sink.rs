//! The Parquet sink of the replay's engine (one per shard): the output tables collapsed as
//! ReplacingMergeTree `FINAL` sees them; and the writer of the tables, which combines the shards'
//! outputs ([`super::shards`]) into `<out>/<table>/part-NNNNN.parquet`, sorted by the table's key,
//! byte-identical for the same input.
//!
//! Contract ([`Sink`]): rows are collapsed in a buffer bounded by `spill_rows`, then spilled as
//! sorted runs ([`super::spill`]); a run is durable before the checkpoint that counts it, and the
//! buffer itself is part of the checkpoint ([`Sink::save`]), so a resumed replay writes the same
//! tables. A fresh start deletes the runs an interrupted attempt left. At the end the sink hands
//! its output over (`persist`: spilled whole, for a combine by another process).
//!
//! Threads: the collapse (absorbing rows, spilling runs) runs on a thread of its own, fed in
//! order through a bounded channel (and hands each emptied batch back, for the engine's thread to
//! fill again), so the engine's thread only applies events; a checkpoint's
//! [`Sink::save`] waits until every row sent before it is absorbed.

use super::shards::{Combine, Combined};
use super::spill::{Merged, Output};
use crate::error::ReplayError;
use parquet::arrow::ArrowWriter;
use rainbow_processor::core::Core;
use rainbow_processor::engine::Sink;
use rainbow_runtime::store::Store;
use rainbow_schemas::shape::arrow::{schema_of, BatchBuilder};
use rainbow_schemas::shape::{Kind, Outputs, Table, Tables, WarehouseRow};
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

/// Per table written: (name, rows, files).
pub type Written = Vec<(String, usize, usize)>;

pub struct ShardSink {
    out: Store,
    rt: tokio::runtime::Handle,
    persist: bool,
    /// The collapse, before its thread starts (at the end of [`Sink::restore`]).
    idle: Option<Collapse>,
    /// To the collapse thread, and the thread.
    tx: Option<SyncSender<ToCollapse>>,
    /// Batches the collapse thread has emptied, sent back with their vectors' capacity so that
    /// the engine's next batches reuse that memory (fresh vectors grew and faulted their pages in
    /// for every batch).
    emptied: Option<Receiver<Box<Outputs>>>,
    thread: Option<JoinHandle<Result<Output, ReplayError>>>,
    /// Keep the aggregate groups' partial sums at the end ([`Output::aggregates`]).
    partials: bool,
    aggregates: Option<Outputs>,
}

/// What the engine's thread sends the collapse thread, in order.
enum ToCollapse {
    Rows(Box<Outputs>),
    /// The state for a checkpoint, once every row sent before is absorbed (and spilled runs are
    /// durable).
    Save(SyncSender<Result<Vec<u8>, ReplayError>>),
}

/// The collapse of a shard's rows into its output, on a thread of its own beside the engine's.
struct Collapse {
    out: Store,
    rt: tokio::runtime::Handle,
    output: Output,
    spill_rows: usize,
    dimensions: bool,
}

impl Collapse {
    fn absorb(&mut self, rows: &mut Outputs) -> Result<(), ReplayError> {
        if !self.dimensions {
            macro_rules! drop_dimension {
                ($table:ident, $row:ty) => {
                    if matches!(<$row as WarehouseRow>::TABLE.kind, Kind::Dimension { .. }) {
                        rows.$table.clear();
                    }
                };
            }
            rainbow_schemas::for_each_table!(drop_dimension);
        }
        self.output.absorb(rows);
        self.output.spill_if_full(&self.out, &self.rt, self.spill_rows)
    }

    fn save(&self) -> Result<Vec<u8>, ReplayError> {
        postcard::to_allocvec(&(&self.output.buffer, self.output.runs))
            .map_err(|e| ReplayError::Checkpoint { path: "sink".into(), reason: e.to_string() })
    }

    fn run(mut self, rx: Receiver<ToCollapse>, emptied: Sender<Box<Outputs>>) -> Result<Output, ReplayError> {
        for message in rx {
            match message {
                ToCollapse::Rows(mut rows) => {
                    self.absorb(&mut rows)?;
                    // The engine may have finished: then the batch is dropped here.
                    let _ = emptied.send(rows);
                }
                ToCollapse::Save(reply) => {
                    let _ = reply.send(self.save());
                }
            }
        }
        Ok(self.output)
    }
}

/// Rows batches waiting for the collapse thread.
const COLLAPSE_AHEAD: usize = 4;

impl ShardSink {
    /// A sink whose runs go to `dir` of `out`; `persist`: spill everything at the end;
    /// `dimensions`: keep the SCD2 dimensions' rows (every shard builds the same: one keeps
    /// them); `partials`: keep every aggregate group's partial sums at the end.
    pub fn new(
        out: Store,
        rt: tokio::runtime::Handle,
        dir: String,
        spill_rows: usize,
        (persist, dimensions, partials): (bool, bool, bool),
    ) -> ShardSink {
        let idle =
            Collapse { out: out.clone(), rt: rt.clone(), output: Output::new(dir), spill_rows, dimensions };
        ShardSink {
            out,
            rt,
            persist,
            idle: Some(idle),
            tx: None,
            emptied: None,
            thread: None,
            partials,
            aggregates: None,
        }
    }

    /// Starts the collapse thread (once).
    fn start(&mut self) -> Result<(), ReplayError> {
        let Some(collapse) = self.idle.take() else { return Ok(()) };
        let (tx, rx) = sync_channel(COLLAPSE_AHEAD);
        let (emptied_tx, emptied) = channel();
        let thread = std::thread::Builder::new()
            .name("replay-collapse".into())
            .spawn(move || collapse.run(rx, emptied_tx))
            .map_err(|e| ReplayError::Spill { path: "collapse thread".into(), reason: e.to_string() })?;
        self.tx = Some(tx);
        self.emptied = Some(emptied);
        self.thread = Some(thread);
        Ok(())
    }

    /// The collapse thread's end: its output, or why it stopped.
    fn join(&mut self) -> Result<Output, ReplayError> {
        self.tx = None;
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| ReplayError::Writer("replay collapse"))?,
            None => Err(ReplayError::Writer("replay collapse")),
        }
    }
}

impl Sink for ShardSink {
    type Error = ReplayError;
    type Summary = Output;

    fn write(&mut self, rows: &mut Outputs) -> Result<(), ReplayError> {
        self.start()?;
        // An emptied batch back from the collapse thread, if one is there; its vectors are empty.
        let mut batch = self.emptied.as_ref().and_then(|e| e.try_recv().ok()).unwrap_or_default();
        std::mem::swap(&mut *batch, rows);
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(ToCollapse::Rows(batch)).is_ok());
        if !sent {
            // The thread stopped: its error.
            self.join()?;
        }
        Ok(())
    }

    /// The spilled runs are durable when written; the buffer goes into the checkpoint.
    fn flush(&mut self) -> Result<(), ReplayError> {
        Ok(())
    }

    fn save(&self) -> Result<Vec<u8>, ReplayError> {
        if let Some(idle) = &self.idle {
            return idle.save();
        }
        let (reply, answer) = sync_channel(1);
        let stopped = || ReplayError::Writer("replay collapse");
        self.tx.as_ref().ok_or_else(stopped)?.send(ToCollapse::Save(reply)).map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }

    fn restore(&mut self, state: Option<&[u8]>) -> Result<(), ReplayError> {
        let collapse = self.idle.as_mut().ok_or(ReplayError::Writer("replay collapse"))?;
        match state {
            Some(bytes) => {
                let (buffer, runs): (Tables, u32) = postcard::from_bytes(bytes)
                    .map_err(|e| ReplayError::Checkpoint { path: "sink".into(), reason: e.to_string() })?;
                collapse.output.buffer = buffer;
                collapse.output.runs = runs;
            }
            None => {
                collapse.output.clear_runs(&self.out, &self.rt)?;
                collapse.output = Output::new(std::mem::take(&mut collapse.output.dir));
            }
        }
        self.start()
    }

    fn at_end(&mut self, core: &Core) -> Result<(), ReplayError> {
        if self.partials {
            let mut rows = Outputs::default();
            core.aggregate_state(&mut rows);
            self.aggregates = Some(rows);
        }
        Ok(())
    }

    /// Hands the output over (spilled whole when `persist`).
    fn finish(mut self) -> Result<Output, ReplayError> {
        self.start()?;
        let mut output = self.join()?;
        output.aggregates = self.aggregates.take();
        if self.persist {
            output.spill_all(&self.out, &self.rt)?;
        }
        Ok(output)
    }
}

/// Writes every table as `<table>/part-NNNNN.parquet` (replacing an earlier run's parts): the
/// shards' outputs (each the merge of its spilled runs and its buffer) combined. The fact table,
/// most of the rows, is written on a thread of its own beside the others.
pub fn write_tables(
    out: &Store,
    rt: &tokio::runtime::Handle,
    mut outputs: Vec<Output>,
    rows_per_file: usize,
) -> Result<Written, ReplayError> {
    let fact_sales: Vec<_> = outputs
        .iter_mut()
        .map(|o| (o.dir.clone(), o.runs, std::mem::take(&mut o.buffer.fact_sales)))
        .collect();
    std::thread::scope(|scope| {
        let facts = scope.spawn(move || write_table(out, rt, "fact_sales", fact_sales, None, rows_per_file));
        let mut written = Vec::new();
        macro_rules! table {
            (fact_sales, $row:ty) => {
                written.push(("fact_sales".to_string(), 0, 0));
            };
            ($table:ident, $row:ty) => {
                let shards = outputs
                    .iter_mut()
                    .map(|o| (o.dir.clone(), o.runs, std::mem::take(&mut o.buffer.$table)))
                    .collect();
                let partials = (<$row as WarehouseRow>::TABLE.kind == Kind::Aggregate)
                    .then(|| partials(&mut outputs, |o| std::mem::take(&mut o.$table)))
                    .flatten();
                written.push(write_table(out, rt, stringify!($table), shards, partials, rows_per_file)?);
            };
        }
        rainbow_schemas::for_each_table!(table);
        let facts = facts.join().map_err(|_| ReplayError::Writer("fact_sales"))??;
        let slot = written.iter_mut().find(|w| w.0 == "fact_sales").expect("listed above");
        *slot = facts;
        Ok(written)
    })
}

/// Every shard's partial sums of an aggregate table at the end, combined per key (`None` unless
/// the shards kept them: a sharded day range).
fn partials<R: Combine>(
    outputs: &mut [Output],
    take: impl Fn(&mut Outputs) -> Vec<R>,
) -> Option<BTreeMap<R::Key, R>> {
    let mut combined: Option<BTreeMap<R::Key, R>> = None;
    for o in outputs.iter_mut() {
        let Some(rows) = o.aggregates.as_mut() else { continue };
        let all = combined.get_or_insert_with(BTreeMap::new);
        for row in take(rows) {
            match all.entry(row.key()) {
                Entry::Vacant(v) => {
                    v.insert(row);
                }
                Entry::Occupied(mut c) => c.get_mut().combine(row),
            }
        }
    }
    combined
}

/// Rows encoded at a time when a table is written: what its writing holds in Arrow arrays,
/// besides the part's encoded bytes.
const WRITE_BATCH_ROWS: usize = 8192;

/// Writes one table from every shard's (runs folder, runs, buffer), `rows_per_file` rows per part
/// (at least one part). With `partials` (an aggregate table of a sharded day range), a key's row
/// is the shards' partial sums combined: a shard whose orders did not change the group in the
/// selected days has no row of it, but its part of the total.
fn write_table<R: Combine>(
    out: &Store,
    rt: &tokio::runtime::Handle,
    name: &str,
    shards: Vec<(String, u32, Table<R>)>,
    mut partials: Option<BTreeMap<R::Key, R>>,
    rows_per_file: usize,
) -> Result<(String, usize, usize), ReplayError> {
    for (path, _) in rt.block_on(out.list(name))? {
        rt.block_on(out.delete(&path))?;
    }
    let schema = schema_of::<R>();
    let merged = shards
        .into_iter()
        .map(|(dir, runs, buffer)| Merged::new(out, rt, &dir, name, runs, buffer))
        .collect::<Result<_, _>>()?;
    let mut rows = Combined::new(merged)?;
    let mut next = rows.next_row()?;
    let (mut part, mut total) = (0usize, 0usize);
    loop {
        let mut bytes = Vec::new();
        let mut w = ArrowWriter::try_new(
            &mut bytes,
            schema.clone(),
            Some(rainbow_archive::master::writer_properties()),
        )?;
        // The part's rows go to the writer `WRITE_BATCH_ROWS` at a time (it encodes them into
        // its row group as they come); a batch is empty only for an empty table's one part.
        let mut n = 0;
        loop {
            let mut b = BatchBuilder::new(schema.clone());
            while b.len() < WRITE_BATCH_ROWS && n < rows_per_file {
                let Some(mut row) = next.take() else { break };
                if let Some(all) = partials.as_mut() {
                    row = all.remove(&row.key()).unwrap_or(row);
                }
                b.push(&row)?;
                n += 1;
                next = rows.next_row()?;
            }
            w.write(&b.finish()?)?;
            if n == rows_per_file || next.is_none() {
                break;
            }
        }
        w.close()?;
        rt.block_on(out.put(&format!("{name}/part-{part:05}.parquet"), bytes))?;
        part += 1;
        total += n;
        if next.is_none() {
            break;
        }
    }
    Ok((name.to_string(), total, part))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rainbow_schemas::shape::{FactSale, Versioned};

    #[test]
    fn a_table_is_written_in_parts_whose_bytes_do_not_depend_on_the_writes_batches() {
        let dir = std::env::temp_dir().join(format!("rb-replay-parts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Store::open(dir.to_str().expect("utf-8")).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let row = |i: i64| FactSale {
            order_transaction: i,
            product_id: i % 7,
            version: 1,
            sales_quantity: i % 5,
            ..Default::default()
        };
        let rows: Table<FactSale> = Table((0..20_000).map(|i| (row(i).key(), row(i))).collect());
        let shards = vec![("runs".to_string(), 0, rows.clone())];
        let written = write_table(&out, rt.handle(), "fact_sales", shards, None, 12_000).unwrap();
        assert_eq!(written, ("fact_sales".to_string(), 20_000, 2));

        // Each part as one batch of its rows gives the same bytes as the part written
        // `WRITE_BATCH_ROWS` rows at a time.
        let all: Vec<FactSale> = rows.rows().cloned().collect();
        for (part, chunk) in all.chunks(12_000).enumerate() {
            let schema = schema_of::<FactSale>();
            let mut b = BatchBuilder::new(schema.clone());
            for r in chunk {
                b.push(r).unwrap();
            }
            let mut whole = Vec::new();
            let props = Some(rainbow_archive::master::writer_properties());
            let mut w = ArrowWriter::try_new(&mut whole, schema, props).unwrap();
            w.write(&b.finish().unwrap()).unwrap();
            w.close().unwrap();
            let path = format!("fact_sales/part-{part:05}.parquet");
            assert_eq!(rt.block_on(out.get(&path)).unwrap().as_ref(), &whole[..], "{path}");
        }
        let read = super::super::read_table(&out, rt.handle(), "fact_sales").unwrap().unwrap();
        assert_eq!(read.num_rows(), 20_000);

        // An empty table: one part, no rows.
        let empty = vec![("runs".to_string(), 0, Table::<FactSale>::default())];
        let written = write_table(&out, rt.handle(), "fact_sales", empty, None, 12_000).unwrap();
        assert_eq!(written, ("fact_sales".to_string(), 0, 1));
        let read = super::super::read_table(&out, rt.handle(), "fact_sales").unwrap().unwrap();
        assert_eq!(read.num_rows(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
