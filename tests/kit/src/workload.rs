//! A deterministic simulation of the source database at the seed's shape, producing the change
//! events the CDC would: reference data as a snapshot, then transactions (orders with their
//! lines, catalogue changes, renames, order and line updates and deletes). Tests use it for
//! random workloads with a brute-force oracle; benchmarks for volume.
//!
//! The model keeps what an oracle needs: the live rows and, per product and promotion, the
//! history of the attributes a fact joins as of its order.

use rainbow_processor::event::*;
use rainbow_schemas::money::Money;
use rainbow_schemas::rng::{SplitMix64, Weighted};
use rainbow_schemas::time::civil_from_days;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Sizes and mix. `Default` is a small workload; [`WorkloadConfig::seed_volume`] the seed's.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub customers: i64,
    pub sellers: i64,
    pub brands: i64,
    pub categories: i64,
    pub promotions: i64,
    pub payments: i64,
    pub products: i64,
    /// Catalogue changes per order (the seed: 510k product changes for 220k orders).
    pub product_changes_per_order: f64,
    /// Probability that a step is a rename, an order update or delete, a line change, ...
    pub churn: f64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            customers: 20,
            sellers: 5,
            brands: 4,
            categories: 3,
            promotions: 6,
            payments: 4,
            products: 40,
            product_changes_per_order: 1.0,
            churn: 0.3,
        }
    }
}

impl WorkloadConfig {
    /// The seed's shape: about 100 customers, 19 sellers and brands, 66 promotions, 4 payment
    /// methods, a few thousand products, 2.3 product changes per order.
    pub fn seed_volume() -> WorkloadConfig {
        WorkloadConfig {
            customers: 100,
            sellers: 19,
            brands: 19,
            categories: 12,
            promotions: 66,
            payments: 4,
            products: 3_000,
            product_changes_per_order: 2.3,
            churn: 0.02,
        }
    }
}

/// The simulated database and its change stream.
#[derive(Debug, Clone)]
pub struct Workload {
    cfg: WorkloadConfig,
    rng: SplitMix64,
    popularity: Weighted,
    lsn: u64,
    ts_ms: i64,
    /// Events generated so far: the oracle's notion of "when".
    pub seq: u64,
    pub brands: BTreeMap<i64, Brand>,
    pub categories: BTreeMap<i64, Category>,
    pub customers: BTreeMap<i64, Customer>,
    pub sellers: BTreeMap<i64, Seller>,
    pub payments: BTreeMap<i64, Payment>,
    pub promotions: BTreeMap<i64, Promotion>,
    pub products: BTreeMap<i64, Product>,
    pub orders: BTreeMap<i64, (Order, u64)>,
    pub lines: BTreeMap<(i64, i64), OrderLine>,
    /// Per product: (seq, seller_id) of every change.
    pub product_sellers: BTreeMap<i64, Vec<(u64, i64)>>,
    /// Per promotion: (seq, coupon type, treatment) of every change.
    pub promotion_terms: BTreeMap<i64, Vec<(u64, String, Money)>>,
    next_order: i64,
}

/// One transaction's events, in change order.
pub type Transaction = Vec<ChangeEvent>;

const METHODS: [&str; 4] = ["Credit Card", "Cash on Delivery", "Bank Transfer", "E-Wallet"];

impl Workload {
    pub fn new(cfg: WorkloadConfig, seed: u64) -> Workload {
        let popularity = Weighted::zipf(cfg.products as usize, 1.1);
        Workload {
            cfg,
            rng: SplitMix64::new(seed),
            popularity,
            lsn: 1_000_000,
            ts_ms: 1_722_470_400_000, // 2024-08-01T00:00:00Z
            seq: 0,
            brands: BTreeMap::new(),
            categories: BTreeMap::new(),
            customers: BTreeMap::new(),
            sellers: BTreeMap::new(),
            payments: BTreeMap::new(),
            promotions: BTreeMap::new(),
            products: BTreeMap::new(),
            orders: BTreeMap::new(),
            lines: BTreeMap::new(),
            product_sellers: BTreeMap::new(),
            promotion_terms: BTreeMap::new(),
            next_order: 1,
        }
    }

    fn money(&mut self, lo_vnd: u64, hi_vnd: u64) -> Money {
        Money::from_vnd(self.rng.range(lo_vnd, hi_vnd) as i64 / 1000 * 1000)
    }

