//! A clock that moves only when told to, for tests.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::Clock;

/// A [`Clock`] under the test's control: monotonic time only moves forward
/// through [`ManualClock::advance`]; wall time can be set anywhere.
#[derive(Debug)]
pub struct ManualClock {
    state: Mutex<(Duration, SystemTime)>,
}

impl ManualClock {
    /// A clock at monotonic zero and the given wall time.
    pub fn new(wall: SystemTime) -> Self {
        ManualClock {
            state: Mutex::new((Duration::ZERO, wall)),
        }
    }

    /// Moves both monotonic and wall time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut state = self.state.lock().unwrap();
        state.0 += by;
        state.1 += by;
    }

    /// Sets wall time, which may jump backwards; monotonic time is untouched.
    pub fn set_wall(&self, wall: SystemTime) {
        self.state.lock().unwrap().1 = wall;
    }
}

impl Clock for ManualClock {
    fn monotonic(&self) -> Duration {
        self.state.lock().unwrap().0
    }

    fn wall(&self) -> SystemTime {
        self.state.lock().unwrap().1
    }
}
