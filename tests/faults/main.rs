//! The fault-injection suite: `rainbow up` runs the pipeline on a private stack (see [`stack`])
//! under a steady order load with catalogue churn while, one after the other, its servers are
//! restarted, stopped, frozen and filled up, and its components and `rainbow up` itself are
//! killed with SIGKILL. After each fault the suite waits until the warehouse holds every order
//! committed before the fault's end and the first one committed after it (the fault's recovery
//! time, printed), then checks that every
//! component runs and is ready, and that no component was restarted unless it was the one
//! killed: the components ride out their servers' faults by themselves.
//!
//! At the end the producers stop and the pipeline drains; then the warehouse must equal
//! PostgreSQL exactly ([`figures`]), the archive must hold every Kafka offset once, no dead
//! letter may have been written, and a replay of the archive must give every table ClickHouse
//! holds, row for row. Last, `rainbow up` runs with its own producers and is stopped under their
//! load: once it has exited, the warehouse must equal PostgreSQL at once (sold counts included).
//!
//! It restarts servers, so it runs on servers of its own, one fault at a time, outside
//! `cargo test --workspace`: `cargo test --test faults` (tests/run does). It needs root (or
//! passwordless sudo) for the object store's tmpfs.

#[path = "../e2e/common/mod.rs"]
mod common;
use common::figures;
mod pipeline;
mod stack;

use pipeline::COMPONENTS;
use std::time::{Duration, Instant};

/// How long recovery, readiness and the final drain may take before the suite fails.
const DEADLINE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
enum Fault {
    PostgresRestart,
    PostgresDown(u64),
    PostgresFrozen(u64),
    ClickHouseStopped(u64),
    ClickHouseFrozen(u64),
    KafkaRestart,
    KafkaDown(u64),
    ObjectStoreFull(u64),
    Kill(&'static str),
    KillUp,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::PostgresRestart => write!(f, "PostgreSQL restart"),
            Fault::PostgresDown(s) => write!(f, "PostgreSQL down {s} s"),
            Fault::PostgresFrozen(s) => write!(f, "PostgreSQL frozen (SIGSTOP) {s} s"),
            Fault::ClickHouseStopped(s) => write!(f, "ClickHouse stopped {s} s"),
            Fault::ClickHouseFrozen(s) => write!(f, "ClickHouse frozen (SIGSTOP) {s} s"),
            Fault::KafkaRestart => write!(f, "Kafka restart"),
            Fault::KafkaDown(s) => write!(f, "Kafka down {s} s"),
            Fault::ObjectStoreFull(s) => write!(f, "object store full {s} s"),
            Fault::Kill(c) => write!(f, "kill -9 {c}"),
            Fault::KillUp => write!(f, "kill -9 rainbow up"),
        }
    }
}

impl Fault {
    /// The dependency whose outage must show as retries in the components' metrics.
    fn dependency(self) -> Option<&'static str> {
        match self {
            Fault::PostgresDown(_) | Fault::PostgresFrozen(_) => Some("postgres"),
            Fault::ClickHouseStopped(_) => Some("clickhouse"),
            Fault::KafkaDown(_) => Some("kafka"),
            Fault::ObjectStoreFull(_) => Some("object_store"),
            _ => None,
        }
    }
}

const FAULTS: [Fault; 13] = [
    Fault::PostgresRestart,
    Fault::PostgresDown(60),
    // Longer than cdc.server_timeout_ms (30 s): the CDC must notice a server that does not
    // answer (nor close its connections) and reconnect, not wait on it.
    Fault::PostgresFrozen(45),
    Fault::ClickHouseStopped(60),
    Fault::ClickHouseFrozen(30),
    Fault::KafkaRestart,
    Fault::KafkaDown(60),
    Fault::ObjectStoreFull(30),
    Fault::Kill("api"),
    Fault::Kill("cdc"),
    Fault::Kill("process"),
    Fault::Kill("archive"),
    Fault::KillUp,
];

fn main() {
    let stack = stack::Stack::launch();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(suite(&stack));
    drop(runtime);
    drop(stack);
    println!("faults: ok");
}

