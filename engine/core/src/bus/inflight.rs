//! What a publish in flight holds: the receipt it is answered with and
//! the gauge that bounds a producer's publishes in flight. The producer
//! and the batcher both use them, so they live apart from either.

use std::sync::atomic::{AtomicUsize, Ordering};

use openraft::alias::WatchSenderOf;
use openraft::async_runtime::WatchSender;

use crate::io::Env;
use crate::raft::TypeConfig;

/// Where a published event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Its partition.
    pub partition: u32,
    /// Its offset in that partition.
    pub offset: u64,
    /// Whether this was a retry of an event already in the log (the offset
    /// is the original one).
    pub duplicate: bool,
}

/// Counts a producer's publishes in flight and wakes it when one ends.
pub(crate) struct Gauge<E: Env> {
    pub(super) count: AtomicUsize,
    // The runtime's watch sender need not be Sync; the gauge is shared.
    released: std::sync::Mutex<WatchSenderOf<TypeConfig<E>, u64>>,
}

impl<E: Env> Gauge<E> {
    pub(crate) fn new(released: WatchSenderOf<TypeConfig<E>, u64>) -> Self {
        Gauge {
            count: AtomicUsize::new(0),
            released: std::sync::Mutex::new(released),
        }
    }

    pub(crate) fn release(&self) {
        self.release_n(1);
    }

    /// Frees `n` slots with one wake-up of the producer waiting for room
    /// (an answered batch frees all of a producer's slots in it at once).
    pub(crate) fn release_n(&self, n: usize) {
        self.count.fetch_sub(n, Ordering::AcqRel);
        self.released
            .lock()
            .expect("gauge lock")
            .send_if_modified(|released| {
                *released += n as u64;
                true
            });
    }
}
