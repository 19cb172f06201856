//! Data-quality checks of the warehouse, on its Arrow form ([`super::arrow`]), so that ClickHouse
//! (read `FINAL`) and a replay's Parquet are checked by the same code.
//!
//! What is checked derives from the definition ([`super::TABLES`]): for every SCD2 dimension,
//! surrogate keys present, well formed (16 hex digits) and unique; at most one current version
//! per natural id, with `is_current` exactly on the open version; validity intervals per natural
//! id with `valid_from <= valid_to`, neither overlapping nor leaving a gap. For every fact,
//! each reference column's value exists in the table it references (empty allowed where the
//! reference is optional). Every column with accepted values holds only those. Then the seed's
//! arithmetic of `fact_sales` (amounts from quantity and prices), and, against the source,
//! SUM(extended_sales_amount) of the live facts equals SUM(quantity × price) of the order lines.

use super::{Kind, TableDef, WarehouseRow, OPEN_VALID_TO, TABLES};
use arrow::array::{
    Array, Decimal128Array, Int64Array, RecordBatch, StringArray, TimestampSecondArray, UInt32Array,
    UInt8Array,
};
use std::collections::{BTreeMap, HashMap, HashSet};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

/// The warehouse tables the checks read, by name, in their Arrow form.
pub type Batches = HashMap<&'static str, RecordBatch>;

/// The tables the checks read: every table but the aggregates.
pub fn checked_tables() -> impl Iterator<Item = &'static TableDef> {
    TABLES.iter().copied().filter(|t| t.kind != Kind::Aggregate)
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("column {name} (the schema comes from the definition)"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column {name} has the definition's Arrow type"))
}

/// A key column's values as text (surrogate keys are text; the date key is a number).
fn key_texts(b: &RecordBatch, name: &str) -> Vec<String> {
    let array = b.column_by_name(name).unwrap_or_else(|| panic!("column {name}"));
    if let Some(a) = array.as_any().downcast_ref::<StringArray>() {
        return (0..a.len()).map(|i| a.value(i).to_string()).collect();
    }
    let a = array.as_any().downcast_ref::<UInt32Array>().unwrap_or_else(|| panic!("{name} is a key column"));
    (0..a.len()).map(|i| a.value(i).to_string()).collect()
}

fn sample<T: std::fmt::Display>(items: &[T]) -> String {
    let shown: Vec<String> = items.iter().take(5).map(|x| x.to_string()).collect();
    format!("{}{}", shown.join(", "), if items.len() > 5 { ", ..." } else { "" })
}

fn finding(check: String, bad: &[String], what: &str, rows: usize) -> Finding {
    if bad.is_empty() {
        Finding { check, ok: true, detail: format!("{rows} rows") }
    } else {
        Finding { check, ok: false, detail: format!("{} {what}: {}", bad.len(), sample(bad)) }
    }
}

/// Every check that needs only the warehouse.
pub fn run(w: &Batches) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut keys: HashMap<&str, HashSet<String>> = HashMap::new();
    for t in checked_tables() {
        let b = &w[t.name];
        match t.kind {
            Kind::Dimension { surrogate, natural } => {
                let seen = dimension(t.name, b, surrogate, natural, &mut out);
                keys.insert(t.name, seen);
            }
            Kind::Dates => {
                keys.insert(t.name, key_texts(b, t.key[0]).into_iter().collect());
            }
            Kind::Fact | Kind::Aggregate => {}
        }
    }
    for t in checked_tables().filter(|t| t.kind == Kind::Fact) {
        let b = &w[t.name];
        let live: Vec<usize> =
            (0..b.num_rows()).filter(|&i| col::<UInt8Array>(b, "is_deleted").value(i) == 0).collect();
        for c in t.columns {
            let Some((target, optional)) = c.references else { continue };
            let values = key_texts(b, c.name);
            let bad: Vec<String> = live
                .iter()
                .filter(|&&i| {
                    let allowed_empty = optional && values[i].is_empty();
                    !allowed_empty && !keys[target].contains(&values[i])
                })
                .map(|&i| {
                    let v = &values[i];
                    let shown = if c.clickhouse == "String" { format!("{v:?}") } else { v.clone() };
                    format!("{} ({} {shown})", fact_line(b, i), c.name)
                })
                .collect();
            out.push(finding(format!("{}.{} exists in {target}", t.name, c.name), &bad, "facts", live.len()));
        }
    }
    for t in checked_tables() {
        for c in t.columns.iter().filter(|c| !c.accepted.is_empty()) {
            let b = &w[t.name];
            let values = col::<StringArray>(b, c.name);
            let bad: Vec<String> = (0..b.num_rows())
                .filter(|&i| !c.accepted.contains(&values.value(i)))
                .map(|i| format!("{:?}", values.value(i)))
                .collect();
            out.push(finding(
                format!("{}.{} is {}", t.name, c.name, c.accepted.join(" or ")),
                &bad,
                "rows",
                b.num_rows(),
            ));
        }
    }
    out.push(fact_amounts(&w["fact_sales"]));
    out
}

