//! The processor core without servers: SCD2 transitions, facts as of their order, retractions,
//! every aggregate against a brute-force recomputation on random workloads, independence from
//! topic interleaving, determinism and checkpoint round trips.

use proptest::prelude::*;
use rainbow_processor::core::{ColdSettings, Core, Rejected};
use rainbow_processor::event::*;
use rainbow_processor::merge::{InputName, Merger};
use rainbow_schemas::money::Money;
use rainbow_schemas::pricing::{line_amounts, PromotionTerms};
use rainbow_schemas::rng::SplitMix64;
use rainbow_schemas::shape::Outputs;
use rainbow_schemas::shape::Tables;
use rainbow_schemas::shape::OPEN_VALID_TO;
use rainbow_testkit::workload::{table_of, Workload, WorkloadConfig};
use std::collections::BTreeMap;

/// Feeds events in order and collects the collapsed tables.
struct Feed {
    core: Core,
    out: Outputs,
    tables: Tables,
}

impl Feed {
    fn new() -> Feed {
        Feed { core: Core::new(0), out: Outputs::default(), tables: Tables::default() }
    }

    fn apply(&mut self, e: &ChangeEvent) -> Outputs {
        let mut out = Outputs::default();
        self.core.apply(e, &mut out).unwrap_or_else(|r| panic!("rejected {e:?}: {r}"));
        self.out.append(&mut out.clone());
        self.tables.absorb(&mut out.clone());
        out
    }

    fn seal(&mut self) -> Outputs {
        let mut out = Outputs::default();
        self.core.seal_before(Position { commit: u64::MAX, change: 0, table: 0 }, &mut out);
        self.out.append(&mut out.clone());
        self.tables.absorb(&mut out.clone());
        out
    }
}

/// Builds events at increasing positions: one transaction per `tx()`.
struct Script {
    commit: u64,
    change: u64,
    ts_s: i64,
}

impl Script {
    fn new() -> Script {
        Script { commit: 0, change: 1000, ts_s: 1_722_470_400 }
    }

    fn tx(&mut self) {
        self.commit = self.change + 10_000;
        self.change = self.commit - 9_000;
        self.ts_s += 60;
    }

    fn ev(&mut self, op: Op, before: Option<SourceRow>, after: Option<SourceRow>) -> ChangeEvent {
        self.change += 10;
        let table = table_of(after.as_ref().or(before.as_ref()).unwrap());
        let commit = if op == Op::Read { 0 } else { self.commit };
        ChangeEvent {
            op,
            position: Position { commit, change: self.change, table: table.rank() },
            ts_ms: self.ts_s * 1000,
            before,
            after,
        }
    }

    fn c(&mut self, row: SourceRow) -> ChangeEvent {
        self.ev(Op::Create, None, Some(row))
    }

    fn u(&mut self, before: SourceRow, after: SourceRow) -> ChangeEvent {
        self.ev(Op::Update, Some(before), Some(after))
    }

    fn d(&mut self, before: SourceRow) -> ChangeEvent {
        self.ev(Op::Delete, Some(before), None)
    }
}

fn customer(id: i64, name: &str, email: &str) -> SourceRow {
    SourceRow::Customer(Customer { id, name: name.into(), email: email.into(), phone: None, address: None })
}

fn product(id: i64, price_vnd: i64, seller_id: i64, brand_id: i64, promotion_id: Option<i64>) -> Product {
    Product {
        id,
        name: format!("P{id}"),
        price: Money::from_vnd(price_vnd),
        original_price: Money::from_vnd(price_vnd),
        rating_average: Money(450),
        review_count: 1,
        sold_count: 0,
        category_id: 1,
        seller_id,
        brand_id,
        promotion_id,
    }
}

fn line(
    order_id: i64,
    product_id: i64,
    quantity: i64,
    price_vnd: i64,
    promotion_id: Option<i64>,
) -> SourceRow {
    SourceRow::OrderLine(OrderLine {
        order_id,
        product_id,
        quantity,
        price: Money::from_vnd(price_vnd),
        promotion_id,
    })
}

fn order(id: i64, customer_id: i64, payment_id: i64, ts_s: i64) -> SourceRow {
    SourceRow::Order(Order { id, customer_id, payment_id, created_at_us: ts_s * 1_000_000 })
}

/// Reference data every scenario starts from: 2 brands, 1 category, 2 sellers, 2 customers,
/// 1 payment, promotions 1 (10 %) and 2 (30k VND fixed), products 1 (brand 1) and 2 (brand 2).
fn reference(s: &mut Script, feed: &mut Feed) {
    s.tx();
    let rows = vec![
        SourceRow::Brand(Brand { id: 1, name: "Acme".into() }),
        SourceRow::Brand(Brand { id: 2, name: "Zed".into() }),
        SourceRow::Category(Category { id: 1, name: "Phones".into() }),
        customer(1, "An", "an@x"),
        customer(2, "Binh", "binh@x"),
        SourceRow::Seller(Seller { id: 1, name: "S1".into() }),
        SourceRow::Seller(Seller { id: 2, name: "S2".into() }),
        SourceRow::Payment(Payment { id: 1, method: "Cash".into() }),
        SourceRow::Promotion(Promotion {
            id: 1,
            name: "Ten".into(),
            coupon_type: "Percentage".into(),
            price_treatment: Money::from_vnd(10),
        }),
        SourceRow::Promotion(Promotion {
            id: 2,
            name: "Fixed".into(),
            coupon_type: "Fixed Amount".into(),
            price_treatment: Money::from_vnd(30),
        }),
        SourceRow::Product(product(1, 250_000, 1, 1, None)),
        SourceRow::Product(product(2, 100_000, 2, 2, Some(1))),
    ];
    for r in rows {
        let e = s.c(r);
        feed.apply(&e);
    }
}

