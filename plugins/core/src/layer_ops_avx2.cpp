// SwiGLU's silu(g) · u on AVX2: a decode step computes it for 30 x 1536 values, and the C
// library's expf, one value at a time, was ~5 µs of the gate/up node (exp_avx2.h's instead).
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "exp_avx2.h"

namespace vq2trt {
namespace avx2 {

void silu_mul(const float* g, const float* u, int64_t n, float* y) {
  const __m256 one = _mm256_set1_ps(1.f);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 gv = _mm256_loadu_ps(g + j);
    const __m256 den = _mm256_add_ps(one, exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), gv)));
    _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_div_ps(gv, den), _mm256_loadu_ps(u + j)));
  }
  for (; j < n; ++j) y[j] = g[j] / (1.f + std::exp(-g[j])) * u[j];
}

}  // namespace avx2
}  // namespace vq2trt

