"""Checkpoint folders: layouts, conversion, and one-line errors for broken ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harmony_agent.model import load_model
from harmony_agent.model.checkpoint import (
    Checkpoint,
    CheckpointError,
    convert_checkpoint,
    write_random_checkpoint,
)
from harmony_agent.model.config import PRESETS, ModelConfig
from harmony_agent.model.transformer import Block, DenseExperts

TINY = ModelConfig(
    num_hidden_layers=2, num_experts=4, experts_per_token=2, vocab_size=50, hidden_size=32,
    intermediate_size=32, head_dim=8, num_attention_heads=4, num_key_value_heads=2,
    sliding_window=4,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


TOKENS = [1, 2, 3, 4, 5, 6, 7]


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return write_random_checkpoint(tmp_path / "ckpt", TINY, dtype=torch.float32)


def logits(path: Path, **kw: object) -> torch.Tensor:
    return load_model(path, progress=False, **kw).logits(TOKENS)  # type: ignore[arg-type]


def test_layouts_detected(tmp_path: Path, ckpt: Path) -> None:
    assert Checkpoint(ckpt).layout == "original"
    hf = write_random_checkpoint(tmp_path / "hf", TINY, layout="hf")
    assert Checkpoint(hf).layout == "hf" and Checkpoint(hf).config == TINY
    assert Checkpoint(ckpt).config == TINY


def test_repo_folder_holding_original(tmp_path: Path, ckpt: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(ckpt, repo / "original")
    torch.testing.assert_close(logits(repo), logits(ckpt), atol=0, rtol=0)


@pytest.mark.parametrize("layout", ["original", "hf"])
@pytest.mark.parametrize("mxfp4", [True, False])
def test_convert_preserves_the_model(tmp_path: Path, ckpt: Path, layout: str, mxfp4: bool) -> None:
    out = convert_checkpoint(ckpt, tmp_path / "out", layout=layout, mxfp4=mxfp4)  # type: ignore[arg-type]
    assert Checkpoint(out).layout == layout and Checkpoint(out).packed == mxfp4
    torch.testing.assert_close(logits(out), logits(ckpt), atol=1e-5, rtol=1e-5)


def test_quantising_dense_experts(tmp_path: Path) -> None:
    dense = write_random_checkpoint(tmp_path / "d", TINY, mxfp4=False, dtype=torch.float32)
    packed = convert_checkpoint(dense, tmp_path / "p", layout="hf", mxfp4=True)
    a, b = logits(dense), logits(packed)
    assert (a - b).abs().max() < 0.25 * a.abs().max()  # FP4 rounding: close, not equal
    again = convert_checkpoint(packed, tmp_path / "p2", layout="original", mxfp4=True)
    torch.testing.assert_close(logits(again), b, atol=0, rtol=0)


def test_dtype_and_experts_modes(ckpt: Path) -> None:
    m = load_model(ckpt, dtype="bf16", experts="dense", progress=False)
    assert m.dtype == torch.bfloat16
    block = m.transformer.block[0]
    assert isinstance(block, Block)
    assert isinstance(block.mlp.experts, DenseExperts)
    assert block.mlp.experts.mlp1_weight.dtype == torch.bfloat16
    assert block.attn.norm.scale.dtype == torch.float32


def test_preset_shapes() -> None:
    c = PRESETS["20b"]
    counts = c.param_counts()
    assert 20e9 < sum(counts.values()) < 22e9  # gpt-oss-20b: 20.9B parameters
    assert 3.4e9 < c.active_params_per_token() < 3.8e9  # 3.6B active
    assert 116e9 < sum(PRESETS["120b"].param_counts().values()) < 118e9


# --- errors: one line, naming what is wrong ------------------------------------------------


def one_line_error(path: Path, match: str, **kw: object) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        load_model(path, progress=False, **kw)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_folder(tmp_path: Path) -> None:
    one_line_error(tmp_path / "nope", "no such checkpoint folder")


def test_file_instead_of_folder(ckpt: Path) -> None:
    one_line_error(ckpt / "config.json", "not a folder")


def test_missing_config(ckpt: Path) -> None:
    (ckpt / "config.json").unlink()
    one_line_error(ckpt, "no config.json")


def test_unknown_layout(ckpt: Path) -> None:
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    one_line_error(ckpt, "unknown layout")


def test_config_missing_key(ckpt: Path) -> None:
    data = json.loads((ckpt / "config.json").read_text())
    del data["hidden_size"]
    (ckpt / "config.json").write_text(json.dumps(data))
    one_line_error(ckpt, "missing key hidden_size")


def test_no_weights(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()
    one_line_error(ckpt, "no \\*.safetensors")


def test_corrupt_weights(ckpt: Path) -> None:
    (ckpt / "model.safetensors").write_bytes(b"\x05garbage")
    one_line_error(ckpt, "not a readable safetensors file")


def test_truncated_weights_are_called_broken(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:
        f.truncate(size - 1000)  # a download cut short
    message = one_line_error(ckpt, "broken file")
    assert f"{size - 1000} bytes where its header promises {size}" in message
    assert "truncated" in message and "re-download it" in message
    assert str(weights) in message


def _edit(ckpt: Path, edit: object) -> None:
    sd = load_file(ckpt / "model.safetensors")
    edit(sd)  # type: ignore[operator]
    save_file(sd, ckpt / "model.safetensors")


def test_missing_tensor(ckpt: Path) -> None:
    _edit(ckpt, lambda sd: sd.pop("block.1.attn.sinks"))
    one_line_error(ckpt, "missing tensor block.1.attn.sinks")


def test_wrong_shape(ckpt: Path) -> None:
    _edit(ckpt, lambda sd: sd.update({"block.0.attn.sinks": torch.zeros(5)}))
    one_line_error(ckpt, r"block.0.attn.sinks has shape \(5,\) but config.json implies \(4,\)")


def test_config_disagrees_with_tensors(ckpt: Path) -> None:
    data = json.loads((ckpt / "config.json").read_text())
    data["num_hidden_layers"] = 1
    (ckpt / "config.json").write_text(json.dumps(data))
    one_line_error(ckpt, "tensors for layer 1 but config.json says num_hidden_layers=1")
    data["num_hidden_layers"], data["hidden_size"] = 2, 64
    (ckpt / "config.json").write_text(json.dumps(data))
    one_line_error(ckpt, "embedding.weight has shape")


def test_missing_shard_named_in_index(tmp_path: Path) -> None:
    hf = write_random_checkpoint(tmp_path / "hf", TINY, layout="hf", shard_bytes=4000)
    shards = sorted(hf.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    one_line_error(hf, "missing \\(named in model.safetensors.index.json\\)")


def test_triton_backend_needs_cuda_or_the_interpreter(ckpt: Path) -> None:
    # A fresh process: in this one the triton tests may have imported triton's interpreter.
    code = (
        "from harmony_agent.model import load_model\n"
        f"load_model({str(ckpt)!r}, device='cpu', backend='triton')"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, timeout=120)  # fmt: skip
    assert "the triton backend needs a CUDA device (got cpu)" in proc.stderr
    with pytest.raises(ValueError, match="unknown backend"):
        load_model(ckpt, backend="jax", progress=False)


def test_progress_bar_does_not_disturb_loading(
    ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = load_model(ckpt, progress=True).logits(TOKENS)
    torch.testing.assert_close(a, logits(ckpt), atol=0, rtol=0)
    assert capsys.readouterr().out == ""  # the bar goes to stderr, never stdout
