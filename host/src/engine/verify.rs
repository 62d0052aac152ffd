//! Verifying events with the tenant's JustCall API before they act. The
//! JustCall v1 signature covers the type and timestamp but not `data`, so a
//! captured header set could carry any payload; for tenants with
//! `verify_events`, each SMS event is stored `verifying`, then its message is
//! fetched from JustCall (on the tenant's request budget) and compared: the
//! direction, both numbers and the body. A match releases the deliveries and
//! the opt-out change; a mismatch refuses the event with its reason. While
//! JustCall cannot answer, the check is retried on the delivery schedule (its
//! last delay repeating), never skipped, and it resumes after a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::{Country, Direction, Event, EventKind, normalize_e164};
use crate::engine::dispatch::{Dispatcher, Job};
use crate::engine::justcall::{ApiMessage, JustCallError};
use crate::engine::tenant::Tenant;
use crate::storage::{Db, DbError};

/// How long one check may take, JustCall's own retries included.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// JustCall may not list a message the moment its webhook is sent: "not
/// found" is retried this many times before it refuses the event.
const NOT_FOUND_TRIES: u32 = 3;

/// How an event is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Fetch the message by its id and compare.
    Message,
    /// Nothing to fetch, and acting on it can only stop texts: a contact
    /// status change that opts out.
    NotNeeded,
    /// Nothing to fetch, and acting on it could text someone who opted out:
    /// refused at once.
    Impossible(String),
}

/// How `event` (of a tenant that verifies) is checked.
pub fn check_for(event: &Event) -> Check {
    let is_message = !event.message_id.is_empty() && !event.justcall_number.is_empty();
    match event.kind {
        _ if is_message => Check::Message,
        EventKind::OptOut => Check::NotNeeded,
        _ => Check::Impossible(format!(
            "a `{}` event without a message cannot be checked with the JustCall SMS API; a contact opts back in by texting START, which can",
            event.kind.as_str()
        )),
    }
}

/// Why `message` (JustCall's) is not what `event` (the webhook's) claims.
pub fn mismatch(event: &Event, message: &ApiMessage, default_country: Option<Country>) -> Option<String> {
    let claimed_out = event.direction == Direction::Outbound;
    if claimed_out != message.outgoing() {
        return Some(format!(
            "direction differs: the webhook says {}, JustCall says `{}`",
            if claimed_out { "outbound" } else { "inbound" },
            message.direction
        ));
    }
    let e164 = |n: &str| normalize_e164(n, default_country).ok();
    let (contact, line, their_contact, their_line) = if claimed_out {
        (&event.to, &event.justcall_number, &message.to, &message.from)
    } else {
        (&event.from, &event.justcall_number, &message.from, &message.to)
    };
    if e164(their_contact).as_ref() != Some(contact) {
        return Some(format!(
            "contact number differs: the webhook says {contact}, JustCall says `{their_contact}`"
        ));
    }
    if e164(their_line).as_ref() != Some(line) {
        return Some(format!(
            "JustCall number differs: the webhook says {line}, JustCall says `{their_line}`"
        ));
    }
    if message.body != event.body {
        return Some(format!(
            "body differs from JustCall's message {} ({} characters in the webhook, {} at JustCall)",
            message.id,
            event.body.chars().count(),
            message.body.chars().count()
        ));
    }
    None
}

/// Runs verifications in the background; cheap to clone.
#[derive(Debug, Clone)]
pub struct Verifier {
    db: Db,
    dispatcher: Dispatcher,
    tenants: Arc<HashMap<String, Arc<Tenant>>>,
    delays: Arc<Vec<Duration>>,
}

impl Verifier {
    /// A verifier that retries after `delays` (the last repeating forever).
    pub fn new(db: Db, dispatcher: Dispatcher, tenants: Arc<HashMap<String, Arc<Tenant>>>, delays: Vec<Duration>) -> Verifier {
        let delays = if delays.is_empty() { vec![Duration::from_secs(30)] } else { delays };
        Verifier {
            db,
            dispatcher,
            tenants,
            delays: Arc::new(delays),
        }
    }

    /// Starts verifying a stored event that has had `attempts` so far.
    pub fn submit(&self, event: Arc<Event>, attempts: u32) {
        let this = self.clone();
        tokio::spawn(async move { this.run(event, attempts).await });
    }

