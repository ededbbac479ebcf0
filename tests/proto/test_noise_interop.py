"""Our Noise_IK against the test-only oracle ``noiseprotocol``, byte for byte, both directions."""

from __future__ import annotations

import hashlib
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from acp.errors import DecryptError, HandshakeError, ProtocolError
from acp.proto.noise import (
    TAGLEN,
    CipherState,
    Initiator,
    Responder,
    TransportKeys,
    generate_private_key,
    public_key,
)

NAME = b"Noise_IK_25519_ChaChaPoly_SHA256"
PROLOGUE = b"acp-v1"


def _key(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


S_INIT = _key("initiator static")
S_RESP = _key("responder static")
E_INIT = _key("initiator ephemeral")
E_RESP = _key("responder ephemeral")
S_OTHER = _key("some other responder")

# Points of small order on Curve25519 (libsodium refuses DH with them): zero, one, and the
# order-8 point from the libsodium/x25519 blocklist.
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


def oracle(
    *,
    initiator: bool,
    static: bytes,
    remote_static: bytes | None = None,
    ephemeral: bytes | None = None,
) -> NoiseConnection:
    conn = NoiseConnection.from_name(NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(PROLOGUE)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    if remote_static is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_static)
    if ephemeral is not None:
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    with warnings.catch_warnings():
        # noiseprotocol warns that a fixed ephemeral is for tests only: it is.
        warnings.simplefilter("ignore", UserWarning)
        conn.start_handshake()
    return conn


def ours_pair(
    *, e_init: bytes | None = E_INIT, e_resp: bytes | None = E_RESP
) -> tuple[Initiator, Responder]:
    return (
        Initiator(S_INIT, public_key(S_RESP), prologue=PROLOGUE, ephemeral_private=e_init),
        Responder(S_RESP, prologue=PROLOGUE, ephemeral_private=e_resp),
    )


def handshake() -> tuple[TransportKeys, TransportKeys]:
    """A complete handshake of ours with ours: (initiator keys, responder keys)."""
    ini, resp = ours_pair(e_init=None, e_resp=None)
    resp.read_message_1(ini.write_message_1(b"hello"))
    m2, rkeys = resp.write_message_2(b"welcome")
    _, ikeys = ini.read_message_2(m2)
    return ikeys, rkeys


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


def test_public_key_matches_oracle() -> None:
    conn = NoiseConnection.from_name(NAME)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, S_INIT)
    assert public_key(S_INIT) == conn.noise_protocol.keypairs["s"].public_bytes
    assert len(generate_private_key()) == 32
    assert generate_private_key(lambda n: b"\x07" * n) == b"\x07" * 32


def test_our_initiator_with_oracle_responder() -> None:
    ini = Initiator(S_INIT, public_key(S_RESP), prologue=PROLOGUE)
    them = oracle(initiator=False, static=S_RESP)
    m1 = ini.write_message_1(b'{"v":1}')
    assert bytes(them.read_message(m1)) == b'{"v":1}'
    m2 = bytes(them.write_message(b"back"))
    assert them.handshake_finished
    payload, keys = ini.read_message_2(m2)
    assert payload == b"back"
    assert keys.handshake_hash == them.get_handshake_hash()

    for i in range(3):
        msg = b"to oracle %d" % i
        assert them.decrypt(keys.send.encrypt(msg)) == msg
        reply = b"from oracle %d" % i
        assert keys.recv.decrypt(them.encrypt(reply)) == reply


def test_oracle_initiator_with_our_responder() -> None:
    them = oracle(initiator=True, static=S_INIT, remote_static=public_key(S_RESP))
    resp = Responder(S_RESP, prologue=PROLOGUE)
    m1 = bytes(them.write_message(b"hi"))
    assert resp.read_message_1(m1) == b"hi"
    assert resp.remote_static == public_key(S_INIT)
    m2, keys = resp.write_message_2(b"")
    assert bytes(them.read_message(m2)) == b""
    assert them.handshake_finished
    assert keys.handshake_hash == them.get_handshake_hash()

    for i in range(3):
        msg = b"to oracle %d" % i
        assert them.decrypt(keys.send.encrypt(msg)) == msg
        reply = b"from oracle %d" % i
        assert keys.recv.decrypt(them.encrypt(reply)) == reply


