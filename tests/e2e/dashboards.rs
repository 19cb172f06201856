//! What people see and what pages them, on the real servers: the Rainbow Sales dashboard in a real
//! browser (Superset served by `deploy/local/start superset`, headless Chromium driven by
//! tests/browser/dashboard.py), and the "down" alerts in a real Prometheus
//! (`deploy/local/start prometheus` with the project's rules). Each test starts its own Superset
//! or Prometheus under a temporary RAINBOW_HOME on a free port, next to the local stack, and stops
//! it by its PID file at the end.

use crate::common::cdc::CdcProcess;
use crate::common::figures;
use crate::common::process::{free_port, Service};
use crate::common::processor::{clickhouse, ProcessorProcess};
use crate::common::source::{caught_up, churn, exec, pg_rows};
use crate::common::{eventually, unique_name, TestDb};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The stack's RAINBOW_HOME: where `tests/run` keeps the test venv and `deploy/local/start` the
/// Superset venv that a test's own Superset reuses.
fn stack_home() -> PathBuf {
    std::env::var("RAINBOW_HOME").map(PathBuf::from).unwrap_or_else(|_| root().join(".rainbow"))
}

/// One server of deploy/local/start under a RAINBOW_HOME of its own, stopped on drop.
struct StackServer {
    name: &'static str,
    home: PathBuf,
    env: Vec<(String, String)>,
}

impl StackServer {
    fn start(name: &'static str, env: &[(&str, String)]) -> StackServer {
        let home = std::env::temp_dir().join(unique_name(name));
        let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        env.push(("RAINBOW_HOME".into(), home.display().to_string()));
        let server = StackServer { name, home, env };
        let out = server.script("start");
        assert!(
            out.status.success(),
            "deploy/local/start {name} failed:\n{}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(server.home.join(format!("logs/{name}.log"))).unwrap_or_default()
        );
        server
    }

    fn script(&self, script: &str) -> std::process::Output {
        Command::new(root().join("deploy/local").join(script))
            .arg(self.name)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }
}