    async fn run(self, event: Arc<Event>, mut attempts: u32) {
        let Some(tenant) = self.tenants.get(&event.tenant).cloned() else {
            tracing::warn!(tenant = %event.tenant, event = %event.event_id, "event of a tenant no longer served stays unverified");
            return;
        };
        loop {
            let error = match self.check(&tenant, &event, attempts).await {
                Ok(()) => return,
                Err(error) => error,
            };
            attempts += 1;
            let wait = self.delays[(attempts as usize - 1).min(self.delays.len() - 1)];
            tracing::warn!(
                tenant = %event.tenant, event = %event.event_id, attempts, %error,
                retry_in_ms = wait.as_millis() as u64, "event verification postponed"
            );
            if let Err(e) = self.db.verification_attempt_failed(&event.event_id, &error.to_string()).await {
                tracing::error!(event = %event.event_id, error = %e, "could not record a verification attempt");
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One check: `Ok` once the event is verified or refused (and stored
    /// so), `Err` with the reason to try again.
    async fn check(&self, tenant: &Tenant, event: &Arc<Event>, attempts: u32) -> Result<(), CheckError> {
        let fetched = tenant.justcall.get(&event.message_id, Instant::now() + CHECK_TIMEOUT).await;
        let refusal = match fetched {
            Ok(message) => mismatch(event, &message, tenant.config.default_country),
            Err(JustCallError::NotFound) if attempts + 1 >= NOT_FOUND_TRIES => {
                Some(format!("JustCall has no message `{}`", event.message_id))
            }
            Err(e) => return Err(e.into()),
        };
        match refusal {
            Some(reason) => {
                self.db.refuse_event(&event.event_id, &reason).await?;
                tracing::warn!(tenant = %event.tenant, event = %event.event_id, %reason, "event refused: it does not match JustCall");
            }
            None => {
                let released = self.db.verified(&event.event_id).await?;
                tracing::info!(tenant = %event.tenant, event = %event.event_id, deliveries = released.len(), "event verified with JustCall");
                for d in released.into_iter().filter(|d| !d.held) {
                    self.dispatcher.submit(Job {
                        delivery_id: d.id,
                        plugin: d.plugin,
                        event: event.clone(),
                        parent: Default::default(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Why a check must be tried again.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("JustCall lookup failed: {0}")]
    Lookup(#[from] JustCallError),
    #[error("storage: {0}")]
    Storage(#[from] DbError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Direction;

    fn event(kind: EventKind, message_id: &str, line: &str) -> Event {
        Event {
            tenant: "t".into(),
            kind,
            event_id: "e".into(),
            occurred_at: "2026-03-12T14:30:00Z".into(),
            message_id: message_id.into(),
            direction: Direction::Inbound,
            from: "+15125551234".into(),
            to: line.into(),
            body: String::new(),
            media_urls: vec![],
            justcall_number: line.into(),
            contact_name: None,
            agent_id: None,
            timer: None,
        }
    }

    #[test]
    fn messages_are_checked_and_only_opt_outs_go_without() {
        assert_eq!(check_for(&event(EventKind::Received, "7", "+15125550100")), Check::Message);
        assert_eq!(check_for(&event(EventKind::OptIn, "7", "+15125550100")), Check::Message);
        assert_eq!(check_for(&event(EventKind::OptOut, "c1", "")), Check::NotNeeded);
        assert!(matches!(check_for(&event(EventKind::OptIn, "c1", "")), Check::Impossible(_)));
    }

    #[test]
    fn every_compared_field_can_refuse() {
        let mut e = event(EventKind::Received, "7", "+15125550100");
        e.body = "CONFIRM".into();
        let genuine = ApiMessage {
            id: "7".into(),
            from: "15125551234".into(),
            to: "15125550100".into(),
            body: "CONFIRM".into(),
            direction: "Incoming".into(),
            status: None,
            created_at: None,
        };
        assert_eq!(mismatch(&e, &genuine, None), None);
        let changed = |f: &dyn Fn(&mut ApiMessage)| {
            let mut m = genuine.clone();
            f(&mut m);
            mismatch(&e, &m, None).expect("a mismatch")
        };
        assert!(changed(&|m| m.body = "STOP".into()).starts_with("body differs"));
        assert!(changed(&|m| m.direction = "Outgoing".into()).starts_with("direction differs"));
        assert!(changed(&|m| m.from = "15125559999".into()).starts_with("contact number differs"));
        assert!(changed(&|m| m.to = "15125559999".into()).starts_with("JustCall number differs"));
        assert!(changed(&|m| m.from = "garbage".into()).starts_with("contact number differs"));
    }
}
