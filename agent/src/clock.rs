//! Time, behind a trait so the measurement sequence runs in tests without sleeping.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Monotonic seconds, sleeping and wall-clock time.
pub trait Clock: Send + Sync {
    /// Seconds since an arbitrary fixed start (monotonic).
    fn now(&self) -> f64;
    /// Waits `seconds` (idle).
    fn sleep(&self, seconds: f64);
    /// Keeps one core busy for `seconds` (the synthetic engine's load).
    fn busy(&self, seconds: f64);
    /// Seconds since the Unix epoch (for caches and timestamps).
    fn unix_now(&self) -> f64;
}

/// The real clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    start: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock { start: Instant::now() }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn sleep(&self, seconds: f64) {
        if seconds > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(seconds));
        }
    }

    fn busy(&self, seconds: f64) {
        let until = Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
        let mut x = 0u64;
        while Instant::now() < until {
            // Real work the optimiser cannot remove, so the core is really busy.
            for i in 0..1000u64 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
        }
        std::hint::black_box(x);
    }

    fn unix_now(&self) -> f64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
    }
}

pub use llem_common::util::rfc3339;

#[cfg(test)]
pub mod fake {
    //! A clock that only moves when told to: sleeping and busy work advance it at once.

    use std::sync::Mutex;

    use super::Clock;

    #[derive(Debug, Default)]
    pub struct FakeClock {
        now: Mutex<f64>,
        pub unix_offset: f64,
    }

    impl FakeClock {
        pub fn new(unix_offset: f64) -> Self {
            FakeClock { now: Mutex::new(0.0), unix_offset }
        }

        pub fn advance(&self, seconds: f64) {
            *self.now.lock().unwrap_or_else(|e| e.into_inner()) += seconds;
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> f64 {
            *self.now.lock().unwrap_or_else(|e| e.into_inner())
        }
        fn sleep(&self, seconds: f64) {
            self.advance(seconds.max(0.0));
        }
        fn busy(&self, seconds: f64) {
            self.advance(seconds.max(0.0));
        }
        fn unix_now(&self) -> f64 {
            self.unix_offset + self.now()
        }
    }
}
