// AVX2 forms of two loops of every call's activation preparation (vqgemm.cpp's prep_rows), which
// a decode step runs ~200 times: x' = x[perm] · pscale with 8-lane gathers, and Σ x · col_bias in
// double with the lanes and order of vqgemm.cpp's dot_f64, so the sums are the same bytes. Built
// with -mavx2 and -ffp-contract=off (no FMA: dot_f64 multiplies and adds apart); called only when
// prepack() chose an AVX2 or AVX-512 ISA. In a 1-thread profile of Dense4 decode at K = 1536 the
// scalar loops were a third of the call (permute, dot) and the block quantization another third.
#include <immintrin.h>

#include "internal.h"

namespace vq2trt {
namespace avx2 {

void permute_scale(const float* x, const int32_t* perm, const float* pscale, int64_t K, float* out) {
  int64_t q = 0;
  for (; q + 8 <= K; q += 8) {
    const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(perm + q));
    _mm256_storeu_ps(out + q, _mm256_mul_ps(_mm256_i32gather_ps(x, idx, 4), _mm256_loadu_ps(pscale + q)));
  }
  for (; q < K; ++q) out[q] = x[perm[q]] * pscale[q];
}

double dot_f64(const float* a, const float* b, int64_t n) {
  __m256d s = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    s = _mm256_add_pd(s, _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(a + i)), _mm256_cvtps_pd(_mm_loadu_ps(b + i))));
  alignas(32) double t[4];
  _mm256_store_pd(t, s);
  for (; i < n; ++i) t[0] += double(a[i]) * double(b[i]);
  return (t[0] + t[1]) + (t[2] + t[3]);
}

}  // namespace avx2
}  // namespace vq2trt
