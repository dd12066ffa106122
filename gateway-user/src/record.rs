//! The recorder: sessions and events are queued (bounded) and written to the store in batches
//! by one task, off the data path. The writer chains every event and every closed session
//! (see `audit.rs`) while it prepares a batch, signs the ledger head, and writes the batch in
//! one transaction. A failed write is retried with backoff, never dropped; the queue depth and
//! whether the store is failing are visible in `status`, and the proxy refuses new sessions
//! while records cannot be written (`on_record_failure = "block"`). On shutdown the queue is
//! drained before the daemon exits.
//!
//! Durability: the writer takes whatever is queued, waiting after the first record of a batch
//! so that one transaction carries many: 10 ms ([`LINGER`]) when a session in the batch has
//! ended, up to 100 ms ([`LINGER_OPEN`]) for events of sessions still open. A record reaches
//! the store one transaction after that, milliseconds when the store keeps up. Every event of a
//! session that ended more than [`DURABILITY_WINDOW`] before a crash of the daemon is in the
//! store (the test `kill -9` under load checks it); a committed transaction survives the
//! daemon's crash (`SQLite` WAL, PostgreSQL commit). A batch closed by its linger time runs at
//! `SCHED_IDLE` for at most [`idle::GUARD`] (100 ms), then at normal priority (`idle.rs`), so
//! a host whose CPUs are all busy delays it by that much, not indefinitely.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

mod idle;

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::{
    audit::{self, Hash, LedgerEntry, Signer},
    session::{self, Outcome},
    store::{Batch, EventBlock, Store, StoreError, Write},
};

/// Queue capacity; senders wait when it is full (backpressure on running sessions).
pub const QUEUE: usize = 65_536;
/// Above this backlog the recorder counts as failing (new sessions follow
/// `on_record_failure`).
const HIGH_WATER: usize = QUEUE * 9 / 10;
/// Largest batch written in one transaction.
const BATCH: usize = 2_048;
/// How long the writer waits for more records after the first of a batch arrives, in steps
/// of [`LINGER`]. Each transaction rewrites the pages it touches (WAL frames, index pages),
/// so one commit of 300 rows costs far less than 300 commits of one, and each batch is a
/// burst of work beside the data path (fewer bursts, a shorter tail of request latency).
/// Events of open sessions wait up to [`LINGER_OPEN`] (a tenth of the durability window);
/// a batch holding a session that ended is written after at most [`LINGER`], so a client
/// that has finished finds its session in `sessions list` at once.
const LINGER: Duration = Duration::from_millis(10);
const LINGER_OPEN: Duration = Duration::from_millis(100);
/// A batch this large is written without lingering further: under heavy load batches stay
/// as large as 10 ms of records made them (a longer burst of the writer beside the data path
/// lengthened the tail of request latency at saturation: p99 1.9–2.1 ms became 2.5–2.9 ms
/// with batches up to [`BATCH`], 2.3–2.45 ms with 512).
const FLUSH_AT: usize = 256;
/// The documented durability window (see the module docs).
pub const DURABILITY_WINDOW: Duration = Duration::from_secs(1);
/// A session's block is closed at this size and its next event starts another (a block is
/// one row: a batch of 2,048 events with 16 MiB bodies must not make a 32 GiB one).
const BLOCK_BYTES: usize = 1 << 20;
/// Closed sessions remembered, so an event arriving after its session closed is reported
/// instead of starting a second chain.
const CLOSED_MEMORY: usize = 65_536;

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Write>,
    stats: Arc<RecorderStats>,
    close: Arc<watch::Sender<bool>>,
}

#[derive(Debug, Default)]
pub struct RecorderStats {
    pub queued: AtomicUsize,
    pub written: AtomicU64,
    pub write_errors: AtomicU64,
    /// The last write failed (the store is unreachable or refusing); cleared by a success.
    pub failing: AtomicBool,
    /// Events that arrived after their session was closed (a bug if ever non-zero).
    pub late_events: AtomicU64,
    /// New sessions refused because they could not have been recorded.
    pub refused: AtomicU64,
    /// Batches that started at idle priority and were raised to normal after
    /// [`idle::GUARD`] (the host had no idle CPU for them).
    pub raised: AtomicU64,
    /// Last store error, for `status`.
    pub last_error: std::sync::Mutex<Option<String>>,
}