impl Drop for StackServer {
    fn drop(&mut self) {
        let out = self.script("stop");
        if !out.status.success() {
            eprintln!("deploy/local/stop {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// `rainbow api` on a free port for `database`.
fn api(database: &str) -> (Service, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let name = unique_name("api");
    let env = vec![
        ("RAINBOW_POSTGRES__DATABASE".into(), database.to_string()),
        ("RAINBOW_API__LISTEN".into(), addr.clone()),
    ];
    let mut service = Service::new("api", &name, "info", env);
    service.start();
    (service, format!("http://{addr}"))
}

/// Runs tests/browser/dashboard.py with the test venv's python (tests/run installs it).
fn browser(superset: &StackServer, port: u16, database: &str, extra: &[&str]) {
    let python = stack_home().join("venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: tests/run creates it (python3 -m venv; pip install -r tests/browser/requirements.txt)",
        python.display()
    );
    let screenshot = stack_home().join("screenshots/dashboard.png");
    let out = Command::new(&python)
        .arg(root().join("tests/browser/dashboard.py"))
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .arg("--credentials")
        .arg(superset.home.join("superset/credentials.env"))
        .args(["--database", database, "--clickhouse", &crate::common::clickhouse_url()])
        .arg("--screenshot")
        .arg(&screenshot)
        .args(extra)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    if !out.status.success() {
        // The server's side of it: its home (and log) goes with the test.
        let log = std::fs::read_to_string(superset.home.join("logs/superset.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "the dashboard in the browser:\n{stdout}\n{stderr}\nSuperset's log, last lines:\n{}",
            tail.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_in_a_browser_what_postgres_computes_and_follows_a_new_order() {
    let db = TestDb::seeded().await;
    let (mut api, url) = api(&db.name);
    // Heartbeats let the processor's merge advance past quiet partitions.
    let mut cdc = CdcProcess::new(&db.name, &[("RAINBOW_CDC__HEARTBEAT_INTERVAL_MS", "200")]);
    cdc.start();
    let mut processor = ProcessorProcess::new(&cdc.prefix);
    processor.start(&[]);

    // Orders through the API, dated over four weeks (every day of the week has sales), then
    // updates and deletes in the source.
    // The producers read the catalogue from the same database the API writes to.
    let env = vec![("RAINBOW_POSTGRES__DATABASE".to_string(), db.name.clone())];
    let mut loadgen = Service::new("loadgen", &unique_name("loadgen"), "warn", env);
    loadgen.args = ["--url", &url, "--count", "400", "--rate", "0", "--quiet"].map(String::from).to_vec();
    eventually("the API to answer", DEADLINE, || async {
        reqwest::get(format!("{url}/readyz")).await.ok().filter(|r| r.status().is_success())
    })
    .await;
    loadgen.start();
    assert!(loadgen.wait(DEADLINE).success(), "loadgen:\n{}", loadgen.logs());
    churn(&db.pool).await;
    // An order whose lines are all deleted: still an order of its customer and payment method.
    exec(&db.pool, "DELETE FROM orderdetails WHERE order_id = (SELECT max(order_id) FROM orderdetails)")
        .await;
    caught_up(&db.pool, &processor).await;
    let report = figures::assert_exactly_the_source(&db.pool, &processor.database).await;
    println!("warehouse = PostgreSQL: {}", report.join("; "));

    let port = free_port();
    let venv = stack_home().join("superset/venv");
    let superset = StackServer::start(
        "superset",
        &[
            ("RAINBOW_STACK_SUPERSET_PORT", port.to_string()),
            ("RAINBOW_STACK_SUPERSET_VENV", venv.display().to_string()),
            ("RAINBOW_CLICKHOUSE__DATABASE", processor.database.clone()),
        ],
    );
    let before = pg_rows(&db.pool, "SELECT sum(quantity * price) FROM orderdetails").await;
    browser(&superset, port, &processor.database, &["--total", before.trim()]);

    // A new order, posted; its revenue shows in Total Sales after a refresh.
    let body = json!({"customerId": 7, "payment_id": 2,
                      "products": [{"productId": 11, "quantity": 3}, {"productId": 12, "quantity": 1}]});
    let response =
        reqwest::Client::new().post(format!("{url}/api/v1/orders")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let total = pg_rows(&db.pool, "SELECT sum(quantity * price) FROM orderdetails").await;
    let total = total.trim().to_string();
    let view = format!("SELECT total_sales_amount FROM {}.v_total_sales", processor.database);
    eventually("the new order in v_total_sales", DEADLINE, || {
        let (view, total) = (view.clone(), total.clone());
        async move { clickhouse(&view).await.ok().filter(|v| same_amount(v, &total)) }
    })
    .await;
    // Every chart's table too: the other aggregates are inserted after agg_total_sales.
    caught_up(&db.pool, &processor).await;
    browser(&superset, port, &processor.database, &["--total", &total]);

    drop(superset);
    api.stop();
    let topics = cdc.topics();
    cdc.cleanup(&topics).await;
    processor.cleanup().await;
    db.drop().await;
}

fn same_amount(a: &str, b: &str) -> bool {
    let parse = |s: &str| s.trim().parse::<rust_decimal::Decimal>().ok();
    parse(a).is_some() && parse(a) == parse(b)
}

/// The alert named `name` in Prometheus's /api/v1/alerts: its state, or None when it is not there.
async fn alert_state(prometheus: u16, name: &str) -> Option<String> {
    let body: Value =
        reqwest::get(format!("http://127.0.0.1:{prometheus}/api/v1/alerts")).await.ok()?.json().await.ok()?;
    body["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == name)
        .map(|a| a["state"].as_str().unwrap_or("?").to_string())
}

/// Waits until the alert is in `state` ("pending", "firing"; None: gone).
async fn alert_becomes(prometheus: u16, name: &str, state: Option<&str>) {
    let what = format!("{name} to be {}", state.unwrap_or("inactive"));
    eventually(&what, DEADLINE, || async move {
        (alert_state(prometheus, name).await.as_deref() == state).then_some(())
    })
    .await;
}

/// Whether Prometheus scrapes `job` successfully (its `up` is 1).
async fn scraped(prometheus: u16, job: &str) -> Option<()> {
    let body: Value =
        reqwest::get(format!("http://127.0.0.1:{prometheus}/api/v1/query?query=up{{job=\"{job}\"}}"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
    (body["data"]["result"][0]["value"][1] == "1").then_some(())
}

#[tokio::test(flavor = "multi_thread")]
async fn down_alerts_go_pending_then_fire_in_prometheus_and_clear_when_the_component_returns() {
    let db = TestDb::seeded().await;
    let mut cdc = CdcProcess::new(&db.name, &[]);
    cdc.serve_metrics();
    cdc.start();
    let mut processor = ProcessorProcess::new(&cdc.prefix);
    processor.start(&[]);

    // Prometheus with the project's configuration and rules, scraping this test's components
    // every second (the rules' `for:` durations are the shipped ones); the other jobs point at
    // ports nobody listens on.
    let port = free_port();
    let nobody = || format!("127.0.0.1:{}", free_port());
    let prometheus = StackServer::start(
        "prometheus",
        &[
            ("RAINBOW_STACK_PROMETHEUS_PORT", port.to_string()),
            ("RAINBOW_STACK_PROMETHEUS_INTERVAL", "1s".into()),
            ("RAINBOW_CDC__METRICS_LISTEN", cdc.metrics.clone().unwrap()),
            ("RAINBOW_PROCESSOR__METRICS_LISTEN", processor.metrics.clone().unwrap()),
            ("RAINBOW_API__LISTEN", nobody()),
            ("RAINBOW_ARCHIVE__METRICS_LISTEN", nobody()),
            ("RAINBOW_UP__METRICS_LISTEN", nobody()),
        ],
    );
    for job in ["rainbow-cdc", "rainbow-processor"] {
        eventually(&format!("Prometheus to scrape {job}"), DEADLINE, || scraped(port, job)).await;
    }
    // A scrape before a component listened may have left its alert pending until the next
    // evaluation.
    for alert in ["RainbowProcessorDown", "RainbowCdcDown"] {
        alert_becomes(port, alert, None).await;
    }

    // The processor stops: its alert is pending at once, firing after the rule's `for: 1m`;
    // the CDC's stays quiet meanwhile.
    processor.stop();
    alert_becomes(port, "RainbowProcessorDown", Some("pending")).await;
    assert_eq!(alert_state(port, "RainbowCdcDown").await, None, "RainbowCdcDown while the CDC runs");
    cdc.stop();
    alert_becomes(port, "RainbowCdcDown", Some("pending")).await;
    alert_becomes(port, "RainbowProcessorDown", Some("firing")).await;
    alert_becomes(port, "RainbowCdcDown", Some("firing")).await;

    // Both come back: the alerts clear.
    cdc.start();
    processor.start(&[]);
    alert_becomes(port, "RainbowProcessorDown", None).await;
    alert_becomes(port, "RainbowCdcDown", None).await;

    drop(prometheus);
    let topics = cdc.topics();
    cdc.cleanup(&topics).await;
    processor.cleanup().await;
    db.drop().await;
}
