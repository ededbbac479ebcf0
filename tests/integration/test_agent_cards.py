"""Agent cards between real daemons: shown on the other side soon after the session comes up,
updated live by `acp card --reload`, and filterable with `acp peers --skill`."""

from __future__ import annotations

import json

from integration_harness import Fleet, wait_for


def test_a_card_reaches_the_peer_and_is_updated_live(fleet: Fleet) -> None:
    alpha, beta = fleet.daemon("alpha"), fleet.daemon("beta")
    alpha.settings["agent"] = {"description": "CI runner", "skills": ["build", "test"]}
    fleet.mesh(alpha, beta)
    row = wait_for(
        lambda: (beta.peer("alpha") or {}).get("card"), timeout=5, what="alpha's card at beta"
    )
    assert row == {"description": "CI runner", "skills": ["build", "test"]}
    out = alpha.run_cli("card", "--json", check=0)
    assert json.loads(out.stdout)["card"]["skills"] == ["build", "test"]

    alpha.settings["agent"] = {"skills": ["deploy"], "card": {"region": "lab"}}
    alpha.write_config()
    out = alpha.run_cli("card", "--reload", check=0)
    assert "sent to 1 connected peer" in out.stdout
    wait_for(
        lambda: (
            (beta.peer("alpha") or {}).get("card")
            == {"skills": ["deploy"], "card": {"region": "lab"}}
        ),
        timeout=5,
        what="the new card at beta",
    )


def test_a_bad_card_in_config_is_a_config_error(fleet: Fleet) -> None:
    alpha = fleet.daemon("alpha")
    alpha.settings["agent"] = {"skills": ["no spaces"]}
    alpha.write_config()
    out = alpha.run_cli("daemon", "--no-mdns", "--port", "0", timeout=20)
    assert out.returncode == 78, out
    assert "[agent]" in out.stderr and "Traceback" not in out.stderr
