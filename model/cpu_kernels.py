"""CPU kernels for the matrix products of decoding: weights streamed as stored, never expanded.

- `mxfp4_linear`: y = x @ W.T with W packed in MXFP4 (4.25 bits a weight), decoded in registers.
  Dequantising whole experts to bf16 first costs more than the matmul. Decoding each weight to
  fp32 is what bounds it, so bf16 inputs take an int16 path whose block sums are integer
  (2.7x faster at one row on AVX2); fp32 inputs keep the fp32 one.
- `bf16_linear`: y = x @ W.T with W in bf16, for a few rows of x (decode, batched decode). On
  CPUs without AVX-512 BF16, torch's bf16 matrix-vector product runs far below memory
  bandwidth and its bf16 GEMM for a handful of rows slower still.

Built on first use with the C++ compiler through `torch.utils.cpp_extension` and cached, for the
CPU it runs on (`-march=native`: AVX-512 where the CPU has it, else AVX2 + FMA, else plain C++;
`HARMONY_AGENT_CPU_ISA=avx2` or `scalar` builds a lesser variant, which is how the tests check
every path on one machine). Where no compiler is available `available()` is False and callers
keep the PyTorch path, which is also the reference the tests compare against.
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
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

// HA_ISA_MAX caps the instruction set below what the compiler targets: 2 AVX-512, 1 AVX2, 0 C++.
#if defined(__AVX512F__) && HA_ISA_MAX >= 2
#define HA_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && HA_ISA_MAX >= 1
#define HA_AVX2 1
#endif
#if defined(HA_AVX512) || defined(HA_AVX2)
#include <immintrin.h>
#define HA_HAS_AVX2 1  // (AVX-512 CPUs have AVX2 too: the int16 kernel uses it on both)
#endif

static const float FP4[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f,
                              -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};
// twice the FP4 values: integers, so products with int16 inputs sum exactly in int32
static const int8_t FP4X2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

std::string isa() {
#if defined(HA_AVX512)
  return "avx512";
#elif defined(HA_AVX2)
  return "avx2";
#else
  return "scalar";
#endif
}

static inline float bf16_to_float(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

#if defined(HA_HAS_AVX2)
static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// One weight row (G blocks) against TN rows of int16 x (regrouped per block): the sums of
// scale * (integer block sum) in s
template <int TN>
static inline void q16_tile(const uint8_t* row, const uint8_t* srow, const int16_t* qt, int64_t G,
                            const float* scale, float* s) {
  const __m128i lut = _mm_loadu_si128((const __m128i*)FP4X2);
  const __m128i low4 = _mm_set1_epi8(15);
  __m256 acc[TN];
  for (int i = 0; i < TN; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    const __m128i b = _mm_loadu_si128((const __m128i*)(row + g * 16));
    // the 16 even weights (low nibbles), then the 16 odd ones, as int16
    const __m256i we = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(lut, _mm_and_si128(b, low4)));
    const __m256i wo =
        _mm256_cvtepi8_epi16(_mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(b, 4), low4)));
    const __m256 sc = _mm256_set1_ps(scale[srow[g]]);
    for (int i = 0; i < TN; ++i) {
      const int16_t* qg = qt + (i * G + g) * 32;
      const __m256i p = _mm256_add_epi32(
          _mm256_madd_epi16(we, _mm256_loadu_si256((const __m256i*)qg)),
          _mm256_madd_epi16(wo, _mm256_loadu_si256((const __m256i*)(qg + 16))));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[i]);
    }
  }
  for (int i = 0; i < TN; ++i) s[i] = hsum(acc[i]);
}
#endif
#if defined(HA_AVX2)
// FP4 codes in the low 4 bits of 8 int32 lanes -> fp32: magnitude by table, sign by bit 3
static inline __m256 fp4x8(__m256i code, __m256 lut) {
  const __m256 mag = _mm256_permutevar8x32_ps(lut, code);  // reads the low 3 bits
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(code, _mm256_set1_epi32(8)), 28);
  return _mm256_xor_ps(mag, _mm256_castsi256_ps(sign));
}
// 16 bf16 weights as fp32: the even ones (low halves of 32-bit lanes) shifted up, the odd ones
// (high halves) masked; ALU work only, no shuffles, and x split the same way once per call
static inline __m256 bf16_even(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }
static inline __m256 bf16_odd(__m256i v) {
  return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(int(0xFFFF0000u))));
}
// x @ two weight rows for TN token rows of the split x (see bf16_linear): fp32 sums in s0, s1
template <int TN>
static inline void bf16_tile(const uint16_t* w0, const uint16_t* w1, const float* xs, int64_t K,
                             int64_t K16, float* s0, float* s1) {
  __m256 a0[TN], a1[TN];
  for (int i = 0; i < TN; ++i) a0[i] = a1[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K16; k += 16) {
    const __m256i r0 = _mm256_loadu_si256((const __m256i*)(w0 + k));
    const __m256i r1 = _mm256_loadu_si256((const __m256i*)(w1 + k));
    const __m256 e0 = bf16_even(r0), d0 = bf16_odd(r0);
    const __m256 e1 = bf16_even(r1), d1 = bf16_odd(r1);
    for (int i = 0; i < TN; ++i) {
      const float* xg = xs + i * K + k;
      const __m256 xe = _mm256_loadu_ps(xg), xo = _mm256_loadu_ps(xg + 8);
      a0[i] = _mm256_fmadd_ps(d0, xo, _mm256_fmadd_ps(e0, xe, a0[i]));
      a1[i] = _mm256_fmadd_ps(d1, xo, _mm256_fmadd_ps(e1, xe, a1[i]));
    }
  }
  for (int i = 0; i < TN; ++i) {
    s0[i] = hsum(a0[i]);
    s1[i] = hsum(a1[i]);
  }
}
#endif
#if defined(HA_AVX512)
static inline __m512 bf16x16(const uint16_t* p) {
  const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
}
#endif

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
#if defined(HA_AVX512)
    constexpr int TILE = 8;  // token rows sharing each decoded block
    const __m512 lut = _mm512_loadu_ps(FP4);
    const __m512i low4 = _mm512_set1_epi32(15);
#elif defined(HA_AVX2)
    constexpr int TILE = 4;  // two accumulators a row: 8 of the 16 registers
    const __m256 lut = _mm256_loadu_ps(FP4);
    const __m256i low4 = _mm256_set1_epi32(15);
#else
    constexpr int TILE = 8;
#endif
    for (int64_t o = o0; o < o1; ++o) {
      const uint8_t* row = bp + o * G * 16;
      const uint8_t* srow = sp + o * G;
      for (int64_t t0 = 0; t0 < T; t0 += TILE) {
        const int tn = int(std::min<int64_t>(TILE, T - t0));
        const float* xt = xsp + t0 * G * 32;
#if defined(HA_AVX512)
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
#elif defined(HA_AVX2)
        __m256 even[TILE], odd[TILE];
        for (int i = 0; i < TILE; ++i) even[i] = odd[i] = _mm256_setzero_ps();
        for (int64_t g = 0; g < G; ++g) {
          const uint8_t* bg = row + g * 16;
          const __m256 sc = _mm256_set1_ps(scale[srow[g]]);
          const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)bg));
          const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(bg + 8)));
          // weights 2j (low nibbles) pair with xs[j], weights 2j+1 (high) with xs[16 + j]
          const __m256 e0 = _mm256_mul_ps(fp4x8(_mm256_and_si256(b0, low4), lut), sc);
          const __m256 e1 = _mm256_mul_ps(fp4x8(_mm256_and_si256(b1, low4), lut), sc);
          const __m256 d0 = _mm256_mul_ps(fp4x8(_mm256_srli_epi32(b0, 4), lut), sc);
          const __m256 d1 = _mm256_mul_ps(fp4x8(_mm256_srli_epi32(b1, 4), lut), sc);
          for (int i = 0; i < tn; ++i) {
            const float* xg = xt + (i * G + g) * 32;
            even[i] = _mm256_fmadd_ps(e0, _mm256_loadu_ps(xg), even[i]);
            odd[i] = _mm256_fmadd_ps(d0, _mm256_loadu_ps(xg + 16), odd[i]);
            even[i] = _mm256_fmadd_ps(e1, _mm256_loadu_ps(xg + 8), even[i]);
            odd[i] = _mm256_fmadd_ps(d1, _mm256_loadu_ps(xg + 24), odd[i]);
          }
        }
        for (int i = 0; i < tn; ++i) yp[(t0 + i) * O + o] = hsum(_mm256_add_ps(even[i], odd[i]));
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

// As mxfp4_linear for inputs of 16 bits or less (bf16): each row of x as int16 (scale
// max|x| / 32767, so the rounding is at most 1/128 of the bf16 rounding of that largest
// input), the weights as twice their FP4 value (-12..12). A block's products then sum exactly
// in int32 (pmaddwd), with one float multiply-add a block and row: 2-3x the speed of the exact
// kernel, which decodes each weight to fp32.
torch::Tensor mxfp4_linear_q16(torch::Tensor x, torch::Tensor blocks, torch::Tensor scales) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.is_contiguous() && x.dim() == 2, "x: fp32 (T, K)");
  TORCH_CHECK(blocks.is_contiguous() && scales.is_contiguous(), "blocks/scales contiguous");
  const int64_t O = blocks.size(0), G = blocks.size(1), T = x.size(0), K = G * 32;
  TORCH_CHECK(x.size(1) == K, "x has ", x.size(1), " columns, the weight ", K);
  auto q = torch::empty({T, G, 32}, x.options().dtype(torch::kInt16));
  const float* xp = x.data_ptr<float>();
  int16_t* qp = q.data_ptr<int16_t>();
  std::vector<float> dq(T);  // y = dq[t] * sum over blocks of scale * (int block sum)
  for (int64_t t = 0; t < T; ++t) {
    float m = 0.f;
    for (int64_t k = 0; k < K; ++k) m = std::max(m, std::fabs(xp[t * K + k]));
    const float d = m > 0.f ? m / 32767.f : 1.f, inv = 1.f / d;
    dq[t] = d * .5f;
    for (int64_t g = 0; g < G; ++g)  // regrouped per block as in mxfp4_linear
      for (int j = 0; j < 16; ++j) {
        qp[(t * G + g) * 32 + j] = int16_t(std::lrintf(xp[t * K + g * 32 + 2 * j] * inv));
        qp[(t * G + g) * 32 + 16 + j] = int16_t(std::lrintf(xp[t * K + g * 32 + 2 * j + 1] * inv));
      }
  }
  auto y = torch::empty({T, O}, x.options());
  float* yp = y.data_ptr<float>();
  const uint8_t* bp = blocks.data_ptr<uint8_t>();
  const uint8_t* sp = scales.data_ptr<uint8_t>();
  float scale[256];
  for (int i = 0; i < 256; ++i) scale[i] = std::ldexp(1.f, i - 127);
  at::parallel_for(0, O, 16, [&](int64_t o0, int64_t o1) {
    constexpr int TILE = 8;  // token rows sharing each decoded block
    for (int64_t o = o0; o < o1; ++o) {
      const uint8_t* row = bp + o * G * 16;
      const uint8_t* srow = sp + o * G;
      for (int64_t t0 = 0; t0 < T; t0 += TILE) {
        const int tn = int(std::min<int64_t>(TILE, T - t0));
        const int16_t* qt = qp + t0 * G * 32;
#if defined(HA_HAS_AVX2)
        float s[TILE];
        switch (tn) {  // a fixed count keeps the accumulators in registers
          case 1: q16_tile<1>(row, srow, qt, G, scale, s); break;
          case 2: q16_tile<2>(row, srow, qt, G, scale, s); break;
          case 3: q16_tile<3>(row, srow, qt, G, scale, s); break;
          case 4: q16_tile<4>(row, srow, qt, G, scale, s); break;
          case 5: q16_tile<5>(row, srow, qt, G, scale, s); break;
          case 6: q16_tile<6>(row, srow, qt, G, scale, s); break;
          case 7: q16_tile<7>(row, srow, qt, G, scale, s); break;
          default: q16_tile<8>(row, srow, qt, G, scale, s);
        }
        for (int i = 0; i < tn; ++i) yp[(t0 + i) * O + o] = s[i] * dq[t0 + i];
#else
        float acc[TILE] = {0.f};
        for (int64_t g = 0; g < G; ++g) {
          const float sc = scale[srow[g]];
          for (int i = 0; i < tn; ++i) {
            const int16_t* qg = qt + (i * G + g) * 32;
            int32_t s = 0;
            for (int j = 0; j < 16; ++j) {
              const uint8_t byte = row[g * 16 + j];
              s += FP4X2[byte & 15] * qg[j] + FP4X2[byte >> 4] * qg[16 + j];
            }
            acc[i] += float(s) * sc;
          }
        }
        for (int i = 0; i < tn; ++i) yp[(t0 + i) * O + o] = acc[i] * dq[t0 + i];
#endif
      }
    }
  });
  return y;
}

// x (T, K) fp32, w (O, K) bf16 -> y (T, O) fp32: each weight row read once for TILE rows of x,
// two weight rows at a time so that two accumulator chains hide the FMA latency.
torch::Tensor bf16_linear(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.is_contiguous() && x.dim() == 2, "x: fp32 (T, K)");
  TORCH_CHECK(w.dtype() == torch::kBFloat16 && w.is_contiguous() && w.dim() == 2, "w: bf16 (O, K)");
  const int64_t T = x.size(0), K = x.size(1), O = w.size(0);
  TORCH_CHECK(w.size(1) == K, "x has ", K, " columns, the weight ", w.size(1));
  auto y = torch::empty({T, O}, x.options());
  const float* xp = x.data_ptr<float>();
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  float* yp = y.data_ptr<float>();
#if defined(HA_AVX2)
  // x split per 16 columns: the 8 even ones, then the 8 odd ones (see bf16_even / bf16_odd)
  const int64_t K16 = K / 16 * 16;
  std::vector<float> split(T * K);
  float* xs = split.data();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K16; k += 16)
      for (int j = 0; j < 8; ++j) {
        xs[t * K + k + j] = xp[t * K + k + 2 * j];
        xs[t * K + k + 8 + j] = xp[t * K + k + 2 * j + 1];
      }
  if (T == 1) {  // decode: four rows at a time keep enough loads in flight to stream the weights
    at::parallel_for(0, (O + 3) / 4, 16, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const uint16_t* wr[4];
        int64_t rows[4];
        __m256 a[4];
        for (int r = 0; r < 4; ++r) {
          rows[r] = std::min(4 * p + r, O - 1);  // a short last group repeats the last row
          wr[r] = wp + rows[r] * K;
          a[r] = _mm256_setzero_ps();
        }
        for (int64_t k = 0; k < K16; k += 16) {
          const __m256 xe = _mm256_loadu_ps(xs + k), xo = _mm256_loadu_ps(xs + k + 8);
          for (int r = 0; r < 4; ++r) {
            const __m256i v = _mm256_loadu_si256((const __m256i*)(wr[r] + k));
            a[r] = _mm256_fmadd_ps(bf16_even(v), xe, a[r]);
            a[r] = _mm256_fmadd_ps(bf16_odd(v), xo, a[r]);
          }
        }
        for (int r = 0; r < 4; ++r) {
          float s = hsum(a[r]);
          for (int64_t j = K16; j < K; ++j) s += bf16_to_float(wr[r][j]) * xp[j];
          yp[rows[r]] = s;
        }
      }
    });
    return y;
  }
#endif
  constexpr int TILE = 4;
  at::parallel_for(0, (O + 1) / 2, 32, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t o = 2 * p;
      const int64_t o2 = std::min(o + 1, O - 1);  // an odd last row is computed twice
      const uint16_t* w0 = wp + o * K;
      const uint16_t* w1 = wp + o2 * K;
      for (int64_t t0 = 0; t0 < T; t0 += TILE) {
        const int tn = int(std::min<int64_t>(TILE, T - t0));
        float s0[TILE], s1[TILE];
        int64_t k = 0;
#if defined(HA_AVX512)
        __m512 a0[TILE], a1[TILE];
        for (int i = 0; i < TILE; ++i) a0[i] = a1[i] = _mm512_setzero_ps();
        for (; k + 16 <= K; k += 16) {
          const __m512 v0 = bf16x16(w0 + k), v1 = bf16x16(w1 + k);
          for (int i = 0; i < tn; ++i) {
            const __m512 xv = _mm512_loadu_ps(xp + (t0 + i) * K + k);
            a0[i] = _mm512_fmadd_ps(v0, xv, a0[i]);
            a1[i] = _mm512_fmadd_ps(v1, xv, a1[i]);
          }
        }
        for (int i = 0; i < tn; ++i) {
          s0[i] = _mm512_reduce_add_ps(a0[i]);
          s1[i] = _mm512_reduce_add_ps(a1[i]);
        }
#elif defined(HA_AVX2)
        const float* xt = xs + t0 * K;
        switch (tn) {  // a fixed count keeps the accumulators in registers
          case 1: bf16_tile<1>(w0, w1, xt, K, K16, s0, s1); break;
          case 2: bf16_tile<2>(w0, w1, xt, K, K16, s0, s1); break;
          case 3: bf16_tile<3>(w0, w1, xt, K, K16, s0, s1); break;
          default: bf16_tile<4>(w0, w1, xt, K, K16, s0, s1);
        }
        k = K16;
#else
        for (int i = 0; i < tn; ++i) s0[i] = s1[i] = 0.f;
#endif
        for (int i = 0; i < tn; ++i) {
          const float* xr = xp + (t0 + i) * K;
          for (int64_t j = k; j < K; ++j) {  // the tail (all of it in plain C++)
            s0[i] += bf16_to_float(w0[j]) * xr[j];
            s1[i] += bf16_to_float(w1[j]) * xr[j];
          }
          yp[(t0 + i) * O + o] = s0[i];
          yp[(t0 + i) * O + o2] = s1[i];
        }
      }
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mxfp4_linear", &mxfp4_linear);
  m.def("mxfp4_linear_q16", &mxfp4_linear_q16);
  m.def("bf16_linear", &bf16_linear);
  m.def("isa", &isa);
}
"""

