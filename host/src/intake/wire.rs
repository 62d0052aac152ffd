//! The two JustCall wire formats (the guide's seed format and JustCall's
//! v2.1) and their normalisation into one [`Event`].

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::domain::{Direction, Event, EventKind, normalize_e164};
/// Which wire format a payload used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The integration guide's `{event, timestamp, data}`.
    Seed,
    /// JustCall's `{request_id, type, data}`.
    V21,
}

/// A webhook body, decoded once, before it is authenticated.
#[derive(Debug)]
pub enum Body {
    /// The setup ping: an empty body, or a JSON object with neither `event`
    /// nor `type`. Acknowledged; never authenticated, stored or dispatched.
    Ping,
    /// A payload naming an event, to authenticate and then [`parse_value`].
    Payload(Value),
}

/// What a webhook payload turned out to be.
#[derive(Debug)]
pub enum Parsed {
    /// A well-formed webhook that is not an SMS event we dispatch.
    Ignored {
        /// The `type`/`event` name.
        type_name: String,
        /// Why it is not dispatched.
        reason: String,
    },
    /// An SMS event; `event_id` and `tenant` are still empty.
    Event(Box<Incoming>),
}

/// A parsed SMS webhook before it is given an id.
#[derive(Debug)]
pub struct Incoming {
    /// The normalised event.
    pub event: Event,
    /// The wire format.
    pub format: Format,
    /// The `type` (v2.1) or `event` (seed) name, as sent.
    pub type_name: String,
    /// The dedupe key from the payload: `request_id` for v2.1, else the seed
    /// tuple (event, message_id, timestamp).
    pub dedupe_key: String,
}

/// A malformed payload; the message is one line and names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

/// Returns the `type` (v2.1) or `event` (seed) name of a JSON payload.
pub fn type_name(value: &Value) -> Option<&str> {
    value.get("type").or_else(|| value.get("event")).and_then(Value::as_str)
}

/// Decodes a webhook body: the one place a ping is told from a payload.
pub fn decode(body: &[u8]) -> Result<Body, PayloadError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Body::Ping);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| PayloadError(format!("body is not valid JSON: {e}")))?;
    let Value::Object(obj) = &value else {
        return Err(PayloadError("body must be a JSON object".into()));
    };
    if obj.contains_key("type") || obj.contains_key("event") {
        Ok(Body::Payload(value))
    } else {
        Ok(Body::Ping)
    }
}

/// Parses a payload from [`decode`] (seed if it has `event`, v2.1 if `type`).
pub fn parse_value(value: Value) -> Result<Parsed, PayloadError> {
    let Value::Object(obj) = &value else {
        return Err(PayloadError("body must be a JSON object".into()));
    };
    if let Some(t) = obj.get("type") {
        let t = t
            .as_str()
            .ok_or_else(|| PayloadError("type: expected a string".into()))?
            .to_string();
        return parse_v21(&t, value);
    }
    if let Some(e) = obj.get("event") {
        let e = e
            .as_str()
            .ok_or_else(|| PayloadError("event: expected a string".into()))?
            .to_string();
        return parse_seed(&e, value);
    }
    Err(PayloadError("neither `type` nor `event` is set: not a JustCall webhook".into()))
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, PayloadError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        // serde_json appends " at line L column C" for text input; values have none.
        if path == "." {
            PayloadError(inner)
        } else {
            PayloadError(format!("{path}: {inner}"))
        }
    })
}

fn phone(field: &str, raw: &str) -> Result<String, PayloadError> {
    normalize_e164(raw).ok_or_else(|| PayloadError(format!("{field}: `{raw}` is not a phone number")))
}

/// A JSON string or number, as text (JustCall sends ids both ways).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Id {
    Text(String),
    Number(serde_json::Number),
}