#[test]
fn scd2_opens_closes_and_ignores_untracked_updates() {
    let (mut s, mut feed) = (Script::new(), Feed::new());
    reference(&mut s, &mut feed);
    let first_key = feed.tables.dim_customers.rows().find(|c| c.customer_id == 1).unwrap().customer_key;

    // A tracked change closes the version at the commit time and opens a new one.
    s.tx();
    let e = s.u(customer(1, "An", "an@x"), customer(1, "An Nguyen", "an@x"));
    let out = feed.apply(&e);
    assert_eq!(out.dim_customers.len(), 2);
    let (closed, opened) = (&out.dim_customers[0], &out.dim_customers[1]);
    assert_eq!((closed.customer_key, closed.is_current, closed.valid_to), (first_key, 0, s.ts_s as u32));
    assert_eq!((opened.name.as_str(), opened.is_current, opened.valid_to), ("An Nguyen", 1, OPEN_VALID_TO));
    assert_eq!(opened.valid_from, closed.valid_to);
    assert_ne!(opened.customer_key, closed.customer_key);
    assert_eq!(opened.version, e.position.commit);

    // An update of untracked columns only (updated_at) opens nothing.
    s.tx();
    let e = s.u(customer(1, "An Nguyen", "an@x"), customer(1, "An Nguyen", "an@x"));
    assert!(feed.apply(&e).is_empty());

    // A delete closes the version; a re-insert opens a new one.
    s.tx();
    let e = s.d(customer(2, "Binh", "binh@x"));
    let out = feed.apply(&e);
    assert_eq!(out.dim_customers.len(), 1);
    assert_eq!((out.dim_customers[0].is_current, out.dim_customers[0].valid_to), (0, s.ts_s as u32));
    let e = s.c(customer(2, "Binh", "binh@x"));
    assert_eq!(feed.apply(&e).dim_customers[0].is_current, 1);

    let versions: Vec<_> = feed.tables.dim_customers.rows().filter(|c| c.customer_id == 1).collect();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions.iter().filter(|v| v.is_current == 1).count(), 1);
    assert_eq!(feed.tables.dim_customers.rows().filter(|c| c.customer_id == 2).count(), 2);
}

/// A change timed before the open version began (a snapshot row is stamped when it is read,
/// after changes streamed right behind its consistent point; commit times are not strictly in
/// LSN order) takes effect when that version began: no version ends before it begins, and the
/// next one starts where it ends. Each such change is counted for the metrics.
#[test]
fn a_change_timed_before_its_open_version_never_inverts_the_interval() {
    let (mut s, mut feed) = (Script::new(), Feed::new());
    reference(&mut s, &mut feed);
    s.tx();
    let began = s.ts_s + 300;
    s.ts_s = began;
    feed.apply(&s.c(customer(7, "Chi", "chi@x")));
    feed.core.take_moved_starts();
    // A change timed after the open version began is not counted, nor one that changes nothing.
    s.tx();
    s.ts_s = began - 60;
    feed.apply(&s.u(customer(7, "Chi", "chi@x"), customer(7, "Chi", "chi@x")));
    assert_eq!(feed.core.take_moved_starts(), 0);
    // Later in the log, earlier by its time.
    s.tx();
    s.ts_s = began - 240;
    let e = s.u(customer(7, "Chi", "chi@x"), customer(7, "Chi Le", "chi@x"));
    let out = feed.apply(&e);
    let (closed, opened) = (&out.dim_customers[0], &out.dim_customers[1]);
    assert_eq!((closed.valid_from, closed.valid_to), (began as u32, began as u32));
    assert_eq!((opened.valid_from, opened.valid_to), (began as u32, OPEN_VALID_TO));
    assert_eq!(feed.core.take_moved_starts(), 1);
    // A delete timed before the open version closes it at the version's start too.
    s.tx();
    s.ts_s = began - 120;
    let e = s.d(customer(7, "Chi Le", "chi@x"));
    assert_eq!(feed.apply(&e).dim_customers[0].valid_to, began as u32);
    // A later change takes its own commit time.
    s.tx();
    s.ts_s = began + 120;
    let e = s.c(customer(7, "Chi", "chi@x"));
    assert_eq!(feed.apply(&e).dim_customers[0].valid_from, (began + 120) as u32);
    assert_eq!(feed.core.take_moved_starts(), 1, "the delete's, not the later change's");
    assert_eq!(feed.core.take_moved_starts(), 0, "taking the count resets it");
}

#[test]
fn renaming_a_brand_versions_its_products_only() {
    let (mut s, mut feed) = (Script::new(), Feed::new());
    reference(&mut s, &mut feed);
    s.tx();
    let e = s.u(
        SourceRow::Brand(Brand { id: 1, name: "Acme".into() }),
        SourceRow::Brand(Brand { id: 1, name: "Acme Corp".into() }),
    );
    let out = feed.apply(&e);
    assert_eq!(out.dim_products.len(), 2, "close + open of product 1, nothing for product 2");
    assert!(out.dim_products.iter().all(|p| p.product_id == 1));
    assert_eq!(&*out.dim_products[1].brand, "Acme Corp");
    assert_eq!(&*out.dim_products[0].brand, "Acme");
    // Category renames cascade the same way.
    let e = s.u(
        SourceRow::Category(Category { id: 1, name: "Phones".into() }),
        SourceRow::Category(Category { id: 1, name: "Mobile".into() }),
    );
    let out = feed.apply(&e);
    assert_eq!(out.dim_products.len(), 4);
    let current: Vec<_> = feed.tables.dim_products.rows().filter(|p| p.is_current == 1).collect();
    assert_eq!(current.len(), 2);
    assert!(current.iter().all(|p| &*p.category == "Mobile"));
}

