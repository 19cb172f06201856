//! Sold counts: the quantities that orders append to `api_sold_count_pending`, added to
//! `products.sold_count` in batches.
//!
//! Contract:
//! * **Exactly once.** A pass takes pending rows, adds them to their products and deletes them in
//!   one transaction ([`repo::apply_sold_counts`]): a pass that fails or is cut off (a restart, a
//!   database outage, `kill -9`) changes nothing, and the rows wait for the next pass, of this
//!   instance or another.
//! * **Freshness.** A pass runs every `interval`; a pass that found a full batch is followed at
//!   once by the next, so a backlog (after an outage) drains at full speed. On shutdown, after the
//!   last request ended, one more pass applies what those requests appended (bounded by `timeout`;
//!   what it leaves is applied by the next start).
//! * **Nothing silent.** Applied rows, rows whose product was deleted meanwhile (nothing to add
//!   them to) and failed passes are counted (`rainbow_api_sold_count_*`); a failed pass is retried
//!   with backoff; the time of the last successful pass is exported for the
//!   `RainbowApiSoldCountsStalled` alert.
//! * **Locks.** Products are locked in id order, as orders lock them, for the duration of one
//!   statement: orders that sell a product wait for a pass at most that long.

use crate::metrics::{ApiMetrics, SoldCountsApplied, SoldCountsFailed};
use crate::repository as repo;
use rainbow_runtime::resilience::Backoff;
use sqlx::PgPool;
use std::time::Duration;

/// Pending rows applied by one statement.
const BATCH_ROWS: i64 = 10_000;

/// Applies pending sold counts every `interval`, for ever (abort the task to stop it).
pub async fn follow(pool: PgPool, metrics: ApiMetrics, interval: Duration, timeout: Duration) {
    let mut backoff = Backoff::new(interval.max(Duration::from_millis(100)), Duration::from_secs(5));
    let mut failures = 0u64;
    loop {
        let pause = match pass(&pool, timeout).await {
            Ok(applied) => {
                SoldCountsApplied { applied }.emit(&metrics);
                if failures > 0 {
                    tracing::info!(failures, "sold counts are applied again");
                }
                failures = 0;
                backoff.reset();
                if applied.rows >= BATCH_ROWS {
                    continue;
                }
                interval
            }
            Err(error) => {
                failures += 1;
                SoldCountsFailed { error: &error, failures }.emit(&metrics);
                backoff.next_delay()
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// Applies what is pending now, batch after batch, within `timeout` in all; for shutdown.
pub async fn apply_pending(pool: &PgPool, metrics: &ApiMetrics, timeout: Duration) {
    let work = async {
        loop {
            let applied = pass(pool, timeout).await?;
            SoldCountsApplied { applied }.emit(metrics);
            if applied.rows < BATCH_ROWS {
                return Ok::<_, String>(());
            }
        }
    };
    let outcome = tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| Err("timed out".into()));
    if let Err(error) = outcome {
        SoldCountsFailed { error: &error, failures: 1 }.emit(metrics);
        tracing::warn!("sold counts still pending at shutdown are applied by the next start");
    }
}

/// One statement, bounded by `timeout`.
async fn pass(pool: &PgPool, timeout: Duration) -> Result<repo::SoldApplied, String> {
    let work = async {
        let mut conn = pool.acquire().await?;
        repo::apply_sold_counts(&mut conn, BATCH_ROWS).await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(applied)) => Ok(applied),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}
