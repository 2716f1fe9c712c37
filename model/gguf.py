"""GGUF files of gpt-oss (what llama.cpp, Ollama and LM Studio use): read into our checkpoint
tensors, and written from any checkpoint so that llama.cpp loads it.

The layout, as llama.cpp's `gpt-oss` architecture has it (its convert_hf_to_gguf.py writes the
same; tests compare the two):
- names: `token_embd`, `output_norm`, `output`, and per layer `blk.N.` + `attn_norm`,
  `attn_q|k|v` (our fused qkv, split), `attn_output`, `attn_sinks`, `post_attention_norm` (the
  MoE's norm), `ffn_gate_inp` (router), `ffn_gate_exps` / `ffn_up_exps` (the even / odd rows of
  our interleaved mlp1: glu / linear), `ffn_down_exps` (mlp2); weights and biases.
- MXFP4 (ggml type 39): per 32 values one block of 17 bytes, the E8M0 scale byte then 16 bytes
  whose low nibbles are values 0..15 and high nibbles values 16..31 (ours: low nibble = even
  value, high = odd). Codes and scales are the same numbers, so conversion is exact both ways.
- 1-D tensors, biases, sinks and the router weight are F32; other weights keep their dtype.
- metadata: `gpt-oss.*` hyperparameters (YaRN as rope.scaling.*; the SwiGLU limit 7.0 and alpha
  1.702 are fixed in llama.cpp, not stored), and the o200k BPE vocabulary with harmony's special
  tokens as `tokenizer.ggml.*` (tokens in GPT-2's byte-to-unicode spelling; merges are every split
  of a token into two tokens, ordered by the merged token's rank, as transformers' tiktoken
  converter lists them).
"""

from __future__ import annotations

import base64
import functools
import math
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .checkpoint import Checkpoint, CheckpointError, expected_shapes, repack, write_checkpoint
from .config import ModelConfig

if TYPE_CHECKING:
    import gguf as _gguf

    from .checkpoint import Layout

ARCH = "gpt-oss"
SWIGLU_LIMIT = 7.0
"""llama.cpp's fixed clamp for gpt-oss's SwiGLU (a GGUF has no field for it)."""
_QK = 32  # values per MXFP4 block


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:  # a dependency, but say what to do if an environment lacks it
        raise CheckpointError("reading or writing GGUF needs the 'gguf' package: "
                              "pip install gguf") from None  # fmt: skip
    return gguf


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names a GGUF file (by its suffix; the reader checks the contents)."""
    return str(path).lower().endswith(".gguf")


# --- reading -----------------------------------------------------------------------------------

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GgufTensor:
    """Where one tensor lies in a GGUF file: ggml dims (innermost first), type, byte offset."""

    name: str
    dims: tuple[int, ...]
    kind: int
    offset: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The dims outermost first, as torch writes them."""
        return tuple(reversed(self.dims))

    def nbytes(self) -> int:
        block, size = _gguf().GGML_QUANT_SIZES[_gguf().GGMLQuantizationType(self.kind)]
        return math.prod(self.dims) // block * size