async fn suite(stack: &stack::Stack) {
    let db = common::env_or("RAINBOW_CLICKHOUSE__DATABASE", "rainbow");
    let mut up = pipeline::up();
    up.start();
    wait_ready(&up, "the pipeline to start").await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(common::pg_options("rainbow"));
    let mut producers = pipeline::producers();
    producers.start();
    common::eventually("the first orders in fact_sales", DEADLINE, || {
        let pool = pool.clone();
        let db = db.clone();
        async move {
            (figures::max_order(&pool).await? > 20 && figures::caught_up_to(&pool, &db, 20).await)
                .then_some(())
        }
    })
    .await;

    // `cargo test --test faults -- kafka clickhouse`: only the faults whose name holds one of the
    // words (case-insensitive); all by default.
    let only: Vec<String> =
        std::env::args().skip(1).filter(|a| !a.starts_with('-')).map(|a| a.to_lowercase()).collect();
    let mut report = Vec::new();
    for fault in FAULTS {
        if !only.is_empty() && !only.iter().any(|w| fault.to_string().to_lowercase().contains(w)) {
            continue;
        }
        let before = pipeline::restarts().await;
        let retries_before = pipeline::all_retries().await;
        let cdc_retries_before =
            pipeline::component_retries("cdc").await.get("postgres").copied().unwrap_or(0.0);
        println!("faults: {fault} ...");
        let began = Instant::now();
        inject(fault, stack, &mut up).await;
        let ended = Instant::now();
        let recovery = recover(&pool, &db, &up, ended).await;
        wait_ready(&up, &format!("every component to be ready after {fault}")).await;
        let after = pipeline::restarts().await;
        let expected: std::collections::BTreeMap<String, u64> = match fault {
            // A new supervisor counts from 0.
            Fault::KillUp => after.keys().map(|c| (c.clone(), 0)).collect(),
            Fault::Kill(killed) => {
                before.iter().map(|(c, n)| (c.clone(), n + u64::from(c == killed))).collect()
            }
            _ => before.clone(),
        };
        assert_eq!(
            after, expected,
            "restarts by rainbow up after {fault} (before: {before:?}): only a killed component may be restarted\n{}",
            up.logs()
        );
        // The fault shows in the telemetry: retries counted on the dependency that failed.
        let retries_after = pipeline::all_retries().await;
        let retried: Vec<String> = retries_after
            .iter()
            .filter_map(|(d, n)| {
                let delta = n - retries_before.get(d).copied().unwrap_or(0.0);
                (delta > 0.0).then(|| format!("{d} +{delta}"))
            })
            .collect();
        if let Some(dependency) = fault.dependency() {
            let after = retries_after.get(dependency).copied().unwrap_or(0.0);
            assert!(
                matches!(fault, Fault::KillUp)
                    || after > retries_before.get(dependency).copied().unwrap_or(0.0),
                "{fault}: no retry on {dependency} was counted ({retries_before:?} -> {retries_after:?})"
            );
        }
        if let Fault::PostgresFrozen(_) = fault {
            let after = pipeline::component_retries("cdc").await.get("postgres").copied().unwrap_or(0.0);
            assert!(
                after > cdc_retries_before,
                "{fault}: the CDC counted no retry on postgres ({cdc_retries_before} -> {after}): it waited on the frozen server\n{}",
                up.logs()
            );
        }
        let line = format!(
            "{fault:<34} lasted {:>5.1} s; warehouse caught up {:>5.2} s after its end; retries: {}",
            (ended - began).as_secs_f64(),
            recovery.as_secs_f64(),
            if retried.is_empty() { "none".to_string() } else { retried.join(", ") }
        );
        println!("faults: {line}");
        report.push(line);
    }

    // Drain: no new orders; the warehouse reaches the source's final state.
    producers.stop();
    let last = figures::max_order(&pool).await.expect("PostgreSQL answers");
    common::eventually("the warehouse to catch up after the load stopped", DEADLINE, || {
        let (pool, db) = (pool.clone(), db.clone());
        async move { figures::caught_up_to(&pool, &db, last).await.then_some(()) }
    })
    .await;
    let compared = eventually_exact(&pool, &db).await;

    // Nothing parked: no dead letter counted, none in the dead-letter topic.
    let metrics = pipeline::metrics(COMPONENTS[2].1).await.unwrap();
    assert_eq!(pipeline::total(&metrics, "rainbow_processor_dead_letters_total"), 0.0, "{metrics}");
    let dead = common::archive::end_offsets(&["rainbow.processor.dead_letter".to_string()]);
    assert!(dead.values().all(|n| *n == 0), "dead letters were written: {dead:?}");
    // The alert rules watch series the components and `rainbow up` really export.
    for (c, addr) in COMPONENTS.iter().chain(&[("up", pipeline::UP)]) {
        let text = pipeline::metrics(addr).await.unwrap();
        if *c != "api" {
            common::assert_alert_metrics_exported(if *c == "process" { "processor" } else { c }, &text);
        }
    }

    // The archive: every offset of every CDC topic once.
    let topics: Vec<String> =
        rainbow_schemas::postgres::SOURCE_TABLES.iter().map(|t| format!("rainbow.public.{t}")).collect();
    let ends = common::archive::end_offsets(&topics);
    let store = stack.objects.join("store");
    common::archive::assert_every_offset_once(&store, &ends, DEADLINE).await;
    let records: i64 = ends.values().sum();

    // History: a replay of the archive (the same code over the same log, without faults) gives
    // every table ClickHouse holds.
    up.stop();
    let out = stack.home.join("replay");
    let (ok, text) = common::replay::replay("rainbow", &store, &out, &[]);
    assert!(ok, "{text}");
    common::replay::assert_same_as_clickhouse(&out, &db).await;

    // A stop under load: `rainbow up` with its own producers, stopped (SIGTERM, as Ctrl-C) while
    // they post orders and change the catalogue. Once it has exited, before any restart, the
    // warehouse equals PostgreSQL: the producers and the API stop first (the API's last sold
    // counts included), then the CDC reads on to the WAL position of its stop, then the
    // processor to the end of its topics. Compared once, not retried.
    let mut busy = pipeline::up_producing("20", "2");
    busy.start();
    wait_ready(&busy, "the pipeline to start with its producers").await;
    let before = figures::max_order(&pool).await.expect("PostgreSQL answers");
    common::eventually("orders of the built-in producers in fact_sales", DEADLINE, || {
        let (pool, db) = (pool.clone(), db.clone());
        async move {
            let max = figures::max_order(&pool).await?;
            (max >= before + 40 && figures::caught_up_to(&pool, &db, before + 20).await).then_some(())
        }
    })
    .await;
    busy.stop();
    let placed = figures::max_order(&pool).await.expect("PostgreSQL answers") - before;
    let at_stop = figures::assert_exactly_the_source(&pool, &db).await;
    let products = figures::assert_sold_counts_exact(&pool, &db).await;
    println!(
        "faults: stopped under load ({placed} orders placed by its producers): at once {}; sold_count of {products} products equal",
        at_stop.join("; ")
    );

    println!(
        "faults: recovery times (fault end -> every order before it and the first after it in fact_sales):"
    );
    for line in &report {
        println!("faults:   {line}");
    }
    println!("faults: after the load: {}; archive holds {records} records, each offset once; 0 dead letters; replay = ClickHouse for all 13 tables", compared.join("; "));
    pool.close().await;
}

