//! The two JustCall wire formats (the guide's seed format and JustCall's
//! v2.1) and their normalisation into one [`Event`].

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::domain::{Country, Direction, Event, EventKind, normalize_e164};

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
pub enum Body<'a> {
    /// The setup ping: an empty body, or a JSON object with neither `event`
    /// nor `type`. Acknowledged; never authenticated, stored or dispatched.
    Ping,
    /// A payload naming an event, to authenticate and then [`parse`].
    Payload(Payload<'a>),
}

/// A JSON object that names an event, not yet parsed further.
#[derive(Debug)]
pub struct Payload<'a> {
    bytes: &'a [u8],
    name: Name,
}

#[derive(Debug)]
enum Name {
    /// v2.1's `type`.
    Type(String),
    /// The seed format's `event`.
    Event(String),
}

impl Payload<'_> {
    /// The `type` (v2.1) or `event` (seed) name, as sent.
    pub fn type_name(&self) -> &str {
        match &self.name {
            Name::Type(n) | Name::Event(n) => n,
        }
    }
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

/// Decodes a webhook body: the one place a ping is told from a payload.
/// Only the top-level keys are looked at; values stay unparsed text.
pub fn decode(body: &[u8]) -> Result<Body<'_>, PayloadError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Body::Ping);
    }
    let object: BTreeMap<String, &RawValue> = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => PayloadError("body must be a JSON object".into()),
        _ => PayloadError(format!("body is not valid JSON: {e}")),
    })?;
    let name = |key: &str| -> Result<Option<String>, PayloadError> {
        object
            .get(key)
            .map(|raw| serde_json::from_str::<String>(raw.get()).map_err(|_| PayloadError(format!("{key}: expected a string"))))
            .transpose()
    };
    let name = match (name("type")?, name("event")?) {
        (Some(t), _) => Name::Type(t),
        (None, Some(e)) => Name::Event(e),
        (None, None) => return Ok(Body::Ping),
    };
    Ok(Body::Payload(Payload { bytes: body, name }))
}

/// Parses a payload from [`decode`] (v2.1 if it has `type`, else seed).
/// Numbers written without `+` are read with `default_country`.
pub fn parse(payload: &Payload<'_>, default_country: Option<Country>) -> Result<Parsed, PayloadError> {
    let cx = Cx { default_country };
    match &payload.name {
        Name::Type(t) => parse_v21(cx, t, payload.bytes),
        Name::Event(e) => parse_seed(cx, e, payload.bytes),
    }
}

/// What normalisation needs besides the payload.
#[derive(Clone, Copy)]
struct Cx {
    default_country: Option<Country>,
}

impl Cx {
    fn phone(self, field: &str, raw: &str) -> Result<String, PayloadError> {
        normalize_e164(raw, self.default_country).map_err(|e| PayloadError(format!("{field}: `{raw}` {e}")))
    }
}

fn typed<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, PayloadError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        // The position is noise in a one-line reason that names the field.
        let inner = inner.rsplit_once(" at line ").map_or(inner.as_str(), |(m, _)| m);
        if path == "." {
            PayloadError(inner.to_string())
        } else {
            PayloadError(format!("{path}: {inner}"))
        }
    })
}

/// An id JustCall sends as a string or an integer, kept as exact text: an
/// integer beyond 64 bits is never rounded through a float.
#[derive(Debug)]
struct Id(String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        let raw = <&RawValue>::deserialize(d)?.get();
        if raw.starts_with('"') {
            return serde_json::from_str(raw).map(Id).map_err(serde::de::Error::custom);
        }
        let digits = raw.strip_prefix('-').unwrap_or(raw);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Id(raw.to_string()))
        } else {
            Err(serde::de::Error::custom(format!("expected a string or an integer id, got `{raw}`")))
        }
    }
}