/// A product that moves to another brand leaves the old brand's renames and joins the new one's;
/// a deleted product is versioned by no rename, and joins them again once re-inserted.
#[test]
fn a_product_follows_its_brand_through_moves_deletes_and_reinserts() {
    let (mut s, mut feed) = (Script::new(), Feed::new());
    reference(&mut s, &mut feed);
    let rename = |s: &mut Script, id: i64, from: &str, to: &str| {
        s.tx();
        s.u(
            SourceRow::Brand(Brand { id, name: from.into() }),
            SourceRow::Brand(Brand { id, name: to.into() }),
        )
    };
    let versioned = |out: &Outputs| -> Vec<(i64, u8, String)> {
        out.dim_products.iter().map(|p| (p.product_id, p.is_current, p.brand.to_string())).collect()
    };
    // Product 1 moves from brand 1 (Acme) to brand 2 (Zed).
    s.tx();
    let e = s.u(
        SourceRow::Product(product(1, 250_000, 1, 1, None)),
        SourceRow::Product(product(1, 250_000, 1, 2, None)),
    );
    assert_eq!(versioned(&feed.apply(&e)), [(1, 0, "Acme".into()), (1, 1, "Zed".into())]);
    let e = rename(&mut s, 1, "Acme", "Acme Corp");
    assert!(feed.apply(&e).dim_products.is_empty(), "brand 1 has no product left");
    let e = rename(&mut s, 2, "Zed", "Zed Ltd");
    assert_eq!(
        versioned(&feed.apply(&e)),
        [(1, 0, "Zed".into()), (1, 1, "Zed Ltd".into()), (2, 0, "Zed".into()), (2, 1, "Zed Ltd".into())]
    );
    // Deleted, product 1 is not versioned by its brand's rename; re-inserted into brand 1, it
    // takes that brand's current name and its renames.
    s.tx();
    let e = s.d(SourceRow::Product(product(1, 250_000, 1, 2, None)));
    assert_eq!(versioned(&feed.apply(&e)), [(1, 0, "Zed Ltd".into())]);
    let e = rename(&mut s, 2, "Zed Ltd", "Zed Group");
    assert_eq!(versioned(&feed.apply(&e)), [(2, 0, "Zed Ltd".into()), (2, 1, "Zed Group".into())]);
    s.tx();
    let e = s.c(SourceRow::Product(product(1, 250_000, 1, 1, None)));
    assert_eq!(versioned(&feed.apply(&e)), [(1, 1, "Acme Corp".into())]);
    let e = rename(&mut s, 1, "Acme Corp", "Acme");
    assert_eq!(versioned(&feed.apply(&e)), [(1, 0, "Acme Corp".into()), (1, 1, "Acme".into())]);
    let current: Vec<_> = feed.tables.dim_products.rows().filter(|p| p.is_current == 1).collect();
    assert_eq!(current.len(), 2);
}

/// Every tracked column of a customer reaches its row, absent ones as empty text, and a change
/// of any one of them versions the customer.
#[test]
fn a_customers_columns_reach_its_rows() {
    let (mut s, mut feed) = (Script::new(), Feed::new());
    reference(&mut s, &mut feed);
    let full = |phone: &str| {
        SourceRow::Customer(Customer {
            id: 9,
            name: "Dung".into(),
            email: "dung@x".into(),
            phone: Some(phone.into()),
            address: Some("12 Lê Lợi, Huế".into()),
        })
    };
    s.tx();
    let out = feed.apply(&s.c(full("+84 1")));
    let c = &out.dim_customers[0];
    assert_eq!(
        (c.name.as_str(), c.email.as_str(), c.phone.as_str(), c.address.as_str()),
        ("Dung", "dung@x", "+84 1", "12 Lê Lợi, Huế")
    );
    s.tx();
    let out = feed.apply(&s.u(full("+84 1"), full("+84 2")));
    let phones: Vec<_> = out.dim_customers.iter().map(|c| (c.phone.as_str(), c.is_current)).collect();
    assert_eq!(phones, [("+84 1", 0), ("+84 2", 1)]);
    let out = feed.apply(&s.c(customer(10, "", "")));
    let c = &out.dim_customers[0];
    assert_eq!((c.name.as_str(), c.email.as_str(), c.phone.as_str(), c.address.as_str()), ("", "", "", ""));
}

#[test]
fn facts_join_the_versions_of_their_orders_commit() {
    let (mut s, mut feed) = (Script::new(), Feed::new());
    reference(&mut s, &mut feed);
    let key_of = |feed: &Feed, id: i64| {
        feed.tables.dim_products.rows().find(|p| p.product_id == id && p.is_current == 1).unwrap().product_key
    };
    let seller_key =
        |feed: &Feed, id: i64| feed.tables.dim_sellers.rows().find(|x| x.seller_id == id).unwrap().seller_key;
    let v1 = key_of(&feed, 1);

    s.tx();
    let o1 = s.c(order(1, 1, 1, s.ts_s));
    feed.apply(&o1);
    let l1 = s.c(line(1, 1, 2, 250_000, None));
    feed.apply(&l1);

    // Product 1 moves to seller 2 and changes price between the two orders.
    s.tx();
    let mut p2 = product(1, 300_000, 2, 1, None);
    p2.name = "P1".into();
    let e = s.u(SourceRow::Product(product(1, 250_000, 1, 1, None)), SourceRow::Product(p2));
    feed.apply(&e);
    let v2 = key_of(&feed, 1);
    assert_ne!(v1, v2);

    s.tx();
    let o2 = s.c(order(2, 2, 1, s.ts_s));
    feed.apply(&o2);
    feed.apply(&s.c(line(2, 1, 1, 300_000, None)));
    // A line added to order 1 now still joins the version of order 1's commit.
    s.tx();
    feed.apply(&s.c(line(1, 2, 1, 100_000, Some(1))));
    feed.seal();

    let fact = |o: i64, p: i64| feed.tables.fact_sales.0[&(o, p)].clone();
    assert_eq!(fact(1, 1).product_key, v1);
    assert_eq!(fact(1, 1).seller_key, seller_key(&feed, 1));
    assert_eq!(fact(2, 1).product_key, v2);
    assert_eq!(fact(2, 1).seller_key, seller_key(&feed, 2));
    assert_eq!(
        fact(1, 2).product_key,
        feed.tables.dim_products.rows().find(|p| p.product_id == 2).unwrap().product_key
    );
    // 10 % of 100,000.
    assert_eq!(fact(1, 2).discount_unit_price, Money::from_vnd(10_000));
    assert_eq!(fact(1, 2).net_unit_price, Money::from_vnd(90_000));

    // Top sellers: order 1's product-1 line counts for seller 1, order 2's for seller 2.
    let sellers: BTreeMap<i64, (i64, i128)> = feed
        .tables
        .agg_top_sellers
        .rows()
        .map(|r| (r.seller_id, (r.total_sales_quantity, r.total_sales_amount.0)))
        .collect();
    assert_eq!(sellers[&1], (2, Money::from_vnd(500_000).0 as i128));
    assert_eq!(sellers[&2], (2, Money::from_vnd(400_000).0 as i128));
}

