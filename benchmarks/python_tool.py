"""What the python tool's sandbox costs: kernel cold start and warm round trips, sandboxed and not.

    python benchmarks/python_tool.py [--starts 5] [--calls 200]

Both kernels are driven through the same `PythonTool` code; the baseline only swaps the
sandboxed launcher for a plain local kernel, so the ratio is the sandbox's own overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from harmony_agent.sandbox import probe
from harmony_agent.tools.base import ToolCall
from harmony_agent.tools.python_tool import PythonTool

TRIVIAL = ToolCall("python", "1")


def make_tool(sandboxed: bool) -> PythonTool:
    tool = PythonTool()
    # The baseline: the same tool launching an ordinary local kernel (never do this with
    # untrusted code; here the code is "1").
    tool.unsandboxed = not sandboxed
    return tool


async def measure(starts: int, calls: int) -> dict[str, dict[str, float]]:
    """Cold starts and warm calls, alternating between the two kinds so that the load of a busy
    machine falls on both alike."""
    kinds = {"unsandboxed": False, "sandboxed": True}
    cold: dict[str, list[float]] = {k: [] for k in kinds}
    warm: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(starts):
        for kind, sandboxed in kinds.items():
            tool = make_tool(sandboxed)
            try:
                t0 = time.perf_counter()
                assert await tool.call(TRIVIAL) == "1"
                cold[kind].append(time.perf_counter() - t0)
            finally:
                await tool.aclose()
    tools = {kind: make_tool(sandboxed) for kind, sandboxed in kinds.items()}
    try:
        for tool in tools.values():
            await tool.call(TRIVIAL)
        for _ in range(calls):
            for kind, tool in tools.items():
                t0 = time.perf_counter()
                await tool.call(TRIVIAL)
                warm[kind].append(time.perf_counter() - t0)
    finally:
        for tool in tools.values():
            await tool.aclose()
    results = {}
    for kind in kinds:
        w = sorted(warm[kind])
        results[kind] = {
            "cold_s": statistics.median(cold[kind]),
            "warm_ms": statistics.median(w) * 1e3,
            "warm_p90_ms": w[int(0.9 * (len(w) - 1))] * 1e3,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5, help="cold starts per kind (median)")
    parser.add_argument("--calls", type=int, default=200, help="warm calls (median, p90)")
    args = parser.parse_args()
    print(f"sandbox: {probe().summary()}")
    results = asyncio.run(measure(args.starts, args.calls))
    for name, r in results.items():
        print(
            f"{name:>12}: cold start + first call {r['cold_s']:.3f} s | warm round trip "
            f"{r['warm_ms']:.2f} ms (p90 {r['warm_p90_ms']:.2f} ms)"
        )
    s, u = results["sandboxed"], results["unsandboxed"]
    print(
        f"    overhead: cold start x{s['cold_s'] / u['cold_s']:.2f} "
        f"(+{(s['cold_s'] - u['cold_s']) * 1e3:.0f} ms), "
        f"warm round trip x{s['warm_ms'] / u['warm_ms']:.2f}"
    )


if __name__ == "__main__":
    main()