/// The comparison with PostgreSQL, retried for a short while: the aggregates are written in the
/// same batches as the facts, but a batch may be between its tables.
async fn eventually_exact(pool: &sqlx::PgPool, db: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = {
            let (pool, db) = (pool.clone(), db.to_string());
            tokio::spawn(async move { figures::assert_exactly_the_source(&pool, &db).await })
        };
        match attempt.await {
            Ok(report) => return report,
            Err(e) if Instant::now() < deadline => {
                eprintln!("faults: not equal yet ({e}); again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// Injects one fault and returns when it is over (the server back, the component killed).
async fn inject(fault: Fault, stack: &stack::Stack, up: &mut common::process::Service) {
    let sleep = |s: u64| tokio::time::sleep(Duration::from_secs(s));
    match fault {
        Fault::PostgresRestart => {
            stack.stop("postgres");
            stack.start("postgres");
        }
        Fault::PostgresDown(s) => {
            let began = Instant::now();
            stack.stop("postgres");
            api_refuses_while_the_database_is_away().await;
            tokio::time::sleep(Duration::from_secs(s).saturating_sub(began.elapsed())).await;
            stack.start("postgres");
            common::eventually("the API to take orders again, without a restart", DEADLINE, || async {
                (post_order().await.0 == 201).then_some(())
            })
            .await;
        }
        Fault::ClickHouseStopped(s) => {
            stack.stop("clickhouse");
            sleep(s).await;
            stack.start("clickhouse");
        }
        Fault::PostgresFrozen(s) => {
            stack.signal("postgres", "STOP");
            sleep(s).await;
            stack.signal("postgres", "CONT");
        }
        Fault::ClickHouseFrozen(s) => {
            stack.signal("clickhouse", "STOP");
            sleep(s).await;
            stack.signal("clickhouse", "CONT");
        }
        Fault::KafkaRestart => {
            stack.stop("kafka");
            stack.start("kafka");
        }
        Fault::KafkaDown(s) => {
            stack.stop("kafka");
            sleep(s).await;
            stack.start("kafka");
        }
        Fault::ObjectStoreFull(s) => {
            let began = Instant::now();
            let ballast = stack.fill_objects();
            // The writes really fail: the archiver (or the processor's checkpoints) retries on
            // the object store.
            common::eventually("a retry on the full object store", Duration::from_secs(s), || async {
                (pipeline::retries("object_store").await > 0.0).then_some(())
            })
            .await;
            tokio::time::sleep(Duration::from_secs(s).saturating_sub(began.elapsed())).await;
            stack.free_objects(&ballast);
        }
        Fault::Kill(component) => {
            let pid = pipeline::child_pid(up.pid().unwrap(), component)
                .unwrap_or_else(|| panic!("no {component} process under rainbow up"));
            let ok = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -9 {component} ({pid})");
        }
        Fault::KillUp => {
            up.kill();
            // As a person or a service manager would: start it again at once. It waits for the
            // old components to finish their shutdown (they got SIGTERM when it died).
            up.start();
        }
    }
}

/// While PostgreSQL is away the API answers 503 (with a message that names no driver
/// internals) and is not ready, and keeps serving.
async fn api_refuses_while_the_database_is_away() {
    // Requests already waiting for a connection when the server went away may end with the
    // request timeout (also a 503); within a probe of the outage every request gets this one.
    let (code, body) =
        common::eventually("the API to answer 503 database_unavailable", Duration::from_secs(30), || async {
            let (code, body) = post_order().await;
            (code == 503 && body.contains("\"database_unavailable\"")).then_some((code, body))
        })
        .await;
    assert_eq!(code, 503);
    assert!(body.contains("\"database_unavailable\""), "{body}");
    for internal in ["pool", "sqlx", "os error", "connection refused", "5432", "25432"] {
        assert!(!body.to_lowercase().contains(internal), "the 503 body leaks {internal:?}: {body}");
    }
    // Readiness follows the API's own probe of the database (every 2 s), not the request's error.
    common::eventually("the API not ready", Duration::from_secs(30), || async {
        (pipeline::status(COMPONENTS[0].1, "/readyz").await == Some(503)).then_some(())
    })
    .await;
    assert_eq!(pipeline::status(COMPONENTS[0].1, "/healthz").await, Some(200));
}

/// POSTs one small order; (status, body), status 0 when nothing answers.
async fn post_order() -> (u16, String) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let order =
        serde_json::json!({"customerId": 1, "payment_id": 1, "products": [{"productId": 1, "quantity": 1}]});
    match client.post(format!("http://{}/api/v1/orders", COMPONENTS[0].1)).json(&order).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// Waits until the warehouse holds every order committed before `ended`; the time since.
async fn recover(pool: &sqlx::PgPool, db: &str, up: &common::process::Service, ended: Instant) -> Duration {
    // The orders PostgreSQL holds when it first answers after the fault; then the first order
    // committed after that: the pipeline carries new orders end to end again when the
    // warehouse holds it and everything before it.
    let before = common::eventually("PostgreSQL to answer", DEADLINE, || figures::max_order(pool)).await;
    let max = common::eventually("a new order to be committed after the fault", DEADLINE, || async move {
        figures::max_order(pool).await.filter(|m| *m > before)
    })
    .await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        if figures::caught_up_to(pool, db, max).await {
            return ended.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the warehouse did not catch up with order {max} within {DEADLINE:?}:\n{}",
            up.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every component runs and is ready.
async fn wait_ready(up: &common::process::Service, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let missing = pipeline::not_ready().await;
        if missing.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {missing:?}\n{}", up.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
