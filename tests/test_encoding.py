"""The harmony encoding loads offline, from the vocabulary shipped by bpe-openai."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harmony_agent import encoding
from harmony_agent.encoding import VOCAB_FILE, EncodingError, harmony_encoding, vocab_dir

ROOT = Path(__file__).parent.parent


def clean_env(home: Path) -> dict[str, str]:
    """No harmony variables, an empty HOME, and proxies that make any download fail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIKTOKEN", "HARMONY", "XDG"))}
    dead = "http://127.0.0.1:9"
    env.update(HOME=str(home), HTTPS_PROXY=dead, HTTP_PROXY=dead, https_proxy=dead, http_proxy=dead)
    return env


def test_loads_offline_in_a_clean_environment(tmp_path: Path) -> None:
    code = (
        "from harmony_agent.encoding import harmony_encoding\n"
        "e = harmony_encoding()\n"
        "print(e.decode(e.encode('<|start|>assistant', allowed_special='all')))\n"
    )
    command = [sys.executable, "-c", code]
    if shutil.which("unshare") and os.geteuid() == 0:
        command = ["unshare", "--net", *command]  # no network at all, not even loopback
    proc = subprocess.run(
        command, cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "<|start|>assistant"
    cached = tmp_path / ".cache" / "harmony-agent" / "encodings" / VOCAB_FILE
    assert encoding._file_is_valid(cached)


def test_special_tokens_match_the_design() -> None:
    e = harmony_encoding()
    ids = {
        t: e.encode(t, allowed_special="all")
        for t in (
            "<|start|>",
            "<|end|>",
            "<|message|>",
            "<|channel|>",
            "<|constrain|>",
            "<|return|>",
            "<|call|>",
        )
    }
    assert ids == {
        "<|start|>": [200006],
        "<|end|>": [200007],
        "<|message|>": [200008],
        "<|channel|>": [200005],
        "<|constrain|>": [200003],
        "<|return|>": [200002],
        "<|call|>": [200012],
    }
    assert sorted(e.stop_tokens_for_assistant_actions()) == [200002, 200012]


def test_corrupt_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    monkeypatch.setenv("HARMONY_AGENT_CACHE", str(tmp_path))
    cached = tmp_path / "encodings" / VOCAB_FILE
    cached.parent.mkdir()
    cached.write_bytes(b"garbage")
    assert vocab_dir() == cached.parent
    assert encoding._file_is_valid(cached)


def test_wrong_file_in_env_var_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / VOCAB_FILE).write_bytes(b"not a vocabulary")
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(tmp_path))
    with pytest.raises(EncodingError, match=r"sha256 mismatch\): replace it, or unset"):
        vocab_dir()
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(tmp_path / "nowhere"))
    with pytest.raises(EncodingError, match="does not exist"):
        vocab_dir()


def test_env_var_with_the_right_file_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    shutil.copy(vocab_dir() / VOCAB_FILE, tmp_path / VOCAB_FILE)
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(tmp_path))
    assert vocab_dir() == tmp_path
