//! Counting what the producers did: live counters for the progress line and per-producer latency
//! samples merged into exact percentiles at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Live counters, shared by every producer.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
    /// No HTTP response at all (connection refused, reset, timed out).
    pub transport_errors: AtomicU64,
    pub churned: AtomicU64,
    pub churn_errors: AtomicU64,
}

impl Counters {
    pub fn record(&self, status: Option<u16>) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let counter = match status {
            Some(200..=299) => &self.ok,
            Some(400..=499) => &self.client_errors,
            Some(_) => &self.server_errors,
            None => &self.transport_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            sent: get(&self.sent),
            ok: get(&self.ok),
            client_errors: get(&self.client_errors),
            server_errors: get(&self.server_errors),
            transport_errors: get(&self.transport_errors),
            churned: get(&self.churned),
            churn_errors: get(&self.churn_errors),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub sent: u64,
    pub ok: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    pub transport_errors: u64,
    pub churned: u64,
    pub churn_errors: u64,
}

/// Latencies in microseconds; exact percentiles by sorting (a few MB for millions of requests).
#[derive(Debug, Default, Clone)]
pub struct Latencies(Vec<u32>);

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        self.0.push(d.as_micros().min(u128::from(u32::MAX)) as u32);
    }

    pub fn merge(parts: impl IntoIterator<Item = Latencies>) -> Latencies {
        let mut all: Vec<u32> = parts.into_iter().flat_map(|l| l.0).collect();
        all.sort_unstable();
        Latencies(all)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `p`-th percentile (0–100) by nearest rank; needs [`Latencies::merge`] first (sorted).
    pub fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        Duration::from_micros(u64::from(self.0[rank.clamp(1, self.0.len()) - 1]))
    }
}

pub fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut a = Latencies::default();
        for us in 1..=100 {
            a.record(Duration::from_micros(us));
        }
        let all = Latencies::merge([a, Latencies::default()]);
        assert_eq!(all.percentile(50.0), Duration::from_micros(50));
        assert_eq!(all.percentile(99.0), Duration::from_micros(99));
        assert_eq!(all.percentile(100.0), Duration::from_micros(100));
        assert_eq!(Latencies::default().percentile(50.0), Duration::ZERO);
    }
}
