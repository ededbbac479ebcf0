"""One run of a hook, for real: a local HTTP server in a thread, and real processes."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio

from acp.hooks import schedule, transport
from acp.hooks.spec import parse_hooks


class Server:
    """Answers each POST with the next (status, headers, body) of ``answers`` (then 200)."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str], bytes]] = []
        self.seen: list[tuple[str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.seen.append((self.path, dict(self.headers), body))
                status, headers, answer = (
                    outer.answers.pop(0) if outer.answers else (200, {}, b"ok")
                )
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def spec(**fields: Any) -> Any:
    return parse_hooks([{"name": "h", **fields}], "config.toml")[0]


async def post(hook: Any, headers: dict[str, str] | None = None) -> transport.Result:
    async with transport.new_http_client() as client:
        return await transport.run_http(hook, client, headers or {}, b'{"seq":1}', "id-1")


async def test_http_success_sends_the_idempotency_key_and_headers(server: Server) -> None:
    hook = spec(type="http", url=f"http://127.0.0.1:{server.port}/in")
    result = await post(hook, {"Authorization": "Bearer s3cret"})
    assert result.outcome == schedule.OK and result.status == 200 and result.detail == "ok"
    path, headers, body = server.seen[0]
    assert path == "/in" and body == b'{"seq":1}'
    assert headers["Idempotency-Key"] == "id-1"
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(201, schedule.OK), (408, schedule.RETRY), (429, schedule.RETRY), (500, schedule.RETRY),
     (503, schedule.RETRY), (400, schedule.GIVE_UP), (401, schedule.GIVE_UP),
     (404, schedule.GIVE_UP), (301, schedule.GIVE_UP)],
)  # fmt: skip
async def test_http_statuses(server: Server, status: int, outcome: str) -> None:
    server.answers.append((status, {"Location": "http://elsewhere/"}, b"no"))
    result = await post(spec(type="http", url=f"http://127.0.0.1:{server.port}/"))
    assert (result.outcome, result.status) == (outcome, status)
    if outcome != schedule.OK:
        assert result.error is not None and str(status) in result.error


async def test_retry_after_in_seconds_and_as_a_date(server: Server) -> None:
    server.answers.append((503, {"Retry-After": "7"}, b""))
    hook = spec(type="http", url=f"http://127.0.0.1:{server.port}/")
    assert (await post(hook)).retry_after == 7.0
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 100))
    server.answers.append((429, {"Retry-After": later}, b""))
    got = (await post(hook)).retry_after
    assert got is not None and 95 <= got <= 101
    assert transport.retry_after("soon", time.time()) is None


async def test_a_closed_port_and_a_silent_server_are_retried() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = await post(spec(type="http", url=f"http://127.0.0.1:{port}/"))
        assert result.outcome == schedule.RETRY and result.status is None
        assert result.error is not None and "cannot connect" in result.error
        sock.listen(1)  # accepts (in the kernel) and never answers
        result = await post(spec(type="http", url=f"http://127.0.0.1:{port}/", timeout=0.5))
        assert result.outcome == schedule.RETRY
        assert result.error == "no answer within 0.5 s"


async def test_a_huge_answer_is_cut_to_an_excerpt(server: Server) -> None:
    server.answers.append((200, {}, b"\x1b[2J" + b"x" * 200_000))
    result = await post(spec(type="http", url=f"http://127.0.0.1:{server.port}/"))
    assert result.outcome == schedule.OK
    assert result.detail.startswith("\\x1b[2J") and len(result.detail) <= 300


