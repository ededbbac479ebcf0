"""The direct libsodium calls CipherState uses (acp/proto/noise.py) against nacl.bindings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acp.errors import DecryptError
from acp.proto import noise

BINDINGS = noise._bindings_aead()
DIRECT = noise._direct_aead()
EACH = [pytest.param(BINDINGS, id="bindings"), pytest.param(DIRECT, id="direct")]


def test_the_direct_path_is_the_one_in_use() -> None:
    assert DIRECT is not None, "nacl._sodium moved: CipherState fell back to nacl.bindings"
    assert noise._encrypt is not BINDINGS[0]


@given(
    text=st.binary(max_size=2000),
    ad=st.binary(max_size=64),
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=12, max_size=12),
)
def test_direct_and_bindings_agree_both_ways(
    text: bytes, ad: bytes, key: bytes, nonce: bytes
) -> None:
    assert DIRECT is not None
    sealed = BINDINGS[0](text, ad, nonce, key)
    assert DIRECT[0](text, ad, nonce, key) == sealed
    assert DIRECT[1](sealed, ad, nonce, key) == text == BINDINGS[1](sealed, ad, nonce, key)


@pytest.mark.parametrize("aead", EACH)
@given(flip=st.integers(min_value=0, max_value=10_000))
def test_a_changed_byte_anywhere_fails_authentication(
    aead: tuple[noise.Aead, noise.Aead], flip: int
) -> None:
    encrypt, decrypt = aead
    key, nonce, ad = b"k" * 32, b"n" * 12, b"ad"
    sealed = bytearray(encrypt(b"hello, peer", ad, nonce, key))
    sealed[flip % len(sealed)] ^= 0x01
    with pytest.raises(DecryptError):
        decrypt(bytes(sealed), ad, nonce, key)
    with pytest.raises(DecryptError):
        decrypt(bytes(encrypt(b"x", ad, nonce, key)), b"other ad", nonce, key)


@pytest.mark.parametrize("aead", EACH)
def test_too_short_for_a_tag_fails_authentication(aead: tuple[noise.Aead, noise.Aead]) -> None:
    for size in range(noise.TAGLEN):
        with pytest.raises(DecryptError):
            aead[1](b"\x00" * size, b"", b"n" * 12, b"k" * 32)
