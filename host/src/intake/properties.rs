//! Property tests of the intake: any webhook in either wire format parses
//! and normalises to the event it describes and serialises back unchanged;
//! a signature of either scheme verifies if and only if every signed byte is
//! unchanged.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::json;

use super::auth::{self, AuthError, HeaderLookup};
use super::wire::{self, Body, Parsed};
use crate::domain::{Direction, Event, EventKind};

struct Headers(HashMap<&'static str, String>);

impl HeaderLookup for Headers {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// Valid numbers, E.164, and ways people and JustCall write each.
const NUMBERS: &[(&str, &[&str])] = &[
    (
        "+15125551234",
        &["+15125551234", "15125551234", "+1 (512) 555-1234", "1-512-555-1234"],
    ),
    ("+15125550100", &["+15125550100", "15125550100", "+1 512.555.0100"]),
    ("+442079460958", &["+442079460958", "442079460958", "+44 20 7946 0958"]),
    ("+61291234567", &["+61291234567", "61 2 9123 4567"]),
];

fn number() -> impl Strategy<Value = (String, String)> {
    (0..NUMBERS.len(), any::<prop::sample::Index>()).prop_map(|(i, pick)| {
        let (e164, forms) = NUMBERS[i];
        (e164.to_string(), pick.get(forms).to_string())
    })
}

/// An integer id as JSON text, up to 40 digits: beyond any u64 or f64.
fn big_id() -> impl Strategy<Value = String> {
    "[1-9][0-9]{0,39}"
}

fn parse(body: &[u8]) -> Event {
    let Ok(Body::Payload(payload)) = wire::decode(body) else {
        panic!("not a payload: {}", String::from_utf8_lossy(body))
    };
    match wire::parse(&payload, None) {
        Ok(Parsed::Event(i)) => i.event,
        other => panic!("not an event: {other:?}"),
    }
}

/// The stored form of an event reads back as the same event.
fn assert_serialises_back(event: &Event) {
    let stored = serde_json::to_string(event).unwrap();
    let back: Event = serde_json::from_str(&stored).unwrap();
    assert_eq!(&back, event);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn seed_webhooks_normalise_to_what_they_describe(
        kind in prop::sample::select(EventKind::ALL.to_vec()),
        message_id in "[A-Za-z0-9_-]{1,24}",
        inbound in any::<bool>(),
        (contact, contact_written) in number(),
        (line, line_written) in number(),
        body in any::<String>(),
        media in prop::collection::vec("https://[a-z]{1,12}\\.example/[a-z0-9]{0,12}", 0..3),
        name in prop::option::of("[A-Za-z][A-Za-z .'-]{0,20}[A-Za-z]"),
    ) {
        let (from, to) = if inbound { (&contact_written, &line_written) } else { (&line_written, &contact_written) };
        let raw = json!({
            "event": kind.seed_name(), "timestamp": "2026-03-12T14:30:00Z",
            "data": {
                "message_id": message_id, "direction": if inbound { "inbound" } else { "outbound" },
                "from": from, "to": to, "body": body, "media_urls": media,
                "justcall_number": line_written, "contact_name": name, "agent_id": null,
            }
        });
        let event = parse(raw.to_string().as_bytes());
        let (want_from, want_to) = if inbound { (&contact, &line) } else { (&line, &contact) };
        prop_assert_eq!(event.kind, kind);
        prop_assert_eq!(&event.message_id, &message_id);
        prop_assert_eq!(event.direction, if inbound { Direction::Inbound } else { Direction::Outbound });
        prop_assert_eq!((&event.from, &event.to), (want_from, want_to));
        prop_assert_eq!(&event.justcall_number, &line);
        prop_assert_eq!(&event.body, &body);
        prop_assert_eq!(&event.media_urls, &media);
        prop_assert_eq!(&event.contact_name, &name);
        prop_assert_eq!(&event.occurred_at, "2026-03-12T14:30:00Z");
        assert_serialises_back(&event);
    }

    #[test]
    fn v21_webhooks_normalise_to_what_they_describe(
        id in big_id(),
        agent in big_id(),
        inbound in any::<bool>(),
        (contact, contact_written) in number(),
        (line, line_written) in number(),
        body in any::<String>(),
        request_id in "[A-Z0-9]{8,26}",
    ) {
        let raw = json!({
            "request_id": request_id, "type": "sms.sent_received",
            "data": {
                "id": "ID", "agent_id": "AGENT", "contact_number": contact_written, "justcall_number": line_written,
                "direction": if inbound { "Incoming" } else { "Outgoing" },
                "sms_date": "2024-02-23", "sms_time": "09:30:58", "sms_info": { "body": body, "mms": [] },
            }
        })
        .to_string()
        // The ids as bare JSON integers, however long.
        .replace("\"ID\"", &id)
        .replace("\"AGENT\"", &agent);
        let event = parse(raw.as_bytes());
        let (want_from, want_to) = if inbound { (&contact, &line) } else { (&line, &contact) };
        prop_assert_eq!(event.kind, if inbound { EventKind::Received } else { EventKind::Sent });
        prop_assert_eq!(&event.message_id, &id);
        prop_assert_eq!(event.agent_id.as_ref(), Some(&agent));
        prop_assert_eq!((&event.from, &event.to), (want_from, want_to));
        prop_assert_eq!(&event.body, &body);
        prop_assert_eq!(&event.occurred_at, "2024-02-23T09:30:58Z");
        assert_serialises_back(&event);
    }

    #[test]
    fn a_standard_webhooks_signature_holds_iff_no_signed_byte_changed(
        secret in "[A-Za-z0-9]{16,40}",
        id in "msg_[A-Za-z0-9]{1,20}",
        body in prop::collection::vec(any::<u8>(), 0..512),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        part in 0..3usize,
    ) {
        let now = Utc::now();
        let ts = now.timestamp().to_string();
        let sig = auth::standard_webhooks_signature(&secret, &id, &ts, &body);
        let verify = |id: &str, ts: &str, body: &[u8]| {
            let h = Headers(HashMap::from([
                (auth::SW_ID, id.to_string()),
                (auth::SW_TIMESTAMP, ts.to_string()),
                (auth::SW_SIGNATURE, sig.clone()),
            ]));
            auth::verify_standard_webhooks(&secret, &h, body, now, Duration::from_secs(300))
        };
        prop_assert_eq!(verify(&id, &ts, &body), Ok(id.clone()));
        // One byte of one signed part changed (the timestamp stays in the window).
        // An empty body has no byte to change: its id is changed instead.
        let part = if part == 0 && body.is_empty() { 1 } else { part };
        let result = match part {
            0 => {
                let mut b = body.clone();
                let i = at.index(b.len());
                b[i] ^= flip;
                verify(&id, &ts, &b)
            }
            1 => verify(&flip_char(&id, at, flip), &ts, &body),
            _ => verify(&id, &(now.timestamp() - 1 - i64::from(flip % 200)).to_string(), &body),
        };
        prop_assert_eq!(result, Err(AuthError::BadSignature));
    }

    #[test]
    fn a_justcall_v1_signature_holds_iff_no_signed_byte_changed(
        secret in "[a-f0-9]{40}",
        path in "[A-Za-z0-9/_-]{1,40}",
        type_name in prop::sample::select(vec!["sms.received", "sms.sent", "sms.status_updated", "call.completed"]),
        second in 0u32..60,
        other_second in 0u32..60,
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        part in 0..3usize,
    ) {
        let url = format!("https://hooks.example.com/{path}");
        let ts = format!("2024-03-21 17:08:{second:02}");
        let now: DateTime<Utc> = auth::parse_justcall_timestamp(&ts).unwrap();
        let sig = auth::justcall_v1_signature(&secret, &url, type_name, &ts);
        let verify = |url: &str, type_name: &str, ts: &str| {
            let h = Headers(HashMap::from([(auth::JC_SIGNATURE, sig.clone()), (auth::JC_TIMESTAMP, ts.to_string())]));
            auth::verify_justcall_v1(&secret, url, Some(type_name), &h, now, Duration::from_secs(300))
        };
        prop_assert_eq!(verify(&url, type_name, &ts), Ok(sig.clone()));
        let result = match part {
            0 => verify(&flip_char(&url, at, flip), type_name, &ts),
            1 => verify(&url, &flip_char(type_name, at, flip), &ts),
            _ => verify(&url, type_name, &format!("2024-03-21 17:08:{other_second:02}")),
        };
        if part == 2 && other_second == second {
            prop_assert!(result.is_ok());
        } else {
            prop_assert_eq!(result, Err(AuthError::BadSignature));
        }
    }
}

/// `s` (printable ASCII) with one character changed to another printable
/// one: shifted by 1 to 94 places round the 95 printable characters.
fn flip_char(s: &str, at: prop::sample::Index, flip: u8) -> String {
    let mut bytes = s.as_bytes().to_vec();
    let i = at.index(bytes.len());
    let shift = 1 + flip % 94;
    bytes[i] = b' ' + (bytes[i] - b' ' + shift) % 95;
    String::from_utf8(bytes).expect("ASCII in, ASCII out")
}