    fn promotion_row(&mut self, id: i64) -> Promotion {
        let pct = self.rng.below(2) == 0;
        Promotion {
            id,
            name: format!("Promotion {id}"),
            coupon_type: if pct { "Percentage" } else { "Fixed Amount" }.into(),
            price_treatment: Money::from_vnd(
                if pct { self.rng.range(5, 50) } else { self.rng.range(10, 80) } as i64,
            ),
        }
    }

    fn product_row(&mut self, id: i64) -> Product {
        let price = self.money(20_000, 2_000_000);
        Product {
            id,
            name: format!("Product {id}"),
            price,
            original_price: Money(price.0 + Money::from_vnd(10_000).0),
            rating_average: Money(self.rng.range(300, 500) as i64),
            review_count: self.rng.below(500) as i64,
            sold_count: 0,
            category_id: 1 + self.rng.below(self.cfg.categories as u64) as i64,
            seller_id: 1 + self.rng.below(self.cfg.sellers as u64) as i64,
            brand_id: 1 + self.rng.below(self.cfg.brands as u64) as i64,
            promotion_id: (self.rng.below(3) == 0)
                .then(|| 1 + self.rng.below(self.cfg.promotions as u64) as i64),
        }
    }

    /// The reference data as snapshot rows (`r`), in the CDC's table order, all at one
    /// consistent point.
    pub fn snapshot(&mut self) -> Transaction {
        let cp = self.lsn;
        self.lsn += 1000;
        let mut rows: Vec<SourceRow> = Vec::new();
        for id in 1..=self.cfg.brands {
            rows.push(SourceRow::Brand(Brand { id, name: format!("Brand {id}") }));
        }
        for id in 1..=self.cfg.categories {
            rows.push(SourceRow::Category(Category { id, name: format!("Category {id}") }));
        }
        for id in 1..=self.cfg.customers {
            rows.push(SourceRow::Customer(Customer {
                id,
                name: format!("Customer {id}"),
                email: format!("c{id}@example.com"),
                phone: (id % 3 != 0).then(|| format!("+84 90 {id:07}")),
                address: None,
            }));
        }
        for id in 1..=self.cfg.sellers {
            rows.push(SourceRow::Seller(Seller { id, name: format!("Seller {id}") }));
        }
        for id in 1..=self.cfg.payments {
            rows.push(SourceRow::Payment(Payment { id, method: METHODS[(id as usize - 1) % 4].to_string() }));
        }
        for id in 1..=self.cfg.promotions {
            let p = self.promotion_row(id);
            rows.push(SourceRow::Promotion(p));
        }
        for id in 1..=self.cfg.products {
            let p = self.product_row(id);
            rows.push(SourceRow::Product(p));
        }
        let ts = self.ts_ms;
        rows.into_iter()
            .map(|row| {
                let e = ChangeEvent {
                    op: Op::Read,
                    position: Position::snapshot(cp, table_of(&row)),
                    ts_ms: ts,
                    before: None,
                    after: Some(row),
                };
                self.record(&e);
                e
            })
            .collect()
    }

