//! `rainbow status`: one look at every component of a running platform, read from their
//! `/metrics`.
//!
//! Contract:
//! * Where: each component at the address its configuration gives (`api.listen`,
//!   `cdc.metrics_listen`, `processor.metrics_listen`, `archive.metrics_listen`,
//!   `up.metrics_listen`: so `--config` and `RAINBOW_*` apply; an unspecified address such as
//!   `0.0.0.0:9102` is read on the loopback). It only reads (`GET /metrics`, `GET /readyz`),
//!   every component at once, each request bounded by the timeout.
//! * States: `up` when `/metrics` answers 200 with at least one `rainbow_<component>_*` series
//!   (plus whether `/readyz` says ready, and why not); `not_answering` otherwise, with the reason
//!   (connection refused, no answer within the timeout, an HTTP status, another program on the
//!   address); `off` when the component's metrics are switched off (an empty
//!   `cdc.metrics_listen`), which is not a failure.
//! * Figures: the metrics' raw values under stable keys (see [`figures`]); a figure a component
//!   does not export (yet) is `None`, never 0. Histograms are summarised by their p50/p99 since
//!   the component started; timestamps become ages against the time of the reading.
//! * [`render`] is the screen (humanised: MiB, "1.2 s", "3 min ago"), [`to_json`] the raw
//!   numbers; [`Report::all_answer`] decides the exit code.

use crate::config::Config;
use rainbow_runtime::exposition::Exposition;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::time::Duration;

/// A component `rainbow status` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Component {
    /// The order API (`rainbow api`).
    Api,
    /// The change-data-capture reader (`rainbow cdc`).
    Cdc,
    /// The stream processor (`rainbow process`).
    #[value(alias = "process")]
    Processor,
    /// The archiver (`rainbow archive`).
    #[value(alias = "archive")]
    Archiver,
    /// The supervisor (`rainbow up`).
    Up,
}

impl Component {
    pub const ALL: [Component; 5] =
        [Component::Api, Component::Cdc, Component::Processor, Component::Archiver, Component::Up];

    pub fn name(self) -> &'static str {
        match self {
            Component::Api => "api",
            Component::Cdc => "cdc",
            Component::Processor => "processor",
            Component::Archiver => "archiver",
            Component::Up => "up",
        }
    }

    /// The prefix of its metrics' names.
    fn prefix(self) -> &'static str {
        match self {
            Component::Api => "rainbow_api_",
            Component::Cdc => "rainbow_cdc_",
            Component::Processor => "rainbow_processor_",
            Component::Archiver => "rainbow_archive_",
            Component::Up => "rainbow_up_",
        }
    }

    /// The setting that holds its address.
    fn setting(self) -> &'static str {
        match self {
            Component::Api => "api.listen",
            Component::Cdc => "cdc.metrics_listen",
            Component::Processor => "processor.metrics_listen",
            Component::Archiver => "archive.metrics_listen",
            Component::Up => "up.metrics_listen",
        }
    }

    /// What to check when it does not answer.
    fn hint(self) -> &'static str {
        match self {
            Component::Api => "is `rainbow up` or `rainbow api` running?",
            Component::Cdc => "is `rainbow up` or `rainbow cdc` running?",
            Component::Processor => "is `rainbow up` or `rainbow process` running?",
            Component::Archiver => "is `rainbow up` or `rainbow archive` running?",
            Component::Up => "is `rainbow up` running?",
        }
    }
}

/// Where to read a component: `None` when its metrics are switched off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub component: Component,
    pub addr: Option<String>,
}

/// The components to read (all when `only` is empty, else those, in the usual order) at the
/// addresses of `config`.
pub fn targets(config: &Config, only: &[Component]) -> Vec<Target> {
    Component::ALL
        .into_iter()
        .filter(|c| only.is_empty() || only.contains(c))
        .map(|component| {
            let listen = match component {
                Component::Api => &config.api.listen,
                Component::Cdc => &config.cdc.metrics_listen,
                Component::Processor => &config.processor.metrics_listen,
                Component::Archiver => &config.archive.metrics_listen,
                Component::Up => &config.up.metrics_listen,
            };
            Target { component, addr: (!listen.trim().is_empty()).then(|| reachable(listen)) }
        })
        .collect()
}

