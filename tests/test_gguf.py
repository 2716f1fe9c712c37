"""GGUF in and out without llama.cpp: our writer and reader are exact inverses, gguf-py's own
MXFP4 dequantizer reads our expert bytes as the values we meant, GGUF files load as models and
convert from the CLI, and bad files are one-line errors. (llama.cpp itself reading our files,
and us reading its converter's, is in test_remote_llamacpp.py.)"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from harmony_agent.agent.cli import main as cli_main
from harmony_agent.model.checkpoint import Checkpoint, CheckpointError, write_random_checkpoint
from harmony_agent.model.config import ModelConfig
from harmony_agent.model.gguf import GgufFile, convert_from_gguf, convert_to_gguf, write_gguf
from harmony_agent.model.loading import load_model
from harmony_agent.model.mxfp4 import dequantize

SMALL = ModelConfig(
    num_hidden_layers=2, num_experts=4, experts_per_token=2, vocab_size=512, hidden_size=64,
    intermediate_size=64, head_dim=16, num_attention_heads=4, num_key_value_heads=2,
    sliding_window=4,
)  # fmt: skip
TOKENS = [1, 5, 9, 200, 17, 3, 44, 12]

pytestmark = pytest.mark.usefixtures("one_thread")


def tensors(source: Checkpoint | GgufFile) -> dict[str, torch.Tensor]:
    return dict(source.tensors())


@pytest.mark.parametrize(
    ("mxfp4", "dtype"),
    [(True, torch.bfloat16), (False, torch.bfloat16), (True, torch.float32)],
    ids=["mxfp4-bf16", "dense-bf16", "mxfp4-fp32"],
)
def test_writing_then_reading_gives_back_every_tensor_exactly(
    tmp_path: Path, mxfp4: bool, dtype: torch.dtype
) -> None:
    folder = write_random_checkpoint(tmp_path / "ckpt", SMALL, mxfp4=mxfp4, dtype=dtype)
    path = convert_to_gguf(folder, tmp_path / "model.gguf")
    read = GgufFile(path)
    assert read.config == SMALL and read.packed == mxfp4 and read.dense_dtype == dtype
    want, got = tensors(Checkpoint(folder)), tensors(read)
    assert list(got) == list(want)
    for name, t in want.items():
        # norms, biases and sinks are F32 in a GGUF: exact for bf16 values
        assert torch.equal(got[name], t.to(got[name].dtype)), name
    back = convert_from_gguf(path, tmp_path / "back", layout="hf")
    assert all(torch.equal(t, want[n].to(t.dtype)) for n, t in tensors(Checkpoint(back)).items())


def test_gguf_pys_mxfp4_dequantizer_reads_our_expert_bytes_as_our_values(tmp_path: Path) -> None:
    folder = write_random_checkpoint(tmp_path / "ckpt", SMALL, mxfp4=True)
    ckpt = tensors(Checkpoint(folder))
    path = convert_to_gguf(folder, tmp_path / "model.gguf")
    stored = {t.name: t for t in gguf.GGUFReader(path).tensors}
    for n in range(SMALL.num_hidden_layers):
        mlp1 = dequantize(ckpt[f"block.{n}.mlp.mlp1_weight.blocks"],
                          ckpt[f"block.{n}.mlp.mlp1_weight.scales"], torch.float32)  # fmt: skip
        mlp2 = dequantize(ckpt[f"block.{n}.mlp.mlp2_weight.blocks"],
                          ckpt[f"block.{n}.mlp.mlp2_weight.scales"], torch.float32)  # fmt: skip
        for name, want in [("gate", mlp1[:, 0::2]), ("up", mlp1[:, 1::2]), ("down", mlp2)]:
            t = stored[f"blk.{n}.ffn_{name}_exps.weight"]
            assert t.tensor_type == gguf.GGMLQuantizationType.MXFP4
            values = gguf.quants.dequantize(t.data, t.tensor_type)  # ggml's own reading
            np.testing.assert_array_equal(values, want.numpy())


def test_a_gguf_loads_as_the_same_model(tmp_path: Path) -> None:
    folder = write_random_checkpoint(tmp_path / "ckpt", SMALL, layout="hf", dtype=torch.float32)
    path = convert_to_gguf(folder, tmp_path / "model.gguf")
    ours = load_model(folder, progress=False).logits(TOKENS)
    assert torch.equal(load_model(path, progress=False).logits(TOKENS), ours)
    assert load_model(path, progress=False).config == SMALL


def test_the_writer_refuses_what_llama_cpp_cannot_represent(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"swiglu_limit at 7.0; this model has 5.0"):
        write_gguf(tmp_path / "x.gguf", ModelConfig(swiglu_limit=5.0), iter([]), packed=True)
    wrong = iter([("embedding.weight", torch.zeros(SMALL.vocab_size, SMALL.hidden_size + 1))])
    with pytest.raises(ValueError, match=r"embedding.weight: tensor token_embd.weight .* does "
                                         r"not fit the config"):  # fmt: skip
        write_gguf(tmp_path / "y.gguf", SMALL, wrong, packed=True)
    short = iter([("embedding.weight", torch.zeros(SMALL.vocab_size, SMALL.hidden_size))])
    with pytest.raises(ValueError, match=r"the tensors ended before blk.0.attn_norm.weight"):
        write_gguf(tmp_path / "z.gguf", SMALL, short, packed=True)


def test_bad_gguf_files_are_one_line_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all, just bytes")
    with pytest.raises(CheckpointError, match=r"junk.gguf: not a readable GGUF file"):
        GgufFile(junk)
    with pytest.raises(CheckpointError, match=r"none.gguf: no such GGUF file"):
        GgufFile(tmp_path / "none.gguf")
    other = gguf.GGUFWriter(tmp_path / "llama.gguf", "llama")
    other.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    other.write_header_to_file()
    other.write_kv_data_to_file()
    other.write_tensors_to_file()
    other.close()
    with pytest.raises(CheckpointError, match=r"a GGUF of architecture 'llama', not gpt-oss"):
        GgufFile(tmp_path / "llama.gguf")


def test_convert_to_and_from_gguf_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_random_checkpoint(tmp_path / "ckpt", SMALL)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["convert", "ckpt", "model.gguf"]) == 0
    assert capsys.readouterr().out == "wrote model.gguf (GGUF)\n"
    assert cli_main(["convert", "model.gguf", "back", "--layout", "original"]) == 0
    want = tensors(Checkpoint(folder))
    assert all(torch.equal(t, want[n]) for n, t in tensors(Checkpoint(tmp_path / "back")).items())
    capsys.readouterr()
    for args, message in [
        (["ckpt", "model.gguf"], "model.gguf exists; pass --force to overwrite it"),
        (["ckpt", "x.gguf", "--layout", "hf"], "--layout is for a checkpoint folder; DST is a "),
        (["ckpt", "out"], "give --layout original or hf for the folder to write"),
        (["model.gguf", "ckpt", "--layout", "hf"], "ckpt is not empty; pass --force"),
        (["ckpt", "back"], "give --layout"),
    ]:
        assert cli_main(["convert", *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"harmony-agent: error: {message}") and err.count("\n") == 1, err
