//! Searching a tenant's deliveries by contact number, body text, event kind,
//! plugin, status and time, newest first, a page at a time (keyset: each page
//! ends with the id to continue `before`). Every filter is index-backed: the
//! body words through the `delivery_text` full-text index (one row per
//! delivery, rowid = delivery id), numbers through expression indexes on the
//! event's `from` and `to`, plugin, status and kind (copied from the event)
//! through the delivery indexes,
//! and a time range is first turned into a delivery id range (ids grow with
//! `created_at`, which is indexed). The query is written so that the most
//! selective filter given drives it (`CROSS JOIN` fixes the join order).

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use super::deliveries::{DeliveryRecord, DeliveryStatus, delivery_record};
use super::{Db, DbError};
use crate::domain::EventKind;
use crate::domain::clock::rfc3339_ms;

/// Most rows one page may hold.
pub const MAX_PAGE: u32 = 500;
/// Characters of the body shown in a result row.
const BODY_PREVIEW: usize = 160;

/// What to look for. Every filter given must match.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// The contact or tenant number, as sender or recipient (E.164).
    pub number: Option<String>,
    /// Words the message body contains (each as a word prefix, any case).
    pub text: Option<String>,
    /// The event's kind.
    pub kind: Option<EventKind>,
    /// The plugin the delivery is for.
    pub plugin: Option<String>,
    /// The delivery's status.
    pub status: Option<DeliveryStatus>,
    /// Deliveries created at or after this (unix ms).
    pub since_ms: Option<i64>,
    /// Deliveries created before this (unix ms).
    pub until_ms: Option<i64>,
    /// Only deliveries with a smaller id: the previous page's `next`.
    pub before: Option<i64>,
    /// At most this many (1..=[`MAX_PAGE`]).
    pub limit: u32,
}

/// One delivery found, with what its event was.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Found {
    /// The delivery.
    #[serde(flatten)]
    pub delivery: DeliveryRecord,
    /// The event's kind (`sms.received`, …).
    pub kind: String,
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// The start of the body.
    pub body: String,
    /// When the event arrived.
    pub received_at: String,
}

/// One page of results, newest first.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Page {
    /// The deliveries.
    pub deliveries: Vec<Found>,
    /// Pass as `before` for the next page; `None` on the last.
    pub next: Option<i64>,
}

/// Why a search cannot run as given.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The text has no word in it.
    #[error("text `{0}` has no words to search for")]
    NoWords(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The full-text query for `text`: every word, as a prefix.
fn match_expression(text: &str) -> Option<String> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| format!("\"{w}\"*"))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// `number` as stored: `+` and digits, spaces, dots, dashes and brackets dropped.
pub fn normalise_number(number: &str) -> String {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    format!("+{digits}")
}

/// The smallest delivery id created at or after `ms`, or one past the
/// largest if none was.
pub(super) fn first_id_at(conn: &Connection, ms: i64) -> Result<i64, DbError> {
    let at = rfc3339_ms(ms).unwrap_or_default();
    let found: Option<i64> = conn
        .query_row(
            "SELECT id FROM deliveries INDEXED BY deliveries_by_created WHERE created_at >= ?1 ORDER BY created_at, id LIMIT 1",
            [at],
            |r| r.get(0),
        )
        .optional()?;
    match found {
        Some(id) => Ok(id),
        None => Ok(conn.query_row("SELECT coalesce(max(id), 0) + 1 FROM deliveries", [], |r| r.get(0))?),
    }
}

fn found_columns() -> String {
    format!(
        "d.id, d.event_id, d.plugin, d.plugin_hash, d.status, d.attempts, d.failures, d.last_error,
    d.duration_us, d.next_attempt_ms, coalesce(d.created_at, d.updated_at),
    e.kind, json_extract(e.event_json, '$.from'), json_extract(e.event_json, '$.to'),
    substr(json_extract(e.event_json, '$.body'), 1, {BODY_PREVIEW}), e.received_at"
    )
}

/// The query for `s` (with `words`, its full-text expression, and the id
/// range `low..high`) and its arguments.
fn query(tenant: &str, s: &Search, words: Option<String>, low: Option<i64>, high: Option<i64>) -> (String, Vec<SqlValue>) {
    let mut args: Vec<SqlValue> = Vec::new();
    let mut arg = |v: SqlValue| {
        args.push(v);
        format!("?{}", args.len())
    };
    let t = arg(tenant.to_string().into());
    let mut filters = Vec::new();
    // The most selective filter given drives the query: the body's words
    // (the full-text index yields ids newest first), else the number (a
    // handful of events, then their deliveries, sorted), else a delivery
    // index. `+d.tenant` keeps the tenant off the index choice when it is
    // only a check.
    let (from, id) = if let Some(words) = words {
        filters.push(format!("delivery_text MATCH {}", arg(words.into())));
        filters.push(format!("+d.tenant = {t}"));
        let from = "delivery_text t CROSS JOIN deliveries d ON d.id = t.rowid CROSS JOIN events e ON e.id = d.event_id";
        (from, "t.rowid")
    } else if s.number.is_some() {
        filters.push(format!("+d.tenant = {t}"));
        ("deliveries d CROSS JOIN events e ON e.id = d.event_id", "d.id")
    } else {
        filters.push(format!("d.tenant = {t}"));
        ("deliveries d CROSS JOIN events e ON e.id = d.event_id", "d.id")
    };
    if let Some(n) = &s.number {
        let n = arg(normalise_number(n).into());
        filters.push(format!(
            "d.event_id IN (SELECT id FROM events WHERE tenant = {t} AND json_extract(event_json, '$.from') = {n}
             UNION ALL SELECT id FROM events WHERE tenant = {t} AND json_extract(event_json, '$.to') = {n})"
        ));
    }
    if let Some(k) = s.kind {
        filters.push(format!("d.kind = {}", arg(k.as_str().to_string().into())));
    }
    if let Some(p) = &s.plugin {
        filters.push(format!("d.plugin = {}", arg(p.clone().into())));
    }
    if let Some(st) = s.status {
        filters.push(format!("d.status = {}", arg(st.as_str().to_string().into())));
    }
    if let Some(lo) = low {
        filters.push(format!("{id} >= {}", arg(lo.into())));
    }
    if let Some(hi) = high {
        filters.push(format!("{id} < {}", arg(hi.into())));
    }
    let take = arg(i64::from(s.limit.clamp(1, MAX_PAGE) + 1).into());
    let sql = format!(
        "SELECT {} FROM {from} WHERE {} ORDER BY {id} DESC LIMIT {take}",
        found_columns(),
        filters.join(" AND ")
    );
    (sql, args)
}

