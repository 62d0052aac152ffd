//! The event every part of Switchboard speaks: what happened to which
//! message, normalised from either JustCall wire format, and how it changes a
//! contact's opt-out state.

use serde::{Deserialize, Serialize};

/// What happened to a message; mirrors the WIT `event-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// An inbound SMS arrived.
    Received,
    /// An outbound SMS was sent.
    Sent,
    /// The carrier confirmed delivery.
    Delivered,
    /// Delivery failed.
    Failed,
    /// The contact opted out (STOP).
    OptOut,
    /// The contact opted back in (START).
    OptIn,
}

impl EventKind {
    /// Every kind, in WIT order.
    pub const ALL: [EventKind; 6] = [
        EventKind::Received,
        EventKind::Sent,
        EventKind::Delivered,
        EventKind::Failed,
        EventKind::OptOut,
        EventKind::OptIn,
    ];

    /// The kebab-case name used in manifests and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Received => "received",
            EventKind::Sent => "sent",
            EventKind::Delivered => "delivered",
            EventKind::Failed => "failed",
            EventKind::OptOut => "opt-out",
            EventKind::OptIn => "opt-in",
        }
    }

    /// A kind by any of its names: `opt-out`, `optout` or `sms.optout`.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == name || k.seed_name() == name || k.as_str().replace('-', "") == name)
    }

    /// The seed-format event name (`sms.received`, …).
    pub fn seed_name(self) -> &'static str {
        match self {
            EventKind::Received => "sms.received",
            EventKind::Sent => "sms.sent",
            EventKind::Delivered => "sms.delivered",
            EventKind::Failed => "sms.failed",
            EventKind::OptOut => "sms.optout",
            EventKind::OptIn => "sms.optin",
        }
    }
}

/// Which way a message went, seen from the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From a contact to the tenant.
    Inbound,
    /// From the tenant to a contact.
    Outbound,
}

/// A normalised SMS event: what plugins see, and what the database keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Tenant id.
    pub tenant: String,
    /// Event kind.
    pub kind: EventKind,
    /// Switchboard's id for the event.
    pub event_id: String,
    /// RFC 3339, UTC.
    pub occurred_at: String,
    /// JustCall's message id.
    pub message_id: String,
    /// Direction.
    pub direction: Direction,
    /// Sender, E.164.
    pub from: String,
    /// Recipient, E.164.
    pub to: String,
    /// Message text.
    pub body: String,
    /// MMS media.
    pub media_urls: Vec<String>,
    /// The tenant's number involved, E.164.
    pub justcall_number: String,
    /// Contact name, if JustCall knows it.
    pub contact_name: Option<String>,
    /// Agent id, if any.
    pub agent_id: Option<String>,
}

/// Inbound bodies that opt a contact out (FCC keywords), compared trimmed,
/// case-insensitively, with inner whitespace collapsed.
pub const OPT_OUT_KEYWORDS: &[&str] = &["STOP", "QUIT", "END", "REVOKE", "OPT OUT", "CANCEL", "UNSUBSCRIBE"];
/// Inbound bodies that opt a contact back in.
pub const OPT_IN_KEYWORDS: &[&str] = &["START"];

impl Event {
    /// How this event changes the contact's opt-out state, if it does:
    /// `(contact, opted_out)`. Opt-out and opt-in events count, and so does an
    /// inbound SMS whose body is exactly one of the keywords.
    pub fn opt_change(&self) -> Option<(String, bool)> {
        match self.kind {
            EventKind::OptOut => Some((self.from.clone(), true)),
            EventKind::OptIn => Some((self.from.clone(), false)),
            EventKind::Received => {
                let words: Vec<String> = self.body.split_whitespace().map(str::to_ascii_uppercase).collect();
                let body = words.join(" ");
                if OPT_OUT_KEYWORDS.contains(&body.as_str()) {
                    Some((self.from.clone(), true))
                } else if OPT_IN_KEYWORDS.contains(&body.as_str()) {
                    Some((self.from.clone(), false))
                } else {
                    None
                }
            }
            _ => None,
        }
    }
}