def test_fixed_keys_give_byte_identical_messages_and_ciphertexts() -> None:
    ini, resp = ours_pair()
    o_ini = oracle(
        initiator=True, static=S_INIT, remote_static=public_key(S_RESP), ephemeral=E_INIT
    )
    o_resp = oracle(initiator=False, static=S_RESP, ephemeral=E_RESP)

    payload1 = b'{"v":1,"agent_id":"agent-one","ts":1700000000000,"port":7100}'
    m1 = ini.write_message_1(payload1)
    assert bytes(o_ini.write_message(payload1)) == m1
    assert m1[:32] == public_key(E_INIT)
    assert len(m1) == 32 + 32 + TAGLEN + len(payload1) + TAGLEN

    assert resp.read_message_1(m1) == payload1
    assert bytes(o_resp.read_message(m1)) == payload1

    payload2 = b'{"v":1,"agent_id":"agent-two"}'
    m2, rkeys = resp.write_message_2(payload2)
    assert bytes(o_resp.write_message(payload2)) == m2
    assert m2[:32] == public_key(E_RESP)
    assert len(m2) == 32 + len(payload2) + TAGLEN

    got, ikeys = ini.read_message_2(m2)
    assert got == payload2
    assert bytes(o_ini.read_message(m2)) == payload2
    assert ikeys.handshake_hash == rkeys.handshake_hash == o_ini.get_handshake_hash()

    for msg in (b"\x03pingpong", b"\x01" + b"x" * 1000, b""):
        ct = ikeys.send.encrypt(msg)
        assert ct == o_ini.encrypt(msg)
        assert len(ct) == len(msg) + TAGLEN
        assert rkeys.recv.decrypt(ct) == msg
        assert o_resp.decrypt(ct) == msg
        back = rkeys.send.encrypt(msg)
        assert back == o_resp.encrypt(msg)
        assert back != ct  # the two directions use different keys
        assert ikeys.recv.decrypt(back) == msg
        assert o_ini.decrypt(back) == msg


def test_random_ephemerals_differ_between_handshakes() -> None:
    a, _ = ours_pair(e_init=None, e_resp=None)
    b, _ = ours_pair(e_init=None, e_resp=None)
    assert a.write_message_1(b"x")[:32] != b.write_message_1(b"x")[:32]


def test_rng_is_used_for_ephemerals() -> None:
    ini = Initiator(S_INIT, public_key(S_RESP), prologue=PROLOGUE, rng=lambda n: E_INIT[:n])
    ref, _ = ours_pair()
    assert ini.write_message_1(b"p") == ref.write_message_1(b"p")


def test_wrong_prologue_fails() -> None:
    ini = Initiator(S_INIT, public_key(S_RESP), prologue=b"acp-v2")
    resp = Responder(S_RESP, prologue=PROLOGUE)
    with pytest.raises(HandshakeError):
        resp.read_message_1(ini.write_message_1(b"x"))


@pytest.mark.parametrize("index", [0, 31, 32, 63, 64, 79, 80, 85, 95])
def test_flipped_byte_in_message_1_is_handshake_error(index: int) -> None:
    ini, resp = ours_pair()
    m1 = ini.write_message_1(b"payload!")
    assert len(m1) == 96 + 8
    with pytest.raises(HandshakeError):
        resp.read_message_1(flip(m1, index, 0x80 if index == 31 else 0x01))


