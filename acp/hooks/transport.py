"""One run of one hook: an HTTP request, or a process (docs/hooks.md).

Each function returns a ``Result`` and raises nothing a hook's endpoint can cause: a refused
connection, a hanging server, a program that is missing or never exits all become a result the
schedule applies. ``httpx`` is imported here, and only when an HTTP hook first runs.
"""

from __future__ import annotations

import email.utils
import hashlib
import math
import os
import re
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import attrs
import trio

from acp.hooks import schedule
from acp.hooks.spec import HookSpec
from acp.text import one_line

if TYPE_CHECKING:
    import httpx

EXCERPT = 4096  # bytes of an answer or an output kept
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for a process group past its timeout
USER_AGENT = "acp-hooks/1"


@attrs.frozen
class Result:
    outcome: str  # schedule.OK | RETRY | GIVE_UP
    status: int | None = None  # HTTP status, or exit status (negative: killed by that signal)
    elapsed: float = 0.0  # seconds
    detail: str = ""  # the start of what came back, made safe for one line
    error: str | None = None
    retry_after: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "success": self.outcome == schedule.OK,
            "status": self.status,
            "elapsed_ms": round(self.elapsed * 1000, 1),
            "detail": self.detail,
            "error": self.error,
        }


def http_outcome(status: int) -> str:
    """2xx: done; 408, 429, 5xx: retry; any other status: give up on the envelope."""
    if 200 <= status < 300:
        return schedule.OK
    if status in (408, 429) or status >= 500:
        return schedule.RETRY
    return schedule.GIVE_UP


def retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def new_http_client() -> httpx.AsyncClient:
    """One client per hook: its connections are reused between runs."""
    import httpx

    # no proxies from the environment: hooks point at the gateway or endpoint named in
    # config.toml, usually on this machine or the LAN; no redirects (a 3xx is reported)
    return httpx.AsyncClient(trust_env=False, follow_redirects=False)


async def run_http(
    spec: HookSpec,
    client: httpx.AsyncClient,
    headers: dict[str, str],
    body: bytes,
    msg_id: str,
) -> Result:
    """POST ``body`` to the hook's endpoint."""
    import httpx

    sent = {
        **headers,
        "Content-Type": "application/json",
        "Idempotency-Key": idempotency_key(msg_id),
        "User-Agent": USER_AGENT,
    }
    start = time.monotonic()
    with trio.move_on_after(spec.timeout):
        try:
            async with client.stream(
                "POST", spec.endpoint, content=body, headers=sent, timeout=spec.timeout
            ) as response:
                got = bytearray()
                async for chunk in response.aiter_raw():
                    got += chunk
                    if len(got) >= EXCERPT:
                        break
                elapsed = time.monotonic() - start
                status = response.status_code
                outcome = http_outcome(status)
                detail = one_line(bytes(got[:EXCERPT]).decode("utf-8", "replace"), 300)
                error = (
                    None if outcome == schedule.OK else f"HTTP {status} {response.reason_phrase}"
                )
                later = retry_after(response.headers.get("retry-after"), time.time())
                return Result(outcome, status, elapsed, detail, error, later)
        except httpx.TimeoutException:
            pass  # reported below, as the timeout it is
        except (httpx.HTTPError, OSError) as exc:
            error = _http_error(exc, headers)
            return Result(schedule.RETRY, None, time.monotonic() - start, "", error)
        except (ValueError, UnicodeError) as exc:  # the request itself cannot be made
            error = f"cannot make the request: {type(exc).__name__}"
            return Result(schedule.GIVE_UP, None, time.monotonic() - start, "", error)
    return Result(
        schedule.RETRY, None, time.monotonic() - start, "", f"no answer within {spec.timeout:g} s"
    )


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,200}\Z")


def idempotency_key(msg_id: str) -> str:
    """The envelope's id if it is a plain HTTP token (acp's are UUIDs); a peer may choose any
    1-256 characters, so anything else becomes ``sha256:<hex>`` of it: stable and header-safe."""
    if _TOKEN.match(msg_id):
        return msg_id
    return "sha256:" + hashlib.sha256(msg_id.encode("utf-8", "surrogatepass")).hexdigest()


def scrub(text: str, headers: dict[str, str]) -> str:
    """``text`` with every header value (the secrets among them) replaced by ``***``."""
    for value in headers.values():
        for part in (value, *value.split()):  # "Bearer TOKEN": the token alone too
            if len(part) >= 8:
                text = text.replace(part, "***")
    return text


def _http_error(exc: BaseException, headers: dict[str, str]) -> str:
    """What went wrong, in a line; the request's headers (secrets) are never part of it."""
    import httpx

    if isinstance(exc, httpx.ConnectError):
        what = "cannot connect"
    elif isinstance(exc, httpx.RemoteProtocolError):
        what = "the server broke the HTTP exchange"
    else:
        what = type(exc).__name__
    text = str(exc) or type(exc).__name__
    return one_line(scrub(f"{what}: {text}", headers), 300)


async def run_exec(spec: HookSpec, stdin: bytes, env: dict[str, str]) -> Result:
    """Run ``argv`` (no shell) in a process group of its own, ``stdin`` on its standard input.

    Past the timeout, or if this run is cancelled, the whole group gets SIGTERM and, if still
    there ``KILL_GRACE`` seconds later, SIGKILL.
    """
    start = time.monotonic()
    try:
        proc = await trio.lowlevel.open_process(
            list(spec.argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        error = f"cannot run {one_line(spec.argv[0], 200)}: {exc.strerror or exc}"
        return Result(schedule.RETRY, None, 0.0, "", error)
    output = bytearray()
    status: int | None = None
    try:
        with trio.move_on_after(spec.timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_feed, proc, stdin)
                nursery.start_soon(_drain, proc, output)
                status = await proc.wait()
                nursery.cancel_scope.cancel()  # a child of it may hold its output open
    finally:
        if status is None:
            with trio.CancelScope(shield=True):
                await _kill_group(proc)
        await _close(proc)
    elapsed = time.monotonic() - start
    detail = one_line(bytes(output[:EXCERPT]).decode("utf-8", "replace"), 300)
    if status is None:
        return Result(
            schedule.RETRY, proc.returncode, elapsed, detail,
            f"still running after {spec.timeout:g} s: killed",
        )  # fmt: skip
    if status == 0:
        return Result(schedule.OK, 0, elapsed, detail)
    if status < 0:
        error = f"killed by signal {_signal_name(-status)}"
    else:
        error = f"exit status {status}"
    return Result(schedule.RETRY, status, elapsed, detail, error)


async def _feed(proc: trio.Process, data: bytes) -> None:
    assert proc.stdin is not None
    try:
        await proc.stdin.send_all(data)
        await proc.stdin.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # it did not read its standard input: that is its business


async def _drain(proc: trio.Process, output: bytearray) -> None:
    assert proc.stdout is not None
    try:
        while chunk := await proc.stdout.receive_some(65536):
            if len(output) < EXCERPT:
                output += chunk[: EXCERPT - len(output)]
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _kill_group(proc: trio.Process) -> None:
    """SIGTERM to the hook's process group, SIGKILL after KILL_GRACE (also when the leader left
    in time: its children may not have), and up to KILL_GRACE more for the leader to go."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        with trio.move_on_after(KILL_GRACE):
            await proc.wait()


async def _close(proc: trio.Process) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def exec_env(base: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """The daemon's environment and the ``ACP_*`` variables; nothing may hold a NUL."""
    return {**base, **{k: v.replace("\0", "\\x00") for k, v in extra.items()}}

