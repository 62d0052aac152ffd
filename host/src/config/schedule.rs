//! Manifest `[[schedule]]`s: a name, a cron pattern and an IANA time zone,
//! validated with their line, and the next time each is due (in that zone's
//! local time, across DST changes, by `croner` and `chrono-tz`).

use std::path::Path;
use std::str::FromStr as _;

use chrono::{DateTime, Timelike as _, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;

/// Longest schedule name (it is the `timer` event's key).
pub const MAX_SCHEDULE_NAME: usize = 128;

/// One `[[schedule]]`.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Its name: the key of the `timer` events it fires.
    pub name: String,
    /// The pattern as written (`0 9 * * MON-FRI`).
    pub pattern: String,
    /// The zone its pattern is read in.
    pub timezone: Tz,
    cron: croner::Cron,
}

/// Two schedules are the same if their name, pattern and zone are.
impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, &self.pattern, self.timezone) == (&other.name, &other.pattern, other.timezone)
    }
}

impl Schedule {
    /// Parses one, for a manifest's error messages.
    pub fn new(name: &str, pattern: &str, timezone: &str) -> Result<Schedule, String> {
        let cron = croner::Cron::from_str(pattern).map_err(|e| format!("`{pattern}` is not a cron pattern: {e}"))?;
        let timezone = Tz::from_str(timezone).map_err(|_| format!("`{timezone}` is not an IANA time zone (like America/Chicago)"))?;
        Ok(Schedule {
            name: name.to_string(),
            pattern: pattern.to_string(),
            timezone,
            cron,
        })
    }

    /// The first time the schedule is due strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Patterns name whole seconds: match from `after`'s second.
        let after = after.with_nanosecond(0).unwrap_or(after);
        let local = after.with_timezone(&self.timezone);
        self.cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
    }

    /// What the stored schedule row remembers, to notice a changed pattern.
    pub fn spec(&self) -> String {
        format!("{} {}", self.pattern, self.timezone.name())
    }
}

/// `[[schedule]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    name: Spanned<String>,
    cron: Spanned<String>,
    #[serde(default)]
    timezone: Option<Spanned<String>>,
}

/// Validates the `[[schedule]]`s: names unique, non-empty and short, patterns
/// and zones real.
pub(super) fn validate(path: &Path, src: &str, raw: &[RawSchedule]) -> Result<Vec<Schedule>, ConfigError> {
    let mut out: Vec<Schedule> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let at = |span, field: &str, message: String| ConfigError::new(path, src, Some(span), format!("schedule[{i}].{field}"), message);
        let name = r.name.get_ref();
        if name.is_empty() || name.len() > MAX_SCHEDULE_NAME {
            return Err(at(r.name.span(), "name", format!("must be 1..={MAX_SCHEDULE_NAME} bytes")));
        }
        if out.iter().any(|s| &s.name == name) {
            return Err(at(r.name.span(), "name", format!("`{name}` names two schedules")));
        }
        let zone = r.timezone.as_ref().map_or("UTC", |z| z.get_ref());
        let s = Schedule::new(name, r.cron.get_ref(), zone).map_err(|e| match &r.timezone {
            Some(z) if e.contains("time zone") => at(z.span(), "timezone", e),
            _ => at(r.cron.span(), "cron", e),
        })?;
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn nine_in_chicago_is_fifteen_utc_in_winter_and_fourteen_in_summer() {
        let s = Schedule::new("daily", "0 9 * * *", "America/Chicago").unwrap();
        // DST starts in Chicago on 2026-03-08 at 02:00 local.
        let first = s.next_after(at("2026-03-07T12:00:00Z")).unwrap();
        assert_eq!(first, at("2026-03-07T15:00:00Z"));
        let second = s.next_after(first).unwrap();
        assert_eq!(second, at("2026-03-08T14:00:00Z"));
    }

    #[test]
    fn bad_patterns_and_zones_are_named() {
        assert!(Schedule::new("x", "0 9 * *", "UTC").unwrap_err().contains("not a cron pattern"));
        assert!(Schedule::new("x", "0 9 * * *", "Mars/Olympus").unwrap_err().contains("IANA"));
    }
}
