"""Noise_IK_25519_ChaChaPoly_SHA256 (Noise revision 34), both roles, on PyNaCl and hashlib/hmac.

Why written here rather than imported: the handshake is ~150 lines of the Noise spec, the test-only
oracle ``noiseprotocol`` pulls in ``cryptography``, and we want keys and ephemerals as arguments so
that handshakes are repeatable byte for byte in tests. Each step cites the spec section it follows.

IK pattern (spec §7.5):
    <- s
    ...
    -> e, es, s, ss
    <- e, ee, se
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

import nacl.bindings as sodium
import nacl.exceptions

from acp.errors import DecryptError, HandshakeError

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_SHA256"
DHLEN = 32
HASHLEN = 32
TAGLEN = 16
MAX_MESSAGE = 65535
MAX_NONCE = 2**64 - 1  # reserved by spec §5.1; we refuse to reach it

_ZERO4 = b"\x00\x00\x00\x00"
Aead = Callable[[bytes, bytes, bytes, bytes], bytes]  # (text, ad, nonce, key) -> text


def _bindings_aead() -> tuple[Aead, Aead]:
    """ChaCha20-Poly1305 (IETF) through PyNaCl's public ``nacl.bindings``."""

    def encrypt(plaintext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes:
        return bytes(sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key))

    def decrypt(ciphertext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes:
        try:
            out = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise DecryptError("message failed authentication") from exc
        return bytes(out)

    return encrypt, decrypt


def _direct_aead() -> tuple[Aead, Aead] | None:
    """The same two libsodium functions called through PyNaCl's own cffi module, without
    ``nacl.bindings``' argument checks and buffer conversions: 1.7 against 4.5 us for a 1 KiB
    frame, and every envelope costs four of them (encrypt and decrypt, of it and of its ACK;
    docs/performance.md). ``nacl._sodium`` is PyNaCl's compiled module, not its documented API:
    if a PyNaCl release moves it, this returns None and ``nacl.bindings`` is used.
    Every caller passes a 32-byte key and a 12-byte nonce (CipherState builds both)."""
    try:
        from nacl._sodium import ffi, lib

        c_encrypt = lib.crypto_aead_chacha20poly1305_ietf_encrypt
        c_decrypt = lib.crypto_aead_chacha20poly1305_ietf_decrypt
    except (ImportError, AttributeError):
        return None
    null = ffi.NULL

    def encrypt(plaintext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes:
        out = ffi.new("unsigned char[]", len(plaintext) + TAGLEN)
        c_encrypt(out, null, plaintext, len(plaintext), ad, len(ad), null, nonce, key)
        return bytes(ffi.buffer(out))

    def decrypt(ciphertext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes:
        if len(ciphertext) < TAGLEN:
            raise DecryptError("message failed authentication")
        out = ffi.new("unsigned char[]", len(ciphertext) - TAGLEN + 1)  # never of length 0
        rc = c_decrypt(out, null, null, ciphertext, len(ciphertext), ad, len(ad), nonce, key)
        if rc != 0:
            raise DecryptError("message failed authentication")
        return bytes(ffi.buffer(out, len(ciphertext) - TAGLEN))

    return encrypt, decrypt


_encrypt, _decrypt = _direct_aead() or _bindings_aead()

RandomBytes = Callable[[int], bytes]


def public_key(private_key: bytes) -> bytes:
    """X25519 public key of a 32-byte private key."""
    return bytes(sodium.crypto_scalarmult_base(private_key))


def generate_private_key(rng: RandomBytes = os.urandom) -> bytes:
    return rng(DHLEN)


def _dh(private_key: bytes, public: bytes) -> bytes:
    """DH() of spec §4.1; an all-zero result (low-order public key) is a handshake failure."""
    try:
        return bytes(sodium.crypto_scalarmult(private_key, public))
    except nacl.exceptions.CryptoError as exc:  # libsodium refuses low-order points
        raise HandshakeError("peer sent an invalid X25519 public key") from exc


def usable_public_key(public: bytes) -> bool:
    """False for a key no handshake can use: a low-order point (all zeros and a few others), for
    which every Diffie-Hellman gives zero. `acp trust` and [[peers]] refuse such keys at once."""
    try:
        _dh(b"\x01" * 31 + b"\x40", public)
    except HandshakeError:
        return False
    return True


def _hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """HKDF() of spec §4.3: HMAC-SHA256 based, 2 or 3 outputs."""
    # temp_key = HMAC-HASH(chaining_key, input_key_material)
    temp_key = hmac.digest(chaining_key, ikm, "sha256")
    # output1 = HMAC-HASH(temp_key, byte(0x01))
    out1 = hmac.digest(temp_key, b"\x01", "sha256")
    # output2 = HMAC-HASH(temp_key, output1 || byte(0x02))
    out2 = hmac.digest(temp_key, out1 + b"\x02", "sha256")
    if outputs == 2:
        return out1, out2
    # output3 = HMAC-HASH(temp_key, output2 || byte(0x03))
    out3 = hmac.digest(temp_key, out2 + b"\x03", "sha256")
    return out1, out2, out3


class CipherState:
    """Spec §5.1: a ChaCha20-Poly1305 key and a 64-bit counter nonce, never sent on the wire."""

    __slots__ = ("k", "n")

    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and len(key) != 32:  # the direct AEAD calls read exactly 32 bytes
            raise ValueError("a ChaCha20-Poly1305 key is 32 bytes")
        self.k = key
        self.n = 0

    def has_key(self) -> bool:
        return self.k is not None

    def _nonce(self) -> bytes:
        # ChaChaPoly nonce (spec §12.3): 32 bits of zeros then the little-endian 64-bit counter
        if self.n >= MAX_NONCE:
            raise DecryptError("nonce space exhausted; the session must be re-established")
        return _ZERO4 + self.n.to_bytes(8, "little")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return plaintext
        out = _encrypt(plaintext, ad, self._nonce(), self.k)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return ciphertext
        out = _decrypt(bytes(ciphertext), ad, self._nonce(), self.k)  # DecryptError if forged
        self.n += 1  # only after success (spec §5.1)
        return out

    # Transport messages have empty associated data.
    def encrypt(self, plaintext: bytes) -> bytes:
        return self.encrypt_with_ad(b"", plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) < TAGLEN:
            raise DecryptError(
                f"transport message of {len(ciphertext)} bytes is shorter than a tag"
            )
        return self.decrypt_with_ad(b"", ciphertext)


class SymmetricState:
    """Spec §5.2."""

    def __init__(self) -> None:
        # InitializeSymmetric: the name is exactly HASHLEN bytes, so h = name, unhashed
        self.h = (
            PROTOCOL_NAME
            if len(PROTOCOL_NAME) == HASHLEN
            else hashlib.sha256(PROTOCOL_NAME).digest()
        )
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(temp_k[:32])

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ct = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        pt = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = _hkdf(self.ck, b"", 2)
        return CipherState(k1[:32]), CipherState(k2[:32])


class TransportKeys:
    """The two cipher states after Split(), oriented for one side: ``send`` and ``recv``."""

    __slots__ = ("handshake_hash", "recv", "send")

    def __init__(self, send: CipherState, recv: CipherState, handshake_hash: bytes) -> None:
        self.send = send
        self.recv = recv
        self.handshake_hash = handshake_hash


class Initiator:
    """The dialling side of IK: knows the responder's static key before it starts."""

    def __init__(
        self,
        static_private: bytes,
        remote_static: bytes,
        *,
        prologue: bytes,
        ephemeral_private: bytes | None = None,
        rng: RandomBytes = os.urandom,
    ) -> None:
        self._s = static_private
        self._s_pub = public_key(static_private)
        self._rs = remote_static
        self._e = ephemeral_private if ephemeral_private is not None else rng(DHLEN)
        self._e_pub = public_key(self._e)
        self._ss = SymmetricState()
        self._ss.mix_hash(prologue)
        self._ss.mix_hash(remote_static)  # pre-message "<- s"
        self._state = "start"

    def write_message_1(self, payload: bytes) -> bytes:
        """-> e, es, s, ss, then the encrypted payload."""
        if self._state != "start":
            raise HandshakeError("message 1 already written")
        ss = self._ss
        ss.mix_hash(self._e_pub)  # e
        ss.mix_key(_dh(self._e, self._rs))  # es
        enc_s = ss.encrypt_and_hash(self._s_pub)  # s
        ss.mix_key(_dh(self._s, self._rs))  # ss
        out = self._e_pub + enc_s + ss.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE:
            raise HandshakeError("handshake payload too large")
        self._state = "sent1"
        return out

    def read_message_2(self, message: bytes) -> tuple[bytes, TransportKeys]:
        """<- e, ee, se; returns the payload and the transport keys (send = first cipher)."""
        if self._state != "sent1":
            raise HandshakeError("message 2 read out of order")
        message = bytes(message)
        if len(message) < DHLEN + TAGLEN:
            raise HandshakeError(f"handshake message 2 of {len(message)} bytes is too short")
        ss = self._ss
        re = message[:DHLEN]
        ss.mix_hash(re)  # e
        ss.mix_key(_dh(self._e, re))  # ee
        ss.mix_key(_dh(self._s, re))  # se (initiator's s, responder's e)
        try:
            payload = ss.decrypt_and_hash(message[DHLEN:])
        except DecryptError as exc:
            raise HandshakeError("handshake message 2 failed authentication") from exc
        c1, c2 = ss.split()
        self._state = "done"
        return payload, TransportKeys(send=c1, recv=c2, handshake_hash=ss.h)


class Responder:
    """The listening side of IK: learns the initiator's static key from message 1."""

    def __init__(
        self,
        static_private: bytes,
        *,
        prologue: bytes,
        ephemeral_private: bytes | None = None,
        rng: RandomBytes = os.urandom,
    ) -> None:
        self._s = static_private
        self._e = ephemeral_private if ephemeral_private is not None else rng(DHLEN)
        self._e_pub = public_key(self._e)
        self._ss = SymmetricState()
        self._ss.mix_hash(prologue)
        self._ss.mix_hash(public_key(static_private))  # pre-message "<- s"
        self._re = b""
        self.remote_static = b""
        self._state = "start"

    def read_message_1(self, message: bytes) -> bytes:
        """-> e, es, s, ss; returns the payload. ``remote_static`` is then the initiator's key."""
        if self._state != "start":
            raise HandshakeError("message 1 read twice")
        message = bytes(message)
        if len(message) < DHLEN + DHLEN + TAGLEN + TAGLEN:
            raise HandshakeError(f"handshake message 1 of {len(message)} bytes is too short")
        ss = self._ss
        self._re = message[:DHLEN]
        ss.mix_hash(self._re)  # e
        ss.mix_key(_dh(self._s, self._re))  # es
        try:
            rs = ss.decrypt_and_hash(message[DHLEN : DHLEN + DHLEN + TAGLEN])  # s
            ss.mix_key(_dh(self._s, rs))  # ss
            payload = ss.decrypt_and_hash(message[DHLEN + DHLEN + TAGLEN :])
        except DecryptError as exc:
            raise HandshakeError(
                "handshake message 1 failed authentication (it was not made for our key)"
            ) from exc
        self.remote_static = rs
        self._state = "read1"
        return payload

    def write_message_2(self, payload: bytes) -> tuple[bytes, TransportKeys]:
        """<- e, ee, se; returns the message and the transport keys (send = second cipher)."""
        if self._state != "read1":
            raise HandshakeError("message 2 written out of order")
        ss = self._ss
        ss.mix_hash(self._e_pub)  # e
        ss.mix_key(_dh(self._e, self._re))  # ee
        ss.mix_key(_dh(self._e, self.remote_static))  # se
        out = self._e_pub + ss.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE:
            raise HandshakeError("handshake payload too large")
        c1, c2 = ss.split()
        self._state = "done"
        return out, TransportKeys(send=c2, recv=c1, handshake_hash=ss.h)
