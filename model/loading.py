"""load_model: a gpt-oss checkpoint folder -> a model that implements the `Model` protocol."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Literal

import torch

from .checkpoint import Checkpoint, CheckpointError, repack
from .config import ModelConfig
from .gguf import GgufFile, dense_dtype, open_checkpoint
from .transformer import Transformer, rope_inv_freq

if TYPE_CHECKING:
    from .gpt_oss import GptOss
    from .remote import RemoteModel

Experts = Literal["auto", "dense", "mxfp4"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` as torch names it (None: CUDA when there is a GPU, else the CPU), or a ValueError
    of one line saying what is wrong with it and what to do."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(device)!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        if torch.version.cuda is None:
            raise ValueError(
                f"device {str(device)!r}: this torch ({torch.__version__}) is a CPU-only build; "
                "install a CUDA build of torch first (pytorch's install selector names the "
                "command), then this project"
            )
        raise ValueError(f"device {str(device)!r}: torch sees no CUDA GPU on this machine")
    return dev


def load_model(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    backend: str | None = None,
    *,
    experts: Experts = "auto",
    max_context: int | None = None,
    cache_tokens: int | None = None,
    batching: bool = True,
    cuda_graph: bool | None = None,
    progress: bool | None = None,
    engine: str | None = None,
    timeout: float = 300.0,
) -> GptOss | RemoteModel:
    """Load a gpt-oss checkpoint folder (reference `original/` or Hugging Face layout) or a
    gpt-oss GGUF file, or connect to a served model.

    device: default CUDA when available, else CPU. dtype: default the checkpoint's (bf16 for
    the released weights). backend: "torch", or "triton" (the Triton kernels: CUDA, or CPU tensors
    under TRITON_INTERPRET=1); None picks triton on CUDA when triton is installed, else torch.
    experts: "auto" keeps them as stored; "mxfp4" keeps them packed and dequantises each expert
    when used (gpt-oss-20b fits a 24 GiB machine this way); "dense" unpacks them at load.
    max_context: the most tokens one sequence holds (default 32768 on CUDA, 8192 on the CPU).
    cache_tokens: the KV pages all concurrent sequences and cached prefixes share (default twice
    max_context).
    batching: the default, on both backends: concurrent `generate()` calls decode together over
    a shared page pool that keeps earlier prompts' prefixes (an agent runs several conversations
    and tool calls at once, and every turn resends the conversation). False: one sequence at a
    time in a contiguous cache (`OneSequence`; a new `generate()` supersedes the last).
    cuda_graph: decode steps replayed as CUDA graphs (triton backend only; the default there
    with MXFP4 experts): with batching, steps of up to four sequences, one graph per batch size.
    progress: a progress bar on stderr; None shows it only on a terminal.

    A URL (`http://host:port`) is a model served by `engine`: "llamacpp" (llama-server),
    "vllm" or "sglang"; generation runs there, token ids in and out (`max_context` may lower
    the engine's limit; `timeout`: seconds to wait for an answer). The local options do not
    apply to it.
    """
    from .remote import connect, is_url

    if is_url(path):
        local = {"device": device, "dtype": dtype, "backend": backend, "cache_tokens": cache_tokens,
                 "cuda_graph": cuda_graph}  # fmt: skip
        given = [k for k, v in local.items() if v is not None]
        if experts != "auto":
            given.append("experts")
        if not batching:
            given.append("batching")
        if given:
            raise ValueError(f"{', '.join(given)}: for local weights; {path} is a served model")
        return connect(str(path), engine, timeout=timeout, max_context=max_context)
    if engine is not None:
        raise ValueError(f"engine={engine!r} is for a served model (an http:// URL), not {path}")

    if backend not in (None, "torch", "triton"):
        raise ValueError(f"unknown backend {backend!r} (torch or triton)")
    if experts not in ("auto", "dense", "mxfp4"):
        raise ValueError(f"unknown experts mode {experts!r} (auto, dense or mxfp4)")
    dev = resolve_device(device)
    if backend is None:
        backend = "triton" if dev.type == "cuda" and importlib.util.find_spec("triton") else "torch"
    if cuda_graph and backend == "torch":
        raise ValueError("cuda_graph needs the triton backend")
    if backend == "triton" and dev.type != "cuda" and not _interpreting():
        raise ValueError(
            f"the triton backend needs a CUDA device (got {dev}); use backend='torch', or set "
            "TRITON_INTERPRET=1 to run the kernels slowly on the CPU"
        )
    if isinstance(dtype, str):
        dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
                 "float32": torch.float32}.get(dtype)  # fmt: skip
        if dtype is None:
            raise ValueError("dtype must be bf16 or fp32")

    ckpt = open_checkpoint(path)
    config = ckpt.config
    packed = ckpt.packed if experts == "auto" else experts == "mxfp4"
    if packed and (config.hidden_size % 32 or config.intermediate_size % 32):
        raise CheckpointError(
            "MXFP4 experts need hidden_size and intermediate_size multiples of 32"
        )
    if dtype is None:
        dtype = dense_dtype(ckpt)
        if not dtype.is_floating_point:
            raise CheckpointError(f"{ckpt.folder}: embedding.weight is not floating point")

    tensors = repack(_progress(ckpt.tensors(), ckpt, progress), packed, dtype)
    return build_model(
        config, tensors, packed=packed, dtype=dtype, device=dev, backend=backend,
        max_context=max_context, cache_tokens=cache_tokens, batching=batching,
        cuda_graph=cuda_graph, keepalive=ckpt,
    )  # fmt: skip


def build_model(
    config: ModelConfig,
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    packed: bool,
    dtype: torch.dtype,
    device: torch.device,
    backend: str,
    max_context: int | None = None,
    cache_tokens: int | None = None,
    batching: bool = True,
    cuda_graph: bool | None = None,
    keepalive: object = None,
) -> GptOss:
    """The engine over a Transformer assembled from (reference name, tensor) pairs, placed on
    `device` one tensor at a time (nothing is materialised twice). batching: the batching
    engine (the default) or `OneSequence`, as `load_model`'s. cuda_graph: None means on with the
    triton backend and packed experts."""
    from .gpt_oss import GptOss

    with torch.device("meta"):
        model = Transformer(config, packed_experts=packed)
    state = {_module_name(name): _convert(name, t, dtype, device) for name, t in tensors}
    model.load_state_dict(state, strict=True, assign=True)
    del state  # the model holds the tensors now: use_triton must be able to free the old experts
    model.inv_freq = rope_inv_freq(config).to(device)
    model.eval().requires_grad_(False)
    if backend == "triton":
        from .triton.backend import use_triton  # lazy: triton is optional

        use_triton(model)
    if cuda_graph is None:  # the PyTorch MoE of dense experts syncs with the host: no graph
        cuda_graph = backend == "triton" and packed
    # The Triton attention never holds a (T, S) score matrix, and on a GPU longer chunks mean
    # bigger matrix products and fewer launches; the PyTorch path keeps its scores bounded.
    chunk = 2048 if backend == "triton" and device.type == "cuda" else 256
    return GptOss(model, max_context=max_context, prefill_chunk=chunk, cuda_graph=cuda_graph,
                  batching=batching, cache_tokens=cache_tokens, keepalive=keepalive)  # fmt: skip


def _interpreting() -> bool:
    """Whether Triton kernels run under its CPU interpreter in this process."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    if "triton" not in sys.modules:
        return False
    from .triton.common import triton_interprets

    return triton_interprets()


def _convert(name: str, t: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t.to(device)
    if name.endswith(("norm.scale", "sinks")):
        return t.to(device, torch.float32)
    if name == "embedding.weight" and t.device == device and t.dtype == dtype:
        # Read a row at a time in token order: rows of a mapped file would fault in from disk
        # one by one (5-30 ms each when not cached), so it is read whole now.
        return t.clone()
    # [out, in] row-major: a one-token decode reads each expert row contiguously (HF stores them
    # transposed)
    return t.to(device, dtype).contiguous()


def _module_name(name: str) -> str:
    """Canonical checkpoint name -> Transformer state-dict name."""
    for p in ("mlp1", "mlp2"):
        name = name.replace(f"mlp.{p}_weight.blocks", f"mlp.experts.{p}_blocks")
        name = name.replace(f"mlp.{p}_weight.scales", f"mlp.experts.{p}_scales")
        name = name.replace(f"mlp.{p}_weight", f"mlp.experts.{p}_weight")
        name = name.replace(f"mlp.{p}_bias", f"mlp.experts.{p}_bias")
    return name


def _progress(
    tensors: Iterator[tuple[str, torch.Tensor]], ckpt: Checkpoint | GgufFile, show: bool | None
) -> Iterator[tuple[str, torch.Tensor]]:
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        yield from tensors
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("loading {task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(ckpt.folder.name, total=ckpt.nbytes())
        for name, t in tensors:
            yield name, t
            bar.advance(task, t.numel() * t.element_size())
