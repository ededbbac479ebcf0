"""acp: the Agent Communication Protocol daemon.

One small background process per machine that lets AI agents on a local network find each other
(mDNS), authenticate each other (Noise IK over X25519 keys) and exchange JSON envelopes over one
encrypted TCP session per peer. See README.md and man/acp-protocol.7.
"""

__version__ = "0.1.0"