#[test]
fn updated_and_deleted_lines_retract_their_contribution() {
    let (mut s, mut feed) = (Script::new(), Feed::new());
    reference(&mut s, &mut feed);
    s.tx();
    feed.apply(&s.c(order(1, 1, 1, s.ts_s)));
    feed.apply(&s.c(line(1, 2, 2, 100_000, Some(2))));
    feed.seal();
    let total = |feed: &Feed| {
        let t = feed.tables.agg_total_sales.rows().next().unwrap();
        (t.total_sales_quantity, t.total_sales_amount.0, t.total_discount_amount.0)
    };
    // Fixed Amount 30 → 30,000 VND off each unit.
    assert_eq!(total(&feed), (2, 20_000_000, 6_000_000));

    s.tx();
    let e = s.u(line(1, 2, 2, 100_000, Some(2)), line(1, 2, 5, 100_000, Some(2)));
    let out = feed.apply(&e);
    assert_eq!(out.fact_sales.len(), 1);
    assert_eq!(out.fact_sales[0].extended_sales_amount, Money::from_vnd(500_000));
    feed.seal();
    assert_eq!(total(&feed), (5, 50_000_000, 15_000_000));
    let ranking = feed.tables.agg_customer_ranking.0[&(0, 1)].clone();
    assert_eq!((ranking.order_count, ranking.total_sales_quantity), (1, 5));

    s.tx();
    let e = s.d(line(1, 2, 5, 100_000, Some(2)));
    let out = feed.apply(&e);
    assert_eq!(out.fact_sales[0].is_deleted, 1);
    feed.seal();
    assert_eq!(total(&feed), (0, 0, 0));
    assert_eq!(feed.tables.live_facts().count(), 0);
    // The order itself still counts as an order of its customer until it is deleted.
    assert_eq!(feed.tables.agg_customer_ranking.0[&(0, 1)].order_count, 1);
    s.tx();
    feed.apply(&s.d(order(1, 1, 1, 0)));
    feed.seal();
    assert_eq!(feed.tables.agg_customer_ranking.0[&(0, 1)].order_count, 0);
    assert_eq!(feed.tables.agg_payment_methods.0[&(0, 1)].order_count, 0);
}

#[test]
fn refuses_lines_it_cannot_join_and_changes_nothing() {
    let (mut s, mut feed) = (Script::new(), Feed::new());
    reference(&mut s, &mut feed);
    let before = feed.core.clone();
    s.tx();
    let e = s.c(line(9, 1, 1, 1_000, None));
    let mut out = Outputs::default();
    assert_eq!(feed.core.apply(&e, &mut out), Err(Rejected::UnknownOrder { order_id: 9, product_id: 1 }));
    assert!(out.is_empty());
    assert_eq!(feed.core, before);
    feed.apply(&s.c(order(9, 1, 1, s.ts_s)));
    let e = s.c(line(9, 1, 1, 1_000, Some(77)));
    assert!(matches!(
        feed.core.apply(&e, &mut out),
        Err(Rejected::UnknownPromotion { promotion_id: 77, .. })
    ));
    let late = ChangeEvent { position: Position { commit: 1, change: 1, table: 0 }, ..e };
    assert!(matches!(feed.core.apply(&late, &mut out), Err(Rejected::OutOfOrder { .. })));
}

/// A workload's events: snapshot, then `txs` transactions.
fn workload(seed: u64, txs: usize) -> (Workload, Vec<Vec<ChangeEvent>>) {
    let mut w = Workload::new(WorkloadConfig::default(), seed);
    let mut all = vec![w.snapshot()];
    for _ in 0..txs {
        all.push(w.next_transaction());
    }
    (w, all)
}

fn run_in_order(txs: &[Vec<ChangeEvent>]) -> Feed {
    let mut feed = Feed::new();
    for e in txs.iter().flatten() {
        feed.apply(e);
    }
    feed.seal();
    feed
}

#[derive(Debug, Default, PartialEq)]
struct Expected {
    total: (i64, i128, i128),
    by_day: BTreeMap<u8, (i64, i128, i128)>,
    sellers: BTreeMap<i64, (String, i64, i128, i128)>,
    products: BTreeMap<i64, (String, String, i64, i128, i128)>,
    payments: BTreeMap<i64, (String, i64, i128)>,
    customers: BTreeMap<i64, (String, i64, i64, i128)>,
    facts: BTreeMap<(i64, i64), (i64, Money, Money)>,
}

/// Recomputes every aggregate from the model's final rows and histories, the slow way.
fn brute_force(w: &Workload) -> Expected {
    fn as_of<T: Clone>(history: &[(u64, T)], seq: u64) -> T {
        history.iter().rev().find(|(s, _)| *s <= seq).unwrap_or(&history[0]).1.clone()
    }
    let mut x = Expected::default();
    for ((oid, pid), l) in &w.lines {
        let (order, created) = &w.orders[oid];
        let seller = as_of(&w.product_sellers[pid], *created);
        let terms = l.promotion_id.map(|p| {
            let h: Vec<(u64, (String, Money))> =
                w.promotion_terms[&p].iter().map(|(s, c, t)| (*s, (c.clone(), *t))).collect();
            let (c, t) = as_of(&h, *created);
            PromotionTerms { coupon_type: c.parse().unwrap(), price_treatment: t }
        });
        let a = line_amounts(l.price, l.quantity, terms).unwrap();
        let (q, amt, disc) =
            (l.quantity, i128::from(a.extended_sales_amount.0), i128::from(a.extended_discount_amount.0));
        let add3 = |t: &mut (i64, i128, i128)| {
            t.0 += q;
            t.1 += amt;
            t.2 += disc;
        };
        add3(&mut x.total);
        let days = order.created_at_us.div_euclid(86_400_000_000);
        add3(x.by_day.entry(((days + 3).rem_euclid(7) + 1) as u8).or_default());
        let s = x.sellers.entry(seller).or_insert_with(|| (w.sellers[&seller].name.clone(), 0, 0, 0));
        (s.1, s.2, s.3) = (s.1 + q, s.2 + amt, s.3 + disc);
        let p = &w.products[pid];
        let pr = x
            .products
            .entry(*pid)
            .or_insert_with(|| (p.name.clone(), w.categories[&p.category_id].name.clone(), 0, 0, 0));
        (pr.2, pr.3, pr.4) = (pr.2 + q, pr.3 + amt, pr.4 + disc);
        x.payments
            .entry(order.payment_id)
            .or_insert_with(|| (w.payments[&order.payment_id].method.clone(), 0, 0))
            .2 += amt;
        let c = x
            .customers
            .entry(order.customer_id)
            .or_insert_with(|| (w.customers[&order.customer_id].name.clone(), 0, 0, 0));
        (c.2, c.3) = (c.2 + q, c.3 + amt);
        x.facts.insert((*oid, *pid), (q, a.extended_sales_amount, a.extended_discount_amount));
    }
    for (order, _) in w.orders.values() {
        x.payments
            .entry(order.payment_id)
            .or_insert_with(|| (w.payments[&order.payment_id].method.clone(), 0, 0))
            .1 += 1;
        x.customers
            .entry(order.customer_id)
            .or_insert_with(|| (w.customers[&order.customer_id].name.clone(), 0, 0, 0))
            .1 += 1;
    }
    x
}

