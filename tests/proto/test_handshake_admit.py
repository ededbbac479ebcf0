"""The responder's admission rules and the initiator's ts (docs/protocol.md §4)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acp.errors import HandshakeError
from acp.proto import handshake
from acp.proto.handshake import (
    KEY_MISMATCH,
    NOT_TRUSTED,
    REPLAY,
    TRUST_POLICIES,
    WRONG_PEER,
    Hello,
    Refused,
    admit,
    next_ts,
)

KEY_A = b"\xaa" * 32
KEY_B = b"\xbb" * 32
HELLO = Hello(agent_id="agent-one", ts=1000, port=7100)


def test_trust_policies() -> None:
    assert TRUST_POLICIES == ("tofu", "explicit", "verified")


@pytest.mark.parametrize("trust", TRUST_POLICIES)
def test_held_key_match_is_admitted_without_pin(trust: str) -> None:
    assert admit(HELLO, KEY_A, held_key=KEY_A, last_accepted_ts=None, trust=trust) is False
    assert admit(HELLO, KEY_A, held_key=KEY_A, last_accepted_ts=999, trust=trust) is False


@pytest.mark.parametrize("trust", TRUST_POLICIES)
def test_held_key_mismatch_is_refused(trust: str) -> None:
    with pytest.raises(Refused) as info:
        admit(HELLO, KEY_B, held_key=KEY_A, last_accepted_ts=None, trust=trust)
    assert info.value.reason == KEY_MISMATCH
    assert isinstance(info.value, HandshakeError)
    assert "agent-one" in str(info.value)


def test_tofu_pins_unknown_agent() -> None:
    assert admit(HELLO, KEY_B, held_key=None, last_accepted_ts=None, trust="tofu") is True


def test_explicit_refuses_unknown_agent() -> None:
    with pytest.raises(Refused) as info:
        admit(HELLO, KEY_B, held_key=None, last_accepted_ts=None, trust="explicit")
    assert info.value.reason == NOT_TRUSTED


@pytest.mark.parametrize(
    ("last", "admitted"),
    [(None, True), (0, True), (999, True), (1000, False), (1001, False), (10**15, False)],
)
@pytest.mark.parametrize("held", [KEY_A, None])
def test_ts_must_be_above_last_accepted(
    last: int | None, admitted: bool, held: bytes | None
) -> None:
    if admitted:
        admit(HELLO, KEY_A, held_key=held, last_accepted_ts=last, trust="tofu")
    else:
        with pytest.raises(Refused) as info:
            admit(HELLO, KEY_A, held_key=held, last_accepted_ts=last, trust="tofu")
        assert info.value.reason == REPLAY


def test_key_mismatch_wins_over_replay() -> None:
    with pytest.raises(Refused) as info:
        admit(HELLO, KEY_B, held_key=KEY_A, last_accepted_ts=5000, trust="tofu")
    assert info.value.reason == KEY_MISMATCH


def test_replayed_handshake_sequence() -> None:
    """A responder that records each accepted ts refuses a replay of any earlier message 1."""
    last: int | None = None
    for ts in (10, 11, 50):
        admit(
            Hello("agent-one", ts, None),
            KEY_A,
            held_key=KEY_A,
            last_accepted_ts=last,
            trust="explicit",
        )
        last = ts
    for ts in (10, 11, 50):
        with pytest.raises(Refused):
            admit(
                Hello("agent-one", ts, None),
                KEY_A,
                held_key=KEY_A,
                last_accepted_ts=last,
                trust="explicit",
            )
    admit(
        Hello("agent-one", 51, None), KEY_A, held_key=KEY_A, last_accepted_ts=last, trust="explicit"
    )


@pytest.mark.parametrize(
    ("now", "last", "expected"),
    [(1000, None, 1000), (1000, 999, 1000), (1000, 1000, 1001), (1000, 5000, 5001), (0, None, 0)],
)
def test_next_ts(now: int, last: int | None, expected: int) -> None:
    assert next_ts(now, last) == expected


@given(st.lists(st.integers(0, 2**45), min_size=1, max_size=30), st.none() | st.integers(0, 2**45))
@settings(max_examples=200, deadline=None)
def test_next_ts_strictly_increases_whatever_the_clock(clock: list[int], start: int | None) -> None:
    """Even if the clock jumps back (or the daemon restarts with its saved ts), ts goes up."""
    last = start
    for now in clock:
        ts = next_ts(now, last)
        assert ts >= now
        if last is not None:
            assert ts > last
        last = ts


def test_parse_welcome_wrong_agent() -> None:
    with pytest.raises(Refused) as info:
        handshake.parse_welcome(b'{"v":1,"agent_id":"agent-three"}', expected_agent_id="agent-two")
    assert info.value.reason == WRONG_PEER
    assert (
        handshake.parse_welcome(
            b'{"v":1,"agent_id":"agent-two","extra":1}', expected_agent_id="agent-two"
        )
        == "agent-two"
    )


def test_refused_reasons_are_distinct() -> None:
    reasons = {KEY_MISMATCH, NOT_TRUSTED, REPLAY, handshake.BAD_PAYLOAD, WRONG_PEER}
    assert len(reasons) == 5
    assert handshake.PROLOGUE == b"acp-v1"
    assert handshake.HANDSHAKE_TIMEOUT == 5.0


@pytest.mark.parametrize(
    ("presented", "held", "policy", "verdict"),
    [
        (b"k" * 32, b"k" * 32, "tofu", handshake.ACCEPT),
        (b"k" * 32, b"k" * 32, "explicit", handshake.ACCEPT),
        (b"k" * 32, b"o" * 32, "tofu", handshake.KEY_MISMATCH),
        (b"k" * 32, b"o" * 32, "explicit", handshake.KEY_MISMATCH),
        (b"k" * 32, None, "tofu", handshake.PIN),
        (b"k" * 32, None, "explicit", handshake.NOT_TRUSTED),
        (b"k" * 32, b"k" * 32, "verified", handshake.ACCEPT),
        (b"k" * 32, b"o" * 32, "verified", handshake.KEY_MISMATCH),
        (b"k" * 32, None, "verified", handshake.PIN),  # the session comes up: `acp verify` needs it
    ],
)
def test_judge_key_is_the_one_trust_decision(
    presented: bytes, held: bytes | None, policy: str, verdict: str
) -> None:
    assert handshake.judge_key(presented, held, policy) == verdict


def test_trust_level_is_explicit_only_for_keys_the_user_named() -> None:
    assert [handshake.trust_level(s) for s in ("static", "manual", "mdns", "incoming", None)] == [
        "explicit",
        "explicit",
        "tofu",
        "tofu",
        "tofu",
    ]


def test_verified_policy_admits_an_unknown_agent_to_pin_it() -> None:
    assert admit(HELLO, KEY_B, held_key=None, last_accepted_ts=None, trust="verified") is True


def test_trust_level_verified_wins_over_where_the_key_came_from() -> None:
    for source in ("static", "manual", "mdns", "incoming", None):
        assert handshake.trust_level(source, verified=True) == "verified"
    assert handshake.trust_level("mdns", verified=False) == "tofu"
    assert handshake.TRUST_LEVELS == ("tofu", "explicit", "verified")


@pytest.mark.parametrize(
    ("level", "policy", "delivered"),
    [
        ("tofu", "tofu", True),
        ("explicit", "tofu", True),
        ("verified", "tofu", True),
        ("tofu", "explicit", True),  # explicit refuses at the handshake, not here
        ("tofu", "verified", False),
        (None, "verified", False),
        ("explicit", "verified", True),
        ("verified", "verified", True),
    ],
)
def test_may_deliver(level: str | None, policy: str, delivered: bool) -> None:
    assert handshake.may_deliver(level, policy) is delivered


# -- the verification code (docs/protocol.md §9) ---------------------------------------------------


def _code_by_hand(h: bytes) -> str:
    """PROTOCOL.md §9, step by step: SHA-256("acp-verify" || h), first 4 bytes big-endian,
    modulo 10^6, zero-padded to 6 digits."""
    digest = hashlib.sha256(b"acp-verify" + h).digest()
    return str(int.from_bytes(digest[:4], "big") % 1_000_000).zfill(6)


def test_verification_code_known_vectors() -> None:
    """Worked by hand: SHA-256("acp-verify" || h) starts 24 c8 56 9c for h = 00 01 .. 1f, and
    0x24c8569c = 617109148, so the code is 109148; for h = 32 zero bytes, 43 ed 63 35 =
    1139630901 -> 630901; for h = 31 zero bytes then 0a, d2 1c a9 d9 = 3525093849 -> 093849."""
    assert _code_by_hand(bytes(range(32))) == "109148"
    assert 0x24C8569C == 617109148 and 0x43ED6335 == 1139630901 and 0xD21CA9D9 == 3525093849
    assert hashlib.sha256(b"acp-verify" + bytes(range(32))).digest()[:4] == bytes.fromhex(
        "24c8569c"
    )
    assert handshake.verification_code(bytes(range(32))) == "109148"
    assert handshake.verification_code(bytes(32)) == "630901"
    assert handshake.verification_code((10).to_bytes(32, "big")) == "093849"  # leading zero kept


@given(st.binary(min_size=32, max_size=32))
def test_verification_code_is_six_digits_of_the_hash(h: bytes) -> None:
    code = handshake.verification_code(h)
    assert len(code) == 6 and code.isdigit() and code == _code_by_hand(h)
