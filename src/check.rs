//! `rainbow check`: data-quality checks of the warehouse, in ClickHouse (FINAL) or in a replay's
//! Parquet. Both are read into the same Arrow form (the replay's row → column conversion), so
//! every check has one implementation.
//!
//! Checks: surrogate keys present, well formed (16 hex digits) and unique; at most one current
//! version per natural id, and `is_current` exactly on the open version; validity intervals per
//! natural id with `valid_from <= valid_to`, neither overlapping nor leaving a gap; every live
//! fact's keys exist in their dimensions (and `date_key` in `dim_dates`); `coupon_type` is an
//! accepted value; each fact's amounts follow from its quantity and prices; and, against the
//! source, SUM(extended_sales_amount) of the live facts equals SUM(quantity × price) of the order
//! lines in PostgreSQL.

use arrow::array::{
    Array, Decimal128Array, Int64Array, RecordBatch, StringArray, TimestampSecondArray, UInt32Array,
    UInt8Array,
};
use rainbow_schemas::rows::*;
use std::collections::{BTreeMap, HashMap, HashSet};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

/// The warehouse tables the checks read, by name.
pub type Warehouse = HashMap<&'static str, RecordBatch>;

pub const TABLES: [&str; 7] = [
    "dim_customers",
    "dim_products",
    "dim_sellers",
    "dim_promotions",
    "dim_payments",
    "dim_dates",
    "fact_sales",
];

