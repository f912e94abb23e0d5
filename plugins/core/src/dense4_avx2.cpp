// AVX2 decode on the Dense4 form (internal.h): int8 x' against 4-bit weights, per block of 32
// columns d · sx · Σ xq·u in float32, plus Σ m · Σ x' per row (d and m fp16: F16C, which every
// AVX2 CPU has).
//
// Per row and block: one 16-byte load, a shift, an insert and a mask give the 32 nibbles in
// order; vpmaddubsw (u <= 15 unsigned, xq signed: pair sums <= 3810, no saturation) and vpmaddwd
// sum them to 8 int32 lanes; one conversion and one FMA with the block's scale. About 10
// instructions per 32 weights, where the lookup kernels spend ~32 (decode_avx2.cpp). Four rows
// share each block of x (one contiguous 64-byte line of their nibbles), and the minimum's term is
// a separate float dot product per row over the block sums.
#include <immintrin.h>

#include <cmath>
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

// Σ_b fp16 a[b] · b_[b] in 8 lanes then the tail, a fixed order.
inline float dot(const uint16_t* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i))),
                          _mm256_loadu_ps(b + i), acc);
  float s = hsum(acc);
  for (; i < n; ++i) s += _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(a[i]))) * b[i];
  return s;
}

}  // namespace

void dense4_gemv(const uint8_t* q, const uint16_t* d, const uint16_t* mins, int64_t blocks, const int8_t* xq,
                 const float* sx, const float* xsum, int64_t M, float* y, int64_t N, int64_t n0, int64_t n1) {
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t xs = blocks * kDense4Block;
  for (int64_t g = n0 / 4; g * 4 < n1; ++g) {
    const uint8_t* qg = q + g * blocks * 64;
    const uint16_t* dg = d + g * blocks * 4;
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* xm = xq + m * xs;
      const float* sm = sx + m * blocks;
      __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
      for (int64_t b = 0; b < blocks; ++b) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xm + b * kDense4Block));
        // The four rows' steps times the block's x scale, lane r broadcast per row.
        const __m128 ds = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(dg + b * 4))),
                                     _mm_set1_ps(sm[b]));
        const uint8_t* qb = qg + b * 64;
        auto row = [&](auto r, __m256& acc) {
          const __m128i nib = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qb + r * 16));
          const __m256i u = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(nib),
                                                                     _mm_srli_epi16(nib, 4), 1), low);
          const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv), ones);
          acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcastss_ps(_mm_permute_ps(ds, r * 0x55)), acc);
        };
        row(std::integral_constant<int, 0>(), acc0);
        row(std::integral_constant<int, 1>(), acc1);
        row(std::integral_constant<int, 2>(), acc2);
        row(std::integral_constant<int, 3>(), acc3);
      }
      const float sums[4] = {hsum(acc0), hsum(acc1), hsum(acc2), hsum(acc3)};
      for (int r = 0; r < 4; ++r) {
        const int64_t n = g * 4 + r;
        if (n < n0 || n >= n1) continue;
        y[m * N + n] += sums[r] + dot(mins + (g * 4 + r) * blocks, xsum + m * blocks, blocks);
      }
    }
  }
}

void dense4_quantize(const float* x, int64_t count, int64_t blocks, int8_t* q, float* sx, float* xsum) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t c0 = b * kDense4Block, cn = count - c0;
    alignas(32) float t[kDense4Block] = {};
    for (int64_t c = 0; c < kDense4Block && c < cn; ++c) t[c] = x[c0 + c];
    __m256 v[4], amax = _mm256_setzero_ps(), sum = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_load_ps(t + 8 * i);
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
    sx[b] = mx / 127.f;
    xsum[b] = hsum(sum);
  }
}

}  // namespace avx2
}  // namespace vq2trt
