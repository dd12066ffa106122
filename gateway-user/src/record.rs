//! The recorder: sessions and events are queued (bounded) and written to the store in batches
//! by one task, off the data path. A failed write is retried with backoff, never dropped; the
//! queue depth is visible in `status`. On shutdown the queue is drained before the daemon exits.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::store::{Store, Write};

/// Queue capacity; senders wait when it is full (backpressure on new sessions).
const QUEUE: usize = 65_536;
/// Largest batch written in one transaction.
const BATCH: usize = 1_024;

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
}

impl Recorder {
    /// Starts the writer task; it ends when every `Recorder` clone is dropped, or after
    /// [`Recorder::close`], once the queue is drained.
    pub fn spawn(store: Store) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (close, closed) = watch::channel(false);
        let stats = Arc::new(RecorderStats::default());
        let handle = tokio::spawn(write_loop(store, rx, closed, Arc::clone(&stats)));
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

    pub fn stats(&self) -> &RecorderStats {
        &self.stats
    }
}

async fn write_loop(
    store: Store,
    mut rx: mpsc::Receiver<Write>,
    mut closed: watch::Receiver<bool>,
    stats: Arc<RecorderStats>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            _ = closed.wait_for(|c| *c) => {
                // Drain without waiting for more: the queue's senders may live on elsewhere.
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(write) => batch.push(write),
                        Err(_) => break,
                    }
                }
                if batch.is_empty() { 0 } else { batch.len() }
            }
        };
        if received == 0 {
            break;
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match store.apply(&batch).await {
                Ok(()) => break,
                Err(error) => {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%error, pending = batch.len(), "store write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        stats.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        stats
            .written
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
    }
    store.close().await;
}
