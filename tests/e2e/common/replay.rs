//! `rainbow replay` of a master dataset, and the Kappa invariant: a replay's tables equal what
//! streaming wrote into ClickHouse, row for row.

use rainbow_schemas::shape::*;
use std::path::Path;
use std::process::Command;

/// `rainbow replay --all` of `archive` into `out`; (success, stdout + stderr).
pub fn replay(prefix: &str, archive: &Path, out: &Path, env: &[(&str, &str)]) -> (bool, String) {
    replay_with(prefix, archive, out, &[], env)
}

/// [`replay`] with more arguments.
pub fn replay_with(
    prefix: &str,
    archive: &Path,
    out: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rainbow"));
    cmd.args(["replay", "--all", "--quiet"])
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--archive")
        .arg(archive)
        .env("RAINBOW_CDC__TOPIC_PREFIX", prefix);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("rainbow runs");
    (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
}

/// A table as ClickHouse sees it after merges (FINAL), ordered as the replay orders it (by
/// key), as an Arrow batch through the warehouse's one row → column conversion.
async fn clickhouse_batch<R: WarehouseRow>(
    wh: &rainbow_schemas::warehouse::Warehouse,
) -> ::arrow::array::RecordBatch {
    let rows = wh.read_final::<R>().await.unwrap();
    rainbow_schemas::shape::arrow::to_batch(rows).unwrap()
}

/// Every table of the replay output under `out` equals the same table of ClickHouse `database`
/// (FINAL), row for row, and none is empty.
pub async fn assert_same_as_clickhouse(out: &Path, database: &str) {
    let wh = super::warehouse(database).await;
    let rt = tokio::runtime::Handle::current();
    let store = rainbow_runtime::store::Store::open(out.to_str().unwrap()).unwrap();
    macro_rules! same {
        ($($table:literal => $row:ty),* $(,)?) => {$(
            let streamed = clickhouse_batch::<$row>(&wh).await;
            let (s, h) = (store.clone(), rt.clone());
            let replayed = tokio::task::spawn_blocking(move || {
                rainbow_replay::replay::read_table(&s, &h, $table).unwrap().expect("table written")
            })
            .await
            .unwrap();
            assert!(streamed.num_rows() > 0, "{} is empty", $table);
            assert_eq!(replayed, streamed, "table {} differs between the replay and ClickHouse", $table);
        )*};
    }
    same!(
        "dim_customers" => DimCustomer,
        "dim_products" => DimProduct,
        "dim_sellers" => DimSeller,
        "dim_promotions" => DimPromotion,
        "dim_payments" => DimPayment,
        "dim_dates" => DimDate,
        "fact_sales" => FactSale,
        "agg_total_sales" => AggTotalSales,
        "agg_sales_by_day_of_week" => AggSalesByDayOfWeek,
        "agg_top_sellers" => AggTopSeller,
        "agg_product_profit" => AggProductProfit,
        "agg_payment_methods" => AggPaymentMethod,
        "agg_customer_ranking" => AggCustomerRanking,
    );
}
