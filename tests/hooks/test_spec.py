"""``[[hooks]]`` in config.toml (acp/hooks/spec.py): what is accepted, and the errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from acp.config import Config
from acp.errors import ConfigError
from acp.hooks.spec import HookSpec, parse_hooks


def one(**fields: Any) -> HookSpec:
    return parse_hooks([fields], "config.toml")[0]


def test_defaults_of_each_type() -> None:
    http = one(name="web", type="http", url="https://h.example/x?token=abc")
    assert http.kinds == {"query", "response", "delegate", "notify"} and http.senders is None
    assert (http.ack, http.timeout, http.concurrency, http.coalesce) == (False, 10.0, 1, 0.0)
    assert http.target == "https://h.example/x"  # no query (it may hold a secret)
    oc = one(name="oc", type="openclaw", token_env="OC_TOKEN")
    assert oc.endpoint == "http://127.0.0.1:18789/hooks/agent"
    ex = one(name="ex", type="exec", argv=["claude", "-p", "hi"])
    assert ex.timeout == 60.0 and ex.target == "claude" and ex.argv == ("claude", "-p", "hi")


def test_filters() -> None:
    h = one(name="h", type="exec", argv=["x"], kinds=["query", "event"], **{"from": ["beta"]})
    assert h.matches("beta", "query") and not h.matches("carol", "query")
    assert not h.matches("beta", "notify")
    assert h.matches(None, "event")  # an event has no sender: `from` does not filter it


def test_secrets_come_from_the_environment_and_a_missing_one_is_named() -> None:
    h = one(
        name="web",
        type="http",
        url="http://x/",
        headers={"Authorization": "Bearer ${env:TOKEN}", "X-Team": "${env:TEAM}-ops"},
    )
    assert h.secrets({"TOKEN": "s3cret", "TEAM": "red"}) == {
        "Authorization": "Bearer s3cret",
        "X-Team": "red-ops",
    }
    assert "s3cret" not in repr(h)
    with pytest.raises(ConfigError, match="TEAM, which is not set") as err:
        h.secrets({"TOKEN": "s3cret"})
    assert "s3cret" not in str(err.value)
    oc = one(name="oc", type="openclaw", token_env="OC_TOKEN")
    assert oc.secrets({"OC_TOKEN": "t"}) == {"Authorization": "Bearer t"}
    with pytest.raises(ConfigError, match="OC_TOKEN"):
        oc.secrets({})
    with pytest.raises(ConfigError, match="visible ASCII"):
        oc.secrets({"OC_TOKEN": "t\r\nX-Evil: 1"})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "http", "url": "http://x/"}, "name must be"),
        ({"name": "a b", "type": "http", "url": "http://x/"}, "name must be"),
        ({"name": "h", "type": "smtp"}, "type must be one of"),
        ({"name": "h", "type": "http"}, "url is required"),
        ({"name": "h", "type": "http", "url": "ftp://x/"}, "http:// or https://"),
        ({"name": "h", "type": "http", "url": "http://x/${env:A}"}, "cannot name environment"),
        ({"name": "h", "type": "http", "url": "http://x/", "argv": ["a"]}, "unknown key"),
        ({"name": "h", "type": "http", "url": "http://x/", "headers": {"A": "${A}"}}, "env:NAME"),
        ({"name": "h", "type": "http", "url": "http://x/", "headers": {"Host": "x"}}, "header"),
        ({"name": "h", "type": "http", "url": "http://x/", "headers": {"A": 1}}, "string"),
        ({"name": "h", "type": "openclaw"}, "token_env"),
        ({"name": "h", "type": "openclaw", "token_env": "T", "wake_mode": "later"}, "wake_mode"),
        ({"name": "h", "type": "exec"}, "argv"),
        ({"name": "h", "type": "exec", "argv": []}, "argv"),
        ({"name": "h", "type": "exec", "argv": "claude -p"}, "wrong type"),
        ({"name": "h", "type": "exec", "argv": ["x"], "kinds": ["email"]}, "unknown kind"),
        ({"name": "h", "type": "exec", "argv": ["x"], "from": ["not an id"]}, "not an agent_id"),
        ({"name": "h", "type": "exec", "argv": ["x"], "timeout": 0}, "timeout must be above 0"),
        ({"name": "h", "type": "exec", "argv": ["x"], "timeout": float("nan")}, "timeout"),
        ({"name": "h", "type": "exec", "argv": ["x"], "timeout": 10**400}, "at most a week"),
        ({"name": "h", "type": "exec", "argv": ["x"], "coalesce": -1}, "coalesce"),
        ({"name": "h", "type": "exec", "argv": ["x"], "concurrency": 0}, "concurrency"),
        ({"name": "h", "type": "exec", "argv": ["x"], "ack": "yes"}, "wrong type"),
    ],
)
def test_errors_name_the_hook_and_the_problem(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse_hooks([fields], "/home/u/.acp/config.toml")
    assert "/home/u/.acp/config.toml [[hooks]] #1" in str(err.value)


def test_names_are_unique_and_hooks_must_be_tables(tmp_path: Path) -> None:
    twice = [{"name": "h", "type": "exec", "argv": ["x"]}] * 2
    with pytest.raises(ConfigError, match="two \\[\\[hooks\\]\\] are named 'h'"):
        parse_hooks(twice, "config.toml")
    with pytest.raises(ConfigError, match="must be \\[\\[hooks\\]\\] tables"):
        Config.from_toml({"hooks": {"name": "h"}}, home=tmp_path, agent_id="a")
    config = Config.from_toml({"hooks": twice[:1]}, home=tmp_path, agent_id="a")
    assert [h.name for h in config.hooks] == ["h"]


def test_secret_values_must_be_header_safe_and_are_never_quoted() -> None:
    h = one(name="web", type="http", url="http://x/", headers={"Authorization": "${env:T}"})
    for bad in ("tok ", " tok", "tøk", "t\tk"):
        with pytest.raises(ConfigError, match="visible ASCII") as err:
            h.secrets({"T": bad})
        assert bad not in str(err.value)
    assert h.secrets({"T": "Bearer a b"}) == {"Authorization": "Bearer a b"}
    assert h.env_names() == {"T"}
    assert one(name="o", type="openclaw", token_env="OC").env_names() == {"OC"}


@pytest.mark.parametrize("url", ["http://h:abc/", "http://h:99999/", "http://[::1", "http://[zz]/"])
def test_a_bad_port_or_host_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="url"):
        one(name="h", type="http", url=url)
