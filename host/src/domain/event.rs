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
    /// A plugin's timer (or manifest schedule) is due; see [`Event::timer`].
    Timer,
}

impl EventKind {
    /// Every SMS kind (what webhooks carry), in WIT order; [`EventKind::Timer`]
    /// is not one.
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
            EventKind::Timer => "timer",
        }
    }

    /// A kind by any of its names: `opt-out`, `optout` or `sms.optout`
    /// (and `timer`).
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .chain([EventKind::Timer])
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
            EventKind::Timer => "timer",
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
    /// Which timer fired, for [`EventKind::Timer`] events only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<TimerFiring>,
}

/// A timer that fired: what a `timer` event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerFiring {
    /// The key it was scheduled with, or the manifest schedule's name.
    pub key: String,
    /// What the plugin scheduled with it.
    #[serde(default, with = "base64_bytes")]
    pub payload: Vec<u8>,
    /// When it was due, RFC 3339 UTC.
    pub due_at: String,
    /// A manifest `[[schedule]]` fired it.
    #[serde(default)]
    pub scheduled: bool,
}

impl Event {
    /// A `timer` event for `tenant`: no message, only the firing. Its id is
    /// given when it is stored.
    pub fn timer(tenant: &str, firing: TimerFiring, occurred_at: String) -> Event {
        Event {
            tenant: tenant.to_string(),
            kind: EventKind::Timer,
            event_id: String::new(),
            occurred_at,
            message_id: String::new(),
            direction: Direction::Inbound,
            from: String::new(),
            to: String::new(),
            body: String::new(),
            media_urls: Vec::new(),
            justcall_number: String::new(),
            contact_name: None,
            agent_id: None,
            timer: Some(firing),
        }
    }
}

/// Payload bytes as base64 in stored JSON.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
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
