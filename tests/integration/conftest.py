"""Fixtures and hooks for the integration tests; the helpers live in integration_harness.py.

The daemons open sockets, so these tests run only inside a private network namespace (``.ci/run``
makes one); anywhere else they are skipped.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_harness import Fleet

# -- where we may run ---------------------------------------------------------------------------


def _in_private_netns() -> bool:
    """True inside a network namespace other than the host's (unshare -n, the netns mesh)."""
    try:
        return os.readlink("/proc/self/ns/net") != os.readlink("/proc/1/ns/net")
    except OSError:  # pid 1 not readable (a user namespace): a fresh netns has only lo
        return [name for _, name in socket.if_nameindex()] == ["lo"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = None
    if not _in_private_netns():
        skip = pytest.mark.skip(
            reason="integration tests start daemons: run them inside a network namespace "
            "(bash .ci/run, or unshare -n)"
        )
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)
            if skip is not None:
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, append every daemon's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    fleet = getattr(item, "funcargs", {}).get("fleet")
    if isinstance(fleet, Fleet):
        for d in fleet.daemons:
            report.sections.append((f"acp daemon {d.name} ({d.agent_id}) log", d.log_text()))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.close()
