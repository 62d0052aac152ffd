//! crm-logger: POSTs each received and sent SMS as JSON to the CRM at
//! `crm_url`. A failed POST fails the delivery, so the host records it.

use switchboard_plugin_sdk::{Direction, EventKind, Plugin, PluginError, SmsEvent, config, export_plugin, http};

struct CrmLogger;

impl Plugin for CrmLogger {
    fn handle_event(event: SmsEvent) -> Result<(), PluginError> {
        if !matches!(event.kind, EventKind::Received | EventKind::Sent) {
            return Ok(());
        }
        let url = config::require("crm_url")?;
        let activity = serde_json::json!({
            "type": "sms",
            "event": event.kind.as_str(),
            "event_id": event.event_id,
            "tenant": event.tenant,
            "message_id": event.message_id,
            "direction": match event.direction { Direction::Inbound => "inbound", Direction::Outbound => "outbound" },
            "from": event.from,
            "to": event.to,
            "body": event.body,
            "media_urls": event.media_urls,
            "contact_name": event.contact_name,
            "agent_id": event.agent_id,
            "occurred_at": event.occurred_at,
        });
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(token) = config::get("crm_token") {
            headers.push(("authorization".to_string(), format!("Bearer {token}")));
        }
        let response = http::send(&http::Request {
            method: "POST".to_string(),
            url,
            headers,
            body: activity.to_string().into_bytes(),
        })?;
        if !response.is_success() {
            return Err(PluginError::new(format!("CRM answered {}: {}", response.status, response.text())));
        }
        Ok(())
    }
}

export_plugin!(CrmLogger);