    /// Applies an event to the model (what the source database holds afterwards).
    fn record(&mut self, e: &ChangeEvent) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(row) = e.after.clone() {
            match row {
                SourceRow::Brand(r) => drop(self.brands.insert(r.id, r)),
                SourceRow::Category(r) => drop(self.categories.insert(r.id, r)),
                SourceRow::Customer(r) => drop(self.customers.insert(r.id, r)),
                SourceRow::Seller(r) => drop(self.sellers.insert(r.id, r)),
                SourceRow::Payment(r) => drop(self.payments.insert(r.id, r)),
                SourceRow::Promotion(r) => {
                    self.promotion_terms.entry(r.id).or_default().push((
                        seq,
                        r.coupon_type.clone(),
                        r.price_treatment,
                    ));
                    self.promotions.insert(r.id, r);
                }
                SourceRow::Product(r) => {
                    self.product_sellers.entry(r.id).or_default().push((seq, r.seller_id));
                    self.products.insert(r.id, r);
                }
                SourceRow::Order(r) => {
                    let created = self.orders.get(&r.id).map_or(seq, |(_, s)| *s);
                    self.orders.insert(r.id, (r, created));
                }
                SourceRow::OrderLine(r) => drop(self.lines.insert((r.order_id, r.product_id), r)),
                SourceRow::Inventory(_) | SourceRow::Signal(_) => {}
            }
        } else if let (Op::Delete, Some(row)) = (e.op, &e.before) {
            match row {
                SourceRow::Order(r) => drop(self.orders.remove(&r.id)),
                SourceRow::OrderLine(r) => drop(self.lines.remove(&(r.order_id, r.product_id))),
                _ => {}
            }
        }
    }

    fn event(
        &mut self,
        commit: u64,
        op: Op,
        before: Option<SourceRow>,
        after: Option<SourceRow>,
    ) -> ChangeEvent {
        self.lsn += 40 + self.rng.below(100);
        let table = table_of(after.as_ref().or(before.as_ref()).expect("a row"));
        let e = ChangeEvent {
            op,
            position: Position { commit, change: self.lsn, table: table.rank() },
            ts_ms: self.ts_ms,
            before,
            after,
        };
        self.record(&e);
        e
    }

    /// The next transaction of the stream.
    pub fn next_transaction(&mut self) -> Transaction {
        // The commit LSN is past every change of the transaction: reserve room for 64 changes.
        self.lsn += 10;
        let start = self.lsn;
        let commit = start + 64 * 140 + 100;
        self.ts_ms += 1 + self.rng.below(2_000) as i64;
        let order_weight = 1.0;
        let product_weight = self.cfg.product_changes_per_order;
        let churn = self.cfg.churn * (order_weight + product_weight);
        let roll = self.rng.unit() * (order_weight + product_weight + churn);
        let tx = if roll < order_weight || self.orders.is_empty() {
            self.new_order(commit)
        } else if roll < order_weight + product_weight {
            let id = 1 + self.popularity.sample(&mut self.rng) as i64;
            let old = self.products[&id].clone();
            let mut new = old.clone();
            match self.rng.below(10) {
                0..=3 => new.sold_count += 1 + self.rng.below(5) as i64,
                4..=6 => new.price = self.money(20_000, 2_000_000),
                7 => new.rating_average = Money(self.rng.range(300, 500) as i64),
                8 => new.promotion_id = Some(1 + self.rng.below(self.cfg.promotions as u64) as i64),
                _ => {} // updated_at only: no tracked attribute changes
            }
            vec![self.event(commit, Op::Update, Some(SourceRow::Product(old)), Some(SourceRow::Product(new)))]
        } else {
            self.churn(commit)
        };
        self.lsn = commit + 50;
        tx
    }

    fn new_order(&mut self, commit: u64) -> Transaction {
        let id = self.next_order;
        self.next_order += 1;
        let order = Order {
            id,
            customer_id: 1 + self.rng.below(self.cfg.customers as u64) as i64,
            payment_id: 1 + self.rng.below(self.cfg.payments as u64) as i64,
            created_at_us: self.ts_ms * 1000,
        };
        let mut tx = vec![self.event(commit, Op::Create, None, Some(SourceRow::Order(order)))];
        let lines = 1 + self.rng.below(10) as usize;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..lines {
            let pid = 1 + self.popularity.sample(&mut self.rng) as i64;
            if !seen.insert(pid) {
                continue;
            }
            let p = &self.products[&pid];
            let line = OrderLine {
                order_id: id,
                product_id: pid,
                quantity: 1 + self.rng.below(4) as i64,
                price: p.price,
                promotion_id: p.promotion_id,
            };
            tx.push(self.event(commit, Op::Create, None, Some(SourceRow::OrderLine(line))));
        }
        tx
    }

    /// A member of a dimension with ids 1..=n (never deleted by the workload).
    fn pick_id(&mut self, n: i64) -> i64 {
        1 + self.rng.below(n as u64) as i64
    }

    /// A live order, if one is found in a few tries.
    fn pick_order(&mut self) -> Option<i64> {
        (0..8)
            .map(|_| 1 + self.rng.below((self.next_order - 1).max(1) as u64) as i64)
            .find(|id| self.orders.contains_key(id))
    }

    /// A live order line.
    fn pick_line(&mut self) -> Option<(i64, i64)> {
        let id = self.pick_order()?;
        self.lines.range((id, i64::MIN)..=(id, i64::MAX)).next().map(|(k, _)| *k)
    }

    fn churn(&mut self, commit: u64) -> Transaction {
        let u = |b: SourceRow, a: SourceRow| (Op::Update, Some(b), Some(a));
        let change = match self.rng.below(11) {
            0 => {
                let id = self.pick_id(self.cfg.customers);
                let old = self.customers[&id].clone();
                let mut new = old.clone();
                if self.rng.below(2) == 0 {
                    new.name = format!("{} R{}", old.name.split(" R").next().unwrap_or_default(), self.seq);
                } else {
                    new.email = format!("c{id}.{}@example.com", self.seq);
                }
                u(SourceRow::Customer(old), SourceRow::Customer(new))
            }
            1 => {
                let id = self.pick_id(self.cfg.customers);
                let c = self.customers[&id].clone();
                u(SourceRow::Customer(c.clone()), SourceRow::Customer(c)) // touch only
            }
            2 => {
                let id = self.pick_id(self.cfg.sellers);
                let old = self.sellers[&id].clone();
                let new = Seller { id, name: format!("Seller {id} v{}", self.seq) };
                u(SourceRow::Seller(old), SourceRow::Seller(new))
            }
            3 => {
                let id = self.pick_id(self.cfg.brands);
                let old = self.brands[&id].clone();
                let new = Brand { id, name: format!("Brand {id} v{}", self.seq) };
                u(SourceRow::Brand(old), SourceRow::Brand(new))
            }
            4 => {
                let id = self.pick_id(self.cfg.categories);
                let old = self.categories[&id].clone();
                let new = Category { id, name: format!("Category {id} v{}", self.seq) };
                u(SourceRow::Category(old), SourceRow::Category(new))
            }
            5 => {
                let id = self.pick_id(self.cfg.promotions);
                let old = self.promotions[&id].clone();
                let mut new = self.promotion_row(id);
                new.name = old.name.clone();
                u(SourceRow::Promotion(old), SourceRow::Promotion(new))
            }
            6 => {
                let id = self.pick_id(self.cfg.payments);
                let old = self.payments[&id].clone();
                let new = Payment { id, method: format!("{} v{}", METHODS[(id as usize - 1) % 4], self.seq) };
                u(SourceRow::Payment(old), SourceRow::Payment(new))
            }
            7 => {
                // An order changes its payment method or customer.
                let Some(id) = self.pick_order() else { return self.new_order(commit) };
                let old = self.orders[&id].0.clone();
                let mut new = old.clone();
                if self.rng.below(2) == 0 {
                    new.payment_id = 1 + self.rng.below(self.cfg.payments as u64) as i64;
                } else {
                    new.customer_id = 1 + self.rng.below(self.cfg.customers as u64) as i64;
                }
                u(SourceRow::Order(old), SourceRow::Order(new))
            }
            8 => {
                // An order is cancelled: its lines go first (as ON DELETE CASCADE writes them).
                let Some(id) = self.pick_order() else { return self.new_order(commit) };
                let order = self.orders[&id].0.clone();
                let lines: Vec<OrderLine> =
                    self.lines.range((id, i64::MIN)..=(id, i64::MAX)).map(|(_, l)| l.clone()).collect();
                let mut tx = vec![self.event(commit, Op::Delete, Some(SourceRow::Order(order)), None)];
                for l in lines {
                    tx.push(self.event(commit, Op::Delete, Some(SourceRow::OrderLine(l)), None));
                }
                return tx;
            }
            9 => {
                let Some(key) = self.pick_line() else { return self.new_order(commit) };
                let old = self.lines[&key].clone();
                if self.rng.below(2) == 0 {
                    (Op::Delete, Some(SourceRow::OrderLine(old)), None)
                } else {
                    let new = OrderLine { quantity: 1 + self.rng.below(6) as i64, ..old.clone() };
                    u(SourceRow::OrderLine(old), SourceRow::OrderLine(new))
                }
            }
            _ => {
                // A line added to an existing order, at today's price.
                let Some(id) = self.pick_order() else { return self.new_order(commit) };
                let pid = 1 + self.popularity.sample(&mut self.rng) as i64;
                if self.lines.contains_key(&(id, pid)) {
                    return self.new_order(commit);
                }
                let p = &self.products[&pid];
                let line = OrderLine {
                    order_id: id,
                    product_id: pid,
                    quantity: 1,
                    price: p.price,
                    promotion_id: p.promotion_id,
                };
                (Op::Create, None, Some(SourceRow::OrderLine(line)))
            }
        };
        let (op, before, after) = change;
        vec![self.event(commit, op, before, after)]
    }
}

