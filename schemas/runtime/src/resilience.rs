//! Riding out faults without a person: every error says whose fault it is ([`Fault`]); a
//! component's work runs under [`supervise`], which retries transient failures with capped
//! exponential backoff and jitter for as long as they last, and stops only on a permanent one;
//! [`Resilience`] counts the retries and restarts, tells how long each dependency has been away,
//! and answers the health checks (`/healthz`, `/readyz`, see [`crate::serve`]).
//!
//! Resumption is each component's own business: every component resumes from durable state (the
//! CDC from its replication slot, the processor from its checkpoint, the archiver from the
//! archive), so a retry continues exactly where the failed attempt's durable state left off.

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// A server a component depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dependency {
    Postgres,
    Kafka,
    ClickHouse,
    ObjectStore,
}

impl Dependency {
    /// The `dependency` label of the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Dependency::Postgres => "postgres",
            Dependency::Kafka => "kafka",
            Dependency::ClickHouse => "clickhouse",
            Dependency::ObjectStore => "object_store",
        }
    }
}

/// Whose fault an error is, and whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A dependency is away or slow (a restart, an outage, a full disk being freed): retry.
    Transient(Dependency),
    /// The user's settings or input: retrying cannot help; the message says what to change.
    Input,
    /// Neither: a bug or a state only a person can resolve; the message says what to do.
    Permanent,
}

/// An error that knows its [`Fault`].
pub trait Classify {
    fn fault(&self) -> Fault;
}

/// Capped exponential backoff with full jitter: the n-th delay is uniform in
/// `[d/2, d]` with `d = min(cap, base * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        Backoff { base, cap, attempt: 0, rng: seed | 1 }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.base.saturating_mul(1u32 << self.attempt.min(20)).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: jitter needs no cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = d / 2;
        half + Duration::from_nanos(self.rng % (half.as_nanos() as u64 + 1))
    }

    /// Back to the base delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The delays between attempts of a component: 0.5 s doubling up to 5 s, so that the end of an
/// outage is noticed within about 5 s.
pub fn default_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(5))
}

/// A component's fault telemetry and health; cheap to clone (shared state).
#[derive(Clone)]
pub struct Resilience {
    retries: IntCounterVec,
    down_seconds: GaugeVec,
    restarts: IntCounter,
    down_since: Arc<Mutex<BTreeMap<Dependency, Instant>>>,
    /// Whether `down_since` has an entry: lets [`Resilience::connected`] skip the lock on the
    /// hot path.
    any_down: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
    /// Unix ms of the last progress, 0 before any.
    progress_ms: Arc<AtomicI64>,
}

/// How long a component may go without progress and still be ready.
const STALL: Duration = Duration::from_secs(60);

