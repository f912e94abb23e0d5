// exp on 8 floats for the AVX2 files (built with -mavx2 -mfma): range reduction (x = n·ln2 + r,
// |r| <= ln2/2) and a degree-6 polynomial (Cephes expf's coefficients), ~2 ulp.
#pragma once

#include <immintrin.h>

#include <cmath>

namespace vq2trt {
namespace avx2 {

// exp(x) for x >= -86.5 (below, exp(-86.5) ~ 2.7e-38: 1 + it is 1 in silu), +inf past ln(FLT_MAX)
// as expf, so that silu(g) for g < -88.7 is -0. 2^n is applied as 2^(n-1) · 2: n reaches 128 at
// the top, one past float's largest exponent.
inline __m256 exp_ps(__m256 x0) {
  const __m256 x = _mm256_min_ps(_mm256_max_ps(x0, _mm256_set1_ps(-86.5f)), _mm256_set1_ps(88.7228f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln2 in two parts: exact n·hi
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126)), 23);
  const __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), _mm256_set1_ps(2.f));
  return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x0, _mm256_set1_ps(88.7228f), _CMP_GT_OQ));
}

}  // namespace avx2
}  // namespace vq2trt
