"""Verified pairing with two real daemons (docs/protocol.md §9): `acp verify` on both machines
shows the same code, `--confirm` makes the key `verified` in `acp peers` and in inbox items, across
a restart; `trust = "verified"` refuses envelopes from a key that is only pinned (tofu).

"alpha" < "beta": alpha dials at once (docs/protocol.md §4). alpha has beta in its [[peers]]
(explicit); beta learns alpha's key from the handshake (tofu).
"""

from __future__ import annotations

import json
import re
import signal
from typing import Any

from integration_harness import Daemon, Fleet, wait_for

from acp.client import notify_envelope


def verify(d: Daemon, agent: str, *more: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(d.run_cli("verify", agent, *more, "--json", check=0).stdout)
    return out


def peer_trust(d: Daemon, agent: str) -> str | None:
    rows = json.loads(d.run_cli("peers", "--json", check=0).stdout)
    return next((row["trust"] for row in rows if row["id"] == agent), None)


def pair(fleet: Fleet, *, beta_trust: str = "tofu") -> tuple[Daemon, Daemon]:
    alpha, beta = fleet.daemon("alpha"), fleet.daemon("beta", trust=beta_trust)
    alpha.knows(beta)
    beta.start()
    alpha.start()
    alpha.wait_connected(beta)
    beta.wait_connected(alpha)
    return alpha, beta


def test_both_daemons_show_the_same_code_and_confirm_records_verified(fleet: Fleet) -> None:
    alpha, beta = pair(fleet)
    assert peer_trust(alpha, "beta") == "explicit" and peer_trust(beta, "alpha") == "tofu"

    at_alpha, at_beta = verify(alpha, "beta"), verify(beta, "alpha")
    assert re.fullmatch(r"[0-9]{6}", at_alpha["code"]), at_alpha
    assert at_alpha["code"] == at_beta["code"]
    assert at_alpha["fingerprint"] == beta.status()["fingerprint"]
    assert at_beta["fingerprint"] == alpha.status()["fingerprint"]
    assert (at_alpha["trust"], at_beta["trust"]) == ("explicit", "tofu")

    # the text form: the code in two groups, and what to do next
    text = beta.run_cli("verify", "alpha", check=0).stdout
    code = at_beta["code"]
    assert f"{code[:3]} {code[3:]}" in text
    assert "acp verify beta" in text  # what to run on alpha
    assert "acp verify alpha --confirm" in text

    confirmed = verify(beta, "alpha", "--confirm")
    assert (confirmed["trust"], confirmed["code"]) == ("verified", code)
    assert peer_trust(beta, "alpha") == "verified"
    assert "alpha is verified" in beta.run_cli("verify", "alpha", "--confirm", check=0).stdout
    assert verify(alpha, "beta", "--confirm")["trust"] == "verified"  # explicit -> verified
    assert peer_trust(alpha, "beta") == "verified"

    with alpha.client() as c:
        c.request("send", to="beta", envelope=notify_envelope("t", 1), wait="acked")
    (item,) = beta.inbox()["messages"]
    assert item["trust"] == "verified" and item["envelope"]["from"] == "alpha"
    inbox_json = json.loads(beta.run_cli("inbox", "--json", check=0).stdout)
    assert [m["trust"] for m in inbox_json["messages"]] == ["verified"]

    # a restart keeps it (acp.db); the new session has a new code, again the same on both sides
    beta.restart(signal.SIGTERM)
    assert peer_trust(beta, "alpha") == "verified"
    beta.wait_connected(alpha)
    alpha.wait_connected(beta)
    again = verify(beta, "alpha")
    assert again["trust"] == "verified"
    assert again["code"] == verify(alpha, "beta")["code"]


def test_verify_without_a_session_says_so(fleet: Fleet) -> None:
    alpha, beta = pair(fleet)
    alpha.stop()
    wait_for(lambda: not beta.is_connected("alpha"), timeout=15, what="beta to lose alpha")
    out = beta.run_cli("verify", "alpha", check=75)
    assert "alpha is not connected" in out.stderr and "acp peers" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    out = beta.run_cli("verify", "nobody", check=68)
    assert "nobody" in out.stderr
    assert peer_trust(beta, "alpha") == "tofu"


def test_trust_verified_refuses_a_tofu_key_until_it_is_verified(fleet: Fleet) -> None:
    alpha, beta = pair(fleet, beta_trust="verified")
    assert peer_trust(beta, "alpha") == "tofu"  # a session, and a pin, but no delivery
    refused = alpha.run_cli("send", "beta", "let me in", "--acked", "--timeout", "20", check=75)
    assert "not_trusted" in refused.stderr, refused.stderr
    assert beta.inbox()["messages"] == []
    assert beta.counters().get("envelopes_refused.not_trusted") == 1
    assert alpha.counters().get("undelivered.not_trusted") == 1
    assert beta.is_connected("alpha")

    assert verify(beta, "alpha")["code"] == verify(alpha, "beta")["code"]
    verify(beta, "alpha", "--confirm")
    alpha.run_cli("send", "beta", "verified now", "--acked", "--timeout", "20", check=0)
    (item,) = beta.inbox()["messages"]
    assert item["trust"] == "verified"
    assert item["envelope"]["payload"]["question"] == "verified now"
