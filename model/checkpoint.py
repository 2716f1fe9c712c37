"""gpt-oss checkpoints on disk: reading both layouts, writing random or converted ones.

Tensors travel under their reference (`original/`) names, the canonical form here; experts are
either packed (`mlp1_weight.blocks` / `.scales`, MXFP4) or dense (`mlp1_weight` [E, 2I, H], the
nn.Linear [out, in] orientation). The Hugging Face layout is translated on the way in and out.
Safetensors files are memory-mapped: a tensor read costs no copy until it is converted.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

from .config import ModelConfig
from .mxfp4 import FP4_VALUES, dequantize, quantize

Layout = Literal["original", "hf"]


class CheckpointError(Exception):
    """A checkpoint folder is missing, malformed or inconsistent with its config.json."""


# --- safetensors, memory-mapped ----------------------------------------------------------------

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsFile:
    """Zero-copy view of a .safetensors file: tensors share pages with the file's mapping."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > os.fstat(f.fileno()).st_size - 8:
                    raise ValueError("header longer than the file")
                header = json.loads(f.read(n))
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, struct.error, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
        header.pop("__metadata__", None)
        self.header: dict[str, dict] = header
        self._base = 8 + n
        # A download cut short (or a disk that filled) leaves a file shorter than its header
        # promises: say so now, not as a crash deep inside a forward pass.
        try:
            expected = self._base + max((t["data_offsets"][1] for t in header.values()), default=0)
        except (KeyError, TypeError, IndexError, AttributeError):
            raise CheckpointError(f"{path}: not a readable safetensors file (bad header)") from None
        actual = len(self._map)
        if actual != expected:
            raise CheckpointError(
                f"{path}: broken file, {actual} bytes where its header promises {expected} "
                f"({'truncated' if actual < expected else 'trailing data'}); re-download it"
            )

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def get(self, name: str) -> torch.Tensor:
        info = self.header[name]
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise CheckpointError(f"{self.path}: {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        count = math.prod(info["shape"])
        if count == 0:
            return torch.empty(info["shape"], dtype=dtype)
        flat = torch.frombuffer(self._map, dtype=dtype, count=count, offset=self._base + start)
        if end - start != flat.numel() * flat.element_size():
            raise CheckpointError(f"{self.path}: {name} has inconsistent data offsets")
        return flat.view(info["shape"])


# --- opening a folder --------------------------------------------------------------------------


class Checkpoint:
    """A checkpoint folder in either layout, its config and its tensors by file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        folder = Path(path)
        if not folder.exists():
            raise CheckpointError(f"{folder}: no such checkpoint folder")
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: not a folder (give the checkpoint folder)")
        if (
            not (folder / "config.json").is_file()
            and (folder / "original" / "config.json").is_file()
        ):
            folder = folder / "original"  # a Hugging Face repo folder holding original/
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{folder}: no config.json")
        try:
            data = json.loads(config_path.read_text())
        except ValueError as e:
            raise CheckpointError(f"{config_path}: invalid JSON ({e})") from None
        self.folder = folder
        self.layout: Layout
        try:
            if data.get("model_type") == "gpt_oss" or "num_local_experts" in data:
                self.layout = "hf"
                self.config = ModelConfig.from_hf_json(data)
                types = data.get("layer_types")
                if types is not None and types != self.config.to_hf_json()["layer_types"]:
                    raise CheckpointError(
                        f"{config_path}: layer_types must alternate sliding/full from layer 0"
                    )
            elif "num_experts" in data and "experts_per_token" in data:
                self.layout = "original"
                self.config = ModelConfig.from_reference_json(data)
            else:
                raise CheckpointError(
                    f"{config_path}: unknown layout (neither a gpt-oss reference config nor a "
                    "Hugging Face GptOssConfig)"
                )
        except KeyError as e:
            raise CheckpointError(f"{config_path}: missing key {e.args[0]}") from None
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{config_path}: {e}") from None
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{folder}: no *.safetensors files")
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            for name in sorted(set(weight_map.values())):
                if not (folder / name).is_file():
                    raise CheckpointError(f"{folder / name}: missing (named in {index.name})")
        self.files = [SafetensorsFile(f) for f in files]
        self._where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for name in f.header:
                self._where[name] = f
        prefix = "block." if self.layout == "original" else "model.layers."
        self.packed = any(
            n.endswith(("mlp1_weight.blocks", "gate_up_proj_blocks")) for n in self._where
        )
        layers = {
            int(m.group(1))
            for n in self._where
            if (m := re.match(re.escape(prefix) + r"(\d+)\.", n))
        }
        extra = sorted(i for i in layers if i >= self.config.num_hidden_layers)
        if extra:
            raise CheckpointError(
                f"{folder}: tensors for layer {extra[0]} but config.json says "
                f"num_hidden_layers={self.config.num_hidden_layers}"
            )

    def names(self) -> list[str]:
        return list(self._where)

    def raw(self, name: str) -> torch.Tensor:
        f = self._where.get(name)
        if f is None:
            raise CheckpointError(f"{self.folder}: missing tensor {name}")
        return f.get(name)

    def nbytes(self) -> int:
        return sum(os.path.getsize(f.path) for f in self.files)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Canonical (reference-named) tensors as stored, shape-checked against config.json."""
        want = expected_shapes(self.config, self.packed)
        for name, shape in want.items():
            t = self._read_canonical(name)
            if tuple(t.shape) != shape:
                raise CheckpointError(
                    f"{self.folder}: {name} has shape {tuple(t.shape)} but config.json implies "
                    f"{shape}"
                )
            yield name, t

    def _read_canonical(self, name: str) -> torch.Tensor:
        if self.layout == "original":
            return self.raw(name)
        hf = to_hf_names(name)
        parts = [self.raw(n) for n in hf]
        if name.endswith(("qkv.weight", "qkv.bias")):
            return torch.cat(parts, dim=0)
        if name.endswith(("mlp1_weight", "mlp2_weight")):  # dense HF experts are [E, in, out]
            return parts[0].transpose(1, 2)
        return parts[0]


def expected_shapes(config: ModelConfig, packed: bool) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor name and its shape, in reading order."""
    c = config
    h, e, i, v = c.hidden_size, c.num_experts, c.intermediate_size, c.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (v, h)}
    for n in range(c.num_hidden_layers):
        a, m = f"block.{n}.attn.", f"block.{n}.mlp."
        shapes |= {
            a + "norm.scale": (h,),
            a + "qkv.weight": (c.qkv_dim, h),
            a + "qkv.bias": (c.qkv_dim,),
            a + "sinks": (c.num_attention_heads,),
            a + "out.weight": (h, c.num_attention_heads * c.head_dim),
            a + "out.bias": (h,),
            m + "norm.scale": (h,),
            m + "gate.weight": (e, h),
            m + "gate.bias": (e,),
        }
        if packed:
            shapes |= {
                m + "mlp1_weight.blocks": (e, 2 * i, h // 32, 16),
                m + "mlp1_weight.scales": (e, 2 * i, h // 32),
            }
        else:
            shapes[m + "mlp1_weight"] = (e, 2 * i, h)
        shapes[m + "mlp1_bias"] = (e, 2 * i)
        if packed:
            shapes |= {
                m + "mlp2_weight.blocks": (e, h, i // 32, 16),
                m + "mlp2_weight.scales": (e, h, i // 32),
            }
        else:
            shapes[m + "mlp2_weight"] = (e, h, i)
        shapes[m + "mlp2_bias"] = (e, h)
    shapes |= {"norm.scale": (h,), "unembedding.weight": (v, h)}
    return shapes


# --- name translation --------------------------------------------------------------------------

_HF_LAYER = {
    "attn.norm.scale": ["input_layernorm.weight"],
    "attn.qkv.weight": [f"self_attn.{p}_proj.weight" for p in "qkv"],
    "attn.qkv.bias": [f"self_attn.{p}_proj.bias" for p in "qkv"],
    "attn.sinks": ["self_attn.sinks"],
    "attn.out.weight": ["self_attn.o_proj.weight"],
    "attn.out.bias": ["self_attn.o_proj.bias"],
    "mlp.norm.scale": ["post_attention_layernorm.weight"],
    "mlp.gate.weight": ["mlp.router.weight"],
    "mlp.gate.bias": ["mlp.router.bias"],
    "mlp.mlp1_weight": ["mlp.experts.gate_up_proj"],
    "mlp.mlp1_weight.blocks": ["mlp.experts.gate_up_proj_blocks"],
    "mlp.mlp1_weight.scales": ["mlp.experts.gate_up_proj_scales"],
    "mlp.mlp1_bias": ["mlp.experts.gate_up_proj_bias"],
    "mlp.mlp2_weight": ["mlp.experts.down_proj"],
    "mlp.mlp2_weight.blocks": ["mlp.experts.down_proj_blocks"],
    "mlp.mlp2_weight.scales": ["mlp.experts.down_proj_scales"],
    "mlp.mlp2_bias": ["mlp.experts.down_proj_bias"],
}
_HF_TOP = {
    "embedding.weight": "model.embed_tokens.weight",
    "norm.scale": "model.norm.weight",
    "unembedding.weight": "lm_head.weight",
}


def to_hf_names(name: str) -> list[str]:
    """Hugging Face names holding a canonical tensor (q, k, v for the fused qkv)."""
    if name in _HF_TOP:
        return [_HF_TOP[name]]
    m = re.fullmatch(r"block\.(\d+)\.(.+)", name)
    assert m is not None and m.group(2) in _HF_LAYER, name
    return [f"model.layers.{m.group(1)}.{suffix}" for suffix in _HF_LAYER[m.group(2)]]


def to_hf_tensors(
    name: str, t: torch.Tensor, config: ModelConfig
) -> list[tuple[str, torch.Tensor]]:
    names = to_hf_names(name)
    if name.endswith(("qkv.weight", "qkv.bias")):
        q = config.num_attention_heads * config.head_dim
        kv = config.num_key_value_heads * config.head_dim
        parts = t.split([q, kv, kv], dim=0)
        return [(n, p.contiguous()) for n, p in zip(names, parts, strict=True)]
    if name.endswith(("mlp1_weight", "mlp2_weight")):
        return [(names[0], t.transpose(1, 2).contiguous())]
    return [(names[0], t)]


# --- experts: packed <-> dense -----------------------------------------------------------------


def dequantize_experts(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """[E, out, G, 16] + [E, out, G] -> dense [E, out, G*32], one expert at a time."""
    return torch.stack([dequantize(blocks[e], scales[e], dtype) for e in range(blocks.shape[0])])


def quantize_experts(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [quantize(weight[e]) for e in range(weight.shape[0])]
    return torch.stack([b for b, _ in parts]), torch.stack([s for _, s in parts])


def repack(
    tensors: Iterator[tuple[str, torch.Tensor]], packed: bool, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """Turn packed experts dense (in `dtype`) or dense ones packed; other tensors pass through."""
    pending: dict[str, torch.Tensor] = {}
    for name, t in tensors:
        if name.endswith(".blocks") and not packed:
            pending[name] = t
        elif name.endswith(".scales") and not packed:
            base = name.removesuffix(".scales")
            yield base, dequantize_experts(pending.pop(base + ".blocks"), t, dtype)
        elif name.endswith(("mlp1_weight", "mlp2_weight")) and packed:
            blocks, scales = quantize_experts(t)
            yield name + ".blocks", blocks
            yield name + ".scales", scales
        else:
            yield name, t


# --- writing -----------------------------------------------------------------------------------


def write_checkpoint(
    path: str | os.PathLike[str],
    config: ModelConfig,
    tensors: Iterator[tuple[str, torch.Tensor]],
    *,
    layout: Layout = "original",
    packed: bool = True,
    shard_bytes: int = 4 << 30,
) -> Path:
    """Write canonical tensors as a checkpoint folder in `layout`, sharded every `shard_bytes`."""
    from safetensors.torch import save_file

    if layout not in ("original", "hf"):
        raise ValueError(f"unknown layout {layout!r} (original or hf)")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    meta = config.to_reference_json() if layout == "original" else config.to_hf_json()
    if layout == "hf":
        meta["torch_dtype"] = "bfloat16"
        if packed:
            meta["quantization_config"] = {
                "quant_method": "mxfp4",
                "modules_to_not_convert": [
                    "model.layers.*.self_attn",
                    "model.layers.*.mlp.router",
                    "model.embed_tokens",
                    "lm_head",
                ],
            }
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    for old in folder.glob("*.safetensors"):
        old.unlink()
    shards: list[dict[str, torch.Tensor]] = [{}]
    temp: list[Path] = []
    size = total = 0

    def flush() -> None:
        nonlocal size
        p = folder / f"_shard{len(temp):05d}.tmp"
        save_file(shards[-1], str(p), metadata={"format": "pt"})
        temp.append(p)
        shards[-1] = {}
        size = 0

    weight_map: dict[str, int] = {}
    for name, t in tensors:
        items = [(name, t)] if layout == "original" else to_hf_tensors(name, t, config)
        for n, x in items:
            nbytes = x.numel() * x.element_size()
            if size and size + nbytes > shard_bytes:
                flush()
            shards[-1][n] = x.contiguous()
            weight_map[n] = len(temp)
            size += nbytes
            total += nbytes
    flush()
    count = len(temp)
    names = (
        ["model.safetensors"]
        if count == 1
        else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    )
    for p, n in zip(temp, names, strict=True):
        p.rename(folder / n)
    if count > 1 and layout == "hf":
        index = {
            "metadata": {"total_size": total},
            "weight_map": {k: names[v] for k, v in weight_map.items()},
        }
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder


def random_tensors(
    config: ModelConfig,
    *,
    seed: int = 0,
    packed: bool = True,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[str, torch.Tensor]]:
    """Random canonical tensors: every bias, sink and norm scale random too.

    Scaled so the residual stream stays O(1) (small output projections) while expert inputs are
    large enough that the SwiGLU clamps at `swiglu_limit` are exercised. device: where they are
    drawn (a GPU makes the 61 GiB of gpt-oss-120b in seconds; values differ from the CPU's).
    """
    g = torch.Generator(device=device).manual_seed(seed)
    c = config
    on = {"generator": g, "device": device}

    def normal(shape: tuple[int, ...], std: float, dt: torch.dtype = dtype) -> torch.Tensor:
        return (torch.randn(shape, **on) * std).to(dt)

    def uniform(shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
        return torch.rand(shape, **on) * (hi - lo) + lo

    def packed_weight(shape: tuple[int, ...], std: float) -> tuple[torch.Tensor, torch.Tensor]:
        *lead, inp = shape  # random FP4 bytes; scale exponents around the one giving `std`
        rms = math.sqrt(sum(v * v for v in FP4_VALUES) / 16)
        exp = round(math.log2(std / rms)) + 127
        blocks = torch.randint(0, 256, (*lead, inp // 32, 16), dtype=torch.uint8, **on)
        scales = torch.randint(exp - 1, exp + 2, (*lead, inp // 32), **on).to(torch.uint8)
        return blocks, scales

    h, i = c.hidden_size, c.intermediate_size
    for name, shape in expected_shapes(c, packed).items():
        if name.endswith("norm.scale"):
            yield name, uniform(shape, 0.5, 1.5)
        elif name.endswith("sinks"):
            yield name, normal(shape, 1.0, torch.float32)
        elif name == "embedding.weight":
            yield name, normal(shape, 1.0)
        elif name.endswith(("qkv.weight", "gate.weight", "unembedding.weight")):
            yield name, normal(shape, 1.0 / math.sqrt(h))
        elif name.endswith("out.weight"):
            yield name, normal(shape, 0.3 / math.sqrt(shape[1]))
        elif name.endswith("mlp1_weight"):
            yield name, normal(shape, 3.0 / math.sqrt(h))
        elif name.endswith("mlp2_weight"):
            yield name, normal(shape, 0.1 / math.sqrt(i))
        elif name.endswith("mlp1_weight.blocks"):
            blocks, scales = packed_weight((*shape[:2], h), 3.0 / math.sqrt(h))
            yield name, blocks
            yield name.replace("blocks", "scales"), scales
        elif name.endswith("mlp2_weight.blocks"):
            blocks, scales = packed_weight((*shape[:2], i), 0.1 / math.sqrt(i))
            yield name, blocks
            yield name.replace("blocks", "scales"), scales
        elif name.endswith(".scales"):
            continue  # written with their blocks
        elif name.endswith("mlp2_bias"):
            yield name, normal(shape, 0.1)
        else:  # qkv / out / gate / mlp1 biases
            yield name, normal(shape, 0.5)


def write_random_checkpoint(
    path: str | os.PathLike[str],
    config: ModelConfig,
    *,
    layout: Layout = "original",
    seed: int = 0,
    mxfp4: bool = True,
    dtype: torch.dtype = torch.bfloat16,
    shard_bytes: int = 4 << 30,
) -> Path:
    """Write a random gpt-oss checkpoint of shape `config` (MXFP4 or dense experts)."""
    if mxfp4 and (config.hidden_size % 32 or config.intermediate_size % 32):
        raise ValueError("MXFP4 experts need hidden_size and intermediate_size multiples of 32")
    tensors = random_tensors(config, seed=seed, packed=mxfp4, dtype=dtype)
    return write_checkpoint(
        path, config, tensors, layout=layout, packed=mxfp4, shard_bytes=shard_bytes
    )


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    layout: Layout,
    mxfp4: bool | None = None,
    shard_bytes: int = 4 << 30,
) -> Path:
    """Rewrite a checkpoint in `layout`; `mxfp4` True quantises dense experts, False dequantises."""
    ckpt = Checkpoint(src)
    if Path(dst).resolve() == ckpt.folder.resolve():
        raise CheckpointError(f"{dst}: the destination must differ from the source")
    packed = ckpt.packed if mxfp4 is None else mxfp4
    dense_dtype = ckpt.raw(to_stored_name(ckpt, "embedding.weight")).dtype
    tensors = repack(ckpt.tensors(), packed, dense_dtype)
    return write_checkpoint(
        dst, ckpt.config, tensors, layout=layout, packed=packed, shard_bytes=shard_bytes
    )


def to_stored_name(ckpt: Checkpoint, name: str) -> str:
    return name if ckpt.layout == "original" else to_hf_names(name)[0]