/// A listening address as a client reaches it: an unspecified IP (`0.0.0.0`, `::`) is read on
/// the loopback.
fn reachable(listen: &str) -> String {
    match listen.trim().parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        Ok(SocketAddr::V6(a)) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        _ => listen.trim().to_string(),
    }
}

/// How a figure is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A number of things: `1,234`.
    Count,
    /// `12.3 MiB`.
    Bytes,
    /// A duration: `1.2 s`.
    Seconds,
    /// Seconds since something happened: `3 min ago`; `None` when it never did.
    Age,
    /// 1 or 0: `yes` / `NO`.
    Flag,
}

/// One figure of a component.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Stable key of the JSON output.
    pub key: &'static str,
    /// What the screen calls it.
    pub label: &'static str,
    pub kind: Kind,
    pub value: Option<f64>,
}

/// A component's state.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// `/metrics` answered; `ready` is what `/readyz` said (`None`: it did not answer), `detail`
    /// its reason when not ready.
    Up { ready: Option<bool>, detail: Option<String> },
    /// Why it did not answer.
    NotAnswering(String),
    /// Its metrics are switched off.
    Off,
}

/// What was read of one component.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentStatus {
    pub component: Component,
    /// The metrics URL (`None` when off).
    pub url: Option<String>,
    pub state: State,
    /// Every key of [`figures`] for the component, `None` where nothing was read.
    pub figures: Vec<Figure>,
    /// Dependencies it cannot reach, and for how long (seconds).
    pub dependencies_down: Vec<(String, f64)>,
    /// Under `rainbow up`: the supervised components not running.
    pub not_running: Vec<String>,
}

impl ComponentStatus {
    pub fn answers(&self) -> bool {
        !matches!(self.state, State::NotAnswering(_))
    }

    #[cfg(test)]
    pub fn figure(&self, key: &str) -> Option<f64> {
        self.figures.iter().find(|f| f.key == key).and_then(|f| f.value)
    }
}

/// One reading of the platform.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Unix seconds of the reading (what the ages are relative to).
    pub checked_at: f64,
    pub components: Vec<ComponentStatus>,
}

impl Report {
    /// Whether every component read answered (those switched off do not count).
    pub fn all_answer(&self) -> bool {
        self.components.iter().all(ComponentStatus::answers)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Reads every target at once, each request bounded by `timeout`.
pub async fn probe(targets: &[Target], timeout: Duration) -> Result<Report, StatusError> {
    let client = reqwest::Client::builder().timeout(timeout).no_proxy().build()?;
    let handles: Vec<_> = targets
        .iter()
        .cloned()
        .map(|target| {
            let client = client.clone();
            tokio::spawn(async move { read(&client, target, timeout).await })
        })
        .collect();
    let mut components = Vec::with_capacity(handles.len());
    for (handle, target) in handles.into_iter().zip(targets) {
        components.push(handle.await.unwrap_or_else(|e| ComponentStatus {
            component: target.component,
            url: None,
            state: State::NotAnswering(format!("reading it failed: {e}")),
            figures: figures(target.component, &Exposition::default(), 0.0),
            dependencies_down: Vec::new(),
            not_running: Vec::new(),
        }));
    }
    Ok(Report { checked_at: unix_now(), components })
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

async fn read(client: &reqwest::Client, target: Target, timeout: Duration) -> ComponentStatus {
    let c = target.component;
    let Some(addr) = target.addr else {
        return ComponentStatus {
            component: c,
            url: None,
            state: State::Off,
            figures: figures(c, &Exposition::default(), 0.0),
            dependencies_down: Vec::new(),
            not_running: Vec::new(),
        };
    };
    let url = format!("http://{addr}/metrics");
    let readyz = format!("http://{addr}/readyz");
    let (metrics, ready) = tokio::join!(get(client, &url, timeout), get(client, &readyz, timeout));
    let now = unix_now();
    let read = metrics.and_then(|(code, body)| match code {
        200 => {
            let e = Exposition::parse(&body);
            if e.has_prefix(c.prefix()) {
                Ok(e)
            } else {
                Err(format!(
                    "it answers, but with no {}* metric: another program on this address?",
                    c.prefix()
                ))
            }
        }
        code => Err(format!("HTTP {code}")),
    });
    let e = match read {
        Ok(e) => e,
        Err(why) => {
            return ComponentStatus {
                component: c,
                url: Some(url),
                state: State::NotAnswering(why),
                figures: figures(c, &Exposition::default(), now),
                dependencies_down: Vec::new(),
                not_running: Vec::new(),
            }
        }
    };
    let (ready, detail) = match ready {
        Ok((200, _)) => (Some(true), None),
        Ok((_, body)) => {
            let why = body.trim();
            (Some(false), Some(why.strip_prefix("not ready: ").unwrap_or(why).to_string()))
        }
        Err(_) => (None, None),
    };
    ComponentStatus {
        component: c,
        url: Some(url),
        state: State::Up { ready, detail },
        figures: figures(c, &e, now),
        dependencies_down: dependencies_down(c, &e),
        not_running: if c == Component::Up { not_running(&e) } else { Vec::new() },
    }
}

/// The status code and body of a GET, or why there is none.
async fn get(client: &reqwest::Client, url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let response = client.get(url).send().await.map_err(|e| why(&e, timeout))?;
    let code = response.status().as_u16();
    let body = response.text().await.map_err(|e| why(&e, timeout))?;
    Ok((code, body))
}

/// A failed request in a few words.
fn why(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {}", human_seconds(timeout.as_secs_f64()));
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => "connection reset".into(),
                std::io::ErrorKind::TimedOut => {
                    format!("no answer within {}", human_seconds(timeout.as_secs_f64()))
                }
                _ => io.to_string(),
            };
        }
        cause = c.source();
    }
    e.to_string()
}

