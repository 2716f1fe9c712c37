"""Generation with the PyTorch gpt-oss: cache reuse, stop tokens, sampling, precisions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harmony_agent.model import Model, Sampling, load_model
from harmony_agent.model.checkpoint import write_random_checkpoint
from harmony_agent.model.config import ModelConfig
from harmony_agent.model.gpt_oss import GptOss

CONFIG = ModelConfig(
    num_hidden_layers=4, num_experts=6, experts_per_token=2, vocab_size=64, hidden_size=64,
    intermediate_size=64, head_dim=16, num_attention_heads=4, num_key_value_heads=2,
    sliding_window=8,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


GREEDY = Sampling(temperature=0)
PROMPT = [5, 9, 13, 2, 7, 7, 30, 41, 1, 0, 22, 63]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(
        tmp_path_factory.mktemp("ckpt"), CONFIG, dtype=torch.float32, seed=7
    )


@pytest.fixture
def model(folder: Path) -> GptOss:
    m = load_model(folder, progress=False, max_context=128)
    m.prefill_chunk = 5  # several chunks per prompt, straddling the window
    return m


def naive_greedy(m: GptOss, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by full uncached forwards."""
    tokens = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            tokens.append(int(m.transformer(torch.tensor(tokens))[-1].argmax()))
    return tokens[len(prompt) :]


def test_implements_the_protocol(model: GptOss) -> None:
    assert isinstance(model, Model)


def test_cached_greedy_equals_uncached_greedy(model: GptOss) -> None:
    out = list(model.generate(PROMPT, stop_tokens=[], max_tokens=20, sampling=GREEDY))
    assert out == naive_greedy(model, PROMPT, 20)
    assert len(set(out)) > 2  # not a degenerate repetition


def test_stop_token_is_yielded_and_ends(model: GptOss) -> None:
    ref = naive_greedy(model, PROMPT, 12)
    stop = ref[6]
    first = ref.index(stop)
    out = list(model.generate(PROMPT, stop_tokens={stop}, max_tokens=50, sampling=GREEDY))
    assert out == ref[: first + 1]
    assert list(model.generate(PROMPT, stop_tokens=[], max_tokens=0, sampling=GREEDY)) == []


def test_prefix_reuse_and_divergence(model: GptOss) -> None:
    out = list(model.generate(PROMPT, stop_tokens=[], max_tokens=8, sampling=GREEDY))
    # continue the conversation: the whole earlier sequence is a prefix of the new prompt
    longer = PROMPT + out + [3, 4]
    before = model.stats.prefill_tokens
    got = list(model.generate(longer, stop_tokens=[], max_tokens=6, sampling=GREEDY))
    # prefill ran only the last generated token (never cached) and the 2 new ones
    assert model.stats.prefill_tokens - before == 3
    assert got == naive_greedy(model, longer, 6)
    # diverge in the middle of the cached prefix
    before = model.stats.prefill_tokens
    diverged = [*PROMPT[:5], 60, 61, *PROMPT[7:]]
    got = list(model.generate(diverged, stop_tokens=[], max_tokens=6, sampling=GREEDY))
    assert model.stats.prefill_tokens - before == len(diverged) - 5
    assert got == naive_greedy(model, diverged, 6)
    # the same prompt again: only its last token runs
    before = model.stats.prefill_tokens
    again = list(model.generate(diverged, stop_tokens=[], max_tokens=6, sampling=GREEDY))
    assert model.stats.prefill_tokens - before == 1 and again == got


def test_abandoned_generation_leaves_a_consistent_cache(model: GptOss) -> None:
    gen = model.generate(PROMPT, stop_tokens=[], max_tokens=30, sampling=GREEDY)
    first = [next(gen) for _ in range(4)]
    del gen  # the caller stops consuming (Ctrl-C, a limit)
    follow = PROMPT + first + [11]
    assert list(model.generate(follow, stop_tokens=[], max_tokens=5, sampling=GREEDY)) == (
        naive_greedy(model, follow, 5)
    )


def test_interleaved_generators_in_one_thread_are_both_correct(model: GptOss) -> None:
    a = model.generate(PROMPT, stop_tokens=[], max_tokens=10, sampling=GREEDY)
    b = model.generate([1, 2, 3], stop_tokens=[], max_tokens=10, sampling=GREEDY)
    got_a, got_b = [next(a)], []
    for x, y in zip(a, b, strict=False):
        got_a.append(x)
        got_b.append(y)
    got_b.extend(b)
    assert got_a == naive_greedy(model, PROMPT, 10)
    assert got_b == naive_greedy(model, [1, 2, 3], 10)


def test_seeded_sampling_is_reproducible(model: GptOss) -> None:
    s = Sampling(temperature=1.0, top_p=0.9, seed=123)
    a = list(model.generate(PROMPT, stop_tokens=[], max_tokens=15, sampling=s))
    b = list(model.generate(PROMPT, stop_tokens=[], max_tokens=15, sampling=s))
    c = list(model.generate(PROMPT, stop_tokens=[], max_tokens=15, sampling=Sampling(seed=9)))
    assert a == b
    assert a != c


def test_top_p_keeps_the_nucleus(model: GptOss) -> None:
    from harmony_agent.model.sampling import sample

    logits = torch.tensor([5.0, 4.0, 0.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    picks = {sample(logits, Sampling(top_p=0.5, seed=0), gen) for _ in range(50)}
    assert picks == {0}
    picks = {sample(logits, Sampling(top_p=0.95, seed=0), gen) for _ in range(200)}
    assert picks == {0, 1}


def test_context_limit_is_a_clear_error(folder: Path) -> None:
    m = load_model(folder, progress=False, max_context=16)
    with pytest.raises(ValueError, match="max_context"):
        list(m.generate(list(range(20)), stop_tokens=[], max_tokens=1, sampling=GREEDY))


def test_max_context_beyond_the_models_is_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="context length 131072, got 131073"):
        load_model(folder, progress=False, max_context=131073)


def test_bf16_close_to_fp32(folder: Path) -> None:
    fp32 = load_model(folder, progress=False)
    bf16 = load_model(folder, dtype=torch.bfloat16, progress=False)
    assert bf16.transformer.inv_freq.dtype == torch.float32
    a, b = fp32.logits(PROMPT), bf16.logits(PROMPT)
    assert (a - b).abs().max() < 0.1 * a.abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
    assert list(bf16.generate(PROMPT, stop_tokens=[], max_tokens=4, sampling=GREEDY)) == (
        naive_greedy(bf16, PROMPT, 4)
    )


def test_packed_and_dense_experts_agree(folder: Path) -> None:
    packed = load_model(folder, experts="mxfp4", progress=False)
    dense = load_model(folder, experts="dense", progress=False)
    torch.testing.assert_close(packed.logits(PROMPT), dense.logits(PROMPT), atol=1e-5, rtol=1e-5)


def test_long_logits_are_chunked_and_equal(model: GptOss) -> None:
    tokens = (PROMPT * 3)[:30]  # longer than prefill_chunk (5)
    whole = model.transformer(torch.tensor(tokens)).float()
    torch.testing.assert_close(model.logits(tokens), whole, atol=1e-5, rtol=1e-5)
