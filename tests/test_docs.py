"""The man page and the systemd unit are checked by the tools users will run them through."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    shutil.which("mandoc") is None, reason="mandoc is not installed (.ci/run installs it)"
)
def test_man_page_is_lint_clean() -> None:
    out = subprocess.run(
        ["mandoc", "-T", "lint", str(ROOT / "man" / "acp.1")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # %h/.local/bin/acp does not exist here: point ExecStart at this checkout's acp, and let
    # `man acp(1)` (Documentation=) find man/acp.1.
    acp = shutil.which("acp") or str(ROOT / ".venv" / "bin" / "acp")
    unit = (
        (ROOT / "contrib" / "systemd" / "acp.service").read_text().replace("%h/.local/bin/acp", acp)
    )
    (tmp_path / "acp.service").write_text(unit)
    (tmp_path / "man" / "man1").mkdir(parents=True)
    shutil.copy(ROOT / "man" / "acp.1", tmp_path / "man" / "man1" / "acp.1")
    env = dict(os.environ, MANPATH=str(tmp_path / "man"))
    out = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "acp.service")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "acp.service" not in out.stderr, out.stderr  # no warning about our unit
