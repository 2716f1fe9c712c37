"""Many sequences on one model: batched decode over shared KV pages equals each sequence alone.

A tiny random fp32 checkpoint (MXFP4 experts, a sliding window shorter than the prompts, pages of
32 tokens); every comparison is token for token against uncached greedy decoding or against the
same request run alone on a fresh engine.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
import torch
from _support import in_turn

from harmony_agent.model import Sampling, load_model
from harmony_agent.model.checkpoint import write_random_checkpoint
from harmony_agent.model.config import ModelConfig
from harmony_agent.model.gpt_oss import GptOss
from harmony_agent.model.kv_pages import PAGE_SIZE, PagePool

CONFIG = ModelConfig(
    num_hidden_layers=2, num_experts=6, experts_per_token=2, vocab_size=96, hidden_size=64,
    intermediate_size=64, head_dim=16, num_attention_heads=4, num_key_value_heads=2,
    sliding_window=8,
)  # fmt: skip
GREEDY = Sampling(temperature=0)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(
        tmp_path_factory.mktemp("ckpt"), CONFIG, mxfp4=True, dtype=torch.float32, seed=11
    )


def fresh(folder: Path, **options: int) -> GptOss:
    m = load_model(folder, progress=False, max_context=options.pop("max_context", 256), **options)
    m.prefill_chunk = 7  # prefills in several chunks, between decode steps
    return m


def prompts(n: int, seed: int = 0, shared: int = 0) -> list[list[int]]:
    """n prompts of different lengths; the first `shared` tokens of each are the same."""
    rng = random.Random(seed)
    head = [rng.randrange(96) for _ in range(shared)]
    return [head + [rng.randrange(96) for _ in range(rng.randrange(3, 60))] for _ in range(n)]


def alone(folder: Path, prompt: list[int], n: int, sampling: Sampling = GREEDY) -> list[int]:
    """The request on a fresh engine with nothing else running."""
    return list(fresh(folder).generate(prompt, stop_tokens=[], max_tokens=n, sampling=sampling))


def round_robin(model: GptOss, requests: list[tuple[list[int], int, Sampling]]) -> list[list[int]]:
    """Consume many generators in turn from one thread: they decode in shared steps."""
    return in_turn(
        [model.generate(p, stop_tokens=[], max_tokens=n, sampling=s) for p, n, s in requests]
    )


def test_batched_greedy_equals_each_alone(folder: Path) -> None:
    ps = prompts(6, seed=1, shared=40)  # a shared prefix longer than a page
    m = fresh(folder)
    got = round_robin(m, [(p, 12 + i, GREEDY) for i, p in enumerate(ps)])
    assert got == [alone(folder, p, 12 + i) for i, p in enumerate(ps)]
    assert m.stats.decode_tokens > m.stats.decode_steps  # several sequences per step
    assert m.stats.reused_tokens >= 32  # the shared prefix's first full page, at least


def test_bf16_decode_through_the_fused_cpu_kernels_equals_each_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In bf16 the CPU decode runs the fused MoE and paged decode kernels: each row of a
    step is its own computation there, so a batch still equals each sequence alone."""
    from harmony_agent.model import cpu_kernels

    if not cpu_kernels.available():
        pytest.skip("no C++ compiler for the CPU kernels")
    ckpt = write_random_checkpoint(tmp_path, CONFIG, mxfp4=True, dtype=torch.bfloat16, seed=5)
    calls = {"moe_mxfp4": 0, "paged_decode": 0}
    for name in calls:
        kernel = getattr(cpu_kernels, name)

        def counted(*args: object, kernel: object = kernel, name: str = name) -> object:
            calls[name] += 1
            return kernel(*args)  # type: ignore[operator]

        monkeypatch.setattr(cpu_kernels, name, counted)
    ps = prompts(4, seed=3, shared=20)
    m = fresh(ckpt)
    assert m.dtype == torch.bfloat16
    got = round_robin(m, [(p, 10 + i, GREEDY) for i, p in enumerate(ps)])
    assert m.stats.decode_tokens > m.stats.decode_steps
    assert calls["moe_mxfp4"] > 0 and calls["paged_decode"] > 0
    assert got == [alone(ckpt, p, 10 + i) for i, p in enumerate(ps)]


