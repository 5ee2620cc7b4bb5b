//! [`SimWatch`]: openraft's watch channel for [`SimRuntime`](crate::SimRuntime),
//! waking its receivers in a fixed order.
//!
//! ### Why not tokio's watch
//! `tokio::sync::watch` parks each waiting receiver on one of eight
//! `Notify` slots picked by tokio's thread-local random generator
//! (`BigNotify::notified`, whenever tokio is built with `rt` or `macros`,
//! as it is here). That generator is seeded from a process-wide counter
//! (`tokio::loom::std::rand::seed`), not from madsim, so which of several
//! waiting receivers wakes first, and therefore which task madsim's
//! scheduler sees ready first, depends on how many tokio generators the
//! process made before: a second run of one seed in the same process
//! (`MADSIM_TEST_CHECK_DETERMINISM`, `MADSIM_TEST_NUM`, or several tests in
//! one binary) diverged as soon as two replication tasks of a leader waited
//! on the same watch.
//!
//! ### Invariants
//! - Receivers wake in the order they started waiting (a per-channel
//!   counter names each waiting `changed()` call); nothing random, nothing
//!   keyed by address.
//! - A receiver sees a change iff the channel's version moved past the
//!   version it last marked seen; intermediate values are not kept.
//! - `changed()` fails once every sender is gone and the newest value was
//!   seen; `send` fails (and drops the value) once every receiver is gone,
//!   as tokio's does.

use std::collections::BTreeMap;
use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::task::{Poll, Waker};

use openraft_rt::watch::{RecvError, SendError, Watch, WatchReceiver, WatchSender};
use openraft_rt::{OptionalSend, OptionalSync};

/// The watch channel family of [`SimRuntime`](crate::SimRuntime).
#[derive(Debug)]
pub struct SimWatch;

/// The channel's bookkeeping, apart from the value.
#[derive(Default)]
struct Bell {
    /// Moves on with every notifying send.
    version: u64,
    senders: usize,
    receivers: usize,
    /// Waiting `changed()` calls by the order they started waiting.
    waiting: BTreeMap<u64, Waker>,
    waiting_next: u64,
}

struct Shared<T> {
    value: RwLock<T>,
    bell: Mutex<Bell>,
}

impl<T> Shared<T> {
    fn bell(&self) -> MutexGuard<'_, Bell> {
        self.bell.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, T> {
        self.value.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every waiting receiver, oldest first.
    fn ring(&self, mut bell: MutexGuard<'_, Bell>) {
        let waiting = std::mem::take(&mut bell.waiting);
        drop(bell);
        for waker in waiting.into_values() {
            waker.wake();
        }
    }
}

/// The sending half. Clones count as senders.
pub struct SimWatchSender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half. Each clone keeps its own seen version.
pub struct SimWatchReceiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

impl<T> fmt::Debug for SimWatchSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimWatchSender").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for SimWatchReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimWatchReceiver")
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl<T> Clone for SimWatchSender<T> {
    fn clone(&self) -> Self {
        self.shared.bell().senders += 1;
        SimWatchSender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for SimWatchSender<T> {
    fn drop(&mut self) {
        let mut bell = self.shared.bell();
        bell.senders -= 1;
        if bell.senders == 0 {
            // Closed: every waiting receiver must learn it.
            self.shared.ring(bell);
        }
    }
}

impl<T> Clone for SimWatchReceiver<T> {
    fn clone(&self) -> Self {
        self.shared.bell().receivers += 1;
        SimWatchReceiver {
            shared: Arc::clone(&self.shared),
            seen: self.seen,
        }
    }
}

impl<T> Drop for SimWatchReceiver<T> {
    fn drop(&mut self) {
        self.shared.bell().receivers -= 1;
    }
}

impl Watch for SimWatch {
    type Sender<T: OptionalSend + OptionalSync> = SimWatchSender<T>;
    type Receiver<T: OptionalSend + OptionalSync> = SimWatchReceiver<T>;
    type Ref<'a, T: OptionalSend + 'a> = RwLockReadGuard<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Self::Sender<T>, Self::Receiver<T>) {
        let shared = Arc::new(Shared {
            value: RwLock::new(init),
            bell: Mutex::new(Bell {
                senders: 1,
                receivers: 1,
                ..Bell::default()
            }),
        });
        let receiver = SimWatchReceiver {
            shared: Arc::clone(&shared),
            seen: 0,
        };
        (SimWatchSender { shared }, receiver)
    }
}

impl<T: OptionalSend + OptionalSync> WatchSender<SimWatch, T> for SimWatchSender<T> {
    fn send(&self, value: T) -> Result<(), SendError<T>> {
        if self.shared.bell().receivers == 0 {
            return Err(SendError(value));
        }
        self.send_if_modified(|current| {
            *current = value;
            true
        });
        Ok(())
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        let modified = {
            let mut value = self.shared.value.write().unwrap_or_else(|e| e.into_inner());
            modify(&mut value)
        };
        if modified {
            let mut bell = self.shared.bell();
            bell.version += 1;
            self.shared.ring(bell);
        }
        modified
    }

    fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
        self.shared.read()
    }

    fn subscribe(&self) -> SimWatchReceiver<T> {
        let mut bell = self.shared.bell();
        bell.receivers += 1;
        SimWatchReceiver {
            shared: Arc::clone(&self.shared),
            seen: bell.version,
        }
    }
}

