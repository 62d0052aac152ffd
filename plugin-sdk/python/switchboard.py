"""switchboard: thin helpers over the bindings componentize-py generates from
wit/plugin.wit. The WIT stays the contract; this only makes it pleasant: KV
as strings and JSON, errors with readable messages, sms.reply(event, text),
and the standard library's urllib.request sending through the host.

    from switchboard import Err, sms, kv, config, log, fail

Every host call that fails raises an Err (componentize_py_types.Err, also
`switchboard.Err`) holding a PluginError whose message names the call, the
WIT error case and its text ("sms.send: opted-out: +15125550100"); its
`call`, `tag` and `detail` attributes hold the same for code that branches.
Uncaught, it fails the delivery with that message, as `raise fail("...")`
does.

Importing this module installs a urllib opener, so `urllib.request.urlopen`
goes through Switchboard's http interface: the same allow-list, quota and
journal as every other request. A refused request raises urllib.error.URLError;
a non-2xx answer raises urllib.error.HTTPError, as usual.
"""

from __future__ import annotations

import email.message
import http.client
import io
import json
import re
import urllib.error
import urllib.request
import urllib.response
from typing import Any, Callable, TypeVar

__all__ = ["Err", "config", "fail", "host_error", "kv", "log", "sms"]

from componentize_py_types import Err
from wit_world.imports import config as _config
from wit_world.imports import http as _http
from wit_world.imports import kv as _kv
from wit_world.imports import log as _log
from wit_world.imports import sms as _sms
from wit_world.imports import timers as _timers
from wit_world.imports import types as _types

T = TypeVar("T")


def fail(message: str) -> Err:
    """`raise fail("...")` ends the event with that failure reason."""
    return Err(_types.PluginError(message=message))


def _case(variant: Any) -> tuple[str, Any]:
    """`("opted-out", "+1...")` for a WIT variant value such as SmsError_OptedOut."""
    name = type(variant).__name__.split("_", 1)[-1]
    tag = re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()
    return tag, getattr(variant, "value", None)


def host_error(call: str, error: Err) -> Err:
    """A failed host call as a plugin error: its message names the call, the
    WIT error case and its text; `call`, `tag` and `detail` hold the same."""
    tag, detail = _case(error.value)
    failure = fail(f"{call}: {tag}" + ("" if detail is None else f": {detail}"))
    # Err is a frozen dataclass; componentize-py turns only an Err into the
    # plugin's error result, so the details ride on it.
    for name, value in (("call", call), ("tag", tag), ("detail", detail)):
        object.__setattr__(failure, name, value)
    return failure


def _host(call: str, f: Callable[[], T]) -> T:
    try:
        return f()
    except Err as e:
        raise host_error(call, e) from None


class sms:
    @staticmethod
    def send(from_: str, to: str, body: str, media_urls: list[str] | None = None) -> str:
        """Sends `body` from one of the tenant's numbers; JustCall's message id."""
        message = _sms.OutgoingSms(from_=from_, to=to, body=body, media_urls=media_urls or [])
        return _host("sms.send", lambda: _sms.send(message))

    @staticmethod
    def reply(event: _types.SmsEvent, body: str) -> str:
        """Answers the sender of `event` from the number they wrote to."""
        return sms.send(event.justcall_number, event.from_, body)


class kv:
    @staticmethod
    def get(key: str) -> str | None:
        value = _host("kv.get", lambda: _kv.get(key))
        return None if value is None else bytes(value).decode()

    @staticmethod
    def set(key: str, value: str) -> None:
        _host("kv.set", lambda: _kv.set(key, str(value).encode()))

    @staticmethod
    def get_json(key: str) -> Any:
        value = kv.get(key)
        return None if value is None else json.loads(value)

    @staticmethod
    def set_json(key: str, value: Any) -> None:
        kv.set(key, json.dumps(value))

    @staticmethod
    def delete(key: str) -> None:
        _host("kv.delete", lambda: _kv.delete(key))

    @staticmethod
    def keys(prefix: str = "") -> list[str]:
        return _host("kv.list-keys", lambda: _kv.list_keys(prefix))