/// The figures of a component from its metrics, `now` in Unix seconds (for ages). Keys:
/// * api: `requests_total`, `request_p50_seconds`, `request_p99_seconds`;
/// * cdc: `streaming`, `slot_retained_wal_bytes`, `slot_confirmed_lag_bytes`,
///   `last_commit_age_seconds`, `commit_to_ack_p50_seconds`, `commit_to_ack_p99_seconds`,
///   `events_total`;
/// * processor: `consumer_lag_messages`, `watermark_delay_seconds`, `freshness_p50_seconds`,
///   `freshness_p99_seconds`, `last_checkpoint_age_seconds`, `dead_letters_total`,
///   `events_applied_total`;
/// * archiver: `consumer_lag_messages`, `last_segment_age_seconds`, `records_total`;
/// * up: `components_running`, `components_supervised`, `restarts_total`.
pub fn figures(c: Component, e: &Exposition, now: f64) -> Vec<Figure> {
    let p = c.prefix();
    let m = |name: &str| format!("{p}{name}");
    let sum = |name: &str| e.sum(&m(name));
    let quantile = |name: &str, q: f64| e.histogram(&m(name)).and_then(|h| h.quantile(q));
    // A timestamp of 0 means "never".
    let age = |name: &str| e.max(&m(name)).filter(|t| *t > 0.0).map(|t| (now - t).max(0.0));
    let f = |key, label, kind, value| Figure { key, label, kind, value };
    use Kind::*;
    let mut figures = match c {
        Component::Api => vec![
            f("requests_total", "requests", Count, sum("http_requests_total")),
            f("request_p50_seconds", "latency p50", Seconds, quantile("http_request_duration_seconds", 0.5)),
            f("request_p99_seconds", "p99", Seconds, quantile("http_request_duration_seconds", 0.99)),
        ],
        Component::Cdc => vec![
            f("streaming", "streaming", Flag, e.max(&m("streaming"))),
            f("slot_retained_wal_bytes", "retained WAL", Bytes, e.max(&m("slot_retained_wal_bytes"))),
            f("slot_confirmed_lag_bytes", "slot lag", Bytes, e.max(&m("slot_confirmed_lag_bytes"))),
            f("last_commit_age_seconds", "last commit", Age, age("last_commit_timestamp_seconds")),
            f(
                "commit_to_ack_p50_seconds",
                "commit to ack p50",
                Seconds,
                quantile("commit_to_ack_seconds", 0.5),
            ),
            f("commit_to_ack_p99_seconds", "p99", Seconds, quantile("commit_to_ack_seconds", 0.99)),
            f("events_total", "events", Count, sum("events_total")),
        ],
        Component::Processor => vec![
            f("consumer_lag_messages", "lag (messages)", Count, sum("consumer_lag_messages")),
            f("watermark_delay_seconds", "watermark delay", Seconds, e.max(&m("watermark_delay_seconds"))),
            f("freshness_p50_seconds", "freshness p50", Seconds, quantile("freshness_seconds", 0.5)),
            f("freshness_p99_seconds", "p99", Seconds, quantile("freshness_seconds", 0.99)),
            f(
                "last_checkpoint_age_seconds",
                "last checkpoint",
                Age,
                age("last_checkpoint_timestamp_seconds"),
            ),
            f("dead_letters_total", "dead letters", Count, sum("dead_letters_total")),
            f("events_applied_total", "events applied", Count, sum("events_applied_total")),
        ],
        Component::Archiver => vec![
            f("consumer_lag_messages", "lag (records)", Count, sum("consumer_lag_messages")),
            f("last_segment_age_seconds", "last segment", Age, age("last_segment_timestamp_seconds")),
            f("records_total", "records archived", Count, sum("records_total")),
        ],
        Component::Up => vec![
            f("components_running", "running", Count, sum("running")),
            f(
                "components_supervised",
                "of",
                Count,
                Some(e.series(&m("running")).count() as f64).filter(|n| *n > 0.0),
            ),
            f("restarts_total", "restarts", Count, sum("restarts_total")),
        ],
    };
    // Every service's process metrics (rainbow_runtime::serve::render), without its prefix.
    figures.push(f("resident_memory_bytes", "memory", Bytes, e.max("process_resident_memory_bytes")));
    figures.push(f("memory_limit_bytes", "of", Bytes, e.max("rainbow_process_memory_limit_bytes")));
    figures
}

