// appointment-confirm-js: the appointment-confirm pattern in JavaScript,
// built with componentize-js from the same wit/ folder as every other plugin.
//
// When a customer replies CONFIRM (any case, trimmed), it POSTs
// {phone, confirmed_at, message_id} to the booking system at `booking_url`
// (if configured) and texts back "Your appointment is confirmed." from the
// number they wrote to. Other replies get no answer. A booking system that
// fails fails the delivery, so the host retries it; its journal makes sure
// the retry neither books nor texts twice.
import { send as sendSms } from 'switchboard:plugin/sms@0.1.0';
import { send as sendHttp } from 'switchboard:plugin/http@0.1.0';
import { get } from 'switchboard:plugin/config@0.1.0';
import { log } from 'switchboard:plugin/log@0.1.0';

const DEFAULT_REPLY = 'Your appointment is confirmed.';

// A WIT error variant ({tag, val}) as text.
function describe(e) {
  const p = e?.payload ?? e;
  if (p && typeof p === 'object' && 'tag' in p) {
    return p.val === undefined ? p.tag : `${p.tag}: ${typeof p.val === 'object' ? JSON.stringify(p.val) : p.val}`;
  }
  return String(e);
}

function fail(message) {
  // Thrown from handleEvent, this becomes its `plugin-error`.
  throw { message };
}

export function handleEvent(event) {
  if (event.kind !== 'received' || event.body.trim().toUpperCase() !== 'CONFIRM') {
    return;
  }
  const url = get('booking_url');
  if (url) {
    const payload = { phone: event.from, confirmed_at: event.occurredAt, message_id: event.messageId };
    let resp;
    try {
      resp = sendHttp({
        method: 'POST',
        url,
        headers: [['content-type', 'application/json']],
        body: new TextEncoder().encode(JSON.stringify(payload)),
      });
    } catch (e) {
      fail(`cannot reach the booking system: ${describe(e)}`);
    }
    if (resp.status < 200 || resp.status >= 300) {
      fail(`booking system answered ${resp.status}`);
    }
  }
  const reply = get('reply') ?? DEFAULT_REPLY;
  let id;
  try {
    id = sendSms({ from: event.justcallNumber, to: event.from, body: reply, mediaUrls: [] });
  } catch (e) {
    fail(`cannot text ${event.from}: ${describe(e)}`);
  }
  log('info', `confirmed appointment for ${event.from}; reply ${id}`);
}
