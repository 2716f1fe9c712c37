"""A fused MXFP4 linear for CPU: y = x @ W.T with W read packed, never dequantised in memory.

Decoding one token touches 4.25 bits per expert weight instead of dequantising whole experts to
bf16 first (which costs more than the matmul). Built on first use with the C++ compiler through
`torch.utils.cpp_extension` (AVX-512 when the CPU has it, plain C++ otherwise) and cached; where
no compiler is available `available()` is False and callers keep the dequantise-then-matmul path
(`mxfp4.dequantize`), which is also the reference the tests compare this against.
"""

from __future__ import annotations

import os
import sys
import threading
from types import ModuleType

import torch

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

static const float FP4[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f,
                              -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};

// x (T, K) fp32, blocks (O, K/32, 16) u8, scales (O, K/32) u8 -> y (T, O) fp32
torch::Tensor mxfp4_linear(torch::Tensor x, torch::Tensor blocks, torch::Tensor scales) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.is_contiguous() && x.dim() == 2, "x: fp32 (T, K)");
  TORCH_CHECK(blocks.is_contiguous() && scales.is_contiguous(), "blocks/scales contiguous");
  const int64_t O = blocks.size(0), G = blocks.size(1), T = x.size(0), K = G * 32;
  TORCH_CHECK(x.size(1) == K, "x has ", x.size(1), " columns, the weight ", K);
  // x regrouped per block: the 16 even inputs then the 16 odd ones (low / high nibbles)
  auto xs = torch::empty({T, G, 32}, x.options());
  const float* xp = x.data_ptr<float>();
  float* xsp = xs.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < G; ++g)
      for (int j = 0; j < 16; ++j) {
        xsp[(t * G + g) * 32 + j] = xp[t * K + g * 32 + 2 * j];
        xsp[(t * G + g) * 32 + 16 + j] = xp[t * K + g * 32 + 2 * j + 1];
      }
  auto y = torch::empty({T, O}, x.options());
  float* yp = y.data_ptr<float>();
  const uint8_t* bp = blocks.data_ptr<uint8_t>();
  const uint8_t* sp = scales.data_ptr<uint8_t>();
  float scale[256];  // 2^(s - 127)
  for (int i = 0; i < 256; ++i) scale[i] = std::ldexp(1.f, i - 127);
  at::parallel_for(0, O, 16, [&](int64_t o0, int64_t o1) {
    constexpr int TILE = 8;  // token rows sharing each decoded block
#if defined(__AVX512F__)
    const __m512 lut = _mm512_loadu_ps(FP4);
    const __m512i low4 = _mm512_set1_epi32(15);
#endif
    for (int64_t o = o0; o < o1; ++o) {
      const uint8_t* row = bp + o * G * 16;
      const uint8_t* srow = sp + o * G;
      for (int64_t t0 = 0; t0 < T; t0 += TILE) {
        const int tn = int(std::min<int64_t>(TILE, T - t0));
        const float* xt = xsp + t0 * G * 32;
#if defined(__AVX512F__)
        __m512 acc[TILE];
        for (int i = 0; i < TILE; ++i) acc[i] = _mm512_setzero_ps();
        for (int64_t g = 0; g < G; ++g) {
          __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(row + g * 16)));
          const __m512 sc = _mm512_set1_ps(scale[srow[g]]);
          const __m512i nlo = _mm512_and_si512(b, low4), nhi = _mm512_srli_epi32(b, 4);
          const __m512 lo = _mm512_mul_ps(_mm512_permutexvar_ps(nlo, lut), sc);
          const __m512 hi = _mm512_mul_ps(_mm512_permutexvar_ps(nhi, lut), sc);
          for (int i = 0; i < tn; ++i) {
            const float* xg = xt + (i * G + g) * 32;
            acc[i] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xg), acc[i]);
            acc[i] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xg + 16), acc[i]);
          }
        }
        for (int i = 0; i < tn; ++i) yp[(t0 + i) * O + o] = _mm512_reduce_add_ps(acc[i]);
#else
        float acc[TILE] = {0.f};
        float w[32];
        for (int64_t g = 0; g < G; ++g) {
          const float sc = scale[srow[g]];
          for (int j = 0; j < 16; ++j) {
            const uint8_t byte = row[g * 16 + j];
            w[j] = FP4[byte & 15] * sc;
            w[16 + j] = FP4[byte >> 4] * sc;
          }
          for (int i = 0; i < tn; ++i) {
            const float* xg = xt + (i * G + g) * 32;
            float s = 0.f;
            for (int j = 0; j < 32; ++j) s += w[j] * xg[j];
            acc[i] += s;
          }
        }
        for (int i = 0; i < tn; ++i) yp[(t0 + i) * O + o] = acc[i];
#endif
      }
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("mxfp4_linear", &mxfp4_linear); }
"""

_NAME = "harmony_agent_mxfp4_cpu_v2"
_lock = threading.Lock()
_module: ModuleType | None = None
_failed = False


def _load() -> ModuleType | None:
    global _module, _failed
    with _lock:
        if _module is None and not _failed:
            if os.environ.get("HARMONY_AGENT_NO_CPU_KERNEL"):
                _failed = True
                return None
            try:
                from torch.utils.cpp_extension import load_inline

                if (folder := unbuilt_folder(_NAME)) is not None:
                    # ~20 s of silence otherwise, on a first run that seems to hang.
                    print(
                        f"harmony-agent: compiling the CPU MXFP4 kernel once (about 20 s; kept "
                        f"in {folder})",
                        file=sys.stderr,
                        flush=True,
                    )
                _module = load_inline(
                    name=_NAME,
                    cpp_sources=_SOURCE,
                    extra_cflags=["-O3", "-march=native", "-fopenmp"],
                    extra_ldflags=["-fopenmp"],
                )
            except Exception:  # no compiler, no headers: keep the PyTorch path
                _failed = True
    return _module


def unbuilt_folder(name: str) -> str | None:
    """The folder torch builds extension `name` in, when no build of it is there yet (None too
    when this torch does not say: the notice is worth less than the kernel)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        folder = _get_build_directory(name, verbose=False)
    except (ImportError, OSError):
        return None
    return None if os.path.exists(os.path.join(folder, f"{name}.so")) else folder


def available() -> bool:
    """Whether the fused kernel is built (building it on first call)."""
    return _load() is not None


def mxfp4_linear(
    x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x (T, K) @ W.T + bias with W (O, K) packed as blocks (O, K/32, 16) + scales (O, K/32)."""
    module = _load()
    assert module is not None, "the fused MXFP4 CPU kernel is not available"
    y = module.mxfp4_linear(x.float().contiguous(), blocks, scales)
    if bias is not None:
        y += bias
    return y.to(x.dtype)