def test_prefix_divergence_mid_page_reuses_exactly_the_common_tokens(folder: Path) -> None:
    m = fresh(folder)
    rng = random.Random(2)
    base = [rng.randrange(96) for _ in range(2 * PAGE_SIZE + 13)]  # 2 pages and a partial one
    list(m.generate(base, stop_tokens=[], max_tokens=3, sampling=GREEDY))
    for cut in (5, PAGE_SIZE, PAGE_SIZE + 9, len(base) - 1):
        diverged = [*base[:cut], (base[cut] + 1) % 96, *base[cut + 1 :]]
        before = m.stats.prefill_tokens, m.stats.reused_tokens
        stream = m.generate(diverged, stop_tokens=[], max_tokens=5, sampling=GREEDY)
        got = list(stream)
        assert m.stats.reused_tokens - before[1] == cut
        assert stream.cached_tokens == cut  # type: ignore[attr-defined] # what this call saved
        assert m.stats.prefill_tokens - before[0] == len(diverged) - cut
        assert got == alone(folder, diverged, 5)


def test_seeded_sampling_in_a_batch_equals_the_same_seed_alone(folder: Path) -> None:
    ps = prompts(4, seed=4)
    samplings = [Sampling(temperature=1.0, top_p=0.9, seed=s) for s in (1, 2, 3, 4)]
    got = round_robin(fresh(folder), [(p, 10, s) for p, s in zip(ps, samplings, strict=True)])
    assert got == [alone(folder, p, 10, s) for p, s in zip(ps, samplings, strict=True)]
    assert got[0] != alone(folder, ps[0], 10, Sampling(temperature=1.0, top_p=0.9, seed=99))


def test_stop_tokens_and_max_tokens_are_per_sequence(folder: Path) -> None:
    ps = prompts(3, seed=5)
    refs = [alone(folder, p, 15) for p in ps]
    m = fresh(folder)
    gens = [
        m.generate(ps[0], stop_tokens={refs[0][4]}, max_tokens=15, sampling=GREEDY),
        m.generate(ps[1], stop_tokens=[], max_tokens=3, sampling=GREEDY),
        m.generate(ps[2], stop_tokens=[], max_tokens=15, sampling=GREEDY),
    ]
    outs = in_turn(gens)
    assert outs[0] == refs[0][: refs[0].index(refs[0][4]) + 1]
    assert outs[1] == refs[1][:3]
    assert outs[2] == refs[2]


def test_a_cancelled_sequence_frees_its_pages_and_the_others_go_on(folder: Path) -> None:
    ps = prompts(3, seed=6)
    m = fresh(folder)
    a, b, c = (m.generate(p, stop_tokens=[], max_tokens=20, sampling=GREEDY) for p in ps)
    got_a, got_c = [next(a), next(a)], [next(c)]
    next(b)
    b.close()  # the consumer stops mid-stream
    got_a.extend(a)
    got_c.extend(c)
    assert got_a == alone(folder, ps[0], 20) and got_c == alone(folder, ps[2], 20)
    engine = m.engine
    assert not engine._running and engine.pool.available() == engine.pool.num_pages


def test_when_pages_run_out_sequences_queue_or_are_preempted_and_stay_exact(
    folder: Path,
) -> None:
    # room for 4 pages (128 tokens): 6 sequences of up to ~100 tokens cannot all run at once
    m = fresh(folder, max_context=128, cache_tokens=128)
    ps = prompts(6, seed=7)
    got = round_robin(m, [(p, 40, GREEDY) for p in ps])
    assert got == [alone(folder, p, 40) for p in ps]
    pool = m.engine.pool
    assert isinstance(pool, PagePool) and pool.num_pages == 8  # 4 of each layer group
    assert pool.nbytes() == 2 * CONFIG.num_hidden_layers * 128 * 2 * 16 * 4  # the bound, fp32


def test_lru_eviction_keeps_the_recent_prefix(folder: Path) -> None:
    m = fresh(folder, max_context=128, cache_tokens=128)
    old, new = prompts(2, seed=8)
    old, new = old + old, new + new  # longer than a page each
    list(m.generate(old, stop_tokens=[], max_tokens=2, sampling=GREEDY))
    list(m.generate(new, stop_tokens=[], max_tokens=60, sampling=GREEDY))  # evicts `old`
    before = m.stats.reused_tokens
    list(m.generate(new, stop_tokens=[], max_tokens=1, sampling=GREEDY))
    assert m.stats.reused_tokens - before == len(new) - 1
    before = m.stats.reused_tokens
    assert list(m.generate(old, stop_tokens=[], max_tokens=4, sampling=GREEDY)) == (
        alone(folder, old, 4)
    )
    assert m.stats.reused_tokens - before < len(old) - 1