/// `<prefix>dependency_down_seconds{dependency}` above 0.
fn dependencies_down(c: Component, e: &Exposition) -> Vec<(String, f64)> {
    e.series(&format!("{}dependency_down_seconds", c.prefix()))
        .filter(|s| s.value > 0.0)
        .map(|s| (s.label("dependency").unwrap_or("?").to_string(), s.value))
        .collect()
}

/// `rainbow_up_running{component} == 0`.
fn not_running(e: &Exposition) -> Vec<String> {
    e.series("rainbow_up_running")
        .filter(|s| s.value < 1.0)
        .map(|s| s.label("component").unwrap_or("?").to_string())
        .collect()
}

/// The report as JSON: `{"ok", "answering", "checked", "checked_at", "components": {<name>:
/// {"state": "up"|"not_answering"|"off", "url", "ready", "detail", "error", "figures": {<key>:
/// number|bool|null}, "dependencies_down": {<dependency>: seconds}}}}` (`up` also has
/// `"not_running": [<component>]`).
pub fn to_json(report: &Report) -> Value {
    let mut components = Map::new();
    for s in &report.components {
        let (state, ready, detail, error) = match &s.state {
            State::Up { ready, detail } => ("up", json!(ready), json!(detail), Value::Null),
            State::NotAnswering(why) => ("not_answering", Value::Null, Value::Null, json!(why)),
            State::Off => {
                ("off", Value::Null, Value::Null, json!(format!("{} is empty", s.component.setting())))
            }
        };
        let figures: Map<String, Value> = s.figures.iter().map(|f| (f.key.to_string(), raw(f))).collect();
        let down: Map<String, Value> =
            s.dependencies_down.iter().map(|(d, secs)| (d.clone(), json!(secs))).collect();
        let mut entry = json!({
            "state": state,
            "url": s.url,
            "ready": ready,
            "detail": detail,
            "error": error,
            "figures": figures,
            "dependencies_down": down,
        });
        if s.component == Component::Up {
            entry["not_running"] = json!(s.not_running);
        }
        components.insert(s.component.name().to_string(), entry);
    }
    json!({
        "ok": report.all_answer(),
        "answering": report.components.iter().filter(|s| matches!(s.state, State::Up { .. })).count(),
        "checked": report.components.len(),
        "checked_at": report.checked_at,
        "components": components,
    })
}

/// A figure's raw JSON value: integers as integers, flags as booleans, nothing as null.
fn raw(f: &Figure) -> Value {
    match f.value {
        None => Value::Null,
        Some(v) if !v.is_finite() => Value::Null,
        Some(v) if f.kind == Kind::Flag => json!(v >= 1.0),
        Some(v) if v.fract() == 0.0 && v.abs() < 9e15 => json!(v as i64),
        Some(v) => json!(v),
    }
}

