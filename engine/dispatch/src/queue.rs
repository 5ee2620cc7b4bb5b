//! The bounded queue of one subscription: many senders, one receiver, a
//! ring allocated once.
//!
//! Invariants:
//! - A sender pushes only with a permit of `room` (which starts with
//!   `capacity` permits), and the receiver returns permits only after it
//!   took as many items: so the ring never holds more than `capacity`
//!   items, never grows past what it was allocated with, and nothing is
//!   allocated after creation.
//! - The queue is closed for the receiver when every sender is gone and
//!   the ring is empty; it is closed for senders when the receiver is gone.
//!
//! Why not `tokio::sync::mpsc`: it allocates a block per 32 messages and
//! reuses freed blocks only opportunistically, so a fan-out to several
//! queues allocates on the hot path. This ring is a lock (held for a push
//! or for one batch of pops), a semaphore for room (senders wait there,
//! in order) and a `Notify` for the receiver; all three are
//! runtime-agnostic.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore, TryAcquireError};

struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    room: Semaphore,
    ready: Notify,
    senders: AtomicUsize,
}

impl<T> Queue<T> {
    fn push(&self, item: T) {
        {
            let mut items = self.items.lock().expect("queue lock poisoned");
            assert!(items.len() < self.capacity, "pushed without a permit");
            items.push_back(item);
        }
        self.ready.notify_one();
    }
}

/// Why [`Sender::try_send`] gave the item back.
pub(super) enum TrySendError<T> {
    /// No room now.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// The sending side; clones share the queue.
pub(super) struct Sender<T>(Arc<Queue<T>>);

/// The receiving side.
pub(super) struct Receiver<T>(Arc<Queue<T>>);

/// A queue of `capacity` items.
pub(super) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    assert!(capacity > 0 && capacity <= Semaphore::MAX_PERMITS);
    let queue = Arc::new(Queue {
        items: Mutex::new(VecDeque::with_capacity(capacity)),
        capacity,
        room: Semaphore::new(capacity),
        ready: Notify::new(),
        senders: AtomicUsize::new(1),
    });
    (Sender(Arc::clone(&queue)), Receiver(queue))
}

impl<T> Sender<T> {
    /// Queues `item` if there is room now.
    pub(super) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        match self.0.room.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => return Err(TrySendError::Full(item)),
            Err(TryAcquireError::Closed) => return Err(TrySendError::Closed(item)),
        }
        self.0.push(item);
        Ok(())
    }

    /// Queues `item`, waiting for room; gives it back if the receiver is
    /// gone.
    pub(super) async fn send(&self, item: T) -> Result<(), T> {
        match self.0.room.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_closed) => return Err(item),
        }
        self.0.push(item);
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Sender(Arc::clone(&self.0))
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one: wake the receiver to see the queue closed.
            self.0.ready.notify_one();
        }
    }
}

impl<T> Receiver<T> {
    /// Moves up to `max` items into `batch`; waits while the queue is
    /// empty and open; 0 once it is closed and empty.
    pub(super) async fn recv_many(&mut self, batch: &mut Vec<T>, max: usize) -> usize {
        assert!(max > 0);
        loop {
            // Read before the ring: a sender pushes before it drops, so
            // "no senders, then empty" means closed for good.
            let closed = self.0.senders.load(Ordering::Acquire) == 0;
            let count = {
                let mut items = self.0.items.lock().expect("queue lock poisoned");
                let count = items.len().min(max);
                batch.extend(items.drain(..count));
                count
            };
            if count > 0 {
                self.0.room.add_permits(count);
                return count;
            }
            if closed {
                return 0;
            }
            // `notify_one` stores a wake-up when no one waits, so a push
            // (or the last drop) since the ring was read is not missed.
            self.0.ready.notified().await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.0.room.close();
    }
}
