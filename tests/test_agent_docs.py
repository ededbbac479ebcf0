"""What agents are told about acp is checked against acp itself.

The skill (contrib/skills/acp/SKILL.md and its copy in the Claude Code plugin), the plugin's
manifests and the README's "Use it from an agent" section are read by models, which run what they
show word for word. So every `acp ...` command line in them must parse with the real CLI parser
(parsed only: nothing is run), and the front matter and config files must be what OpenClaw,
Claude Code and Codex load.
"""

from __future__ import annotations

import json
import re
import shlex
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

import acp
from acp import errors
from acp.cli import app
from acp.proto.envelope import MAX_ENVELOPE

ROOT = Path(__file__).resolve().parent.parent
SKILL = ROOT / "contrib" / "skills" / "acp" / "SKILL.md"
PLUGIN = ROOT / "contrib" / "claude-code"
PLUGIN_SKILL = PLUGIN / "skills" / "acp" / "SKILL.md"
README = ROOT / "README.md"
AGENT_SECTION = "## Use it from an agent"

SHELL_LANGS = {"", "sh", "bash", "shell", "console"}
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
CONTROL = {"|", "||", "&", "&&", ";", ";;", "(", ")"}
REDIRECT = {"<", ">", ">>", "<<", ">&", "<&", ">|"}


# --- Markdown --------------------------------------------------------------------------------


def split_blocks(md: str) -> tuple[list[tuple[str, str]], str]:
    """Fenced code blocks as (language, text), and the Markdown outside them."""
    blocks: list[tuple[str, str]] = []
    prose: list[str] = []
    fence: str | None = None
    lang = ""
    body: list[str] = []
    for line in md.splitlines():
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence, lang, body = m.group(1), m.group(2).lower(), []
            else:
                prose.append(line)
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2):
            blocks.append((lang, textwrap.dedent("\n".join(body))))
            fence = None
        else:
            body.append(line)
    assert fence is None, "unclosed code block"
    return blocks, "\n".join(prose)


