"""CPU kernels for the matrix products of decoding: weights streamed as stored, never expanded.

- `mxfp4_linear`: y = x @ W.T with W packed in MXFP4 (4.25 bits a weight), decoded in registers.
  Dequantising whole experts to bf16 first costs more than the matmul. Decoding each weight to
  fp32 is what bounds it, so bf16 inputs take an int16 path whose block sums are integer
  (2.7x faster at one row on AVX2); fp32 inputs keep the fp32 one.
- `moe_mxfp4`: the routed experts of a set of bf16 tokens (both products, SwiGLU, the gated sum)
  in one call: the int16 products, one parallel loop over all the experts' rows each.
- `rms_norm`: RMSNorm of bf16 rows in one call.
- `paged_decode`: decode attention of a batch over its keys where they lie in the cache pages,
  RoPE and the cache write included: no gathered copy of every row's keys and values, no mask
  tensors, none of the small ops of the rotation.
- `bf16_linear`: y = x @ W.T with W in bf16, for a few rows of x (decode, batched decode). On
  CPUs without AVX-512 BF16, torch's bf16 matrix-vector product runs far below memory
  bandwidth and its bf16 GEMM for a handful of rows slower still.
- `argmax`: greedy decoding's pick from a row of logits; torch's argmax takes ~0.7 ms over 201088
  bf16 logits, a percent of a decode step.

Built on first use with the C++ compiler through `torch.utils.cpp_extension` and cached, for the
CPU it runs on (`-march=native`: AVX-512 where the CPU has it, else AVX2 + FMA, else plain C++;
`HARMONY_AGENT_CPU_ISA=avx512`, `avx2` or `scalar` builds a lesser variant, which is how the
tests check every path on one machine; read at first use). Where no compiler is available
`available()` is False and callers keep the PyTorch path, which is also the reference the tests
compare against.
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
#include <atomic>
#include <cmath>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

// HA_ISA_MAX caps the instruction set below what the compiler targets: 3 AVX-512 with its dot
// products (BF16, VNNI) and byte permutes (VBMI), 2 AVX-512 (F, BW), 1 AVX2, 0 C++.
#if defined(__AVX512F__) && defined(__AVX512BW__) && HA_ISA_MAX >= 2
#define HA_AVX512 1
#if defined(__AVX512BF16__) && defined(__AVX512VNNI__) && defined(__AVX512VBMI__) && \
    HA_ISA_MAX >= 3
#define HA_AVX512BF16 1
#endif
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

// 2^(s - 127) for each MXFP4 scale byte s
static const float* e8m0_scales() {
  static const std::vector<float> table = [] {
    std::vector<float> t(256);
    for (int i = 0; i < 256; ++i) t[i] = std::ldexp(1.f, i - 127);
    return t;
  }();
  return table.data();
}

// How far ahead of its loads a weight stream asks for its cache lines: ~10% more bandwidth
// than the hardware prefetcher alone gives on a single stream (Zen 5)
constexpr int64_t PREFETCH_BYTES = 2048;

// Whether the bf16 decode product asks for its lines ahead too: not on Zen 4 (AMD family 25 with
// AVX-512), where it streams 20-30% faster without (two threads, same tensors, interleaved
// calls) while the MXFP4 products gain a little from it
static bool bf16_prefetch_helps() {
#if defined(__x86_64__)
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return true;
  const bool amd = b == 0x68747541;  // "Auth" of AuthenticAMD
  if (!__get_cpuid(1, &a, &b, &c, &d)) return true;
  const unsigned family = ((a >> 8) & 15) + ((a >> 20) & 255);
  return !(amd && family == 25 && __builtin_cpu_supports("avx512f"));
#else
  return true;
#endif
}
static const bool BF16_PREFETCH = bf16_prefetch_helps();

// Rows of this many bytes that one thread reads alone: waking the other threads costs more than
// a product this small (the router's 32 x 2880, say) takes
static inline int64_t serial_rows(int64_t row_bytes) {
  return std::max<int64_t>(16, (int64_t(1) << 18) / row_bytes);
}

// fn(a, b) over [0, n) in chunks of `chunk` that the threads take in turn as each is free: a
// thread woken late (~40 us from a passive wait on a VM) or sharing its core takes fewer,
// where an even split would hold every product up by its wake-up. n <= serial: one call, here.
template <typename F>
static void parallel_chunks(int64_t n, int64_t serial, int64_t chunk, const F& fn) {
  const int64_t chunks = (n + chunk - 1) / chunk;
  if (n <= serial || chunks < 2 || at::get_num_threads() < 2 || at::in_parallel_region()) {
    if (n > 0) fn(0, n);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(chunks, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    for (int64_t c = next++; c < chunks; c = next++) fn(c * chunk, std::min(n, (c + 1) * chunk));
  });
}

// Rows of this many bytes make a chunk of parallel_chunks: ~5 us of streaming, so the taking
// costs nothing and the threads finish within that of each other
static inline int64_t chunk_rows(int64_t row_bytes) {
  return std::max<int64_t>(1, (int64_t(1) << 18) / row_bytes);
}

std::string isa() {
#if defined(HA_AVX512BF16)
  return "avx512bf16";
#elif defined(HA_AVX512)
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

// e^x (x clamped to [-87, 88]) as 2^n 2^f, f in [-1/2, 1/2] by a degree-6 polynomial (relative
// error below 2e-7): plain arithmetic, so the softmax and SwiGLU loops calling it vectorise
// (std::exp is a call per value, tens of us a layer)
static inline float exp_fast(float x) {
  const float t = std::min(std::max(x, -87.f), 88.f) * 1.44269504089f;
  const float n = (t + 12582912.f) - 12582912.f;  // round to nearest (1.5 2^23)
  const float f = t - n;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
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
#if defined(HA_AVX512)
// q16_tile with 512-bit registers: two blocks a pass, each block's 32 weights one register
template <int TN>
static inline void q16_tile512(const uint8_t* row, const uint8_t* srow, const int16_t* qt,
                               int64_t G, const float* scale, float* s) {
  const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)FP4X2));
  const __m256i low4 = _mm256_set1_epi8(15);
  __m512 acc[TN];
  for (int i = 0; i < TN; ++i) acc[i] = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 2 <= G; g += 2) {
    if (TN == 1 && g % 4 == 0)  // decode: one stream, a line every four blocks
      _mm_prefetch((const char*)(row + g * 16) + PREFETCH_BYTES, _MM_HINT_NTA);
    const __m256i b = _mm256_loadu_si256((const __m256i*)(row + g * 16));
    // per 128-bit lane (block): the even weights (low nibbles), then the odd ones
    const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(b, low4));
    const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(b, 4), low4));
    const __m512i w0 = _mm512_cvtepi8_epi16(_mm256_permute2x128_si256(lo, hi, 0x20));
    const __m512i w1 = _mm512_cvtepi8_epi16(_mm256_permute2x128_si256(lo, hi, 0x31));
    const __m512 sc0 = _mm512_set1_ps(scale[srow[g]]), sc1 = _mm512_set1_ps(scale[srow[g + 1]]);
    for (int i = 0; i < TN; ++i) {
      const int16_t* qg = qt + (i * G + g) * 32;
      const __m512i p0 = _mm512_madd_epi16(w0, _mm512_loadu_si512(qg));
      const __m512i p1 = _mm512_madd_epi16(w1, _mm512_loadu_si512(qg + 32));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), sc0, acc[i]);
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), sc1, acc[i]);
    }
  }
  if (g < G) {  // an odd last block
    const __m128i b = _mm_loadu_si128((const __m128i*)(row + g * 16));
    const __m128i l = _mm256_castsi256_si128(lut), m = _mm_set1_epi8(15);
    const __m128i lo = _mm_shuffle_epi8(l, _mm_and_si128(b, m));
    const __m128i hi = _mm_shuffle_epi8(l, _mm_and_si128(_mm_srli_epi16(b, 4), m));
    const __m512i w = _mm512_cvtepi8_epi16(_mm256_set_m128i(hi, lo));
    const __m512 sc = _mm512_set1_ps(scale[srow[g]]);
    for (int i = 0; i < TN; ++i) {
      const __m512i p = _mm512_madd_epi16(w, _mm512_loadu_si512(qt + (i * G + g) * 32));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), sc, acc[i]);
    }
  }
  for (int i = 0; i < TN; ++i) s[i] = _mm512_reduce_add_ps(acc[i]);
}
#endif
#if defined(HA_AVX512BF16)
// 32 bf16 values at p, or the first n < 32 of them and zeros
static inline __m512bh bf16x32(const uint16_t* p, int64_t n) {
  if (n >= 32) return (__m512bh)_mm512_loadu_si512(p);
  return (__m512bh)_mm512_maskz_loadu_epi16(__mmask32((1u << n) - 1), p);
}
// One bf16 weight row against one bf16 x row, 32 columns a vdpbf16ps: four accumulators along K
// (one stream of weights per thread: faster than several rows side by side)
static inline float dpbf16_row(const uint16_t* w, const uint16_t* x, int64_t K) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t k = 0;
  for (; k + 128 <= K; k += 128) {
    if (BF16_PREFETCH) {
      const char* ahead = reinterpret_cast<const char*>(w + k) + PREFETCH_BYTES;
      for (int line = 0; line < 4; ++line) _mm_prefetch(ahead + 64 * line, _MM_HINT_NTA);
    }
    a0 = _mm512_dpbf16_ps(a0, bf16x32(w + k, 32), bf16x32(x + k, 32));
    a1 = _mm512_dpbf16_ps(a1, bf16x32(w + k + 32, 32), bf16x32(x + k + 32, 32));
    a2 = _mm512_dpbf16_ps(a2, bf16x32(w + k + 64, 32), bf16x32(x + k + 64, 32));
    a3 = _mm512_dpbf16_ps(a3, bf16x32(w + k + 96, 32), bf16x32(x + k + 96, 32));
  }
  for (; k < K; k += 32) a0 = _mm512_dpbf16_ps(a0, bf16x32(w + k, K - k), bf16x32(x + k, K - k));
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}
// TN bf16 x rows (ldx apart) against two weight rows (ldw apart): sums s[2 i + r] in fp32
template <int TN>
static inline void dpbf16_tile(const uint16_t* w, int64_t ldw, const uint16_t* x, int64_t ldx,
                               int64_t K, float* s) {
  __m512 a0[TN], a1[TN];
  for (int i = 0; i < TN; ++i) a0[i] = a1[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    const __m512bh w0 = bf16x32(w + k, K - k), w1 = bf16x32(w + ldw + k, K - k);
    for (int i = 0; i < TN; ++i) {
      const __m512bh xv = bf16x32(x + i * ldx + k, K - k);
      a0[i] = _mm512_dpbf16_ps(a0[i], w0, xv);
      a1[i] = _mm512_dpbf16_ps(a1[i], w1, xv);
    }
  }
  for (int i = 0; i < TN; ++i) {
    s[2 * i] = _mm512_reduce_add_ps(a0[i]);
    s[2 * i + 1] = _mm512_reduce_add_ps(a1[i]);
  }
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
  const float* scale = e8m0_scales();
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

// Rows of x (K = 32 G wide) as int16, scale max|x| / 32639 (so the rounding is at most 1/127 of
// the bf16 rounding of that largest input, and each value splits into two signed bytes),
// regrouped per block as in mxfp4_linear: q (T, G, 32) and each row's factor dq (half its scale:
// the weights below are twice their FP4 value).
static void quantize_q16(const float* xp, int64_t T, int64_t G, int16_t* qp, float* dq) {
  const int64_t K = G * 32;
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = xp + t * K;
    float m = 0.f;
    for (int64_t k = 0; k < K; ++k) m = std::max(m, std::fabs(xr[k]));
    const float d = m > 0.f ? m / 32639.f : 1.f, inv = 1.f / d;
    dq[t] = d * .5f;
    int16_t* qr = qp + t * K;
    for (int64_t g = 0; g < G; ++g)
      for (int j = 0; j < 16; ++j) {
        qr[g * 32 + j] = int16_t(std::lrintf(xr[g * 32 + 2 * j] * inv));
        qr[g * 32 + 16 + j] = int16_t(std::lrintf(xr[g * 32 + 2 * j + 1] * inv));
      }
  }
}

#if defined(HA_AVX512BF16)
// quantize_q16's rows as two signed bytes a value (v = 256 hi + lo) for vpdpbusd, per token in
// groups of four blocks: 64 bytes of the even values' hi bytes (block b of the group at 16 b..),
// then the odd ones' hi, the even lo, the odd lo; and each block's sum of v (sums, T x G)
static void split_q16(const int16_t* q, int64_t T, int64_t G, int8_t* planes, float* sums) {
  const int64_t G4 = (G + 3) / 4;
  std::memset(planes, 0, T * G4 * 256);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < G; ++g) {
      const int16_t* qg = q + (t * G + g) * 32;
      int8_t* pg = planes + t * G4 * 256 + (g / 4) * 256 + (g % 4) * 16;
      int32_t sum = 0;
      for (int j = 0; j < 32; ++j) {
        const int32_t v = qg[j], lo = ((v + 128) & 255) - 128, hi = (v - lo) / 256;
        const int at = j < 16 ? j : 64 + j - 16;  // even values, then odd ones
        pg[at] = int8_t(hi);
        pg[at + 128] = int8_t(lo);
        sum += v;
      }
      sums[t * G + g] = float(sum);
    }
}

// One weight row against TN tokens of split_q16's bytes (pstride apart; sums G apart), as
// q16_tile computes it: weights as unsigned bytes (twice their FP4 value, plus 12) so that one
// vpdpbusd multiplies 64 of them; 12 times each block's sum of x is taken off at the end. Four
// blocks a pass instead of two, and half the instructions a block.
static const uint8_t FP4U[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};
template <int TN>
static inline void q8x2_tile(const uint8_t* row, const uint8_t* srow, const int8_t* planes,
                             int64_t pstride, const float* sums, int64_t G, float* s) {
  const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)FP4U));
  const __m512i zero = _mm512_setzero_si512();
  const __m512i quarter = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  __m512 acc[TN], corr[TN];
  for (int i = 0; i < TN; ++i) acc[i] = corr[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; g += 16) {
    if (TN == 1)  // decode: one stream (the 16 blocks are four lines)
      for (int line = 0; line < 4; ++line)
        _mm_prefetch((const char*)(row + g * 16) + PREFETCH_BYTES + 64 * line, _MM_HINT_NTA);
    const int64_t n = std::min<int64_t>(16, G - g);
    const __mmask16 m = __mmask16((1u << n) - 1);
    // the 16 blocks' scales: an e8m0 byte is the exponent field of its fp32 power of two
    const __m512 sv = _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, srow + g)), 23));
    for (int i = 0; i < TN; ++i)
      corr[i] = _mm512_fmadd_ps(sv, _mm512_maskz_loadu_ps(m, sums + i * G + g), corr[i]);
    for (int64_t k = 0; 4 * k < n; ++k) {
      const int64_t gg = g + 4 * k, nb = std::min<int64_t>(4, G - gg);
      const __m512i b = nb == 4 ? _mm512_loadu_si512(row + gg * 16)
                                : _mm512_maskz_loadu_epi8((1ull << (nb * 16)) - 1, row + gg * 16);
      // vpermb reads six bits of an index, and lut is its 16 bytes four times over: no masking
      // (pshufb needs bit 7 clear), 5% more weights a second on Zen 4
      const __m512i we = _mm512_permutexvar_epi8(b, lut);
      const __m512i wo = _mm512_permutexvar_epi8(_mm512_srli_epi16(b, 4), lut);
      const __m512i lanes = _mm512_add_epi32(quarter, _mm512_set1_epi32(int(4 * k)));
      const __m512 sk = _mm512_permutexvar_ps(lanes, sv);  // each block's scale on its lanes
      const int8_t* xg = planes + (gg / 4) * 256;
      for (int i = 0; i < TN; ++i) {
        const int8_t* xi = xg + i * pstride;
        __m512i p = _mm512_dpbusd_epi32(zero, we, _mm512_loadu_si512(xi));
        p = _mm512_dpbusd_epi32(p, wo, _mm512_loadu_si512(xi + 64));
        p = _mm512_slli_epi32(p, 8);
        p = _mm512_dpbusd_epi32(p, we, _mm512_loadu_si512(xi + 128));
        p = _mm512_dpbusd_epi32(p, wo, _mm512_loadu_si512(xi + 192));
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), sk, acc[i]);
      }
    }
  }
  for (int i = 0; i < TN; ++i)
    s[i] = _mm512_reduce_add_ps(acc[i]) - 12.f * _mm512_reduce_add_ps(corr[i]);
}
#endif

// Rows of quantize_q16's output (q (T, G, 32), dq (T,)) as the kernels read them: with vpdpbusd,
// also split_q16's bytes, made once for all the threads.
struct Q16 {
  const int16_t* q;
  const float* dq;
  int64_t G;
#if defined(HA_AVX512BF16)
  int64_t pstride;
  std::vector<int8_t> planes;
  std::vector<float> sums;
#endif
  Q16(const int16_t* q_, const float* dq_, int64_t T, int64_t G_) : q(q_), dq(dq_), G(G_) {
#if defined(HA_AVX512BF16)
    pstride = (G + 3) / 4 * 256;
    planes.resize(T * pstride);
    sums.resize(T * G);
    split_q16(q, T, G, planes.data(), sums.data());
#endif
  }
};

// Weight rows o0..o1 (packed: bp (O, G, 16), sp (O, G)) against T rows of x from its row x0:
// y[t * ldy + o] = dq[t] * sum over blocks of scale * (the block's integer sum).
static void q16_rows(const uint8_t* bp, const uint8_t* sp, int64_t G, int64_t o0, int64_t o1,
                     const Q16& x, int64_t x0, int64_t T, float* yp, int64_t ldy) {
  const float* scale = e8m0_scales();
  constexpr int TILE = 8;  // token rows sharing each decoded block
  const int16_t* qp = x.q + x0 * G * 32;
  const float* dq = x.dq + x0;
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t* row = bp + o * G * 16;
    const uint8_t* srow = sp + o * G;
    for (int64_t t0 = 0; t0 < T; t0 += TILE) {
      const int tn = int(std::min<int64_t>(TILE, T - t0));
      const int16_t* qt = qp + t0 * G * 32;
#if defined(HA_HAS_AVX2)
      float s[TILE];
      // a fixed count keeps the accumulators in registers
      auto tile = [&](auto count) {
        constexpr int N = decltype(count)::value;
#if defined(HA_AVX512BF16)
        q8x2_tile<N>(row, srow, x.planes.data() + (x0 + t0) * x.pstride, x.pstride,
                     x.sums.data() + (x0 + t0) * G, G, s);
#elif defined(HA_AVX512)
        q16_tile512<N>(row, srow, qt, G, scale, s);
#else
        q16_tile<N>(row, srow, qt, G, scale, s);
#endif
      };
      switch (tn) {
        case 1: tile(std::integral_constant<int, 1>{}); break;
        case 2: tile(std::integral_constant<int, 2>{}); break;
        case 3: tile(std::integral_constant<int, 3>{}); break;
        case 4: tile(std::integral_constant<int, 4>{}); break;
        case 5: tile(std::integral_constant<int, 5>{}); break;
        case 6: tile(std::integral_constant<int, 6>{}); break;
        case 7: tile(std::integral_constant<int, 7>{}); break;
        default: tile(std::integral_constant<int, 8>{});
      }
      for (int i = 0; i < tn; ++i) yp[(t0 + i) * ldy + o] = s[i] * dq[t0 + i];
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
      for (int i = 0; i < tn; ++i) yp[(t0 + i) * ldy + o] = acc[i] * dq[t0 + i];
#endif
    }
  }
}

// As mxfp4_linear for inputs of 16 bits or less (bf16), through quantize_q16: a block's
// products sum exactly in int32 (pmaddwd), with one float multiply-add a block and row: 2-3x the
// speed of the exact kernel, which decodes each weight to fp32.
torch::Tensor mxfp4_linear_q16(torch::Tensor x, torch::Tensor blocks, torch::Tensor scales) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.is_contiguous() && x.dim() == 2, "x: fp32 (T, K)");
  TORCH_CHECK(blocks.is_contiguous() && scales.is_contiguous(), "blocks/scales contiguous");
  const int64_t O = blocks.size(0), G = blocks.size(1), T = x.size(0), K = G * 32;
  TORCH_CHECK(x.size(1) == K, "x has ", x.size(1), " columns, the weight ", K);
  auto q = torch::empty({T, G, 32}, x.options().dtype(torch::kInt16));
  std::vector<float> dq(T);
  quantize_q16(x.data_ptr<float>(), T, G, q.data_ptr<int16_t>(), dq.data());
  auto y = torch::empty({T, O}, x.options());
  const uint8_t* bp = blocks.data_ptr<uint8_t>();
  const uint8_t* sp = scales.data_ptr<uint8_t>();
  const Q16 xq(q.data_ptr<int16_t>(), dq.data(), T, G);
  parallel_chunks(O, 16, chunk_rows(G * 17), [&](int64_t o0, int64_t o1) {
    q16_rows(bp, sp, G, o0, o1, xq, 0, T, y.data_ptr<float>(), O);
  });
  return y;
}

#if defined(HA_AVX512BF16)
// Weight rows o0..o1 of an MXFP4 matrix as bf16, in their natural column order, into out
// (rows of K). Each weight (an FP4 value times a power of two) is exact in bf16.
static void mxfp4_rows_bf16(const uint8_t* bp, const uint8_t* sp, int64_t G, int64_t o0,
                            int64_t o1, uint16_t* out) {
  const __m512 lut = _mm512_loadu_ps(FP4);
  const __m256i low4 = _mm256_set1_epi16(15);
  const float* scale = e8m0_scales();
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t *row = bp + o * G * 16, *srow = sp + o * G;
    uint16_t* w = out + (o - o0) * G * 32;
    for (int64_t g = 0; g < G; ++g) {
      // byte j holds weights 2j (low nibble) and 2j + 1 (high): codes in order, a byte each
      const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(row + g * 16)));
      const __m256i codes = _mm256_or_si256(_mm256_and_si256(b, low4),
                                            _mm256_slli_epi16(_mm256_srli_epi16(b, 4), 8));
      const __m512 sc = _mm512_set1_ps(scale[srow[g]]);
      const __m512 v0 = _mm512_mul_ps(
          _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(codes)), lut), sc);
      const __m512 v1 = _mm512_mul_ps(
          _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(codes, 1)), lut),
          sc);
      _mm512_storeu_si512(w + g * 32, (__m512i)_mm512_cvtne2ps_pbh(v1, v0));
    }
  }
}

// 4 bf16 x rows (ldx apart) against 4 bf16 weight rows (ldw apart), K a multiple of 32: sums
// in s[4 i + r]
static inline void dpbf16_4x4(const uint16_t* w, int64_t ldw, const uint16_t* x, int64_t ldx,
                              int64_t K, float* s) {
  __m512 a[4][4];
  for (int i = 0; i < 4; ++i)
    for (int r = 0; r < 4; ++r) a[i][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    __m512bh wv[4];
    for (int r = 0; r < 4; ++r) wv[r] = (__m512bh)_mm512_loadu_si512(w + r * ldw + k);
    for (int i = 0; i < 4; ++i) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + i * ldx + k);
      for (int r = 0; r < 4; ++r) a[i][r] = _mm512_dpbf16_ps(a[i][r], wv[r], xv);
    }
  }
  for (int i = 0; i < 4; ++i)
    for (int r = 0; r < 4; ++r) s[4 * i + r] = _mm512_reduce_add_ps(a[i][r]);
}
#endif

// x (T, K) bf16 @ W.T for W (O, K) packed in MXFP4 -> (T, O) fp32, for many rows of x (prefill):
// each tile of 16 weight rows is decoded once to bf16 (in cache) and multiplied with every row
// of x by the bf16 dot product. Exact products, fp32 sums.
torch::Tensor mxfp4_linear_bf16(torch::Tensor x, torch::Tensor blocks, torch::Tensor scales) {
  TORCH_CHECK(x.dtype() == torch::kBFloat16 && x.is_contiguous() && x.dim() == 2, "x: bf16 (T, K)");
  TORCH_CHECK(blocks.is_contiguous() && scales.is_contiguous(), "blocks/scales contiguous");
  const int64_t O = blocks.size(0), G = blocks.size(1), T = x.size(0), K = G * 32;
  TORCH_CHECK(x.size(1) == K, "x has ", x.size(1), " columns, the weight ", K);
  auto y = torch::empty({T, O}, x.options().dtype(torch::kFloat32));
#if defined(HA_AVX512BF16)
  constexpr int64_t RT = 16;  // weight rows decoded at a time: 16 K-wide bf16 rows stay in L2
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const uint8_t* bp = blocks.data_ptr<uint8_t>();
  const uint8_t* sp = scales.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, (O + RT - 1) / RT, 1, [&](int64_t t0, int64_t t1) {
    std::vector<uint16_t> wb(RT * K);
    float s[16];
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int64_t o0 = tile * RT, rows = std::min(RT, O - o0);
      mxfp4_rows_bf16(bp, sp, G, o0, o0 + rows, wb.data());
      for (int64_t r0 = 0; r0 < rows; r0 += 4) {
        const int64_t rn = std::min<int64_t>(4, rows - r0);
        for (int64_t i0 = 0; i0 < T; i0 += 4) {
          const int64_t tn = std::min<int64_t>(4, T - i0);
          if (rn == 4 && tn == 4) {
            dpbf16_4x4(wb.data() + r0 * K, K, xp + i0 * K, K, K, s);
          } else {  // the edges
            for (int64_t i = 0; i < tn; ++i)
              for (int64_t r = 0; r < rn; ++r)
                s[4 * i + r] = dpbf16_row(wb.data() + (r0 + r) * K, xp + (i0 + i) * K, K);
          }
          for (int64_t i = 0; i < tn; ++i)
            for (int64_t r = 0; r < rn; ++r) yp[(i0 + i) * O + o0 + r0 + r] = s[4 * i + r];
        }
      }
    }
  });
#else
  TORCH_CHECK(false, "mxfp4_linear_bf16 needs AVX-512 BF16");
#endif
  return y;
}

// Row e of a bias (E, O), fp32 or bf16, as fp32 in out (O,)
static void bias_row(const torch::Tensor& b, int64_t e, std::vector<float>& out) {
  const int64_t O = b.size(1);
  out.resize(O);
  if (b.scalar_type() == torch::kBFloat16) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(b.data_ptr<at::BFloat16>()) + e * O;
    for (int64_t o = 0; o < O; ++o) out[o] = bf16_to_float(p[o]);
  } else {
    std::memcpy(out.data(), b.data_ptr<float>() + e * O, O * sizeof(float));
  }
}

// Rows of all the experts in use, as one parallel loop: rows [u R, (u + 1) R) are expert
// used[u]'s, against its tokens (rows first[u]..first[u + 1] of q) -> y (pairs, R).
static void experts_q16(const torch::Tensor& blocks, const torch::Tensor& scales,
                        const std::vector<int64_t>& used, const std::vector<int64_t>& first,
                        const int16_t* q, const float* dq, float* y) {
  const int64_t R = blocks.size(1), G = blocks.size(2);
  const uint8_t* bp = blocks.data_ptr<uint8_t>();
  const uint8_t* sp = scales.data_ptr<uint8_t>();
  const int64_t n_used = int64_t(used.size());
  const Q16 x(q, dq, first.back(), G);
  parallel_chunks(n_used * R, 16, chunk_rows(G * 17), [&](int64_t r0, int64_t r1) {
    for (int64_t u = r0 / R; u < n_used && u * R < r1; ++u) {
      const int64_t e = used[u], a = std::max(r0, u * R) - u * R;
      const int64_t b = std::min(r1, (u + 1) * R) - u * R;
      const int64_t p = first[u], n = first[u + 1] - p;
      q16_rows(bp + e * R * G * 16, sp + e * R * G, G, a, b, x, p, n, y + p * R, R);
    }
  });
}

// The routed experts of T tokens in one call, for inputs of bf16 precision (as mxfp4_linear_q16):
// x (T, H) fp32, ids (T, A) int64, gates (T, A) fp32; mlp1 (E, 2I, H/32, 16) packed with scales
// and bias (E, 2I); mlp2 (E, H, I/32, 16) with scales and bias (E, H) -> (T, H) fp32, the sum
// over a of gates[t, a] * mlp2(swiglu(mlp1(x[t]))) of expert ids[t, a]. The (token, expert) pairs
// are grouped by expert, so each expert used is read once for all its tokens.
torch::Tensor moe_q16(torch::Tensor x, torch::Tensor ids, torch::Tensor gates, torch::Tensor b1,
                      torch::Tensor s1, torch::Tensor bias1, torch::Tensor b2, torch::Tensor s2,
                      torch::Tensor bias2, double alpha, double limit) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.is_contiguous() && x.dim() == 2, "x: fp32 (T, H)");
  TORCH_CHECK(ids.dtype() == torch::kInt64 && ids.is_contiguous() && ids.dim() == 2, "ids (T, A)");
  TORCH_CHECK(gates.dtype() == torch::kFloat32 && gates.is_contiguous(), "gates: fp32 (T, A)");
  for (const auto* t : {&b1, &s1, &bias1, &b2, &s2, &bias2})
    TORCH_CHECK(t->is_contiguous(), "experts contiguous");
  const int64_t T = x.size(0), H = x.size(1), A = ids.size(1), E = b1.size(0);
  const int64_t R1 = b1.size(1), G1 = b1.size(2), I = R1 / 2, G2 = b2.size(2);
  TORCH_CHECK(G1 * 32 == H && b2.size(1) == H && G2 * 32 == I, "expert shapes do not fit x");
  // pairs grouped by expert (a counting sort): pair[k] = t A + a
  const int64_t P = T * A;
  const int64_t* idp = ids.data_ptr<int64_t>();
  std::vector<int64_t> count(E + 1, 0), pair(P);
  for (int64_t k = 0; k < P; ++k) {
    TORCH_CHECK(idp[k] >= 0 && idp[k] < E, "expert id ", idp[k], " out of range");
    ++count[idp[k] + 1];
  }
  std::vector<int64_t> used, first{0};
  for (int64_t e = 0; e < E; ++e) {
    if (count[e + 1] > 0) {
      used.push_back(e);
      first.push_back(first.back() + count[e + 1]);
    }
    count[e + 1] += count[e];
  }
  for (int64_t k = 0; k < P; ++k) pair[count[idp[k]]++] = k;
  // each pair's token, quantized
  auto qx = torch::empty({P, G1, 32}, x.options().dtype(torch::kInt16));
  std::vector<float> dqx(P);
  {
    auto qt = torch::empty({T, G1, 32}, qx.options());
    std::vector<float> dqt(T);
    quantize_q16(x.data_ptr<float>(), T, G1, qt.data_ptr<int16_t>(), dqt.data());
    for (int64_t k = 0; k < P; ++k) {
      const int64_t t = pair[k] / A;
      std::memcpy(qx.data_ptr<int16_t>() + k * H, qt.data_ptr<int16_t>() + t * H, H * 2);
      dqx[k] = dqt[t];
    }
  }
  auto y1 = torch::empty({P, R1}, x.options());
  experts_q16(b1, s1, used, first, qx.data_ptr<int16_t>(), dqx.data(), y1.data_ptr<float>());
  // bias, then SwiGLU on interleaved columns (glu even, linear odd, both clamped), quantized
  auto h = torch::empty({P, I}, x.options());
  float* hp = h.data_ptr<float>();
  const float* y1p = y1.data_ptr<float>();
  const float lim = float(limit), al = float(alpha);
  std::vector<float> bias;
  for (int64_t k = 0; k < P; ++k) {
    bias_row(bias1, idp[pair[k]], bias);
    const float *yr = y1p + k * R1, *br = bias.data();
    float* hr = hp + k * I;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) {
      const float glu = std::min(yr[2 * i] + br[2 * i], lim);
      const float lin = std::min(std::max(yr[2 * i + 1] + br[2 * i + 1], -lim), lim);
      hr[i] = glu / (1.f + exp_fast(-al * glu)) * (lin + 1.f);
    }
  }
  auto qh = torch::empty({P, G2, 32}, qx.options());
  std::vector<float> dqh(P);
  quantize_q16(hp, P, G2, qh.data_ptr<int16_t>(), dqh.data());
  auto y2 = torch::empty({P, H}, x.options());
  experts_q16(b2, s2, used, first, qh.data_ptr<int16_t>(), dqh.data(), y2.data_ptr<float>());
  // out[t] = sum over a of gates[t, a] (y2 + bias2), in the token's pair order
  auto out = torch::zeros({T, H}, x.options());
  float* op = out.data_ptr<float>();
  const float* y2p = y2.data_ptr<float>();
  const float* gp = gates.data_ptr<float>();
  for (int64_t k = 0; k < P; ++k) {
    const int64_t t = pair[k] / A;
    const float g = gp[pair[k]];
    bias_row(bias2, idp[pair[k]], bias);
    for (int64_t n = 0; n < H; ++n) op[t * H + n] += g * (y2p[k * H + n] + bias[n]);
  }
  return out;
}

// x (T, K) fp32, w (O, K) bf16 -> y (T, O) fp32: each weight row read once for TILE rows of x,
// two weight rows at a time so that two accumulator chains hide the FMA latency.
static torch::Tensor bf16_product(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 || x.dtype() == torch::kBFloat16, "x: fp32 or bf16");
  TORCH_CHECK(x.is_contiguous() && x.dim() == 2, "x: contiguous (T, K)");
  TORCH_CHECK(w.dtype() == torch::kBFloat16 && w.is_contiguous() && w.dim() == 2, "w: bf16 (O, K)");
  const int64_t T = x.size(0), K = x.size(1), O = w.size(0);
  TORCH_CHECK(w.size(1) == K, "x has ", K, " columns, the weight ", w.size(1));
  auto y = torch::empty({T, O}, x.options().dtype(torch::kFloat32));
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  float* yp = y.data_ptr<float>();
#if defined(HA_AVX512BF16)
  if (x.dtype() == torch::kBFloat16) {  // bf16 x pairs exactly: the bf16 dot product loses nothing
    const uint16_t* xb = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
    if (T == 1) {
      parallel_chunks(O, serial_rows(2 * K), chunk_rows(2 * K), [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o) yp[o] = dpbf16_row(wp + o * K, xb, K);
      });
      return y;
    }
    at::parallel_for(0, (O + 1) / 2, 16, [&](int64_t p0, int64_t p1) {
      float s[8];
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t o = 2 * p, rn = std::min<int64_t>(2, O - o);
        const uint16_t* wr = wp + o * K;
        for (int64_t t0 = 0; t0 < T; t0 += 4) {
          const int64_t tn = std::min<int64_t>(4, T - t0);
          const uint16_t* xr = xb + t0 * K;
          if (rn == 2) {
            switch (tn) {  // a fixed count keeps the accumulators in registers
              case 1: dpbf16_tile<1>(wr, K, xr, K, K, s); break;
              case 2: dpbf16_tile<2>(wr, K, xr, K, K, s); break;
              case 3: dpbf16_tile<3>(wr, K, xr, K, K, s); break;
              default: dpbf16_tile<4>(wr, K, xr, K, K, s);
            }
          } else {  // an odd last weight row
            for (int64_t i = 0; i < tn; ++i) s[2 * i] = dpbf16_row(wr, xr + i * K, K);
          }
          for (int64_t i = 0; i < tn; ++i)
            for (int64_t r = 0; r < rn; ++r) yp[(t0 + i) * O + o + r] = s[2 * i + r];
        }
      }
    });
    return y;
  }
#endif
  if (x.dtype() != torch::kFloat32) x = x.to(torch::kFloat32);
  const float* xp = x.data_ptr<float>();
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
    parallel_chunks((O + 3) / 4, 16, chunk_rows(8 * K), [&](int64_t p0, int64_t p1) {
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

// The index of the first largest value of a row of bf16 or fp32 values, a NaN counting as the
// largest (as torch.argmax): torch's takes ~0.7 ms over a bf16 row of 201088 logits
#if defined(HA_AVX512)
static inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
static inline __m512 load16(const uint16_t* p) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
#endif
static inline float value(const float* p, int64_t i) { return p[i]; }
static inline float value(const uint16_t* p, int64_t i) { return bf16_to_float(p[i]); }
template <typename T>
static int64_t first_max(const T* p, int64_t n) {
  float m = value(p, 0);
  int64_t i = 0;
#if defined(HA_AVX512)
  // the largest value 16 lanes at a time, then where it first is (or the first NaN)
  __m512 top = _mm512_set1_ps(m);
  __mmask16 nan = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = load16(p + i);
    top = _mm512_max_ps(top, v);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  }
  m = _mm512_reduce_max_ps(top);
  if (nan) m = NAN;
#endif
  for (; i < n; ++i) {
    const float v = value(p, i);
    if (v != v || v > m) m = v;  // a NaN stays
  }
  int64_t k = 0;
#if defined(HA_AVX512)
  const __m512 mv = _mm512_set1_ps(m);
  for (; k + 16 <= n; k += 16) {
    const __m512 v = load16(p + k);
    const __mmask16 hit = m != m ? _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q)
                                 : _mm512_cmp_ps_mask(v, mv, _CMP_EQ_OQ);
    if (hit) return k + __builtin_ctz(hit);
  }
#endif
  for (; k < n; ++k)
    if (m != m ? value(p, k) != value(p, k) : value(p, k) == m) return k;
  return 0;
}
int64_t argmax(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 1 && x.is_contiguous() && x.numel() > 0, "x: a contiguous row, not empty");
  if (x.scalar_type() == torch::kBFloat16)
    return first_max(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), x.numel());
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "x: bf16 or fp32");
  return first_max(x.data_ptr<float>(), x.numel());
}

// RMSNorm of rows x (T, H) fp32 with an fp32 scale (H,), in fp32
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor scale, double eps) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.is_contiguous() && x.dim() == 2, "x: fp32 (T, H)");
  TORCH_CHECK(scale.dtype() == torch::kFloat32 && scale.numel() == x.size(1), "scale: fp32 (H,)");
  const int64_t T = x.size(0), H = x.size(1);
  auto y = torch::empty_like(x);
  const float *xp = x.data_ptr<float>(), *sp = scale.contiguous().data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    float ss = 0.f;
    for (int64_t j = 0; j < H; ++j) ss += xp[t * H + j] * xp[t * H + j];
    const float r = 1.f / std::sqrt(ss / float(H) + float(eps));
    for (int64_t j = 0; j < H; ++j) yp[t * H + j] = xp[t * H + j] * r * sp[j];
  }
  return y;
}

// x @ w.T + bias (fp32 or bf16): added here, where torch's mixed-dtype add of a bf16 bias to
// the fp32 product costs some 50 us a call
torch::Tensor bf16_linear(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias) {
  auto y = bf16_product(x, w);  // fp32
  if (bias.has_value()) {
    const torch::Tensor b = bias->to(torch::kFloat32).contiguous();
    TORCH_CHECK(b.numel() == y.size(1), "bias: (O,)");
    float* yp = y.data_ptr<float>();
    const float* bp = b.data_ptr<float>();
    const int64_t T = y.size(0), O = y.size(1);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t o = 0; o < O; ++o) yp[t * O + o] += bp[o];
  }
  return y;
}

// fp32 -> bf16, rounding to nearest even as torch does (NaN kept a quiet NaN)
static inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 64);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}
static inline float round_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

// A bf16 or fp32 cache row of hd values, as fp32, and back
static inline void load_row(const float* p, int64_t hd, float* out) {
  std::memcpy(out, p, hd * sizeof(float));
}
static inline void load_row(const uint16_t* p, int64_t hd, float* out) {
  int64_t j = 0;
#if defined(HA_HAS_AVX2)
  for (; j + 8 <= hd; j += 8) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(p + j)));
    _mm256_storeu_ps(out + j, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)));
  }
#endif
  for (; j < hd; ++j) out[j] = bf16_to_float(p[j]);
}
static inline void store_row(const float* in, int64_t hd, float* p) {
  std::memcpy(p, in, hd * sizeof(float));
}
static inline void store_row(const float* in, int64_t hd, uint16_t* p) {
  for (int64_t j = 0; j < hd; ++j) p[j] = float_to_bf16(in[j]);
}

// A head's key or value row is a line or two far from the next one (pages hold every layer):
// asking for the row LOOKAHEAD keys ahead keeps several misses in flight
constexpr int64_t LOOKAHEAD = 8;
constexpr int64_t PAGED_SERIAL_KEYS = 8192;  // (row, key head, key) triples one thread takes alone
template <typename T>
static inline void prefetch_row(const T* base, const int64_t* rp, int64_t off, int64_t s,
                                int64_t end, const int64_t st[2], int64_t g, int64_t hd) {
  if (s >= end) return;
  const char* p = reinterpret_cast<const char*>(base + rp[off + s] * st[0] + g * st[1]);
  for (int64_t at = 0; at < hd * int64_t(sizeof(T)); at += 64) __builtin_prefetch(p + at);
}

// (explicit AVX2 vectors, which AVX-512 CPUs run too; the scalar loop is the remainder)
static inline float dot(const float* a, const float* b, int64_t n) {
  float d = 0.f;
  int64_t j = 0;
#if defined(HA_HAS_AVX2)
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  for (; j + 16 <= n; j += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8), s1);
  }
  d = hsum(_mm256_add_ps(s0, s1));
#endif
  for (; j < n; ++j) d += a[j] * b[j];
  return d;
}

// y += w x over n values
static inline void axpy(float w, const float* x, int64_t n, float* y) {
  int64_t j = 0;
#if defined(HA_HAS_AVX2)
  const __m256 wv = _mm256_set1_ps(w);
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(y + j, _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j)));
#endif
  for (; j < n; ++j) y[j] += w * x[j];
}

// Half-split (NeoX) rotation of one head's hd values by c, s (hd / 2 each), in place
static inline void rotate(float* x, const float* c, const float* s, int64_t half) {
#pragma omp simd
  for (int64_t j = 0; j < half; ++j) {
    const float x1 = x[j], x2 = x[half + j];
    x[j] = x1 * c[j] - x2 * s[j];
    x[half + j] = x2 * c[j] + x1 * s[j];
  }
}

// Decode attention of a batch, one new token a row, over the cache pages in place. For each row:
// RoPE on its query and key heads (fp32, rounded to the activations' dtype as the unfused path
// rounds them), its key and value written to its slot, then attention over the slots
// it reads (fp32 scores and softmax, one sink logit a head).
template <typename T>
static void paged_decode_rows(const torch::Tensor& qkv, const float* cp, const float* snp,
                              int64_t crows, T* kp, T* vp, const int64_t ks[2], const int64_t vs[2],
                              const int64_t* wp, const int64_t* rp, int64_t S, const float* sinks,
                              const int64_t* starts, const int64_t* firsts, int64_t window,
                              int64_t nh, int64_t nkv, int64_t hd, float* op) {
  const int64_t B = qkv.size(0), W = qkv.size(1), half = hd / 2, rep = nh / nkv;
  const bool bf16 = qkv.scalar_type() == torch::kBFloat16;
  // the rows as fp32: q rotated (and rounded), k rotated, v
  std::vector<float> rows(B * W);
  if (bf16) {
    const uint16_t* src = reinterpret_cast<const uint16_t*>(qkv.data_ptr<at::BFloat16>());
    for (int64_t i = 0; i < B * W; ++i) rows[i] = bf16_to_float(src[i]);
  } else {
    std::memcpy(rows.data(), qkv.data_ptr<float>(), B * W * sizeof(float));
  }
  for (int64_t b = 0; b < B; ++b) {
    float* r = rows.data() + b * W;
    const float *c = cp + (crows == 1 ? 0 : b) * half, *s = snp + (crows == 1 ? 0 : b) * half;
    for (int64_t h = 0; h < nh + nkv; ++h) rotate(r + h * hd, c, s, half);
    if (bf16)
      for (int64_t j = 0; j < (nh + nkv) * hd; ++j) r[j] = round_bf16(r[j]);
    for (int64_t g = 0; g < nkv; ++g) {
      store_row(r + (nh + g) * hd, hd, kp + wp[b] * ks[0] + g * ks[1]);
      store_row(r + (nh + nkv + g) * hd, hd, vp + wp[b] * vs[0] + g * vs[1]);
    }
  }
  const float scale = 1.f / std::sqrt(float(hd));
  // An item is a row's key heads [g0, g0 + per): each key and value row is converted once for its
  // rep queries. Short contexts run on one thread, a row's heads one item: waking another thread
  // costs more (~40 us) than their keys, and a key's heads lie side by side in its slot, read in
  // one pass instead of one head's row at a time.
  const bool serial = B * nkv * S <= PAGED_SERIAL_KEYS;
  const int64_t per = serial ? nkv : 1, items = B * (nkv / per), hn = per * rep;
  at::parallel_for(0, items, serial ? items : 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> p(hn * S), acc(hn * hd), row(hd), m(hn), sum(hn);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / (nkv / per), g0 = i % (nkv / per) * per;
      // keys at positions firsts[b] + s: causal, and within the window before the query
      const int64_t qpos = starts[b], lo = window > 0 ? std::max<int64_t>(0, qpos - window + 1) : 0;
      const int64_t s0 = std::max<int64_t>(0, lo - firsts[b]);
      const int64_t s1 = std::min<int64_t>(S, qpos - firsts[b] + 1);
      const float* q = rows.data() + b * W + g0 * rep * hd;  // the item's query heads
      for (int64_t h = 0; h < hn; ++h) m[h] = sinks[g0 * rep + h];  // the sink: one more column
      for (int64_t s = s0; s < s1; ++s) {
        const T* key = kp + rp[b * S + s] * ks[0];
        for (int64_t g = 0; g < per; ++g) {
          prefetch_row(kp, rp, b * S, s + LOOKAHEAD, s1, ks, g0 + g, hd);
          load_row(key + (g0 + g) * ks[1], hd, row.data());
          for (int64_t h = g * rep; h < (g + 1) * rep; ++h) {
            const float d = dot(q + h * hd, row.data(), hd) * scale;
            p[h * S + s] = d;
            m[h] = std::max(m[h], d);
          }
        }
      }
      for (int64_t h = 0; h < hn; ++h) {
        float* ph = p.data() + h * S;
        const float mh = m[h];
        float total = exp_fast(sinks[g0 * rep + h] - mh);
#pragma omp simd reduction(+ : total)
        for (int64_t s = s0; s < s1; ++s) {
          ph[s] = exp_fast(ph[s] - mh);
          total += ph[s];
        }
        sum[h] = total;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t s = s0; s < s1; ++s) {
        const T* value = vp + rp[b * S + s] * vs[0];
        for (int64_t g = 0; g < per; ++g) {
          prefetch_row(vp, rp, b * S, s + LOOKAHEAD, s1, vs, g0 + g, hd);
          load_row(value + (g0 + g) * vs[1], hd, row.data());
          for (int64_t h = g * rep; h < (g + 1) * rep; ++h)
            axpy(p[h * S + s], row.data(), hd, acc.data() + h * hd);
        }
      }
      for (int64_t h = 0; h < hn; ++h)
        for (int64_t j = 0; j < hd; ++j)
          op[(b * nh + g0 * rep + h) * hd + j] = acc[h * hd + j] / sum[h];
    }
  });
}

// qkv (B, (nh + 2 nkv) hd) fp32 or bf16, one new token a row; cos, sin (B or 1, hd / 2) fp32 at
// each row's position; k, v (slots, nkv, hd) bf16 or fp32 caches, any strides but hd's; write
// (B,) each row's slot for its key and value; read (B, S) the slots of each row's keys (padded
// at the end), starts (B,) each row's position, firsts (B,) that of its first key; sinks (nh,);
// window 0 for none -> (B, nh hd) in qkv's dtype.
torch::Tensor paged_decode(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor k,
                           torch::Tensor v, torch::Tensor write, torch::Tensor read,
                           torch::Tensor sinks, torch::Tensor starts, torch::Tensor firsts,
                           int64_t nh, int64_t window) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.is_contiguous(), "qkv: contiguous (B, (nh + 2 nkv) hd)");
  TORCH_CHECK(qkv.dtype() == torch::kFloat32 || qkv.dtype() == torch::kBFloat16, "qkv: fp32, bf16");
  TORCH_CHECK(k.dim() == 3 && v.dim() == 3 && k.dtype() == v.dtype(), "k, v: (slots, nkv, hd)");
  TORCH_CHECK(k.dtype() == torch::kBFloat16 || k.dtype() == torch::kFloat32, "k, v: bf16 or fp32");
  for (const auto* t : {&write, &read, &starts, &firsts})
    TORCH_CHECK(t->dtype() == torch::kInt64 && t->is_contiguous(), "slots, positions: int64");
  for (const auto* t : {&cos, &sin, &sinks})
    TORCH_CHECK(t->dtype() == torch::kFloat32 && t->is_contiguous(), "cos, sin, sinks: fp32");
  const int64_t B = qkv.size(0), nkv = k.size(1), hd = k.size(2), S = read.size(1);
  TORCH_CHECK(qkv.size(1) == (nh + 2 * nkv) * hd && nh % nkv == 0 && hd % 2 == 0, "head shapes");
  TORCH_CHECK(read.size(0) == B && write.numel() == B && sinks.numel() == nh, "batch shapes");
  const int64_t crows = cos.numel() / (hd / 2);
  TORCH_CHECK((crows == 1 || crows == B) && sin.numel() == cos.numel(), "cos, sin: (B or 1, hd/2)");
  TORCH_CHECK(k.stride(2) == 1 && v.stride(2) == 1, "k, v: each head's hd values contiguous");
  const int64_t ks[2] = {k.stride(0), k.stride(1)}, vs[2] = {v.stride(0), v.stride(1)};
  auto o = torch::empty({B, nh * hd}, qkv.options().dtype(torch::kFloat32));
  const int64_t *wp = write.data_ptr<int64_t>(), *rp = read.data_ptr<int64_t>();
  const int64_t *sp = starts.data_ptr<int64_t>(), *fp = firsts.data_ptr<int64_t>();
  const float *cp = cos.data_ptr<float>(), *snp = sin.data_ptr<float>();
  const float* hp = sinks.data_ptr<float>();
  float* op = o.data_ptr<float>();
  if (k.dtype() == torch::kFloat32)
    paged_decode_rows(qkv, cp, snp, crows, k.data_ptr<float>(), v.data_ptr<float>(), ks, vs, wp,
                      rp, S, hp, sp, fp, window, nh, nkv, hd, op);
  else
    paged_decode_rows(qkv, cp, snp, crows, reinterpret_cast<uint16_t*>(k.data_ptr<at::BFloat16>()),
                      reinterpret_cast<uint16_t*>(v.data_ptr<at::BFloat16>()), ks, vs, wp, rp, S,
                      hp, sp, fp, window, nh, nkv, hd, op);
  return qkv.dtype() == torch::kFloat32 ? o : o.to(qkv.scalar_type());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mxfp4_linear", &mxfp4_linear);
  m.def("mxfp4_linear_q16", &mxfp4_linear_q16);
  m.def("mxfp4_linear_bf16", &mxfp4_linear_bf16);
  m.def("moe_q16", &moe_q16);
  m.def("paged_decode", &paged_decode);
  m.def("rms_norm", &rms_norm);
  m.def("argmax", &argmax);
  m.def("bf16_linear", &bf16_linear);
  m.def("isa", &isa);
}
"""

