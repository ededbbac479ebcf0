"""ACP_HOME files (docs/protocol.md §1, §2): identity.key/.pub, config.toml, peers.json."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acp import model
from acp.config import DEFAULT_PORT, Config, StaticPeer, acp_home, ensure_home, split_hostport
from acp.errors import EXIT_CONFIG, ConfigError
from acp.identity import KEY_NAME, PUB_NAME, Identity, load_identity
from acp.model import agent_id_from_hostname, check_agent_id, decode_key, encode_key, fingerprint
from acp.proto.noise import public_key
from acp.store import LEGACY_PEERS, PeerRecord, PeerStore, read_legacy_peers

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()
PUB = public_key(b"\x01" * 32)
PUB_B64 = base64.b64encode(PUB).decode()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- identity ---------------------------------------------------------------------------------


def test_identity_created_0600_with_pub(tmp_path: Path) -> None:
    ident = load_identity(tmp_path)
    key_path = tmp_path / KEY_NAME
    assert mode(key_path) == 0o600
    assert base64.b64decode(key_path.read_text().strip(), validate=True) == ident.private_key
    pub_text = (tmp_path / PUB_NAME).read_text()
    assert pub_text.strip() == ident.public_b64
    assert base64.b64decode(pub_text.strip(), validate=True) == ident.public_key
    assert ident.public_key == public_key(ident.private_key)
    assert len(ident.private_key) == 32
    # Loading again gives the same identity, not a new one.
    assert load_identity(tmp_path) == ident
    assert KEY_B64 not in repr(Identity.from_private(KEY)) and "private_key" not in repr(ident)


def test_identity_created_0600_despite_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_identity(tmp_path)
    finally:
        os.umask(old)
    assert mode(tmp_path / KEY_NAME) == 0o600


def test_identity_pub_is_rewritten_when_missing_or_wrong(tmp_path: Path) -> None:
    ident = load_identity(tmp_path)
    (tmp_path / PUB_NAME).unlink()
    load_identity(tmp_path)
    assert (tmp_path / PUB_NAME).read_text().strip() == ident.public_b64
    (tmp_path / PUB_NAME).write_text("stale\n")
    load_identity(tmp_path)
    assert (tmp_path / PUB_NAME).read_text().strip() == ident.public_b64


@pytest.mark.parametrize("bad_mode", [0o640, 0o644, 0o604, 0o660, 0o666])
def test_identity_readable_by_others_is_refused(tmp_path: Path, bad_mode: int) -> None:
    load_identity(tmp_path)
    path = tmp_path / KEY_NAME
    path.chmod(bad_mode)
    with pytest.raises(ConfigError) as info:
        load_identity(tmp_path)
    assert str(path) in info.value.message
    assert "chmod 600" in info.value.message
    assert info.value.exit_code == EXIT_CONFIG == 78


def test_identity_0400_is_fine(tmp_path: Path) -> None:
    ident = load_identity(tmp_path)
    (tmp_path / KEY_NAME).chmod(0o400)
    assert load_identity(tmp_path) == ident


@pytest.mark.parametrize(
    "content",
    [
        b"not base64 at all!!\n",
        b"",
        base64.b64encode(b"short") + b"\n",
        base64.b64encode(bytes(33)) + b"\n",
        b"\xff\xfe\x00garbage",
    ],
)
def test_garbage_identity_key_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / KEY_NAME
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_identity(tmp_path)
    assert str(path) in info.value.message


def test_identity_without_create(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_identity(tmp_path, create=False)
    assert not (tmp_path / KEY_NAME).exists()


def test_identity_from_existing_key(tmp_path: Path) -> None:
    path = tmp_path / KEY_NAME
    path.write_text(KEY_B64 + "\n")
    path.chmod(0o600)
    ident = load_identity(tmp_path)
    assert ident.private_key == KEY
    assert ident.public_key == public_key(KEY)


# --- model ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("agent-one", "agent-one"),
        ("laptop.local", "laptop"),
        ("build01.example.com", "build01"),
        ("My_Host", "My_Host"),
        ("host name", "host-name"),
        ("héllo", "h-llo"),
        ("-leading", "leading"),
        ("__x", "x"),
        ("ünïcode", "n-code"),
        ("", "acp-agent"),
        (".hidden", "acp-agent"),
        ("___", "acp-agent"),
        ("a" * 80, "a" * 63),
    ],
)
def test_agent_id_from_hostname(hostname: str, expected: str) -> None:
    assert agent_id_from_hostname(hostname) == expected


@given(st.text(max_size=100))
@settings(max_examples=300, deadline=None)
def test_agent_id_from_any_hostname_is_valid(hostname: str) -> None:
    assert model.is_agent_id(agent_id_from_hostname(hostname))


def test_agent_id_from_real_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "Box 7.lan")
    assert agent_id_from_hostname() == "Box-7"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("a", True),
        ("A.b_c-9", True),
        ("9lives", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("", False),
        ("-a", False),
        (".a", False),
        ("_a", False),
        ("a b", False),
        ("a/b", False),
        ("é", False),
        ("a\n", False),
        (None, False),
        (5, False),
    ],
)
def test_is_agent_id(value: object, ok: bool) -> None:
    assert model.is_agent_id(value) is ok
    if ok:
        assert check_agent_id(value) == value
    else:
        with pytest.raises(ConfigError):
            check_agent_id(value, what="--agent-id")


def test_fingerprint_format() -> None:
    fp = fingerprint(PUB)
    assert re.fullmatch(r"[0-9a-f]{4}(-[0-9a-f]{4}){7}", fp)
    assert fp.replace("-", "") == hashlib.sha256(PUB).hexdigest()[:32]
    assert fingerprint(KEY) != fp
    assert Identity.from_private(b"\x01" * 32).fingerprint == fp


def test_key_encoding() -> None:
    assert decode_key(encode_key(PUB)) == PUB
    assert decode_key(" " + PUB_B64 + "\n") == PUB
    for bad in ("", "!!!!", base64.b64encode(b"x" * 31).decode(), PUB_B64.rstrip("="), 5, None):
        with pytest.raises(ConfigError):
            decode_key(bad, what="peer key")


# --- config -----------------------------------------------------------------------------------


def write_config(home: Path, text: str) -> Path:
    path = home / "config.toml"
    path.write_text(text)
    return path


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(socket, "gethostname", lambda: "thehost.lan")
    return "thehost"


def test_config_defaults(tmp_path: Path, host: str) -> None:
    cfg = Config.load(tmp_path, env={})
    assert cfg.agent_id == host
    assert cfg.port == DEFAULT_PORT == 7100
    assert cfg.trust == "tofu" and cfg.peers == () and cfg.mdns is True
    assert cfg.socket_path == tmp_path / "acp.sock"
    assert cfg.config_path == tmp_path / "config.toml"


def test_agent_id_precedence(tmp_path: Path, host: str) -> None:
    assert Config.load(tmp_path, env={}).agent_id == host
    write_config(tmp_path, 'agent_id = "from-config"\n')
    assert Config.load(tmp_path, env={}).agent_id == "from-config"
    env = {"ACP_AGENT_ID": "from-env"}
    assert Config.load(tmp_path, env=env).agent_id == "from-env"
    assert Config.load(tmp_path, env=env, agent_id="from-cli").agent_id == "from-cli"
    assert Config.load(tmp_path, env={}, agent_id="from-cli").agent_id == "from-cli"


@pytest.mark.parametrize(("cli", "env", "where"), [("bad id", None, "cli"), (None, "-bad", "env")])
def test_invalid_agent_id_from_any_source(
    tmp_path: Path, host: str, cli: str | None, env: str | None, where: str
) -> None:
    envmap = {"ACP_AGENT_ID": env} if env else {}
    with pytest.raises(ConfigError):
        Config.load(tmp_path, env=envmap, agent_id=cli)


def test_other_overrides(tmp_path: Path, host: str) -> None:
    write_config(tmp_path, "port = 7200\nmdns = false\n")
    cfg = Config.load(tmp_path, env={})
    assert (cfg.port, cfg.mdns) == (7200, False)
    cfg = Config.load(tmp_path, env={}, port=0, mdns=True)
    assert (cfg.port, cfg.mdns) == (0, True)


def test_acp_home_from_env(tmp_path: Path) -> None:
    assert acp_home({"ACP_HOME": str(tmp_path)}) == tmp_path
    assert acp_home({}) == Path.home() / ".acp"
    write_config(tmp_path, 'agent_id = "via-home"\n')
    assert Config.load(env={"ACP_HOME": str(tmp_path)}).agent_id == "via-home"


@pytest.mark.parametrize("text", ["port = \n", "agent_id = 'a\n", "[[peers]\n", "= 1\n"])
def test_bad_toml_names_the_file(tmp_path: Path, text: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Config.load(tmp_path, env={})
    assert str(path) in info.value.message
    assert "TOML" in info.value.message


def test_non_utf8_config_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_bytes(b'agent_id = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        Config.load(tmp_path, env={})
    assert str(tmp_path / "config.toml") in info.value.message


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"colour": "blue"}, "colour"),
        ({"agent-id": "x"}, "agent-id"),
        ({"port": "7100"}, "port"),
        ({"port": True}, "port"),
        ({"port": 70000}, "port"),
        ({"port": -1}, "port"),
        ({"mdns": "yes"}, "mdns"),
        ({"listen": "0.0.0.0"}, "listen"),
        ({"listen": ["not-an-ip"]}, "listen"),
        ({"listen": [1]}, "listen"),
        ({"trust": "always"}, "trust"),
        ({"trust": "TOFU"}, "trust"),
        ({"trust": 1}, "trust"),
        ({"inbox_limit": 0}, "inbox_limit"),
        ({"outbox_ttl": -5}, "outbox_ttl"),
        ({"outbox_limit": 1.5}, "outbox_limit"),
        ({"outbox_ttl": True}, "outbox_ttl"),
        ({"stats_interval": False}, "stats_interval"),
        ({"outbox_ttl": float("nan")}, "outbox_ttl"),
        ({"stats_interval": float("nan")}, "stats_interval"),
        ({"interfaces": [1]}, "interfaces"),
        ({"peers": {"agent_id": "x"}}, "peers"),
        ({"agent_id": 5}, "agent_id"),
    ],
)
def test_bad_settings(tmp_path: Path, host: str, data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_toml(data, home=tmp_path, path="/cfg/config.toml")
    assert "/cfg/config.toml" in info.value.message
    assert fragment in info.value.message


@pytest.mark.parametrize("trust", ["tofu", "explicit", "verified"])
def test_trust_values(tmp_path: Path, host: str, trust: str) -> None:
    write_config(tmp_path, f'trust = "{trust}"\n')
    assert Config.load(tmp_path, env={}).trust == trust


def test_good_settings(tmp_path: Path, host: str) -> None:
    cfg = Config.from_toml(
        {
            "listen": ["127.0.0.1", "::1"],
            "outbox_ttl": 30,
            "inbox_limit": 5,
            "interfaces": ["eth0"],
            "stats_interval": 1.5,
        },
        home=tmp_path,
    )
    assert cfg.listen == ("127.0.0.1", "::1")
    assert cfg.outbox_ttl == 30.0 and isinstance(cfg.outbox_ttl, float)
    assert (cfg.inbox_limit, cfg.interfaces, cfg.stats_interval) == (5, ("eth0",), 1.5)


def test_static_peers(tmp_path: Path, host: str) -> None:
    write_config(
        tmp_path,
        f"""
