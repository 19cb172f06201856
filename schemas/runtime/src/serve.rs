//! The HTTP endpoint of a service's telemetry and health, served until the service stops:
//!
//! * `GET /metrics`: Prometheus's text format;
//! * `GET /healthz`: 200 while the process serves (liveness: restart it when this fails);
//! * `GET /readyz`: 200 when its dependencies are connected and its work makes progress, else
//!   503 with the reason (readiness: do not route to it, alert when it lasts).

use crate::resilience::Resilience;
use axum::http::StatusCode;
use axum::routing::get;

/// A registry's metrics in Prometheus's text format, followed by the process's own
/// ([`Process`]).
pub fn render(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut families = registry.gather();
    families.extend(Process::get().gather());
    let mut buf = Vec::new();
    prometheus::TextEncoder::new().encode(&families, &mut buf).expect("text encoding");
    String::from_utf8(buf).expect("metrics are UTF-8")
}

/// The process's metrics, the same in every service's `/metrics` and without the service's
/// prefix, as Prometheus names them: the standard `process_*` (`process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds`,
/// `process_max_fds`, `process_threads`, `process_start_time_seconds`; read from `/proc/self`
/// at each scrape) and `rainbow_process_memory_limit_bytes{source}`, what the process may use
/// ([`crate::memory::limit`]; read at each scrape too, as a container's limit can change).
struct Process {
    registry: prometheus::Registry,
    limit: prometheus::IntGaugeVec,
}

impl Process {
    fn get() -> &'static Process {
        static PROCESS: std::sync::OnceLock<Process> = std::sync::OnceLock::new();
        PROCESS.get_or_init(|| {
            let registry = prometheus::Registry::new();
            // The crate's process collector reads /proc: Linux only.
            #[cfg(target_os = "linux")]
            registry
                .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
                .expect("registered once");
            let limit = prometheus::IntGaugeVec::new(
                prometheus::Opts::new(
                    "rainbow_process_memory_limit_bytes",
                    "Memory this process may use: its control group's limit (source=cgroup) where one is set below the machine's memory, else the machine's memory (source=machine)",
                ),
                &["source"],
            )
            .expect("valid metric");
            registry.register(Box::new(limit.clone())).expect("registered once");
            Process { registry, limit }
        })
    }

    fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        // Set, then the other source's series removed (not the whole vector reset first: a
        // concurrent scrape would find no series between the two).
        if let Some(l) = crate::memory::limit() {
            self.limit.with_label_values(&[l.source]).set(i64::try_from(l.bytes).unwrap_or(i64::MAX));
            let other = if l.source == "cgroup" { "machine" } else { "cgroup" };
            let _ = self.limit.remove_label_values(&[other]);
        }
        self.registry.gather()
    }
}

/// How long [`bind`] waits for an address in use to be released.
pub const BIND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Binds `addr`, waiting up to [`BIND_PATIENCE`] while it is in use: a component restarted
/// right after its previous instance was told to stop (by `rainbow up`, or after a crash of
/// `rainbow up` itself) finds the port again once that instance has finished its shutdown.
pub async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let started = std::time::Instant::now();
    let mut warned = false;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && started.elapsed() < BIND_PATIENCE => {
                if !warned {
                    tracing::warn!(%addr, "address in use: waiting up to {} s for it to be released", BIND_PATIENCE.as_secs());
                    warned = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

/// What `/readyz` answers, and what brings the metrics up to date before they are rendered.
pub trait Health: Clone + Send + Sync + 'static {
    /// `Ok` when ready, else why not.
    fn readiness(&self) -> Result<(), String>;
    /// Called before each rendering of the metrics.
    fn refresh(&self) {}
}

impl Health for Resilience {
    fn readiness(&self) -> Result<(), String> {
        Resilience::readiness(self)
    }
    fn refresh(&self) {
        Resilience::refresh(self)
    }
}

/// [`endpoints`] on a task of its own until `stop` says so.
pub fn spawn(
    listener: tokio::net::TcpListener,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    health: impl Health,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(endpoints(listener, render, health, crate::resilience::stopped(stop)))
}

/// Serves the endpoints until `shutdown` resolves; `render` gives the metrics' text.
pub async fn endpoints(
    listener: tokio::net::TcpListener,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    resilience: impl Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let r = resilience.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                r.refresh();
                let text = render();
                async move { ([("content-type", "text/plain; version=0.0.4")], text) }
            }),
        )
        .route("/healthz", get(|| async { "alive\n" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = resilience.readiness();
                async move {
                    match readiness {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                    }
                }
            }),
        );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use crate::exposition::Exposition;

    #[test]
    fn every_metrics_page_has_the_process_own_memory_and_its_limit() {
        let registry = prometheus::Registry::new_custom(Some("rainbow_test".into()), None).unwrap();
        let counter = prometheus::IntCounter::new("things_total", "things").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc_by(3);
        // A few MiB, so that the resident memory is more than the allocator's start-up pages.
        let held = vec![1u8; 8 << 20];
        let page = Exposition::parse(&super::render(&registry));
        assert_eq!(page.sum("rainbow_test_things_total"), Some(3.0));
        let rss = page.sum("process_resident_memory_bytes").expect("process_resident_memory_bytes");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vm_rss = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let vm_rss: f64 = vm_rss.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() * 1024.0;
        assert!(rss >= 8.0 * (1 << 20) as f64, "resident {rss} B with 8 MiB held");
        // The same reading as the kernel's, within what the test's threads allocate meanwhile.
        assert!((rss - vm_rss).abs() < 64.0 * (1 << 20) as f64, "{rss} against VmRSS {vm_rss}");
        let limits: Vec<_> = page.series("rainbow_process_memory_limit_bytes").collect();
        assert_eq!(limits.len(), 1, "one limit");
        let source = limits[0].label("source").unwrap();
        assert!(source == "cgroup" || source == "machine", "{source}");
        assert!(limits[0].value > rss, "limit {} below the resident memory {rss}", limits[0].value);
        assert!(
            page.sum("process_cpu_seconds_total").is_some()
                && page.sum("process_start_time_seconds").is_some()
        );
        drop(held);
    }
}