pub fn table_of(row: &SourceRow) -> Table {
    match row {
        SourceRow::Brand(_) => Table::Brands,
        SourceRow::Category(_) => Table::Categories,
        SourceRow::Customer(_) => Table::Customers,
        SourceRow::Seller(_) => Table::Sellers,
        SourceRow::Payment(_) => Table::Payments,
        SourceRow::Promotion(_) => Table::Promotions,
        SourceRow::Product(_) => Table::Products,
        SourceRow::Order(_) => Table::Orders,
        SourceRow::OrderLine(_) => Table::Orderdetails,
        SourceRow::Inventory(_) => Table::Inventories,
        SourceRow::Signal(_) => Table::Signals,
    }
}

fn money_json(m: Money) -> Value {
    Value::String(m.to_string())
}

fn row_json(row: &SourceRow) -> Value {
    match row {
        SourceRow::Brand(r) => json!({"id": r.id, "name": r.name}),
        SourceRow::Category(r) => json!({"id": r.id, "name": r.name}),
        SourceRow::Customer(r) => {
            json!({"id": r.id, "name": r.name, "email": r.email, "phone": r.phone, "address": r.address})
        }
        SourceRow::Seller(r) => json!({"id": r.id, "name": r.name}),
        SourceRow::Signal(r) => json!({"id": r.id, "type": r.kind, "data": r.data}),
        SourceRow::Payment(r) => json!({"id": r.id, "method": r.method}),
        SourceRow::Promotion(r) => json!({"id": r.id, "name": r.name, "coupon_type": r.coupon_type,
            "price_treatment": money_json(r.price_treatment)}),
        SourceRow::Product(r) => json!({"id": r.id, "name": r.name, "price": money_json(r.price),
            "original_price": money_json(r.original_price), "rating_average": money_json(r.rating_average),
            "review_count": r.review_count, "sold_count": r.sold_count, "category_id": r.category_id,
            "seller_id": r.seller_id, "brand_id": r.brand_id, "promotion_id": r.promotion_id}),
        SourceRow::Order(r) => {
            let secs = r.created_at_us.div_euclid(1_000_000);
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let t = secs.rem_euclid(86_400);
            let created = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
                t / 3600,
                t / 60 % 60,
                t % 60,
                r.created_at_us.rem_euclid(1_000_000)
            );
            json!({"id": r.id, "customer_id": r.customer_id, "payment_id": r.payment_id, "created_at": created})
        }
        SourceRow::OrderLine(r) => json!({"order_id": r.order_id, "product_id": r.product_id,
            "quantity": r.quantity, "price": money_json(r.price), "promotion_id": r.promotion_id}),
        SourceRow::Inventory(r) => json!({"product_id": r.product_id, "quantity": r.quantity}),
    }
}