/// The writer's chaining state: this node's ledger tail and each open session's chain link.
pub struct Chain {
    signer: Arc<Signer>,
    anchor: PathBuf,
    seq: u64,
    hash: Hash,
    open: HashMap<String, Link>,
    closed: HashSet<String>,
    closed_order: VecDeque<String>,
}

struct Link {
    next: u64,
    hash: Hash,
}

impl Chain {
    /// Resumes this node's ledger from the store, and closes (and chains) the sessions a
    /// previous daemon left open: they end as `error`, so none stays "running" forever.
    /// Returns the chain and how many sessions were closed.
    pub async fn resume(
        store: &Store,
        signer: Arc<Signer>,
        anchor: PathBuf,
    ) -> Result<(Self, usize), StoreError> {
        store
            .register_node(signer.node(), signer.public_key())
            .await?;
        let (seq, hash) = store.ledger_tail(signer.node()).await?;
        let mut chain = Self {
            signer,
            anchor,
            seq,
            hash,
            open: HashMap::new(),
            closed: HashSet::new(),
            closed_order: VecDeque::new(),
        };
        let orphans = store.orphans(chain.signer.node()).await?;
        let closed = orphans.len();
        if closed > 0 {
            let now = session::now();
            let writes = orphans
                .into_iter()
                .map(|(mut session, next, hash)| {
                    chain.open.insert(session.id.clone(), Link { next, hash });
                    session.ended_at = Some(now.clone());
                    session.outcome = Some(Outcome::Error);
                    session.error = Some("the daemon stopped before the session ended (crash or kill); bytes are as last recorded".into());
                    Write::Session(Box::new(session))
                })
                .collect();
            let mut late = 0;
            let batch = Arc::new(chain.prepare(writes, &mut late));
            store.apply(&batch).await?;
            chain.anchor_head(&batch);
        }
        Ok((chain, closed))
    }

    /// Turns queued writes into rows: events get their place and chained hash, closed
    /// sessions their ledger entry, and the new ledger head is signed.
    fn prepare(&mut self, writes: Vec<Write>, late: &mut u64) -> Batch {
        let mut batch = Batch {
            node: self.signer.node().to_string(),
            ..Batch::default()
        };
        let mut index: HashMap<String, usize> = HashMap::new();
        // Each session's block in `batch.blocks`.
        let mut blocks: HashMap<String, usize> = HashMap::new();
        for write in writes {
            match write {
                Write::Session(session) => {
                    let session = *session;
                    if session.ended_at.is_none() {
                        self.open.entry(session.id.clone()).or_insert_with(|| Link {
                            next: 0,
                            hash: audit::session_genesis(&session.id),
                        });
                    } else if !self.closed.contains(&session.id) {
                        let link = self.open.remove(&session.id).unwrap_or_else(|| Link {
                            next: 0,
                            hash: audit::session_genesis(&session.id),
                        });
                        self.seq += 1;
                        let digest = audit::session_digest(&session);
                        let hash = audit::chain_ledger(
                            &self.hash,
                            self.signer.node(),
                            self.seq,
                            &session.id,
                            &digest,
                            &link.hash,
                            link.next,
                        );
                        self.hash = hash;
                        batch.ledger.push(LedgerEntry {
                            node: batch.node.clone(),
                            seq: self.seq,
                            session: session.id.clone(),
                            ended_at: session.ended_at.clone().unwrap_or_default(),
                            digest,
                            head: link.hash,
                            events: link.next,
                            hash,
                        });
                        self.remember_closed(&session.id);
                    } else {
                        // Closed twice: the first close is on the ledger; keep that row.
                        tracing::warn!(id = %session.id, "session closed twice; the second close is ignored");
                        continue;
                    }
                    match index.get(&session.id) {
                        Some(&i) => batch.sessions[i] = session,
                        None => {
                            index.insert(session.id.clone(), batch.sessions.len());
                            batch.sessions.push(session);
                        }
                    }
                }
                Write::Event { session, event } => {
                    if self.closed.contains(&session) {
                        *late += 1;
                        tracing::error!(id = %session, kind = event.kind, "event after its session closed; not recorded");
                        continue;
                    }
                    let link = self.open.entry(session.clone()).or_insert_with(|| Link {
                        next: 0,
                        hash: audit::session_genesis(&session),
                    });
                    let hash = audit::chain_event(
                        &link.hash,
                        link.next,
                        &event.at,
                        event.kind,
                        &event.data,
                    );
                    let i = *blocks.entry(session).or_insert_with_key(|session| {
                        batch
                            .blocks
                            .push(EventBlock::new(session.clone(), link.next));
                        batch.blocks.len() - 1
                    });
                    let block = &mut batch.blocks[i];
                    block.push(link.next, &event.at, event.kind, &hash, &event.data);
                    if block.data.len() >= BLOCK_BYTES {
                        blocks.remove(&block.session);
                    }
                    link.next += 1;
                    link.hash = hash;
                }
            }
        }
        for block in &mut batch.blocks {
            block.finish();
        }
        if !batch.ledger.is_empty() {
            batch.head =
                Some(
                    self.signer
                        .checkpoint("head", self.seq, &self.hash, &session::now()),
                );
        }
        batch
    }