/// The checks of one SCD2 dimension; returns its surrogate keys.
fn dimension(table: &str, b: &RecordBatch, key: &str, id: &str, out: &mut Vec<Finding>) -> HashSet<String> {
    let keys = col::<StringArray>(b, key);
    let ids = col::<Int64Array>(b, id);
    let from = col::<TimestampSecondArray>(b, "valid_from");
    let to = col::<TimestampSecondArray>(b, "valid_to");
    let current = col::<UInt8Array>(b, "is_current");
    let deleted = col::<UInt8Array>(b, "is_deleted");

    let mut seen = HashSet::new();
    let mut bad = Vec::new();
    for i in 0..b.num_rows() {
        let k = keys.value(i);
        let well_formed =
            k.len() == 16 && k.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        if !well_formed {
            bad.push(format!("{k:?} (not 16 hex digits)"));
        } else if !seen.insert(k.to_string()) {
            bad.push(format!("{k} (twice)"));
        }
    }
    out.push(finding(
        format!("surrogate keys present, well formed, unique: {table}"),
        &bad,
        "bad keys",
        b.num_rows(),
    ));

    // Versions per natural id, live rows only.
    let mut versions: BTreeMap<i64, Vec<(i64, i64, u8)>> = BTreeMap::new();
    for i in 0..b.num_rows() {
        if deleted.value(i) == 0 {
            versions.entry(ids.value(i)).or_default().push((from.value(i), to.value(i), current.value(i)));
        }
    }
    let open = i64::from(OPEN_VALID_TO);
    let (mut current_bad, mut interval_bad) = (Vec::new(), Vec::new());
    for (id, v) in &mut versions {
        v.sort_unstable();
        let currents = v.iter().filter(|x| x.2 == 1).count();
        if currents > 1 || v.iter().any(|x| (x.2 == 1) != (x.1 == open)) {
            current_bad.push(format!("{id} ({currents} current)"));
        }
        if v.iter().any(|x| x.0 > x.1) {
            interval_bad.push(format!("{id} (valid_from after valid_to)"));
        } else if let Some(w) = v.windows(2).find(|w| w[0].1 != w[1].0) {
            let kind = if w[0].1 > w[1].0 { "overlap" } else { "gap" };
            interval_bad.push(format!("{id} ({kind} at {})", w[0].1.min(w[1].0)));
        }
    }
    out.push(finding(
        format!("one current version per natural id, on the open version: {table}"),
        &current_bad,
        "natural ids",
        b.num_rows(),
    ));
    out.push(finding(
        format!("validity intervals without overlaps or gaps: {table}"),
        &interval_bad,
        "natural ids",
        b.num_rows(),
    ));
    seen
}

/// An order line of `fact_sales`, as findings name it.
fn fact_line(f: &RecordBatch, i: usize) -> String {
    format!(
        "order {} product {}",
        col::<Int64Array>(f, "order_transaction").value(i),
        col::<Int64Array>(f, "product_id").value(i)
    )
}

