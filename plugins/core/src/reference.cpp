// Scalar reference: docs/format.md §5 transcribed literally (dequantize W, then a double GEMM).
// Slow on purpose; every optimized kernel is tested against it. Expects validated data.
#include <vector>

#include "vq2trt/cpu_kernels.h"

namespace vq2trt {
namespace {

// Index c of packed row r (docs/format.md §4: LSB first, may straddle two words).
uint32_t packed_index(const int32_t* packed, int64_t words, int b, int64_t r, int64_t c) {
  const uint32_t* row = reinterpret_cast<const uint32_t*>(packed) + r * words;
  uint32_t value = 0;
  for (int i = 0; i < b; ++i) {
    const int64_t t = c * b + i;
    value |= ((row[t / 32] >> (t % 32)) & 1u) << i;
  }
  return value;
}

}  // namespace

void vq_gemm_reference(const VQGemmDesc& w, const float* x, int64_t M, float* y) {
  const VQGemmDims& d = w.dims;
  const int64_t C = d.K - d.n_out, gs = group_size(d);
  const int b = index_bits(d.k), br = d.k_r ? index_bits(d.k_r) : 0, bo = d.n_out ? index_bits(d.k_o) : 0;
  const int64_t words = packed_words(C, b), words_r = packed_words(C, br), words_o = packed_words(d.n_out, bo);
  std::vector<float> W(size_t(d.N * d.K));  // [N, K], original channel order
  for (int64_t n = 0; n < d.N; ++n) {
    for (int64_t p = 0; p < d.K; ++p) {
      float q;
      if (p < d.n_out) {
        const uint32_t i = packed_index(w.outlier_indices, words_o, bo, n / d.v_o, p);
        q = half_to_float(w.outlier_codebook[i * d.v_o + n % d.v_o]);
      } else {
        const int64_t c = p - d.n_out, g = c / gs;
        const uint32_t i = packed_index(w.indices, words, b, n / d.v, c);
        q = half_to_float(w.codebook[(g * d.k + i) * d.v + n % d.v]);
        if (d.k_r) {
          const uint32_t ir = packed_index(w.res_indices, words_r, br, n / d.v, c);
          q = q + half_to_float(w.res_codebook[(g * d.k_r + ir) * d.v + n % d.v]);
        }
      }
      const int64_t ch = w.perm[p];
      W[size_t(n * d.K + ch)] =
          d.normalized ? q * half_to_float(w.col_scale[ch]) + half_to_float(w.col_bias[ch]) : q;
    }
  }
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < d.N; ++n) {
      double acc = d.has_bias ? double(w.bias[n]) : 0.0;
      for (int64_t ch = 0; ch < d.K; ++ch) acc += double(x[m * d.K + ch]) * double(W[size_t(n * d.K + ch)]);
      y[m * d.N + n] = float(acc);
    }
  }
}

}  // namespace vq2trt
