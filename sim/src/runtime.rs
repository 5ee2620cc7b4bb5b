//! [`SimRuntime`]: openraft's `AsyncRuntime` on madsim, the simulated
//! counterpart of the engine's `OsRuntime` (tokio).
//!
//! - Tasks are madsim tasks of the node that spawns them, so killing a
//!   madsim node drops every task of that node's Raft, log and server.
//! - Time is madsim's virtual clock: `std::time::Instant` is virtualised by
//!   madsim, so the instant type is the standard one. madsim rounds every
//!   sleep up to at least 1 ms.
//! - [`SimTimeout`] is this crate's own: madsim's `timeout` future is not
//!   `Send`, which openraft requires.
//! - Randomness ([`SimRng`]) comes from madsim's seeded generator.
//! - Channels and the mutex are tokio's `sync` primitives (through
//!   `openraft-rt-tokio`'s wrappers): they need no tokio runtime, only a
//!   waker, and wake in a deterministic order on one thread. The watch
//!   channel is the exception: tokio's picks a wait slot with a generator
//!   madsim does not seed, so it is [`SimWatch`](crate::SimWatch) here.
//! - `spawn_blocking` runs the closure on a new madsim task of the same
//!   node (madsim refuses OS threads). The closure runs whole when the
//!   scheduler picks the task, so blocking work interleaves with the
//!   node's other tasks as it would on a blocking pool, by the seed.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use madsim::rand::RngCore as _;
use openraft_rt::{AsyncRuntime, OptionalSend};
use openraft_rt_tokio::{TokioMpsc, TokioMutex, TokioOneshot};

use crate::SimWatch;

/// openraft's async runtime on madsim. See the module docs.
pub struct SimRuntime {
    runtime: madsim::runtime::Runtime,
}

impl fmt::Debug for SimRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimRuntime").finish_non_exhaustive()
    }
}

/// The error of a [`SimTimeout`] whose deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimElapsed(());

impl fmt::Display for SimElapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed (simulated time)")
    }
}

impl std::error::Error for SimElapsed {}

pin_project_lite::pin_project! {
    /// A future bounded by a deadline in madsim's virtual time. Unlike
    /// madsim's own, it is `Send` when the future is. The future is polled
    /// before the deadline, so a future that is ready wins a tie.
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct SimTimeout<F> {
        #[pin]
        future: F,
        #[pin]
        sleep: madsim::time::Sleep,
    }
}

impl<F> fmt::Debug for SimTimeout<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimTimeout")
            .field("sleep", &self.sleep)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for SimTimeout<F> {
    type Output = Result<F::Output, SimElapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(SimElapsed(()))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A handle to madsim's seeded random generator, as the `rand` 0.10
/// generator openraft asks for (election timeouts, tick phases).
#[derive(Clone)]
pub struct SimRng(madsim::rand::GlobalRng);

impl fmt::Debug for SimRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimRng")
    }
}

impl rand_core::TryRng for SimRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.0.next_u32())
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

impl AsyncRuntime for SimRuntime {
    type JoinError = madsim::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = madsim::task::JoinHandle<T>;
    type Sleep = madsim::time::Sleep;
    type Instant = std::time::Instant;
    type TimeoutError = SimElapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = SimTimeout<T>;
    type ThreadLocalRng = SimRng;
    type Mpsc = TokioMpsc;
    type Watch = SimWatch;
    type Oneshot = TokioOneshot;
    type Mutex<T: OptionalSend + 'static> = TokioMutex<T>;

    #[track_caller]
    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        madsim::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        madsim::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        madsim::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        SimTimeout {
            future,
            sleep: madsim::time::sleep(duration),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        SimTimeout {
            future,
            sleep: madsim::time::sleep_until(deadline),
        }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SimRng(madsim::rand::thread_rng())
    }

    /// A fresh madsim runtime with seed 0; openraft uses this only in its
    /// own tests. Scenarios run under `#[madsim::test]` instead.
    fn new(_threads: usize) -> Self {
        SimRuntime {
            runtime: madsim::runtime::Runtime::new(),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.runtime.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let handle = madsim::task::spawn(async move { f() });
        async move { handle.await.map_err(io::Error::other) }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[madsim::test]
    async fn sleep_and_timeout_follow_virtual_time() {
        let start = <SimRuntime as AsyncRuntime>::Instant::now();
        SimRuntime::sleep(Duration::from_secs(5)).await;
        assert!(start.elapsed() >= Duration::from_secs(5));

        let slow = SimRuntime::sleep(Duration::from_secs(2));
        let result = SimRuntime::timeout(Duration::from_secs(1), slow).await;
        assert_eq!(result, Err(SimElapsed(())));
        let fast = async { 7 };
        let result = SimRuntime::timeout(Duration::from_secs(1), fast).await;
        assert_eq!(result, Ok(7));

        let deadline = Instant::now() + Duration::from_millis(10);
        SimRuntime::sleep_until(deadline).await;
        assert!(Instant::now() >= deadline);
    }

    #[madsim::test]
    async fn spawn_blocking_and_spawn_run_as_tasks() {
        let value = SimRuntime::spawn_blocking(|| 40 + 2).await.expect("ran");
        assert_eq!(value, 42);
        let handle = SimRuntime::spawn(async { "done" });
        assert_eq!(handle.await.expect("joined"), "done");
    }

    #[madsim::test]
    async fn timeout_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let timeout = SimRuntime::timeout(Duration::from_secs(1), async {});
        assert_send(&timeout);
        timeout.await.expect("ready at once");
    }
}

impl sluice_core::io::Runtime for SimRuntime {
    /// Virtual time has no timer wheel to round up to: the simulator's own
    /// sleep is already exact.
    fn sleep_precise(duration: Duration) -> impl Future<Output = ()> + Send {
        Self::sleep(duration)
    }
}

/// The simulated environment: madsim's scheduler, a crash-faithful disk per
/// node, and a per-node virtual clock.
#[derive(Debug)]
pub struct SimEnv;

impl sluice_core::io::Env for SimEnv {
    type Runtime = SimRuntime;
    type Disk = crate::SimDisk;
    type Clock = crate::SimClock;
}