/// Each live fact's measures follow from its quantity and prices (the seed's formulas).
fn fact_amounts(f: &RecordBatch) -> Finding {
    let deleted = col::<UInt8Array>(f, "is_deleted");
    let live: Vec<usize> = (0..f.num_rows()).filter(|&i| deleted.value(i) == 0).collect();
    let (qty, regular, discount, net, ext, ext_discount) = (
        col::<Int64Array>(f, "sales_quantity"),
        col::<Decimal128Array>(f, "regular_unit_price"),
        col::<Decimal128Array>(f, "discount_unit_price"),
        col::<Decimal128Array>(f, "net_unit_price"),
        col::<Decimal128Array>(f, "extended_sales_amount"),
        col::<Decimal128Array>(f, "extended_discount_amount"),
    );
    let bad: Vec<String> = live
        .iter()
        .filter(|&&i| {
            let q = i128::from(qty.value(i));
            ext.value(i) != q * regular.value(i)
                || ext_discount.value(i) != q * discount.value(i)
                || net.value(i) != regular.value(i) - discount.value(i)
                || discount.value(i) < 0
                || discount.value(i) > regular.value(i)
        })
        .map(|&i| fact_line(f, i))
        .collect();
    finding(
        "fact_sales amounts: extended = quantity x price, net = price - discount, 0 <= discount <= price"
            .into(),
        &bad,
        "facts",
        live.len(),
    )
}

/// SUM(extended_sales_amount) of the live facts, in hundredths.
pub fn fact_total(w: &Batches) -> i128 {
    let f = &w["fact_sales"];
    let deleted = col::<UInt8Array>(f, "is_deleted");
    let ext = col::<Decimal128Array>(f, "extended_sales_amount");
    (0..f.num_rows()).filter(|&i| deleted.value(i) == 0).map(|i| ext.value(i)).sum()
}

/// The check against the source: the live facts' total equals SUM(quantity × price) of the
/// order lines in PostgreSQL.
pub async fn against_source(w: &Batches, source: &sqlx::PgPool) -> Result<Finding, sqlx::Error> {
    let total: Option<rust_decimal::Decimal> =
        sqlx::query_scalar("SELECT sum(quantity * price) FROM orderdetails").fetch_one(source).await?;
    let source_h = (total.unwrap_or_default() * rust_decimal::Decimal::from(100)).trunc().mantissa();
    let facts = fact_total(w);
    Ok(Finding {
        check:
            "SUM(fact_sales.extended_sales_amount) = SUM(quantity x price) of the order lines in PostgreSQL"
                .into(),
        ok: facts == source_h,
        detail: format!("warehouse {} VND, PostgreSQL {} VND", money(facts), money(source_h)),
    })
}

/// Hundredths as `123.45`.
pub fn money(h: i128) -> String {
    let sign = if h < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", h.abs() / 100, h.abs() % 100)
}

/// The checked tables of ClickHouse (`FINAL`), as Arrow.
pub async fn from_clickhouse(wh: &crate::warehouse::Warehouse) -> Result<Batches, CheckError> {
    async fn read<R: WarehouseRow>(
        wh: &crate::warehouse::Warehouse,
        w: &mut Batches,
    ) -> Result<(), CheckError> {
        if R::TABLE.kind != Kind::Aggregate {
            w.insert(R::TABLE.name, super::arrow::to_batch(wh.read_final::<R>().await?)?);
        }
        Ok(())
    }
    let mut w = Batches::new();
    macro_rules! table {
        ($table:ident, $row:ty) => {
            read::<$row>(wh, &mut w).await?;
        };
    }
    for_each_table!(table);
    Ok(w)
}

