"""Client commands are what agents call in loops: they must not load the daemon's heavy parts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("trio", "zeroconf", "nacl", "rich", "ifaddr", "mcp")

PROBE = """
import json, sys
from acp.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["peers", "--json"],
        ["send", "agent-two", "hi"],
        ["listen", "--count", "1"],
        ["id"],
    ],
)
def test_client_commands_do_not_import_the_daemon(argv: list[str], tmp_path: Path) -> None:
    # No daemon at this ACP_HOME: each command fails fast (exit 69), after its imports.
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        env={"ACP_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "acp" in loaded and "cyclopts" in loaded
    assert not loaded & set(HEAVY), f"{argv} imported {sorted(loaded & set(HEAVY))}"
