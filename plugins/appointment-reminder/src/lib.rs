//! appointment-reminder: when the business texts a customer a booking with a
//! date and time (`2026-12-10 10:00`, `2026-12-10 at 4:30pm`), schedule a
//! reminder `remind_before` it (default 24 h), sent from the line the
//! booking came from. A CONFIRM or STOP from the customer cancels it. With
//! `escalate_after` and `team_url` set, a customer who has not answered in
//! that long is POSTed to the team as `{contact, line, booking, waited}`.
//!
//! Timers are keyed by contact (`reminder:+1…`, `escalate:+1…`), so a new
//! booking replaces the old one's timers. A reminder's text is kept in KV
//! (before it is sent) until its own `sent` event comes back, which is then
//! not taken for a booking.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone as _};
use switchboard_plugin_sdk::{EventKind, Plugin, PluginError, SmsEvent, config, export_plugin, http, kv, log, sms, timers};

const DEFAULT_TEXT: &str = "Reminder: your appointment is on {when}. Reply CONFIRM to confirm.";

struct AppointmentReminder;

impl Plugin for AppointmentReminder {
    fn handle_event(event: SmsEvent) -> Result<(), PluginError> {
        match event.kind {
            EventKind::Sent => booked(&event),
            EventKind::Received => replied(&event),
            EventKind::OptOut => cancel_all(&event.from),
            EventKind::Timer => fired(&event),
            _ => Ok(()),
        }
    }
}

/// The business texted a customer: schedule what a booking needs. Our own
/// reminders come back as `sent` events too; they are not bookings.
fn booked(event: &SmsEvent) -> Result<(), PluginError> {
    let ours = format!("reminding/{}", event.to);
    if kv::get_string(&ours)?.is_some_and(|text| text == event.body) {
        kv::delete(&ours)?;
        return Ok(());
    }
    let offset: FixedOffset = config::get("utc_offset")
        .unwrap_or_else(|| "+00:00".into())
        .parse()
        .map_err(|_| PluginError::new("config utc_offset must look like +00:00 or -06:00"))?;
    let Some(local) = find_date_time(&event.body) else {
        return Ok(()); // Not a booking.
    };
    let Some(at) = offset.from_local_datetime(&local).single() else {
        return Ok(());
    };
    let before = duration("remind_before", "24h")?;
    let before = chrono::Duration::from_std(before).map_err(|e| PluginError::new(e.to_string()))?;
    let remind_at = at - before;
    let payload = serde_json::json!({
        "line": event.from,
        "contact": event.to,
        "when": local.format("%Y-%m-%d %H:%M").to_string(),
        "booking": event.body,
    });
    let contact = &event.to;
    timers::at(&format!("reminder:{contact}"), &rfc3339(remind_at), payload.to_string())?;
    log::info(&format!("booking for {contact} on {local}: reminder due {}", rfc3339(remind_at)));
    if config::get("team_url").is_some()
        && let Some(after) = config::get("escalate_after")
    {
        let after = humantime::parse_duration(&after).map_err(|e| PluginError::new(format!("config escalate_after: {e}")))?;
        timers::after(&format!("escalate:{contact}"), after, payload.to_string())?;
    }
    Ok(())
}

/// The customer answered: they are not quiet; CONFIRM or STOP ends the reminder.
fn replied(event: &SmsEvent) -> Result<(), PluginError> {
    let contact = &event.from;
    timers::cancel(&format!("escalate:{contact}"))?;
    let word = event.body.trim().to_ascii_uppercase();
    if (word == "CONFIRM" || word == "STOP") && timers::cancel(&format!("reminder:{contact}"))? {
        log::info(&format!("{contact} answered {word}: reminder cancelled"));
    }
    Ok(())
}

fn cancel_all(contact: &str) -> Result<(), PluginError> {
    timers::cancel(&format!("reminder:{contact}"))?;
    timers::cancel(&format!("escalate:{contact}"))?;
    Ok(())
}

/// A timer of ours is due.
fn fired(event: &SmsEvent) -> Result<(), PluginError> {
    let t = event.timer.as_ref().ok_or("a timer event without its timer")?;
    let booking: serde_json::Value =
        serde_json::from_slice(&t.payload).map_err(|e| PluginError::new(format!("timer {} payload: {e}", t.key)))?;
    let field = |k: &str| booking[k].as_str().unwrap_or_default().to_string();
    if t.key.starts_with("reminder:") {
        let text = config::get("reminder_text")
            .unwrap_or_else(|| DEFAULT_TEXT.into())
            .replace("{when}", &field("when"));
        // Noted before sending, so its `sent` event finds it however soon it comes.
        kv::set(&format!("reminding/{}", field("contact")), &text)?;
        match sms::send(&field("line"), &field("contact"), &text) {
            Ok(id) => log::info(&format!("reminded {}: {id}", field("contact"))),
            // Opted out since: nothing to remind, nothing to retry.
            Err(sms::SmsError::OptedOut(n)) => log::info(&format!("{n} opted out; no reminder")),
            Err(e) => return Err(e.into()),
        }
    } else if t.key.starts_with("escalate:") {
        let url = config::require("team_url")?;
        let report = serde_json::json!({
            "contact": field("contact"),
            "line": field("line"),
            "booking": field("booking"),
            "waited": config::get("escalate_after"),
        });
        let resp = http::post(&url, "application/json", report.to_string())?;
        if !resp.is_success() {
            return Err(PluginError::new(format!("team_url answered {}", resp.status)));
        }
        log::info(&format!("{} has not answered; team told", field("contact")));
    }
    Ok(())
}

fn duration(key: &str, default: &str) -> Result<std::time::Duration, PluginError> {
    let text = config::get(key).unwrap_or_else(|| default.into());
    humantime::parse_duration(&text).map_err(|e| PluginError::new(format!("config {key}: {e}")))
}

fn rfc3339(t: DateTime<FixedOffset>) -> String {
    t.to_rfc3339()
}

/// The first `YYYY-MM-DD` followed (after an optional `at`) by a time:
/// `10:00`, `16:30`, `4:30pm` or `4:30 pm`.
fn find_date_time(text: &str) -> Option<NaiveDateTime> {
    let words: Vec<&str> = text
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| matches!(c, ',' | '.' | ';' | '!' | '?' | '(' | ')')))
        .collect();
    words.iter().enumerate().find_map(|(i, w)| {
        let date = NaiveDate::parse_from_str(w, "%Y-%m-%d").ok()?;
        let rest = &words[i + 1..];
        let rest = if rest.first().is_some_and(|w| w.eq_ignore_ascii_case("at")) {
            &rest[1..]
        } else {
            rest
        };
        let time = parse_time(rest.first()?, rest.get(1).copied())?;
        Some(date.and_time(time))
    })
}

fn parse_time(word: &str, next: Option<&str>) -> Option<NaiveTime> {
    let lower = word.to_ascii_lowercase();
    let with_meridiem = match next.map(str::to_ascii_lowercase) {
        Some(m) if m == "am" || m == "pm" => format!("{lower}{m}"),
        _ => lower,
    };
    NaiveTime::parse_from_str(&with_meridiem, "%H:%M")
        .or_else(|_| NaiveTime::parse_from_str(&with_meridiem, "%I:%M%P"))
        .ok()
}

export_plugin!(AppointmentReminder);