fn observed(t: &Tables) -> Expected {
    let mut x = Expected::default();
    if let Some(r) = t.agg_total_sales.rows().next() {
        x.total = (r.total_sales_quantity, r.total_sales_amount.0, r.total_discount_amount.0);
    }
    for r in t.agg_sales_by_day_of_week.rows().filter(|r| r.total_sales_quantity != 0) {
        x.by_day.insert(
            r.day_of_week,
            (r.total_sales_quantity, r.total_sales_amount.0, r.total_discount_amount.0),
        );
    }
    for r in t.agg_top_sellers.rows().filter(|r| r.total_sales_quantity != 0) {
        x.sellers.insert(
            r.seller_id,
            (
                r.seller_name.clone(),
                r.total_sales_quantity,
                r.total_sales_amount.0,
                r.total_discount_amount.0,
            ),
        );
    }
    for r in t.agg_product_profit.rows().filter(|r| r.total_sales_quantity != 0) {
        x.products.insert(
            r.product_id,
            (
                r.product_name.clone(),
                r.category.clone(),
                r.total_sales_quantity,
                r.total_sales_amount.0,
                r.total_discount_amount.0,
            ),
        );
    }
    for r in t.agg_payment_methods.rows().filter(|r| r.order_count != 0 || r.total_sales_amount.0 != 0) {
        x.payments.insert(r.payment_id, (r.payment_method.clone(), r.order_count, r.total_sales_amount.0));
    }
    for r in t.agg_customer_ranking.rows().filter(|r| r.order_count != 0 || r.total_sales_quantity != 0) {
        x.customers.insert(
            r.customer_id,
            (r.customer_name.clone(), r.order_count, r.total_sales_quantity, r.total_sales_amount.0),
        );
    }
    for f in t.live_facts() {
        x.facts.insert(
            (f.order_transaction, f.product_id),
            (f.sales_quantity, f.extended_sales_amount, f.extended_discount_amount),
        );
    }
    x
}

/// Per natural id: versions chain without gaps or overlaps, exactly one open.
fn check_scd2(rows: Vec<(i64, u32, u32, u8, u64)>, what: &str) {
    let mut by_id: BTreeMap<i64, Vec<(u32, u32, u8, u64)>> = BTreeMap::new();
    for (id, from, to, current, version) in rows {
        by_id.entry(id).or_default().push((from, to, current, version));
    }
    for (id, mut versions) in by_id {
        // Versions opened and closed within one second have valid_from == valid_to.
        versions.sort_by_key(|v| (v.0, v.1, v.3));
        for pair in versions.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "{what} {id}: gap or overlap in {versions:?}");
            assert_eq!(pair[0].2, 0, "{what} {id}: a closed version is current");
        }
        let last = versions.last().unwrap();
        assert_eq!((last.1, last.2), (OPEN_VALID_TO, 1), "{what} {id}: the last version is not open");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Every aggregate and fact equals a brute-force recomputation from the source's final rows.
    #[test]
    fn aggregates_equal_a_brute_force_recomputation(seed in any::<u64>(), txs in 50usize..400) {
        let (w, all) = workload(seed, txs);
        let feed = run_in_order(&all);
        let expected = brute_force(&w);
        let got = observed(&feed.tables);
        prop_assert_eq!(&got.total, &expected.total);
        prop_assert_eq!(&got.by_day, &expected.by_day);
        prop_assert_eq!(&got.sellers, &expected.sellers);
        prop_assert_eq!(&got.products, &expected.products);
        prop_assert_eq!(&got.payments, &expected.payments);
        prop_assert_eq!(&got.customers, &expected.customers);
        prop_assert_eq!(&got.facts, &expected.facts);
        // Exact money: the facts sum to quantity × price of the source lines, to the unit.
        let facts: i128 = feed.tables.live_facts().map(|f| i128::from(f.extended_sales_amount.0)).sum();
        let source: i128 = w.lines.values().map(|l| i128::from(l.price.0) * i128::from(l.quantity)).sum();
        prop_assert_eq!(facts, source);
        check_scd2(feed.tables.dim_customers.rows().map(|r| (r.customer_id, r.valid_from, r.valid_to, r.is_current, r.version)).collect(), "customer");
        check_scd2(feed.tables.dim_products.rows().map(|r| (r.product_id, r.valid_from, r.valid_to, r.is_current, r.version)).collect(), "product");
        check_scd2(feed.tables.dim_sellers.rows().map(|r| (r.seller_id, r.valid_from, r.valid_to, r.is_current, r.version)).collect(), "seller");
        check_scd2(feed.tables.dim_promotions.rows().map(|r| (r.promotion_id, r.valid_from, r.valid_to, r.is_current, r.version)).collect(), "promotion");
        // Every fact's keys exist in their dimensions.
        for f in feed.tables.live_facts() {
            prop_assert!(feed.tables.dim_products.0.contains_key(&f.product_key));
            prop_assert!(feed.tables.dim_sellers.0.contains_key(&f.seller_key));
            prop_assert!(feed.tables.dim_customers.0.contains_key(&f.customer_key));
            prop_assert!(feed.tables.dim_payments.0.contains_key(&f.payment_key));
            prop_assert!(f.promotion_key.0 == 0 || feed.tables.dim_promotions.0.contains_key(&f.promotion_key));
            prop_assert!(feed.tables.dim_dates.0.contains_key(&f.date_key));
        }
    }
}