    fn remember_closed(&mut self, id: &str) {
        if self.closed_order.len() >= CLOSED_MEMORY
            && let Some(old) = self.closed_order.pop_front()
        {
            self.closed.remove(&old);
        }
        self.closed.insert(id.to_string());
        self.closed_order.push_back(id.to_string());
    }

    /// After a batch landed: the signed head is also kept outside the store.
    fn anchor_head(&self, batch: &Batch) {
        if let Some(head) = &batch.head
            && let Err(error) = audit::write_anchor(&self.anchor, head)
        {
            tracing::warn!(%error, path = %self.anchor.display(), "cannot write the ledger head anchor");
        }
    }
}

impl Recorder {
    /// Starts the writer task; it ends when every `Recorder` clone is dropped, or after
    /// [`Recorder::close`], once the queue is drained.
    pub fn spawn(store: Store, chain: Chain) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (close, closed) = watch::channel(false);
        let stats = Arc::new(RecorderStats::default());
        let handle = tokio::spawn(write_loop(store, chain, rx, closed, Arc::clone(&stats)));
        (
            Self {
                tx,
                stats,
                close: Arc::new(close),
            },
            handle,
        )
    }

    /// Asks the writer to finish: it writes everything queued so far, then exits. Called on
    /// shutdown after the sessions ended, so nothing is still being recorded.
    pub fn close(&self) {
        let _ = self.close.send(true);
    }

    pub async fn write(&self, write: Write) {
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(write).await.is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("recorder is gone; a record was lost (daemon shutting down?)");
        }
    }

    /// Whether a new session can be recorded now: the store takes writes and the queue has
    /// room.
    pub fn healthy(&self) -> bool {
        !self.stats.failing.load(Ordering::Relaxed)
            && self.stats.queued.load(Ordering::Relaxed) < HIGH_WATER
    }

    pub fn stats(&self) -> &RecorderStats {
        &self.stats
    }
}