/// The screen: a line per component (state, address), its figures below it, then a summary.
pub fn render(report: &Report) -> String {
    const WIDTH: usize = 100;
    const INDENT: &str = "           ";
    let mut out = String::new();
    for s in &report.components {
        let name = s.component.name();
        match &s.state {
            State::NotAnswering(why) => {
                out.push_str(&format!(
                    "{name:<10} not answering at {} ({why}): {}\n",
                    s.url.as_deref().unwrap_or("?"),
                    s.component.hint()
                ));
                continue;
            }
            State::Off => {
                out.push_str(&format!(
                    "{name:<10} metrics off ({} is empty): set it to see this component\n",
                    s.component.setting()
                ));
                continue;
            }
            State::Up { ready, detail } => {
                let state = match (ready, detail) {
                    (Some(true), _) => "up, ready".to_string(),
                    (Some(false), Some(why)) => format!("up, NOT READY ({why})"),
                    (Some(false), None) => "up, NOT READY".to_string(),
                    (None, _) => "up".to_string(),
                };
                out.push_str(&format!("{name:<10} {state:<12} {}\n", s.url.as_deref().unwrap_or("")));
            }
        }
        let mut items: Vec<String> = Vec::new();
        let mut previous_label_was_quantile = false;
        for f in &s.figures {
            let value = human(f);
            // "p50 1 ms, p99 3 ms" and "running 3 of 4" read as one item.
            let joined = (f.label == "p99" && previous_label_was_quantile) || f.label == "of";
            previous_label_was_quantile = f.label.ends_with("p50");
            match items.last_mut() {
                Some(last) if joined => {
                    let sep = if f.label == "of" { " " } else { ", " };
                    last.push_str(&format!("{sep}{} {value}", f.label));
                }
                _ => items.push(format!("{} {value}", f.label)),
            }
        }
        for (dependency, secs) in &s.dependencies_down {
            items.push(format!("cannot reach {dependency} for {}", human_seconds(*secs)));
        }
        if !s.not_running.is_empty() {
            items.push(format!("not running: {}", s.not_running.join(", ")));
        }
        let mut line = String::from(INDENT);
        for (i, item) in items.iter().enumerate() {
            if i > 0 && line.len() + 3 + item.len() > WIDTH {
                out.push_str(line.trim_end());
                out.push('\n');
                line = String::from(INDENT);
            } else if i > 0 {
                line.push_str(" · ");
            }
            line.push_str(item);
        }
        if !items.is_empty() {
            out.push_str(&line);
            out.push('\n');
        }
    }
    let silent: Vec<&str> =
        report.components.iter().filter(|s| !s.answers()).map(|s| s.component.name()).collect();
    let read = report.components.iter().filter(|s| s.state != State::Off).count();
    if silent.is_empty() {
        out.push_str(&format!("{read} of {read} components answer\n"));
    } else {
        out.push_str(&format!(
            "{} of {read} components answer; not answering: {}\n",
            read - silent.len(),
            silent.join(", ")
        ));
    }
    out
}

/// A figure for a person.
fn human(f: &Figure) -> String {
    let Some(v) = f.value.filter(|v| !v.is_nan()) else {
        return if f.kind == Kind::Age { "none yet".into() } else { "-".into() };
    };
    match f.kind {
        Kind::Count => human_count(v),
        Kind::Bytes => human_bytes(v),
        Kind::Seconds => human_seconds(v),
        Kind::Age => format!("{} ago", human_seconds(v)),
        Kind::Flag => if v >= 1.0 { "yes" } else { "NO" }.into(),
    }
}

/// `1234567` -> `1,234,567`; fractions keep two decimals.
pub fn human_count(v: f64) -> String {
    if v.fract() != 0.0 || !v.is_finite() {
        return format!("{v:.2}");
    }
    let digits = format!("{}", v.abs() as u64);
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(d);
    }
    if v < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// `512 B`, `12.3 KiB`, `4.0 MiB`, `1.5 GiB`.
pub fn human_bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if v.abs() < 1024.0 {
        return format!("{} B", v as i64);
    }
    let mut scaled = v / 1024.0;
    let mut unit = 0;
    while scaled.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    format!("{scaled:.1} {}", UNITS[unit])
}