fn run(conn: &Connection, tenant: &str, s: &Search, words: Option<String>) -> Result<Page, DbError> {
    // The id range: below `before` and inside the time range.
    let low = s.since_ms.map(|ms| first_id_at(conn, ms)).transpose()?;
    let high = s.until_ms.map(|ms| first_id_at(conn, ms)).transpose()?;
    let high = match (high, s.before) {
        (Some(h), Some(b)) => Some(h.min(b)),
        (h, b) => h.or(b),
    };
    let limit = s.limit.clamp(1, MAX_PAGE);
    let (sql, args) = query(tenant, s, words, low, high);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(args), |r| {
        Ok(Found {
            delivery: delivery_record(r)?,
            kind: {
                let k: String = r.get(11)?;
                EventKind::from_name(&k).map_or(k, |k| k.seed_name().to_string())
            },
            from: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
            to: r.get::<_, Option<String>>(13)?.unwrap_or_default(),
            body: r.get::<_, Option<String>>(14)?.unwrap_or_default(),
            received_at: r.get(15)?,
        })
    })?;
    let mut deliveries = rows.collect::<Result<Vec<_>, _>>()?;
    let next = (deliveries.len() > limit as usize).then(|| {
        deliveries.truncate(limit as usize);
        deliveries.last().map(|f| f.delivery.id)
    });
    Ok(Page {
        deliveries,
        next: next.flatten(),
    })
}

/// Indexes a delivery's body for search (in the transaction creating it).
pub(super) fn index_delivery(conn: &Connection, delivery_id: i64, event_id: &str) -> Result<(), DbError> {
    conn.prepare_cached("INSERT INTO delivery_text (rowid, body) SELECT ?1, json_extract(event_json, '$.body') FROM events WHERE id = ?2")?
        .execute(rusqlite::params![delivery_id, event_id])?;
    Ok(())
}

impl Db {
    /// One page of the tenant's deliveries matching `search`, newest first.
    pub async fn search(&self, tenant: &str, search: Search) -> Result<Page, SearchError> {
        let words = match search.text.as_deref() {
            Some(t) => Some(match_expression(t).ok_or_else(|| SearchError::NoWords(t.to_string()))?),
            None => None,
        };
        let t = tenant.to_string();
        Ok(self.browse(move |conn| run(conn, &t, &search, words)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_become_prefix_terms() {
        assert_eq!(match_expression("CONFIRM, please!").as_deref(), Some("\"CONFIRM\"* \"please\"*"));
        assert_eq!(match_expression("  ?! "), None);
        assert_eq!(match_expression("\"x\" OR y").as_deref(), Some("\"x\"* \"OR\"* \"y\"*"));
    }

    /// Every shape of search reads through an index: no full scan of
    /// deliveries or events, whatever the filters.
    #[test]
    fn every_search_is_index_backed() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = super::super::schema::open_conn(&dir.path().join("db"), std::time::Duration::from_secs(1)).unwrap();
        super::super::schema::migrations().to_latest(&mut conn).unwrap();
        let each: [fn(&mut Search); 8] = [
            |_| {},
            |s| s.number = Some("+15125551234".into()),
            |s| s.text = Some("confirm".into()),
            |s| s.kind = Some(EventKind::OptOut),
            |s| s.plugin = Some("crm".into()),
            |s| s.status = Some(DeliveryStatus::Failed),
            |s| {
                s.plugin = Some("crm".into());
                s.status = Some(DeliveryStatus::Failed);
            },
            |s| {
                s.number = Some("+15125551234".into());
                s.text = Some("confirm".into());
            },
        ];
        for (i, set) in each.iter().enumerate() {
            for range in [(None, None), (Some(10), Some(500))] {
                let mut s = Search {
                    limit: 50,
                    ..Search::default()
                };
                set(&mut s);
                let words = s.text.as_deref().and_then(match_expression);
                let (sql, args) = query("acme", &s, words, range.0, range.1);
                let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
                let plan: Vec<String> = stmt
                    .query_map(params_from_iter(args), |r| r.get::<_, String>(3))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                let scans: Vec<&String> = plan
                    .iter()
                    .filter(|l| l.starts_with("SCAN") && !l.contains("VIRTUAL TABLE"))
                    .collect();
                assert!(scans.is_empty(), "search {i} {range:?} scans: {plan:#?}\n{sql}");
            }
        }
    }

    #[test]
    fn numbers_are_normalised() {
        assert_eq!(normalise_number("+1 (512) 555-0100"), "+15125550100");
        assert_eq!(normalise_number("15125550100"), "+15125550100");
    }
}
