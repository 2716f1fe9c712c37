"""The model subcommands: random-checkpoint, inspect, convert, bench."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from harmony_agent.model import load_model
from harmony_agent.model.checkpoint import Checkpoint
from harmony_agent.model.cli import add_model_commands

pytestmark = pytest.mark.usefixtures("one_thread")


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_model_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.handler(args))


def test_random_inspect_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    assert run("random-checkpoint", str(src), "--preset", "tiny", "--layers", "2", "--dtype",
               "fp32") == 0  # fmt: skip
    assert Checkpoint(src).config.num_hidden_layers == 2 and Checkpoint(src).packed
    assert run("inspect", str(src), "--tensors") == 0
    out = capsys.readouterr().out
    assert "original layout" in out and "experts MXFP4" in out
    assert "block.1.mlp.mlp1_weight.blocks" in out and "KV cache" in out
    assert run("convert", str(src), str(dst), "--layout", "hf", "--dense") == 0
    assert Checkpoint(dst).layout == "hf" and not Checkpoint(dst).packed
    a = load_model(src, progress=False).logits([1, 2, 3])
    b = load_model(dst, progress=False).logits([1, 2, 3])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # Weights are never overwritten silently.
    weights = sorted(f.stat().st_mtime_ns for f in dst.rglob("*.safetensors"))
    capsys.readouterr()
    assert run("convert", str(src), str(dst), "--layout", "hf") == 1
    assert run("random-checkpoint", str(src), "--preset", "tiny") == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"harmony-agent: error: {dst} is not empty; pass --force to overwrite what it holds",
        f"harmony-agent: error: {src} is not empty; pass --force to overwrite what it holds",
    ]
    assert sorted(f.stat().st_mtime_ns for f in dst.rglob("*.safetensors")) == weights
    assert run("convert", str(src), str(dst), "--layout", "hf", "--force") == 0


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("inspect", str(tmp_path / "missing")) == 1
    err = capsys.readouterr().err
    assert err.startswith("harmony-agent: error: ") and "no such checkpoint folder" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert run("convert", str(tmp_path / "missing"), str(tmp_path / "x"), "--layout", "hf") == 1
    # A truncated file is broken, not a healthy checkpoint.
    ckpt = tmp_path / "ckpt"
    assert run("random-checkpoint", str(ckpt), "--preset", "tiny", "--layers", "1") == 0
    weights = next(ckpt.rglob("*.safetensors"))
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    capsys.readouterr()
    assert run("inspect", str(ckpt)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken file" in err and "re-download it" in err


def test_bench_runs_on_a_tiny_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--preset", "tiny", "--layers", "2", "--prompt-len", "12", "--decode", "3"]
    args += ["--rounds", "1", "--bandwidth-mib", "16", "--threads", "1"]
    args += ["--workdir", str(tmp_path), "--our-experts", "mxfp4"]
    code = run("bench", *args)
    assert code == 0
    out = capsys.readouterr().out
    assert "ours / transformers: decode" in out and "roofline" in out
    # Each engine's roofline counts what it reads: packed experts at 17/32 byte a weight.
    per_token = json.loads((tmp_path / "last_bench.json").read_text())["decode_gb_per_token"]
    ours = next(v for k, v in per_token.items() if k.startswith("ours"))
    theirs = next(v for k, v in per_token.items() if k.startswith("transformers"))
    assert ours < theirs
