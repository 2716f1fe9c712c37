"""Compile every Triton kernel configuration for H100 / A100 without a GPU and check its limits.

`python -m harmony_agent.model.triton.aot [--json] [--arch 90 80]` compiles each `KernelSpec`
the kernel modules list down to a cubin (the triton wheel bundles ptxas) and reports shared
memory, warps and registers (read from the cubin with the bundled cuobjdump). Run it in a
process without TRITON_INTERPRET: under the interpreter `@triton.jit` makes functions that
cannot be compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

from .common import KernelSpec


@dataclass(frozen=True)
class DeviceLimits:
    name: str
    shared_per_block: int  # bytes, opt-in maximum
    registers_per_sm: int = 65536
    registers_per_thread: int = 255
    threads_per_block: int = 1024


LIMITS = {
    90: DeviceLimits("H100", 227 * 1024),
    80: DeviceLimits("A100", 163 * 1024),
}


@dataclass
class CompileResult:
    label: str
    arch: int
    shared: int
    num_warps: int
    registers: int | None  # per thread; None when cuobjdump is unavailable
    spill_bytes: int | None  # local memory + stack frame per thread (register spills)
    seconds: float
    error: str | None = None


def all_specs() -> list[KernelSpec]:
    from ..triton import attention, moe, norm, rope

    return [
        *moe.aot_specs(),
        *attention.aot_specs(),
        *norm.aot_specs(),
        *rope.aot_specs(),
    ]


def compile_spec(spec: KernelSpec, arch: int) -> CompileResult:
    import triton
    from triton.backends.compiler import GPUTarget

    if list(spec.signature) != list(spec.fn.arg_names):
        raise ValueError(f"{spec.label}: signature names differ from the kernel's arguments")
    start = time.perf_counter()
    # Pointers 16-byte aligned, as a launch on torch allocations specialises them.
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, (_, ty) in enumerate(spec.signature.items())
        if ty.startswith("*")
    }
    src = triton.compiler.ASTSource(
        fn=spec.fn, signature=spec.signature, constexprs=spec.constexprs, attrs=attrs
    )
    try:
        kernel = triton.compile(
            src,
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
        )
    except Exception as exc:  # a kernel that fails to compile is a finding, not a crash
        return CompileResult(
            spec.label,
            arch,
            0,
            spec.num_warps,
            None,
            None,
            time.perf_counter() - start,
            f"{type(exc).__name__}: {exc}",
        )
    regs, spill = _resource_usage(kernel.asm["cubin"])
    return CompileResult(
        spec.label,
        arch,
        kernel.metadata.shared,
        kernel.metadata.num_warps,
        regs,
        spill,
        time.perf_counter() - start,
    )


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """Registers and local + stack (spill) bytes per thread, from the bundled cuobjdump."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True)
    reg = re.search(r"REG:(\d+)", res.stdout)
    spill = [int(m) for m in re.findall(r"(?:LOCAL|STACK):(\d+)", res.stdout)]
    return (int(reg.group(1)) if reg else None, sum(spill) if spill else None)


def check_limits(result: CompileResult) -> list[str]:
    """-> what exceeds the target device's limits (empty when the kernel can launch)."""
    if result.error:
        return [f"did not compile: {result.error}"]
    lim = LIMITS[result.arch]
    threads = result.num_warps * 32
    problems = []
    if result.shared > lim.shared_per_block:
        problems.append(f"shared {result.shared} B > {lim.shared_per_block} B on {lim.name}")
    if threads > lim.threads_per_block:
        problems.append(f"{threads} threads > {lim.threads_per_block}")
    if result.registers is not None:
        if result.registers > lim.registers_per_thread:
            problems.append(f"{result.registers} registers/thread > {lim.registers_per_thread}")
        if result.registers * threads > lim.registers_per_sm:
            problems.append(
                f"{result.registers} x {threads} registers > {lim.registers_per_sm} per SM"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harmony_agent.model.triton.aot", description=__doc__
    )
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    failed = False
    for spec in all_specs():
        for arch in args.arch:
            result = compile_spec(spec, arch)
            problems = check_limits(result)
            failed |= bool(problems)
            if args.json:
                row: dict[str, Any] = asdict(result) | {"problems": problems}
                print(json.dumps(row), flush=True)
            else:
                status = "; ".join(problems) or "ok"
                print(
                    f"sm_{arch} {result.label}: shared {result.shared} B, "
                    f"{result.num_warps} warps, {result.registers} regs, "
                    f"spill {result.spill_bytes} B, {result.seconds:.2f} s: {status}"
                )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
