//! `rainbow loadgen`: the order producers, catalogue churn, and the API benchmark.
//!
//! Producers share one target rate: request `n` is due at `start + n / rate`, whichever producer
//! takes it, so the aggregate rate holds even when some requests are slow (up to the producers'
//! concurrency). Rate 0 means as fast as the producers can go. A run ends after `count` orders,
//! after `duration` (on time even when the API is slower than the rate: what is not sent by then
//! is not sent), or on the stop signal (Ctrl-C), whichever comes first, and always ends with a
//! summary.

pub mod churn;
pub mod orders;
pub mod stats;

use churn::Churner;
use orders::{Catalogue, Shared};
use sqlx::PgPool;
use stats::{millis, Counters, Latencies, Snapshot};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("reading the catalogue from PostgreSQL: {0}")]
    Catalogue(#[source] sqlx::Error),
    #[error("the catalogue is empty (no customers, payment methods or products): run `rainbow migrate --seed` first")]
    EmptyCatalogue,
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("the API at {url} does not answer ({source}); start it with `rainbow api`")]
    ApiDown {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct LoadgenSettings {
    /// Base URL of the API, e.g. `http://127.0.0.1:8080`.
    pub api_url: String,
    /// Concurrent producers (each has at most one request in flight).
    pub producers: usize,
    /// Orders per second over all producers; 0 = as fast as possible.
    pub rate: f64,
    /// Stop after this many orders (or changes, when `orders` is false).
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    /// Spread order dates over the last `days` days (weekday-weighted); 0 = server time.
    pub days: u32,
    /// Catalogue changes per second; 0 = no churn.
    pub churn_rate: f64,
    /// Send orders (false: churn only).
    pub orders: bool,
    pub seed: u64,
    /// Print a live progress line on stderr.
    pub progress: bool,
}

impl LoadgenSettings {
    pub fn validate(&self) -> Result<(), LoadgenError> {
        let bad = |m: &str| Err(LoadgenError::Invalid(m.to_string()));
        if self.producers == 0 || self.producers > 4096 {
            return bad("--producers must be between 1 and 4096");
        }
        let valid = |r: f64| r.is_finite() && r >= 0.0;
        if !valid(self.rate) || !valid(self.churn_rate) {
            return bad("rates must be finite and >= 0");
        }
        if !self.orders && self.churn_rate == 0.0 {
            return bad("nothing to do: --no-orders needs --churn-rate > 0");
        }
        if self.days > 3650 {
            return bad("--days must be at most 3650");
        }
        Ok(())
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub elapsed: Duration,
    pub counts: Snapshot,
    pub p50: Duration,
    pub p99: Duration,
    pub churn: BTreeMap<&'static str, u64>,
    /// First example of each kind of failure: what a user needs to see to fix it.
    pub failures: Vec<String>,
    /// Ids of the orders created (from the `Location` header).
    pub created: Vec<i64>,
}

impl Summary {
    pub fn render(&self) -> String {
        let c = &self.counts;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mut out = format!(
            "orders sent {} in {:.1} s ({:.0}/s): 2xx {}, 4xx {}, 5xx {}, no response {}; latency p50 {}, p99 {}\n",
            c.sent,
            secs,
            c.sent as f64 / secs,
            c.ok,
            c.client_errors,
            c.server_errors,
            c.transport_errors,
            millis(self.p50),
            millis(self.p99),
        );
        if c.churned + c.churn_errors > 0 {
            let by_table: Vec<String> = self.churn.iter().map(|(t, n)| format!("{t} {n}")).collect();
            out += &format!(
                "catalogue changes {} ({}), failed {}\n",
                c.churned,
                by_table.join(", "),
                c.churn_errors
            );
        }
        for f in &self.failures {
            out += &format!("  e.g. {f}\n");
        }
        out
    }
}

struct Run {
    settings: LoadgenSettings,
    counters: Counters,
    next: AtomicU64,
    start: Instant,
    deadline: Option<Instant>,
    failures: Mutex<Vec<String>>,
    churn: Mutex<BTreeMap<&'static str, u64>>,
}

impl Run {
    /// Whether the run's time is up for a request or change due at `due`: it would be due at or
    /// after the deadline, or the deadline has passed (a target slower than the rate leaves
    /// requests due earlier unsent; the run still ends on time).
    fn over(&self, due: Instant) -> bool {
        self.deadline.is_some_and(|d| due >= d || Instant::now() >= d)
    }

    fn note_failure(&self, what: String) {
        let mut f = self.failures.lock().expect("failures lock");
        let kind = what.split(':').next().unwrap_or_default().to_string();
        if f.len() < 5 && !f.iter().any(|x| x.starts_with(&kind)) {
            f.push(what);
        }
    }

    /// Claims the next request and waits until it is due; None when the run is over.
    async fn claim(&self, rate: f64, limit: Option<u64>, stop: &mut watch::Receiver<bool>) -> Option<u64> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if limit.is_some_and(|l| n >= l) || *stop.borrow() {
            return None;
        }
        let due =
            if rate > 0.0 { self.start + Duration::from_secs_f64(n as f64 / rate) } else { Instant::now() };
        if self.over(due) {
            return None;
        }
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => Some(n),
            _ = stop.changed() => None,
        }
    }
}

