//! [`SimClock`]: the engine's `Clock` over madsim's virtual time, the
//! simulated counterpart of `OsClock`, with a per-node offset and drift.
//!
//! ### Invariants
//! - `monotonic()` never goes backwards: it is madsim's elapsed time since
//!   the clock was made, scaled by the drift, and both only grow.
//! - `wall()` is madsim's (seeded) wall time, scaled by the same drift, plus
//!   an offset that may be changed at any time, so it may jump either way,
//!   as a skewed or stepped node clock does.

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use sluice_core::io::Clock;

/// Drift is given in parts per million; this bounds it (±10 %), far beyond
/// any real quartz, so a scenario typo cannot stop time.
const DRIFT_PPM_MAX: i64 = 100_000;

/// One node's clock over madsim's time. See the module docs.
pub struct SimClock {
    wall_origin: SystemTime,
    knobs: Mutex<Knobs>,
}

#[derive(Debug, Clone, Copy)]
struct Knobs {
    /// Added to the wall time (may be negative).
    offset_ns: i128,
    /// How much faster (positive) or slower this clock runs, in ppm.
    drift_ppm: i64,
    /// The simulation's instant when the drift last changed.
    anchor: Instant,
    /// This clock's monotonic reading at `anchor`.
    anchor_reading: Duration,
}

impl Knobs {
    /// This clock's monotonic reading at `now`: piecewise linear, each
    /// piece at the drift set at its start, so it never goes back.
    fn reading(&self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.anchor).as_nanos() as i128;
        let drifted = elapsed + elapsed * i128::from(self.drift_ppm) / 1_000_000;
        let drifted = u64::try_from(drifted.max(0)).unwrap_or(u64::MAX);
        self.anchor_reading + Duration::from_nanos(drifted)
    }
}

impl SimClock {
    /// A clock that starts at the simulation's current time, without
    /// offset or drift. Must be called inside a madsim runtime.
    pub fn new() -> Self {
        SimClock {
            wall_origin: SystemTime::now(),
            knobs: Mutex::new(Knobs {
                offset_ns: 0,
                drift_ppm: 0,
                anchor: Instant::now(),
                anchor_reading: Duration::ZERO,
            }),
        }
    }

    /// Shifts the wall clock by `offset` (ahead if `ahead`, else behind),
    /// replacing any earlier offset: an NTP step or a misconfigured node.
    /// The monotonic clock is not affected.
    pub fn set_wall_offset(&self, offset: Duration, ahead: bool) {
        let ns = i128::try_from(offset.as_nanos()).expect("offset fits in i128 nanoseconds");
        self.knobs().offset_ns = if ahead { ns } else { -ns };
    }

    /// From now on, both clocks run `drift_ppm` parts per million fast (or
    /// slow, if negative). Time already passed keeps its old rate, so the
    /// monotonic clock never goes back.
    pub fn set_drift_ppm(&self, drift_ppm: i64) {
        assert!(
            drift_ppm.abs() <= DRIFT_PPM_MAX,
            "drift of {drift_ppm} ppm is beyond ±{DRIFT_PPM_MAX} ppm"
        );
        let now = Instant::now();
        let mut knobs = self.knobs();
        knobs.anchor_reading = knobs.reading(now);
        knobs.anchor = now;
        knobs.drift_ppm = drift_ppm;
    }

    fn knobs(&self) -> MutexGuard<'_, Knobs> {
        self.knobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for SimClock {
    fn default() -> Self {
        SimClock::new()
    }
}

impl fmt::Debug for SimClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimClock")
            .field("knobs", &*self.knobs())
            .finish_non_exhaustive()
    }
}

impl Clock for SimClock {
    fn monotonic(&self) -> Duration {
        self.knobs().reading(Instant::now())
    }

    fn wall(&self) -> SystemTime {
        let knobs = *self.knobs();
        let base = self.wall_origin + knobs.reading(Instant::now());
        let offset = u64::try_from(knobs.offset_ns.unsigned_abs()).unwrap_or(u64::MAX);
        let offset = Duration::from_nanos(offset);
        if knobs.offset_ns >= 0 {
            base + offset
        } else {
            base.checked_sub(offset).unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[madsim::test]
    async fn drift_and_offset() {
        let clock = SimClock::new();
        let wall_start = clock.wall();
        madsim::time::sleep(Duration::from_secs(10)).await;
        let plain = clock.monotonic();
        assert!(plain >= Duration::from_secs(10) && plain < Duration::from_secs(11));

        clock.set_drift_ppm(100_000);
        madsim::time::sleep(Duration::from_secs(10)).await;
        let fast = clock.monotonic() - plain;
        assert!(fast >= Duration::from_secs(11), "{fast:?}");

        clock.set_drift_ppm(-100_000);
        let before = clock.monotonic();
        madsim::time::sleep(Duration::from_secs(10)).await;
        let slow = clock.monotonic() - before;
        assert!(
            slow < Duration::from_secs(10) && slow >= Duration::from_secs(9),
            "{slow:?}"
        );

        clock.set_wall_offset(Duration::from_secs(3600), false);
        assert!(clock.wall() < wall_start);
    }
}
