"""Shared pieces of the Triton kernels: the description of a compilable kernel configuration.

Every kernel module lists, in `aot_specs()`, each (kernel, block configuration) pair its host
code can choose at the real model's shapes, so `model.triton.aot` can compile all of them for a
GPU target on a machine without one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

# Triton's signature names for the tensor dtypes the kernels see.
_PTR_TYPES = {
    torch.float32: "*fp32",
    torch.bfloat16: "*bf16",
    torch.float16: "*fp16",
    torch.uint8: "*u8",
    torch.int32: "*i32",
    torch.int64: "*i64",
}


def ptr_type(dtype: torch.dtype) -> str:
    return _PTR_TYPES[dtype]


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class KernelSpec:
    """One kernel at one block configuration, as `triton.compile` wants it.

    signature: argument name -> Triton type ("*bf16", "i32", "fp32"), in the kernel's order;
    the constexpr arguments (always last) are added from `constexprs`, their values. Pointer
    arguments are compiled as 16-byte aligned, as a launch on torch allocations specialises them.
    """

    name: str
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        full = self.signature | dict.fromkeys(self.constexprs, "constexpr")
        object.__setattr__(self, "signature", full)

    @property
    def label(self) -> str:
        blocks = ",".join(f"{k}={v}" for k, v in self.constexprs.items())
        return f"{self.name}[{blocks},w{self.num_warps},s{self.num_stages}]"


TestMode = Literal["gpu", "interpret", "unavailable"]


@contextmanager
def kernel_test_mode() -> Iterator[TestMode]:
    """For tests: import triton and the kernel modules inside this; yields how they will run.

    "gpu": compiled for the CUDA device. "interpret": Triton's CPU interpreter (no CUDA device,
    or TRITON_INTERPRET=1). "unavailable": no CUDA device, and triton was imported earlier in
    this process without the interpreter (transformers' gpt-oss imports it), so the kernels
    cannot run here: run the tests in a fresh process.

    `@triton.jit` (triton's own tl.sum etc. included) picks a compiled or an interpreted
    function when its module is imported, from TRITON_INTERPRET; the variable is restored on
    exit so that nothing else in the process, or its children, sees it.
    """
    old = os.environ.get("TRITON_INTERPRET")
    if old not in (None, "", "0") or not torch.cuda.is_available():
        if sys.modules.get("triton") is not None and not triton_interprets():
            mode: TestMode = "unavailable"
        else:
            mode = "interpret"
            os.environ["TRITON_INTERPRET"] = "1"
    else:
        mode = "gpu"
    try:
        yield mode
        if mode == "interpret":
            # Imported lazily at the first launch, and only importable in interpreter mode.
            import triton.experimental.gluon  # noqa: F401
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def triton_interprets() -> bool:
    """Whether the imported triton built its own jit functions for the interpreter."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.sum, InterpretedFunction)