def script(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hook.py"
    path.write_text(text)
    return str(path)


async def test_exec_gets_stdin_and_environment_and_no_shell(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    prog = script(
        tmp_path,
        "import json, os, sys\n"
        f"json.dump({{'argv': sys.argv, 'stdin': sys.stdin.read(), "
        f"'env': {{k: v for k, v in os.environ.items() if k.startswith('ACP_')}}}}, "
        f"open({str(out)!r}, 'w'))\n"
        "print('hello')\n",
    )
    hook = spec(type="exec", argv=[sys.executable, prog, "$(touch pwned)"])
    env = transport.exec_env(dict(os.environ), {"ACP_MSG_ID": "a\0b", "ACP_FROM": "beta"})
    result = await transport.run_exec(hook, b'{"x":"$(touch pwned)"}\n', env)
    assert result.outcome == schedule.OK and result.status == 0
    assert result.detail.startswith("hello")
    seen = json.loads(out.read_text())
    assert seen["argv"] == [prog, "$(touch pwned)"]  # passed as it is, never to a shell
    assert seen["stdin"] == '{"x":"$(touch pwned)"}\n'
    assert seen["env"]["ACP_MSG_ID"] == "a\\x00b" and seen["env"]["ACP_FROM"] == "beta"
    assert not (tmp_path / "pwned").exists()  # (the script ran in our cwd: nothing there either)
    assert "pwned" not in os.listdir()


async def test_exec_failures_are_retried_with_the_reason(tmp_path: Path) -> None:
    prog = script(tmp_path, "import sys; print('oops'); sys.exit(3)\n")
    result = await transport.run_exec(
        spec(type="exec", argv=[sys.executable, prog]), b"", dict(os.environ)
    )
    assert (result.outcome, result.status, result.error) == (schedule.RETRY, 3, "exit status 3")
    assert result.detail.startswith("oops")
    missing = await transport.run_exec(
        spec(type="exec", argv=[str(tmp_path / "nope")]), b"", dict(os.environ)
    )
    assert missing.outcome == schedule.RETRY
    assert missing.error is not None and missing.error.startswith("cannot run")


async def test_exec_past_its_timeout_is_killed_with_its_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    prog = script(
        tmp_path,
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)\n",
    )
    hook = spec(type="exec", argv=[sys.executable, prog], timeout=1)
    start = time.monotonic()
    result = await transport.run_exec(hook, b"", dict(os.environ))
    assert time.monotonic() - start < 10
    assert result.outcome == schedule.RETRY
    assert result.error == "still running after 1 s: killed"
    deadline = time.monotonic() + 5  # both die within the grace period
    while any(_alive(int(pid)) for pid in pids.read_text().split()):
        assert time.monotonic() < deadline, "the hook's process group outlived its timeout"
        await trio.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie is dead, waiting for its parent
    except FileNotFoundError:
        return False


async def test_exec_that_ignores_stdin_and_floods_output_is_fine(tmp_path: Path) -> None:
    prog = script(tmp_path, "import sys; sys.stdout.write('y' * 1_000_000)\n")
    hook = spec(type="exec", argv=[sys.executable, prog])
    result = await transport.run_exec(hook, b"z" * 300_000, dict(os.environ))
    assert result.outcome == schedule.OK and len(result.detail) <= 300


def test_idempotency_keys_are_header_safe_whatever_the_peer_chose() -> None:
    assert transport.idempotency_key("5fc85a12-416f-4cd5-b1f5-e8cd54608d14") == (
        "5fc85a12-416f-4cd5-b1f5-e8cd54608d14"
    )
    for odd in ("a b", "ü", "x\r\nX-Evil: 1", " lead", "\ud800"):
        key = transport.idempotency_key(odd)
        assert key.startswith("sha256:") and len(key) == 71
        assert transport.idempotency_key(odd) == key  # stable: the receiver can dedupe on it


def test_errors_never_carry_a_header_value() -> None:
    headers = {"Authorization": "Bearer s3cr3t-t0ken", "X-Key": "abcdefgh1234"}
    text = "Illegal header value b'Bearer s3cr3t-t0ken ' and abcdefgh1234"
    scrubbed = transport.scrub(text, headers)
    assert "s3cr3t" not in scrubbed and "abcdefgh1234" not in scrubbed


def test_retry_after_ignores_unicode_digits() -> None:
    assert transport.retry_after("²", time.time()) is None
    assert transport.retry_after(" 12 ", time.time()) == 12.0


async def test_an_id_that_is_no_header_still_goes_out(server: Server) -> None:
    hook = spec(type="http", url=f"http://127.0.0.1:{server.port}/")
    async with transport.new_http_client() as client:
        result = await transport.run_http(hook, client, {}, b"{}", "naïve id\n")
    assert result.outcome == schedule.OK
    assert server.seen[0][1]["Idempotency-Key"].startswith("sha256:")
