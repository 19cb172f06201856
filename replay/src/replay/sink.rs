//! The Parquet sink of the replay's engine: the output tables collapsed as ReplacingMergeTree
//! `FINAL` sees them, written as `<out>/<table>/part-NNNNN.parquet` when the input ends, sorted
//! by the table's key, byte-identical for the same input.
//!
//! Contract ([`Sink`]): rows are collapsed in a buffer bounded by `spill_rows`, then spilled as
//! sorted runs ([`super::spill`]); a run is durable before the checkpoint that counts it, and the
//! buffer itself is part of the checkpoint ([`Sink::save`]), so a resumed replay writes the same
//! tables. A fresh start deletes the runs an interrupted attempt left.

use super::spill::{Merged, Output};
use crate::error::ReplayError;
use parquet::arrow::ArrowWriter;
use rainbow_processor::engine::Sink;
use rainbow_runtime::store::Store;
use rainbow_schemas::shape::arrow::{schema_of, BatchBuilder};
use rainbow_schemas::shape::{Outputs, Table, Tables, WarehouseRow};

/// Per table written: (name, rows, files).
pub type Written = Vec<(String, usize, usize)>;

pub struct ParquetSink {
    out: Store,
    rt: tokio::runtime::Handle,
    output: Output,
    spill_rows: usize,
    rows_per_file: usize,
}

impl ParquetSink {
    pub fn new(
        out: Store,
        rt: tokio::runtime::Handle,
        spill_rows: usize,
        rows_per_file: usize,
    ) -> ParquetSink {
        ParquetSink { out, rt, output: Output::default(), spill_rows, rows_per_file }
    }
}

impl Sink for ParquetSink {
    type Error = ReplayError;
    type Summary = Written;

    fn write(&mut self, rows: &mut Outputs) -> Result<(), ReplayError> {
        self.output.absorb(rows);
        self.output.spill_if_full(&self.out, &self.rt, self.spill_rows)
    }

    /// The spilled runs are durable when written; the buffer goes into the checkpoint.
    fn flush(&mut self) -> Result<(), ReplayError> {
        Ok(())
    }

    fn save(&self) -> Result<Vec<u8>, ReplayError> {
        postcard::to_allocvec(&(&self.output.buffer, self.output.runs))
            .map_err(|e| ReplayError::Checkpoint { path: "sink".into(), reason: e.to_string() })
    }

    fn restore(&mut self, state: Option<&[u8]>) -> Result<(), ReplayError> {
        match state {
            Some(bytes) => {
                let (buffer, runs): (Tables, u32) = postcard::from_bytes(bytes)
                    .map_err(|e| ReplayError::Checkpoint { path: "sink".into(), reason: e.to_string() })?;
                self.output = Output { buffer, runs };
            }
            None => {
                Output::clear_runs(&self.out, &self.rt)?;
                self.output = Output::default();
            }
        }
        Ok(())
    }

    /// Writes every table, then deletes the runs.
    fn finish(self) -> Result<Written, ReplayError> {
        let written = write_tables(&self.out, &self.rt, self.output, self.rows_per_file)?;
        Output::clear_runs(&self.out, &self.rt)?;
        Ok(written)
    }
}

/// Writes every table as `<table>/part-NNNNN.parquet` (replacing an earlier run's parts): the
/// merge of the spilled runs and the buffer. The fact table, most of the rows, is written on a
/// thread of its own beside the others.
fn write_tables(
    out: &Store,
    rt: &tokio::runtime::Handle,
    output: Output,
    rows_per_file: usize,
) -> Result<Written, ReplayError> {
    let Output { mut buffer, runs } = output;
    let fact_sales = std::mem::take(&mut buffer.fact_sales);
    std::thread::scope(|scope| {
        let facts = scope.spawn(move || write_table(out, rt, "fact_sales", runs, fact_sales, rows_per_file));
        let mut written = Vec::new();
        macro_rules! table {
            (fact_sales, $row:ty) => {
                written.push(("fact_sales".to_string(), 0, 0));
            };
            ($table:ident, $row:ty) => {
                written.push(write_table(
                    out,
                    rt,
                    stringify!($table),
                    runs,
                    std::mem::take(&mut buffer.$table),
                    rows_per_file,
                )?);
            };
        }
        rainbow_schemas::for_each_table!(table);
        let facts = facts.join().map_err(|_| ReplayError::Writer("fact_sales"))??;
        let slot = written.iter_mut().find(|w| w.0 == "fact_sales").expect("listed above");
        *slot = facts;
        Ok(written)
    })
}

/// Writes one table from its runs and buffer, `rows_per_file` rows per part (at least one part).
fn write_table<R: WarehouseRow>(
    out: &Store,
    rt: &tokio::runtime::Handle,
    name: &str,
    runs: u32,
    buffer: Table<R>,
    rows_per_file: usize,
) -> Result<(String, usize, usize), ReplayError> {
    for (path, _) in rt.block_on(out.list(name))? {
        rt.block_on(out.delete(&path))?;
    }
    let schema = schema_of::<R>();
    let mut rows = Merged::new(out, rt, name, runs, buffer)?;
    let mut next = rows.next_row()?;
    let (mut part, mut total) = (0usize, 0usize);
    loop {
        let mut b = BatchBuilder::new(schema.clone());
        let mut n = 0;
        while n < rows_per_file {
            let Some(row) = next.take() else { break };
            b.push(&row)?;
            n += 1;
            next = rows.next_row()?;
        }
        let batch = b.finish()?;
        let mut bytes = Vec::new();
        let mut w = ArrowWriter::try_new(
            &mut bytes,
            schema.clone(),
            Some(rainbow_archive::master::writer_properties()),
        )?;
        w.write(&batch)?;
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
