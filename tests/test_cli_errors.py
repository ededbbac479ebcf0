"""An AcpError raised inside the daemon's nursery reaches the user as a message, not a traceback."""

from __future__ import annotations

from acp.cli import lone_acp_error
from acp.errors import ConfigError


def test_a_wrapped_acp_error_is_unwrapped_however_deep() -> None:
    error = ConfigError("port 7100 is in use")
    group = BaseExceptionGroup("outer", [ExceptionGroup("inner", [error])])
    assert lone_acp_error(group) is error


def test_other_errors_and_several_errors_stay_groups() -> None:
    assert lone_acp_error(ExceptionGroup("g", [ValueError("bug")])) is None
    two = ExceptionGroup("g", [ConfigError("a"), ConfigError("b")])
    assert lone_acp_error(two) is None
