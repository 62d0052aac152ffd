//! Rate-limited logging: at most one line per interval for one kind of
//! event, with a count of the lines suppressed since, so a flood of refused
//! requests cannot flood the disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One kind of event's log budget.
#[derive(Debug)]
pub struct Throttle {
    start: Instant,
    interval_ms: u64,
    /// When the next line may be written, ms since `start`.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    /// A budget of one line per `interval`.
    pub fn new(interval: Duration) -> Throttle {
        Throttle {
            start: Instant::now(),
            interval_ms: interval.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if a line may be written now, `n` being how many were
    /// suppressed since the last; `None` (and counted) otherwise.
    pub fn check(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now + self.interval_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_suppressed() {
        let t = Throttle::new(Duration::from_millis(50));
        assert_eq!(t.check(), Some(0));
        assert_eq!((t.check(), t.check(), t.check()), (None, None, None));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.check(), Some(3));
        assert_eq!(t.check(), None);
    }
}