class timers:
    """Act later: a timer fires as an event of kind TIMER whose `timer`
    holds its key and payload. Changes count only if this event's handling
    succeeds, so a retried event never schedules twice."""

    @staticmethod
    def after(key: str, ms: int, payload: Any = None) -> None:
        """Schedules `key` in `ms` milliseconds with a JSON payload, replacing
        a pending timer with that key."""
        data = json.dumps(payload).encode()
        _host("timers.schedule", lambda: _timers.schedule(key, _timers.Due_AfterMs(ms), data))

    @staticmethod
    def at(key: str, when: str, payload: Any = None) -> None:
        """Schedules `key` at an RFC 3339 instant with a JSON payload."""
        data = json.dumps(payload).encode()
        _host("timers.schedule", lambda: _timers.schedule(key, _timers.Due_At(when), data))

    @staticmethod
    def cancel(key: str) -> bool:
        """Cancels the pending timer with this key; whether there was one."""
        return _host("timers.cancel", lambda: _timers.cancel(key))

    @staticmethod
    def payload(event: _types.SmsEvent) -> Any:
        """The JSON payload of a timer event (None for a schedule's)."""
        data = bytes(event.timer.payload) if event.timer else b""
        return json.loads(data) if data else None


class config:
    @staticmethod
    def get(key: str, default: str | None = None) -> str | None:
        value = _config.get(key)
        return default if value is None else value

    @staticmethod
    def require(key: str) -> str:
        value = _config.get(key)
        if value is None:
            raise fail(f"config has no `{key}`")
        return value

    @staticmethod
    def all() -> dict[str, str]:
        return dict(_config.get_all())


class log:
    @staticmethod
    def debug(message: str) -> None:
        _log.log(_log.Level.DEBUG, str(message))

    @staticmethod
    def info(message: str) -> None:
        _log.log(_log.Level.INFO, str(message))

    @staticmethod
    def warn(message: str) -> None:
        _log.log(_log.Level.WARN, str(message))

    @staticmethod
    def error(message: str) -> None:
        _log.log(_log.Level.ERROR, str(message))


_HOST_SET_HEADERS = frozenset(
    ["host", "content-length", "transfer-encoding", "connection", "keep-alive",
     "proxy-connection", "te", "trailer", "upgrade", "proxy-authorization"]
)


class SwitchboardHandler(urllib.request.BaseHandler):
    """urllib's http and https, sent through the host's http interface."""

    handler_order = 100  # before urllib's own HTTP handlers

    def _open(self, req: urllib.request.Request) -> urllib.response.addinfourl:
        # urllib adds Host, Content-Length and Connection itself; the host
        # sets framing and connection headers, and refuses them from plugins.
        headers = [(k, v) for k, v in req.header_items() if k.lower() not in _HOST_SET_HEADERS]
        data = req.data if isinstance(req.data, (bytes, bytearray)) else b""
        request = _http.Request(method=req.get_method(), url=req.full_url, headers=headers, body=bytes(data))
        try:
            resp = _http.send(request)
        except Err as e:
            tag, detail = _case(e.value)
            raise urllib.error.URLError(f"http.send: {tag}" + ("" if detail is None else f": {detail}")) from None
        message = email.message.Message()
        for k, v in resp.headers:
            message[k] = v
        answer = urllib.response.addinfourl(io.BytesIO(bytes(resp.body)), message, req.full_url, resp.status)
        answer.msg = http.client.responses.get(resp.status, "")  # read by urllib's error handling
        return answer

    def http_open(self, req: urllib.request.Request) -> urllib.response.addinfourl:
        return self._open(req)

    def https_open(self, req: urllib.request.Request) -> urllib.response.addinfourl:
        return self._open(req)


urllib.request.install_opener(urllib.request.build_opener(SwitchboardHandler))