[[peers]]
agent_id = "agent-two"
addr = "10.0.0.7:7100"
pubkey = "{PUB_B64}"

[[peers]]
agent_id = "agent-six"
addr = "[fe80::1]:7101"
pubkey = "{KEY_B64}"
""",
    )
    cfg = Config.load(tmp_path, env={})
    assert cfg.peers == (
        StaticPeer("agent-two", "10.0.0.7", 7100, PUB),
        StaticPeer("agent-six", "fe80::1", 7101, KEY),
    )
    assert PUB_B64 not in repr(cfg.peers[0])


GOOD_PEER = {"agent_id": "agent-two", "addr": "10.0.0.7:7100", "pubkey": PUB_B64}


@pytest.mark.parametrize(
    "changes",
    [
        {"addr": "10.0.0.7"},
        {"addr": "10.0.0.7:"},
        {"addr": ":7100"},
        {"addr": "10.0.0.7:0"},
        {"addr": "10.0.0.7:65536"},
        {"addr": "10.0.0.7:http"},
        {"addr": "fe80::1:7100"},
        {"addr": "[not-v6]:7100"},
        {"addr": "[10.0.0.7]:7100"},
        {"addr": 7100},
        {"pubkey": "not base64!"},
        {"pubkey": base64.b64encode(b"k" * 16).decode()},
        {"pubkey": None},
        {"agent_id": "bad id"},
        {"agent_id": ...},
        {"addr": ...},
        {"pubkey": ...},
        {"nickname": "two"},
    ],
)
def test_bad_peer_entries(tmp_path: Path, host: str, changes: dict[str, Any]) -> None:
    entry = {**GOOD_PEER}
    for key, value in changes.items():
        if value is ...:
            del entry[key]
        else:
            entry[key] = value
    with pytest.raises(ConfigError) as info:
        Config.from_toml({"peers": [entry]}, home=tmp_path, path="cfg.toml")
    assert "cfg.toml [[peers]] #1" in info.value.message


def test_peer_entry_must_be_a_table_and_unique(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError):
        Config.from_toml({"peers": ["agent-two"]}, home=tmp_path)
    with pytest.raises(ConfigError, match="twice"):
        Config.from_toml({"peers": [GOOD_PEER, GOOD_PEER]}, home=tmp_path)


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("10.0.0.7:7100", ("10.0.0.7", 7100)),
        ("[::1]:1", ("::1", 1)),
        ("[2001:db8::7]:65535", ("2001:db8::7", 65535)),
        ("host.lan:7100", ("host.lan", 7100)),
    ],
)
def test_split_hostport(addr: str, expected: tuple[str, int]) -> None:
    assert split_hostport(addr, what="addr") == expected


def test_ensure_home(tmp_path: Path) -> None:
    home = tmp_path / "a" / ".acp"
    ensure_home(home)
    assert mode(home) == 0o700
    home.chmod(0o755)
    ensure_home(home)
    assert mode(home) == 0o700


# --- the peer table (the database itself: tests/net/test_store.py) ----------------------------


def test_peer_store_tracks_what_changed() -> None:
    store = PeerStore()
    assert list(store) == [] and not store.dirty
    store.pin("agent-two", PUB)
    store.update("agent-two", host="10.0.0.7", port=7100, last_seen=5, ts_sent=10, source="mdns")
    store.update("agent-three", host="::1", port=1)
    assert store.dirty
    rows = store.changes()
    assert not store.dirty and sorted(rows) == ["agent-three", "agent-two"]
    assert json.loads(rows["agent-two"] or "")["pubkey"] == PUB_B64
    again = PeerStore()
    again.load_rows([(k, v) for k, v in rows.items() if v is not None], "db")
    assert again.get("agent-two") == PeerRecord(PUB, "10.0.0.7", 7100, 5, 10, None, "mdns")
    assert again.get("agent-three") == PeerRecord(host="::1", port=1)
    assert again.get("agent-nine") is None and "agent-nine" not in again
    assert again.forget("agent-three") and again.changes() == {"agent-three": None}


def test_peer_store_pin_resets_replay_counter() -> None:
    store = PeerStore()
    store.pin("b", PUB)
    store.update("b", ts_accepted=99)
    store.changes()
    store.pin("b", PUB)
    assert store.get("b").ts_accepted == 99 and not store.dirty  # type: ignore[union-attr]
    store.pin("b", KEY)
    assert store.get("b").ts_accepted is None and store.dirty  # type: ignore[union-attr]
    # ... but the old key's counter stays behind: its recorded message 1 is still a replay
    assert store.floor(PUB) == 99 and store.table_changes() == ({PUB: 99}, {})
    store.changes()
    store.update("b", pubkey=KEY)
    assert not store.dirty
    store.update("b", ts_accepted=7)
    assert store.forget("b") and store.dirty
    assert not store.forget("b")
    assert store.floor(KEY) == 7  # forgotten: the floor stays
    store.pin("b", PUB)  # pinned again (acp trust, or tofu): the counter comes back with it
    assert store.get("b").ts_accepted == 99  # type: ignore[union-attr]


def test_peer_store_verified_belongs_to_the_key() -> None:
    """A verified key survives a reload; a new pin is never verified (docs/protocol.md §9)."""
    store = PeerStore()
    store.pin("b", PUB)
    store.update("b", verified=PUB)
    rec = store.get("b")
    assert rec is not None and rec.is_verified
    row = store.changes()["b"] or ""
    assert json.loads(row)["verified"] == PUB_B64
    again = PeerStore()
    again.load_rows([("b", row)], "db")
    assert again.get("b") == rec and again.get("b").is_verified  # type: ignore[union-attr]
    again.pin("b", PUB)  # the same key again: still verified
    assert again.get("b").is_verified and not again.dirty  # type: ignore[union-attr]
    again.pin("b", KEY)  # a new key: not verified, and the old verification is gone
    assert not again.get("b").is_verified and again.get("b").verified is None  # type: ignore[union-attr]
    assert "verified" not in json.loads(again.changes()["b"] or "")
    # a record whose verified key is not its pin (written by hand, say) is not verified
    odd = PeerRecord.from_json({"pubkey": PUB_B64, "verified": base64.b64encode(KEY).decode()}, "x")
    assert not odd.is_verified


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"version":1,"peers":[]}',
        b'{"version":1,"peers":{"bad id":{}}}',
        b'{"version":1,"peers":{"b":[]}}',
        b'{"version":1,"peers":{"b":{"pubkey":"short"}}}',
        b'{"version":1,"peers":{"b":{"port":"7100"}}}',
        b'{"version":1,"peers":{"b":{"ts_sent":true}}}',
        b'{"version":1,"peers":{"b":{"host":5}}}',
    ],
)
def test_corrupt_legacy_peers_json_is_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / LEGACY_PEERS
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_legacy_peers(path)
    assert str(path) in info.value.message


def test_legacy_peers_json_reads_every_field(tmp_path: Path) -> None:
    path = tmp_path / LEGACY_PEERS
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "peers": {
                    "agent-two": {
                        "pubkey": PUB_B64,
                        "host": "10.0.0.7",
                        "port": 7100,
                        "last_seen": 5,
                        "ts_sent": 10,
                        "ts_accepted": 20,
                        "source": "mdns",
                    },
                },
            }
        )
    )
    assert read_legacy_peers(path) == {
        "agent-two": PeerRecord(PUB, "10.0.0.7", 7100, 5, 10, 20, "mdns")
    }
    assert read_legacy_peers(tmp_path / "absent.json") == {}


@pytest.mark.parametrize(
    "addr", ["evil host:7100", "host\nname:7100", "a..b:7100", "-x:7100", "h\x1b[2J:7100"]
)
def test_addresses_must_be_an_ip_or_a_host_name(addr: str) -> None:
    from acp.config import split_hostport

    with pytest.raises(ConfigError, match="not an IP address or a host name"):
        split_hostport(addr, what="addr")


def test_good_addresses_still_pass() -> None:
    from acp.config import split_hostport

    assert split_hostport("laptop.local:7100", what="a") == ("laptop.local", 7100)
    assert split_hostport("10.0.0.2:1", what="a") == ("10.0.0.2", 1)
    assert split_hostport("[fe80::1]:7100", what="a") == ("fe80::1", 7100)


def test_low_order_public_keys_are_unusable() -> None:
    from acp.proto.noise import public_key, usable_public_key

    assert not usable_public_key(bytes(32))  # what `acp trust` once accepted
    assert not usable_public_key(b"\x01" + bytes(31))
    assert usable_public_key(public_key(b"\x07" * 32))
