// AVX2 decode on the Dense4 form (internal.h): int8 x' against 4-bit weights, per block of 32
// columns d · sx · Σ xq·u plus m · Σ x', in float32 (d and m fp16: F16C, which every AVX2 CPU has).
//
// Per block: two 32-byte loads hold the 4 rows' nibbles in pairs (rows 0 and 1 as the low and
// high nibbles of one vector, rows 2 and 3 of the other), so a mask, or a shift and a mask, give
// each row's 32 weights in order; vpmaddubsw (u <= 15 unsigned, xq signed: pair sums <= 3810, no
// saturation) and vpmaddwd sum each to 8 int32 lanes; two rounds of vphaddd fold the 4 rows into
// one vector (row r in lanes r and 4 + r), so one conversion and one FMA with the rows' scales
// serve all 4. Four rows share each block of x and one record (their nibbles, steps and minima:
// one stream from memory); one conversion and one multiply give the four d · sx (low lanes) and
// m · Σ x' (high lanes) at once. ~8 instructions per 32 weights, where the lookup kernels spend
// ~32 (decode_avx2.cpp). The first form (a 16-byte load, shift, insert and mask per row, one
// conversion and FMA per row) ran 20-35 % slower on Zen 3 (benchmarks/RESULTS.md).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "internal.h"

namespace vq2trt {
namespace avx2 {
namespace {

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

constexpr int64_t kPrefetchBytes = 4096;

}  // namespace

void dense4_gemv(const Dense4& w, const int8_t* xq, const float* sv, const int16_t* xh, const float* xhsum,
                 int64_t M, float* y, int64_t N, int64_t n0, int64_t n1) {
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t blocks = w.blocks, hc = w.head_cols, xs = blocks * kDense4Block;
  for (int64_t g = n0 / 4; g * 4 < n1; ++g) {
    const uint8_t* qg = w.q.data() + g * w.group_bytes;
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* xm = xq + m * xs;
      const float* svm = sv + m * blocks * 8;
      float head[4] = {0.f, 0.f, 0.f, 0.f};
      if (hc > 0) {  // 8-bit head against 16-bit x': vpmaddwd, 4 rows share each x' load
        const int16_t* xhm = xh + m * hc;
        // 16 columns a pass; int32 lanes hold at most 2 · 16 · 255 · 32767 (< 2^31) per 16
        // passes, so the sums go to float every 256 columns.
        __m256 f[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int64_t c0 = 0; c0 < hc; c0 += 256) {
          __m256i h[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                          _mm256_setzero_si256()};
          int64_t c = c0;
          for (; c + 16 <= std::min(hc, c0 + 256); c += 16) {
            const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xhm + c));
            for (int r = 0; r < 4; ++r) {
              const __m256i wv = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qg + r * hc + c)));
              h[r] = _mm256_add_epi32(h[r], _mm256_madd_epi16(wv, xv));
            }
          }
          if (c < std::min(hc, c0 + 256)) {  // head_cols is a multiple of 8: one 8-column step
            const __m256i xv = _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xhm + c)));
            for (int r = 0; r < 4; ++r) {
              const __m256i wv = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qg + r * hc + c)));
              h[r] = _mm256_add_epi32(h[r], _mm256_mullo_epi32(wv, xv));
            }
          }
          for (int r = 0; r < 4; ++r) f[r] = _mm256_add_ps(f[r], _mm256_cvtepi32_ps(h[r]));
        }
        float st[4], mn[4];
        std::memcpy(st, qg + 4 * hc, 16);
        std::memcpy(mn, qg + 4 * hc + 16, 16);
        const float sx = xhsum[2 * m + 1], xsum = xhsum[2 * m];
        for (int r = 0; r < 4; ++r) head[r] = st[r] * (sx * hsum(f[r])) + mn[r] * xsum;
      }
      // Lanes 0-3: the rows' step units; 4-7: their minimum units, and (base_hi) bases.
      const float* par = reinterpret_cast<const float*>(qg + w.head_bytes());
      const __m256 unit = _mm256_loadu_ps(par);
      const __m256 base_hi = _mm256_insertf128_ps(_mm256_setzero_ps(), _mm_loadu_ps(par + 8), 1);
      // Lanes 0-3 and 4-7: the 4 rows' sums over the two 128-bit halves of each block.
      __m256 acc = _mm256_setzero_ps(), accm = acc;
      const __m256i half_lanes = _mm256_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3);
      for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* rec = qg + w.prefix_bytes() + b * kDense4Bytes;
        // ~50 records ahead: with no prefetch the stream ran at 7 GB/s per core on Zen 3 (10-11
        // weights/ns with the weights in L3, the lookup kernel's speed); 2-4 KB ahead, 15-16.
        _mm_prefetch(reinterpret_cast<const char*>(rec) + kPrefetchBytes, _MM_HINT_T0);
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xm + b * kDense4Block));
        const __m256 codes = _mm256_cvtepi32_ps(
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(rec + 64))));
        const __m256 t = _mm256_mul_ps(_mm256_fmadd_ps(codes, unit, base_hi), _mm256_loadu_ps(svm + b * 8));
        accm = _mm256_add_ps(accm, t);  // lanes 4-7: Σ_b m · Σ x' per row (lanes 0-3 unused)
        const __m256i v01 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec));
        const __m256i v23 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32));
        auto dot = [&](__m256i u) { return _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv), ones); };
        const __m256i p0 = dot(_mm256_and_si256(v01, low)), p1 = dot(_mm256_and_si256(_mm256_srli_epi16(v01, 4), low));
        const __m256i p2 = dot(_mm256_and_si256(v23, low)), p3 = dot(_mm256_and_si256(_mm256_srli_epi16(v23, 4), low));
        // Two rounds of horizontal adds: lanes r and 4 + r hold row r's sums over each half.
        const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), _mm256_permutevar8x32_ps(t, half_lanes), acc);
      }
      alignas(32) float mins[8], sums[8];
      _mm256_store_ps(mins, accm);
      _mm256_store_ps(sums, acc);
      for (int r = 0; r < 4; ++r) {
        const int64_t n = g * 4 + r;
        if (n >= n0 && n < n1) y[m * N + n] += head[r] + (sums[r] + sums[4 + r]) + mins[4 + r];
      }
    }
  }
}