impl Id {
    fn into_string(self) -> String {
        match self {
            Id::Text(s) => s,
            Id::Number(n) => n.to_string(),
        }
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

// ---- seed format -----------------------------------------------------------

#[derive(Deserialize)]
struct SeedPayload {
    #[allow(dead_code)]
    event: String,
    timestamp: String,
    data: SeedData,
}

#[derive(Deserialize)]
struct SeedData {
    message_id: Id,
    direction: String,
    from: String,
    to: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    media_urls: Vec<String>,
    justcall_number: String,
    #[serde(default)]
    contact_name: Option<String>,
    #[serde(default)]
    agent_id: Option<Id>,
}

fn seed_kind(name: &str) -> Option<EventKind> {
    EventKind::ALL.into_iter().find(|k| k.seed_name() == name)
}

fn parse_seed(name: &str, value: Value) -> Result<Parsed, PayloadError> {
    let Some(kind) = seed_kind(name) else {
        return Ok(Parsed::Ignored {
            type_name: name.to_string(),
            reason: format!("event `{name}` is not an SMS event"),
        });
    };
    let p: SeedPayload = typed(value)?;
    let occurred = DateTime::parse_from_rfc3339(&p.timestamp)
        .map_err(|e| PayloadError(format!("timestamp: `{}` is not RFC 3339: {e}", p.timestamp)))?
        .with_timezone(&Utc);
    let direction = match p.data.direction.as_str() {
        "inbound" => Direction::Inbound,
        "outbound" => Direction::Outbound,
        other => {
            return Err(PayloadError(format!(
                "data.direction: expected `inbound` or `outbound`, got `{other}`"
            )));
        }
    };
    let message_id = p.data.message_id.into_string();
    if message_id.is_empty() {
        return Err(PayloadError("data.message_id: must not be empty".into()));
    }
    let dedupe_key = format!("seed:{name}:{message_id}:{}", p.timestamp);
    Ok(Parsed::Event(Box::new(Incoming {
        event: Event {
            tenant: String::new(),
            kind,
            event_id: String::new(),
            occurred_at: occurred.to_rfc3339_opts(SecondsFormat::Secs, true),
            message_id,
            direction,
            from: phone("data.from", &p.data.from)?,
            to: phone("data.to", &p.data.to)?,
            body: p.data.body,
            media_urls: p.data.media_urls,
            justcall_number: phone("data.justcall_number", &p.data.justcall_number)?,
            contact_name: non_empty(p.data.contact_name),
            agent_id: p.data.agent_id.map(Id::into_string),
        },
        format: Format::Seed,
        type_name: name.to_string(),
        dedupe_key,
    })))
}

// ---- v2.1 format -------------------------------------------------------------

#[derive(Deserialize)]
struct V21Payload<D> {
    request_id: String,
    data: D,
}

#[derive(Deserialize)]
struct V21Sms {
    id: Id,
    contact_number: String,
    #[serde(default)]
    contact_name: Option<String>,
    justcall_number: String,
    #[serde(default)]
    agent_id: Option<Id>,
    direction: String,
    sms_date: String,
    sms_time: String,
    sms_info: V21SmsInfo,
    #[serde(default)]
    delivery_status: Option<String>,
}

#[derive(Deserialize)]
struct V21SmsInfo {
    #[serde(default)]
    body: String,
    #[serde(default)]
    mms: Vec<Value>,
}

#[derive(Deserialize)]
struct V21Contact {
    id: Id,
    contact_number: String,
    #[serde(default)]
    name: Option<String>,
    status: V21ContactStatus,
    #[serde(default)]
    status_updated_at: Option<String>,
    #[serde(default)]
    agent_id: Option<Id>,
}

#[derive(Deserialize)]
struct V21ContactStatus {
    #[serde(default)]
    blacklist: bool,
    #[serde(default)]
    dnd: bool,
    #[serde(default)]
    dnm: bool,
}

fn v21_time(date: &str, time: &str) -> Result<String, PayloadError> {
    let dt = NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M:%S")
        .map_err(|e| PayloadError(format!("data.sms_date/sms_time: `{date} {time}` is not a date and time: {e}")))?;
    Ok(dt.and_utc().to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn mms_url(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => ["media_url", "url", "link"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str))
            .map(str::to_string),
        _ => None,
    }
}

fn parse_v21(name: &str, value: Value) -> Result<Parsed, PayloadError> {
    match name {
        "sms.received" | "sms.sent" | "sms.sent_received" | "sms.status_updated" => {}
        "jc.contact_status_updated" => return parse_v21_contact(name, value),
        other => {
            return Ok(Parsed::Ignored {
                type_name: other.to_string(),
                reason: format!("type `{other}` is not an SMS event"),
            });
        }
    }
    let p: V21Payload<V21Sms> = typed(value)?;
    if p.request_id.is_empty() {
        return Err(PayloadError("request_id: must not be empty".into()));
    }
    let d = p.data;
    let direction = match d.direction.to_ascii_lowercase().as_str() {
        "incoming" | "inbound" => Direction::Inbound,
        "outgoing" | "outbound" => Direction::Outbound,
        other => {
            return Err(PayloadError(format!(
                "data.direction: expected `Incoming` or `Outgoing`, got `{other}`"
            )));
        }
    };
    let kind = match name {
        "sms.received" => EventKind::Received,
        "sms.sent" => EventKind::Sent,
        "sms.sent_received" => match direction {
            Direction::Inbound => EventKind::Received,
            Direction::Outbound => EventKind::Sent,
        },
        _ => match d.delivery_status.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("delivered") => EventKind::Delivered,
            Some("failed" | "undelivered" | "rejected" | "error") => EventKind::Failed,
            Some(other) => {
                return Ok(Parsed::Ignored {
                    type_name: name.to_string(),
                    reason: format!("delivery_status `{other}` is not final"),
                });
            }
            None => return Err(PayloadError("data.delivery_status: missing field".into())),
        },
    };
    let contact = phone("data.contact_number", &d.contact_number)?;
    let line = phone("data.justcall_number", &d.justcall_number)?;
    let (from, to) = match direction {
        Direction::Inbound => (contact, line.clone()),
        Direction::Outbound => (line.clone(), contact),
    };
    Ok(Parsed::Event(Box::new(Incoming {
        event: Event {
            tenant: String::new(),
            kind,
            event_id: String::new(),
            occurred_at: v21_time(&d.sms_date, &d.sms_time)?,
            message_id: d.id.into_string(),
            direction,
            from,
            to,
            body: d.sms_info.body,
            media_urls: d.sms_info.mms.iter().filter_map(mms_url).collect(),
            justcall_number: line,
            contact_name: non_empty(d.contact_name),
            agent_id: d.agent_id.map(Id::into_string),
        },
        format: Format::V21,
        type_name: name.to_string(),
        dedupe_key: format!("jc:{}", p.request_id),
    })))
}

fn parse_v21_contact(name: &str, value: Value) -> Result<Parsed, PayloadError> {
    let p: V21Payload<V21Contact> = typed(value)?;
    if p.request_id.is_empty() {
        return Err(PayloadError("request_id: must not be empty".into()));
    }
    let d = p.data;
    let opted_out = d.status.blacklist || d.status.dnd || d.status.dnm;
    let occurred_at = match d.status_updated_at.as_deref() {
        Some(s) => match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            Ok(date) => date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc(),
            Err(_) => DateTime::parse_from_rfc3339(s)
                .map_err(|e| PayloadError(format!("data.status_updated_at: `{s}` is not a date: {e}")))?
                .with_timezone(&Utc),
        },
        None => Utc::now(),
    };
    Ok(Parsed::Event(Box::new(Incoming {
        event: Event {
            tenant: String::new(),
            kind: if opted_out { EventKind::OptOut } else { EventKind::OptIn },
            event_id: String::new(),
            occurred_at: occurred_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            message_id: d.id.into_string(),
            direction: Direction::Inbound,
            from: phone("data.contact_number", &d.contact_number)?,
            to: String::new(),
            body: String::new(),
            media_urls: Vec::new(),
            justcall_number: String::new(),
            contact_name: non_empty(d.name),
            agent_id: d.agent_id.map(Id::into_string),
        },
        format: Format::V21,
        type_name: name.to_string(),
        dedupe_key: format!("jc:{}", p.request_id),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &[u8]) -> Result<Parsed, PayloadError> {
        match decode(body)? {
            Body::Ping => panic!("a ping, not a payload"),
            Body::Payload(v) => parse_value(v),
        }
    }

    fn event(json: &str) -> Incoming {
        match parse(json.as_bytes()).unwrap() {
            Parsed::Event(i) => *i,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn opt_out_keywords_in_any_case_and_spacing() {
        let mut e = event(r#"{"event":"sms.received","timestamp":"2026-03-12T14:30:00Z","data":{"message_id":"m","direction":"inbound","from":"+15125551234","to":"+15125550100","body":"x","justcall_number":"+15125550100"}}"#).event;
        for body in [
            "STOP",
            " stop ",
            "Quit",
            "end",
            "revoke",
            "opt  out",
            "Opt Out\n",
            "CANCEL",
            "unsubscribe",
        ] {
            e.body = body.to_string();
            assert_eq!(e.opt_change(), Some(("+15125551234".to_string(), true)), "{body:?}");
        }
        for body in ["START", " start"] {
            e.body = body.to_string();
            assert_eq!(e.opt_change(), Some(("+15125551234".to_string(), false)), "{body:?}");
        }
        for body in ["please stop", "STOPPED", "optout", "", "START NOW"] {
            e.body = body.to_string();
            assert_eq!(e.opt_change(), None, "{body:?}");
        }
        e.kind = EventKind::Sent;
        e.body = "STOP".into();
        assert_eq!(e.opt_change(), None, "only inbound messages opt out");
    }

    #[test]
    fn pings() {
        assert!(matches!(decode(b"").unwrap(), Body::Ping));
        assert!(matches!(decode(b"  \n").unwrap(), Body::Ping));
        assert!(matches!(decode(b"{\"hello\":1}").unwrap(), Body::Ping));
        assert!(matches!(decode(b"{\"type\":5}").unwrap(), Body::Payload(_)));
        assert_eq!(decode(b"[1]").unwrap_err().0, "body must be a JSON object");
    }

    #[test]
    fn seed_missing_field_is_named() {
        let err = parse(br#"{"event":"sms.received","timestamp":"2026-03-12T14:30:00Z","data":{"direction":"inbound","from":"+15125551234","to":"+15125550100","justcall_number":"+15125550100"}}"#).unwrap_err();
        assert_eq!(err.0, "data: missing field `message_id`");
        let err = parse(br#"{"event":"sms.received","timestamp":"yesterday","data":{}}"#).unwrap_err();
        assert!(err.0.starts_with("data: missing field"), "{err}");
        let err = parse(br#"{"event":"sms.received","timestamp":"yesterday","data":{"message_id":"m","direction":"inbound","from":"+15125551234","to":"+15125550100","justcall_number":"+15125550100"}}"#).unwrap_err();
        assert!(err.0.starts_with("timestamp: `yesterday` is not RFC 3339"), "{err}");
    }

    #[test]
    fn v21_numbers_become_e164_and_direction_picks_kind() {
        let i = event(
            r#"{"request_id":"r1","type":"sms.sent_received","data":{"id":7,"contact_number":"15125551234","justcall_number":"15125550100","direction":"Outgoing","sms_date":"2024-02-23","sms_time":"09:30:58","sms_info":{"body":"hi","mms":[]},"agent_id":27155001}}"#,
        );
        assert_eq!(i.event.kind, EventKind::Sent);
        assert_eq!((i.event.from.as_str(), i.event.to.as_str()), ("+15125550100", "+15125551234"));
        assert_eq!(i.event.occurred_at, "2024-02-23T09:30:58Z");
        assert_eq!(i.event.message_id, "7");
        assert_eq!(i.event.agent_id.as_deref(), Some("27155001"));
        assert_eq!(i.dedupe_key, "jc:r1");
    }

    #[test]
    fn unknown_types_are_ignored_not_rejected() {
        assert!(matches!(
            parse(br#"{"type":"call.completed","request_id":"x","data":{}}"#).unwrap(),
            Parsed::Ignored { .. }
        ));
        assert!(matches!(parse(br#"{"event":"call.completed"}"#).unwrap(), Parsed::Ignored { .. }));
    }

    #[test]
    fn non_objects_and_bad_json_are_rejected() {
        assert_eq!(parse(b"[1]").unwrap_err().0, "body must be a JSON object");
        assert!(parse(b"{nope").unwrap_err().0.starts_with("body is not valid JSON"));
        assert_eq!(parse(br#"{"type":5}"#).unwrap_err().0, "type: expected a string");
    }
}