impl Resilience {
    /// Registers `retries_total{dependency}`, `dependency_down_seconds{dependency}`,
    /// `restarts_total` and `started_timestamp_seconds` (now, in Unix seconds: the alerts on a
    /// component's last progress count from it until the component first makes some) in
    /// `registry` (which carries the component's prefix).
    pub fn register(registry: &Registry) -> Resilience {
        let retries = IntCounterVec::new(
            Opts::new("retries_total", "Attempts that failed on a dependency and were retried"),
            &["dependency"],
        )
        .expect("metric");
        let down_seconds = GaugeVec::new(
            Opts::new(
                "dependency_down_seconds",
                "How long the dependency has been unreachable (0 when connected)",
            ),
            &["dependency"],
        )
        .expect("metric");
        let restarts =
            IntCounter::new("restarts_total", "Times the component's work was restarted after a failure")
                .expect("metric");
        let started = IntGauge::new("started_timestamp_seconds", "When the component started (Unix seconds)")
            .expect("metric");
        started.set(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64));
        registry.register(Box::new(retries.clone())).expect("unique metric");
        registry.register(Box::new(down_seconds.clone())).expect("unique metric");
        registry.register(Box::new(restarts.clone())).expect("unique metric");
        registry.register(Box::new(started)).expect("unique metric");
        Resilience {
            retries,
            down_seconds,
            restarts,
            down_since: Arc::default(),
            any_down: Arc::default(),
            ready: Arc::default(),
            progress_ms: Arc::default(),
        }
    }

    /// Declares the dependencies a component has, so that their series exist from the start.
    pub fn expect(&self, dependencies: &[Dependency]) {
        for d in dependencies {
            self.retries.with_label_values(&[d.name()]);
            self.down_seconds.with_label_values(&[d.name()]).set(0.0);
        }
    }

    /// An attempt failed on `dependency`: it counts as a retry, and the dependency is away from
    /// now on (if it was not already), which makes the component unready until it answers.
    pub fn failed(&self, dependency: Dependency) {
        self.retries.with_label_values(&[dependency.name()]).inc();
        self.down_since.lock().expect("lock").entry(dependency).or_insert_with(Instant::now);
        self.any_down.store(true, Ordering::SeqCst);
        self.refresh();
    }

    /// `dependency` answered again (cheap when nothing is down: call it on every success).
    pub fn connected(&self, dependency: Dependency) {
        if !self.any_down.load(Ordering::Relaxed) {
            return;
        }
        let mut down = self.down_since.lock().expect("lock");
        if down.remove(&dependency).is_some() {
            self.down_seconds.with_label_values(&[dependency.name()]).set(0.0);
        }
        self.any_down.store(!down.is_empty(), Ordering::SeqCst);
    }

    /// Whether `dependency` is away (it failed and has not answered since).
    pub fn is_down(&self, dependency: Dependency) -> bool {
        self.down_for(dependency).is_some()
    }

    /// How long `dependency` has been away (since its first failure without an answer after
    /// it); `None` while it answers.
    pub fn down_for(&self, dependency: Dependency) -> Option<Duration> {
        if !self.any_down.load(Ordering::Relaxed) {
            return None;
        }
        self.down_since.lock().expect("lock").get(&dependency).map(Instant::elapsed)
    }

    /// The work is connected and running (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        if ready {
            self.progressed();
        }
    }

    /// The work made progress (a loop round, a batch, a confirmation).
    pub fn progressed(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        self.progress_ms.store(now, Ordering::Relaxed);
    }

    /// Updates the down-time gauges (call before rendering the metrics).
    pub fn refresh(&self) {
        for (d, since) in self.down_since.lock().expect("lock").iter() {
            self.down_seconds.with_label_values(&[d.name()]).set(since.elapsed().as_secs_f64());
        }
    }

    /// `Ok` when connected and making progress; else why not.
    pub fn readiness(&self) -> Result<(), String> {
        let down: Vec<String> = self
            .down_since
            .lock()
            .expect("lock")
            .iter()
            .map(|(d, since)| format!("{} unreachable for {:.0} s", d.name(), since.elapsed().as_secs_f64()))
            .collect();
        if !down.is_empty() {
            return Err(down.join("; "));
        }
        if !self.ready.load(Ordering::SeqCst) {
            return Err("not connected yet".into());
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        let idle = Duration::from_millis((now - self.progress_ms.load(Ordering::Relaxed)).max(0) as u64);
        if idle > STALL {
            return Err(format!("no progress for {:.0} s", idle.as_secs_f64()));
        }
        Ok(())
    }
}

/// Resolves once `stop` says so.
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The stop signal every part of a service watches: true once `shutdown` resolves.
pub fn stop_on(shutdown: impl Future<Output = ()> + Send + 'static) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    rx
}

/// Runs `attempt` until it returns, is stopped, or fails for good. A transient failure is logged
/// (naming `component` and the dependency), counted, and retried after a backoff; the backoff
/// starts over once an attempt has run for a minute. Each attempt gets the stop signal; a stop
/// during a backoff ends the loop with `Ok(None)`.
pub async fn supervise<T, E, F, Fut>(
    component: &str,
    resilience: &Resilience,
    stop: watch::Receiver<bool>,
    mut attempt: F,
) -> Result<Option<T>, E>
where
    E: Classify + std::fmt::Display,
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = default_backoff();
    loop {
        let started = Instant::now();
        match attempt(stop.clone()).await {
            Ok(t) => return Ok(Some(t)),
            Err(e) => match e.fault() {
                Fault::Transient(dependency) => {
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff.reset();
                    }
                    resilience.failed(dependency);
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        component,
                        dependency = dependency.name(),
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "transient failure: retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped(stop.clone()) => return Ok(None),
                    }
                    if *stop.borrow() {
                        return Ok(None);
                    }
                    resilience.restarts.inc();
                }
                Fault::Input | Fault::Permanent => return Err(e),
            },
        }
    }
}