ISA_ENV = "HARMONY_AGENT_CPU_ISA"
_ISA_MAX = {"native": 2, "avx2": 1, "scalar": 0}
_lock = threading.Lock()
_modules: dict[str, ModuleType | None] = {}


def build_name(isa: str = "native") -> str:
    return "harmony_agent_cpu_kernels_v5" + ("" if isa == "native" else f"_{isa}")


def _load() -> ModuleType | None:
    if os.environ.get("HARMONY_AGENT_NO_CPU_KERNEL"):
        return None
    isa = os.environ.get(ISA_ENV, "native")
    if isa not in _ISA_MAX:
        raise ValueError(f"{ISA_ENV} must be one of {', '.join(_ISA_MAX)}, got {isa!r}")
    with _lock:
        if isa not in _modules:
            _modules[isa] = _build(isa)
    return _modules[isa]


def _build(isa: str) -> ModuleType | None:
    name = build_name(isa)
    try:
        from torch.utils.cpp_extension import load_inline

        if (folder := unbuilt_folder(name)) is not None:
            # ~20 s of silence otherwise, on a first run that seems to hang.
            print(
                f"harmony-agent: compiling the CPU kernels once (about 20 s; kept in {folder})",
                file=sys.stderr,
                flush=True,
            )
        return load_inline(
            name=name,
            cpp_sources=_SOURCE,
            extra_cflags=["-O3", "-march=native", "-fopenmp", f"-DHA_ISA_MAX={_ISA_MAX[isa]}"],
            extra_ldflags=["-fopenmp"],
        )
    except Exception:  # no compiler, no headers: keep the PyTorch path
        return None


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
    """Whether the kernels are built (building them on first call)."""
    return _load() is not None


def isa() -> str:
    """The instruction set the built kernels use: avx512, avx2 or scalar."""
    module = _load()
    assert module is not None, "the CPU kernels are not available"
    return str(module.isa())


def mxfp4_linear(
    x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x (T, K) @ W.T + bias with W (O, K) packed as blocks (O, K/32, 16) + scales (O, K/32).

    An fp32 x goes through the fp32 kernel; a bf16 (or fp16) one through the int16 kernel,
    whose rounding of x is far below the bf16 rounding x already has."""
    module = _load()
    assert module is not None, "the CPU kernels are not available"
    kernel = module.mxfp4_linear if x.dtype == torch.float32 else module.mxfp4_linear_q16
    y = kernel(x.float().contiguous(), blocks, scales)
    if bias is not None:
        y += bias
    return y.to(x.dtype)


def bf16_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (T, K) @ w.T + bias for a contiguous bf16 w (O, K); accumulates in fp32."""
    module = _load()
    assert module is not None, "the CPU kernels are not available"
    y = module.bf16_linear(x.float().contiguous(), w)
    if bias is not None:
        y += bias
    return y.to(x.dtype)
