//! The retry policy as a pure verdict: after a delivery's n-th failure, run it
//! again after the schedule's n-th delay, or give up (the delivery is
//! `failed` and its plugin paused). No SQL: storage applies the verdict.

use std::time::Duration;

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The plugin returned `ok`.
    Done,
    /// The plugin returned an error, trapped or hit a limit.
    Failed(String),
}

/// What the retry policy made of a finished attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The delivery is done.
    Done,
    /// It failed and runs again after this delay.
    Retry(Duration),
    /// It failed its last retry: it is `failed`, and its plugin is now paused
    /// for the tenant.
    Paused,
}

/// What the policy says about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Run it again after this delay.
    Retry(Duration),
    /// No delay is left: the delivery is `failed` and its plugin paused.
    GiveUp,
}

/// The retry schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicy {
    retry_delays: Vec<Duration>,
}

impl DeliveryPolicy {
    /// A policy that retries after each of `retry_delays` in turn.
    pub fn new(retry_delays: Vec<Duration>) -> DeliveryPolicy {
        DeliveryPolicy { retry_delays }
    }

    /// The verdict on a failure of a delivery that had failed
    /// `failures_before` times already.
    pub fn after_failure(&self, failures_before: u32) -> Verdict {
        match self.retry_delays.get(failures_before as usize) {
            Some(delay) => Verdict::Retry(*delay),
            None => Verdict::GiveUp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_takes_the_next_delay_then_gives_up() {
        let policy = DeliveryPolicy::new(vec![Duration::from_secs(30), Duration::from_secs(300)]);
        assert_eq!(policy.after_failure(0), Verdict::Retry(Duration::from_secs(30)));
        assert_eq!(policy.after_failure(1), Verdict::Retry(Duration::from_secs(300)));
        assert_eq!(policy.after_failure(2), Verdict::GiveUp);
        assert_eq!(policy.after_failure(u32::MAX), Verdict::GiveUp);
    }

    #[test]
    fn an_empty_schedule_gives_up_at_once() {
        assert_eq!(DeliveryPolicy::new(vec![]).after_failure(0), Verdict::GiveUp);
    }
}
