//! The SQL catalog's connection pool (sqlx 0.8, patched in `vendor/sqlx-core`): connections
//! acquired and returned by many threads at once never make the pool count more idle
//! connections than it may hold. Unpatched, a connection returned while another thread took it
//! could take the count below zero, to `usize::MAX`; the pool's maintenance task then looped
//! without yielding, a core at 100 % and the runtime unable to shut down (seen in CI: an e2e
//! test waited forever on dropping a runtime that had read the catalog).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn a_pool_shared_by_threads_never_counts_more_idle_connections_than_it_may_hold() {
    const MAX: u32 = 3;
    sqlx::any::install_default_drivers();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(6).enable_all().build().unwrap();
    let pool = rt
        .block_on(
            sqlx::any::AnyPoolOptions::new()
                .max_connections(MAX)
                .test_before_acquire(false)
                .connect("sqlite::memory:"),
        )
        .unwrap();
    let highest = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    // A thread that only watches the count, as the maintenance task reads it.
    let watcher = {
        let (pool, highest, done) = (pool.clone(), highest.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                highest.fetch_max(pool.num_idle(), Ordering::Relaxed);
            }
        })
    };
    let until = Instant::now() + Duration::from_secs(3);
    let mut cycles = 0u64;
    rt.block_on(async {
        let workers: Vec<_> = (0..12)
            .map(|_| {
                let (pool, highest) = (pool.clone(), highest.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < until {
                        let conn = pool.acquire().await.unwrap();
                        drop(conn);
                        highest.fetch_max(pool.num_idle(), Ordering::Relaxed);
                        n += 1;
                        if n.is_multiple_of(64) {
                            tokio::task::yield_now().await;
                        }
                    }
                    n
                })
            })
            .collect();
        for w in workers {
            cycles += w.await.unwrap();
        }
    });
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let highest = highest.load(Ordering::Relaxed);
    assert!(cycles > 10_000, "only {cycles} acquire/release cycles: the test did not race");
    assert!(
        highest <= MAX as usize,
        "the pool counted {highest} idle connections of at most {MAX} ({cycles} cycles)"
    );
    rt.block_on(pool.close());
}
