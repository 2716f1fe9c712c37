"""`harmony-agent bench --llama-cpp DIR` against the real cached llama.cpp build
(tests/_llamacpp.py builds it once, ~8 minutes on 2 cores): llama-bench on a GGUF of the same
MXFP4 slice ours and transformers run, as a third row with ratios (the tiny slice's vocabulary
is too small for llama.cpp's converter, so our writer makes its GGUF: test_remote_llamacpp.py
checks the two write the same file); a folder without llama-bench is a one-line error before
any work."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from _llamacpp import LlamaCpp

from harmony_agent.encoding import VOCAB_SIZE
from harmony_agent.model.bench import (
    llama_cpp_gguf,
)
from harmony_agent.model.cli import add_model_commands
from harmony_agent.model.loading import load_model


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_model_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.handler(args))


def same_weights(a: Path, b: Path) -> bool:
    want = load_model(a, progress=False).transformer.state_dict()
    got = load_model(b, progress=False).transformer.state_dict()
    return want.keys() == got.keys() and all(torch.equal(t, want[n]) for n, t in got.items())


def test_bench_times_llama_cpp_on_the_same_slice(
    llama: LlamaCpp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--preset", "tiny", "--layers", "2", "--prompt-len", "12", "--decode", "3"]
    args += ["--rounds", "1", "--bandwidth-mib", "16", "--threads", "1"]
    assert run("bench", *args, "--workdir", str(tmp_path), "--llama-cpp", str(llama.root)) == 0
    out = capsys.readouterr().out
    rows = [line.split(" (")[0] for line in out.splitlines() if " tok/s  decode " in line]
    assert rows == ["transformers", "ours", "llama.cpp"]
    assert "ours / transformers: decode" in out and "ours / llama.cpp: decode" in out
    # llama.cpp's converter takes only the whole vocabulary, not the tiny preset's 512 tokens
    assert f"by our GGUF writer (convert_hf_to_gguf.py takes only the whole {VOCAB_SIZE}" in out

    summary = json.loads((tmp_path / "last_bench.json").read_text())
    names = [r["name"] for r in summary["results"]]
    assert [n.split(" (")[0] for n in names] == rows
    theirs = summary["results"][2]
    assert theirs["prefill_tok_s"] > 0 and theirs["decode_tok_s"] > 0
    assert set(summary["ratios"]) == {names[0], names[2]}
    assert all(share > 0 for share in summary["decode_roofline_share"].values())
    # llama.cpp reads MXFP4 experts as ours does; transformers computes on them dequantised
    per_token = summary["decode_gb_per_token"]
    assert per_token[names[2]] == per_token[names[1]] < per_token[names[0]]
    # every leg ran the same weights: the slice has MXFP4 experts, and the GGUF holds them
    (folder,) = (p for p in tmp_path.iterdir() if p.is_dir())
    (gguf,) = tmp_path.glob("*.gguf")
    assert folder.name.endswith("-mxfp4") and same_weights(folder, gguf)
    written = gguf.stat().st_mtime_ns
    assert llama_cpp_gguf(folder, tmp_path, llama.converter)[0] == gguf  # reused, not rewritten
    assert gguf.stat().st_mtime_ns == written


def test_a_folder_without_llama_bench_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-llama.cpp"
    assert run("bench", "--llama-cpp", str(missing), "--workdir", str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"harmony-agent: error: no llama-bench in {missing} (looked in ")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before writing a slice
