"""Every error acp raises on purpose, with its CLI exit code and IPC error code.

Exit codes and IPC codes live here and nowhere else, so the CLI, the IPC server and the docs agree.
The core (acp.proto) raises only ProtocolError subclasses; foreign exceptions (nacl, tomllib,
json, zeroconf) are wrapped at the edge with ``raise ... from exc``.
"""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOHOST = os.EX_NOHOST  # 68: the peer is unknown to the daemon
EXIT_UNAVAILABLE = os.EX_UNAVAILABLE  # 69: the daemon is not running
EXIT_TEMPFAIL = os.EX_TEMPFAIL  # 75: timed out / peer unreachable; a retry may help
EXIT_CONFIG = os.EX_CONFIG  # 78: broken config, key or file permissions
EXIT_INTERRUPTED = 130


class AcpError(Exception):
    """Base of every error acp raises deliberately."""

    exit_code: int = EXIT_FAILURE
    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(AcpError):
    """config.toml, identity.key, ACP_HOME or a command-line value is unusable."""

    exit_code = EXIT_CONFIG
    code = "config_error"


class DaemonUnavailable(AcpError):
    """The local daemon cannot be reached over its IPC socket."""

    exit_code = EXIT_UNAVAILABLE
    code = "daemon_unavailable"


# IPC error codes whose exit status is not the generic 1.
_REQUEST_EXIT_CODES = {
    "unknown_peer": EXIT_NOHOST,
    "timeout": EXIT_TEMPFAIL,
    "undelivered": EXIT_TEMPFAIL,
    "outbox_full": EXIT_TEMPFAIL,
    "not_connected": EXIT_TEMPFAIL,
    "bad_request": EXIT_USAGE,
    "too_large": EXIT_USAGE,
}


class RequestFailed(AcpError):
    """The daemon answered a request with ``{"ok": false, "error": {...}}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.exit_code = _REQUEST_EXIT_CODES.get(code, EXIT_FAILURE)


class ProtocolError(AcpError):
    """Bytes from outside (a peer, a client) break the protocol (docs/protocol.md)."""

    code = "protocol_error"


class FrameError(ProtocolError):
    """A length prefix outside 1..65535, or a session frame with no type byte."""

    code = "bad_frame"


class HandshakeError(ProtocolError):
    """A Noise handshake message or payload is invalid, or its peer is not trusted."""

    code = "handshake_failed"


class DecryptError(ProtocolError):
    """A Noise message failed authentication: wrong key, flipped bit, replay or reorder."""

    code = "decrypt_failed"


class EnvelopeError(ProtocolError):
    """An envelope is refused; ``code`` is the ACK error code of docs/protocol.md §6.

    ``fatal`` marks an ENVELOPE frame whose body is not a JSON object with a string ``id``: such a
    frame closes the session, since there is no id to ACK.
    """

    def __init__(
        self, code: str, message: str, *, envelope_id: str | None = None, fatal: bool = False
    ) -> None:
        super().__init__(message, code=code)
        self.envelope_id = envelope_id
        self.fatal = fatal


class IpcError(ProtocolError):
    """A local client's line is unusable; ``code`` is the IPC error code of docs/protocol.md §8."""

    def __init__(self, code: str, message: str, *, req: object = None) -> None:
        super().__init__(message, code=code)
        self.req = req


class AlreadyRunning(AcpError):
    """Another ``acp daemon`` holds the lock on the same ACP_HOME: a configuration problem (exit
    78), which a restart cannot fix."""

    exit_code = EXIT_CONFIG
    code = "already_running"
