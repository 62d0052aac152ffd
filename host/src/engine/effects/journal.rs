//! The side-effect journal as the engine uses it: hashing a request, what an
//! earlier attempt's entry means for this one ([`Prior`]), the journaled SMS
//! send with reconciliation of unknown outcomes against JustCall, and
//! journaled HTTP. Storage keeps the entries; this module decides.

use std::time::{Duration, Instant};

use super::OutgoingSms;
use crate::engine::bindings::http;
use crate::engine::justcall::{JustCallClient, JustCallError};
use crate::storage::{Db, DbError, JournalEntry, JournalState};

/// Sends per SMS call while JustCall answers 5xx and the message is not found.
const SMS_SEND_TRIES: u32 = 3;

/// A hash of a side-effecting request, over length-prefixed parts (so parts
/// cannot run into each other).
pub fn request_hash(parts: &[&[u8]]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// What an earlier attempt left for the side effect at this sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prior {
    /// Nothing, or a different request: act.
    Nothing,
    /// The same request succeeded, with this recorded result: replay it.
    Done(Option<String>),
    /// The same request started at `started_ms` and its outcome was never
    /// learnt (crash, timeout): it may have happened.
    Unknown(i64),
    /// The same request failed as far as we know (e.g. JustCall answered 5xx
    /// on every try); for an SMS, JustCall may still have sent it.
    Failed(i64),
}

impl Prior {
    /// Reads `entry` for a request hashing to `hash`.
    pub fn of(entry: Option<JournalEntry>, hash: &str) -> Prior {
        match entry {
            Some(e) if e.request_hash == hash => match e.state {
                JournalState::Done => Prior::Done(e.result),
                JournalState::Started => Prior::Unknown(e.started_ms),
                JournalState::Failed => Prior::Failed(e.started_ms),
            },
            _ => Prior::Nothing,
        }
    }
}

fn journal_unavailable(e: DbError) -> JustCallError {
    JustCallError::Unavailable(format!("cannot journal the send: {e}"))
}

/// One delivery's journal.
#[derive(Debug, Clone)]
pub struct Journal {
    db: Db,
    delivery: i64,
}

impl Journal {
    /// The journal of `delivery`.
    pub fn new(db: Db, delivery: i64) -> Journal {
        Journal { db, delivery }
    }

