//! The processor core: a pure, deterministic state machine from change events to warehouse rows.
//!
//! Contract:
//! * **Input order.** Events arrive in source commit order: by [`Position`] `(commit, change,
//!   table)`, non-decreasing. Events with equal positions (rows of one multi-row write, or of one
//!   snapshot table) may come in any order among themselves: they touch different keys, and the
//!   outputs do not depend on their order. [`crate::merge::Merger`] produces such a sequence from
//!   any interleaving of topics and partitions.
//! * **Idempotence.** An exact duplicate of the event just applied, or of one in the same
//!   position group, changes nothing (inserts of existing rows are upserts; updates compare with
//!   the current state, not with `before`). Older duplicates are dropped by the merger.
//! * **Determinism.** No clock, no randomness, no I/O but the runs of orders and versions it
//!   wrote itself ("Memory"); maps whose order reaches the output are ordered. The same input
//!   sequence gives the same outputs, byte for byte.
//! * **Versions.** Every output row carries `version` = the commit LSN of the event that produced
//!   it (snapshot rows: the snapshot's consistent point), so a later state always has a higher or
//!   equal version. Rows with equal key and equal version are equal, or the later one (in
//!   emission order) is the one to keep: the sink and the replay keep the last.
//! * **Aggregates** are emitted only at transaction boundaries ("sealed"): at the first event of a
//!   new transaction after [`Core::request_seal`], or when the caller knows a transaction is
//!   complete ([`Core::seal_before`]). A partial row per group and `partition`, version = the
//!   commit LSN of the last transaction that changed the group, so the content of an aggregate row
//!   is a function of its key and version alone, whenever it is emitted.
//! * **Memory** is bounded by the number of live keys: dimension versions, orders, order lines
//!   and aggregate groups. Nothing is kept per event. With [`ColdSettings`], orders and their
//!   lines beyond `hot_orders` go to files ([`cold`]): once more than `hot_orders` orders are in
//!   memory, those inserted first (by position) until half that number is left are written as
//!   one run, and an event of such an order reads it back first (runs whose id range does not
//!   cover the order's id are not read: new orders of increasing ids read nothing). Then the
//!   dimension versions that no order left in memory joins (opened before the oldest one's
//!   insertion, but each member's last such) go to a run too, one entry per member linked to its
//!   previous one, and a fact of an older order reads them back. Where they are is
//!   not output: the rows are the same byte for byte. A snapshot's reconciliation of the order
//!   tables reads every order back (it lists every key anyway). A file that cannot be read or
//!   written stops the caller ([`Core::failure`]).
//!
//! SCD Type 2: a change to a tracked attribute closes the current version (`valid_to` = the
//! event's commit time, `is_current` = 0) and opens a new one; an update that changes no tracked
//! attribute opens nothing; a delete closes the version. `dim_products` denormalises the category
//! and brand names, so renaming either versions every product that carries it. Surrogate keys are
//! a hash of (dimension, natural id, position of the opening event).
//!
//! Snapshots reconcile: a snapshot row is an upsert like any other (an unchanged row opens
//! nothing, a changed one a new version at the snapshot's consistent point), and once the merge
//! is past a table's snapshot rows (a later event, or [`Core::seal_before`]), the rows of that
//! table the snapshot did not deliver are removed as deletes at the consistent point: they were
//! deleted while nothing captured them (a second snapshot of the source: snapshot mode `always`,
//! a slot recreated after its loss). Tables come in rank order, so a table a snapshot skips (and,
//! once the merge is past the snapshot, every table after its last) had no row: all its rows go.
//!
//! Facts join the dimension versions that were current when their order was applied (as-of the
//! order's commit); a line added to an order later still joins the versions of the order's commit.

use crate::event::{
    ChangeEvent, Customer, Op, Order, OrderLine, Payment, Position, Promotion, Seller, SourceRow, Table,
};
use rainbow_schemas::money::{Money, MoneyError, MoneySum};
use rainbow_schemas::pricing::{line_amounts, CouponType, PromotionTerms};
use rainbow_schemas::shape::*;
use rainbow_schemas::time::civil_from_days;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

pub mod cold;

/// Why the core refused an event. Nothing was changed; the runtime parks the event.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Rejected {
    #[error("order line ({order_id}, {product_id}) belongs to order {order_id}, which is unknown")]
    UnknownOrder { order_id: i64, product_id: i64 },
    #[error("order line ({order_id}, {product_id}) references product {product_id}, which is unknown")]
    UnknownProduct { order_id: i64, product_id: i64 },
    #[error("order line ({order_id}, {product_id}) references promotion {promotion_id}, which is unknown")]
    UnknownPromotion { order_id: i64, product_id: i64, promotion_id: i64 },
    #[error("order line ({order_id}, {product_id}): {source}")]
    Amount { order_id: i64, product_id: i64, source: MoneyError },
    #[error("event out of commit order: {got:?} after {last:?}")]
    OutOfOrder { last: Position, got: Position },
    #[error("{op:?} event of {table} lacks its {side} row")]
    MissingRow { op: Op, table: &'static str, side: &'static str },
}

impl Rejected {
    /// The cause as a metric label value (`dead_letters_total{reason}`).
    pub fn cause(&self) -> &'static str {
        match self {
            Rejected::UnknownOrder { .. } => "unknown_order",
            Rejected::UnknownProduct { .. } => "unknown_product",
            Rejected::UnknownPromotion { .. } => "unknown_promotion",
            Rejected::Amount { .. } => "amount",
            Rejected::OutOfOrder { .. } => "out_of_order",
            Rejected::MissingRow { .. } => "missing_row",
        }
    }

    /// Every cause, for metrics that show each from the start.
    pub const CAUSES: [&'static str; 6] =
        ["unknown_order", "unknown_product", "unknown_promotion", "amount", "out_of_order", "missing_row"];
}

/// A surrogate key: FNV-1a (64 bit) of the dimension, the natural id and the opening position.
/// Stable across platforms and Rust versions (std's hasher is not). 0 means "no dimension row".
fn surrogate_key(dimension: &str, id: i64, at: Position) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(dimension.as_bytes());
    eat(&id.to_le_bytes());
    eat(&at.commit.to_le_bytes());
    eat(&at.change.to_le_bytes());
    h.max(1)
}

/// A hash map keyed by natural ids. Its hasher is deterministic (no per-process random seed) and
/// cheap: one multiplication per id, where SipHash was a visible share of the core's time. Ids
/// come from the source database, not from an adversary. Nothing iterates these maps to produce
/// output (emission goes through the ordered `dirty` set), so their order never reaches a row.
type IdMap<V> = HashMap<i64, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of an `i64` (the high bits of id × 2^64/φ end up spread over the word).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_i64(&mut self, id: i64) {
        self.0 = (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(26);
    }
}

/// Where and when an event happened, as the core needs it.
#[derive(Debug, Clone, Copy)]
struct Ctx<'a> {
    at: Position,
    version: u64,
    /// Commit time, seconds (DateTime).
    time: u32,
    /// Versions that began at the start of the version they closed ([`change_time`]).
    moved: &'a Cell<u64>,
}

/// The open version of one natural key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OpenVersion<A> {
    key: u64,
    valid_from: u32,
    attrs: A,
}

/// One dimension member: its open version (if not deleted), every version's opening for as-of
/// lookups (with what facts need of a past version, [`Attributes::Hist`]), and what the dimension
/// keeps of its source row beside the versions ([`Attributes::Source`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Member<A: Attributes> {
    current: Option<OpenVersion<A>>,
    openings: Vec<(Position, u64, A::Hist)>,
    source: A::Source,
}

/// Tracked attributes of a dimension and how its rows look.
trait Attributes: Clone + PartialEq {
    type Hist: Copy + std::fmt::Debug + PartialEq + Serialize + serde::de::DeserializeOwned;
    /// What the member keeps of its source row besides its versions' attributes, whatever its
    /// versions: `()` but for products. Meaningful while a version is open.
    type Source: Clone + Default + std::fmt::Debug + PartialEq + Serialize + serde::de::DeserializeOwned;
    const NAME: &'static str;
    /// The dimension's number in the keys of the runs of versions moved out of memory.
    const COLD: u8;
    fn hist(&self) -> Self::Hist;
    fn emit(&self, id: i64, v: &OpenVersion<Self>, valid_to: u32, version: u64, out: &mut Outputs);
}

fn is_open(valid_to: u32) -> u8 {
    u8::from(valid_to == OPEN_VALID_TO)
}

/// A customer's name, email, phone and address (absent: empty), one after the other in one
/// allocation: four strings took 64 B more in the member, and an allocation each
/// (`processor-bench dimensions`). Serialised as the text and where each column ends, checked
/// when read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "CustomerText")]
struct CustomerAttrs {
    text: Box<str>,
    /// Where the name, the email and the phone end in `text` (the address ends with it).
    ends: [usize; 3],
}

#[derive(Deserialize)]
struct CustomerText {
    text: Box<str>,
    ends: [usize; 3],
}

impl TryFrom<CustomerText> for CustomerAttrs {
    type Error = &'static str;
    fn try_from(t: CustomerText) -> Result<Self, Self::Error> {
        let bounds = [0, t.ends[0], t.ends[1], t.ends[2], t.text.len()];
        if bounds.windows(2).all(|w| w[0] <= w[1]) && t.ends.iter().all(|e| t.text.is_char_boundary(*e)) {
            Ok(CustomerAttrs { text: t.text, ends: t.ends })
        } else {
            Err("a customer's columns do not divide its text")
        }
    }
}

