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

            _patch_language_once_per_launch()
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


def _patch_language_once_per_launch() -> None:
    """Triton's interpreter patches `triton.language` again at every device-function call
    (`_rows_dot`, `tl.sum`, ...): milliseconds each, a third of an interpreted model test. A
    launch patches it at its start and restores it at its end, so within a launch a call whose
    modules are already patched skips that. (The interpreter's internals, pinned by the test
    extra's triton version: were they to change, this leaves them as they are.)"""
    import inspect

    import triton.language as tl
    from triton.runtime import interpreter

    patch, launch = getattr(interpreter, "_patch_lang", None), interpreter.GridExecutor.__call__
    if patch is None or getattr(launch, "patches_once", False):
        return
    LANG = (tl, tl.core)
    patched: set[int] = set()  # ids of the language modules this launch has patched
    active = [False]
    modules: dict[Any, set[int]] = {}  # function -> ids of the language modules it sees

    class _Unchanged:
        def restore(self) -> None:
            pass

    def patch_once(fn: Any) -> Any:
        if (langs := modules.get(fn)) is None:
            seen = fn.__globals__.values()
            langs = modules[fn] = {id(v) for v in seen if inspect.ismodule(v) and v in LANG}
        if active[0] and langs <= patched:
            return _Unchanged()
        patched.update(langs)
        return patch(fn)

    def launch_patching_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        active[0] = True
        try:
            return launch(self, *args, **kwargs)
        finally:
            active[0] = False
            patched.clear()

    launch_patching_once.patches_once = True  # type: ignore[attr-defined]
    interpreter._patch_lang = patch_once
    interpreter.GridExecutor.__call__ = launch_patching_once
