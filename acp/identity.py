"""The daemon's X25519 identity: ``identity.key`` (0600) and ``identity.pub`` in ACP_HOME."""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

import attrs

from acp.errors import ConfigError
from acp.model import KEY_LEN, encode_key, fingerprint
from acp.proto.noise import generate_private_key, public_key

KEY_NAME = "identity.key"
PUB_NAME = "identity.pub"


@attrs.frozen
class Identity:
    private_key: bytes = attrs.field(repr=False)
    public_key: bytes

    @property
    def public_b64(self) -> str:
        return encode_key(self.public_key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    @classmethod
    def from_private(cls, private_key: bytes) -> Identity:
        return cls(private_key, public_key(private_key))


def _write_private(path: Path, private_key: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(encode_key(private_key) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_public(home: Path, public: bytes) -> None:
    tmp = home / (PUB_NAME + ".tmp")
    tmp.write_text(encode_key(public) + "\n")
    os.replace(tmp, home / PUB_NAME)


def load_identity(home: Path, *, create: bool = True) -> Identity:
    """Load ``identity.key``, creating it (and ``identity.pub``) on first run."""
    path = home / KEY_NAME
    try:
        st = path.stat()
    except FileNotFoundError:
        if not create:
            raise ConfigError(f"{path}: no identity yet; `acp daemon` creates one") from None
        private = generate_private_key()
        try:
            _write_private(path, private)
        except FileExistsError:  # lost a race with another process: use theirs
            return load_identity(home, create=False)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot create: {exc.strerror}") from exc
        ident = Identity.from_private(private)
        _write_public(home, ident.public_key)
        return ident
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path} has mode {mode:04o}: group or others can read the private key. "
            f"Fix it with `chmod 600 {path}` (and consider the key exposed)."
        )
    try:
        text = path.read_text("ascii").strip()
        private = base64.b64decode(text, validate=True)
    except (OSError, UnicodeDecodeError, binascii.Error, ValueError) as exc:
        raise ConfigError(f"{path}: not a base64 X25519 private key ({exc})") from exc
    if len(private) != KEY_LEN:
        raise ConfigError(f"{path}: expected {KEY_LEN} bytes of key, found {len(private)}")
    ident = Identity.from_private(private)
    pub_path = home / PUB_NAME
    try:
        current = pub_path.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        current = ""
    if current != ident.public_b64:
        try:
            _write_public(home, ident.public_key)
        except OSError:
            pass  # identity.pub is a convenience copy; the key is what counts
    return ident
