// attention.cpp's inner loop on AVX2 (head size a multiple of 8): the query heads that share one
// KV head, against its first `keys` cached rows. Scores 8 keys at a time (one accumulator per key,
// folded by vhaddps into one vector of 8 scores: the per-key horizontal sum was a third of the
// work), softmax with exp_avx2.h, then the values weighted in registers, 64 columns at a time.
// A call per key with an out-of-line dot product and axpy was slower than ORT's
// GroupQueryAttention (45 µs against 25 µs per layer for SmolLM2 at 150 cached tokens).
// ml (optional): each head's score maximum and exp-sum, with the output left unnormalised, for
// a key range that attention.cpp merges with the others.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "exp_avx2.h"

namespace vq2trt {
namespace avx2 {
namespace {

inline float hsum(__m256 v) {
  __m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  t = _mm_add_ps(t, _mm_movehl_ps(t, t));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

inline float hmax(__m256 v) {
  __m128 t = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  t = _mm_max_ps(t, _mm_movehl_ps(t, t));
  return _mm_cvtss_f32(_mm_max_ss(t, _mm_movehdup_ps(t)));
}

}  // namespace

void attend_heads(const float* q, int64_t G, int64_t D, const float* K, const float* V, int64_t keys, float* out,
                  int64_t ostride, float* scores, float* ml) {
  for (int64_t g = 0; g < G; ++g) {
    const float* qg = q + g * D;
    float* sc = scores + g * keys;
    int64_t j = 0;
    for (; j + 8 <= keys; j += 8) {
      __m256 a[8];
      for (auto& v : a) v = _mm256_setzero_ps();
      for (int64_t c = 0; c < D; c += 8) {
        const __m256 qv = _mm256_loadu_ps(qg + c);
        for (int k = 0; k < 8; ++k) a[k] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(K + (j + k) * D + c), a[k]);
      }
      const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
      const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
      _mm256_storeu_ps(sc + j, _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31)));
    }
    for (; j < keys; ++j) {
      __m256 a = _mm256_setzero_ps();
      for (int64_t c = 0; c < D; c += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(qg + c), _mm256_loadu_ps(K + j * D + c), a);
      sc[j] = hsum(a);
    }
    // Softmax: the padding lanes of the last vector are -inf (exp 0).
    __m256 mx = _mm256_set1_ps(-INFINITY);
    for (j = 0; j + 8 <= keys; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(sc + j));
    float m = hmax(mx);
    for (; j < keys; ++j) m = std::max(m, sc[j]);
    const __m256 mv = _mm256_set1_ps(m);
    __m256 sv = _mm256_setzero_ps();
    for (j = 0; j + 8 <= keys; j += 8) {
      const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(sc + j), mv));
      _mm256_storeu_ps(sc + j, e);
      sv = _mm256_add_ps(sv, e);
    }
    float sum = hsum(sv);
    for (; j < keys; ++j) {
      alignas(32) float t[8];
      _mm256_store_ps(t, exp_ps(_mm256_set1_ps(sc[j] - m)));
      sum += sc[j] = t[0];
    }
    if (ml) ml[2 * g] = m, ml[2 * g + 1] = sum;
    const float inv = ml ? 1.f : 1.f / sum;
    float* og = out + g * ostride;
    const __m256 iv = _mm256_set1_ps(inv);
    int64_t c0 = 0;
    for (; c0 + 64 <= D; c0 += 64) {  // a fixed 8 accumulators stay in registers
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
      for (j = 0; j < keys; ++j) {
        const __m256 p = _mm256_set1_ps(sc[j]);
        const float* vr = V + j * D + c0;
        a0 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr), a0);
        a1 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 8), a1);
        a2 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 16), a2);
        a3 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 24), a3);
        a4 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 32), a4);
        a5 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 40), a5);
        a6 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 48), a6);
        a7 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 56), a7);
      }
      const __m256 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
      for (int c = 0; c < 8; ++c) _mm256_storeu_ps(og + c0 + 8 * c, _mm256_mul_ps(acc[c], iv));
    }
    for (; c0 < D; c0 += 8) {  // the rest, 8 columns at a time
      __m256 acc = _mm256_setzero_ps();
      for (j = 0; j < keys; ++j) acc = _mm256_fmadd_ps(_mm256_set1_ps(sc[j]), _mm256_loadu_ps(V + j * D + c0), acc);
      _mm256_storeu_ps(og + c0, _mm256_mul_ps(acc, iv));
    }
  }
}

}  // namespace avx2
}  // namespace vq2trt