/// (table, surrogate key column, natural id column).
const DIMENSIONS: [(&str, &str, &str); 5] = [
    ("dim_customers", "customer_key", "customer_id"),
    ("dim_products", "product_key", "product_id"),
    ("dim_sellers", "seller_key", "seller_id"),
    ("dim_promotions", "promotion_key", "promotion_id"),
    ("dim_payments", "payment_key", "payment_id"),
];

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("column {name} (the schema comes from the row types)"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column {name} has the row type's Arrow type"))
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
pub fn run(w: &Warehouse) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut dim_keys: HashMap<&str, HashSet<String>> = HashMap::new();
    for (table, key, id) in DIMENSIONS {
        let b = &w[table];
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
        dim_keys.insert(table, seen);

        // Versions per natural id, live rows only.
        let mut versions: BTreeMap<i64, Vec<(i64, i64, u8)>> = BTreeMap::new();
        for i in 0..b.num_rows() {
            if deleted.value(i) == 0 {
                versions.entry(ids.value(i)).or_default().push((
                    from.value(i),
                    to.value(i),
                    current.value(i),
                ));
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
    }

    // Relationships of the live facts.
    let f = &w["fact_sales"];
    let live: Vec<usize> =
        (0..f.num_rows()).filter(|&i| col::<UInt8Array>(f, "is_deleted").value(i) == 0).collect();
    let order_line = |i: usize| {
        format!(
            "order {} product {}",
            col::<Int64Array>(f, "order_transaction").value(i),
            col::<Int64Array>(f, "product_id").value(i)
        )
    };
    for (key, dim, optional) in [
        ("product_key", "dim_products", false),
        ("seller_key", "dim_sellers", false),
        ("customer_key", "dim_customers", false),
        ("payment_key", "dim_payments", false),
        ("promotion_key", "dim_promotions", true),
    ] {
        let keys = col::<StringArray>(f, key);
        let bad: Vec<String> = live
            .iter()
            .filter(|&&i| {
                let k = keys.value(i);
                let allowed_empty = optional && k.is_empty();
                !allowed_empty && !dim_keys[dim].contains(k)
            })
            .map(|&i| format!("{} ({key} {:?})", order_line(i), keys.value(i)))
            .collect();
        out.push(finding(format!("fact_sales.{key} exists in {dim}"), &bad, "facts", live.len()));
    }
    let dates: HashSet<u32> = {
        let d = &w["dim_dates"];
        (0..d.num_rows()).map(|i| col::<UInt32Array>(d, "date_key").value(i)).collect()
    };
    let date_keys = col::<UInt32Array>(f, "date_key");
    let bad: Vec<String> = live
        .iter()
        .filter(|&&i| !dates.contains(&date_keys.value(i)))
        .map(|&i| format!("{} (date_key {})", order_line(i), date_keys.value(i)))
        .collect();
    out.push(finding("fact_sales.date_key exists in dim_dates".into(), &bad, "facts", live.len()));

    // Accepted values.
    let p = &w["dim_promotions"];
    let types = col::<StringArray>(p, "coupon_type");
    let bad: Vec<String> = (0..p.num_rows())
        .filter(|&i| !matches!(types.value(i), "Percentage" | "Fixed Amount"))
        .map(|i| format!("{:?}", types.value(i)))
        .collect();
    out.push(finding(
        "dim_promotions.coupon_type is Percentage or Fixed Amount".into(),
        &bad,
        "rows",
        p.num_rows(),
    ));

    // Each fact's measures follow from its quantity and prices.
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
        .map(|&i| order_line(i))
        .collect();
    out.push(finding(
        "fact_sales amounts: extended = quantity x price, net = price - discount, 0 <= discount <= price"
            .into(),
        &bad,
        "facts",
        live.len(),
    ));
    out
}

/// SUM(extended_sales_amount) of the live facts, in hundredths.
pub fn fact_total(w: &Warehouse) -> i128 {
    let f = &w["fact_sales"];
    let deleted = col::<UInt8Array>(f, "is_deleted");
    let ext = col::<Decimal128Array>(f, "extended_sales_amount");
    (0..f.num_rows()).filter(|&i| deleted.value(i) == 0).map(|i| ext.value(i)).sum()
}

/// Hundredths as `123.45`.
pub fn money(h: i128) -> String {
    let sign = if h < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", h.abs() / 100, h.abs() % 100)
}

/// The warehouse tables of ClickHouse (FINAL), as Arrow.
pub async fn from_clickhouse(wh: &rainbow_schemas::warehouse::Warehouse) -> anyhow::Result<Warehouse> {
    async fn table<T>(wh: &rainbow_schemas::warehouse::Warehouse, name: &str) -> anyhow::Result<RecordBatch>
    where
        T: clickhouse::Row
            + serde::de::DeserializeOwned
            + serde::Serialize
            + Default
            + for<'a> clickhouse::Row<Value<'a> = T>
            + 'static,
    {
        Ok(rainbow_replay::columns::to_batch(wh.read_final::<T>(name).await?)?)
    }
    let mut w = Warehouse::new();
    w.insert("dim_customers", table::<DimCustomer>(wh, "dim_customers").await?);
    w.insert("dim_products", table::<DimProduct>(wh, "dim_products").await?);
    w.insert("dim_sellers", table::<DimSeller>(wh, "dim_sellers").await?);
    w.insert("dim_promotions", table::<DimPromotion>(wh, "dim_promotions").await?);
    w.insert("dim_payments", table::<DimPayment>(wh, "dim_payments").await?);
    w.insert("dim_dates", table::<DimDate>(wh, "dim_dates").await?);
    w.insert("fact_sales", table::<FactSale>(wh, "fact_sales").await?);
    Ok(w)
}

/// The warehouse tables of a replay's output, as Arrow.
pub fn from_parquet(url: &str, rt: &tokio::runtime::Handle) -> anyhow::Result<Warehouse> {
    let store = rainbow_runtime::store::Store::open(url)?;
    let mut w = Warehouse::new();
    for name in TABLES {
        let batch = rainbow_replay::replay::read_table(&store, rt, name)?
            .ok_or_else(|| anyhow::anyhow!("{url} has no {name}/ (is it the --out of a rainbow replay?)"))?;
        w.insert(name, batch);
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rainbow_replay::columns::to_batch;
    use rainbow_schemas::Money;

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

    fn warehouse(sellers: Vec<DimSeller>, facts: Vec<FactSale>) -> Warehouse {
        let mut w = Warehouse::new();
        w.insert("dim_customers", to_batch(Vec::<DimCustomer>::new()).unwrap());
        w.insert("dim_products", to_batch(Vec::<DimProduct>::new()).unwrap());
        w.insert("dim_sellers", to_batch(sellers).unwrap());
        w.insert("dim_promotions", to_batch(Vec::<DimPromotion>::new()).unwrap());
        w.insert("dim_payments", to_batch(Vec::<DimPayment>::new()).unwrap());
        w.insert("dim_dates", to_batch(Vec::<DimDate>::new()).unwrap());
        w.insert("fact_sales", to_batch(facts).unwrap());
        w
    }

    fn failed(w: &Warehouse) -> Vec<String> {
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
        let f = failed(&warehouse(vec![seller(3, 2, 100, open)], vec![fact]));
        for want in
            ["product_key exists", "customer_key exists", "payment_key exists", "date_key exists", "amounts"]
        {
            assert!(f.iter().any(|x| x.contains(want) && x.contains("order 7 product 9")), "{want}: {f:?}");
        }
        assert!(!f.iter().any(|x| x.contains("seller_key") || x.contains("promotion_key")), "{f:?}");
        assert_eq!(money(fact_total(&warehouse(vec![], vec![]))), "0.00");
        assert_eq!(money(-12345), "-123.45");
    }
}
