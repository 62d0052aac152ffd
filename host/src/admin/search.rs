//! The deliveries search as a query string (shared by the admin API, the
//! console and the CLI): parsing each filter, with a precise refusal for
//! one that makes no sense, into a storage [`Search`].

use super::AdminError;
use crate::domain::EventKind;
use crate::storage::{DeliveryStatus, Search, SearchError};

/// A deliveries search as given in a query string (the admin API's and the
/// console's). Empty values count as not given, as an HTML form sends them.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize)]
pub struct SearchParams {
    /// Sender or recipient number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// Words in the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Event kind (`sms.received`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Plugin name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Delivery status (`outcome` is the same).
    #[serde(default, alias = "outcome", skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// RFC 3339 time, or a duration ago (`15m`, `2h`, `7d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// RFC 3339 time, or a duration ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The previous page's `next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Page size (default 100, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// `at` as unix ms: an RFC 3339 time, or a duration (`90s`, `15m`, `2h`, `7d`) before now.
fn time_param(name: &str, at: &str) -> Result<i64, AdminError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(at) {
        return Ok(t.timestamp_millis());
    }
    match humantime::parse_duration(at) {
        Ok(ago) => Ok(crate::storage::now_ms() - ago.as_millis() as i64),
        Err(_) => Err(AdminError::BadRequest(format!(
            "{name} `{at}` is neither an RFC 3339 time nor a duration like 15m, 2h or 7d"
        ))),
    }
}

impl SearchParams {
    /// The search these parameters ask for, or why they make no sense.
    pub fn to_search(&self) -> Result<Search, AdminError> {
        let kind = given(&self.kind)
            .map(|k| {
                EventKind::from_name(k).ok_or_else(|| {
                    let all: Vec<&str> = EventKind::ALL.iter().chain(&[EventKind::Timer]).map(|s| s.seed_name()).collect();
                    AdminError::BadRequest(format!("kind `{k}` is not one of {}", all.join(", ")))
                })
            })
            .transpose()?;
        let status = given(&self.status)
            .map(|s| {
                DeliveryStatus::parse(s).ok_or_else(|| {
                    let all: Vec<&str> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
                    AdminError::BadRequest(format!("status `{s}` is not one of {}", all.join(", ")))
                })
            })
            .transpose()?;
        let number = given(&self.number).map(str::to_string);
        if let Some(n) = &number
            && !n.chars().any(|c| c.is_ascii_digit())
        {
            return Err(AdminError::BadRequest(format!("number `{n}` has no digits")));
        }
        let before = given(&self.before)
            .map(|b| {
                b.parse::<i64>()
                    .map_err(|_| AdminError::BadRequest(format!("before `{b}` is not a delivery id")))
            })
            .transpose()?;
        Ok(Search {
            number,
            text: given(&self.text).map(str::to_string),
            kind,
            plugin: given(&self.plugin).map(str::to_string),
            status,
            since_ms: given(&self.since).map(|t| time_param("since", t)).transpose()?,
            until_ms: given(&self.until).map(|t| time_param("until", t)).transpose()?,
            before,
            limit: self.limit.unwrap_or(100).clamp(1, crate::storage::MAX_PAGE),
        })
    }
}

impl From<SearchError> for AdminError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::NoWords(_) => AdminError::BadRequest(e.to_string()),
            SearchError::Db(e) => AdminError::Unavailable(e),
        }
    }
}
