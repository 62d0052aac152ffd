// switchboard.js: thin helpers over the bindings componentize-js generates
// from wit/plugin.wit. The WIT stays the contract; this only makes it
// pleasant: KV as strings and JSON, errors with readable messages, and
// sms.reply(event, text). Import it beside your plugin.js:
//
//   import { sms, kv, config, log, PluginError } from './switchboard.js';
//
// Every host call that fails throws a HostError whose message names the call,
// the WIT error case and its text ("sms.send: opted-out: +15125550100"); its
// `tag` and `detail` hold the same for code that branches. A PluginError (or
// any Error) thrown from handleEvent fails the delivery with its message.
//
// Standard fetch() works too: it goes through the same allow-list, quota and
// journal as http.send, and a refused request rejects with a TypeError.
import * as witSms from 'switchboard:plugin/sms@0.1.0';
import * as witHttp from 'switchboard:plugin/http@0.1.0';
import * as witKv from 'switchboard:plugin/kv@0.1.0';
import * as witConfig from 'switchboard:plugin/config@0.1.0';
import * as witLog from 'switchboard:plugin/log@0.1.0';
import * as witTimers from 'switchboard:plugin/timers@0.2.0';

/** @typedef {import('switchboard:plugin/types@0.2.0').SmsEvent} SmsEvent */

/** A failed host call: `call` is its name, `tag` the WIT error case. */
export class HostError extends Error {
  /**
   * @param {string} call
   * @param {any} error what the generated binding threw
   */
  constructor(call, error) {
    const payload = error?.payload ?? error;
    const tag = payload && typeof payload === 'object' && 'tag' in payload ? payload.tag : undefined;
    const detail = tag === undefined ? payload : payload.val;
    const text = detail === undefined ? '' : typeof detail === 'object' ? JSON.stringify(detail) : String(detail);
    super(`${call}: ${tag ?? 'error'}${text ? `: ${text}` : ''}`);
    this.name = 'HostError';
    this.call = call;
    this.tag = tag;
    this.detail = detail;
  }
}

/** Thrown from handleEvent: the delivery fails with this message. */
export class PluginError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = 'PluginError';
  }
}

/**
 * @template T
 * @param {string} call
 * @param {() => T} f
 * @returns {T}
 */
function host(call, f) {
  try {
    return f();
  } catch (e) {
    throw new HostError(call, e);
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export const sms = {
  /**
   * Sends `body` from one of the tenant's numbers; JustCall's message id.
   * @param {string} from
   * @param {string} to
   * @param {string} body
   * @param {string[]} [mediaUrls]
   * @returns {string}
   */
  send(from, to, body, mediaUrls = []) {
    return host('sms.send', () => witSms.send({ from, to, body, mediaUrls }));
  },
  /**
   * Answers the sender of `event` from the number they wrote to.
   * @param {SmsEvent} event
   * @param {string} body
   * @returns {string}
   */
  reply(event, body) {
    return sms.send(event.justcallNumber, event.from, body);
  },
  /** @param {string} id */
  getMessage(id) {
    return host('sms.get-message', () => witSms.getMessage(id));
  },
  listMessages(page = 1, perPage = 20) {
    return host('sms.list-messages', () => witSms.listMessages(page, perPage));
  },
};

export const http = {
  /**
   * Switchboard's own request: {status, headers, body: Uint8Array}.
   * @param {string} method
   * @param {string} url
   * @param {{headers?: [string, string][], body?: string | Uint8Array}} [options]
   */
  send(method, url, { headers = [], body = new Uint8Array() } = {}) {
    const bytes = typeof body === 'string' ? encoder.encode(body) : body;
    return host('http.send', () => witHttp.send({ method, url, headers, body: bytes }));
  },
};

/**
 * Act later: a timer fires as an event of kind `timer` whose `timer` holds
 * its key and payload. Changes count only if this event's handling
 * succeeds, so a retried event never schedules twice.
 */
export const timers = {
  /**
   * Schedules `key` in `ms` milliseconds with a JSON payload, replacing a
   * pending timer with that key.
   * @param {string} key
   * @param {number} ms
   * @param {any} [payload]
   */
  after(key, ms, payload = null) {
    const val = BigInt(Math.max(0, Math.round(ms)));
    host('timers.schedule', () => witTimers.schedule(key, { tag: 'after-ms', val }, encoder.encode(JSON.stringify(payload))));
  },
  /**
   * Schedules `key` at an RFC 3339 instant with a JSON payload.
   * @param {string} key
   * @param {string} at
   * @param {any} [payload]
   */
  at(key, at, payload = null) {
    host('timers.schedule', () => witTimers.schedule(key, { tag: 'at', val: at }, encoder.encode(JSON.stringify(payload))));
  },
  /**
   * Cancels the pending timer with this key; whether there was one.
   * @param {string} key
   * @returns {boolean}
   */
  cancel(key) {
    return host('timers.cancel', () => witTimers.cancel(key));
  },
  /**
   * The JSON payload of a timer event (null for a schedule's).
   * @param {SmsEvent} event
   * @returns {any}
   */
  payload(event) {
    const data = event.timer?.payload;
    return data && data.length ? JSON.parse(decoder.decode(data)) : null;
  },
};

export const kv = {
  /**
   * The value as text, or undefined.
   * @param {string} key
   * @returns {string | undefined}
   */
  get(key) {
    const v = host('kv.get', () => witKv.get(key));
    return v === undefined ? undefined : decoder.decode(v);
  },
  /**
   * @param {string} key
   * @param {string} value
   */
  set(key, value) {
    host('kv.set', () => witKv.set(key, encoder.encode(String(value))));
  },
  /**
   * The value parsed as JSON, or undefined.
   * @param {string} key
   * @returns {any}
   */
  getJson(key) {
    const v = kv.get(key);
    return v === undefined ? undefined : JSON.parse(v);
  },
  /**
   * @param {string} key
   * @param {any} value
   */
  setJson(key, value) {
    kv.set(key, JSON.stringify(value));
  },
  /** @param {string} key */
  delete(key) {
    host('kv.delete', () => witKv.delete(key));
  },
  /**
   * Keys starting with `prefix`, in order.
   * @param {string} [prefix]
   * @returns {string[]}
   */
  keys(prefix = '') {
    return host('kv.list-keys', () => witKv.listKeys(prefix));
  },
};

export const config = {
  /**
   * @param {string} key
   * @returns {string | undefined}
   */
  get(key) {
    return witConfig.get(key);
  },
  /**
   * The value, or a PluginError naming the missing key.
   * @param {string} key
   * @returns {string}
   */
  require(key) {
    const v = witConfig.get(key);
    if (v === undefined) {
      throw new PluginError(`config has no \`${key}\``);
    }
    return v;
  },
  /** @returns {Record<string, string>} */
  all() {
    return Object.fromEntries(witConfig.getAll());
  },
};

/** @typedef {(message: unknown) => void} LogFn */

export const log = {
  /** @type {LogFn} */
  debug: (message) => witLog.log('debug', String(message)),
  /** @type {LogFn} */
  info: (message) => witLog.log('info', String(message)),
  /** @type {LogFn} */
  warn: (message) => witLog.log('warn', String(message)),
  /** @type {LogFn} */
  error: (message) => witLog.log('error', String(message)),
};
