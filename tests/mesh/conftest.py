"""Fixtures for the multi-host tests: ``mesh`` (a per-test simulated LAN) and ``figure``.

Each test module sets ``MESH_PREFIX`` and ``MESH_NET`` (its own, so modules never collide), then
asks for ``mesh`` and calls ``mesh.up(N)``. Teardown stops every daemon and runs ``mesh.sh down``,
whatever happened. Without root, ``ip`` or ``nft`` (or where ``ip netns add`` fails) the tests are
skipped with the reason. Measured figures (``figure(name, seconds)``) are printed at the end of the
run, not asserted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mesh_harness import Mesh, why_not_runnable

HERE = Path(__file__).parent
FIGURES: list[tuple[str, str]] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.mesh)


@pytest.fixture
def mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    reason = why_not_runnable()
    if reason is not None:
        pytest.skip(reason)
    prefix = getattr(request.module, "MESH_PREFIX", None)
    net = getattr(request.module, "MESH_NET", None)
    assert prefix and net, f"{request.module.__name__} must set MESH_PREFIX and MESH_NET"
    root = tmp_path_factory.mktemp("m", numbered=True)  # short: ACP_HOME/acp.sock < 108 bytes
    m = Mesh(prefix, net, root)
    m.lock()
    try:
        yield m
    finally:
        try:
            m.down()
        finally:
            m.unlock()


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str, float | str], None]:
    """Record a measured figure; printed in the terminal summary (and shown with -s at once)."""

    def record(name: str, value: float | str) -> None:
        text = f"{value:.2f} s" if isinstance(value, float) else str(value)
        FIGURES.append((f"{request.node.name}: {name}", text))
        print(f"FIGURE {request.node.name}: {name} = {text}")

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("acp mesh: measured figures")
        for name, text in FIGURES:
            terminalreporter.write_line(f"{name}: {text}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """On failure, append every daemon's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    m = getattr(item, "funcargs", {}).get("mesh")
    if isinstance(m, Mesh):
        for d in m.daemons:
            report.sections.append((f"acp daemon {d.name} log", d.log_text()[-20000:]))
