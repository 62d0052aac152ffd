"""lead-router: routes a new lead by what the customer wrote.

On `received`, the body is matched (case-insensitively) against each team's
keyword pattern from config, in the order of `teams`. The first match wins;
without one, `default_team` (if set) takes the lead. The plugin then

1. POSTs the lead as JSON to that team's CRM endpoint (`<team>_url`): the
   "assign" step, since the JustCall API has no assignment endpoint;
2. texts the customer "Thanks, our <team> team will reply shortly" from the
   number they wrote to;
3. records the assignment in KV, so the same contact is not routed again
   within `reroute_window_secs` (default one day).

A failed POST or SMS raises, so the host retries the delivery; the host's
journal makes sure a retry neither posts nor texts twice.
"""

import json
import re
from datetime import datetime

import wit_world
from componentize_py_types import Err
from wit_world.imports import config, http, kv, log, sms, types


def fail(message: str) -> Err:
    return Err(types.PluginError(message=message))


def describe(e: Err) -> str:
    """`NotAllowed: host not in allowed_hosts` for a WIT error variant."""
    variant = e.value
    name = type(variant).__name__.split("_", 1)[-1]
    detail = getattr(variant, "value", None)
    return name if detail is None else f"{name}: {detail}"


def event_time(event: types.SmsEvent) -> float:
    return datetime.fromisoformat(event.occurred_at.replace("Z", "+00:00")).timestamp()


def pick_team(body: str) -> str | None:
    teams = [t.strip() for t in (config.get("teams") or "").split(",") if t.strip()]
    for team in teams:
        pattern = config.get(f"{team}_keywords")
        if pattern and re.search(pattern, body, re.IGNORECASE):
            return team
    return config.get("default_team")


class WitWorld(wit_world.WitWorld):
    def handle_event(self, event: types.SmsEvent) -> None:
        if event.kind != types.EventKind.RECEIVED:
            return
        contact = event.from_
        key = f"lead/{contact}"
        now = event_time(event)
        window = float(config.get("reroute_window_secs") or 86400)
        previous = kv.get(key)
        if previous is not None:
            routed = json.loads(previous)
            if now - routed["at"] < window:
                log.log(log.Level.INFO, f"{contact} was routed to {routed['team']} recently; not routing again")
                return

        team = pick_team(event.body)
        if team is None:
            log.log(log.Level.INFO, f"no rule matches a message from {contact}; not routed")
            return
        url = config.get(f"{team}_url")
        if not url:
            raise fail(f"config has no `{team}_url` for team `{team}`")

        lead = {
            "team": team,
            "contact": contact,
            "contact_name": event.contact_name,
            "message": event.body,
            "message_id": event.message_id,
            "tenant": event.tenant,
            "received_at": event.occurred_at,
        }
        try:
            resp = http.send(
                http.Request(
                    method="POST",
                    url=url,
                    headers=[("content-type", "application/json")],
                    body=json.dumps(lead).encode(),
                )
            )
        except Err as e:
            raise fail(f"cannot reach the {team} CRM: {describe(e)}")
        if not 200 <= resp.status < 300:
            raise fail(f"the {team} CRM answered {resp.status}")

        try:
            sms.send(
                sms.OutgoingSms(
                    from_=event.justcall_number,
                    to=contact,
                    body=f"Thanks, our {team} team will reply shortly",
                    media_urls=[],
                )
            )
        except Err as e:
            raise fail(f"cannot text {contact}: {describe(e)}")

        kv.set(key, json.dumps({"team": team, "at": now}).encode())
        log.log(log.Level.INFO, f"routed {contact} to {team}")
