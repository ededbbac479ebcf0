"""The daemon never loads `acp mcp`'s SDK (74 MB, ~1 s to import) or its dependencies, and loads
httpx only when an HTTP hook runs (acp/hooks/transport.py imports it inside its functions)."""

from __future__ import annotations

import json
import subprocess
import sys

MCP_STACK = ("mcp", "anyio", "pydantic", "pydantic_core", "httpx", "starlette", "uvicorn")

PROBE = """
import json, sys, pkgutil, importlib
import acp, acp.net, acp.proto, acp.hooks
for pkg in (acp, acp.net, acp.proto, acp.hooks):
    for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
        if info.name != "acp.mcp_server":
            importlib.import_module(info.name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_the_daemon_and_cli_modules_do_not_import_the_mcp_stack() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert {"acp", "trio", "zeroconf", "nacl"} <= loaded  # the daemon's own stack did load
    assert not loaded & set(MCP_STACK), sorted(loaded & set(MCP_STACK))