def read_header(
    path: Path, *, strings: bool = False
) -> tuple[dict[str, Any], list[GgufTensor], int]:
    """A GGUF file's metadata, tensor table and where the tensor data starts.

    Arrays of strings (the vocabulary: ~650k of them for gpt-oss) are skipped, reading as None,
    unless `strings`: gguf-py's GGUFReader turns each into numpy views, which takes minutes to
    open a gpt-oss file on a small machine, where skipping them takes a second.
    """
    with path.open("rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        at = 0

        def take(fmt: str) -> Any:
            nonlocal at
            (value,) = struct.unpack_from(fmt, data, at)
            at += struct.calcsize(fmt)
            return value

        def string() -> str:
            nonlocal at
            n = take("<Q")
            at += n
            return bytes(data[at - n : at]).decode("utf-8", "replace")

        def value(kind: int) -> Any:
            nonlocal at
            if kind in _SCALARS:
                return take(_SCALARS[kind])
            if kind == _STRING:
                return string()
            if kind != _ARRAY:
                raise ValueError(f"unknown value type {kind}")
            item, count = take("<I"), take("<Q")
            if item == _STRING and not strings:
                for _ in range(count):
                    length = take("<Q")
                    at += length
                return None
            if item in _SCALARS and item != 7:
                fmt = _SCALARS[item]
                values = struct.unpack_from(f"<{count}{fmt[1]}", data, at)
                at += count * struct.calcsize(fmt)
                return list(values)
            return [value(item) for _ in range(count)]

        if bytes(data[:4]) != b"GGUF":
            raise ValueError("no GGUF magic number")
        at = 4
        version = take("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (2 and 3 are read)")
        n_tensors, n_fields = take("<Q"), take("<Q")
        fields: dict[str, Any] = {}
        for _ in range(n_fields):
            key = string()
            fields[key] = value(take("<I"))
        tensors = []
        for _ in range(n_tensors):
            name = string()
            dims = tuple(take("<Q") for _ in range(take("<I")))
            tensors.append(GgufTensor(name, dims, take("<I"), take("<Q")))
        align = fields.get("general.alignment", 32)
        return fields, tensors, -(-at // align) * align
    except (struct.error, UnicodeDecodeError, OverflowError) as e:
        raise ValueError(f"truncated or corrupt header ({e})") from None
    finally:
        data.close()


class GgufFile:
    """A gpt-oss GGUF file, read like a `Checkpoint`: `.config`, `.packed` (MXFP4 experts),
    `.dense_dtype` and `.tensors()` (canonical names, memory-mapped where no conversion is
    needed)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        gguf = _gguf()
        self.folder = self.path = Path(path)  # `folder`: where Checkpoint users look for a name
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such GGUF file")
        try:
            self._fields, tensors, start = read_header(self.path)
            # copy-on-write pages: tensors are writable views, as with safetensors checkpoints
            self._data = np.memmap(self.path, dtype=np.uint8, mode="c")
        except (ValueError, OSError) as e:
            raise CheckpointError(f"{self.path}: not a readable GGUF file ({e})") from None
        arch = self._fields.get("general.architecture")
        if arch != ARCH:
            raise CheckpointError(f"{self.path}: a GGUF of architecture {arch!r}, not gpt-oss")
        self._start = start
        self._tensors = {t.name: t for t in tensors}
        for t in tensors:
            if start + t.offset + t.nbytes() > len(self._data):
                raise CheckpointError(f"{self.path}: broken file, {t.name} runs past its end "
                                      "(truncated?); re-download it")  # fmt: skip
        self.config = self._read_config()
        layers = range(self.config.num_hidden_layers)
        experts = [self._tensor(f"blk.{n}.ffn_{p}_exps.weight")
                   for n in layers for p in ("gate", "up", "down")]  # fmt: skip
        # our model packs all experts or none: any other type makes them all dense
        types = gguf.GGMLQuantizationType
        self.packed = all(t.kind == types.MXFP4 for t in experts)
        embd = self._tensor("token_embd.weight").kind
        self.dense_dtype = {types.F32: torch.float32, types.F16: torch.float16}.get(
            embd, torch.bfloat16
        )

    def _field(self, key: str, default: Any = None) -> Any:
        return self._fields.get(key, default)

    def _tensor(self, name: str) -> GgufTensor:
        t = self._tensors.get(name)
        if t is None:
            raise CheckpointError(f"{self.path}: missing tensor {name}")
        return t

    def _bytes(self, t: GgufTensor) -> np.ndarray:
        begin = self._start + t.offset
        return self._data[begin : begin + t.nbytes()]

    def _read_config(self) -> ModelConfig:
        def key(name: str, default: Any = None) -> Any:
            value = self._field(f"{ARCH}.{name}", default)
            if value is None:
                raise CheckpointError(f"{self.path}: missing metadata {ARCH}.{name}")
            return value

        vocab = self._tensor("token_embd.weight").shape[0]
        try:
            return ModelConfig(
                num_hidden_layers=key("block_count"),
                num_experts=key("expert_count"),
                experts_per_token=key("expert_used_count"),
                vocab_size=vocab,
                hidden_size=key("embedding_length"),
                intermediate_size=key("expert_feed_forward_length"),
                swiglu_limit=SWIGLU_LIMIT,
                head_dim=key("attention.key_length"),
                num_attention_heads=key("attention.head_count"),
                num_key_value_heads=key("attention.head_count_kv"),
                sliding_window=key("attention.sliding_window"),
                initial_context_length=key("rope.scaling.original_context_length", 4096),
                rope_theta=float(key("rope.freq_base")),
                rope_scaling_factor=float(key("rope.scaling.factor", 32.0)),
                rope_ntk_alpha=float(key("rope.scaling.yarn_beta_slow", 1.0)),
                rope_ntk_beta=float(key("rope.scaling.yarn_beta_fast", 32.0)),
            )
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{self.path}: {e}") from None

    def nbytes(self) -> int:
        return self.path.stat().st_size

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Canonical (reference-named) tensors, shape-checked against the metadata."""
        shapes = expected_shapes(self.config, self.packed)
        for name in shapes:
            if name.endswith(".scales"):
                continue  # read with their blocks
            for out_name, t in self._canonical(name):
                if tuple(t.shape) != shapes[out_name]:
                    raise CheckpointError(
                        f"{self.path}: {out_name} comes out {tuple(t.shape)}, the metadata "
                        f"implies {shapes[out_name]}"
                    )
                yield out_name, t

    def _canonical(self, name: str) -> list[tuple[str, torch.Tensor]]:
        if name in _TOP:
            return [(name, self._dense(_TOP[name]))]
        n, part = name.split(".", 2)[1:]
        blk = f"blk.{n}."
        if part in ("attn.qkv.weight", "attn.qkv.bias"):
            kind = part.rsplit(".", 1)[1]
            qkv = [self._dense(f"{blk}attn_{p}.{kind}") for p in "qkv"]
            return [(name, torch.cat(qkv, dim=0))]
        if part.startswith("mlp.mlp1_"):  # gate (glu) and up (linear) rows interleave
            if part == "mlp.mlp1_bias":
                gate, up = (self._dense(f"{blk}ffn_{p}_exps.bias") for p in ("gate", "up"))
                return [(name, _interleave(gate, up))]
            if self.packed:
                gb, gs = self._mxfp4(f"{blk}ffn_gate_exps.weight")
                ub, us = self._mxfp4(f"{blk}ffn_up_exps.weight")
                base = name.removesuffix(".blocks")
                return [(name, _interleave(gb, ub)), (base + ".scales", _interleave(gs, us))]
            gate, up = (self._dense(f"{blk}ffn_{p}_exps.weight") for p in ("gate", "up"))
            return [(name, _interleave(gate, up))]
        if part.startswith("mlp.mlp2_weight"):
            if self.packed:
                blocks, scales = self._mxfp4(f"{blk}ffn_down_exps.weight")
                return [(name, blocks), (name.removesuffix(".blocks") + ".scales", scales)]
            return [(name, self._dense(f"{blk}ffn_down_exps.weight"))]
        return [(name, self._dense(blk + _LAYER[part]))]

    def _dense(self, name: str) -> torch.Tensor:
        """A tensor as stored when it is F32/F16/BF16, else dequantized (in `dense_dtype`)."""
        gguf = _gguf()
        t = self._tensor(name)
        types = gguf.GGMLQuantizationType
        raw = self._bytes(t)
        stored = {types.F32: torch.float32, types.F16: torch.float16, types.BF16: torch.bfloat16}
        if t.kind in stored:
            return torch.from_numpy(raw).view(stored[t.kind]).reshape(t.shape)
        rows = raw.reshape(*t.shape[:-1], -1)  # gguf-py dequantizes rows of blocks
        values = gguf.quants.dequantize(rows, types(t.kind))  # float32, numpy
        return torch.from_numpy(values).reshape(t.shape).to(self.dense_dtype)

    def _mxfp4(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """ggml MXFP4 bytes -> our (blocks [..., G, 16], scales [..., G])."""
        t = self._tensor(name)
        *lead, cols = t.shape
        raw = torch.from_numpy(self._bytes(t)).reshape(*lead, cols // _QK, 17)
        scales, qs = raw[..., 0], raw[..., 1:]
        codes = torch.cat([qs & 0x0F, qs >> 4], dim=-1)  # values 0..31 of each block, in order
        return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous(), scales.contiguous()


_TOP = {"embedding.weight": "token_embd.weight", "norm.scale": "output_norm.weight",
        "unembedding.weight": "output.weight"}  # fmt: skip
_LAYER = {
    "attn.norm.scale": "attn_norm.weight",
    "attn.sinks": "attn_sinks.weight",
    "attn.out.weight": "attn_output.weight",
    "attn.out.bias": "attn_output.bias",
    "mlp.norm.scale": "post_attention_norm.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.gate.bias": "ffn_gate_inp.bias",
    "mlp.mlp2_bias": "ffn_down_exps.bias",
}


def _interleave(even: torch.Tensor, odd: torch.Tensor) -> torch.Tensor:
    """Rows of `even` and `odd` alternating along dim 1 (the experts' output dim)."""
    return torch.stack([even, odd], dim=2).flatten(1, 2)


# --- writing -----------------------------------------------------------------------------------


def _ggml_tensors(
    name: str, t: torch.Tensor | tuple[torch.Tensor, torch.Tensor], config: ModelConfig,
    dtype: torch.dtype,
) -> list[tuple[str, torch.Tensor, str]]:  # fmt: skip
    """One canonical tensor (packed experts: blocks and scales together) as GGUF tensors:
    (name, data in its stored form, ggml type name). Works on `meta` tensors too, which is how
    the header is written before any data is read."""
    if isinstance(t, tuple):
        return _mxfp4_tensors(name, *t)
    if name in _TOP:
        return [_stored(_TOP[name], t, dtype)]
    n, part = name.split(".", 2)[1:]
    blk = f"blk.{n}."
    if part in ("attn.qkv.weight", "attn.qkv.bias"):
        kind = part.rsplit(".", 1)[1]
        q = config.num_attention_heads * config.head_dim
        kv = config.num_key_value_heads * config.head_dim
        parts = t.split([q, kv, kv], dim=0)
        return [_stored(f"{blk}attn_{p}.{kind}", x, dtype)
                for p, x in zip("qkv", parts, strict=True)]  # fmt: skip
    if part in ("mlp.mlp1_weight", "mlp.mlp1_bias"):
        kind = "bias" if part.endswith("bias") else "weight"
        return [_stored(f"{blk}ffn_gate_exps.{kind}", t[:, 0::2], dtype),
                _stored(f"{blk}ffn_up_exps.{kind}", t[:, 1::2], dtype)]  # fmt: skip
    if part == "mlp.mlp2_weight":
        return [_stored(f"{blk}ffn_down_exps.weight", t, dtype)]
    return [_stored(blk + _LAYER[part], t, dtype)]


def _stored(name: str, t: torch.Tensor, dtype: torch.dtype) -> tuple[str, torch.Tensor, str]:
    if t.dim() == 1 or name.endswith((".bias", "_norm.weight", "attn_sinks.weight",
                                      "ffn_gate_inp.weight")):  # fmt: skip
        return name, t.to(torch.float32).contiguous(), "F32"
    if dtype == torch.bfloat16:  # numpy has no bfloat16: the raw bits travel as int16
        return name, t.to(torch.bfloat16).contiguous().view(torch.int16), "BF16"
    if dtype == torch.float16:
        return name, t.to(torch.float16).contiguous(), "F16"
    return name, t.to(torch.float32).contiguous(), "F32"


def _mxfp4_tensors(
    name: str, blocks: torch.Tensor, scales: torch.Tensor
) -> list[tuple[str, torch.Tensor, str]]:
    """Our packed experts -> ggml MXFP4 bytes (for mlp1: the gate and up halves)."""

    def ggml(b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        codes = torch.stack([b & 0x0F, b >> 4], dim=-1).flatten(-2)  # (..., G, 32) in order
        qs = codes[..., :16] | (codes[..., 16:] << 4)
        return torch.cat([s[..., None], qs], dim=-1).flatten(-2).contiguous()  # (..., G * 17)

    n, part = name.split(".", 2)[1:]
    blk = f"blk.{n}."
    if part == "mlp.mlp1_weight":
        gate = ggml(blocks[:, 0::2], scales[:, 0::2])
        up = ggml(blocks[:, 1::2], scales[:, 1::2])
        return [(f"{blk}ffn_gate_exps.weight", gate, "MXFP4"),
                (f"{blk}ffn_up_exps.weight", up, "MXFP4")]  # fmt: skip
    return [(f"{blk}ffn_down_exps.weight", ggml(blocks, scales), "MXFP4")]


def _grouped(
    tensors: Iterator[tuple[str, torch.Tensor]],
) -> Iterator[tuple[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]]:
    """Canonical tensors with each `.blocks` / `.scales` pair joined under the weight's name."""
    pending: dict[str, torch.Tensor] = {}
    for name, t in tensors:
        if name.endswith(".blocks"):
            pending[name.removesuffix(".blocks")] = t
        elif name.endswith(".scales"):
            base = name.removesuffix(".scales")
            yield base, (pending.pop(base), t)
        else:
            yield name, t


def _meta(
    config: ModelConfig, packed: bool, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """Data-free stand-ins for the canonical tensors: the header is planned from them."""
    for name, shape in expected_shapes(config, packed).items():
        kind = torch.uint8 if name.endswith((".blocks", ".scales")) else dtype
        yield name, torch.empty(shape, dtype=kind, device="meta")


def write_gguf(
    path: str | os.PathLike[str],
    config: ModelConfig,
    tensors: Iterator[tuple[str, torch.Tensor]],
    *,
    packed: bool,
    dtype: torch.dtype = torch.bfloat16,
    name: str = "gpt-oss",
) -> Path:
    """Write canonical tensors (in `expected_shapes` order, experts packed when `packed`) as a
    GGUF llama.cpp loads. Dense weights are stored in `dtype`. The header is planned from the
    config (the same conversion run on `meta` tensors), then tensors stream to the file one by
    one, so a model is never held in memory twice."""
    from harmony_agent.encoding import VOCAB_SIZE

    gguf = _gguf()
    if config.swiglu_limit != SWIGLU_LIMIT:
        raise ValueError(f"llama.cpp fixes gpt-oss's swiglu_limit at {SWIGLU_LIMIT}; this model "
                         f"has {config.swiglu_limit}")  # fmt: skip
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"GGUF weights are bf16, f16 or f32, not {dtype}")
    if config.vocab_size > VOCAB_SIZE:
        raise ValueError(f"a vocabulary of {config.vocab_size} is larger than harmony's "
                         f"{VOCAB_SIZE}")  # fmt: skip
    path = Path(path)
    writer = gguf.GGUFWriter(path, ARCH)
    _write_metadata(writer, config, packed, dtype, name)
    plan = [g for n, t in _grouped(_meta(config, packed, dtype))
            for g in _ggml_tensors(n, t, config, dtype)]  # fmt: skip
    for gname, t, kind in plan:
        writer.add_tensor_info(gname, list(t.shape), _NUMPY[t.dtype], t.numel() * t.element_size(),
                               raw_dtype=gguf.GGMLQuantizationType[kind])  # fmt: skip
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        done = 0
        for n, t in _grouped(tensors):
            for gname, data, _ in _ggml_tensors(n, t, config, dtype):
                planned = plan[done] if done < len(plan) else None
                if planned is None or (gname, data.shape) != (planned[0], planned[1].shape):
                    raise ValueError(f"{n}: tensor {gname} {tuple(data.shape)} does not fit the "
                                     "config (out of order, or a different shape)")  # fmt: skip
                writer.write_tensor_data(np.ascontiguousarray(data.numpy()))
                done += 1
        if done != len(plan):
            raise ValueError(f"the tensors ended before {plan[done][0]}")
    finally:
        writer.close()
    return path


_NUMPY = {torch.float32: np.dtype(np.float32), torch.float16: np.dtype(np.float16),
          torch.int16: np.dtype(np.int16), torch.uint8: np.dtype(np.uint8)}  # fmt: skip


def _write_metadata(
    writer: _gguf.GGUFWriter, config: ModelConfig, packed: bool, dtype: torch.dtype, name: str
) -> None:
    gguf = _gguf()
    c = config
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.context_length)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(c.rope_scaling_factor)
    writer.add_rope_scaling_orig_ctx_len(c.initial_context_length)
    writer.add_rope_scaling_yarn_beta_fast(c.rope_ntk_beta)
    writer.add_rope_scaling_yarn_beta_slow(c.rope_ntk_alpha)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_expert_count(c.num_experts)
    writer.add_expert_used_count(c.experts_per_token)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    files = gguf.LlamaFileType
    dense = {torch.bfloat16: files.MOSTLY_BF16, torch.float16: files.MOSTLY_F16}
    writer.add_file_type(files.MOSTLY_MXFP4_MOE if packed else dense.get(dtype, files.ALL_F32))
    writer.add_sliding_window(c.sliding_window)
    writer.add_expert_feed_forward_length(c.intermediate_size)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, kinds, merges = harmony_vocabulary(c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-4o")
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(_STARTOFTEXT)
    writer.add_eos_token_id(_RETURN)
    writer.add_pad_token_id(_ENDOFTEXT)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)


_STARTOFTEXT, _ENDOFTEXT, _RETURN = 199998, 199999, 200002


@functools.cache
def _byte_spelling() -> list[str]:
    """GPT-2's byte-to-unicode table: printable bytes stand for themselves, the rest map to
    code points from 256 up (how BPE vocabularies write bytes as text)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


@functools.cache
def harmony_vocabulary(size: int) -> tuple[list[str], list[int], list[str]]:
    """The first `size` tokens of harmony's vocabulary as GGUF lists them: token texts, token
    types (normal; control for harmony's special tokens) and BPE merges."""
    from harmony_agent.encoding import VOCAB_FILE, harmony_encoding, vocab_dir

    gguf = _gguf()
    # o200k's byte sequences by rank, from the (hash-checked) file harmony itself reads
    ranks: dict[bytes, int] = {}
    for line in (vocab_dir() / VOCAB_FILE).read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    by_rank = sorted(ranks, key=ranks.__getitem__)
    spell = _byte_spelling()

    def text(b: bytes) -> str:
        return "".join(spell[x] for x in b)

    encoding = harmony_encoding()
    tokens = [text(b) for b in by_rank[:size]]
    tokens += [encoding.decode([i]) for i in range(len(tokens), size)]
    kinds = [gguf.TokenType.NORMAL] * min(size, len(ranks))
    kinds += [gguf.TokenType.CONTROL] * (size - len(kinds))
    merges = []
    for token in by_rank[:size]:
        parts = [(token[:i], token[i:]) for i in range(1, len(token))]
        splits = [(a, b) for a, b in parts if max(ranks.get(a, size), ranks.get(b, size)) < size]
        splits.sort(key=lambda lr: (ranks[lr[0]], ranks[lr[1]]))
        merges += [f"{text(left)} {text(right)}" for left, right in splits]
    return tokens, [int(k) for k in kinds], merges


def write_hf_tokenizer(folder: Path) -> None:
    """harmony's whole vocabulary as Hugging Face's tokenizer.json (+ tokenizer_config.json),
    laid out as transformers' tiktoken converter writes o200k: llama.cpp's convert_hf_to_gguf.py
    reads the vocabulary from it, and names the pre-tokenizer by hashing how it splits a text,
    so the regex and the merges must be o200k's."""
    import json

    from bpe_openai.registry import o200k_base

    from harmony_agent.encoding import VOCAB_SIZE

    tokens, kinds, merges = harmony_vocabulary(VOCAB_SIZE)
    first = kinds.index(int(_gguf().TokenType.CONTROL))  # the special tokens follow the ranks
    special = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
               "special": True}  # fmt: skip
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": False}  # fmt: skip
    split = {"type": "Split", "pattern": {"Regex": o200k_base()["pat_str"]},
             "behavior": "Isolated", "invert": False}  # fmt: skip
    # a ByteLevel post-processor adds no BOS or EOS: the converter writes add_bos/eos False
    post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
            "use_regex": True}  # fmt: skip
    bpe = {"type": "BPE", "ignore_merges": True, "byte_fallback": False,
           "vocab": {t: i for i, t in enumerate(tokens[:first])}, "merges": merges}  # fmt: skip
    added = [{"id": i, "content": tokens[i], **special} for i in range(first, VOCAB_SIZE)]
    tokenizer = {
        "version": "1.0",
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]},
        "post_processor": post,
        "decoder": byte_level,
        "model": bpe,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tokens[_STARTOFTEXT],
              "eos_token": tokens[_RETURN], "pad_token": tokens[_ENDOFTEXT]}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


# --- converting --------------------------------------------------------------------------------


def convert_to_gguf(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, mxfp4: bool | None = None
) -> Path:
    """A checkpoint folder (either layout) or a GGUF rewritten as a GGUF llama.cpp loads;
    `mxfp4` True quantises dense experts, False dequantises packed ones (default: as stored)."""
    ckpt = open_checkpoint(src)
    if Path(dst).resolve() == Path(src).resolve():
        raise CheckpointError(f"{dst}: the destination must differ from the source")
    packed = ckpt.packed if mxfp4 is None else mxfp4
    dtype = dense_dtype(ckpt)
    tensors = repack(ckpt.tensors(), packed, dtype)
    return write_gguf(dst, ckpt.config, tensors, packed=packed, dtype=dtype,
                      name=Path(src).name.removesuffix(".gguf"))  # fmt: skip


def convert_from_gguf(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, layout: Layout,
    mxfp4: bool | None = None,
) -> Path:  # fmt: skip
    """A GGUF rewritten as a checkpoint folder in `layout`."""
    ckpt = GgufFile(src)
    packed = ckpt.packed if mxfp4 is None else mxfp4
    tensors = repack(ckpt.tensors(), packed, ckpt.dense_dtype)
    return write_checkpoint(dst, ckpt.config, tensors, layout=layout, packed=packed)


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint | GgufFile:
    """A GGUF file or a checkpoint folder, by the path's suffix."""
    return GgufFile(path) if is_gguf(path) else Checkpoint(path)


def dense_dtype(ckpt: Checkpoint | GgufFile) -> torch.dtype:
    """The dtype of a checkpoint's dense weights (its embedding's)."""
    if isinstance(ckpt, GgufFile):
        return ckpt.dense_dtype
    from .checkpoint import to_stored_name

    return ckpt.raw(to_stored_name(ckpt, "embedding.weight")).dtype
