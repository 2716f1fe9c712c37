"""Concurrency benchmark: decode tok/s of N sequences decoding together, as ratios to N = 1, and
what the prefix cache saves two conversations that take turns on one model.

Both are measured in one run on one loaded model, so the ratios hold on a shared machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import torch

from .gpt_oss import GptOss
from .protocol import Sampling

GREEDY = Sampling(temperature=0)


def decode_rates(model: GptOss, prompts: Sequence[list[int]], decode_tokens: int) -> float:
    """Aggregate decode tok/s of len(prompts) sequences decoding together (prefill not timed)."""
    gens = [
        model.generate(p, stop_tokens=(), max_tokens=decode_tokens + 1, sampling=GREEDY)
        for p in prompts
    ]
    for g in gens:  # prefill, and each sequence's first token
        next(g)
    t0 = time.perf_counter()
    produced = _in_turn(gens)
    return produced / (time.perf_counter() - t0)


def _in_turn(gens: list[Iterator[int]]) -> int:
    """Consume the generators in turn from this thread; each step decodes all of them."""
    produced, live = 0, list(gens)
    while live:
        for g in list(live):
            if next(g, None) is None:
                live.remove(g)
            else:
                produced += 1
    return produced


def alternating_prefill(
    model: GptOss, turns: int, system: int, user: int, reply: int, seed: int = 0
) -> list[int]:
    """Two conversations taking turns: prompt tokens the model runs for the second one's turns.

    Each turn's prompt is the conversation so far (a `system`-token start, then each turn's
    `user` tokens and the model's `reply`), as an agent sends it.
    """
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size

    def tokens(n: int) -> list[int]:
        return torch.randint(0, vocab, (n,), generator=g).tolist()

    talks = [tokens(system), tokens(system)]
    ran = []
    for _ in range(turns):
        for i, talk in enumerate(talks):
            talk += tokens(user)
            before = model.stats.prefill_tokens
            talk += model.generate(talk, stop_tokens=(), max_tokens=reply, sampling=GREEDY)
            if i == 1:
                ran.append(model.stats.prefill_tokens - before)
    return ran


def run_concurrency_bench(
    model: GptOss,
    *,
    levels: Sequence[int],
    prompt_len: int,
    decode_tokens: int,
    print_fn: Callable[[str], None] = print,
) -> dict[str, object]:
    """On a batching model; the prefix-cache comparison also runs its transformer through the
    one-sequence engine (the engine before batching)."""
    g = torch.Generator().manual_seed(1)
    most = max(levels)
    prompts = [
        torch.randint(0, model.config.vocab_size, (prompt_len,), generator=g).tolist()
        for _ in range(most)
    ]
    decode_rates(model, prompts[:2], 2)  # warm up
    rates = {n: decode_rates(model, prompts[:n], decode_tokens) for n in levels}
    base = rates[levels[0]] if levels[0] == 1 else decode_rates(model, prompts[:1], decode_tokens)
    rows = [
        {
            "concurrency": n,
            "aggregate_tok_s": r,
            "per_sequence_tok_s": r / n,
            "aggregate_ratio": r / base,
            "per_sequence_ratio": r / n / base,
        }
        for n, r in rates.items()
    ]
    print_fn(
        f"concurrent decode, prompt {prompt_len} tokens each, {decode_tokens} tokens per "
        f"sequence, ratios to 1 sequence ({base:.2f} tok/s):"
    )
    for r in rows:
        print_fn(
            f"  {r['concurrency']:3d} at once: aggregate {r['aggregate_tok_s']:7.2f} tok/s "
            f"({r['aggregate_ratio']:4.2f}x), per sequence {r['per_sequence_tok_s']:6.2f} tok/s "
            f"({r['per_sequence_ratio']:4.2f}x)"
        )
    shape = {"turns": 3, "system": prompt_len, "user": 16, "reply": 8}
    after = alternating_prefill(model, **shape)
    one = GptOss(model.transformer, max_context=model.max_context, batching=False,
                 prefill_chunk=model.prefill_chunk)  # fmt: skip
    before = alternating_prefill(one, **shape)
    print_fn(
        f"two conversations taking turns ({shape['system']}-token start, {shape['user']} "
        f"user + {shape['reply']} reply tokens a turn): prompt tokens run for the second "
        f"one's turns: {before} with one cached sequence, {after} with the prefix cache"
    )
    return {"concurrency": rows, "alternating_prefill": {"before": before, "after": after}}