@pytest.mark.parametrize("index", [0, 31, 32, 40, 47])
def test_flipped_byte_in_message_2_is_handshake_error(index: int) -> None:
    ini, resp = ours_pair()
    resp.read_message_1(ini.write_message_1(b"x"))
    m2, _ = resp.write_message_2(b"wel")
    with pytest.raises(HandshakeError):
        ini.read_message_2(flip(m2, index))


def test_message_1_for_another_responder_is_handshake_error() -> None:
    ini = Initiator(S_INIT, public_key(S_OTHER), prologue=PROLOGUE)
    resp = Responder(S_RESP, prologue=PROLOGUE)
    with pytest.raises(HandshakeError, match="not made for our key"):
        resp.read_message_1(ini.write_message_1(b"x"))


def test_message_2_from_another_responder_is_handshake_error() -> None:
    ini = Initiator(S_INIT, public_key(S_RESP), prologue=PROLOGUE)
    m1 = ini.write_message_1(b"x")
    # An impostor who cannot decrypt message 1 answers with a message 2 of its own session.
    other_ini = Initiator(S_INIT, public_key(S_OTHER), prologue=PROLOGUE)
    other = Responder(S_OTHER, prologue=PROLOGUE)
    other.read_message_1(other_ini.write_message_1(b"x"))
    m2, _ = other.write_message_2(b"")
    assert len(m1) > 0
    with pytest.raises(HandshakeError):
        ini.read_message_2(m2)


@pytest.mark.parametrize("point", LOW_ORDER, ids=["zero", "one", "order8"])
def test_low_order_ephemeral_in_message_1(point: bytes) -> None:
    ini, resp = ours_pair()
    m1 = point + ini.write_message_1(b"x")[32:]
    with pytest.raises(HandshakeError) as info:
        resp.read_message_1(m1)
    assert type(info.value) is HandshakeError


@pytest.mark.parametrize("point", LOW_ORDER, ids=["zero", "one", "order8"])
def test_low_order_ephemeral_in_message_2(point: bytes) -> None:
    ini, resp = ours_pair()
    resp.read_message_1(ini.write_message_1(b"x"))
    m2, _ = resp.write_message_2(b"")
    with pytest.raises(HandshakeError) as info:
        ini.read_message_2(point + m2[32:])
    assert type(info.value) is HandshakeError


@pytest.mark.parametrize("point", LOW_ORDER, ids=["zero", "one", "order8"])
def test_low_order_static_in_message_1(point: bytes) -> None:
    """An initiator whose encrypted static key is a low-order point: refused, not a nacl error."""
    ini, resp = ours_pair()
    ini._s_pub = point  # the message is otherwise well formed and authenticates
    with pytest.raises(HandshakeError) as info:
        resp.read_message_1(ini.write_message_1(b"x"))
    assert type(info.value) is HandshakeError


@pytest.mark.parametrize("point", LOW_ORDER, ids=["zero", "one", "order8"])
def test_low_order_remote_static_for_initiator(point: bytes) -> None:
    ini = Initiator(S_INIT, point, prologue=PROLOGUE)
    with pytest.raises(HandshakeError):
        ini.write_message_1(b"x")


def test_handshake_out_of_order_is_handshake_error() -> None:
    ini, resp = ours_pair()
    with pytest.raises(HandshakeError):
        ini.read_message_2(b"\x00" * 48)
    with pytest.raises(HandshakeError):
        resp.write_message_2(b"")
    m1 = ini.write_message_1(b"x")
    with pytest.raises(HandshakeError):
        ini.write_message_1(b"x")
    resp.read_message_1(m1)
    with pytest.raises(HandshakeError):
        resp.read_message_1(m1)


def test_oversized_handshake_payload_is_refused() -> None:
    ini, _ = ours_pair()
    with pytest.raises(HandshakeError):
        ini.write_message_1(b"x" * 65535)