impl CustomerAttrs {
    fn new(columns: [&str; 4]) -> CustomerAttrs {
        let mut text = String::with_capacity(columns.iter().map(|c| c.len()).sum());
        let mut ends = [0; 3];
        for (i, column) in columns.iter().enumerate() {
            text.push_str(column);
            if let Some(end) = ends.get_mut(i) {
                *end = text.len();
            }
        }
        CustomerAttrs { text: text.into_boxed_str(), ends }
    }

    /// Column `i`: 0 name, 1 email, 2 phone, 3 address.
    fn column(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        let end = self.ends.get(i).copied().unwrap_or(self.text.len());
        &self.text[start..end]
    }

    fn name(&self) -> &str {
        self.column(0)
    }
}

impl Attributes for CustomerAttrs {
    type Hist = ();
    type Source = ();
    const NAME: &'static str = "customer";
    const COLD: u8 = 0;
    fn hist(&self) {}
    fn emit(&self, id: i64, v: &OpenVersion<Self>, valid_to: u32, version: u64, out: &mut Outputs) {
        out.dim_customers.push(DimCustomer {
            customer_key: SurrogateKey(v.key),
            customer_id: id,
            name: self.column(0).to_string(),
            email: self.column(1).to_string(),
            phone: self.column(2).to_string(),
            address: self.column(3).to_string(),
            valid_from: v.valid_from,
            valid_to,
            is_current: is_open(valid_to),
            version,
            is_deleted: 0,
        });
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SellerAttrs {
    name: String,
}

impl Attributes for SellerAttrs {
    type Hist = ();
    type Source = ();
    const NAME: &'static str = "seller";
    const COLD: u8 = 1;
    fn hist(&self) {}
    fn emit(&self, id: i64, v: &OpenVersion<Self>, valid_to: u32, version: u64, out: &mut Outputs) {
        out.dim_sellers.push(DimSeller {
            seller_key: SurrogateKey(v.key),
            seller_id: id,
            name: self.name.clone(),
            valid_from: v.valid_from,
            valid_to,
            is_current: is_open(valid_to),
            version,
            is_deleted: 0,
        });
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PaymentAttrs {
    method: String,
}

impl Attributes for PaymentAttrs {
    type Hist = ();
    type Source = ();
    const NAME: &'static str = "payment";
    const COLD: u8 = 2;
    fn hist(&self) {}
    fn emit(&self, id: i64, v: &OpenVersion<Self>, valid_to: u32, version: u64, out: &mut Outputs) {
        out.dim_payments.push(DimPayment {
            payment_key: SurrogateKey(v.key),
            payment_id: id,
            method: self.method.clone(),
            valid_from: v.valid_from,
            valid_to,
            is_current: is_open(valid_to),
            version,
            is_deleted: 0,
        });
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PromotionAttrs {
    name: String,
    coupon_type: CouponTypeSer,
    price_treatment: Money,
}

/// `CouponType` with serde (the schemas crate's type is not Serialize for checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum CouponTypeSer {
    Percentage,
    FixedAmount,
}

impl From<CouponTypeSer> for CouponType {
    fn from(c: CouponTypeSer) -> CouponType {
        match c {
            CouponTypeSer::Percentage => CouponType::Percentage,
            CouponTypeSer::FixedAmount => CouponType::FixedAmount,
        }
    }
}

impl Attributes for PromotionAttrs {
    /// Coupon type and treatment: what a line needs to price itself as of its order.
    type Hist = (CouponTypeSer, Money);
    type Source = ();
    const NAME: &'static str = "promotion";
    const COLD: u8 = 3;
    fn hist(&self) -> Self::Hist {
        (self.coupon_type, self.price_treatment)
    }
    fn emit(&self, id: i64, v: &OpenVersion<Self>, valid_to: u32, version: u64, out: &mut Outputs) {
        out.dim_promotions.push(DimPromotion {
            promotion_key: SurrogateKey(v.key),
            promotion_id: id,
            name: self.name.clone(),
            coupon_type: CouponType::from(self.coupon_type).as_str().to_string(),
            price_treatment: self.price_treatment,
            valid_from: v.valid_from,
            valid_to,
            is_current: is_open(valid_to),
            version,
            is_deleted: 0,
        });
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ProductAttrs {
    row: ProductRow,
    category: Arc<str>,
    brand: Arc<str>,
}

impl Attributes for ProductAttrs {
    /// The seller, for the fact's seller key and the top-sellers group.
    type Hist = i64;
    /// Where its category's and brand's names come from (the names change by themselves).
    type Source = ProductIds;
    const NAME: &'static str = "product";
    const COLD: u8 = 4;
    fn hist(&self) -> i64 {
        self.row.seller_id
    }
    fn emit(&self, id: i64, v: &OpenVersion<Self>, valid_to: u32, version: u64, out: &mut Outputs) {
        out.dim_products.push(DimProduct {
            product_key: SurrogateKey(v.key),
            product_id: id,
            name: self.row.name.clone(),
            price: self.row.price,
            original_price: self.row.original_price,
            rating_average: self.row.rating_average.0 as i32,
            review_count: self.row.review_count,
            sold_count: self.row.sold_count,
            category: self.category.clone(),
            brand: self.brand.clone(),
            seller_id: self.row.seller_id,
            valid_from: v.valid_from,
            valid_to,
            is_current: is_open(valid_to),
            version,
            is_deleted: 0,
        });
    }
}

/// Applies a new state of one member: closes and opens versions as SCD2 says. Returns whether a
/// version was opened.
fn upsert<A: Attributes>(member: &mut Member<A>, id: i64, attrs: A, ctx: Ctx, out: &mut Outputs) -> bool {
    if member.current.as_ref().is_some_and(|cur| cur.attrs == attrs) {
        return false;
    }
    let time = change_time(member, ctx);
    if let Some(cur) = &member.current {
        cur.attrs.emit(id, cur, time, ctx.version, out);
    }
    let open = OpenVersion { key: surrogate_key(A::NAME, id, ctx.at), valid_from: time, attrs };
    open.attrs.emit(id, &open, OPEN_VALID_TO, ctx.version, out);
    member.openings.reserve_exact(opening_growth(member.openings.len(), member.openings.capacity()));
    member.openings.push((ctx.at, open.key, open.attrs.hist()));
    member.current = Some(open);
    true
}

/// Room to add to a member's openings before a push: none while there is some; else exactly
/// one for the first (most members never change: a vector's first growth would give four), then
/// half the length again (growth by 1.5, amortised as doubling is).
fn opening_growth(len: usize, capacity: usize) -> usize {
    if len < capacity {
        0
    } else {
        (len / 2).max(1)
    }
}

/// Closes the open version, if any.
fn close<A: Attributes>(member: &mut Member<A>, id: i64, ctx: Ctx, out: &mut Outputs) {
    let time = change_time(member, ctx);
    if let Some(cur) = member.current.take() {
        cur.attrs.emit(id, &cur, time, ctx.version, out);
    }
}

/// Closes a product's open version, if any, and takes it out of its brand's and category's sets
/// (they hold the products with an open version).
fn close_product(
    member: &mut Member<ProductAttrs>,
    id: i64,
    by_brand: &mut BTreeMap<i64, BTreeSet<i64>>,
    by_category: &mut BTreeMap<i64, BTreeSet<i64>>,
    ctx: Ctx,
    out: &mut Outputs,
) {
    if member.current.is_some() {
        remove_index(by_brand, member.source.brand_id, id);
        remove_index(by_category, member.source.category_id, id);
    }
    close(member, id, ctx, out);
}

/// When a change of `member` takes effect: its commit time, but never before the open version
/// began, so that no version ends before it begins. Snapshot rows carry the time they were read
/// (as Debezium's do), which can be later than the commit of a change streamed right after the
/// snapshot's consistent point; and commit times are not strictly in commit (LSN) order. Such a
/// version lasts zero seconds; which version a fact belongs to is decided by positions, not times.
/// Each such change is counted ([`Core::take_moved_starts`]).
fn change_time<A: Attributes>(member: &Member<A>, ctx: Ctx) -> u32 {
    match &member.current {
        Some(cur) if cur.valid_from > ctx.time => {
            ctx.moved.set(ctx.moved.get() + 1);
            cur.valid_from
        }
        _ => ctx.time,
    }
}

/// A dimension's members by natural id: hashed, as every fact looks up several (a B-tree's
/// walk was a visible share of the core's time); iterated only in sorted id order, by
/// [`Core::retain`]. Boxed, so that the table's free slots (up to half of it after a growth)
/// cost a pointer each, not a member's size (`processor-bench core` measures the state's
/// resident memory per dimension key).
type Dim<A> = IdMap<Box<Member<A>>>;

/// A product's category and brand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct ProductIds {
    category_id: i64,
    brand_id: i64,
}

/// A product's source row without its category and brand ids: with the category's and the
/// brand's names, a version's attributes. The open version's is the source row's (the member
/// keeps no other copy: [`Core::refresh_product`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ProductRow {
    /// Shared by the product's versions and their rows (a source row with the same text as the
    /// open version's does not copy it again); serialised as a string.
    name: Arc<str>,
    price: Money,
    original_price: Money,
    rating_average: Money,
    review_count: i64,
    sold_count: i64,
    seller_id: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderState {
    customer_id: i64,
    payment_id: i64,
    created_at_us: i64,
    /// Where the order was inserted: the as-of point of its facts.
    created: Position,
}

/// An order moved out of memory, with its lines; neither is a tombstone: what an earlier run holds
/// of the order was deleted since.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ColdOrder {
    order: Option<OrderState>,
    lines: Vec<LineState>,
}

/// A member's versions moved out of memory at one time (the postcard of its openings, oldest
/// first), and the run of those moved before them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ColdVersions {
    openings: Vec<u8>,
    previous: Option<u64>,
}

/// The folders of [`ColdSettings::dir`]: orders, dimension versions.
const ORDERS: &str = "orders";
const VERSIONS: &str = "versions";

/// Where a core keeps the orders it moves out of memory, and how many it keeps in memory
/// (see the module documentation, "Memory").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdSettings {
    pub dir: PathBuf,
    /// At least 2.
    pub hot_orders: usize,
    /// A name part unique to this run of the process, in the names of the runs it writes
    /// ([`cold::file_name`]); the engine sets it when it opens.
    pub generation: String,
}

/// One live order line with what its fact row and aggregate contributions were built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LineState {
    source: OrderLine,
    fact: FactKeys,
}

/// The live order lines, grouped by order: per order id, its lines sorted by product id, in a
/// vector of exactly their number: the line's own 128 B and a share of its order's entry. A
/// B-tree keyed by (order id, product id) took 164 B more per line, in its keys and its nodes'
/// slack (`processor-bench core`: the state at the seed's volume, 1.09 M lines, 391 -> 220 MiB
/// of resident memory). What reaches rows goes through
/// [`Lines::keys_sorted`] or one order's lines, both in key order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Lines {
    by_order: IdMap<Vec<LineState>>,
}

impl Lines {
    fn position(lines: &[LineState], product_id: i64) -> Result<usize, usize> {
        lines.binary_search_by_key(&product_id, |l| l.source.product_id)
    }

