"""acp: the Agent Communication Protocol daemon.

One small background process per machine that lets AI agents on a local network find each other
(mDNS), authenticate each other (Noise IK over X25519 keys) and exchange JSON envelopes over one
encrypted TCP session per peer. See README.md, man/acp.1 and docs/protocol.md.

What needs what: ``acp.client`` (``Client``, and ``TrioClient`` given trio) and ``acp.errors`` use
only the standard library, so a script can import them even from a clone's ``acp/`` directory that
was never installed. Everything else (the daemon, the ``acp`` command, ``acp mcp``) needs the
dependencies in pyproject.toml: install the package (README.md, "Install"), and run scripts with
that environment's Python. Importing those parts without them fails with ModuleNotFoundError; the
``acp`` command says so in one line (``not_installed``).
"""

import sys

__version__ = "0.1.0"


def not_installed(exc: ModuleNotFoundError) -> str:
    """The one-line error for a dependency that is missing: acp is not installed for this Python."""
    return (
        f"acp: the Python package {exc.name!r} is missing: acp is not installed for "
        f"{sys.executable} (only acp.client works from a bare clone). Install it: "
        "`pipx install .` for the acp command, or `pip install .` in a venv for the library "
        "(README.md, Install)"
    )
