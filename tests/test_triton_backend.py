"""The Triton backend (model surgery on the PyTorch gpt-oss) against the PyTorch backend.

A tiny random fp32 checkpoint with MXFP4 experts; logits of an uncached forward, then greedy
generation through both engines (chunked prefill, KV cache reuse, one-token decode steps), so
both the prefill and the decode kernels run, with a window shorter than the prompt: the batching
engine (paged decode attention, several sequences per step, through the bucketed graphs' fixed
buffers) and `OneSequence` (one contiguous cache, the position in memory).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _support import in_turn

from harmony_agent.model import Sampling, load_model
from harmony_agent.model.checkpoint import write_random_checkpoint
from harmony_agent.model.config import ModelConfig
from harmony_agent.model.gpt_oss import GptOss
from harmony_agent.model.one_sequence import OneSequence
from harmony_agent.model.transformer import KVCache
from harmony_agent.model.triton.common import kernel_test_mode
from harmony_agent.model.triton.decode_graph import BUCKETS, DecodeStep, PagedDecodeGraphs

with kernel_test_mode() as MODE:
    pytest.importorskip("triton")
    from harmony_agent.model.triton.backend import TritonAttentionBlock, TritonBlock, TritonMLPBlock
    from harmony_agent.model.triton.moe import DECODE_MAX_TOKENS

if MODE == "unavailable":
    pytest.skip("triton imported without the interpreter: run in a subprocess by "
                "test_triton_interpreter.py", allow_module_level=True)  # fmt: skip
DEVICE = "cuda" if MODE == "gpu" else "cpu"

CONFIG = ModelConfig(
    num_hidden_layers=2, num_experts=4, experts_per_token=2, vocab_size=64, hidden_size=64,
    intermediate_size=64, head_dim=16, num_attention_heads=4, num_key_value_heads=2,
    sliding_window=4,
)  # fmt: skip
PROMPT = [5, 9, 13, 2, 7, 7, 30, 41, 1, 0, 22]
GREEDY = Sampling(temperature=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(
        tmp_path_factory.mktemp("ckpt"), CONFIG, dtype=torch.float32, seed=3
    )


def load(
    folder: Path, triton: bool, cuda_graph: bool | None = None, batching: bool = True
) -> GptOss:
    m = load_model(folder, device=DEVICE, backend="triton" if triton else "torch",
                   progress=False, max_context=32, experts="mxfp4", batching=batching,
                   cuda_graph=cuda_graph)  # fmt: skip
    m.prefill_chunk = 6  # two prefill chunks; the second one starts past the window
    return m


def round_robin(model: GptOss, prompts: list[list[int]], n: list[int]) -> list[list[int]]:
    return in_turn([model.generate(p, stop_tokens=[], max_tokens=m, sampling=GREEDY)
                    for p, m in zip(prompts, n, strict=True)])  # fmt: skip


def alone(model: GptOss, prompt: list[int], n: int) -> list[int]:
    model.reset()
    return list(model.generate(prompt, stop_tokens=[], max_tokens=n, sampling=GREEDY))


def test_surgery_swaps_the_modules(folder: Path) -> None:
    m = load(folder, triton=True)
    for block in m.transformer.block:
        assert isinstance(block.attn, TritonAttentionBlock)
        assert isinstance(block, TritonBlock) and isinstance(block.mlp, TritonMLPBlock)


def test_logits_and_greedy_tokens_match_torch(folder: Path) -> None:
    ref, tri = load(folder, triton=False), load(folder, triton=True)
    torch.testing.assert_close(tri.logits(PROMPT), ref.logits(PROMPT), rtol=1e-4, atol=1e-4)
    want = list(ref.generate(PROMPT, stop_tokens=[], max_tokens=3, sampling=GREEDY))
    got = list(tri.generate(PROMPT, stop_tokens=[], max_tokens=3, sampling=GREEDY))
    assert got == want
    # A prompt that diverges mid-prefix: the cache is reused up to there, then prefilled.
    prompt = [*PROMPT[:8], 3, 3]
    want = list(ref.generate(prompt, stop_tokens=[], max_tokens=1, sampling=GREEDY))
    assert list(tri.generate(prompt, stop_tokens=[], max_tokens=1, sampling=GREEDY)) == want


def test_decode_steps_with_the_position_in_memory_match_torch(folder: Path) -> None:
    """The step a CUDA graph replays (captured on a GPU, run as it is under the interpreter):
    one token at a time from position 0, past the window, logits and cache as the torch path."""
    prompt = PROMPT[:7]  # three steps past the window (each step is seconds under the interpreter)
    ref, tri = load(folder, triton=False), load(folder, triton=True, batching=False)
    engine = tri.engine
    assert isinstance(engine, OneSequence) and engine.cuda_graph
    engine.prefill(prompt[:1])  # allocates the cache; then every other token is a step
    for pos in range(1, len(prompt)):
        logits = engine.prefill(prompt[: pos + 1])
    assert isinstance(engine._step, DecodeStep)
    assert tri.graph_captured == (DEVICE == "cuda")
    torch.testing.assert_close(logits, ref.logits(prompt)[-1], rtol=1e-4, atol=1e-4)
    n = len(prompt)
    want = KVCache(CONFIG, n, torch.device(DEVICE), torch.float32)
    with torch.inference_mode():
        ref.transformer(torch.tensor(prompt, device=DEVICE), 0, want)
    assert engine.cache is not None
    for a, b in zip(want.k + want.v, engine.cache.k + engine.cache.v, strict=True):
        torch.testing.assert_close(b[:, :n], a, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(DEVICE == "cuda", reason="needs a capture that fails: CPU tensors")
def test_a_failed_capture_warns_and_decodes_eagerly(folder: Path) -> None:
    tri = load(folder, triton=True, batching=False).engine
    assert isinstance(tri, OneSequence)
    prompt = PROMPT[:6]  # one prefill chunk (each is seconds under the interpreter)
    want = tri.prefill(prompt).clone()
    tri.prefill(prompt[:-1])
    assert tri.cache is not None
    step = DecodeStep(tri.transformer, tri.cache, capture=True)  # no CUDA: capture must fail
    with pytest.warns(UserWarning, match="decoding without a CUDA graph"):
        logits = step(prompt[-1], len(prompt) - 1)
    assert not step.capture and step.graph is None
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)


def test_eager_decode_without_cuda_graph(folder: Path) -> None:
    ref = load(folder, triton=False)
    tri = load(folder, triton=True, cuda_graph=False, batching=False)
    want = list(ref.generate(PROMPT, stop_tokens=[], max_tokens=2, sampling=GREEDY))
    assert list(tri.generate(PROMPT, stop_tokens=[], max_tokens=2, sampling=GREEDY)) == want
    assert isinstance(tri.engine, OneSequence) and tri.engine._step is None


def test_batched_mxfp4_generation_equals_each_alone(folder: Path) -> None:
    """Two sequences with a shared prefix past the window: a stream joins the engine at its first
    token, so step 2 decodes the first alone (bucket 1) and step 3 both (bucket 2: the MoE
    kernels over both tokens). Graphs are captured on a GPU; on the CPU a capture fails, warns
    once and the steps run eagerly, through the same buffers."""
    prompts = [[*PROMPT[:7], 41], [*PROMPT[:7], 1, 0, 22, 3]]
    ref, tri = load(folder, triton=False), load(folder, triton=True)
    tri.prefill_chunk = 32  # a prompt in one step
    graphs = tri.engine.transformer
    assert isinstance(graphs, PagedDecodeGraphs) and graphs.capture == (DEVICE == "cuda")
    if DEVICE == "cpu":
        graphs.capture = True
        with pytest.warns(UserWarning, match="decoding without a CUDA graph"):
            got = round_robin(tri, prompts, [3, 2])
        assert not graphs.capture
    else:
        got = round_robin(tri, prompts, [3, 2])
    assert got == [alone(ref, p, m) for p, m in zip(prompts, [3, 2], strict=True)]
    assert sorted(graphs._buckets) == [1, 2] and tri.graph_captured == (DEVICE == "cuda")
    assert tri.stats.decode_steps == 2 and tri.stats.decode_tokens == 3


def test_batched_steps_in_buckets_equal_each_alone(folder: Path) -> None:
    """Five sequences of different lengths with a shared prefix longer than the window, consumed
    in turn. A prompt prefills in one step, so they join one step apart (steps of 1 to 4 rows:
    buckets 1, 2 and 4, padded), then step 6 decodes all five (no graph), and they end one by
    one. Dense experts keep the MoE cheap under the interpreter (and their host sync would fail
    a capture: the steps run eagerly, through the buckets' buffers)."""
    head = [5, 9, 13, 2, 7, 7, 30]
    tails = [[41], [1, 0, 22, 3, 8], [0, 22, 11, 11, 40, 2, 6, 1], [60], [3, 3]]
    prompts = [[*head, *tail] for tail in tails]  # a page each: all five run at once
    ref = load(folder, triton=False)
    tri = load_model(folder, device=DEVICE, backend="triton", progress=False, max_context=32,
                     cache_tokens=5 * 32, experts="dense", cuda_graph=True)  # fmt: skip
    tri.prefill_chunk = 32
    graphs = tri.engine.transformer
    assert isinstance(graphs, PagedDecodeGraphs)
    graphs.capture = False
    assert round_robin(tri, prompts, [6] * 5) == [alone(ref, p, 6) for p in prompts]
    assert sorted(graphs._buckets) == [1, 2, 4] and BUCKETS[-1] <= DECODE_MAX_TOKENS
    assert tri.stats.decode_tokens == 5 * 5


def test_cuda_graph_needs_the_triton_backend(folder: Path) -> None:
    with pytest.raises(ValueError, match="triton backend"):
        load(folder, triton=False, cuda_graph=True)


def test_device_bench_times_decode(tmp_path: Path) -> None:
    """`bench --device cuda`'s code path on the triton backend (figures meaningless here)."""
    from harmony_agent.model.bench_device import run_device_bench

    lines: list[str] = []
    summary = run_device_bench(
        preset="tiny", layers=1, device=DEVICE, backend="triton", prompt_lens=(20,),
        decode_tokens=2, print_fn=lines.append,
    )  # fmt: skip
    (row,) = summary["results"]  # type: ignore[misc]
    assert summary["cuda_graph"] == (DEVICE == "cuda")  # captured only on a GPU
    # The batching engine (the default) decodes in its bucket-1 graph; the bench times the same
    # steps without a graph only on OneSequence.
    assert row["decode_tok_s"] > 0 and row["decode_eager_tok_s"] is None


def test_lora_adapters_refuse_the_fused_blocks(folder: Path) -> None:
    from harmony_agent.model.train.lora import add_lora

    with pytest.raises(ValueError, match="torch backend"):
        add_lora(load(folder, triton=True).transformer, rank=2)


def test_dense_experts_keep_the_pytorch_moe_and_no_graph(folder: Path) -> None:
    ref = load(folder, triton=False)
    tri = load_model(folder, device=DEVICE, backend="triton", progress=False, max_context=32,
                     experts="dense")  # fmt: skip
    assert not isinstance(tri.engine.transformer, PagedDecodeGraphs)
    assert all(isinstance(b.attn, TritonAttentionBlock) for b in tri.transformer.block)
    torch.testing.assert_close(tri.logits(PROMPT), ref.logits(PROMPT), rtol=1e-4, atol=1e-4)
    want = list(ref.generate(PROMPT, stop_tokens=[], max_tokens=3, sampling=GREEDY))
    assert list(tri.generate(PROMPT, stop_tokens=[], max_tokens=3, sampling=GREEDY)) == want