impl Id {
    fn into_string(self) -> String {
        self.0
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

fn parse_seed(cx: Cx, name: &str, bytes: &[u8]) -> Result<Parsed, PayloadError> {
    let Some(kind) = seed_kind(name) else {
        return Ok(Parsed::Ignored {
            type_name: name.to_string(),
            reason: format!("event `{name}` is not an SMS event"),
        });
    };
    let p: SeedPayload = typed(bytes)?;
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
            from: cx.phone("data.from", &p.data.from)?,
            to: cx.phone("data.to", &p.data.to)?,
            body: p.data.body,
            media_urls: p.data.media_urls,
            justcall_number: cx.phone("data.justcall_number", &p.data.justcall_number)?,
            contact_name: non_empty(p.data.contact_name),
            agent_id: p.data.agent_id.map(Id::into_string),
            timer: None,
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

fn parse_v21(cx: Cx, name: &str, bytes: &[u8]) -> Result<Parsed, PayloadError> {
    match name {
        "sms.received" | "sms.sent" | "sms.sent_received" | "sms.status_updated" => {}
        "jc.contact_status_updated" => return parse_v21_contact(cx, name, bytes),
        other => {
            return Ok(Parsed::Ignored {
                type_name: other.to_string(),
                reason: format!("type `{other}` is not an SMS event"),
            });
        }
    }
    let p: V21Payload<V21Sms> = typed(bytes)?;
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
    let contact = cx.phone("data.contact_number", &d.contact_number)?;
    let line = cx.phone("data.justcall_number", &d.justcall_number)?;
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
            timer: None,
        },
        format: Format::V21,
        type_name: name.to_string(),
        dedupe_key: format!("jc:{}", p.request_id),
    })))
}

fn parse_v21_contact(cx: Cx, name: &str, bytes: &[u8]) -> Result<Parsed, PayloadError> {
    let p: V21Payload<V21Contact> = typed(bytes)?;
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
            from: cx.phone("data.contact_number", &d.contact_number)?,
            to: String::new(),
            body: String::new(),
            media_urls: Vec::new(),
            justcall_number: String::new(),
            contact_name: non_empty(d.name),
            agent_id: d.agent_id.map(Id::into_string),
            timer: None,
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
        parse_in(body, None)
    }

    fn parse_in(body: &[u8], country: Option<Country>) -> Result<Parsed, PayloadError> {
        match decode(body)? {
            Body::Ping => panic!("a ping, not a payload"),
            Body::Payload(p) => super::parse(&p, country),
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
        assert!(matches!(decode(b"{\"type\":\"x\"}").unwrap(), Body::Payload(_)));
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

    const V21_RECEIVED: &str = r#"{"request_id":"r1","type":"sms.received","data":{"id":ID,"contact_number":"CONTACT","justcall_number":"15125550100","direction":"Incoming","sms_date":"2024-02-23","sms_time":"09:30:58","sms_info":{"body":"hi"}}}"#;

    fn v21_received(id: &str, contact: &str) -> String {
        V21_RECEIVED.replace("ID", id).replace("CONTACT", contact)
    }

    #[test]
    fn ids_beyond_64_bits_are_kept_exactly() {
        let huge = "123456789012345678901234567890";
        let i = event(&v21_received(huge, "15125551234"));
        assert_eq!(i.event.message_id, huge);
        let i = event(&v21_received(&format!("\"{huge}\""), "15125551234"));
        assert_eq!(i.event.message_id, huge);
        let err = parse(v21_received("1.5e3", "15125551234").as_bytes()).unwrap_err();
        assert_eq!(err.0, "data.id: expected a string or an integer id, got `1.5e3`");
    }

    #[test]
    fn a_national_number_needs_the_tenants_country() {
        let body = v21_received("7", "5125551234");
        let err = parse(body.as_bytes()).unwrap_err();
        assert!(err.0.starts_with("data.contact_number: `5125551234` has no country code"), "{err}");
        let Parsed::Event(i) = parse_in(body.as_bytes(), Some(Country::US)).unwrap() else {
            panic!("expected an event")
        };
        assert_eq!(i.event.from, "+15125551234");
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
