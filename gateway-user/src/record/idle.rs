//! Running a recorder batch at `SCHED_IDLE`, with a guard against starvation.
//!
//! A batch (chaining a SHA-256 per event, one `SQLite` transaction) is a burst of one to a few
//! milliseconds on one CPU. At normal priority the scheduler shares that CPU between the
//! burst and a tokio worker that wakes for a request, and the request waits: at 1,000 req/s
//! on two vCPUs, recording raised the p99 of the relay by 30–160 µs (bench/README.md).
//! `nice 19` does not remove the wait (EEVDF still gives the burst its slice); `SCHED_IDLE`
//! does, as a waking normal task preempts an idle-policy one at once.
//!
//! An idle-policy thread runs only on a CPU that has nothing else to do, so on a saturated
//! host a batch could wait forever and break the durability window. Two rules prevent that:
//! only a batch closed by its linger time (the recorder is keeping up) starts idle, a batch
//! filled by load runs at normal priority as before; and a batch still unfinished after
//! [`GUARD`] is raised back to normal priority from the recorder's task.
//!
//! Leaving `SCHED_IDLE` needs `CAP_SYS_NICE` (or a generous `RLIMIT_NICE`); without it a
//! batch never enters it, rather than risk a thread it could not raise.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicI32, Ordering},
    },
    time::Duration,
};

/// How long an idle batch may take before it is raised to normal priority: a tenth of the
/// durability window, on top of the linger.
pub(super) const GUARD: Duration = Duration::from_millis(100);

/// The batch has not started (or was raised before it started: it will not go idle).
const WAITING: i32 = 0;
/// Raised, or finished: nothing more to do.
const NORMAL: i32 = -1;

/// Shared by the recorder's task (which may [`raise`](Self::raise)) and the blocking thread
/// that runs the batch (which [`enter`](Self::enter)s idle): `WAITING`, `NORMAL`, or the id of
/// the thread running idle.
#[derive(Clone)]
pub(super) struct Yield(Arc<AtomicI32>);

impl Yield {
    /// `wanted`: whether this batch may run idle.
    pub(super) fn new(wanted: bool) -> Self {
        let state = if wanted && can_leave_idle() {
            WAITING
        } else {
            NORMAL
        };
        Self(Arc::new(AtomicI32::new(state)))
    }

    /// On the thread about to run the batch: switches it to `SCHED_IDLE`, unless the batch
    /// was not meant to or has already been raised. The returned guard restores the thread's
    /// normal policy when dropped (a pooled thread goes back to the pool as it came).
    pub(super) fn enter(&self) -> Entered {
        let tid = nix::unistd::gettid().as_raw();
        let entered = self
            .0
            .compare_exchange(WAITING, tid, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && set_policy(0, libc::SCHED_IDLE).is_ok();
        Entered {
            state: self.0.clone(),
            entered,
        }
    }

    /// From the recorder's task: the batch took too long; run it at normal priority.
    /// Returns whether it was running idle.
    pub(super) fn raise(&self) -> bool {
        let previous = self.0.swap(NORMAL, Ordering::AcqRel);
        if previous > 0 {
            if let Err(error) = set_policy(previous, libc::SCHED_OTHER) {
                tracing::warn!(%error, "could not raise the recorder's batch thread");
            }
            return true;
        }
        false
    }
}

pub(super) struct Entered {
    state: Arc<AtomicI32>,
    entered: bool,
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.state.store(NORMAL, Ordering::Release);
        if self.entered
            && let Err(error) = set_policy(0, libc::SCHED_OTHER)
        {
            tracing::warn!(%error, "could not restore the recorder's batch thread");
        }
    }
}

/// `sched_setscheduler(tid, policy)`; `tid` 0 is the calling thread.
fn set_policy(tid: i32, policy: libc::c_int) -> nix::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` for the duration of the call; the call reads
    // it and changes only the scheduling policy of thread `tid` of this process.
    let rc = unsafe { libc::sched_setscheduler(tid, policy, &raw const param) };
    nix::errno::Errno::result(rc).map(drop)
}

/// Whether a thread of this process may leave `SCHED_IDLE` again: `CAP_SYS_NICE`, or an
/// `RLIMIT_NICE` that allows nice -20 (the kernel checks it against the thread's nice value).
fn can_leave_idle() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        const CAP_SYS_NICE: u32 = 23;
        let capable = crate::host::effective_capabilities()
            .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0);
        let rlimit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NICE)
            .is_ok_and(|(soft, _)| soft >= 40);
        capable || rlimit
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> libc::c_int {
        // SAFETY: queries the calling thread's policy; no memory is passed.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn a_batch_runs_idle_and_its_thread_comes_back_normal() {
        assert!(
            can_leave_idle(),
            "needs CAP_SYS_NICE: `cargo xtask test` runs as root"
        );
        std::thread::spawn(|| {
            let y = Yield::new(true);
            {
                let _entered = y.enter();
                assert_eq!(policy(), libc::SCHED_IDLE);
            }
            assert_eq!(policy(), libc::SCHED_OTHER);
            // Finished: a late raise touches nothing.
            assert!(!y.raise());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_raise_from_another_thread_restores_normal_priority() {
        assert!(
            can_leave_idle(),
            "needs CAP_SYS_NICE: `cargo xtask test` runs as root"
        );
        let y = Yield::new(true);
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (raised_tx, raised_rx) = std::sync::mpsc::channel();
        let batch = {
            let y = y.clone();
            std::thread::spawn(move || {
                let _entered = y.enter();
                entered_tx.send(policy()).unwrap();
                raised_rx.recv().unwrap();
                policy()
            })
        };
        assert_eq!(entered_rx.recv().unwrap(), libc::SCHED_IDLE);
        assert!(y.raise());
        raised_tx.send(()).unwrap();
        assert_eq!(batch.join().unwrap(), libc::SCHED_OTHER);
    }

    #[test]
    fn raised_before_it_starts_or_not_wanted_a_batch_never_goes_idle() {
        std::thread::spawn(|| {
            let early = Yield::new(true);
            early.raise();
            let _entered = early.enter();
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
        std::thread::spawn(|| {
            let _entered = Yield::new(false).enter();
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }
}