    /// Sends an SMS at most once per delivery: the send is journaled before
    /// it is made; a later attempt gets a journaled success back, and looks
    /// up a send whose outcome was never learnt before sending again.
    pub async fn sms_send(
        &self,
        justcall: &JustCallClient,
        seq: u32,
        sms: OutgoingSms<'_>,
        deadline: Instant,
    ) -> Result<String, JustCallError> {
        let OutgoingSms { from, to, body, media } = sms;
        let (db, delivery) = (&self.db, self.delivery);
        let hash = request_hash(&[b"sms", from.as_bytes(), to.as_bytes(), body.as_bytes(), media.join("\n").as_bytes()]);
        match Prior::of(db.journal_get(delivery, seq).await.map_err(journal_unavailable)?, &hash) {
            Prior::Done(result) => {
                let id = result
                    .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
                    .and_then(|v| v["id"].as_str().map(str::to_string))
                    .unwrap_or_default();
                tracing::info!(delivery, seq, %id, "sms sent by an earlier attempt; returning its journaled result");
                return Ok(id);
            }
            // An earlier attempt started this send and never learnt how it
            // ended (or JustCall failed it with 5xx): look for it first.
            Prior::Unknown(started_ms) | Prior::Failed(started_ms) => {
                if let Some(id) = self.reconcile(justcall, seq, sms, started_ms, deadline).await? {
                    return Ok(id);
                }
            }
            Prior::Nothing => {}
        }
        let mut started_ms = db.journal_begin(delivery, seq, hash.clone()).await.map_err(journal_unavailable)?;
        let mut tries = 1;
        loop {
            match justcall.send(from, to, body, media, deadline).await {
                Ok(id) => {
                    let result = serde_json::json!({ "id": id }).to_string();
                    let claimed = (!id.is_empty()).then(|| id.clone());
                    db.journal_end(delivery, seq, JournalState::Done, Some(result), claimed);
                    return Ok(id);
                }
                Err(JustCallError::Status { status, message }) if status >= 500 => {
                    // JustCall answered 5xx: it may have sent anyway.
                    if let Some(id) = self.reconcile(justcall, seq, sms, started_ms, deadline).await? {
                        return Ok(id);
                    }
                    if tries >= SMS_SEND_TRIES || Instant::now() >= deadline {
                        db.journal_end(delivery, seq, JournalState::Failed, None, None);
                        return Err(JustCallError::Status { status, message });
                    }
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100 << tries)).await;
                    started_ms = db.journal_begin(delivery, seq, hash.clone()).await.map_err(journal_unavailable)?;
                }
                // Timed out: the entry stays `started`, so the next attempt
                // reconciles before it sends.
                Err(e @ JustCallError::Unknown(_)) => return Err(e),
                Err(e) => {
                    db.journal_end(delivery, seq, JournalState::Failed, None, None);
                    return Err(e);
                }
            }
        }
    }

    /// Finds a message JustCall sent for entry `seq` since `started_ms` and
    /// not already claimed by another entry; records it as this entry's.
    async fn reconcile(
        &self,
        justcall: &JustCallClient,
        seq: u32,
        sms: OutgoingSms<'_>,
        started_ms: i64,
        deadline: Instant,
    ) -> Result<Option<String>, JustCallError> {
        let (db, delivery) = (&self.db, self.delivery);
        let since = chrono::DateTime::from_timestamp_millis(started_ms).unwrap_or_else(chrono::Utc::now);
        let candidates = justcall.find_sent(sms.from, sms.to, sms.body, since, deadline).await?;
        for m in candidates {
            if !db.journal_claimed(&m.id).await.map_err(journal_unavailable)? {
                tracing::info!(delivery, seq, id = %m.id, "sms with an unknown outcome was sent; reconciled, not sent again");
                let result = serde_json::json!({ "id": m.id }).to_string();
                db.journal_end(delivery, seq, JournalState::Done, Some(result), Some(m.id.clone()));
                return Ok(Some(m.id));
            }
        }
        tracing::info!(delivery, seq, "sms with an unknown outcome was not sent; sending it");
        Ok(None)
    }

    /// Journals a request around `perform`: a request that succeeded (2xx)
    /// on an earlier attempt is answered from the journal instead.
    pub async fn http<F>(&self, seq: u32, req: http::Request, perform: F) -> Result<http::Response, http::HttpError>
    where
        F: AsyncFnOnce(http::Request) -> Result<http::Response, http::HttpError>,
    {
        let (db, delivery) = (&self.db, self.delivery);
        let method = req.method.to_ascii_uppercase();
        let mut headers: Vec<String> = req.headers.iter().map(|(k, v)| format!("{}:{v}", k.to_ascii_lowercase())).collect();
        headers.sort();
        let hash = request_hash(&[
            b"http",
            method.as_bytes(),
            req.url.as_bytes(),
            headers.join("\n").as_bytes(),
            &req.body,
        ]);
        let unavailable = |e: DbError| http::HttpError::Transport(format!("cannot journal the request: {e}"));
        if let Prior::Done(Some(result)) = Prior::of(db.journal_get(delivery, seq).await.map_err(unavailable)?, &hash)
            && let Some(resp) = decode_response(&result)
        {
            tracing::info!(
                delivery,
                seq,
                "request made by an earlier attempt; returning its journaled response"
            );
            return Ok(resp);
        }
        db.journal_begin(delivery, seq, hash).await.map_err(unavailable)?;
        let result = perform(req).await;
        match &result {
            Ok(resp) if (200..300).contains(&resp.status) => {
                db.journal_end(delivery, seq, JournalState::Done, Some(encode_response(resp)), None)
            }
            _ => db.journal_end(delivery, seq, JournalState::Failed, None, None),
        }
        result
    }
}

/// The most of a response body the journal keeps: a retry replays the
/// status, the headers and this much of the body.
pub const JOURNAL_BODY_MAX: usize = 64 << 10;

