//! An in-memory cache of `GET /api/v1/orders/{id}` responses (the serialized JSON), kept correct
//! by PostgreSQL notifications rather than by expiry.
//!
//! Contract:
//! * The cache serves only while its LISTEN connection is up ([`OrderCache::set_live`]); while it
//!   is down every read goes to the database, and a reconnect starts from an empty cache, since
//!   notifications sent in between are lost.
//! * Triggers (migration 0003) notify at commit the id of every order whose row or lines change,
//!   and `*` when a name or term that every order shows changes (products, promotions, customers,
//!   payment methods). A response can therefore be stale only for the time a notification takes
//!   to arrive (milliseconds), never longer.
//! * A read that raced a change is not cached: [`OrderCache::ticket`] is taken before the database
//!   read, and [`OrderCache::put`] refuses the response if a notification for that order (or `*`)
//!   arrived since.
//! * At most `capacity` entries; the oldest insertions are evicted first.

use axum::body::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Notifications remembered for the race check; a read slower than this many notifications is
/// simply not cached.
const RECENT: usize = 8192;

/// The channel the triggers notify.
pub const CHANNEL: &str = "rainbow_api_invalidate";

#[derive(Debug)]
pub struct OrderCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    live: bool,
    entries: HashMap<i64, Bytes>,
    /// Insertion order, for eviction; may hold ids already removed.
    fifo: VecDeque<i64>,
    /// Sequence number of the last notification.
    seq: u64,
    /// The last notifications: (seq, order id, or None for all).
    recent: VecDeque<(u64, Option<i64>)>,
}

/// Taken before reading an order from the database; see [`OrderCache::put`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl OrderCache {
    /// A cache of at most `capacity` orders; 0 disables it.
    pub fn new(capacity: usize) -> OrderCache {
        OrderCache { capacity, inner: Mutex::new(Inner::default()) }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("order cache lock")
    }

    pub fn get(&self, id: i64) -> Option<Bytes> {
        let inner = self.lock();
        if !inner.live {
            return None;
        }
        inner.entries.get(&id).cloned()
    }

    pub fn ticket(&self) -> Ticket {
        Ticket(self.lock().seq)
    }

    /// Caches a response read after `ticket` was taken, unless the order changed since.
    pub fn put(&self, id: i64, body: Bytes, ticket: Ticket) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let mut inner = self.lock();
        let covered = inner.recent.front().is_none_or(|(first, _)| *first <= ticket.0 + 1);
        let changed = inner
            .recent
            .iter()
            .rev()
            .take_while(|(seq, _)| *seq > ticket.0)
            .any(|(_, o)| o.is_none_or(|o| o == id));
        if !inner.live || changed || (inner.seq > ticket.0 && !covered) {
            return false;
        }
        if inner.entries.insert(id, body).is_none() {
            inner.fifo.push_back(id);
        }
        while inner.entries.len() > self.capacity {
            match inner.fifo.pop_front() {
                Some(old) => {
                    inner.entries.remove(&old);
                }
                None => break,
            }
        }
        if inner.fifo.len() > 2 * self.capacity + 16 {
            let Inner { entries, fifo, .. } = &mut *inner;
            fifo.retain(|id| entries.contains_key(id));
        }
        true
    }

    /// An order changed (`Some(id)`) or everything did (`None`).
    pub fn invalidate(&self, order: Option<i64>) {
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        inner.recent.push_back((seq, order));
        if inner.recent.len() > RECENT {
            inner.recent.pop_front();
        }
        match order {
            Some(id) => {
                inner.entries.remove(&id);
            }
            None => {
                inner.entries.clear();
                inner.fifo.clear();
            }
        }
    }

    /// Whether notifications are flowing. Both transitions empty the cache.
    pub fn set_live(&self, live: bool) {
        self.invalidate(None);
        self.lock().live = live;
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps `cache` in step with the database's notifications until the task is aborted.
/// Reconnects (with a pause) after errors; the cache is not live while disconnected.
pub async fn follow_invalidations(cache: std::sync::Arc<OrderCache>, pool: sqlx::PgPool) {
    use sqlx::postgres::PgListener;
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "order cache: cannot connect for notifications; serving without cache");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "order cache: LISTEN failed; serving without cache");
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            continue;
        }
        cache.set_live(true);
        tracing::debug!("order cache: live");
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => cache.invalidate(n.payload().parse::<i64>().ok()),
                Ok(None) => {
                    // Reconnected: whatever was sent meanwhile is lost.
                    tracing::warn!(
                        "order cache: notification connection lost and re-established; cache emptied"
                    );
                    cache.set_live(true);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "order cache: notifications stopped; serving without cache");
                    cache.set_live(false);
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(capacity: usize) -> OrderCache {
        let c = OrderCache::new(capacity);
        c.set_live(true);
        c
    }

    #[test]
    fn serves_only_while_live_and_drops_changed_orders() {
        let c = OrderCache::new(10);
        assert!(!c.put(1, Bytes::from_static(b"a"), c.ticket()), "not live yet");
        c.set_live(true);
        assert!(c.put(1, Bytes::from_static(b"a"), c.ticket()));
        assert_eq!(c.get(1).as_deref(), Some(&b"a"[..]));
        c.invalidate(Some(2));
        assert!(c.get(1).is_some());
        c.invalidate(Some(1));
        assert!(c.get(1).is_none());
        c.put(1, Bytes::from_static(b"b"), c.ticket());
        c.set_live(false);
        assert!(c.get(1).is_none());
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_cached() {
        let c = live(10);
        let t = c.ticket();
        c.invalidate(Some(5));
        assert!(!c.put(5, Bytes::from_static(b"old"), t));
        assert!(c.put(6, Bytes::from_static(b"other"), t), "other orders are unaffected");
        let t = c.ticket();
        c.invalidate(None);
        assert!(!c.put(6, Bytes::from_static(b"old"), t));
        // Too many notifications since the ticket to tell: refused.
        let t = c.ticket();
        for i in 0..(RECENT as i64 + 5) {
            c.invalidate(Some(1_000_000 + i));
        }
        assert!(!c.put(7, Bytes::from_static(b"x"), t));
    }

    #[test]
    fn evicts_the_oldest_beyond_capacity() {
        let c = live(3);
        for id in 1..=5 {
            c.put(id, Bytes::from(id.to_string()), c.ticket());
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(1).is_none() && c.get(2).is_none() && c.get(5).is_some());
        assert!(!OrderCache::new(0).put(1, Bytes::new(), Ticket(0)));
    }
}
