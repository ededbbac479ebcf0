"""The repository's documents stand alone: nothing points at files its users do not have.

The protocol and the house style used to live beside the repository, in a directory users of the
repository never see. docs/protocol.md and docs/architecture.md now say everything that is needed,
so no file may send a reader outside the repository, and every relative link in README.md and
docs/*.md must lead to a file (and, for a Markdown file, a heading) that exists.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Built from pieces so that this file does not match itself.
FORBIDDEN = ("../" + "shared", "SPEC-acp-v0.1" + ".md", "STYLE" + ".md")

# Never part of the repository's content: version control, the virtualenv, build and tool output
# (all in .gitignore). Only used when git cannot list the files.
SKIP_DIRS = {".git", ".venv", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
SKIP_DIRS |= {".hypothesis", "build", "dist"}


def repository_files() -> list[Path]:
    """Tracked files and new ones not ignored by .gitignore; a plain walk without git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        files = []
        for top, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            files += [Path(top) / n for n in names]
        return sorted(files)
    paths = {ROOT / p for p in out.decode("utf-8", "surrogateescape").split("\0") if p}
    return sorted(p for p in paths if p.is_file() and not {".git", ".venv"} & set(p.parts))


def test_no_file_points_outside_the_repository() -> None:
    files = repository_files()
    assert any(p.name == "protocol.md" for p in files), "the file listing found nothing"
    hits = []
    for path in files:
        data = path.read_bytes()
        for needle in FORBIDDEN:
            if needle.encode() in data:
                line = data[: data.index(needle.encode())].count(b"\n") + 1
                hits.append(f"{path.relative_to(ROOT)}:{line}: {needle}")
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)


# -- links -----------------------------------------------------------------------------------------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _prose(text: str) -> str:
    """The Markdown without code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(path: Path) -> list[str]:
    prose = _prose(path.read_text("utf-8"))
    return INLINE_LINK.findall(prose) + REFERENCE.findall(prose)


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, -1 for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text("utf-8")).splitlines():
        m = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_existing_files(doc: Path) -> None:
    broken = []
    for target in links(doc):
        if SCHEME.match(target):
            continue  # http:, https:, mailto: ...
        file_part, _, fragment = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif ROOT != dest and ROOT not in dest.parents:
            broken.append(f"{target}: outside the repository")
        elif fragment and dest.suffix == ".md" and fragment.lower() not in anchors(dest):
            broken.append(f"{target}: no heading #{fragment} in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_the_link_finder_finds_links() -> None:
    """Guard against a regex that silently matches nothing."""
    readme = links(ROOT / "README.md")
    assert "docs/protocol.md" in readme and "docs/architecture.md" in readme
    assert "#81-the-durable-inbox" in links(ROOT / "docs" / "protocol.md")
