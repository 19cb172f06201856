//! The replay sharded by fact partition, and the shards' outputs combined into one set of tables.
//!
//! Contract: shard `s` of `S` reads every partition of the dimension topics and the partitions
//! `p % S == s` of the fact topics (orders, orderdetails): the streaming scale-out's split
//! ([`Table::read_by`](rainbow_processor::event::Table::read_by)), with an engine and a core of
//! its own. The CDC routes an order and its lines to the same partition number
//! (`cdc.partition_by`, on by default), so each order's facts are built by exactly one shard;
//! every shard builds the same dimension rows; and each shard's aggregate rows are the partial
//! sums of its orders. Shard 0 alone keeps the SCD2 dimensions' rows (the others drop theirs,
//! equal by construction). Combining, per table in key order, the rows of one key (at most one per
//! shard): dimension and fact rows keep the highest version (rows of equal key and version are
//! equal: the lowest shard's is kept); aggregate rows add their measures and take the version and
//! labels of the highest version. Every shard stamps its aggregate rows partition 0, as a single
//! core does, so the combined tables are the single-shard run's, byte for byte (tested).
//!
//! A day range (`--from/--to`) outputs the aggregate groups its days changed, with their totals
//! at the end: a shard whose orders did not change such a group in the range has no row of it but
//! holds part of its total. So each shard of a range also keeps every group's partial sums at the
//! end (`Output::aggregates`), and an aggregate table's combined row of a
//! key is those partial sums combined (consecutive days listed select as a range). A list of days
//! with gaps is not sharded: after a gap, a
//! group's row is its total at the end of the last selected day that changed it.
//!
//! Layout under the output: `_replay/shards/<s>/checkpoints/` (the shard engine's checkpoints),
//! `_replay/shards/<s>/runs/` (its spilled output, [`super::spill`]) and, for a shard run by a
//! process of its own (`replay.processes` > 1), `_replay/shards/<s>/done.json` ([`Done`]) once
//! its output is complete; `rainbow replay --combine` then merges the runs of every shard. The
//! folder is removed once the tables are written.

use super::rejections::Rejection;
use super::spill::Merged;
use crate::error::ReplayError;
use rainbow_runtime::store::Store;
use rainbow_schemas::shape::*;
use serde::{Deserialize, Serialize};

/// Where the shards' state and outputs are, relative to the output.
pub const SHARDS: &str = "_replay/shards";

/// Shard `shard`'s folder.
pub fn dir(shard: usize) -> String {
    format!("{SHARDS}/{shard:04}")
}

fn done_path(shard: usize) -> String {
    format!("{}/done.json", dir(shard))
}

/// How a replay is split: `shards` in all, of which this process runs `mine`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub shards: usize,
    pub mine: Vec<usize>,
}

impl Plan {
    /// The shards of process `process` of `processes` (`replay.process`, `replay.processes`):
    /// `s % processes == process`.
    pub fn new(shards: usize, processes: usize, process: usize) -> Plan {
        Plan { shards, mine: (0..shards).filter(|s| s % processes == process).collect() }
    }
}

/// What one shard did (summed over the shards in [`super::ReplaySummary`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSummary {
    pub shard: usize,
    pub records_read: u64,
    pub events_applied: u64,
    pub events_in_selection: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub records_from_envelopes: u64,
    pub resumed_at: Option<u64>,
}

/// A shard's complete output, as a process of its own leaves it for `--combine`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub shards: usize,
    /// The replay's (archive, days, topics): a combine of another replay's shards is refused.
    pub fingerprint: String,
    /// The replay's data files and the records in them.
    pub files: (usize, u64),
    /// Runs spilled (the last holds what the shard's buffer held at its end).
    pub runs: u32,
    pub summary: ShardSummary,
    pub rejections: Vec<Rejection>,
    /// Every aggregate group's partial sums at the end (a day range).
    #[serde(default)]
    pub aggregates: Option<Outputs>,
}

impl Done {
    pub fn write(&self, out: &Store, rt: &tokio::runtime::Handle) -> Result<(), ReplayError> {
        let json = serde_json::to_vec_pretty(self).expect("serialises");
        rt.block_on(out.put(&done_path(self.summary.shard), json))?;
        Ok(())
    }

    /// Removes shard `shard`'s marker (a shard that starts again).
    pub fn remove(out: &Store, rt: &tokio::runtime::Handle, shard: usize) -> Result<(), ReplayError> {
        rt.block_on(out.delete(&done_path(shard)))?;
        Ok(())
    }

    /// Shard `shard`'s marker, if its output is complete.
    pub fn read(out: &Store, rt: &tokio::runtime::Handle, shard: usize) -> Result<Option<Done>, ReplayError> {
        let path = done_path(shard);
        match rt.block_on(out.get_opt(&path))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ReplayError::Spill { path, reason: e.to_string() }),
        }
    }
}

