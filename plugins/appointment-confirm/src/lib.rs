//! appointment-confirm: when a customer replies CONFIRM, text back a
//! confirmation from the number they wrote to and, if `booking_url` is
//! configured, POST `{phone, confirmed_at, message_id}` to the booking system.

use switchboard_plugin_sdk::{EventKind, Plugin, PluginError, SmsEvent, config, export_plugin, http, log, sms};

const DEFAULT_REPLY: &str = "Your appointment is confirmed.";

struct AppointmentConfirm;

impl Plugin for AppointmentConfirm {
    fn handle_event(event: SmsEvent) -> Result<(), PluginError> {
        if event.kind != EventKind::Received || !event.body.trim().eq_ignore_ascii_case("CONFIRM") {
            return Ok(());
        }
        if let Some(url) = config::get("booking_url") {
            let payload = serde_json::json!({
                "phone": event.from,
                "confirmed_at": event.occurred_at,
                "message_id": event.message_id,
            });
            let response = http::post(&url, "application/json", payload.to_string())?;
            if !response.is_success() {
                return Err(PluginError::new(format!("booking system answered {}", response.status)));
            }
        }
        let reply = config::get("reply").unwrap_or_else(|| DEFAULT_REPLY.to_string());
        let id = sms::send(&event.justcall_number, &event.from, &reply)?;
        log::info(&format!("confirmed appointment for {}; reply {id}", event.from));
        Ok(())
    }
}

export_plugin!(AppointmentConfirm);