/// The partition (of `partitions`) of an event's record as the CDC routes them at its defaults
/// (`cdc.partition_by`): an order by its id and an order line by its order, so that both share a
/// partition number (what the processor's scale-out and the sharded replay rely on); any other
/// record by its `key`. A plain modulo, not Kafka's murmur2: only the sharing matters here.
pub fn partition_of(e: &ChangeEvent, key: &[u8], partitions: i32) -> i32 {
    let n = i64::from(partitions.max(1));
    match e.after.as_ref().or(e.before.as_ref()) {
        Some(SourceRow::Order(o)) => o.id.rem_euclid(n) as i32,
        Some(SourceRow::OrderLine(l)) => l.order_id.rem_euclid(n) as i32,
        _ => (key.iter().map(|b| i64::from(*b)).sum::<i64>() % n) as i32,
    }
}

/// The event as Rainbow's CDC writes it (JSON without the schema wrapper, decimals as strings):
/// (Kafka key, Kafka value).
pub fn to_debezium_json(e: &ChangeEvent) -> (Vec<u8>, Vec<u8>) {
    let table = e.table();
    let row = e.after.as_ref().or(e.before.as_ref()).expect("a row");
    let key = match row {
        SourceRow::OrderLine(l) => json!({"order_id": l.order_id, "product_id": l.product_id}),
        SourceRow::Inventory(i) => json!({"product_id": i.product_id}),
        other => json!({"id": row_json(other)["id"]}),
    };
    let sequence = e.position.commit_position().sequence().to_text();
    let value = json!({
        "before": e.before.as_ref().map(row_json),
        "after": e.after.as_ref().map(row_json),
        "source": {
            "version": "rainbow-0.1.0", "connector": "postgresql", "name": "rainbow", "ts_ms": e.ts_ms,
            "snapshot": if e.position.is_snapshot() { "true" } else { "false" }, "db": "rainbow",
            "sequence": sequence, "schema": "public", "table": table.name(), "txId": 0,
            "lsn": e.position.change, "xmin": null
        },
        "op": e.op.code(),
        "ts_ms": e.ts_ms,
    });
    (serde_json::to_vec(&key).expect("json"), serde_json::to_vec(&value).expect("json"))
}