def test_sliding_window_layers_hold_only_their_window(folder: Path) -> None:
    # 8 pages of each layer group (256 positions): before, two sequences of 180 tokens needed 6
    # pages of every layer each and ran one after the other; now each holds 6 full-attention
    # pages and one or two of the sliding-window layers (window 8), so both run at once
    m = fresh(folder, max_context=256, cache_tokens=256)
    ps = [(p * 8)[:120] for p in prompts(2, seed=12)]
    pool = m.engine.pool
    assert isinstance(pool, PagePool) and pool.num_pages == 16
    gens = [m.generate(p, stop_tokens=[], max_tokens=60, sampling=GREEDY) for p in ps]
    got: list[list[int]] = [[], []]
    for _ in range(30):
        for out, gen in zip(got, gens, strict=True):
            out.append(next(gen))
    assert pool.num_pages - pool.available() <= 2 * (pool.pages_for(120 + 60) + 2)
    for out, gen in zip(got, gens, strict=True):
        out.extend(gen)
    assert m.stats.decode_tokens / m.stats.decode_steps > 1.5  # they decoded together
    assert got == [alone(folder, p, 60) for p in ps]


def test_a_prefix_is_reused_while_the_window_before_its_end_is_cached(folder: Path) -> None:
    m = fresh(folder, max_context=256, cache_tokens=256)  # 8 pages of each group
    rng = random.Random(13)
    a = [rng.randrange(96) for _ in range(150)]
    list(m.generate(a, stop_tokens=[], max_tokens=2, sampling=GREEDY))
    # A's first sliding-window pages were let go as it moved past them: the oldest cache. A
    # prompt of 110 tokens takes the 6 free pages, then evicts those two.
    b = [rng.randrange(96) for _ in range(110)]
    list(m.generate(b, stop_tokens=[], max_tokens=1, sampling=GREEDY))
    for cut, reused in ((80, 80), (40, 0)):  # at 40 the window before it was evicted
        diverged = [*a[:cut], (a[cut] + 1) % 96, *a[cut + 1 :]]
        before = m.stats.reused_tokens
        got = list(m.generate(diverged, stop_tokens=[], max_tokens=4, sampling=GREEDY))
        assert m.stats.reused_tokens - before == reused
        assert got == alone(folder, diverged, 4)


def test_a_match_whose_copy_finds_no_page_takes_nothing(folder: Path) -> None:
    # 4 pages, all cached: a 52-token sequence's two pages of each group. A prompt diverging in
    # its second page takes the first whole page and needs two copies, but the pool has one
    # (the evictable window page); without the copy, the table would start past a window it
    # does not hold, so the match must give it nothing (and leak nothing)
    pool = PagePool(CONFIG, 4, torch.device("cpu"), torch.float32)
    a = list(range(52))
    table = pool.match(a, limit=51)
    assert pool.reserve(table, 52)
    pool.commit(table, a)
    pool.release(table)
    b = [*a[:42], 95, 95]
    table = pool.match(b, limit=len(b) - 1)
    assert table.length == 0 and all(not pages for pages in table.pages)
    assert pool.available() == pool.num_pages


def test_32_threads_at_once_equal_their_sequential_runs(folder: Path) -> None:
    ps = prompts(32, seed=9, shared=20)
    want = {}
    m = fresh(folder)
    for i, p in enumerate(ps):  # sequentially, on the same engine: the prefix cache is in play
        want[i] = list(m.generate(p, stop_tokens=[], max_tokens=8, sampling=GREEDY))
    m = fresh(folder)
    m.prefill_chunk = 64  # prompts are in within a few steps: decoding is what overlaps
    got: dict[int, list[int]] = {}
    start = threading.Barrier(32)

    def run(i: int) -> None:
        start.wait()
        got[i] = list(m.generate(ps[i], stop_tokens=[], max_tokens=8, sampling=GREEDY))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert got == want
    assert m.stats.decode_tokens / m.stats.decode_steps > 4  # they really ran together


def test_cache_smaller_than_the_context_is_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="cache_tokens"):
        fresh(folder, max_context=128, cache_tokens=64)
