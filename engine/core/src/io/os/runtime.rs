//! [`OsRuntime`]: openraft's tokio runtime, with blocking work (fsync,
//! metadata replacement) sent to tokio's blocking thread pool.
//!
//! openraft-rt's default `spawn_blocking` starts a new OS thread per call,
//! which would cost tens of microseconds on every group commit. Everything
//! else delegates to `openraft_rt_tokio::TokioRuntime`.

use std::future::Future;
use std::io;
use std::time::Duration;

use openraft_rt::{AsyncRuntime, OptionalSend};
use openraft_rt_tokio::TokioRuntime;

/// The production async runtime: tokio.
#[derive(Debug)]
pub struct OsRuntime {
    inner: TokioRuntime,
}

type Tokio = TokioRuntime;

impl AsyncRuntime for OsRuntime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = <Tokio as AsyncRuntime>::ThreadLocalRng;
    type Mpsc = <Tokio as AsyncRuntime>::Mpsc;
    type Watch = <Tokio as AsyncRuntime>::Watch;
    type Oneshot = <Tokio as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::Mutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        Tokio::thread_rng()
    }

    fn new(threads: usize) -> Self {
        OsRuntime {
            inner: Tokio::new(threads),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let handle = tokio::task::spawn_blocking(f);
        async move { handle.await.map_err(io::Error::other) }
    }
}

impl crate::io::Runtime for OsRuntime {
    /// tokio's timer wheel ticks once a millisecond, so its `sleep(150 µs)`
    /// lasts one to two milliseconds. A short sleep therefore runs on a
    /// blocking-pool thread (`nanosleep`, which overshoots by the kernel's
    /// timer slack, about 50 µs by default); longer ones use the timer.
    fn sleep_precise(duration: Duration) -> impl Future<Output = ()> + Send {
        const TOKIO_TICK: Duration = Duration::from_millis(1);
        async move {
            if duration < TOKIO_TICK {
                // A thread that sleeps costs no CPU while it waits; if the
                // pool is gone (runtime shutting down), the sleep just ends
                // early.
                let _ = tokio::task::spawn_blocking(move || std::thread::sleep(duration)).await;
            } else {
                Tokio::sleep(duration).await;
            }
        }
    }
}
