// appointment-confirm-js: the appointment-confirm pattern in JavaScript,
// built with componentize-js from the same wit/ folder as every other plugin.
//
// When a customer replies CONFIRM (any case, trimmed), it POSTs
// {phone, confirmed_at, message_id} to the booking system at `booking_url`
// (if configured) with the standard fetch(), and texts back "Your appointment
// is confirmed." from the number they wrote to. Other replies get no answer.
// A booking system that fails, or that allowed_hosts does not list, fails the
// delivery, so the host retries it; its journal makes sure the retry neither
// books nor texts twice.
import { sms, config, log, PluginError } from '../../plugin-sdk/js/switchboard.js';

const DEFAULT_REPLY = 'Your appointment is confirmed.';

export async function handleEvent(event) {
  if (event.kind !== 'received' || event.body.trim().toUpperCase() !== 'CONFIRM') {
    return;
  }
  const url = config.get('booking_url');
  if (url) {
    const payload = { phone: event.from, confirmed_at: event.occurredAt, message_id: event.messageId };
    let resp;
    try {
      resp = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(payload),
      });
    } catch (e) {
      throw new PluginError(`cannot reach the booking system: ${e}`);
    }
    if (!resp.ok) {
      throw new PluginError(`booking system answered ${resp.status}`);
    }
  }
  // A failed send throws a HostError: "sms.send: opted-out: +1...".
  const id = sms.reply(event, config.get('reply') ?? DEFAULT_REPLY);
  log.info(`confirmed appointment for ${event.from}; reply ${id}`);
}