/// Money columns of the workload's tables (the others are integers, text and `created_at`).
const MONEY_FIELDS: [&str; 4] = ["price", "original_price", "rating_average", "price_treatment"];

/// The event as Rainbow's CDC writes it at its defaults: with the Connect schema wrapper and
/// `precise` decimals (base64 of the big-endian unscaled value, scale 2 in the schema):
/// (Kafka key, Kafka value).
pub fn to_debezium_json_with_schema(e: &ChangeEvent) -> (Vec<u8>, Vec<u8>) {
    use base64::Engine;
    let (key, value) = to_debezium_json(e);
    let mut value: Value = serde_json::from_slice(&value).expect("json");
    let row = e.after.as_ref().or(e.before.as_ref()).expect("a row");
    let mut fields = Vec::new();
    for (name, v) in row_json(row).as_object().expect("a row is an object") {
        let f = if MONEY_FIELDS.contains(&name.as_str()) {
            json!({"type": "bytes", "optional": true, "name": "org.apache.kafka.connect.data.Decimal",
                   "version": 1, "parameters": {"scale": "2", "connect.decimal.precision": "18"}, "field": name})
        } else if name == "created_at" {
            json!({"type": "string", "optional": true, "name": "io.debezium.time.ZonedTimestamp", "version": 1,
                   "field": name})
        } else if v.is_string() || (v.is_null() && matches!(name.as_str(), "phone" | "address" | "data")) {
            json!({"type": "string", "optional": true, "field": name})
        } else {
            json!({"type": "int64", "optional": true, "field": name})
        };
        fields.push(f);
    }
    for (side, row) in [("before", &e.before), ("after", &e.after)] {
        let (Some(Value::Object(r)), Some(row)) = (value.get_mut(side), row) else { continue };
        let amounts: Vec<(&str, Money)> = match row {
            SourceRow::Promotion(p) => vec![("price_treatment", p.price_treatment)],
            SourceRow::Product(p) => {
                vec![
                    ("price", p.price),
                    ("original_price", p.original_price),
                    ("rating_average", p.rating_average),
                ]
            }
            SourceRow::OrderLine(l) => vec![("price", l.price)],
            _ => Vec::new(),
        };
        for (name, m) in amounts {
            let bytes = m.0.to_be_bytes();
            // The shortest two's complement form, as Connect writes it.
            let mut skip = 0;
            while skip < 7
                && ((bytes[skip] == 0 && bytes[skip + 1] & 0x80 == 0)
                    || (bytes[skip] == 0xff && bytes[skip + 1] & 0x80 != 0))
            {
                skip += 1;
            }
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes[skip..]);
            r.insert(name.to_string(), Value::String(b64));
        }
    }
    let row_schema =
        |side: &str| json!({"type": "struct", "fields": fields, "optional": true, "field": side});
    let schema = json!({"type": "struct", "optional": false, "fields": [
        row_schema("before"), row_schema("after"),
        {"type": "struct", "fields": [], "optional": false, "field": "source"},
        {"type": "string", "optional": false, "field": "op"},
        {"type": "int64", "optional": true, "field": "ts_ms"}]});
    let wrapped = json!({"schema": schema, "payload": value});
    (key, serde_json::to_vec(&wrapped).expect("json"))
}