ISA_ENV = "HARMONY_AGENT_CPU_ISA"
_ISA_MAX = {"native": 3, "avx512": 2, "avx2": 1, "scalar": 0}
_lock = threading.Lock()
_modules: dict[str, ModuleType | None] = {}
_selected: list[ModuleType | None] = []  # the module for the settings read last, once read


def build_name(isa: str = "native") -> str:
    return "harmony_agent_cpu_kernels_v14" + ("" if isa == "native" else f"_{isa}")


def settings_changed() -> None:
    """Read `HARMONY_AGENT_CPU_ISA` and `HARMONY_AGENT_NO_CPU_KERNEL` again at the next call.
    They are read once: the ops run tens of times a layer, and each read of the environment
    costs microseconds."""
    _selected.clear()


def _load() -> ModuleType | None:
    if _selected:
        return _selected[0]
    if os.environ.get("HARMONY_AGENT_NO_CPU_KERNEL"):
        module = None
    else:
        isa = os.environ.get(ISA_ENV, "native")
        if isa not in _ISA_MAX:
            raise ValueError(f"{ISA_ENV} must be one of {', '.join(_ISA_MAX)}, got {isa!r}")
        with _lock:
            if isa not in _modules:
                _modules[isa] = _build(isa)
            module = _modules[isa]
    _selected[:] = [module]
    return module


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
        isa_flag = f"-DHA_ISA_MAX={_ISA_MAX[isa]}"
        return load_inline(
            name=name,
            cpp_sources=_SOURCE,
            # no contraction of a * b - c * d into an FMA: the scalar loops round as torch's ops do
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffp-contract=off", isa_flag],
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


BF16_DOT_MIN_ROWS = 12
"""From this many bf16 rows, on a CPU with AVX-512 BF16, an MXFP4 product decodes each tile of
weight rows to bf16 once and runs the bf16 dot product (`mxfp4_linear_bf16`); below, the int16
kernel."""


def _has_bf16_dot(module: ModuleType) -> bool:
    return bool(module.isa() == "avx512bf16")


def mxfp4_linear(
    x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x (T, K) @ W.T + bias with W (O, K) packed as blocks (O, K/32, 16) + scales (O, K/32).

    An fp32 x goes through the fp32 kernel; a bf16 (or fp16) one through the int16 kernel,
    whose rounding of x is far below the bf16 rounding x already has, or for many bf16 rows
    through the bf16 dot product of weights decoded to bf16 (exact products)."""
    module = _load()
    assert module is not None, "the CPU kernels are not available"
    if x.dtype == torch.bfloat16 and x.shape[0] >= BF16_DOT_MIN_ROWS and _has_bf16_dot(module):
        y = module.mxfp4_linear_bf16(x.contiguous(), blocks, scales)
    else:
        kernel = module.mxfp4_linear if x.dtype == torch.float32 else module.mxfp4_linear_q16
        y = kernel(x.float().contiguous(), blocks, scales)
    if bias is not None:
        y += bias
    return y.to(x.dtype)


def moe_mxfp4(
    x: torch.Tensor,
    ids: torch.Tensor,
    gates: torch.Tensor,
    mlp1: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    mlp2: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    alpha: float,
    limit: float,
) -> torch.Tensor:
    """The routed MXFP4 experts of bf16 tokens x (T, H) in one call -> (T, H) in x's dtype:
    sum over a of gates[t, a] * mlp2(swiglu(mlp1(x[t]))) of expert ids[t, a]. Each product is
    the int16 path of `mxfp4_linear`, and one parallel loop over the rows of every expert used;
    in between everything stays fp32 (no bf16 roundings of the hidden states).

    mlp1 / mlp2: (blocks, scales, bias) of all experts, (E, out, in/32, 16), (E, out, in/32),
    (E, out)."""
    module = _load()
    assert module is not None, "the CPU kernels are not available"
    y = module.moe_q16(x.float().contiguous(), ids.contiguous(), gates.float().contiguous(),
                       *mlp1, *mlp2, alpha, limit)  # fmt: skip
    return y.to(x.dtype)


def paged_decode(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    write: torch.Tensor,
    read: torch.Tensor,
    sinks: torch.Tensor,
    starts: torch.Tensor,
    firsts: torch.Tensor,
    num_heads: int,
    window: int | None,
) -> torch.Tensor:
    """Decode attention of a batch, one new token a row, as `transformer.AttentionBlock`
    computes it, over the cache pages in place: RoPE on the rows' query and key heads, each
    row's key and value written to its slot, then fp32 attention with a sink logit a head.

    qkv (B, (nh + 2 nkv) hd); cos / sin (B or 1, hd/2) at the rows' positions; k / v
    (slots, nkv, hd) the cache; write (B,) each row's slot; read (B, S) the slots of its keys,
    starts / firsts (B,) the positions of its query and first key -> (B, nh hd) in qkv's dtype."""
    module = _load()
    assert module is not None, "the CPU kernels are not available"
    if qkv.dtype != torch.bfloat16:
        qkv = qkv.float()
    half = k.shape[-1] // 2
    cos, sin = (c.reshape(-1, half).float().contiguous() for c in (cos, sin))
    sinks = sinks.float().contiguous()
    return module.paged_decode(qkv.contiguous(), cos, sin, k, v, write, read, sinks, starts,
                               firsts, num_heads, window or 0)  # fmt: skip


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x (..., H) in fp32 with an fp32 scale, in x's dtype: one call for the eight
    small ops of `transformer.RMSNorm`."""
    module = _load()
    assert module is not None, "the CPU kernels are not available"
    y = module.rms_norm(x.reshape(-1, x.shape[-1]).float().contiguous(), scale, eps)
    return y.view(x.shape).to(x.dtype)


def argmax(x: torch.Tensor) -> int:
    """`int(x.argmax())` of a 1-D bf16 or fp32 CPU tensor (the first of equal maxima; a NaN
    counts as the largest): 24 us against torch's 740 over 201088 bf16 logits with AVX-512."""
    module = _load()
    assert module is not None, "the CPU kernels are not available"
    return int(module.argmax(x.contiguous()))


def bf16_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (T, K) @ w.T + bias for a contiguous bf16 w (O, K); accumulates in fp32."""
    module = _load()
    assert module is not None, "the CPU kernels are not available"
    if x.dtype != torch.bfloat16:
        x = x.float()
    return module.bf16_linear(x.contiguous(), w, bias).to(x.dtype)
