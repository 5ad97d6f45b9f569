//! The wall clock: the one place waiver reads the time of day.

use jiff::Timestamp;
use waiver_core::Clock;

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[expect(clippy::disallowed_methods, reason = "the one sanctioned wall-clock read")]
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}