async fn write_loop(
    store: Store,
    mut chain: Chain,
    mut rx: mpsc::Receiver<Write>,
    mut closed: watch::Receiver<bool>,
    stats: Arc<RecorderStats>,
) {
    let mut writes = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut writes, BATCH) => n,
            _ = closed.wait_for(|c| *c) => {
                // Drain without waiting for more: the queue's senders may live on elsewhere.
                while writes.len() < BATCH {
                    match rx.try_recv() {
                        Ok(write) => writes.push(write),
                        Err(_) => break,
                    }
                }
                writes.len()
            }
        };
        if received == 0 {
            break;
        }
        // Polled in steps (not woken by every record), until the batch is full, a session
        // in it has ended, or it has waited long enough.
        let started = tokio::time::Instant::now();
        let (mut looked, mut ended) = (0, false);
        loop {
            ended |= writes[looked..]
                .iter()
                .any(|w| matches!(w, Write::Session(s) if s.ended_at.is_some()));
            looked = writes.len();
            let waited = started.elapsed();
            if writes.len() >= FLUSH_AT
                || *closed.borrow()
                || waited >= LINGER_OPEN
                || (ended && waited >= LINGER)
            {
                break;
            }
            tokio::time::sleep(LINGER).await;
            while writes.len() < BATCH {
                match rx.try_recv() {
                    Ok(write) => writes.push(write),
                    Err(_) => break,
                }
            }
        }
        let received = writes.len();
        // A batch closed by its linger time (not filled by load) yields its CPU to the data
        // path (see `idle.rs`).
        let yielding = idle::Yield::new(received < FLUSH_AT && !*closed.borrow());
        // Chaining a batch (a SHA-256 per event) runs beside the data path, not on a worker
        // thread: a tokio worker busy with it for a millisecond stalls the connections
        // scheduled on it. On SQLite the first attempt at writing the batch is made on that
        // thread too, so the batch crosses no more threads.
        let taken = std::mem::take(&mut writes);
        let sqlite = store.writer().cloned();
        let on_thread = yielding.clone();
        let mut preparing = tokio::task::spawn_blocking(move || {
            let _idle = on_thread.enter();
            let mut late = 0;
            let batch = chain.prepare(taken, &mut late);
            let written = sqlite
                .filter(|_| !batch.is_empty())
                .map(|w| w.apply_blocking(&batch));
            (chain, batch, late, written)
        });
        let prepared = match tokio::time::timeout(idle::GUARD, &mut preparing).await {
            Ok(prepared) => prepared,
            Err(_) => {
                if yielding.raise() {
                    stats.raised.fetch_add(1, Ordering::Relaxed);
                }
                preparing.await
            }
        };
        let (batch, late, mut written) = match prepared {
            Ok((back, batch, late, written)) => {
                chain = back;
                (Arc::new(batch), late, written)
            }
            Err(error) => {
                // A bug (a panic while chaining or writing). Say so where operators look,
                // and let `on_record_failure` govern new sessions: nothing more will be
                // recorded.
                tracing::error!(%error, "the recorder's batch thread failed; recording stops");
                stats.failing.store(true, Ordering::Relaxed);
                *crate::lock(&stats.last_error) = Some(format!(
                    "recorder stopped: preparing or writing a batch failed: {error}"
                ));
                break;
            }
        };
        stats.late_events.fetch_add(late, Ordering::Relaxed);
        let mut backoff = Duration::from_millis(50);
        while !batch.is_empty() {
            let result = match written.take() {
                Some(result) => result,
                None => store.apply(&batch).await,
            };
            match result {
                Ok(()) => {
                    stats.failing.store(false, Ordering::Relaxed);
                    break;
                }
                Err(error) => {
                    stats.failing.store(true, Ordering::Relaxed);
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    *crate::lock(&stats.last_error) = Some(error.to_string());
                    tracing::error!(%error, pending = batch.rows(), backlog = stats.queued.load(Ordering::Relaxed), "store write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        chain.anchor_head(&batch);
        stats.queued.fetch_sub(received, Ordering::Relaxed);
        stats.written.fetch_add(received as u64, Ordering::Relaxed);
    }
    store.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{session::Record, store::block};

    #[test]
    fn a_batch_is_a_block_per_session_and_a_large_one_is_split() {
        let dir = std::env::temp_dir().join(format!("rg-record-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let signer = Arc::new(Signer::load_or_create(&dir).unwrap());
        let node = signer.node().to_string();
        let mut chain = Chain {
            signer,
            anchor: dir.join("anchor"),
            seq: 0,
            hash: audit::ledger_genesis(&node),
            open: HashMap::new(),
            closed: HashSet::new(),
            closed_order: VecDeque::new(),
        };
        let event = |session: &str, size: usize| Write::Event {
            session: session.into(),
            event: Record::new(
                "http_request",
                &serde_json::json!({ "body": "x".repeat(size) }),
            ),
        };
        // Two sessions interleaved; `b`'s events are big enough to fill three blocks.
        let mut writes = Vec::new();
        for _ in 0..5 {
            writes.push(event("a", 10));
            writes.push(event("b", BLOCK_BYTES / 2));
        }
        let mut late = 0;
        let batch = chain.prepare(writes, &mut late);
        let shape: Vec<_> = batch
            .blocks
            .iter()
            .map(|b| (b.session.as_str(), b.seq, b.events))
            .collect();
        assert_eq!(shape, [("a", 0, 5), ("b", 0, 2), ("b", 2, 2), ("b", 4, 1)]);
        for b in &batch.blocks {
            let events = block::events(&b.session, &b.data).unwrap();
            let seqs: Vec<_> = events.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (b.seq..b.seq + b.events).collect::<Vec<_>>());
        }
        // The next batch goes on where this one ended.
        let batch = chain.prepare(vec![event("b", 1)], &mut late);
        assert_eq!((batch.blocks[0].seq, late), (5, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
