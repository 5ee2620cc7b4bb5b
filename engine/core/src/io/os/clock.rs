use std::time::{Duration, Instant, SystemTime};

use crate::io::Clock;

/// The system's clocks: `Instant` for monotonic time, `SystemTime` for wall
/// time.
#[derive(Debug, Clone, Copy)]
pub struct OsClock {
    origin: Instant,
}

impl OsClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> Self {
        OsClock {
            origin: Instant::now(),
        }
    }
}

impl Default for OsClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for OsClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}