void dense4_quantize(const float* x, int64_t count, int64_t blocks, int8_t* q, float* sv) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t c0 = b * kDense4Block, cn = count - c0;
    // Whole blocks straight from x; the last, partial one from a zero-padded copy.
    alignas(32) float t[kDense4Block] = {};
    const float* src = x + c0;
    if (cn < kDense4Block) {
      for (int64_t c = 0; c < cn; ++c) t[c] = x[c0 + c];
      src = t;
    }
    __m256 v[4], amax = _mm256_setzero_ps(), sum = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(src + 8 * i);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
      sum = _mm256_add_ps(sum, v[i]);
    }
    __m128 a = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    a = _mm_max_ps(a, _mm_movehl_ps(a, a));
    const float mx = _mm_cvtss_f32(_mm_max_ss(a, _mm_movehdup_ps(a)));
    const __m256 inv = _mm256_set1_ps(mx > 0.f ? 127.f / mx : 0.f);
    __m256i r[4];
    for (int i = 0; i < 4; ++i) r[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));  // nearest even
    // packs work within 128-bit lanes: the final permute puts the 32 bytes back in column order.
    const __m256i w = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + c0),
                        _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    const float sx = mx / 127.f, xsum = hsum(sum);
    for (int i = 0; i < 4; ++i) sv[b * 8 + i] = sx, sv[b * 8 + 4 + i] = xsum;
  }
}

}  // namespace avx2
}  // namespace vq2trt
