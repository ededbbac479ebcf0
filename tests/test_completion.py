"""`acp completion SHELL` prints a script that the shell accepts and that completes acp."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from acp.cli import main


def _script(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["completion", shell]) == 0
    out = capsys.readouterr().out
    assert out.strip()
    return out


def _bash_complete(script: Path, *words: str) -> list[str]:
    """What bash offers for the last of ``words`` (``acp …``), as bash-completion would ask."""
    line = " ".join(words)
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMP_LINE='{line}'\n"
        "_acp\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_completes_commands_and_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "acp"
    script.write_text(_script("bash", capsys))
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "complete -F _acp acp" in script.read_text()
    assert {"status", "send", "daemon", "completion"} <= set(_bash_complete(script, "acp", ""))
    assert _bash_complete(script, "acp", "sta") == ["status"]
    assert "--timeout" in _bash_complete(script, "acp", "send", "--ti")


@pytest.mark.parametrize(
    ("shell", "marker", "check"),
    [("zsh", "#compdef acp", ["zsh", "-n"]), ("fish", "complete -c acp", ["fish", "--no-execute"])],
)
def test_zsh_and_fish_scripts(
    shell: str,
    marker: str,
    check: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = _script(shell, capsys)
    assert marker in text and "daemon" in text
    if shutil.which(check[0]) is not None:  # not installed by .ci/run: checked where present
        script = tmp_path / shell
        script.write_text(text)
        out = subprocess.run([*check, str(script)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr


def test_an_unknown_shell_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["completion", "tcsh"])
    assert exc.value.code == 2


@pytest.mark.skipif(shutil.which("zsh") is None, reason="no zsh (not installed by .ci/run)")
def test_zsh_loads_the_script_the_readme_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: `acp completion zsh > ~/.zsh/completions/_cyclopts_acp`, that directory on fpath."""
    completions = tmp_path / ".zsh" / "completions"
    completions.mkdir(parents=True)
    (completions / "_cyclopts_acp").write_text(_script("zsh", capsys))
    program = (
        "fpath=(~/.zsh/completions $fpath); autoload -Uz compinit; compinit -D; "
        'print -r -- "$_comps[acp]"'
    )
    out = subprocess.run(
        ["zsh", "-f", "-c", program],
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == "_cyclopts_acp", out.stdout + out.stderr
