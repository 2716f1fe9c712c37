"""`harmony-agent completion SHELL`: the scripts it prints, and bash completing with one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Completes the words given as arguments the way bash does on Tab: through the function the
# script registered for `harmony-agent`, with the COMP_* variables bash would set.
COMPLETE = r"""
source "$SCRIPT"
function=$(complete -p harmony-agent | sed -E 's/.* -F ([^ ]+) .*/\1/')
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
"$function" harmony-agent "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def completion_script(shell: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "harmony_agent", "completion", shell],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "harmony-agent.bash"
    path.write_text(completion_script("bash"))
    return path


def complete(script: Path, cwd: Path, *words: str) -> list[str]:
    proc = subprocess.run(["bash", "--norc", "-c", COMPLETE, "complete", "harmony-agent", *words],
                          cwd=cwd, env={"SCRIPT": str(script), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_the_bash_script_is_valid_bash(bash_script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(bash_script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_bash_completes_commands_options_choices_and_files(
    bash_script: Path, tmp_path: Path
) -> None:
    (tmp_path / "turns.json").write_text("[]")
    (tmp_path / "tasks.jsonl").write_text("")
    assert complete(bash_script, tmp_path, "ru") == ["run"]
    assert set(complete(bash_script, tmp_path, "")) >= {"run", "chat", "tools", "completion"}
    options = complete(bash_script, tmp_path, "run", "--")
    assert {"--json", "--scripted", "--browser", "--search", "--browser-allow"} <= set(options)
    assert "--json" not in complete(bash_script, tmp_path, "chat", "--")  # run's, not chat's
    assert complete(bash_script, tmp_path, "run", "--br") == ["--browser", "--browser-allow"]
    assert complete(bash_script, tmp_path, "run", "--search", "") == [
        "duckduckgo", "searxng", "exa", "you"
    ]  # fmt: skip
    assert complete(bash_script, tmp_path, "run", "--scripted", "tu") == ["turns.json"]
    assert complete(bash_script, tmp_path, "run", "--batch", "ta") == ["tasks.jsonl"]
    assert complete(bash_script, tmp_path, "completion", "") == ["bash", "zsh", "fish"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts(shell: str) -> None:
    script = completion_script(shell)
    for word in ("run", "chat", "completion", "browser-allow", "searxng"):
        assert word in script
    if shell == "zsh":
        assert script.startswith("#compdef harmony-agent")
    if shutil.which(shell):  # check the syntax where the shell is installed
        check = ["zsh", "-n"] if shell == "zsh" else ["fish", "--no-execute"]
        proc = subprocess.run(check, input=script, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