/// Removes a waiting `changed()` call's waker when the call ends or is
/// dropped, so an abandoned wait leaves nothing behind.
struct WaitSlot<'a> {
    bell: &'a Mutex<Bell>,
    id: Option<u64>,
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let mut bell = self.bell.lock().unwrap_or_else(|e| e.into_inner());
            bell.waiting.remove(&id);
        }
    }
}

impl<T: OptionalSend + OptionalSync> WatchReceiver<SimWatch, T> for SimWatchReceiver<T> {
    async fn changed(&mut self) -> Result<(), RecvError> {
        let shared = Arc::clone(&self.shared);
        let seen = &mut self.seen;
        let mut slot = WaitSlot {
            bell: &shared.bell,
            id: None,
        };
        poll_fn(|cx| {
            let mut bell = shared.bell();
            if bell.version != *seen {
                *seen = bell.version;
                return Poll::Ready(Ok(()));
            }
            if bell.senders == 0 {
                return Poll::Ready(Err(RecvError(())));
            }
            let id = *slot.id.get_or_insert_with(|| {
                bell.waiting_next += 1;
                bell.waiting_next
            });
            bell.waiting.insert(id, cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
        self.shared.read()
    }

    fn borrow_and_update(&mut self) -> RwLockReadGuard<'_, T> {
        // The version is read before the value: a send in between is seen
        // again by the next `changed()`, never missed.
        self.seen = self.shared.bell().version;
        self.shared.read()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[madsim::test]
    async fn receivers_see_the_newest_value_and_the_close() {
        let (tx, mut rx) = SimWatch::channel(0u64);
        let mut late = tx.subscribe();
        tx.send(1).expect("a receiver exists");
        tx.send(2).expect("a receiver exists");
        rx.changed().await.expect("changed");
        assert_eq!(*rx.borrow_and_update(), 2);
        late.changed().await.expect("changed");
        assert_eq!(*late.borrow_watched(), 2);
        assert!(!tx.send_if_modified(|_| false), "no change, no wake");
        drop(tx);
        assert!(
            rx.changed().await.is_err(),
            "closed once every sender is gone"
        );
    }

    #[madsim::test]
    async fn send_fails_without_receivers() {
        let (tx, rx) = SimWatch::channel(0u64);
        drop(rx);
        assert!(tx.send(1).is_err());
    }

    /// One send wakes every waiting receiver and leaves no waker behind.
    #[madsim::test]
    async fn a_send_wakes_every_waiting_receiver() {
        let (tx, rx) = SimWatch::channel(0u64);
        let order = Arc::new(Mutex::new(Vec::new()));
        let started = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for n in 0..8 {
            let mut rx = rx.clone();
            let order = Arc::clone(&order);
            let task_started = Arc::clone(&started);
            tasks.push(madsim::task::spawn(async move {
                task_started.fetch_add(1, Ordering::Relaxed);
                rx.changed().await.expect("changed");
                order.lock().expect("lock").push(n);
            }));
            // Let task `n` reach its wait before the next one starts.
            while started.load(Ordering::Relaxed) <= n {
                madsim::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            madsim::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(tx.shared.bell().waiting.len(), 8);
        tx.send(1).expect("receivers exist");
        for task in tasks {
            task.await.expect("joined");
        }
        assert_eq!(tx.shared.bell().waiting.len(), 0);
        let mut order = order.lock().expect("lock").clone();
        order.sort_unstable();
        assert_eq!(order, (0..8).collect::<Vec<_>>());
    }
}