/// Removes every shard's folder (the tables are written).
pub fn clear(out: &Store, rt: &tokio::runtime::Handle) -> Result<(), ReplayError> {
    for (path, _) in rt.block_on(out.list(SHARDS))? {
        rt.block_on(out.delete(&path))?;
    }
    Ok(())
}

/// How the rows of one key from several shards become one (see the module documentation).
pub trait Combine: WarehouseRow {
    fn combine(&mut self, other: Self);
}

macro_rules! keep_highest_version {
    ($($row:ty),*) => {$(
        impl Combine for $row {
            fn combine(&mut self, other: Self) {
                if other.version() > self.version() {
                    *self = other;
                }
            }
        }
    )*};
}
keep_highest_version!(DimCustomer, DimProduct, DimSeller, DimPromotion, DimPayment, DimDate, FactSale);

macro_rules! add_partials {
    ($($row:ty { sums: [$($sum:ident),*], labels: [$($label:ident),*] })*) => {$(
        impl Combine for $row {
            fn combine(&mut self, other: Self) {
                $( self.$sum += other.$sum; )*
                if other.version > self.version {
                    self.version = other.version;
                    $( self.$label = other.$label; )*
                }
            }
        }
    )*};
}
add_partials! {
    AggTotalSales { sums: [total_sales_quantity, total_sales_amount, total_discount_amount], labels: [] }
    AggSalesByDayOfWeek {
        sums: [total_sales_quantity, total_sales_amount, total_discount_amount], labels: []
    }
    AggTopSeller {
        sums: [total_sales_quantity, total_sales_amount, total_discount_amount], labels: [seller_name]
    }
    AggProductProfit {
        sums: [total_sales_quantity, total_sales_amount, total_discount_amount],
        labels: [product_name, category]
    }
    AggPaymentMethod { sums: [order_count, total_sales_amount], labels: [payment_method] }
    AggCustomerRanking {
        sums: [order_count, total_sales_quantity, total_sales_amount], labels: [customer_name]
    }
}

/// A table's combined rows in key order: the merge of every shard's [`Merged`] rows.
pub struct Combined<'a, R: Versioned> {
    shards: Vec<Merged<'a, R>>,
    heads: Vec<Option<R>>,
}

impl<'a, R: Combine> Combined<'a, R> {
    pub fn new(mut shards: Vec<Merged<'a, R>>) -> Result<Combined<'a, R>, ReplayError> {
        let heads = shards.iter_mut().map(Merged::next_row).collect::<Result<_, _>>()?;
        Ok(Combined { shards, heads })
    }

    /// The next row: the smallest key among the shards', its rows combined in shard order.
    pub fn next_row(&mut self) -> Result<Option<R>, ReplayError> {
        if let [only] = self.shards.as_mut_slice() {
            return match self.heads[0].take() {
                Some(row) => {
                    self.heads[0] = only.next_row()?;
                    Ok(Some(row))
                }
                None => Ok(None),
            };
        }
        let Some(key) = self.heads.iter().flatten().map(Versioned::key).min() else { return Ok(None) };
        let mut combined: Option<R> = None;
        for i in 0..self.heads.len() {
            if self.heads[i].as_ref().is_some_and(|r| r.key() == key) {
                let row = self.heads[i].take().expect("checked above");
                self.heads[i] = self.shards[i].next_row()?;
                match &mut combined {
                    None => combined = Some(row),
                    Some(c) => c.combine(row),
                }
            }
        }
        Ok(combined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rainbow_schemas::money::MoneySum;

    #[test]
    fn aggregates_add_and_take_the_latest_labels_other_rows_keep_the_latest() {
        let seller = |name: &str, q, amount, v| AggTopSeller {
            partition: 0,
            seller_id: 7,
            seller_name: name.into(),
            total_sales_quantity: q,
            total_sales_amount: MoneySum(amount),
            total_discount_amount: MoneySum(1),
            version: v,
        };
        let mut a = seller("Old", 2, 100, 9);
        a.combine(seller("New", 3, 50, 12));
        assert_eq!(a, AggTopSeller { total_discount_amount: MoneySum(2), ..seller("New", 5, 150, 12) });
        let mut b = seller("New", 3, 50, 12);
        b.combine(seller("Old", 2, 100, 9));
        assert_eq!(b, a, "the order of the shards does not matter");

        let fact = |v, q| FactSale {
            order_transaction: 1,
            product_id: 2,
            version: v,
            sales_quantity: q,
            ..Default::default()
        };
        let mut f = fact(5, 1);
        f.combine(fact(4, 9));
        assert_eq!(f, fact(5, 1));
        f.combine(fact(6, 2));
        assert_eq!(f, fact(6, 2));
    }

    #[test]
    fn processes_take_every_shard_once() {
        let mut all: Vec<usize> = (0..3).flat_map(|p| Plan::new(7, 3, p).mine).collect();
        all.sort();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
        assert_eq!(Plan::new(4, 1, 0).mine, [0, 1, 2, 3]);
    }
}
