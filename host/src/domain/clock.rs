//! The clock timers and schedules run on: the wall clock, or (to try a
//! plugin that acts in 24 hours, or to test across a DST change) one that
//! starts at a given instant and runs faster by a given factor.

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};

/// Timer time. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Timer time at `origin`, unix ms.
    origin_ms: i64,
    origin: Instant,
    /// Timer milliseconds per real millisecond.
    scale: f64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::wall()
    }
}

impl Clock {
    /// The wall clock.
    pub fn wall() -> Clock {
        Clock::new(None, 1.0)
    }

    /// A clock that reads `start` now (the wall clock's time if `None`) and
    /// runs `scale` times faster than real time.
    pub fn new(start: Option<DateTime<Utc>>, scale: f64) -> Clock {
        let start = start.unwrap_or_else(Utc::now);
        Clock {
            origin_ms: start.timestamp_millis(),
            origin: Instant::now(),
            scale: if scale.is_finite() && scale > 0.0 { scale } else { 1.0 },
        }
    }

    /// How much faster than real time it runs.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Now, unix ms.
    pub fn now_ms(&self) -> i64 {
        self.origin_ms + (self.origin.elapsed().as_secs_f64() * 1e3 * self.scale) as i64
    }

    /// Now.
    pub fn now(&self) -> DateTime<Utc> {
        ms_to_time(self.now_ms())
    }

    /// The real time until timer time `due_ms`.
    pub fn real_until(&self, due_ms: i64) -> Duration {
        let ahead = (due_ms - self.now_ms()).max(0) as f64;
        Duration::from_secs_f64(ahead / self.scale / 1e3)
    }
}

/// A unix-ms instant as a time.
pub fn ms_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A unix-ms instant as RFC 3339 UTC with milliseconds, if it is one.
pub fn rfc3339_ms(ms: i64) -> Option<String> {
    DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// [`rfc3339_ms`] for an instant in range (the epoch's otherwise).
pub fn ms_to_rfc3339(ms: i64) -> String {
    ms_to_time(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scaled_clock_starts_where_asked_and_runs_faster() {
        let start = DateTime::parse_from_rfc3339("2026-03-08T07:00:00Z").unwrap().to_utc();
        let c = Clock::new(Some(start), 3600.0);
        let t0 = c.now_ms();
        assert!(t0 - start.timestamp_millis() < 3_600_000, "starts at the given time");
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.now_ms() - t0 >= 20 * 3600, "runs 3600 times faster");
        assert!(c.real_until(t0 + 3_600_000) <= Duration::from_secs(1));
        assert_eq!(ms_to_rfc3339(start.timestamp_millis()), "2026-03-08T07:00:00.000Z");
    }
}
