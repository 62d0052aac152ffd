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

The POST uses the standard library's urllib.request, which the switchboard
helper module (plugin-sdk/python) sends through the host's http interface.
A failed POST or SMS raises, so the host retries the delivery; the host's
journal makes sure a retry neither posts nor texts twice.
"""

import json
import re
import urllib.error
import urllib.request
from datetime import datetime

import wit_world
from switchboard import config, fail, kv, log, sms
from wit_world.imports import types


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
        routed = kv.get_json(key)
        if routed is not None:
            if now - routed["at"] < window:
                log.info(f"{contact} was routed to {routed['team']} recently; not routing again")
                return

        team = pick_team(event.body)
        if team is None:
            log.info(f"no rule matches a message from {contact}; not routed")
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
        request = urllib.request.Request(
            url, data=json.dumps(lead).encode(), headers={"content-type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request):
                pass
        except urllib.error.HTTPError as e:
            raise fail(f"the {team} CRM answered {e.code}")
        except urllib.error.URLError as e:
            raise fail(f"cannot reach the {team} CRM: {e.reason}")

        # A failed send raises: "sms.send: opted-out: +1...".
        sms.reply(event, f"Thanks, our {team} team will reply shortly")
        kv.set_json(key, {"team": team, "at": now})
        log.info(f"routed {contact} to {team}")