/// The same changes spread over topics with 1–3 partitions, delivered in adversarial
/// interleavings with heartbeats at random points and re-deliveries, give the same tables as
/// the changes applied in commit order.
#[test]
fn results_do_not_depend_on_how_topics_interleave() {
    for seed in 0..12u64 {
        let (_, all) = workload(seed, 300);
        let reference = run_in_order(&all).tables;
        let mut rng = SplitMix64::new(seed ^ 0xfeed);
        let events: Vec<&ChangeEvent> = all.iter().flatten().collect();
        let commits: Vec<u64> = all.iter().skip(1).map(|tx| tx[0].position.commit).collect();
        for round in 0..4 {
            // Inputs: one per (table, partition).
            let parts = 1 + rng.below(3) as i32;
            let mut inputs: BTreeMap<(u8, i32), Vec<&ChangeEvent>> = BTreeMap::new();
            for e in &events {
                let key = match e.after.as_ref().or(e.before.as_ref()).unwrap() {
                    SourceRow::OrderLine(l) => l.order_id * 31 + l.product_id,
                    SourceRow::Order(o) => o.id,
                    SourceRow::Product(p) => p.id,
                    _ => 0,
                };
                let list = inputs.entry((e.position.table, (key % i64::from(parts)) as i32)).or_default();
                list.push(e);
                // Re-deliveries: right after (same position) or a little later.
                if rng.below(50) == 0 {
                    list.push(e);
                }
            }
            for table in 0..10u8 {
                for p in 0..parts {
                    inputs.entry((table, p)).or_default();
                }
            }
            let lists: Vec<Vec<&ChangeEvent>> = inputs.into_values().collect();
            let mut merger: Merger<&ChangeEvent> = Merger::new(None);
            for i in 0..lists.len() {
                merger.add_input(InputName { topic: format!("t{i}"), partition: 0 }, 0);
            }
            let mut cursor = vec![0usize; lists.len()];
            let mut feed = Feed::new();
            let drain = |merger: &mut Merger<&ChangeEvent>, feed: &mut Feed| {
                while let Some((_, e)) = merger.pop() {
                    feed.apply(e);
                }
                if let Some(f) = merger.frontier() {
                    let mut out = Outputs::default();
                    feed.core.seal_before(f, &mut out);
                    feed.tables.absorb(&mut out);
                }
            };
            loop {
                let open: Vec<usize> = (0..lists.len()).filter(|i| cursor[*i] < lists[*i].len()).collect();
                if open.is_empty() {
                    break;
                }
                // Favour one input for a while: long runs ahead of the others.
                let i = open[rng.below(open.len() as u64) as usize];
                for _ in 0..=rng.below(if round % 2 == 0 { 3 } else { 40 }) {
                    if cursor[i] < lists[i].len() {
                        let e = lists[i][cursor[i]];
                        merger.push(i, cursor[i] as i64, e.position, e);
                        cursor[i] += 1;
                    }
                }
                if rng.below(20) == 0 {
                    // A heartbeat: every transaction before commit h is in Kafka.
                    let h = commits[rng.below(commits.len() as u64) as usize];
                    let at = Position { commit: h, change: 0, table: 0 };
                    for (j, list) in lists.iter().enumerate() {
                        let end = list.iter().rposition(|e| e.position < at).map_or(0, |k| k + 1);
                        merger.mark(j, end as i64, at);
                    }
                }
                drain(&mut merger, &mut feed);
            }
            for j in 0..lists.len() {
                merger.finish(j);
            }
            drain(&mut merger, &mut feed);
            assert_eq!(merger.queued_total(), 0);
            assert!(
                feed.tables == reference,
                "seed {seed} round {round}: tables differ from commit-order application"
            );
        }
    }
}

#[test]
fn same_input_same_bytes_and_checkpoints_resume_exactly() {
    let (_, all) = workload(7, 500);
    let a = run_in_order(&all);
    let b = run_in_order(&all);
    assert_eq!(postcard::to_allocvec(&a.out).unwrap(), postcard::to_allocvec(&b.out).unwrap());

    // Stop half-way, serialise the state, resume in a new core: same outputs as uninterrupted.
    let events: Vec<&ChangeEvent> = all.iter().flatten().collect();
    let half = events.len() / 2;
    let mut first = Feed::new();
    for e in &events[..half] {
        first.apply(e);
    }
    let bytes = postcard::to_allocvec(first.core.state()).unwrap();
    let mut resumed =
        Feed { core: Core::from_state(0, postcard::from_bytes(&bytes).unwrap()), ..Feed::new() };
    for e in &events[half..] {
        resumed.apply(e);
    }
    resumed.seal();
    let mut joined = first.out.clone();
    joined.append(&mut resumed.out.clone());
    assert_eq!(joined, a.out);
}

/// A row of a snapshot whose consistent point is `at`, read at `ts_s`.
fn snap(at: u64, ts_s: i64, row: SourceRow) -> ChangeEvent {
    ChangeEvent {
        op: Op::Read,
        position: Position::snapshot(at, table_of(&row)),
        ts_ms: ts_s * 1000,
        before: None,
        after: Some(row),
    }
}