/// The warehouse could not be read for the checks.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Warehouse(#[from] crate::warehouse::WarehouseError),
    #[error(transparent)]
    Shape(#[from] super::arrow::ShapeError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::arrow::to_batch;
    use crate::shape::*;
    use crate::Money;

    fn seller(key: u64, id: i64, from: u32, to: u32) -> DimSeller {
        DimSeller {
            seller_key: SurrogateKey(key),
            seller_id: id,
            name: format!("s{id}"),
            valid_from: from,
            valid_to: to,
            is_current: u8::from(to == OPEN_VALID_TO),
            version: 1,
            is_deleted: 0,
        }
    }

    fn warehouse(sellers: Vec<DimSeller>, facts: Vec<FactSale>) -> Batches {
        let mut w = Batches::new();
        w.insert("dim_customers", to_batch(Vec::<DimCustomer>::new()).unwrap());
        w.insert("dim_products", to_batch(Vec::<DimProduct>::new()).unwrap());
        w.insert("dim_sellers", to_batch(sellers).unwrap());
        w.insert("dim_promotions", to_batch(Vec::<DimPromotion>::new()).unwrap());
        w.insert("dim_payments", to_batch(Vec::<DimPayment>::new()).unwrap());
        w.insert("dim_dates", to_batch(Vec::<DimDate>::new()).unwrap());
        w.insert("fact_sales", to_batch(facts).unwrap());
        w
    }

    fn failed(w: &Batches) -> Vec<String> {
        run(w).into_iter().filter(|f| !f.ok).map(|f| format!("{}: {}", f.check, f.detail)).collect()
    }

    #[test]
    fn each_check_catches_its_violation() {
        let open = OPEN_VALID_TO;
        // Clean: two versions meeting at 200, then one member.
        assert_eq!(
            failed(&warehouse(
                vec![seller(1, 1, 100, 200), seller(2, 1, 200, open), seller(3, 2, 100, open)],
                vec![]
            )),
            Vec::<String>::new()
        );
        let f = failed(&warehouse(vec![seller(1, 1, 100, 250), seller(2, 1, 200, open)], vec![]));
        assert!(f.len() == 1 && f[0].contains("intervals") && f[0].contains("overlap at 200"), "{f:?}");
        let f = failed(&warehouse(vec![seller(1, 1, 100, 150), seller(2, 1, 200, open)], vec![]));
        assert!(f.len() == 1 && f[0].contains("gap at 150"), "{f:?}");
        let mut two = seller(1, 1, 100, 200);
        two.is_current = 1;
        let f = failed(&warehouse(vec![two, seller(2, 1, 200, open)], vec![]));
        assert!(
            f.len() == 1 && f[0].contains("one current version") && f[0].contains("1 (2 current)"),
            "{f:?}"
        );
        let f = failed(&warehouse(
            vec![seller(1, 1, 100, open), seller(1, 2, 100, open), seller(0, 3, 100, open)],
            vec![],
        ));
        assert!(f.len() == 1 && f[0].contains("surrogate keys") && f[0].contains("2 bad keys"), "{f:?}");

        // A fact with a wrong extended amount and keys that exist nowhere.
        let fact = FactSale {
            date_key: 20240801,
            product_key: SurrogateKey(9),
            seller_key: SurrogateKey(3),
            order_transaction: 7,
            product_id: 9,
            sales_quantity: 2,
            regular_unit_price: Money(1000),
            extended_sales_amount: Money(1999),
            net_unit_price: Money(1000),
            ..Default::default()
        };
        let f = failed(&warehouse(vec![seller(3, 2, 100, open)], vec![fact.clone()]));
        for want in
            ["product_key exists", "customer_key exists", "payment_key exists", "date_key exists", "amounts"]
        {
            assert!(f.iter().any(|x| x.contains(want) && x.contains("order 7 product 9")), "{want}: {f:?}");
        }
        assert!(!f.iter().any(|x| x.contains("seller_key") || x.contains("promotion_key")), "{f:?}");
        assert!(f.iter().any(|x| x.contains("(date_key 20240801)")), "{f:?}");
        assert!(f.iter().any(|x| x.contains(r#"(product_key "0000000000000009")"#)), "{f:?}");
        assert_eq!(money(fact_total(&warehouse(vec![], vec![]))), "0.00");
        assert_eq!(money(-12345), "-123.45");

        // Accepted values.
        let mut w = warehouse(vec![], vec![]);
        let promo = DimPromotion {
            promotion_key: SurrogateKey(5),
            coupon_type: "Bogus".into(),
            valid_to: open,
            is_current: 1,
            ..Default::default()
        };
        w.insert("dim_promotions", to_batch(vec![promo]).unwrap());
        let f = failed(&w);
        assert!(
            f.len() == 1 && f[0].contains("coupon_type is Percentage or Fixed Amount: 1 rows: \"Bogus\""),
            "{f:?}"
        );
    }

    #[test]
    fn the_checks_cover_every_dimension_and_reference_of_the_definition() {
        let names: Vec<String> = run(&warehouse(vec![], vec![])).into_iter().map(|f| f.check).collect();
        for t in checked_tables() {
            if let Kind::Dimension { .. } = t.kind {
                assert_eq!(
                    names.iter().filter(|n| n.ends_with(&format!(": {}", t.name))).count(),
                    3,
                    "{}",
                    t.name
                );
            }
            for c in t.columns.iter().filter(|c| c.references.is_some()) {
                assert!(
                    names.iter().any(|n| n.starts_with(&format!("{}.{} exists in", t.name, c.name))),
                    "{}",
                    c.name
                );
            }
        }
    }
}