pub fn http_client(connections: usize) -> Result<reqwest::Client, LoadgenError> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        .map_err(LoadgenError::Client)
}

async fn check_api(client: &reqwest::Client, url: &str) -> Result<(), LoadgenError> {
    client
        .get(format!("{url}/ping"))
        .send()
        .await
        .map(|_| ())
        .map_err(|source| LoadgenError::ApiDown { url: url.to_string(), source })
}

/// Runs producers (and churn) until the count, the duration or `stop`.
pub async fn run(
    pool: PgPool,
    settings: LoadgenSettings,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<Summary, LoadgenError> {
    settings.validate()?;
    let api_url = settings.api_url.trim_end_matches('/').to_string();
    let client = http_client(settings.producers)?;
    let shared = if settings.orders {
        check_api(&client, &api_url).await?;
        let catalogue = Catalogue::load(&pool).await.map_err(LoadgenError::Catalogue)?;
        if catalogue.is_empty() {
            return Err(LoadgenError::EmptyCatalogue);
        }
        Some(Shared::new(catalogue, settings.seed))
    } else {
        None
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let start = Instant::now();
    let run = Arc::new(Run {
        deadline: settings.duration.map(|d| start + d),
        settings: settings.clone(),
        counters: Counters::default(),
        next: AtomicU64::new(0),
        start,
        failures: Mutex::new(Vec::new()),
        churn: Mutex::new(BTreeMap::new()),
    });

    let mut producers = Vec::new();
    if let Some(shared) = &shared {
        for p in 0..settings.producers {
            let maker =
                shared.maker(settings.seed.wrapping_mul(1_000_003).wrapping_add(p as u64), settings.days);
            producers.push(tokio::spawn(produce(
                run.clone(),
                client.clone(),
                api_url.clone(),
                maker,
                stop_rx.clone(),
            )));
        }
    }
    let churner =
        (settings.churn_rate > 0.0).then(|| tokio::spawn(churn(run.clone(), pool.clone(), stop_rx.clone())));
    let progress = settings.progress.then(|| tokio::spawn(progress(run.clone(), stop_rx.clone())));

    let mut parts = Vec::new();
    let mut created = Vec::new();
    for p in producers {
        let (latencies, ids) = p.await.expect("producer task");
        parts.push(latencies);
        created.extend(ids);
    }
    // Churn alone runs until the duration, the count or the stop signal; alongside orders it
    // stops when they do.
    if let Some(c) = churner {
        if settings.orders {
            c.abort();
        } else {
            let _ = c.await;
        }
    }
    if let Some(p) = progress {
        p.abort();
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
    }
    let latencies = Latencies::merge(parts);
    let summary = Summary {
        elapsed: start.elapsed(),
        counts: run.counters.snapshot(),
        p50: latencies.percentile(50.0),
        p99: latencies.percentile(99.0),
        churn: run.churn.lock().expect("churn lock").clone(),
        failures: run.failures.lock().expect("failures lock").clone(),
        created,
    };
    Ok(summary)
}

async fn produce(
    run: Arc<Run>,
    client: reqwest::Client,
    api_url: String,
    mut maker: orders::OrderMaker,
    mut stop: watch::Receiver<bool>,
) -> (Latencies, Vec<i64>) {
    let url = format!("{api_url}/api/v1/orders");
    let mut latencies = Latencies::default();
    let mut created = Vec::new();
    while run.claim(run.settings.rate, run.settings.count, &mut stop).await.is_some() {
        let body = maker.next_order(chrono::Utc::now());
        let sent = Instant::now();
        let status = match client.post(&url).json(&body).send().await {
            Ok(response) => {
                let status = response.status();
                let id = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| l.rsplit('/').next())
                    .and_then(|id| id.parse::<i64>().ok());
                let text = response.text().await.unwrap_or_default();
                if status.is_success() {
                    created.extend(id);
                } else {
                    run.note_failure(format!(
                        "HTTP {}: {}",
                        status.as_u16(),
                        text.chars().take(300).collect::<String>()
                    ));
                }
                Some(status.as_u16())
            }
            Err(e) => {
                run.note_failure(format!("no response: {e}"));
                None
            }
        };
        latencies.record(sent.elapsed());
        run.counters.record(status);
    }
    (latencies, created)
}

async fn churn(run: Arc<Run>, pool: PgPool, mut stop: watch::Receiver<bool>) {
    let mut churner = Churner::new(run.settings.seed);
    let limit = if run.settings.orders { None } else { run.settings.count };
    let period = Duration::from_secs_f64(1.0 / run.settings.churn_rate);
    let mut n: u64 = 0;
    loop {
        if limit.is_some_and(|l| n >= l) || *stop.borrow() {
            return;
        }
        let due = run.start + period.mul_f64(n as f64);
        if run.over(due) {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            _ = stop.changed() => return,
        }
        n += 1;
        match churner.step(&pool).await {
            Ok(Some(change)) => {
                run.counters.churned.fetch_add(1, Ordering::Relaxed);
                *run.churn.lock().expect("churn lock").entry(change.table()).or_default() += 1;
            }
            Ok(None) => {}
            Err(e) => {
                run.counters.churn_errors.fetch_add(1, Ordering::Relaxed);
                run.note_failure(format!("catalogue change: {e}"));
            }
        }
    }
}

async fn progress(run: Arc<Run>, mut stop: watch::Receiver<bool>) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty { Duration::from_secs(1) } else { Duration::from_secs(5) };
    let mut last = Snapshot::default();
    let mut ticker = tokio::time::interval_at((Instant::now() + every).into(), every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let now = run.counters.snapshot();
        let line = format!(
            "[{:>6.1} s] sent {} ({:.0}/s)  2xx {}  4xx {}  5xx {}  no response {}{}",
            run.start.elapsed().as_secs_f64(),
            now.sent,
            (now.sent - last.sent) as f64 / every.as_secs_f64(),
            now.ok,
            now.client_errors,
            now.server_errors,
            now.transport_errors,
            if now.churned + now.churn_errors > 0 {
                format!("  catalogue changes {}", now.churned)
            } else {
                String::new()
            },
        );
        if tty {
            eprint!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
        last = now;
    }
}

/// Settings of the API benchmark (`rainbow loadgen --bench`).
#[derive(Debug, Clone)]
pub struct BenchSettings {
    pub api_url: String,
    pub connections: usize,
    pub duration: Duration,
    pub seed: u64,
}

/// One benchmark phase's result.
#[derive(Debug, Clone)]
pub struct PhaseResult {
    pub name: &'static str,
    pub requests: u64,
    pub ok: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

impl PhaseResult {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The API benchmark: POST orders as fast as `connections` producers can for `duration`, then
/// GET the created orders by id (random picks) for `duration`. Throughput counts 2xx only.
pub async fn bench(pool: PgPool, settings: BenchSettings) -> Result<Vec<PhaseResult>, LoadgenError> {
    let post = run(
        pool,
        LoadgenSettings {
            api_url: settings.api_url.clone(),
            producers: settings.connections,
            rate: 0.0,
            count: None,
            duration: Some(settings.duration),
            days: 28,
            churn_rate: 0.0,
            orders: true,
            seed: settings.seed,
            progress: false,
        },
        std::future::pending(),
    )
    .await?;
    if post.created.is_empty() {
        return Err(LoadgenError::Invalid(format!("no order was created; {}", post.render())));
    }
    let post_phase = PhaseResult {
        name: "POST /api/v1/orders",
        requests: post.counts.sent,
        ok: post.counts.ok,
        elapsed: post.elapsed,
        p50: post.p50,
        p99: post.p99,
    };

    let ids = Arc::new(post.created);
    let client = http_client(settings.connections)?;
    let base = settings.api_url.trim_end_matches('/').to_string();
    let start = Instant::now();
    let deadline = start + settings.duration;
    let ok = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..settings.connections {
        let (client, ids, base, ok, sent) =
            (client.clone(), ids.clone(), base.clone(), ok.clone(), sent.clone());
        let mut rng = rainbow_schemas::rng::SplitMix64::new(settings.seed ^ (c as u64 + 1) << 32);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            while Instant::now() < deadline {
                let id = ids[rng.below(ids.len() as u64) as usize];
                let t = Instant::now();
                let result = client.get(format!("{base}/api/v1/orders/{id}")).send().await;
                let success = match result {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                latencies.record(t.elapsed());
                sent.fetch_add(1, Ordering::Relaxed);
                if success {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await.expect("reader task"));
    }
    let elapsed = start.elapsed();
    let latencies = Latencies::merge(parts);
    let get_phase = PhaseResult {
        name: "GET /api/v1/orders/{id}",
        requests: sent.load(Ordering::Relaxed),
        ok: ok.load(Ordering::Relaxed),
        elapsed,
        p50: latencies.percentile(50.0),
        p99: latencies.percentile(99.0),
    };
    Ok(vec![post_phase, get_phase])
}

/// The benchmark table.
pub fn render_bench(results: &[PhaseResult], connections: usize) -> String {
    let mut out = format!(
        "{:<26} {:>11} {:>10} {:>9} {:>12} {:>10} {:>10}\n",
        "phase", "connections", "requests", "2xx", "2xx/s", "p50", "p99"
    );
    for r in results {
        out += &format!(
            "{:<26} {:>11} {:>10} {:>9} {:>12.0} {:>10} {:>10}\n",
            r.name,
            connections,
            r.requests,
            r.ok,
            r.per_second(),
            millis(r.p50),
            millis(r.p99)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rate: f64, started_ago: Duration, duration: Duration) -> Run {
        let start = Instant::now() - started_ago;
        Run {
            settings: LoadgenSettings {
                api_url: String::new(),
                producers: 1,
                rate,
                count: None,
                duration: Some(duration),
                days: 0,
                churn_rate: 0.0,
                orders: true,
                seed: 1,
                progress: false,
            },
            counters: Counters::default(),
            next: AtomicU64::new(0),
            start,
            deadline: Some(start + duration),
            failures: Mutex::new(Vec::new()),
            churn: Mutex::new(BTreeMap::new()),
        }
    }

    #[tokio::test]
    async fn a_run_behind_its_rate_ends_at_its_deadline_with_requests_unsent() {
        let (_tx, mut stop) = watch::channel(false);
        // 10 requests a second for 5 s, 10 s ago: request 0 was due before the deadline, but
        // the deadline has passed.
        let late = run(10.0, Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(late.claim(10.0, None, &mut stop).await, None);
        // Within the run: requests due so far are handed out at once, in order.
        let on_time = run(10.0, Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(on_time.claim(10.0, None, &mut stop).await, Some(0));
        assert_eq!(on_time.claim(10.0, None, &mut stop).await, Some(1));
        // A request due at or after the deadline is not sent.
        let ending = run(1.0, Duration::ZERO, Duration::from_millis(500));
        assert_eq!(ending.claim(1.0, None, &mut stop).await, Some(0));
        assert_eq!(ending.claim(1.0, None, &mut stop).await, None);
    }
}