/// A second snapshot of the source reconciles: unchanged rows open nothing, changed ones a new
/// version at its consistent point, rows it does not deliver (deleted while nothing captured
/// them) are closed or removed, in every dimension and fact; SCD2 history stays contiguous with
/// one current version per id.
#[test]
fn a_second_snapshot_reconciles_rows_changed_and_deleted_while_nothing_captured_them() {
    let t0 = 1_722_470_400;
    let mut feed = Feed::new();
    let first = [
        SourceRow::Brand(Brand { id: 1, name: "Acme".into() }),
        SourceRow::Category(Category { id: 1, name: "Phones".into() }),
        customer(1, "An", "an@x"),
        customer(2, "Binh", "binh@x"),
        customer(3, "Chi", "chi@x"),
        SourceRow::Payment(Payment { id: 1, method: "Cash".into() }),
        SourceRow::Product(product(1, 100, 1, 1, None)),
        order(10, 1, 1, t0),
        order(11, 3, 1, t0),
        line(10, 1, 2, 100, None),
        line(11, 1, 1, 100, None),
    ];
    let mut first = first.map(|r| snap(1_000, t0, r)).to_vec();
    first.sort_by_key(|e| e.position);
    for e in &first {
        feed.apply(e);
    }
    // Streamed: customer 2 renamed.
    let mut s = Script { commit: 0, change: 2_000, ts_s: t0 + 60 };
    s.tx();
    feed.apply(&s.u(customer(2, "Binh", "binh@x"), customer(2, "Binh II", "binh@x")));
    feed.seal();

    // Nothing captured for a while: customer 2 renamed again, customer 3 and its order deleted,
    // customer 4 added, line (10, 1) changed. Then a new snapshot at 90,000.
    let t1 = t0 + 3_600;
    let second = [
        SourceRow::Brand(Brand { id: 1, name: "Acme".into() }),
        SourceRow::Category(Category { id: 1, name: "Phones".into() }),
        customer(1, "An", "an@x"),
        customer(2, "Binh III", "binh@x"),
        customer(4, "Dung", "dung@x"),
        SourceRow::Payment(Payment { id: 1, method: "Cash".into() }),
        SourceRow::Product(product(1, 100, 1, 1, None)),
        order(10, 1, 1, t0),
        line(10, 1, 5, 100, None),
    ];
    let mut second = second.map(|r| snap(90_000, t1, r)).to_vec();
    second.sort_by_key(|e| e.position);
    assert!(second[0].position > s.ev(Op::Create, None, Some(customer(9, "x", "x"))).position);
    for e in &second {
        feed.apply(e);
    }
    feed.seal();

    let current = |id: i64| {
        let v: Vec<_> =
            feed.tables.dim_customers.rows().filter(|c| c.customer_id == id && c.is_current == 1).collect();
        assert!(v.len() <= 1, "one current version of customer {id}: {v:?}");
        v.first().map(|c| (c.name.clone(), c.version))
    };
    assert_eq!(current(1), Some(("An".to_string(), 1_000)), "unchanged: no new version");
    assert_eq!(current(2), Some(("Binh III".to_string(), 90_000)));
    assert_eq!(current(3), None, "deleted while nothing captured it: closed");
    assert_eq!(current(4), Some(("Dung".to_string(), 90_000)));
    // History of customer 2: three versions, each closed when the next opened.
    let mut history: Vec<_> = feed.tables.dim_customers.rows().filter(|c| c.customer_id == 2).collect();
    history.sort_by_key(|c| c.valid_from);
    assert_eq!(history.len(), 3, "{history:?}");
    for pair in history.windows(2) {
        assert_eq!(pair[0].valid_to, pair[1].valid_from, "contiguous: {history:?}");
    }
    let closed = feed.tables.dim_customers.rows().find(|c| c.customer_id == 3).unwrap();
    assert_eq!((closed.is_current, closed.valid_to, closed.version), (0, t1 as u32, 90_000));
    // Facts: the order deleted while nothing captured it is retracted, the changed line updated.
    let live: Vec<_> = feed.tables.fact_sales.rows().filter(|f| f.is_deleted == 0).collect();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!((live[0].order_transaction, live[0].sales_quantity), (10, 5));
    let total = feed.tables.agg_total_sales.rows().next().unwrap();
    assert_eq!(total.total_sales_quantity, 5);
}

/// A table a second snapshot delivers no row of was emptied while nothing captured it: its rows
/// are closed, whether the table comes between others or after the last one delivered.
#[test]
fn a_table_emptied_while_nothing_captured_it_is_emptied_by_the_next_snapshot() {
    let snap = |at: u64, row: SourceRow| snap(at, 1_722_470_400, row);
    let seller = |id: i64| SourceRow::Seller(Seller { id, name: format!("S{id}") });
    let payment = |id: i64| SourceRow::Payment(Payment { id, method: format!("M{id}") });
    let mut feed = Feed::new();
    for row in [customer(1, "An", "an@x"), seller(1), seller(2), payment(1)] {
        feed.apply(&snap(1_000, row));
    }
    feed.seal();
    // The next snapshot: customers, then payments; no seller left.
    for row in [customer(1, "An", "an@x"), payment(1)] {
        feed.apply(&snap(9_000, row));
    }
    feed.seal();
    let current = |t: &Tables| {
        (
            t.dim_customers.rows().filter(|r| r.is_current == 1).count(),
            t.dim_sellers.rows().filter(|r| r.is_current == 1).count(),
            t.dim_payments.rows().filter(|r| r.is_current == 1).count(),
        )
    };
    assert_eq!(current(&feed.tables), (1, 0, 1), "sellers, skipped by the snapshot, are closed");
    // And a table after the last one delivered: payments gone too.
    feed.apply(&snap(20_000, customer(1, "An", "an@x")));
    feed.seal();
    assert_eq!(current(&feed.tables), (1, 0, 0));
}

fn signal(id: &str, kind: &str, data: &str) -> SourceRow {
    SourceRow::Signal(Signal { id: id.into(), kind: kind.into(), data: Some(data.into()) })
}

/// An on-demand incremental snapshot while streaming: chunk rows sit at streamed positions among
/// the transactions; the table's rows neither delivered by a chunk nor changed by the stream
/// since the request are deleted when the CDC reports the table done; a row the stream changed
/// after its chunk keeps the stream's image; tables not asked for are untouched.
#[test]
fn an_incremental_snapshot_reconciles_while_streaming() {
    let t0 = 1_722_470_400;
    let mut feed = Feed::new();
    let customers = [customer(1, "An", "an@x"), customer(2, "Binh", "binh@x"), customer(3, "Chi", "chi@x")];
    for r in customers.iter().cloned().chain([SourceRow::Seller(Seller { id: 1, name: "S".into() })]) {
        feed.apply(&snap(1_000, t0, r));
    }
    // Nothing captured: customer 2 renamed, customer 3 and the seller deleted, customer 4 added.
    let mut s = Script { commit: 0, change: 2_000, ts_s: t0 + 60 };
    s.tx();
    let request = r#"{"data-collections": ["public.customers"], "type": "incremental"}"#;
    feed.apply(&s.c(signal("s1", "execute-snapshot", request)));
    // A chunk (customers 1, 2) at its own position, streamed-like, among transactions.
    s.tx();
    let chunk = |s: &mut Script, row: SourceRow| {
        let e = ChangeEvent { op: Op::Read, ..s.c(row) };
        assert!(!e.position.is_snapshot());
        e
    };
    feed.apply(&chunk(&mut s, customer(1, "An", "an@x")));
    feed.apply(&chunk(&mut s, customer(2, "Binh II", "binh@x")));
    // The stream: customer 1 renamed after its chunk; customer 5 created (in a passed range).
    s.tx();
    feed.apply(&s.u(customer(1, "An", "an@x"), customer(1, "An II", "an@x")));
    feed.apply(&s.c(customer(5, "Em", "em@x")));
    // The last chunk (customer 4); then the CDC's done signal.
    s.tx();
    feed.apply(&chunk(&mut s, customer(4, "Dung", "dung@x")));
    s.tx();
    let done = r#"{"data-collection": "public.customers", "signal": "s1", "rows": 3}"#;
    feed.apply(&s.c(signal("rainbow-done-1", "snapshot-table-done", done)));
    feed.seal();

    let current = |id: i64| {
        let v: Vec<_> =
            feed.tables.dim_customers.rows().filter(|c| c.customer_id == id && c.is_current == 1).collect();
        assert!(v.len() <= 1, "one current version of customer {id}: {v:?}");
        v.first().map(|c| c.name.clone())
    };
    assert_eq!(current(1).as_deref(), Some("An II"), "the stream's later image stays");
    assert_eq!(current(2).as_deref(), Some("Binh II"), "changed while nothing captured it");
    assert_eq!(current(3), None, "deleted while nothing captured it: closed at the done signal");
    assert_eq!(current(4).as_deref(), Some("Dung"));
    assert_eq!(current(5).as_deref(), Some("Em"), "created by the stream during the snapshot");
    let sellers = feed.tables.dim_sellers.rows().filter(|r| r.is_current == 1).count();
    assert_eq!(sellers, 1, "a table not asked for is left alone");
    let mut history: Vec<_> = feed.tables.dim_customers.rows().filter(|c| c.customer_id == 2).collect();
    history.sort_by_key(|c| c.valid_from);
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0].valid_to, history[1].valid_from, "contiguous: {history:?}");

    // A done signal without a request (or a second one) deletes nothing; only a created signal
    // row asks (an update of one does not).
    s.tx();
    let asked = signal("s1", "execute-snapshot", request);
    feed.apply(&s.u(asked.clone(), asked));
    s.tx();
    feed.apply(&s.c(signal("rainbow-done-2", "snapshot-table-done", done)));
    feed.seal();
    assert_eq!(feed.tables.dim_customers.rows().filter(|r| r.is_current == 1).count(), 4);
}

