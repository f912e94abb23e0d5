// Random VQ weights for the C++ tests: every format feature, packed as docs/format.md §4 says.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "vq2trt/format.h"

namespace vq2trt::test {

struct RandomWeight {
  std::vector<int32_t> perm, indices, res_indices, outlier_indices;
  std::vector<uint16_t> codebook, res_codebook, outlier_codebook, col_scale, col_bias;
  std::vector<float> bias;
  VQGemmDesc desc;
};

inline std::vector<int32_t> pack(const std::vector<uint32_t>& idx, int64_t rows, int64_t count, int b) {
  const int64_t words = packed_words(count, b);
  std::vector<int32_t> out(size_t(rows * words), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < count; ++c)
      for (int i = 0; i < b; ++i)
        if ((idx[size_t(r * count + c)] >> i) & 1u) {
          const int64_t t = c * b + i;
          reinterpret_cast<uint32_t&>(out[size_t(r * words + t / 32)]) |= 1u << (t % 32);
        }
  return out;
}

inline std::vector<int32_t> random_indices(std::mt19937& rng, int64_t rows, int64_t count, int64_t k) {
  std::vector<uint32_t> idx(size_t(rows * count));
  std::uniform_int_distribution<uint32_t> u(0, uint32_t(k - 1));
  for (auto& i : idx) i = u(rng);
  return pack(idx, rows, count, index_bits(k));
}

inline std::vector<uint16_t> random_halves(std::mt19937& rng, int64_t n, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<uint16_t> out(static_cast<size_t>(n));
  for (auto& h : out) h = float_to_half(u(rng));
  return out;
}

// Dims are fixed by the caller; flags in dims choose the optional parts.
inline RandomWeight random_weight(std::mt19937& rng, const VQGemmDims& d) {
  RandomWeight w;
  const int64_t C = d.K - d.n_out, R = ceil_div(d.N, d.v);
  w.perm.resize(size_t(d.K));
  std::iota(w.perm.begin(), w.perm.end(), 0);
  std::shuffle(w.perm.begin(), w.perm.end(), rng);
  w.indices = random_indices(rng, R, C, d.k);
  w.codebook = random_halves(rng, d.G * d.k * d.v, -1.f, 1.f);
  if (d.k_r) {
    w.res_indices = random_indices(rng, R, C, d.k_r);
    w.res_codebook = random_halves(rng, d.G * d.k_r * d.v, -0.1f, 0.1f);
  }
  if (d.n_out) {
    w.outlier_indices = random_indices(rng, ceil_div(d.N, d.v_o), d.n_out, d.k_o);
    w.outlier_codebook = random_halves(rng, d.k_o * d.v_o, -4.f, 4.f);
  }
  if (d.normalized) {
    w.col_scale = random_halves(rng, d.K, 0.5f, 2.f);
    w.col_bias = random_halves(rng, d.K, -0.2f, 0.2f);
  }
  if (d.has_bias) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    w.bias.resize(size_t(d.N));
    for (auto& b : w.bias) b = u(rng);
  }
  VQGemmDesc& s = w.desc;
  s.dims = d;
  s.perm = w.perm.data();
  s.indices = w.indices.data();
  s.codebook = w.codebook.data();
  s.res_indices = d.k_r ? w.res_indices.data() : nullptr;
  s.res_codebook = d.k_r ? w.res_codebook.data() : nullptr;
  s.outlier_indices = d.n_out ? w.outlier_indices.data() : nullptr;
  s.outlier_codebook = d.n_out ? w.outlier_codebook.data() : nullptr;
  s.col_scale = d.normalized ? w.col_scale.data() : nullptr;
  s.col_bias = d.normalized ? w.col_bias.data() : nullptr;
  s.bias = d.has_bias ? w.bias.data() : nullptr;
  return w;
}

}  // namespace vq2trt::test