def shell_lines(md: str) -> list[str]:
    """Every shell command line: the lines of shell code blocks, and inline code starting `acp `."""
    blocks, prose = split_blocks(md)
    lines: list[str] = []
    for lang, text in blocks:
        if lang in SHELL_LANGS:
            text = re.sub(r"\\\n\s*", " ", text)  # continuation lines
            lines += [re.sub(r"^\s*\$\s+", "", ln).strip() for ln in text.splitlines()]
    spans = (" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose))
    lines += [span for span in spans if span.startswith("acp ")]  # not `acp` alone, or `acp.client`
    return [ln for ln in lines if ln]


def acp_commands(line: str) -> list[list[str]]:
    """The argv of each simple command in a shell line that runs acp (`a | acp b && acp c`)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    tokens = iter(lexer)
    for tok in tokens:
        if tok in CONTROL:
            commands.append([])
        elif tok in REDIRECT:
            next(tokens, None)  # and its target
        elif commands[-1] or not re.fullmatch(r"[A-Za-z_]\w*=.*", tok):  # skip VAR=value prefixes
            commands[-1].append(tok)
    return [argv for argv in commands if argv[:1] == ["acp"]]


def doc_commands(md: str) -> list[list[str]]:
    return [argv for line in shell_lines(md) for argv in acp_commands(line)]


def readme_agent_section() -> str:
    text = README.read_text()
    sections = re.split(r"(?m)^(?=## )", text)
    found = [i for i, s in enumerate(sections) if s.startswith(AGENT_SECTION + "\n")]
    assert len(found) == 1, f"README.md needs exactly one {AGENT_SECTION!r} section"
    assert sections[found[0] - 1].startswith("## From a program"), (
        f"{AGENT_SECTION!r} should follow '## From a program'"
    )
    return sections[found[0]]


def check_parses(argv: list[str]) -> None:
    """Parse an acp command line the way `acp` would, without running the command."""
    if argv[1:2] == ["mcp"] and "mcp" not in app:
        # `acp mcp` (the MCP server, extra acp-daemon[mcp]) is being added to acp.cli at the same
        # time as these docs. Until it is registered there is no parser to check it with; once it
        # is, this line is checked like every other.
        return
    assert len(argv) > 1 and argv[1] in app and not argv[1].startswith("-"), (
        f"not an acp command: {shlex.join(argv)}"
    )
    try:
        app.parse_args(argv[1:], exit_on_error=False, print_error=False)
    except Exception as exc:
        pytest.fail(f"{shlex.join(argv)}: {type(exc).__name__}: {exc}")


# --- Front matter ----------------------------------------------------------------------------

# YAML would read these plain scalars as something other than a string.
YAML_TYPED = re.compile(
    r"(?i)~|null|true|false|yes|no|on|off|y|n|[-+]?(\d[\d_]*(\.\d*)?|\.\d+)(e[-+]?\d+)?|0x[\da-f]+"
)


def front_matter(text: str) -> tuple[dict[str, Any], str]:
    """A tiny strict parser for the subset of YAML that skill front matter uses.

    One `key: value` per line, no nesting by indentation; a value is a JSON object or array (which
    is a YAML flow collection), a double-quoted JSON string, or a plain scalar that YAML reads as
    the same string (so no ': ', ' #', leading indicator or value YAML would type). This is also
    the single-line form OpenClaw's fallback parser accepts. Anything else fails loudly, rather
    than being read differently from a real YAML parser.
    """
    lines = text.split("\n")
    assert lines[0] == "---", "SKILL.md must start with a '---' line"
    end = lines.index("---", 1)
    fields: dict[str, Any] = {}
    for n, line in enumerate(lines[1:end], start=2):
        m = re.fullmatch(r"([A-Za-z][\w-]*): (\S.*)", line)
        assert m, f"front matter line {n}: want 'key: value' on one line, got {line!r}"
        key, raw = m.group(1), m.group(2).rstrip()
        assert key not in fields, f"front matter line {n}: {key} given twice"
        if raw[0] in '{["':
            try:
                fields[key] = json.loads(raw)
            except ValueError as exc:
                pytest.fail(f"front matter line {n}: {key} is not valid JSON/YAML flow: {exc}")
        else:
            assert raw[0] not in "-?:,]}#&*!|>'%@`", f"front matter line {n}: {key} starts oddly"
            assert ": " not in raw and " #" not in raw, f"front matter line {n}: quote {key}"
            assert not YAML_TYPED.fullmatch(raw), f"front matter line {n}: YAML types {raw!r}"
            fields[key] = raw
    return fields, "\n".join(lines[end + 1 :])


# --- The skill -------------------------------------------------------------------------------


def test_skill_front_matter() -> None:
    fields, body = front_matter(SKILL.read_text())
    assert fields["name"] == "acp"
    assert isinstance(fields["description"], str) and 20 <= len(fields["description"]) <= 1024
    assert fields["metadata"]["openclaw"]["requires"]["bins"] == ["acp"]
    assert body.strip()


def test_skill_front_matter_is_yaml() -> None:
    """The same answer from a real YAML parser, where one is installed (PyYAML is optional)."""
    yaml = pytest.importorskip("yaml")
    text = SKILL.read_text()
    assert yaml.safe_load(text.split("---\n")[1]) == front_matter(text)[0]


def test_front_matter_parser_is_strict() -> None:
    for bad in [
        "---\nname: acp\nname: acp\n---\n",
        "---\ndescription: a: b\n---\n",
        "---\nmetadata:\n  openclaw: {}\n---\n",
        "---\nname: true\n---\n",
        '---\nmetadata: {"openclaw": \n---\n',
    ]:
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            front_matter(bad)


def test_skill_commands_parse() -> None:
    commands = doc_commands(SKILL.read_text())
    for argv in commands:
        check_parses(argv)
    used = {argv[1] for argv in commands}
    for needed in ["send", "delegate", "notify", "reply", "inbox", "ack", "listen", "peers"]:
        assert needed in used, f"SKILL.md shows no `acp {needed}` example"
    assert ["acp", "listen", "--peek"] in commands


def test_skill_states_the_limits() -> None:
    text = SKILL.read_text()
    codes = [v for k, v in vars(errors).items() if k.startswith("EXIT_")]
    for code in codes:
        assert re.search(rf"\b{code}\b", text), f"SKILL.md does not mention exit code {code}"
    assert str(MAX_ENVELOPE) in text


def test_plugin_skill_is_a_copy() -> None:
    assert PLUGIN_SKILL.read_bytes() == SKILL.read_bytes(), (
        "contrib/claude-code/skills/acp/SKILL.md differs from contrib/skills/acp/SKILL.md: "
        "cp contrib/skills/acp/SKILL.md contrib/claude-code/skills/acp/SKILL.md"
    )


# --- The Claude Code plugin ------------------------------------------------------------------


def test_plugin_manifest() -> None:
    manifest = json.loads((PLUGIN / ".claude-plugin" / "plugin.json").read_text())
    assert manifest["name"] == "acp"
    assert isinstance(manifest["description"], str) and manifest["description"]
    assert manifest["version"] == acp.__version__, "bump the plugin's version with acp's"
    assert isinstance(manifest["author"]["name"], str) and manifest["author"]["name"]


def test_plugin_mcp_server() -> None:
    servers = json.loads((PLUGIN / ".mcp.json").read_text())["mcpServers"]
    assert servers["acp"]["command"] == "acp"
    assert servers["acp"]["args"] == ["mcp"]
    check_parses(["acp", *servers["acp"]["args"]])


def test_plugin_monitor() -> None:
    monitors = json.loads((PLUGIN / "monitors" / "monitors.json").read_text())
    assert isinstance(monitors, list) and monitors
    for monitor in monitors:
        assert {"name", "command", "description"} <= monitor.keys()
        assert monitor.get("when", "always") == "always"
        (argv,) = acp_commands(monitor["command"])
        check_parses(argv)
        assert argv[1] == "listen" and "--peek" in argv, "the monitor must not mark anything read"


# --- The README ------------------------------------------------------------------------------


def test_readme_agent_section_commands_parse() -> None:
    section = readme_agent_section()
    commands = doc_commands(section)
    for argv in commands:
        check_parses(argv)
    assert ["acp", "mcp"] in commands
    assert any(argv[1:3] == ["listen", "--peek"] for argv in commands)


def test_readme_agent_section_snippets() -> None:
    blocks, _ = split_blocks(readme_agent_section())
    by_lang: dict[str, list[str]] = {}
    for lang, text in blocks:
        by_lang.setdefault(lang, []).append(text)
    (codex,) = by_lang["toml"]
    assert tomllib.loads(codex)["mcp_servers"]["acp"] == {"command": "acp", "args": ["mcp"]}
    (openclaw,) = by_lang["json"]
    assert json.loads(openclaw)["mcp"]["servers"]["acp"] == {"command": "acp", "args": ["mcp"]}
    (python,) = by_lang["python"]
    compile(python, "README.md", "exec")
    assert "listen(ack=True, reconnect=True)" in python


def test_extraction() -> None:
    """The extraction itself: pipelines, prompts, comments, continuations and inline code."""
    md = (
        "Run `acp inbox --json | jq .next` or `acp.client`, not `claude mcp add acp -- acp mcp`.\n"
        "```sh\n$ acp send bob hi \\\n    --wait  # and wait\nX=1 acp peers && acp ack --up-to 3\n```\n"
        "```python\nacp = 1\n```\n"
    )
    assert doc_commands(md) == [
        ["acp", "send", "bob", "hi", "--wait"],
        ["acp", "peers"],
        ["acp", "ack", "--up-to", "3"],
        ["acp", "inbox", "--json"],
    ]
    with pytest.raises(pytest.fail.Exception):
        check_parses(["acp", "send"])  # no AGENT (MESSAGE may come from stdin or --file)