/// A feed whose core keeps at most `hot_orders` orders in memory, the others in runs under a
/// fresh directory `name`.
fn cold_feed(name: &str, hot_orders: usize) -> (Feed, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("rainbow-core-cold-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let core = Core::new(0).with_cold(ColdSettings { dir: dir.clone(), hot_orders, generation: "a".into() });
    (Feed { core, ..Feed::new() }, dir)
}

/// Orders and dimension versions moved to disk and read back give the same bytes as a core that
/// keeps them in memory: through
/// order and line updates and deletes of old orders, a resume from a serialised state, a
/// TRUNCATE of the lines alone, and a snapshot that reconciles the order tables (it delivers
/// none of their rows).
#[test]
fn orders_on_disk_give_the_bytes_of_orders_in_memory() {
    for seed in 0..6u64 {
        let (mut w, mut all) = workload(seed, 400);
        if seed % 2 == 1 {
            // TRUNCATE orderdetails alone: every line goes, those on disk too.
            let last = all.iter().flatten().map(|e| e.position).max().unwrap();
            let table = Table::Orderdetails.rank();
            let position = Position { commit: last.commit + 1, change: last.commit + 1, table };
            all.push(vec![ChangeEvent { op: Op::Truncate, position, ts_ms: 0, before: None, after: None }]);
        }
        all.push(w.snapshot());
        let events: Vec<&ChangeEvent> = all.iter().flatten().collect();
        let in_memory = run_in_order(&all);

        let (mut cold, dir) = cold_feed(&format!("whole-{seed}"), 3);
        for e in &events {
            cold.apply(e);
        }
        let size = cold.core.size();
        cold.seal();
        assert!(size.cold_orders > 20, "seed {seed}: orders went to disk ({size:?})");
        assert!(size.cold_versions > 20, "seed {seed}: dimension versions went to disk ({size:?})");
        let (orders_read, versions_read) = cold.core.take_cold_reads();
        assert!(
            orders_read > 0 && versions_read > 0,
            "seed {seed}: read back {orders_read} / {versions_read}"
        );
        assert_eq!(cold.core.failure(), None);
        assert_eq!(
            postcard::to_allocvec(&cold.out).unwrap(),
            postcard::to_allocvec(&in_memory.out).unwrap(),
            "seed {seed}"
        );
        let _ = std::fs::remove_dir_all(&dir);

        // Stopped half-way before the reconciling snapshot: the state names the runs, which stay.
        let (mut first, dir) = cold_feed(&format!("resume-{seed}"), 3);
        let half = events.len() / 2;
        for e in &events[..half] {
            first.apply(e);
        }
        assert!(!first.core.cold_files().is_empty(), "seed {seed}");
        let bytes = postcard::to_allocvec(first.core.state()).unwrap();
        let core = Core::from_state(0, postcard::from_bytes(&bytes).unwrap()).with_cold(ColdSettings {
            dir: dir.clone(),
            hot_orders: 3,
            generation: "b".into(),
        });
        let mut resumed = Feed { core, ..Feed::new() };
        for e in &events[half..] {
            resumed.apply(e);
        }
        resumed.seal();
        let mut joined = first.out.clone();
        joined.append(&mut resumed.out.clone());
        assert_eq!(joined, in_memory.out, "seed {seed}: resumed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A run that cannot be read stops the core: the event is not applied, nothing more is, and the
/// failure names the file.
#[test]
fn an_unreadable_run_stops_the_core_with_its_file() {
    let (_, all) = workload(3, 300);
    let events: Vec<&ChangeEvent> = all.iter().flatten().collect();
    let (mut feed, dir) = cold_feed("unreadable", 3);
    let mut applied = 0;
    for e in &events {
        if feed.core.failure().is_some() {
            break;
        }
        if feed.core.size().cold_orders > 0 && applied % 50 == 0 {
            for (name, _) in feed.core.cold_files() {
                let _ = std::fs::remove_file(dir.join(name));
            }
        }
        feed.apply(e);
        applied += 1;
    }
    let failure = feed.core.failure().expect("a read of a removed run fails").to_string();
    assert!(failure.contains("run-") && failure.contains(&dir.display().to_string()), "{failure}");
    let events_before = feed.core.size().events_applied;
    let mut out = Outputs::default();
    feed.core.apply(events[applied], &mut out).unwrap();
    assert_eq!((feed.core.size().events_applied, out.len()), (events_before, 0), "nothing applied");
    let _ = std::fs::remove_dir_all(&dir);
}
