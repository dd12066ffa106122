//! Idle upstream connections, kept for the next session to the same upstream.
//!
//! Agents often open a connection per tool call (Python `requests.get`, `curl`). Without a
//! pool, each one costs the gateway a TCP connect and a TLS handshake upstream on top of the
//! agent's own handshake. A session's upstream connection goes back here when the session
//! ends, if it can take another request, and the next session with the same key takes it.
//!
//! The pool knows nothing of HTTP: a connection says whether it is closed and whether it is
//! ready for a request ([`Reusable`]). The most recently returned connection is taken first,
//! so the connections beyond what the load needs age out.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

/// What the pool needs to know of a connection.
pub trait Reusable {
    /// The peer or the connection's task has closed it: it will never serve again.
    fn is_closed(&self) -> bool;
    /// It can take a request now (for HTTP/1.1: no response still being read).
    fn is_ready(&self) -> bool;
}

pub struct Pool<K, T> {
    idle: Mutex<HashMap<K, Vec<(Instant, T)>>>,
    /// Idle connections kept per key; returning one more drops the oldest.
    per_key: usize,
    /// An idle connection older than this is closed rather than reused (upstreams close
    /// theirs after a while too, and a request must not race that close).
    timeout: Duration,
}

impl<K: Hash + Eq, T: Reusable> Pool<K, T> {
    pub fn new(per_key: usize, timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            per_key,
            timeout,
        }
    }

    /// The most recently returned connection for `key` that is ready; closed and expired
    /// ones are dropped on the way.
    pub fn take(&self, key: &K) -> Option<T> {
        let mut idle = crate::lock(&self.idle);
        let list = idle.get_mut(key)?;
        self.prune(list, Instant::now());
        let found = list
            .iter()
            .rposition(|(_, conn)| conn.is_ready())
            .map(|i| list.remove(i).1);
        if list.is_empty() {
            idle.remove(key);
        }
        found
    }

    /// Keeps `conn` for the next session; a closed connection is dropped. Returns whether
    /// it was kept.
    pub fn put(&self, key: K, conn: T) -> bool {
        if conn.is_closed() {
            return false;
        }
        let now = Instant::now();
        let mut idle = crate::lock(&self.idle);
        let list = idle.entry(key).or_default();
        self.prune(list, now);
        if list.len() >= self.per_key {
            list.remove(0);
        }
        list.push((now, conn));
        true
    }

    /// Closes the connections that are closed or expired, under every key (the daemon's
    /// sweeper calls it; `take` and `put` only prune their own key).
    pub fn sweep(&self) {
        let now = Instant::now();
        crate::lock(&self.idle).retain(|_, list| {
            self.prune(list, now);
            !list.is_empty()
        });
    }

    /// Idle connections held, over all keys.
    pub fn idle(&self) -> usize {
        crate::lock(&self.idle).values().map(Vec::len).sum()
    }

    fn prune(&self, list: &mut Vec<(Instant, T)>, now: Instant) {
        list.retain(|(since, conn)| !conn.is_closed() && now.duration_since(*since) < self.timeout);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        thread::sleep,
    };

    use super::*;

    #[derive(Clone)]
    struct Conn {
        id: u32,
        closed: Arc<AtomicBool>,
        ready: Arc<AtomicBool>,
    }

    impl Conn {
        fn new(id: u32) -> Self {
            Self {
                id,
                closed: Arc::new(AtomicBool::new(false)),
                ready: Arc::new(AtomicBool::new(true)),
            }
        }
    }

    impl Reusable for Conn {
        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::Relaxed)
        }
        fn is_ready(&self) -> bool {
            self.ready.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn the_latest_ready_connection_of_the_key_is_taken() {
        let pool = Pool::new(4, Duration::from_mins(1));
        assert!(pool.take(&"a").is_none());
        let busy = Conn::new(3);
        busy.ready.store(false, Ordering::Relaxed);
        for conn in [Conn::new(1), Conn::new(2), busy.clone()] {
            assert!(pool.put("a", conn));
        }
        assert!(pool.put("b", Conn::new(9)));
        // 3 is not ready (a response still in flight): 2 is the newest usable one.
        assert_eq!(pool.take(&"a").map(|c| c.id), Some(2));
        assert_eq!(pool.take(&"a").map(|c| c.id), Some(1));
        assert!(pool.take(&"a").is_none(), "only the busy one is left");
        busy.ready.store(true, Ordering::Relaxed);
        assert_eq!(pool.take(&"a").map(|c| c.id), Some(3));
        assert_eq!(pool.take(&"b").map(|c| c.id), Some(9));
        assert_eq!(pool.idle(), 0);
    }

    #[test]
    fn closed_expired_and_surplus_connections_are_dropped() {
        let pool = Pool::new(2, Duration::from_millis(150));
        let closed = Conn::new(0);
        closed.closed.store(true, Ordering::Relaxed);
        assert!(!pool.put("a", closed), "a closed connection is not kept");

        let (one, two, three) = (Conn::new(1), Conn::new(2), Conn::new(3));
        for conn in [one, two.clone(), three] {
            pool.put("a", conn);
        }
        assert_eq!(pool.idle(), 2, "the oldest went when the third came");
        two.closed.store(true, Ordering::Relaxed);
        assert_eq!(pool.take(&"a").map(|c| c.id), Some(3));
        assert!(pool.take(&"a").is_none(), "1 was dropped, 2 closed since");

        pool.put("a", Conn::new(4));
        sleep(Duration::from_millis(250));
        assert!(pool.take(&"a").is_none(), "idle past the timeout");
        assert_eq!(pool.idle(), 0);

        // The sweep closes what no later `take` or `put` of the key would have looked at.
        pool.put("a", Conn::new(5));
        pool.put("b", Conn::new(6));
        sleep(Duration::from_millis(250));
        pool.put("c", Conn::new(7));
        pool.sweep();
        assert_eq!(pool.idle(), 1, "only c is young enough");
        assert_eq!(pool.take(&"c").map(|c| c.id), Some(7));
    }
}