/// `0.3 ms`, `850 ms`, `1.2 s`, `42 s`, `3 min`, `2.5 h`, `3.0 d`.
pub fn human_seconds(v: f64) -> String {
    let v = v.max(0.0);
    if v == 0.0 {
        "0 ms".into()
    } else if v < 0.01 {
        format!("{:.1} ms", v * 1000.0)
    } else if v < 1.0 {
        format!("{:.0} ms", v * 1000.0)
    } else if v < 10.0 {
        format!("{v:.1} s")
    } else if v < 60.0 {
        format!("{v:.0} s")
    } else if v < 3600.0 {
        format!("{:.0} min", (v / 60.0).floor())
    } else if v < 86_400.0 {
        format!("{:.1} h", v / 3600.0)
    } else {
        format!("{:.1} d", v / 86_400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROCESSOR: &str = "\
# TYPE rainbow_processor_consumer_lag_messages gauge
rainbow_processor_consumer_lag_messages{partition=\"0\",topic=\"t\"} 1000
rainbow_processor_consumer_lag_messages{partition=\"1\",topic=\"t\"} 234
rainbow_processor_watermark_delay_seconds 0.42
rainbow_processor_freshness_seconds_bucket{le=\"0.5\"} 50
rainbow_processor_freshness_seconds_bucket{le=\"1\"} 100
rainbow_processor_freshness_seconds_bucket{le=\"+Inf\"} 100
rainbow_processor_freshness_seconds_count 100
rainbow_processor_last_checkpoint_timestamp_seconds 1000
rainbow_processor_dead_letters_total{reason=\"decode\"} 2
rainbow_processor_dead_letters_total{reason=\"rejected\"} 1
rainbow_processor_dependency_down_seconds{dependency=\"kafka\"} 12.5
rainbow_processor_dependency_down_seconds{dependency=\"clickhouse\"} 0
process_resident_memory_bytes 442499072
rainbow_process_memory_limit_bytes{source=\"machine\"} 25275875328
";

    fn status(c: Component, text: &str, now: f64, state: State) -> ComponentStatus {
        let e = Exposition::parse(text);
        ComponentStatus {
            component: c,
            url: Some("http://127.0.0.1:9102/metrics".into()),
            state,
            figures: figures(c, &e, now),
            dependencies_down: dependencies_down(c, &e),
            not_running: not_running(&e),
        }
    }

    #[test]
    fn humanised_figures() {
        assert_eq!(human_count(1_234_567.0), "1,234,567");
        assert_eq!(human_count(999.0), "999");
        assert_eq!(human_count(0.0), "0");
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(12.0 * 1024.0 * 1024.0 + 300_000.0), "12.3 MiB");
        assert_eq!(human_bytes(1.5 * 1024.0 * 1024.0 * 1024.0), "1.5 GiB");
        assert_eq!(human_seconds(0.0123), "12 ms");
        assert_eq!(human_seconds(0.00028), "0.3 ms");
        assert_eq!(human_seconds(0.0), "0 ms");
        assert_eq!(human_seconds(1.23), "1.2 s");
        assert_eq!(human_seconds(42.4), "42 s");
        assert_eq!(human_seconds(200.0), "3 min");
        assert_eq!(human_seconds(9000.0), "2.5 h");
        assert_eq!(human_seconds(-3.0), "0 ms", "a clock slightly ahead is no negative age");
    }

    #[test]
    fn processor_figures_from_metrics() {
        let s =
            status(Component::Processor, PROCESSOR, 1180.0, State::Up { ready: Some(true), detail: None });
        assert_eq!(s.figure("consumer_lag_messages"), Some(1234.0));
        assert_eq!(s.figure("watermark_delay_seconds"), Some(0.42));
        assert_eq!(s.figure("freshness_p50_seconds"), Some(0.5));
        assert_eq!(s.figure("freshness_p99_seconds"), Some(0.99));
        assert_eq!(s.figure("last_checkpoint_age_seconds"), Some(180.0));
        assert_eq!(s.figure("dead_letters_total"), Some(3.0));
        assert_eq!(s.figure("events_applied_total"), None, "not exported: null, not 0");
        assert_eq!(s.dependencies_down, vec![("kafka".to_string(), 12.5)]);
        let report = Report { checked_at: 1180.0, components: vec![s] };
        let screen = render(&report);
        for needle in [
            "processor  up, ready",
            "lag (messages) 1,234",
            "watermark delay 420 ms",
            "freshness p50 500 ms, p99 990 ms",
            "last checkpoint 3 min ago",
            "dead letters 3",
            "events applied -",
            "memory 422.0 MiB of 23.5 GiB",
            "cannot reach kafka for 12 s",
            "1 of 1 components answer",
        ] {
            assert!(screen.contains(needle), "{needle:?} in\n{screen}");
        }
        assert!(screen.lines().all(|l| l.chars().count() <= 100), "{screen}");
        let j = to_json(&report);
        assert_eq!(j["ok"], true);
        let p = &j["components"]["processor"];
        assert_eq!(p["state"], "up");
        assert_eq!(p["figures"]["consumer_lag_messages"], 1234);
        assert_eq!(p["figures"]["watermark_delay_seconds"], 0.42);
        assert_eq!(p["figures"]["events_applied_total"], Value::Null);
        assert_eq!(p["figures"]["resident_memory_bytes"], 442499072);
        assert_eq!(p["figures"]["memory_limit_bytes"], 25275875328u64);
        assert_eq!(p["dependencies_down"]["kafka"], 12.5);
    }

    #[test]
    fn a_silent_component_says_so_and_fails_the_report() {
        let silent = status(Component::Processor, "", 0.0, State::NotAnswering("connection refused".into()));
        let cdc = status(
            Component::Cdc,
            "rainbow_cdc_streaming 1\nrainbow_cdc_slot_retained_wal_bytes 25165824\nrainbow_cdc_last_commit_timestamp_seconds 0\n",
            100.0,
            State::Up { ready: Some(false), detail: Some("postgres unreachable for 3 s".into()) },
        );
        let report = Report { checked_at: 100.0, components: vec![cdc, silent] };
        assert!(!report.all_answer());
        let screen = render(&report);
        assert!(
            screen.contains(
                "processor  not answering at http://127.0.0.1:9102/metrics (connection refused): \
                 is `rainbow up` or `rainbow process` running?"
            ),
            "{screen}"
        );
        assert!(screen.contains("cdc        up, NOT READY (postgres unreachable for 3 s)"), "{screen}");
        assert!(screen.contains("streaming yes · retained WAL 24.0 MiB"), "{screen}");
        assert!(screen.contains("last commit none yet"), "{screen}");
        assert!(screen.contains("1 of 2 components answer; not answering: processor"), "{screen}");
        let j = to_json(&report);
        assert_eq!((j["ok"].clone(), j["answering"].clone()), (json!(false), json!(1)));
        assert_eq!(j["components"]["processor"]["state"], "not_answering");
        assert_eq!(j["components"]["processor"]["error"], "connection refused");
        assert_eq!(j["components"]["cdc"]["figures"]["streaming"], true);
        assert_eq!(j["components"]["cdc"]["figures"]["slot_retained_wal_bytes"], 25165824);
    }

    #[test]
    fn up_lists_what_it_does_not_run() {
        let text = "rainbow_up_running{component=\"api\"} 1\nrainbow_up_running{component=\"cdc\"} 0\n\
                    rainbow_up_restarts_total{component=\"api\"} 0\nrainbow_up_restarts_total{component=\"cdc\"} 4\n\
                    process_resident_memory_bytes 10485760\n\
                    rainbow_process_memory_limit_bytes{source=\"cgroup\"} 1073741824\n";
        let s = status(Component::Up, text, 0.0, State::Up { ready: None, detail: None });
        assert_eq!(
            (s.figure("components_running"), s.figure("components_supervised")),
            (Some(1.0), Some(2.0))
        );
        assert_eq!(s.figure("restarts_total"), Some(4.0));
        let screen = render(&Report { checked_at: 0.0, components: vec![s] });
        assert!(
            screen.contains("running 1 of 2 · restarts 4 · memory 10.0 MiB of 1.0 GiB · not running: cdc"),
            "{screen}"
        );
    }

    #[test]
    fn addresses_come_from_the_configuration() {
        let mut config = Config::default();
        config.processor.metrics_listen = "0.0.0.0:9999".into();
        config.cdc.metrics_listen = String::new();
        let t = targets(&config, &[Component::Processor, Component::Cdc]);
        assert_eq!(
            t,
            vec![
                Target { component: Component::Cdc, addr: None },
                Target { component: Component::Processor, addr: Some("127.0.0.1:9999".into()) },
            ]
        );
        assert_eq!(targets(&config, &[]).len(), 5);
        assert_eq!(targets(&Config::default(), &[])[0].addr.as_deref(), Some("127.0.0.1:8080"));
    }
}