    fn get(&self, (order_id, product_id): (i64, i64)) -> Option<&LineState> {
        let lines = self.by_order.get(&order_id)?;
        Self::position(lines, product_id).ok().map(|i| &lines[i])
    }

    /// Inserts or replaces the line of `line.source`'s key.
    fn insert(&mut self, line: LineState) {
        let lines = self.by_order.entry(line.source.order_id).or_default();
        match Self::position(lines, line.source.product_id) {
            Ok(i) => lines[i] = line,
            Err(i) => {
                // Grown one line at a time: a vector's doubling would leave a third of it empty.
                lines.reserve_exact(1);
                lines.insert(i, line);
            }
        }
    }

    fn remove(&mut self, (order_id, product_id): (i64, i64)) -> Option<LineState> {
        let lines = self.by_order.get_mut(&order_id)?;
        let line = lines.remove(Self::position(lines, product_id).ok()?);
        if lines.is_empty() {
            self.by_order.remove(&order_id);
        } else {
            lines.shrink_to_fit();
        }
        Some(line)
    }

    /// One order's lines, by product id.
    fn of_order(&self, order_id: i64) -> &[LineState] {
        self.by_order.get(&order_id).map_or(&[], Vec::as_slice)
    }

    /// Every line's key, in key order.
    fn keys_sorted(&self) -> Vec<(i64, i64)> {
        let mut keys: Vec<(i64, i64)> =
            self.by_order.values().flatten().map(|l| (l.source.order_id, l.source.product_id)).collect();
        keys.sort_unstable();
        keys
    }

