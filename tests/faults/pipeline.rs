//! The pipeline under test: `rainbow up` (the API, the CDC reader, the processor and the
//! archiver as its children) and order producers (`rainbow loadgen`, a client of the API like
//! any other), with what the suite reads of them: the children's process ids, the supervisor's
//! and the components' metrics and health.

use crate::common::process::Service;
use std::collections::BTreeMap;
use std::time::Duration;

/// The components `rainbow up` supervises here, with the address of their health endpoints.
pub const COMPONENTS: [(&str, &str); 4] = [
    ("api", "127.0.0.1:28080"),
    ("cdc", "127.0.0.1:29101"),
    ("process", "127.0.0.1:29102"),
    ("archive", "127.0.0.1:29103"),
];
/// The supervisor's metrics and health.
pub const UP: &str = "127.0.0.1:29104";

/// `rainbow up` without built-in producers: the suite runs its own, which it can stop to let
/// the pipeline drain before the final comparison.
pub fn up() -> Service {
    let mut s = Service::new(
        "up",
        &crate::common::unique_name("faults_up"),
        "info,sqlx=warn,pg_walstream=warn",
        vec![],
    );
    s.args = ["--orders-per-sec", "0", "--churn-per-sec", "0"].map(String::from).to_vec();
    s.metrics = Some(UP.to_string());
    s
}

/// `rainbow up` with its built-in producers at `orders` orders/s and `churn` catalogue
/// changes/s, the way a user runs it.
pub fn up_producing(orders: &str, churn: &str) -> Service {
    let mut s = up();
    s.args = ["--orders-per-sec", orders, "--churn-per-sec", churn].map(String::from).to_vec();
    s
}

/// A steady order load with catalogue churn: 5 orders/s from 4 producers, and 0.5 changes/s
/// of the catalogue in PostgreSQL.
pub fn producers() -> Service {
    let mut s = Service::new("loadgen", &crate::common::unique_name("faults_load"), "warn", vec![]);
    s.args = ["--rate", "5", "--producers", "4", "--churn-rate", "0.5", "--quiet", "--seed", "7"]
        .map(String::from)
        .to_vec();
    s
}

/// The process id of `up`'s child running `rainbow <component>`.
pub fn child_pid(up: u32, component: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so read after its closing parenthesis.
        let ppid =
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid != Some(up) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|arg| arg == component.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// The text of `http://<addr>/metrics`, or why not.
pub async fn metrics(addr: &str) -> Result<String, String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let r = client.get(format!("http://{addr}/metrics")).send().await.map_err(|e| e.to_string())?;
    r.text().await.map_err(|e| e.to_string())
}

/// The value of one series (`name{labels}` as exposed) in a metrics text.
pub fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The sum of every series of a metric.
pub fn total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// `up`'s restart count per component.
pub async fn restarts() -> BTreeMap<String, u64> {
    let text = metrics(UP).await.expect("rainbow up serves its metrics");
    COMPONENTS
        .iter()
        .map(|(c, _)| {
            let n = value(&text, &format!("rainbow_up_restarts_total{{component=\"{c}\"}}"))
                .unwrap_or_else(|| panic!("no restart count of {c}:\n{text}"));
            (c.to_string(), n as u64)
        })
        .collect()
}

/// The status code of `GET http://<addr><path>`, None when nothing answers.
pub async fn status(addr: &str, path: &str) -> Option<u16> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    client.get(format!("http://{addr}{path}")).send().await.ok().map(|r| r.status().as_u16())
}

/// What is not running or not ready yet: every component running under `up` and answering
/// `/readyz` with 200, and `up` itself ready. Empty when all is well.
pub async fn not_ready() -> Vec<String> {
    let mut out = Vec::new();
    match metrics(UP).await {
        Ok(text) => {
            for (c, _) in COMPONENTS {
                if value(&text, &format!("rainbow_up_running{{component=\"{c}\"}}")) != Some(1.0) {
                    out.push(format!("{c} not running"));
                }
            }
        }
        Err(e) => out.push(format!("rainbow up: {e}")),
    }
    for (c, addr) in COMPONENTS.iter().chain(&[("up", UP)]) {
        if let Err(why) = ready(addr).await {
            out.push(format!("{c} /readyz: {why}"));
        }
    }
    out
}

/// Whether `GET http://<addr>/readyz` answers 200; else its status and what it says.
async fn ready(addr: &str) -> Result<(), String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    match client.get(format!("http://{addr}/readyz")).send().await {
        Ok(r) if r.status().as_u16() == 200 => Ok(()),
        Ok(r) => Err(format!("{} {}", r.status().as_u16(), r.text().await.unwrap_or_default().trim())),
        Err(e) => Err(format!("no answer ({e})")),
    }
}

/// Retries per dependency, summed over the components (`rainbow_*_retries_total{dependency}`).
pub async fn all_retries() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (c, _) in COMPONENTS {
        for (dependency, n) in component_retries(c).await {
            *out.entry(dependency).or_default() += n;
        }
    }
    out
}

/// Retries per dependency counted by one component (a name of [`COMPONENTS`]); none when its
/// metrics do not answer.
pub async fn component_retries(component: &str) -> BTreeMap<String, f64> {
    let (_, addr) = COMPONENTS.iter().find(|(c, _)| *c == component).expect("a component");
    let mut out = BTreeMap::new();
    let Ok(text) = metrics(addr).await else { return out };
    for line in text.lines().filter(|l| !l.starts_with('#') && l.contains("_retries_total{dependency=\"")) {
        let Some((series, n)) = line.rsplit_once(' ') else { continue };
        let Some(dependency) = series.split('"').nth(1) else { continue };
        *out.entry(dependency.to_string()).or_default() += n.parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// Retries on one dependency, summed over the components.
pub async fn retries(dependency: &str) -> f64 {
    all_retries().await.get(dependency).copied().unwrap_or(0.0)
}