@given(index=st.integers(0, 10_000), mask=st.integers(1, 255))
@settings(max_examples=60, deadline=None)
def test_flipped_transport_byte_is_decrypt_error(index: int, mask: int) -> None:
    ikeys, rkeys = handshake()
    msg = b"\x01" + b"m" * 40
    ct = ikeys.send.encrypt(msg)
    with pytest.raises(DecryptError):
        rkeys.recv.decrypt(flip(ct, index % len(ct), mask))
    # A failed decrypt does not move the counter: the genuine message still opens.
    assert rkeys.recv.decrypt(ct) == msg


def test_replayed_transport_message_is_decrypt_error() -> None:
    ikeys, rkeys = handshake()
    c0 = ikeys.send.encrypt(b"first")
    assert rkeys.recv.decrypt(c0) == b"first"
    with pytest.raises(DecryptError):
        rkeys.recv.decrypt(c0)
    c1 = ikeys.send.encrypt(b"second")
    assert rkeys.recv.decrypt(c1) == b"second"


def test_reordered_transport_messages_are_decrypt_error() -> None:
    ikeys, rkeys = handshake()
    c0 = ikeys.send.encrypt(b"zero")
    c1 = ikeys.send.encrypt(b"one")
    with pytest.raises(DecryptError):
        rkeys.recv.decrypt(c1)
    assert rkeys.recv.decrypt(c0) == b"zero"
    assert rkeys.recv.decrypt(c1) == b"one"
    with pytest.raises(DecryptError):
        rkeys.recv.decrypt(c0)


def test_transport_from_another_session_is_decrypt_error() -> None:
    ikeys, _ = handshake()
    _, rkeys2 = handshake()
    with pytest.raises(DecryptError):
        rkeys2.recv.decrypt(ikeys.send.encrypt(b"x"))


def test_own_send_cannot_be_decrypted_with_own_recv() -> None:
    ikeys, _ = handshake()
    with pytest.raises(DecryptError):
        ikeys.recv.decrypt(ikeys.send.encrypt(b"reflected"))


@pytest.mark.parametrize("length", [0, 1, 15])
def test_transport_shorter_than_tag_is_decrypt_error(length: int) -> None:
    _, rkeys = handshake()
    with pytest.raises(DecryptError):
        rkeys.recv.decrypt(b"\x00" * length)


def test_cipherstate_nonce_counts_and_exhausts() -> None:
    cs = CipherState(b"\x01" * 32)
    cs.encrypt(b"a")
    cs.encrypt(b"b")
    assert cs.n == 2
    cs.n = 2**64 - 1
    with pytest.raises(DecryptError):
        cs.encrypt(b"c")
    empty = CipherState()
    assert not empty.has_key()
    assert empty.encrypt_with_ad(b"", b"plain") == b"plain"


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_read_message_1_on_garbage(data: bytes) -> None:
    resp = Responder(S_RESP, prologue=PROLOGUE, ephemeral_private=E_RESP)
    with pytest.raises(HandshakeError):
        resp.read_message_1(data)


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_read_message_2_on_garbage(data: bytes) -> None:
    ini, _ = ours_pair()
    ini.write_message_1(b"x")
    with pytest.raises(HandshakeError):
        ini.read_message_2(data)


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_transport_decrypt_on_garbage(data: bytes) -> None:
    cs = CipherState(b"\x02" * 32)
    with pytest.raises(DecryptError):
        cs.decrypt(data)
    assert cs.n == 0


@given(index=st.integers(0, 10_000), mask=st.integers(1, 255))
@settings(max_examples=100, deadline=None)
def test_any_flipped_handshake_byte_is_refused(index: int, mask: int) -> None:
    ini, resp = ours_pair()
    m1 = ini.write_message_1(b'{"v":1}')
    bad = flip(m1, index % len(m1), mask)
    # Even X25519's ignored top bit of the ephemeral is caught: h covers the raw bytes.
    with pytest.raises(ProtocolError) as info:
        resp.read_message_1(bad)
    assert isinstance(info.value, HandshakeError)
