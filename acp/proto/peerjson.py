"""Strict JSON from peers (docs/protocol.md §5, §6), and the compact bytes local clients get.

Python's ``json`` reads more than JSON: a duplicated key (the last one wins, so
``{"from":"alpha",…,"from":"mallory"}`` reads differently in other parsers), ``NaN`` and
``Infinity``, and ``\\ud800``-style escapes of lone UTF-16 surrogates. Peers' envelopes and cards
must be none of these, and what a local client is given is the re-serialisation of what was
parsed, never the peer's bytes.

Why this shape: this runs once per envelope received, so it does the one serialisation the
receive path needs anyway and lets it do the checking. Serialising with ``allow_nan=False`` and
encoding to UTF-8 fails on NaN, Infinity (also a number too large for a double) and any lone
surrogate; a duplicated key is invisible after parsing, but when the serialisation equals the
bytes received (what acp and any compact sender send) the input cannot have had one, so only other
input is parsed a second time with ``object_pairs_hook`` (about 1.5 times a plain parse).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

# Built once: json.dumps with keyword arguments builds a new encoder on every call.
COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class NotStrictJSON(ValueError):
    """JSON that a strict parser refuses: a duplicated key, NaN or Infinity, a lone surrogate."""


def loads(data: bytes) -> tuple[Any, bytes]:
    """Parse JSON from a peer strictly; return the value and its compact UTF-8 serialisation.

    Raises NotStrictJSON for a duplicated key (at any depth), NaN, Infinity or -Infinity (or a
    number too large for a double), or a lone UTF-16 surrogate (in a key or a value, at any depth);
    UnicodeDecodeError, another ValueError or RecursionError for what is not JSON at all.
    """
    text = data.decode("utf-8")
    value = _STRICT.decode(text)
    try:
        compact = COMPACT.encode(value).encode("utf-8")
    except UnicodeEncodeError:  # raw UTF-8 cannot carry a surrogate: it came from a \u escape
        raise NotStrictJSON("a lone UTF-16 surrogate (a \\ud800-\\udfff escape)") from None
    except ValueError:  # allow_nan=False: a float that is infinite after parsing (1e400)
        raise NotStrictJSON("a number out of range (Infinity)") from None
    if compact != data:  # not the bytes of a serialised object: it may hide a duplicated key
        _NO_DUPLICATES.decode(text)
    return value, compact


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        key = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise NotStrictJSON(f"duplicated key {key!r}")
    return out


def _no_constant(name: str) -> float:
    raise NotStrictJSON(f"{name} is not JSON")


# Built once, like COMPACT: json.loads with keyword arguments builds a decoder on every call.
_STRICT = json.JSONDecoder(parse_constant=_no_constant)
_NO_DUPLICATES = json.JSONDecoder(parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