    /// How many lines (a walk over the orders, as [`Core::size`] walks the dimensions).
    fn len(&self) -> usize {
        self.by_order.values().map(Vec::len).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct FactKeys {
    date_key: u32,
    day_of_week: u8,
    product_key: u64,
    seller_key: u64,
    promotion_key: u64,
    customer_key: u64,
    payment_key: u64,
    seller_id: i64,
    customer_id: i64,
    payment_id: i64,
    discount_unit_price: Money,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Sums {
    quantity: i64,
    amount: i128,
    discount: i128,
}

impl Sums {
    fn add(&mut self, sign: i64, quantity: i64, amount: Money, discount: Money) {
        self.quantity += sign * quantity;
        self.amount += i128::from(sign) * i128::from(amount.0);
        self.discount += i128::from(sign) * i128::from(discount.0);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Labeled<T> {
    label: String,
    label2: String,
    value: T,
    /// Version of the last change (of value or label): the version of the group's row.
    version: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct OrderSums {
    orders: i64,
    quantity: i64,
    amount: i128,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum AggKey {
    Total,
    DayOfWeek(u8),
    Seller(i64),
    Product(i64),
    Payment(i64),
    Customer(i64),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Aggregates {
    total: Labeled<Sums>,
    by_day: [Labeled<Sums>; 7],
    sellers: IdMap<Labeled<Sums>>,
    products: IdMap<Labeled<Sums>>,
    payments: IdMap<Labeled<OrderSums>>,
    customers: IdMap<Labeled<OrderSums>>,
    /// Groups changed since the last seal.
    dirty: BTreeSet<AggKey>,
    /// Version of the event being applied.
    current: u64,
}

impl Aggregates {
    /// Marks a group changed by the event being applied.
    fn touch(&mut self, key: AggKey) {
        let v = self.current;
        match key {
            AggKey::Total => self.total.version = v,
            AggKey::DayOfWeek(d) => self.by_day[usize::from(d - 1)].version = v,
            AggKey::Seller(id) => self.sellers.get_mut(&id).into_iter().for_each(|g| g.version = v),
            AggKey::Product(id) => self.products.get_mut(&id).into_iter().for_each(|g| g.version = v),
            AggKey::Payment(id) => self.payments.get_mut(&id).into_iter().for_each(|g| g.version = v),
            AggKey::Customer(id) => self.customers.get_mut(&id).into_iter().for_each(|g| g.version = v),
        }
        self.dirty.insert(key);
    }
}

/// Everything the core knows; what a checkpoint stores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    brands: BTreeMap<i64, Arc<str>>,
    categories: BTreeMap<i64, Arc<str>>,
    customers: Dim<CustomerAttrs>,
    sellers: Dim<SellerAttrs>,
    payments: Dim<PaymentAttrs>,
    promotions: Dim<PromotionAttrs>,
    products: Dim<ProductAttrs>,
    /// The products with an open version, by brand and by category: those a rename versions.
    products_by_brand: BTreeMap<i64, BTreeSet<i64>>,
    products_by_category: BTreeMap<i64, BTreeSet<i64>>,
    orders: IdMap<OrderState>,
    lines: Lines,
    /// The orders (with their lines) moved out of memory: the runs of [`ColdSettings::dir`]'s
    /// `orders/`.
    cold_orders: cold::Runs<i64>,
    /// Dimension members' older versions moved out of memory (runs of `versions/`, keyed by
    /// ([`Attributes::COLD`], id)), and the run of each member's newest such versions.
    cold_versions: cold::Runs<(u8, i64)>,
    version_links: BTreeMap<(u8, i64), u64>,
    /// Orders read back from the runs: what memory holds of them (nothing: deleted) hides the
    /// runs', until they are written again.
    warmed: BTreeSet<i64>,
    dates: BTreeSet<u32>,
    aggregates: Aggregates,
    /// The snapshot rows of one table being applied, and the keys they delivered.
    scan: Option<Scan>,
    /// The snapshot being applied: its version and the rank of the next table it may deliver.
    snapshot: Option<SnapshotProgress>,
    /// Tables an incremental snapshot was asked for (by rank), and the keys of theirs seen since:
    /// delivered by the snapshot or changed by the stream.
    incremental: BTreeMap<u8, BTreeSet<(i64, i64)>>,
    last: Option<Position>,
    events: u64,
    /// Emit changed aggregates at the next transaction boundary (see [`Core::request_seal`]);
    /// part of the state so that a resumed core emits exactly when the uninterrupted one would.
    seal_requested: bool,
}

/// A table's snapshot rows being applied (they share one position): the keys seen so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Scan {
    at: Position,
    /// Commit time of the snapshot rows, seconds.
    time: u32,
    seen: BTreeSet<(i64, i64)>,
}

/// A snapshot being applied (its tables come in rank order): tables it skips delivered no row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SnapshotProgress {
    version: u64,
    /// Commit time of the snapshot rows, seconds.
    time: u32,
    /// Tables of lower rank are done.
    next_rank: u8,
}

/// Counts of what the core holds: the state-size metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSize {
    pub dimension_members: usize,
    pub dimension_versions: usize,
    pub orders: usize,
    pub order_lines: usize,
    /// Entries in the runs of orders moved out of memory (an order written again counts again).
    pub cold_orders: u64,
    /// Entries in the runs of dimension versions moved out of memory (a member's versions moved
    /// at one time are one entry).
    pub cold_versions: u64,
    pub aggregate_groups: usize,
    pub events_applied: u64,
}

/// The processor core. See the module documentation for its contract.
#[derive(Debug, Clone, PartialEq)]
pub struct Core {
    partition: i32,
    state: State,
    /// Changes timed at the start of the version they closed, since the last
    /// [`Core::take_moved_starts`] (not state: a count for the metrics).
    moved_starts: u64,
    /// Where orders moved out of memory go; none: every order stays in memory.
    cold: Option<ColdSettings>,
    /// Why the runs could not be read or written ([`Core::failure`]); set where the state is only
    /// read, too.
    failure: RefCell<Option<String>>,
    /// Entries of orders and of versions read from the runs since the last
    /// [`Core::take_cold_reads`] (not state: counts for the metrics).
    orders_read: Cell<u64>,
    versions_read: Cell<u64>,
}

const DAY_NAMES: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// The row of aggregate group `key` as it stands.
fn emit_group(a: &Aggregates, partition: i32, key: AggKey, out: &mut Outputs) {
    match key {
        AggKey::Total => out.agg_total_sales.push(AggTotalSales {
            partition,
            total_sales_quantity: a.total.value.quantity,
            total_sales_amount: MoneySum(a.total.value.amount),
            total_discount_amount: MoneySum(a.total.value.discount),
            version: a.total.version,
        }),
        AggKey::DayOfWeek(d) => {
            let g = &a.by_day[usize::from(d - 1)];
            out.agg_sales_by_day_of_week.push(AggSalesByDayOfWeek {
                partition,
                day_of_week: d,
                total_sales_quantity: g.value.quantity,
                total_sales_amount: MoneySum(g.value.amount),
                total_discount_amount: MoneySum(g.value.discount),
                version: g.version,
            })
        }
        AggKey::Seller(id) => {
            let g = &a.sellers[&id];
            out.agg_top_sellers.push(AggTopSeller {
                partition,
                seller_id: id,
                seller_name: g.label.clone(),
                total_sales_quantity: g.value.quantity,
                total_sales_amount: MoneySum(g.value.amount),
                total_discount_amount: MoneySum(g.value.discount),
                version: g.version,
            })
        }
        AggKey::Product(id) => {
            let g = &a.products[&id];
            out.agg_product_profit.push(AggProductProfit {
                partition,
                product_id: id,
                product_name: g.label.clone(),
                category: g.label2.clone(),
                total_sales_quantity: g.value.quantity,
                total_sales_amount: MoneySum(g.value.amount),
                total_discount_amount: MoneySum(g.value.discount),
                version: g.version,
            })
        }
        AggKey::Payment(id) => {
            let g = &a.payments[&id];
            out.agg_payment_methods.push(AggPaymentMethod {
                partition,
                payment_id: id,
                payment_method: g.label.clone(),
                order_count: g.value.orders,
                total_sales_amount: MoneySum(g.value.amount),
                version: g.version,
            })
        }
        AggKey::Customer(id) => {
            let g = &a.customers[&id];
            out.agg_customer_ranking.push(AggCustomerRanking {
                partition,
                customer_id: id,
                customer_name: g.label.clone(),
                order_count: g.value.orders,
                total_sales_quantity: g.value.quantity,
                total_sales_amount: MoneySum(g.value.amount),
                version: g.version,
            })
        }
    }
}

impl Core {
    /// A core with empty state; `partition` is the instance's share of the fact topics, stamped
    /// on its aggregate rows.
    pub fn new(partition: i32) -> Core {
        Core::from_state(partition, State::default())
    }

    /// A core resumed from a checkpoint's state.
    pub fn from_state(partition: i32, state: State) -> Core {
        Core {
            partition,
            state,
            moved_starts: 0,
            cold: None,
            failure: RefCell::new(None),
            orders_read: Cell::new(0),
            versions_read: Cell::new(0),
        }
    }

    /// Keeps at most `settings.hot_orders` orders in memory, the others in runs under
    /// `settings.dir` (the module documentation's "Memory"). The state's runs must be there: a
    /// checkpoint's go with it ([`crate::checkpoint`]).
    pub fn with_cold(mut self, settings: ColdSettings) -> Core {
        self.cold = Some(settings);
        self
    }

    /// The files of the runs the state refers to (path under [`ColdSettings::dir`], size).
    pub fn cold_files(&self) -> Vec<(String, u64)> {
        let under = |folder: &str, files: Vec<(String, u64)>| {
            files.into_iter().map(|(name, size)| (format!("{folder}/{name}"), size)).collect::<Vec<_>>()
        };
        let mut files = under(ORDERS, self.state.cold_orders.files());
        files.extend(under(VERSIONS, self.state.cold_versions.files()));
        files
    }

    /// Why the runs could not be read or written, once that happened: the event being applied
    /// was not, and rows produced since the last checkpoint may be wrong. The caller stops (and
    /// resumes from its last checkpoint); nothing else is applied.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Entries read from the runs since the last call (orders, versions), and resets the counts.
    pub fn take_cold_reads(&mut self) -> (u64, u64) {
        (self.orders_read.take(), self.versions_read.take())
    }

    fn failed(&self) -> bool {
        self.failure.borrow().is_some()
    }

    fn fail(&self, e: impl std::fmt::Display) {
        let dir = self.cold.as_ref().map(|c| c.dir.display().to_string()).unwrap_or_default();
        self.failure.borrow_mut().get_or_insert_with(|| {
            format!("the state kept on disk in {dir} could not be read or written: {e}")
        });
    }

    /// The directory of one kind of runs (none without [`ColdSettings`]).
    fn runs_dir(&self, kind: &str) -> Option<PathBuf> {
        self.cold.as_ref().map(|c| c.dir.join(kind))
    }

    /// Reads back the order of every order and order-line row of `event` (and its lines) if a
    /// run holds it and memory does not.
    fn warm_rows(&mut self, event: &ChangeEvent) -> std::io::Result<()> {
        for row in event.before.iter().chain(&event.after) {
            match row {
                SourceRow::Order(o) => self.warm(o.id)?,
                SourceRow::OrderLine(l) => self.warm(l.order_id)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether memory holds what is known of order `id` (or nothing is on disk).
    fn in_memory(&self, id: i64) -> bool {
        let s = &self.state;
        s.warmed.contains(&id) || s.orders.contains_key(&id) || s.lines.by_order.contains_key(&id)
    }

    fn warm(&mut self, id: i64) -> std::io::Result<()> {
        // Cheapest first: every order and line event asks (a line's order is usually in memory).
        if self.in_memory(id) || !self.state.cold_orders.may_hold(id) {
            return Ok(());
        }
        let Some(dir) = self.runs_dir(ORDERS) else { return Ok(()) };
        if let Some(found) = self.state.cold_orders.get::<ColdOrder>(&dir, id)? {
            self.orders_read.set(self.orders_read.get() + 1);
            self.put_back(id, found);
        }
        Ok(())
    }

    fn put_back(&mut self, id: i64, ColdOrder { order, lines }: ColdOrder) {
        let s = &mut self.state;
        if order.is_none() && lines.is_empty() {
            return;
        }
        if let Some(order) = order {
            s.orders.insert(id, order);
        }
        if !lines.is_empty() {
            s.lines.by_order.insert(id, lines);
        }
        s.warmed.insert(id);
    }

    /// Reads back every order on disk that memory does not hold.
    fn warm_all(&mut self) -> std::io::Result<()> {
        let Some(dir) = self.runs_dir(ORDERS) else { return Ok(()) };
        if self.state.cold_orders.is_empty() {
            return Ok(());
        }
        for (id, found) in self.state.cold_orders.read_all::<ColdOrder>(&dir)? {
            if !self.in_memory(id) {
                self.put_back(id, found);
            }
        }
        Ok(())
    }

    /// Once memory holds more than `hot_orders` orders: the orders inserted first, until half
    /// that number is left, go to a new run with their lines (and a tombstone for each order read
    /// back and deleted since); then the dimension versions that no order left in memory joins
    /// (see [`Core::evict_versions`]).
    fn evict_if_full(&mut self) {
        let Some(c) = &self.cold else { return };
        if self.state.orders.len() <= c.hot_orders {
            return;
        }
        let (dir, keep, generation) = (c.dir.join(ORDERS), c.hot_orders / 2, c.generation.clone());
        let s = &mut self.state;
        // The orders inserted first (by position, then id), whatever their ids' order; lines
        // and orders read back whose order is not in memory go with them.
        let mut oldest: Vec<(Position, i64)> = s.orders.iter().map(|(id, o)| (o.created, *id)).collect();
        let n = oldest.len() - keep;
        let cutoff = *oldest.select_nth_unstable(n - 1).1;
        let orders = &s.orders;
        let mut victims: Vec<i64> = oldest
            .into_iter()
            .filter(|key| *key <= cutoff)
            .map(|(_, id)| id)
            .chain(s.lines.by_order.keys().chain(&s.warmed).copied().filter(|id| !orders.contains_key(id)))
            .collect();
        victims.sort_unstable();
        victims.dedup();
        let entries: Vec<(i64, ColdOrder)> = victims
            .into_iter()
            .map(|id| {
                let order = s.orders.remove(&id);
                (id, ColdOrder { order, lines: s.lines.by_order.remove(&id).unwrap_or_default() })
            })
            .collect();
        s.warmed.retain(|id| s.orders.contains_key(id));
        if let Err(e) = s.cold_orders.write(&dir, &generation, &entries) {
            self.fail(e);
            return;
        }
        // The orders in memory join versions as of their insertion, new ones as of now.
        let horizon = s.orders.values().map(|o| o.created).min().or(s.last);
        if let Some(horizon) = horizon {
            if let Err(e) = self.evict_versions(horizon) {
                self.fail(e);
            }
        }
    }

    /// Moves every member's versions opened at or before `horizon` but the last of them to a new
    /// run (one entry per member, linked to the member's previous one): facts as of `horizon` or
    /// later find their version in memory, earlier ones on disk ([`Core::version_as_of`]).
    fn evict_versions(&mut self, horizon: Position) -> Result<(), String> {
        let Some(c) = &self.cold else { return Ok(()) };
        let (dir, generation) = (c.dir.join(VERSIONS), c.generation.clone());
        let s = &mut self.state;
        let number = s.cold_versions.next_number();
        let mut entries = Vec::new();
        let links = &mut s.version_links;
        // In key order: by dimension number, then id.
        move_versions(&mut s.customers, horizon, number, links, &mut entries)?;
        move_versions(&mut s.sellers, horizon, number, links, &mut entries)?;
        move_versions(&mut s.payments, horizon, number, links, &mut entries)?;
        move_versions(&mut s.promotions, horizon, number, links, &mut entries)?;
        move_versions(&mut s.products, horizon, number, links, &mut entries)?;
        s.cold_versions.write(&dir, &generation, &entries).map_err(|e| e.to_string())
    }

    /// The version of member `id` of `dim` current at `at`: the last opened at or before it (the
    /// first, for a position before any version opened), from its versions on disk when `at` is
    /// before those in memory. A run that cannot be read is a failure
    /// ([`Core::failure`]) and answers none.
    fn version_as_of<A: Attributes>(&self, dim: &Dim<A>, id: i64, at: Position) -> Option<(u64, A::Hist)> {
        let m = dim.get(&id)?;
        let pick =
            |openings: &[(Position, u64, A::Hist)], i: usize| openings.get(i).map(|(_, k, h)| (*k, *h));
        let i = m.openings.partition_point(|(p, _, _)| *p <= at);
        if i > 0 {
            return pick(&m.openings, i - 1);
        }
        let Some(mut run) = self.state.version_links.get(&(A::COLD, id)).copied() else {
            // Before its first version: the first.
            return pick(&m.openings, 0);
        };
        let Some(dir) = self.runs_dir(VERSIONS) else {
            self.fail("versions on disk, but no directory to read them from");
            return None;
        };
        loop {
            let read = self.state.cold_versions.get_in::<ColdVersions>(&dir, run, (A::COLD, id));
            self.versions_read.set(self.versions_read.get() + 1);
            let entry = match read {
                Ok(Some(entry)) => entry,
                Ok(None) => {
                    self.fail(format!("run {run} of versions lacks {} {id}", A::NAME));
                    return None;
                }
                Err(e) => {
                    self.fail(e);
                    return None;
                }
            };
            let openings: Vec<(Position, u64, A::Hist)> = match postcard::from_bytes(&entry.openings) {
                Ok(o) => o,
                Err(e) => {
                    self.fail(format!("run {run} of versions, {} {id}: {e}", A::NAME));
                    return None;
                }
            };
            let j = openings.partition_point(|(p, _, _)| *p <= at);
            match (j, entry.previous) {
                (0, Some(previous)) => run = previous,
                (0, None) => return pick(&openings, 0),
                _ => return pick(&openings, j - 1),
            }
        }
    }

    /// The surrogate key of the version of member `id` current at `at` (0: no such member).
    fn key_as_of<A: Attributes<Hist = ()>>(&self, dim: &Dim<A>, id: i64, at: Position) -> u64 {
        self.version_as_of(dim, id, at).map_or(0, |(k, ())| k)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// How many dimension changes since the last call were timed at the start of the version they
    /// closed instead of at their commit, which was earlier, and resets the count. Such a version
    /// lasts zero seconds. Expected right after a snapshot (its rows carry the time they were
    /// read, later than the commit of a change streamed right behind its consistent point) and
    /// now and then (commit times are not strictly in log order).
    pub fn take_moved_starts(&mut self) -> u64 {
        std::mem::take(&mut self.moved_starts)
    }

    /// Position of the last applied event.
    pub fn last_position(&self) -> Option<Position> {
        self.state.last
    }

    pub fn size(&self) -> StateSize {
        let s = &self.state;
        let members =
            s.customers.len() + s.sellers.len() + s.payments.len() + s.promotions.len() + s.products.len();
        let versions = s.customers.values().map(|m| m.openings.len()).sum::<usize>()
            + s.sellers.values().map(|m| m.openings.len()).sum::<usize>()
            + s.payments.values().map(|m| m.openings.len()).sum::<usize>()
            + s.promotions.values().map(|m| m.openings.len()).sum::<usize>()
            + s.products.values().map(|m| m.openings.len()).sum::<usize>();
        let a = &s.aggregates;
        StateSize {
            dimension_members: members,
            dimension_versions: versions,
            orders: s.orders.len(),
            order_lines: s.lines.len(),
            cold_orders: s.cold_orders.entries(),
            cold_versions: s.cold_versions.entries(),
            aggregate_groups: 1
                + 7
                + a.sellers.len()
                + a.products.len()
                + a.payments.len()
                + a.customers.len(),
            events_applied: s.events,
        }
    }

    /// Applies one event and appends the rows it produces to `out`. On `Err` nothing changed.
    pub fn apply(&mut self, event: &ChangeEvent, out: &mut Outputs) -> Result<(), Rejected> {
        if self.failed() {
            return Ok(());
        }
        let at = event.position;
        if let Some(last) = self.state.last {
            if at < last {
                return Err(Rejected::OutOfOrder { last, got: at });
            }
            if at.commit != last.commit && self.state.seal_requested {
                // The previous transaction is complete.
                self.seal(out);
            }
        }
        if let Err(e) = self.warm_rows(event) {
            self.fail(e);
            return Ok(());
        }
        let moved = Cell::new(0);
        let ctx = Ctx {
            at,
            version: at.version(),
            time: (event.ts_ms.max(0) / 1000).min(i64::from(u32::MAX)) as u32,
            moved: &moved,
        };
        // A table's snapshot rows share one position (the CDC's); rows of the same snapshot and
        // table at other positions (other producers) belong to the same scan.
        let same_scan = |scan: &Scan| {
            event.op == Op::Read && at.version() == scan.at.version() && at.table == scan.at.table
        };
        if self.state.scan.as_ref().is_some_and(|scan| !same_scan(scan)) {
            self.finish_scan(&moved, out);
        }
        let snapshot_row = event.op == Op::Read && at.is_snapshot();
        if self.state.snapshot.as_ref().is_some_and(|p| !snapshot_row || p.version != at.version()) {
            self.finish_snapshot(&moved, out);
        }
        if snapshot_row {
            let p = self.state.snapshot.get_or_insert(SnapshotProgress {
                version: at.version(),
                time: ctx.time,
                next_rank: 0,
            });
            let (skipped, time) = (p.next_rank..at.table, p.time);
            p.next_rank = p.next_rank.max(at.table + 1);
            self.empty_tables(skipped, at.version(), time, &moved, out);
        }
        if event.table() == Table::Signals {
            self.signal(event, ctx, out);
        } else {
            if let Err(e) = self.dispatch(event, ctx, out) {
                // What ended the snapshot's scan above stays done.
                self.moved_starts += moved.get();
                return Err(e);
            }
            if let Some(seen) = self.state.incremental.get_mut(&at.table) {
                seen.extend(event.before.iter().chain(&event.after).map(row_key));
            }
        }
        if snapshot_row {
            if let Some(row) = &event.after {
                let scan =
                    self.state.scan.get_or_insert_with(|| Scan { at, time: ctx.time, seen: BTreeSet::new() });
                scan.at = scan.at.max(at);
                scan.seen.insert(row_key(row));
            }
        }
        self.state.last = Some(at);
        self.state.events += 1;
        self.moved_starts += moved.get();
        self.evict_if_full();
        Ok(())
    }

    /// Asks for the changed aggregate groups at the next transaction boundary (when an event of a
    /// later transaction arrives). Their rows are the same whenever they are emitted; asking
    /// often gives fresher aggregates and more rows.
    pub fn request_seal(&mut self) {
        self.state.seal_requested = true;
    }

    /// Seals the current transaction if every event before `frontier` has been applied and the
    /// last applied event's transaction ends before it: emits the changed aggregate groups.
    pub fn seal_before(&mut self, frontier: Position, out: &mut Outputs) {
        if self.failed() {
            return;
        }
        let moved = Cell::new(0);
        if self.state.scan.as_ref().is_some_and(|scan| scan.at < frontier) {
            self.finish_scan(&moved, out);
        }
        if self.state.snapshot.as_ref().is_some_and(|p| {
            frontier > Position { commit: p.version.saturating_sub(1), change: p.version, table: u8::MAX }
        }) {
            self.finish_snapshot(&moved, out);
        }
        self.moved_starts += moved.get();
        if matches!(self.state.last, Some(last) if last.commit < frontier.commit) {
            self.seal(out);
        }
    }

    /// Emits every aggregate group changed since the last seal. Only called at a transaction
    /// boundary (see the module documentation).
    fn seal(&mut self, out: &mut Outputs) {
        self.state.seal_requested = false;
        let partition = self.partition;
        let a = &mut self.state.aggregates;
        for key in std::mem::take(&mut a.dirty) {
            emit_group(a, partition, key, out);
        }
    }

    /// Every aggregate group's row as it stands (not only the changed ones), for a replay shard
    /// whose partial sums another shard's selected rows need ([`crate::engine::Options`]).
    pub fn aggregate_state(&self, out: &mut Outputs) {
        let a = &self.state.aggregates;
        let keys = [AggKey::Total]
            .into_iter()
            .chain((1..=7).map(AggKey::DayOfWeek))
            .chain(a.sellers.keys().map(|id| AggKey::Seller(*id)))
            .chain(a.products.keys().map(|id| AggKey::Product(*id)))
            .chain(a.payments.keys().map(|id| AggKey::Payment(*id)))
            .chain(a.customers.keys().map(|id| AggKey::Customer(*id)));
        for key in keys {
            emit_group(a, self.partition, key, out);
        }
    }

    fn dispatch(&mut self, e: &ChangeEvent, ctx: Ctx, out: &mut Outputs) -> Result<(), Rejected> {
        let table = e.table();
        let missing = |side| Rejected::MissingRow { op: e.op, table: table.name(), side };
        if e.op == Op::Truncate {
            self.truncate(table, ctx, out);
            return Ok(());
        }
        let row = match e.op {
            Op::Delete => e.before.as_ref().ok_or_else(|| missing("before"))?,
            _ => e.after.as_ref().ok_or_else(|| missing("after"))?,
        };
        // A key change arrives from Rainbow's CDC as delete + create; another producer may send an
        // update whose before has another key: delete that key first.
        if e.op == Op::Update {
            if let (Some(before), Some(after)) = (&e.before, &e.after) {
                if row_key(before) != row_key(after) {
                    if let SourceRow::OrderLine(l) = after {
                        // Validate the new line before touching the old one.
                        self.build_fact(l)?;
                    }
                    self.delete(before, ctx, out)?;
                }
            }
        }
        match e.op {
            Op::Delete => self.delete(row, ctx, out),
            _ => self.upsert(row, ctx, out),
        }
    }

    fn upsert(&mut self, row: &SourceRow, ctx: Ctx, out: &mut Outputs) -> Result<(), Rejected> {
        let s = &mut self.state;
        match row {
            SourceRow::Brand(b) => {
                if s.brands.insert(b.id, Arc::from(b.name.as_str())).as_deref() != Some(b.name.as_str()) {
                    let ids: Vec<i64> = s
                        .products_by_brand
                        .get(&b.id)
                        .map(|p| p.iter().copied().collect())
                        .unwrap_or_default();
                    for id in ids {
                        self.refresh_product(id, None, ctx, out);
                    }
                }
            }
            SourceRow::Category(c) => {
                if s.categories.insert(c.id, Arc::from(c.name.as_str())).as_deref() != Some(c.name.as_str()) {
                    let ids: Vec<i64> = s
                        .products_by_category
                        .get(&c.id)
                        .map(|p| p.iter().copied().collect())
                        .unwrap_or_default();
                    for id in ids {
                        self.refresh_product(id, None, ctx, out);
                    }
                }
            }
            SourceRow::Customer(c) => self.upsert_customer(c, ctx, out),
            SourceRow::Seller(x) => self.upsert_seller(x, ctx, out),
            SourceRow::Payment(p) => self.upsert_payment(p, ctx, out),
            SourceRow::Promotion(p) => self.upsert_promotion(p, ctx, out),
            SourceRow::Product(p) => {
                let member = member_of(&mut s.products, p.id);
                let ids = ProductIds { category_id: p.category_id, brand_id: p.brand_id };
                if member.current.is_some() {
                    let old = member.source;
                    if old.brand_id != ids.brand_id {
                        remove_index(&mut s.products_by_brand, old.brand_id, p.id);
                    }
                    if old.category_id != ids.category_id {
                        remove_index(&mut s.products_by_category, old.category_id, p.id);
                    }
                }
                let name = match &member.current {
                    Some(open) if *open.attrs.row.name == *p.name => open.attrs.row.name.clone(),
                    _ => Arc::from(p.name.as_str()),
                };
                member.source = ids;
                let row = ProductRow {
                    name,
                    price: p.price,
                    original_price: p.original_price,
                    rating_average: p.rating_average,
                    review_count: p.review_count,
                    sold_count: p.sold_count,
                    seller_id: p.seller_id,
                };
                s.products_by_brand.entry(p.brand_id).or_default().insert(p.id);
                s.products_by_category.entry(p.category_id).or_default().insert(p.id);
                self.refresh_product(p.id, Some(row), ctx, out);
            }
            SourceRow::Order(o) => self.upsert_order(o, ctx, out)?,
            SourceRow::OrderLine(l) => self.upsert_line(l, ctx, out)?,
            SourceRow::Inventory(_) | SourceRow::Signal(_) => {}
        }
        Ok(())
    }

    fn delete(&mut self, row: &SourceRow, ctx: Ctx, out: &mut Outputs) -> Result<(), Rejected> {
        let s = &mut self.state;
        match row {
            // Products keep the name they carry; a brand or category still referenced cannot be
            // deleted in the source (foreign keys).
            SourceRow::Brand(b) => {
                s.brands.remove(&b.id);
            }
            SourceRow::Category(c) => {
                s.categories.remove(&c.id);
            }
            SourceRow::Customer(c) => {
                if let Some(m) = s.customers.get_mut(&c.id) {
                    close(m, c.id, ctx, out);
                }
            }
            SourceRow::Seller(x) => {
                if let Some(m) = s.sellers.get_mut(&x.id) {
                    close(m, x.id, ctx, out);
                }
            }
            SourceRow::Payment(p) => {
                if let Some(m) = s.payments.get_mut(&p.id) {
                    close(m, p.id, ctx, out);
                }
            }
            SourceRow::Promotion(p) => {
                if let Some(m) = s.promotions.get_mut(&p.id) {
                    close(m, p.id, ctx, out);
                }
            }
            SourceRow::Product(p) => {
                if let Some(m) = s.products.get_mut(&p.id) {
                    close_product(m, p.id, &mut s.products_by_brand, &mut s.products_by_category, ctx, out);
                }
            }
            SourceRow::Order(o) => {
                if let Some(order) = s.orders.remove(&o.id) {
                    self.count_order(&order, -1);
                }
            }
            SourceRow::OrderLine(l) => self.delete_line(l.order_id, l.product_id, ctx, out),
            SourceRow::Inventory(_) | SourceRow::Signal(_) => {}
        }
        Ok(())
    }

    /// TRUNCATE: every row of the table goes, as if deleted one by one (in key order).
    fn truncate(&mut self, table: Table, ctx: Ctx, out: &mut Outputs) {
        self.retain(table, &|_| false, ctx, out);
    }

    /// A row of the signal table. A streamed `execute-snapshot` starts tracking the keys of the
    /// tables it names; `snapshot-table-done` (the CDC's, once the table's last chunk is in
    /// Kafka) deletes the table's rows that were neither delivered by the incremental snapshot
    /// nor changed by the stream since the request: they are gone from the source. A table asked
    /// for again while tracked keeps its keys (the CDC reads it once for both).
    fn signal(&mut self, event: &ChangeEvent, ctx: Ctx, out: &mut Outputs) {
        let Some(SourceRow::Signal(signal)) = &event.after else { return };
        if event.op != Op::Create || event.position.is_snapshot() {
            return;
        }
        let tables = |key: &str| -> Vec<Table> {
            let data: serde_json::Value =
                signal.data.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or_default();
            let names: Vec<&str> = match &data[key] {
                serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
                serde_json::Value::String(s) => vec![s.as_str()],
                _ => vec![],
            };
            names
                .into_iter()
                .filter_map(|n| Table::from_name(n.rsplit('.').next().unwrap_or(n)))
                .filter(|t| *t != Table::Signals)
                .collect()
        };
        match signal.kind.as_str() {
            rainbow_schemas::postgres::SIGNAL_EXECUTE_SNAPSHOT => {
                for table in tables("data-collections") {
                    self.state.incremental.entry(table.rank()).or_default();
                }
            }
            rainbow_schemas::postgres::SIGNAL_SNAPSHOT_TABLE_DONE => {
                for table in tables("data-collection") {
                    if let Some(seen) = self.state.incremental.remove(&table.rank()) {
                        self.retain(table, &|key| seen.contains(&key), ctx, out);
                    }
                }
            }
            _ => {}
        }
    }

    /// The end of a table's snapshot rows: its rows the snapshot did not deliver are deleted.
    fn finish_scan(&mut self, moved: &Cell<u64>, out: &mut Outputs) {
        let Some(scan) = self.state.scan.take() else { return };
        let table = Table::ALL[usize::from(scan.at.table)];
        let ctx = Ctx { at: scan.at, version: scan.at.version(), time: scan.time, moved };
        self.retain(table, &|key| scan.seen.contains(&key), ctx, out);
    }

    /// The end of a snapshot: the tables after the last one it delivered rows of had none.
    fn finish_snapshot(&mut self, moved: &Cell<u64>, out: &mut Outputs) {
        self.finish_scan(moved, out);
        let Some(p) = self.state.snapshot.take() else { return };
        self.empty_tables(p.next_rank..Table::ALL.len() as u8, p.version, p.time, moved, out);
    }

    /// Every row of the tables of rank `ranks` is deleted: a snapshot at `version` delivered none.
    fn empty_tables(
        &mut self,
        ranks: std::ops::Range<u8>,
        version: u64,
        time: u32,
        moved: &Cell<u64>,
        out: &mut Outputs,
    ) {
        for rank in ranks {
            let table = Table::ALL[usize::from(rank)];
            let at = Position::snapshot(version, table);
            self.retain(table, &|_| false, Ctx { at, version, time, moved }, out);
        }
    }

    /// Deletes every row of `table` whose key ([`row_key`]) `keep` refuses, in key order.
    fn retain(&mut self, table: Table, keep: &dyn Fn((i64, i64)) -> bool, ctx: Ctx, out: &mut Outputs) {
        if matches!(table, Table::Orders | Table::Orderdetails) {
            if let Err(e) = self.warm_all() {
                self.fail(e);
                return;
            }
        }
        let s = &mut self.state;
        let gone = |ids: Vec<i64>| -> Vec<i64> { ids.into_iter().filter(|id| !keep((*id, 0))).collect() };
        match table {
            Table::Brands => s.brands.retain(|id, _| keep((*id, 0))),
            Table::Categories => s.categories.retain(|id, _| keep((*id, 0))),
            Table::Customers => {
                for id in gone(sorted(s.customers.keys())) {
                    close(s.customers.get_mut(&id).expect("listed"), id, ctx, out);
                }
            }
            Table::Sellers => {
                for id in gone(sorted(s.sellers.keys())) {
                    close(s.sellers.get_mut(&id).expect("listed"), id, ctx, out);
                }
            }
            Table::Payments => {
                for id in gone(sorted(s.payments.keys())) {
                    close(s.payments.get_mut(&id).expect("listed"), id, ctx, out);
                }
            }
            Table::Promotions => {
                for id in gone(sorted(s.promotions.keys())) {
                    close(s.promotions.get_mut(&id).expect("listed"), id, ctx, out);
                }
            }
            Table::Products => {
                for id in gone(sorted(s.products.keys())) {
                    let m = s.products.get_mut(&id).expect("listed");
                    close_product(m, id, &mut s.products_by_brand, &mut s.products_by_category, ctx, out);
                }
            }
            Table::Orders => {
                for id in gone(sorted(s.orders.keys())) {
                    if let Some(order) = self.state.orders.remove(&id) {
                        self.count_order(&order, -1);
                    }
                }
            }
            Table::Orderdetails => {
                let keys: Vec<(i64, i64)> = s.lines.keys_sorted().into_iter().filter(|k| !keep(*k)).collect();
                for (o, p) in keys {
                    self.delete_line(o, p, ctx, out);
                }
            }
            Table::Inventories | Table::Signals => {}
        }
    }

    fn upsert_customer(&mut self, c: &Customer, ctx: Ctx, out: &mut Outputs) {
        let attrs = CustomerAttrs::new([
            &c.name,
            &c.email,
            c.phone.as_deref().unwrap_or_default(),
            c.address.as_deref().unwrap_or_default(),
        ]);
        let member = member_of(&mut self.state.customers, c.id);
        if upsert(member, c.id, attrs, ctx, out) {
            let a = &mut self.state.aggregates;
            if let Some(g) = a.customers.get_mut(&c.id) {
                if g.label != c.name {
                    g.label = c.name.clone();
                    a.touch(AggKey::Customer(c.id));
                }
            }
        }
    }

    fn upsert_seller(&mut self, x: &Seller, ctx: Ctx, out: &mut Outputs) {
        let member = member_of(&mut self.state.sellers, x.id);
        if upsert(member, x.id, SellerAttrs { name: x.name.clone() }, ctx, out) {
            let a = &mut self.state.aggregates;
            if let Some(g) = a.sellers.get_mut(&x.id) {
                if g.label != x.name {
                    g.label = x.name.clone();
                    a.touch(AggKey::Seller(x.id));
                }
            }
        }
    }

    fn upsert_payment(&mut self, p: &Payment, ctx: Ctx, out: &mut Outputs) {
        let member = member_of(&mut self.state.payments, p.id);
        if upsert(member, p.id, PaymentAttrs { method: p.method.clone() }, ctx, out) {
            let a = &mut self.state.aggregates;
            if let Some(g) = a.payments.get_mut(&p.id) {
                if g.label != p.method {
                    g.label = p.method.clone();
                    a.touch(AggKey::Payment(p.id));
                }
            }
        }
    }

    fn upsert_promotion(&mut self, p: &Promotion, ctx: Ctx, out: &mut Outputs) {
        let coupon_type = match p.coupon_type.as_str() {
            "Fixed Amount" => CouponTypeSer::FixedAmount,
            _ => CouponTypeSer::Percentage, // decode() accepts only the two seed values
        };
        let attrs = PromotionAttrs { name: p.name.clone(), coupon_type, price_treatment: p.price_treatment };
        let member = member_of(&mut self.state.promotions, p.id);
        upsert(member, p.id, attrs, ctx, out);
    }

    /// Re-derives a product's tracked attributes from its source row (`row`, or else the open
    /// version's: a product without one is deleted, and stays so) and the current brand and
    /// category names, versioning it if they changed.
    fn refresh_product(&mut self, id: i64, row: Option<ProductRow>, ctx: Ctx, out: &mut Outputs) {
        let s = &mut self.state;
        let Some(member) = s.products.get_mut(&id) else { return };
        let Some(row) = row.or_else(|| member.current.as_ref().map(|v| v.attrs.row.clone())) else { return };
        let ids = member.source;
        let attrs = ProductAttrs {
            row,
            category: s.categories.get(&ids.category_id).cloned().unwrap_or_default(),
            brand: s.brands.get(&ids.brand_id).cloned().unwrap_or_default(),
        };
        let (name, category) = (attrs.row.name.clone(), attrs.category.clone());
        if upsert(member, id, attrs, ctx, out) {
            let a = &mut s.aggregates;
            if let Some(g) = a.products.get_mut(&id) {
                if *g.label != *name || *g.label2 != *category {
                    g.label = name.to_string();
                    g.label2 = category.to_string();
                    a.touch(AggKey::Product(id));
                }
            }
        }
    }

    fn upsert_order(&mut self, o: &Order, ctx: Ctx, out: &mut Outputs) -> Result<(), Rejected> {
        let old = self.state.orders.get(&o.id).cloned();
        let created = old.as_ref().map_or(ctx.at, |x| x.created);
        let new = OrderState {
            customer_id: o.customer_id,
            payment_id: o.payment_id,
            created_at_us: o.created_at_us,
            created,
        };
        match old {
            None => {
                self.count_order(&new, 1);
                self.state.orders.insert(o.id, new);
            }
            Some(old) if old == new => {}
            Some(old) => {
                // Validate every line against the new order before changing anything.
                let lines: Vec<OrderLine> =
                    self.state.lines.of_order(o.id).iter().map(|l| l.source.clone()).collect();
                self.state.orders.insert(o.id, new.clone());
                let built: Result<Vec<FactKeys>, Rejected> =
                    lines.iter().map(|l| self.build_fact(l)).collect();
                let built = match built {
                    Ok(b) => b,
                    Err(e) => {
                        self.state.orders.insert(o.id, old);
                        return Err(e);
                    }
                };
                self.count_order(&old, -1);
                self.count_order(&new, 1);
                for (line, fact) in lines.iter().zip(built) {
                    self.replace_line(line, fact, ctx, out);
                }
            }
        }
        Ok(())
    }

    fn count_order(&mut self, order: &OrderState, sign: i64) {
        let customer_name = self.current_customer_name(order.customer_id);
        let method = self.current_payment_method(order.payment_id);
        let a = &mut self.state.aggregates;
        let c = a
            .customers
            .entry(order.customer_id)
            .or_insert_with(|| Labeled { label: customer_name, ..Default::default() });
        c.value.orders += sign;
        a.touch(AggKey::Customer(order.customer_id));
        let p = a
            .payments
            .entry(order.payment_id)
            .or_insert_with(|| Labeled { label: method, ..Default::default() });
        p.value.orders += sign;
        a.touch(AggKey::Payment(order.payment_id));
    }

    fn current_customer_name(&self, id: i64) -> String {
        self.state
            .customers
            .get(&id)
            .and_then(|m| m.current.as_ref())
            .map(|v| v.attrs.name().to_string())
            .unwrap_or_default()
    }

    fn current_payment_method(&self, id: i64) -> String {
        self.state
            .payments
            .get(&id)
            .and_then(|m| m.current.as_ref())
            .map(|v| v.attrs.method.clone())
            .unwrap_or_default()
    }

    /// The fact of `line` as of its order's insertion.
    fn build_fact(&self, line: &OrderLine) -> Result<FactKeys, Rejected> {
        let s = &self.state;
        let (order_id, product_id) = (line.order_id, line.product_id);
        let order = s.orders.get(&order_id).ok_or(Rejected::UnknownOrder { order_id, product_id })?;
        let at = order.created;
        // A product created after its order (a line added later) joins its first version.
        let (product_key, seller_id) = self
            .version_as_of(&s.products, product_id, at)
            .ok_or(Rejected::UnknownProduct { order_id, product_id })?;
        let (promotion_key, terms) = match line.promotion_id {
            None => (0, None),
            Some(promotion_id) => {
                let (key, (coupon_type, price_treatment)) = self
                    .version_as_of(&s.promotions, promotion_id, at)
                    .ok_or(Rejected::UnknownPromotion { order_id, product_id, promotion_id })?;
                (key, Some(PromotionTerms { coupon_type: coupon_type.into(), price_treatment }))
            }
        };
        let amounts = line_amounts(line.price, line.quantity, terms).map_err(|source| Rejected::Amount {
            order_id,
            product_id,
            source,
        })?;
        let days = order.created_at_us.div_euclid(86_400_000_000);
        let (y, m, d) = civil_from_days(days);
        Ok(FactKeys {
            date_key: (y as u32) * 10_000 + m * 100 + d,
            // 1970-01-01 was a Thursday (4).
            day_of_week: ((days + 3).rem_euclid(7) + 1) as u8,
            product_key,
            seller_key: self.key_as_of(&s.sellers, seller_id, at),
            promotion_key,
            customer_key: self.key_as_of(&s.customers, order.customer_id, at),
            payment_key: self.key_as_of(&s.payments, order.payment_id, at),
            seller_id,
            customer_id: order.customer_id,
            payment_id: order.payment_id,
            discount_unit_price: amounts.discount_unit_price,
        })
    }

    fn upsert_line(&mut self, l: &OrderLine, ctx: Ctx, out: &mut Outputs) -> Result<(), Rejected> {
        let fact = self.build_fact(l)?;
        if let Some(old) = self.state.lines.get((l.order_id, l.product_id)) {
            if old.source == *l && old.fact == fact {
                return Ok(());
            }
        }
        self.replace_line(l, fact, ctx, out);
        Ok(())
    }

    /// Retracts the line's old contribution (if any), applies the new one and emits its fact.
    fn replace_line(&mut self, l: &OrderLine, fact: FactKeys, ctx: Ctx, out: &mut Outputs) {
        let key = (l.order_id, l.product_id);
        if let Some(old) = self.state.lines.remove(key) {
            self.contribute(&old, -1);
        }
        let line = LineState { source: l.clone(), fact };
        self.contribute(&line, 1);
        if self.state.dates.insert(fact.date_key) {
            out.dim_dates.push(dim_date(fact.date_key));
        }
        out.fact_sales.push(fact_row(&line, ctx.version, 0));
        self.state.lines.insert(line);
    }

    fn delete_line(&mut self, order_id: i64, product_id: i64, ctx: Ctx, out: &mut Outputs) {
        if let Some(old) = self.state.lines.remove((order_id, product_id)) {
            self.contribute(&old, -1);
            out.fact_sales.push(fact_row(&old, ctx.version, 1));
        }
    }

    /// Adds (`sign` = 1) or retracts (-1) a line's share of every aggregate. Labels are looked
    /// up only when a group is created (dimension changes keep them current afterwards).
    fn contribute(&mut self, line: &LineState, sign: i64) {
        let State { sellers, products, customers, payments, aggregates: a, .. } = &mut self.state;
        let f = &line.fact;
        let qty = line.source.quantity;
        let amount = Money(line.source.price.0 * qty);
        let discount = Money(f.discount_unit_price.0 * qty);
        let signed = |m: Money| i128::from(sign) * i128::from(m.0);
        a.total.value.add(sign, qty, amount, discount);
        a.touch(AggKey::Total);
        a.by_day[usize::from(f.day_of_week - 1)].value.add(sign, qty, amount, discount);
        a.touch(AggKey::DayOfWeek(f.day_of_week));
        a.sellers
            .entry(f.seller_id)
            .or_insert_with(|| Labeled {
                label: current(sellers, f.seller_id).map(|v| v.attrs.name.clone()).unwrap_or_default(),
                ..Default::default()
            })
            .value
            .add(sign, qty, amount, discount);
        a.touch(AggKey::Seller(f.seller_id));
        let product_id = line.source.product_id;
        a.products
            .entry(product_id)
            .or_insert_with(|| {
                let (label, label2) = current(products, product_id)
                    .map(|v| (v.attrs.row.name.to_string(), v.attrs.category.to_string()))
                    .unwrap_or_default();
                Labeled { label, label2, ..Default::default() }
            })
            .value
            .add(sign, qty, amount, discount);
        a.touch(AggKey::Product(product_id));
        let p = a.payments.entry(f.payment_id).or_insert_with(|| Labeled {
            label: current(payments, f.payment_id).map(|v| v.attrs.method.clone()).unwrap_or_default(),
            ..Default::default()
        });
        p.value.amount += signed(amount);
        a.touch(AggKey::Payment(f.payment_id));
        let c = a.customers.entry(f.customer_id).or_insert_with(|| Labeled {
            label: current(customers, f.customer_id).map(|v| v.attrs.name().to_string()).unwrap_or_default(),
            ..Default::default()
        });
        c.value.quantity += sign * qty;
        c.value.amount += signed(amount);
        a.touch(AggKey::Customer(f.customer_id));
    }
}

/// The open version of a member, if it exists and is not deleted.
fn current<A: Attributes>(dim: &Dim<A>, id: i64) -> Option<&OpenVersion<A>> {
    dim.get(&id).and_then(|m| m.current.as_ref())
}

/// Moves the versions of `dim`'s members opened at or before `horizon`, but the last of them, to
/// `entries` of run `number` ([`Core::evict_versions`]), in id order.
fn move_versions<A: Attributes>(
    dim: &mut Dim<A>,
    horizon: Position,
    number: u64,
    links: &mut BTreeMap<(u8, i64), u64>,
    entries: &mut Vec<((u8, i64), ColdVersions)>,
) -> Result<(), String> {
    let mut ids: Vec<i64> = dim
        .iter()
        .filter(|(_, m)| m.openings.get(1).is_some_and(|(p, _, _)| *p <= horizon))
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable();
    for id in ids {
        let m = dim.get_mut(&id).expect("listed");
        let keep_from = m.openings.partition_point(|(p, _, _)| *p <= horizon) - 1;
        let moved: Vec<(Position, u64, A::Hist)> = m.openings.drain(..keep_from).collect();
        m.openings.shrink_to_fit();
        let openings = postcard::to_allocvec(&moved).map_err(|e| e.to_string())?;
        let previous = links.insert((A::COLD, id), number);
        entries.push(((A::COLD, id), ColdVersions { openings, previous }));
    }
    Ok(())
}

/// Member `id` of a dimension, created without versions if new.
fn member_of<A: Attributes>(dim: &mut Dim<A>, id: i64) -> &mut Member<A> {
    dim.entry(id)
        .or_insert_with(|| Box::new(Member { current: None, openings: vec![], source: A::Source::default() }))
}

/// Ids in ascending order.
fn sorted<'a>(ids: impl Iterator<Item = &'a i64>) -> Vec<i64> {
    let mut ids: Vec<i64> = ids.copied().collect();
    ids.sort_unstable();
    ids
}

fn remove_index(index: &mut BTreeMap<i64, BTreeSet<i64>>, group: i64, id: i64) {
    if let Some(set) = index.get_mut(&group) {
        set.remove(&id);
        if set.is_empty() {
            index.remove(&group);
        }
    }
}

fn row_key(row: &SourceRow) -> (i64, i64) {
    match row {
        SourceRow::Brand(r) => (r.id, 0),
        SourceRow::Category(r) => (r.id, 0),
        SourceRow::Customer(r) => (r.id, 0),
        SourceRow::Seller(r) => (r.id, 0),
        SourceRow::Payment(r) => (r.id, 0),
        SourceRow::Promotion(r) => (r.id, 0),
        SourceRow::Product(r) => (r.id, 0),
        SourceRow::Order(r) => (r.id, 0),
        SourceRow::OrderLine(r) => (r.order_id, r.product_id),
        SourceRow::Inventory(r) => (r.product_id, 0),
        SourceRow::Signal(_) => (0, 0),
    }
}

fn fact_row(line: &LineState, version: u64, is_deleted: u8) -> FactSale {
    let f = &line.fact;
    let l = &line.source;
    FactSale {
        date_key: f.date_key,
        product_key: SurrogateKey(f.product_key),
        seller_key: SurrogateKey(f.seller_key),
        promotion_key: SurrogateKey(f.promotion_key),
        customer_key: SurrogateKey(f.customer_key),
        payment_key: SurrogateKey(f.payment_key),
        order_transaction: l.order_id,
        product_id: l.product_id,
        sales_quantity: l.quantity,
        regular_unit_price: l.price,
        discount_unit_price: f.discount_unit_price,
        net_unit_price: Money(l.price.0 - f.discount_unit_price.0),
        extended_sales_amount: Money(l.price.0 * l.quantity),
        extended_discount_amount: Money(f.discount_unit_price.0 * l.quantity),
        version,
        is_deleted,
    }
}

/// The `dim_dates` row of a YYYYMMDD key.
pub fn dim_date(date_key: u32) -> DimDate {
    let (y, m, d) = (date_key / 10_000, (date_key / 100) % 100, date_key % 100);
    let days = rainbow_schemas::time::days_from_civil(i64::from(y), m, d);
    let dow = ((days + 3).rem_euclid(7) + 1) as u8;
    DimDate {
        date_key,
        date: days.clamp(0, i64::from(u16::MAX)) as u16,
        day_of_week: dow,
        day_name: DAY_NAMES[usize::from(dow - 1)].to_string(),
        day_of_month: d as u8,
        month: m as u8,
        month_name: MONTH_NAMES[(m - 1) as usize].to_string(),
        quarter: ((m - 1) / 3 + 1) as u8,
        year: y as u16,
        is_weekend: u8::from(dow >= 6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_customers_text_is_checked_when_read_back() {
        let attrs = CustomerAttrs::new(["An", "an@x", "", "Huế"]);
        assert_eq!(
            [0, 1, 2, 3].map(|i| attrs.column(i)),
            ["An", "an@x", "", "Huế"],
            "the columns come back as they went in"
        );
        let bytes = postcard::to_allocvec(&attrs).unwrap();
        assert_eq!(postcard::from_bytes::<CustomerAttrs>(&bytes).unwrap(), attrs);
        // Decreasing, past the end, inside a character.
        for ends in [[3, 2, 6], [2, 6, 12], [2, 6, 9]] {
            let bad = CustomerAttrs { text: attrs.text.clone(), ends };
            let bytes = postcard::to_allocvec(&bad).unwrap();
            assert!(postcard::from_bytes::<CustomerAttrs>(&bytes).is_err(), "{ends:?} refused");
        }
    }
}
