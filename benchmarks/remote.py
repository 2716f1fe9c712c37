"""Decode speed through llama-server and our remote backend, next to llama-bench and our engine,
all on the same GGUF file: what a served model costs per token over HTTP.

    python benchmarks/remote.py [--preset 20b|small] [--layers 4] [--experts 16] [--decode 64]

The file is a random slice (MXFP4 experts, bf16 elsewhere) written once by our GGUF writer into
--workdir: 20b-shaped by default; `small` is the tests' 64-wide model, whose decode steps are
short enough for the per-token overhead of HTTP to show. llama.cpp is the cached build of the
tests (tests/_llamacpp.py; the first run builds it, ~8 minutes on 2 cores). The legs alternate
for --rounds rounds and each keeps its best (other load on the machine hits them all):

- llama-bench: llama.cpp's decode in process (`-p 0 -n N`), no server, no HTTP;
- llama-server via `LlamaCppModel.generate`: tok/s seen by our client, and the server's own
  decode time for the same tokens (its /metrics counters), so the difference per token is the
  HTTP + streaming + JSON overhead;
- our engine (`load_model` of the same GGUF, torch on the CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


SMALL = {"hidden_size": 64, "intermediate_size": 64, "head_dim": 16, "num_attention_heads": 4,
         "num_key_value_heads": 2, "experts_per_token": 2, "sliding_window": 8}  # fmt: skip


def slice_gguf(workdir: Path, preset: str, layers: int, experts: int) -> Path:
    from harmony_agent.model.checkpoint import random_tensors
    from harmony_agent.model.config import PRESETS
    from harmony_agent.model.gguf import write_gguf

    shape = SMALL if preset == "small" else {}
    config = dataclasses.replace(PRESETS["20b"], num_hidden_layers=layers, num_experts=experts,
                                 **shape)  # fmt: skip
    path = workdir / f"{preset}-L{layers}-E{experts}-mxfp4.gguf"
    if not path.is_file():
        print(f"writing {path} (random, MXFP4 experts)...", flush=True)
        workdir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        write_gguf(partial, config, random_tensors(config, packed=True), packed=True)
        partial.rename(path)
    return path


def server_decode_seconds(url: str) -> tuple[float, float]:
    """llama-server's counters: tokens predicted and the seconds spent predicting them."""
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()

    def counter(name: str) -> float:
        m = re.search(rf"^llamacpp:{name} (\S+)$", text, re.MULTILINE)
        assert m is not None, f"no {name} in /metrics"
        return float(m.group(1))

    return counter("tokens_predicted_total"), counter("tokens_predicted_seconds_total")


def remote_decode(model: object, url: str, prompt: list[int], decode: int) -> tuple[float, float]:
    """Client-side tok/s from the first token to the last, and the server's own tok/s for the
    same request (its counters before and after)."""
    from harmony_agent.model import Sampling

    n0, s0 = server_decode_seconds(url)
    tokens = model.generate(prompt, stop_tokens=(), max_tokens=decode,  # type: ignore[attr-defined]
                            sampling=Sampling(temperature=0))  # fmt: skip
    next(tokens)  # prefill and the first token
    t0 = time.perf_counter()
    count = sum(1 for _ in tokens)
    client = count / (time.perf_counter() - t0)
    deadline = time.monotonic() + 5
    # the counters move when the slot is released, just after the last event is sent
    while (n1s1 := server_decode_seconds(url))[0] - n0 < count and time.monotonic() < deadline:
        time.sleep(0.01)
    n1, s1 = n1s1
    return client, (n1 - n0) / (s1 - s0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["20b", "small"], default="20b",
                        help="20b's widths, or the tests' 64-wide one (default: 20b)")  # fmt: skip
    parser.add_argument("--layers", type=int, default=4, help="layers of the slice (default: 4)")
    parser.add_argument("--experts", type=int, default=16, help="experts (default: 16)")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens (default: 64)")
    parser.add_argument("--decode", type=int, default=64, help="tokens to decode (default: 64)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/harmony-agent-remote-bench"),
                        help="where the GGUF is written and reused")  # fmt: skip
    parser.add_argument("--no-ours", action="store_true", help="skip our engine's leg")
    args = parser.parse_args()

    import torch

    from harmony_agent.model.bench import OursRunner, llama_bench
    from harmony_agent.model.remote import connect
    from tests._llamacpp import build, serving

    torch.set_num_threads(args.threads)
    gguf = slice_gguf(args.workdir, args.preset, args.layers, args.experts)
    llama = build()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 199998, (args.prompt,), generator=g).tolist()
    best: dict[str, float] = {}

    def keep(name: str, tok_s: float) -> None:
        best[name] = max(best.get(name, 0.0), tok_s)

    ours = None if args.no_ours else OursRunner(gguf, "mxfp4")  # as the file stores them
    with serving(llama, gguf, "--metrics", threads=args.threads,
                 context=args.prompt + args.decode + 16) as url:  # fmt: skip
        remote = connect(url, "llamacpp")
        remote_decode(remote, url, prompt[:8], 4)  # warm up
        for _ in range(args.rounds):
            keep("llama-bench", llama_bench(llama.bench, gguf, threads=args.threads,
                                            decode=args.decode))  # fmt: skip
            client, server = remote_decode(remote, url, prompt, args.decode)
            keep("server via our backend", client)
            keep("server, its own decode", server)
            if ours is not None:
                _, decode_s, _ = ours.run(prompt, args.decode)
                keep("ours", args.decode / decode_s)
    print(f"{gguf.name}: {args.threads} threads, prompt {args.prompt}, decode {args.decode}, "
          f"best of {args.rounds} alternating rounds")  # fmt: skip
    for name, tok_s in best.items():
        print(f"  {name:26s} decode {tok_s:7.2f} tok/s  ({1000 / tok_s:6.2f} ms/token)")
    overhead = 1000 / best["server via our backend"] - 1000 / best["server, its own decode"]
    print(f"  HTTP + streaming overhead of the remote backend: {overhead:.2f} ms/token "
          f"({100 * overhead * best['server, its own decode'] / 1000:.1f}% of a decode step)")
    if ours is not None:
        print(f"  ours / llama-bench decode: {best['ours'] / best['llama-bench']:.2f}x")


if __name__ == "__main__":
    main()
