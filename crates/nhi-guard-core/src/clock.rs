//! Wall-clock time behind a trait, so that expiry, windows and quotas can be tested
//! without sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
///
/// Every control reads time through a `Clock` so tests can move it by hand.
/// Implementations must be cheap: the hot path reads the clock once or twice per
/// request.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The current time as nanoseconds since the Unix epoch (0 before the epoch).
    fn unix_nanos(&self) -> u64 {
        duration_nanos(self.now().duration_since(UNIX_EPOCH).unwrap_or_default())
    }
}

/// Saturating conversion of a duration to nanoseconds in a `u64` (good until 2554).
#[doc(hidden)]
pub fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A shared, type-erased clock.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use nhi_guard_core::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
/// let before = clock.now();
/// clock.advance(Duration::from_secs(30));
/// assert_eq!(clock.now().duration_since(before).unwrap(), Duration::from_secs(30));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock stopped at `time`.
    pub fn at(time: SystemTime) -> Self {
        let nanos = duration_nanos(time.duration_since(UNIX_EPOCH).unwrap_or_default());
        Self {
            nanos: Arc::new(AtomicU64::new(nanos)),
        }
    }

    /// A clock stopped at the current system time.
    pub fn now() -> Self {
        Self::at(SystemTime::now())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(duration_nanos(by), Ordering::SeqCst);
    }

    /// Sets the clock to `time` (which may be earlier than now).
    pub fn set(&self, time: SystemTime) {
        let nanos = duration_nanos(time.duration_since(UNIX_EPOCH).unwrap_or_default());
        self.nanos.store(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn unix_nanos(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }
}

/// A clock that follows tokio's time, so `tokio::time::pause()` and `advance()` move
/// it: wall-clock time at creation plus the tokio time elapsed since.
///
/// Must be created inside a tokio runtime.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base: SystemTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Starts following tokio's time from the current system time.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// Starts following tokio's time from `base`.
    pub fn starting_at(base: SystemTime) -> Self {
        Self {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.base + self.start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(clock.unix_nanos(), 10_000_000_000);
        let shared = clock.clone();
        shared.advance(Duration::from_millis(1500));
        assert_eq!(clock.unix_nanos(), 11_500_000_000);
        clock.set(UNIX_EPOCH + Duration::from_secs(1));
        assert_eq!(shared.now(), UNIX_EPOCH + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let base = UNIX_EPOCH + Duration::from_secs(1_000);
        let clock = TokioClock::starting_at(base);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), base + Duration::from_secs(90));
    }
}