/// Reading on at a stop: the position each input is to reach (what the source held at the stop),
/// until a deadline. Shared by the processor and the archiver (`*.drain_on_stop_ms`).
#[derive(Debug, Clone)]
pub struct StopDrain {
    targets: Vec<i64>,
    deadline: Instant,
}

impl StopDrain {
    pub fn new(targets: Vec<i64>, within: Duration) -> StopDrain {
        StopDrain { targets, deadline: Instant::now() + within }
    }

    /// Whether the inputs, at `reached` (in the targets' order), may stop: every target reached,
    /// or the deadline passed (then logs how many records are left for the next start).
    pub fn done(&self, reached: impl Iterator<Item = i64>, setting: &str) -> bool {
        let left: i64 = reached.zip(&self.targets).map(|(at, target)| (target - at).max(0)).sum();
        if left == 0 {
            tracing::info!("stopping: everything the inputs held at the stop was read");
            return true;
        }
        if Instant::now() >= self.deadline {
            tracing::warn!(
                records_left = left,
                "stopping before everything the inputs held at the stop was read ({setting}); the rest \
                 is read at the next start"
            );
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(Fault);
    impl Classify for E {
        fn fault(&self) -> Fault {
            self.0
        }
    }
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (n, d) in delays.iter().enumerate() {
            let full = Duration::from_millis(100 * (1 << n)).min(Duration::from_secs(1));
            assert!(*d >= full / 2 && *d <= full, "delay {n}: {d:?} not in [{:?}, {full:?}]", full / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_permanent_ones_end_the_loop() {
        let registry = Registry::new();
        let r = Resilience::register(&registry);
        r.expect(&[Dependency::Kafka]);
        let (_tx, rx) = watch::channel(false);
        let mut calls = 0;
        let out: Result<Option<u32>, E> = supervise("test", &r, rx.clone(), |_| {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(E(Fault::Transient(Dependency::Kafka)))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(out.unwrap(), Some(3));
        assert_eq!(r.retries.with_label_values(&["kafka"]).get(), 2);
        assert_eq!(r.restarts.get(), 2);
        assert!(r.readiness().unwrap_err().contains("kafka unreachable"));
        assert!(r.down_for(Dependency::Kafka).is_some());
        assert_eq!(r.down_for(Dependency::Postgres), None);
        r.connected(Dependency::Kafka);
        assert_eq!(r.down_for(Dependency::Kafka), None);
        r.set_ready(true);
        assert_eq!(r.readiness(), Ok(()));

        let out: Result<Option<u32>, E> = supervise("test", &r, rx, |_| async { Err(E(Fault::Input)) }).await;
        assert!(matches!(out, Err(E(Fault::Input))));
    }

    #[test]
    fn the_start_time_is_exported() {
        let registry = Registry::new();
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as f64;
        let _r = Resilience::register(&registry);
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as f64;
        let families = registry.gather();
        let started = families
            .iter()
            .find(|f| f.name() == "started_timestamp_seconds")
            .expect("started_timestamp_seconds registered");
        let value = started.get_metric()[0].get_gauge().get_value();
        assert!((before..=after).contains(&value), "{before} <= {value} <= {after}");
    }

    #[tokio::test]
    async fn a_stop_during_a_backoff_ends_the_loop() {
        let r = Resilience::register(&Registry::new());
        let (tx, rx) = watch::channel(false);
        let out = supervise("test", &r, rx, |_| {
            let _ = tx.send(true);
            async { Err::<(), _>(E(Fault::Transient(Dependency::Postgres))) }
        })
        .await;
        assert!(matches!(out, Ok(None)));
    }
}