/// The header a replayed response carries when its body was cut to
/// [`JOURNAL_BODY_MAX`]: `<full length>; sha256=<digest of the full body>`.
pub const TRUNCATED_HEADER: &str = "switchboard-journal-truncated";

fn encode_response(r: &http::Response) -> String {
    use base64::Engine as _;
    let kept = &r.body[..r.body.len().min(JOURNAL_BODY_MAX)];
    serde_json::json!({
        "status": r.status,
        "headers": r.headers,
        "body": base64::engine::general_purpose::STANDARD.encode(kept),
        "body_len": r.body.len(),
        "body_sha256": request_hash(&[&r.body]),
    })
    .to_string()
}

fn decode_response(s: &str) -> Option<http::Response> {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_str(s).ok()?;
    let body = base64::engine::general_purpose::STANDARD.decode(v["body"].as_str()?).ok()?;
    let mut headers: Vec<(String, String)> = serde_json::from_value(v["headers"].clone()).ok()?;
    if let Some(full) = v["body_len"].as_u64().filter(|&n| n > body.len() as u64) {
        let digest = v["body_sha256"].as_str().unwrap_or_default();
        headers.push((TRUNCATED_HEADER.into(), format!("{full}; sha256={digest}")));
    }
    Some(http::Response {
        status: u16::try_from(v["status"].as_u64()?).ok()?,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(hash: &str, state: JournalState) -> Option<JournalEntry> {
        Some(JournalEntry {
            request_hash: hash.into(),
            state,
            result: Some("{\"id\":\"m1\"}".into()),
            started_ms: 42,
        })
    }

    #[test]
    fn each_journal_state_means_one_thing_for_the_next_attempt() {
        assert_eq!(Prior::of(None, "h"), Prior::Nothing);
        assert_eq!(
            Prior::of(entry("h", JournalState::Done), "h"),
            Prior::Done(Some("{\"id\":\"m1\"}".into()))
        );
        assert_eq!(Prior::of(entry("h", JournalState::Started), "h"), Prior::Unknown(42));
        assert_eq!(Prior::of(entry("h", JournalState::Failed), "h"), Prior::Failed(42));
        // A different request at the same seq acts for real, whatever its state.
        for state in [JournalState::Done, JournalState::Started, JournalState::Failed] {
            assert_eq!(Prior::of(entry("other", state), "h"), Prior::Nothing);
        }
    }

    #[test]
    fn request_hashes_separate_their_parts() {
        assert_eq!(request_hash(&[b"ab", b"c"]), request_hash(&[b"ab", b"c"]));
        assert_ne!(request_hash(&[b"ab", b"c"]), request_hash(&[b"a", b"bc"]));
        assert_ne!(request_hash(&[b"sms", b""]), request_hash(&[b"sms"]));
        assert_eq!(request_hash(&[]).len(), 64);
    }

    #[test]
    fn journaled_responses_round_trip() {
        let r = http::Response {
            status: 201,
            headers: vec![("content-type".into(), "application/json".into())],
            body: vec![0, 159, 146, 150, b'{'],
        };
        let back = decode_response(&encode_response(&r)).unwrap();
        assert_eq!((back.status, back.headers, back.body), (r.status, r.headers, r.body));
        assert!(decode_response("{\"status\": 70000}").is_none());
        // A big body keeps its first 64 KiB, and the replay says so.
        let big = http::Response {
            status: 200,
            headers: vec![],
            body: vec![b'x'; JOURNAL_BODY_MAX + 10],
        };
        let stored = encode_response(&big);
        assert!(stored.len() < JOURNAL_BODY_MAX * 2, "{} bytes stored", stored.len());
        let back = decode_response(&stored).unwrap();
        assert_eq!(back.body.len(), JOURNAL_BODY_MAX);
        let (name, value) = &back.headers[0];
        assert_eq!(name, TRUNCATED_HEADER);
        assert!(value.starts_with(&format!("{}; sha256=", JOURNAL_BODY_MAX + 10)), "{value}");
        assert!(decode_response("not json").is_none());
    }
}
