"""Who may hold a handshake slot: the responder's defence against a keyless attacker (§4).

Anyone on the LAN can open TCP connections to the daemon and sit on them without sending message 1.
Slots for handshakes in progress are bounded (a bounded daemon cannot be exhausted), so the
question is who gets one when they are all taken. The answer here, as a plain object:

- a source (an IPv4 address, or an IPv6 /64: one host can hold a whole /64) holds at most
  ``per_source`` slots; past that its newcomers are refused: it is competing with itself;
- when every slot is taken, a newcomer is not refused: the oldest slot still waiting for message 1,
  of the source that holds the most slots, is cancelled to make room ("fair eviction": an attacker
  spread over many sources loses its oldest idle connections, a peer that sends message 1 at once
  is done in milliseconds);
- a slot whose message 1 decrypted to a key we have pinned for that agent_id is ``known``: never
  evicted, so peers we already hold a key for still get in during a flood;
- under load (half the slots taken) a new handshake gets a short deadline instead of 5 s.

Why not WireGuard's cookie reply: its cookie proves that the initiator can receive packets at its
source address before the responder spends a Diffie-Hellman on it, which over UDP is what stops
spoofed floods. A TCP connection has already proved that with its three-way handshake, and acp
spends no DH before message 1 arrives; what is left to defend is the slots themselves, which is
what this does. (A cookie would also need a protocol change that every implementation must speak.)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import attrs

from acp.proto.handshake import HANDSHAKE_TIMEOUT

MAX_HALF_OPEN = 64  # handshakes in progress at once
PER_SOURCE = 8  # ... held by one IPv4 address or IPv6 /64
LOADED_TIMEOUT = 1.0  # ... when half the slots are taken: a LAN peer needs milliseconds


def source_of(host: str) -> str:
    """The unit that per-source limits count: an IPv4 address, or the /64 of an IPv6 one."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


@attrs.define(eq=False)
class Slot:
    source: str
    started: float
    cancel: Callable[[], None] = attrs.field(repr=False)
    known: bool = False  # message 1 is from a key pinned for its agent_id: never evicted


class Admission:
    def __init__(self, *, limit: int = MAX_HALF_OPEN, per_source: int = PER_SOURCE) -> None:
        self.limit = limit
        self.per_source = per_source
        self._slots: dict[Slot, None] = {}  # insertion order is age order
        self.by_source: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def admit(self, source: str, now: float, cancel: Callable[[], None]) -> Slot | None:
        """A slot for a new connection from ``source``, or None: refuse it."""
        if self.by_source.get(source, 0) >= self.per_source:
            return None
        if len(self._slots) >= self.limit:
            victim = self._victim()
            if victim is None:
                return None  # every slot is a known peer's handshake
            self.release(victim)
            victim.cancel()
        slot = Slot(source, now, cancel)
        self._slots[slot] = None
        self.by_source[source] = self.by_source.get(source, 0) + 1
        return slot

    def _victim(self) -> Slot | None:
        """The oldest unknown slot of the source that holds the most slots."""
        best: Slot | None = None
        for slot in self._slots:  # oldest first
            if slot.known:
                continue
            if best is None or self.by_source[slot.source] > self.by_source[best.source]:
                best = slot
        return best

    def deadline(self) -> float:
        """Seconds a handshake starting now may take."""
        return HANDSHAKE_TIMEOUT if len(self._slots) < self.limit // 2 else LOADED_TIMEOUT

    def release(self, slot: Slot) -> None:
        """The handshake is over (done, failed or evicted); calling it again does nothing."""
        if self._slots.pop(slot, 0) is None:
            n = self.by_source[slot.source] - 1
            if n:
                self.by_source[slot.source] = n
            else:
                del self.by_source[slot.source]
