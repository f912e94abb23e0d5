// docs/format.md §4-§5 for one weight element, as __host__ __device__ functions: the CUDA kernels
// use them, and plugins/tests/test_cuda_format.cpp compiles them as host code to check them
// against the scalar reference (no GPU in CI). Index values and perm entries are clamped into
// range, so unvalidated data cannot make a kernel read out of bounds.
#pragma once

#include <cstdint>

#include "vq2trt/format.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

#if defined(__CUDACC__)
#define VQ2TRT_HD __host__ __device__ __forceinline__
#else
#define VQ2TRT_HD inline
#endif

namespace vq2trt::cuda {

// The plain sizes a kernel needs, precomputed once on the host (no std:: types, copied by value
// into kernel parameters).
struct DeviceWeight {
  int64_t N, K, n_out, C, gs;      // C = K - n_out regular columns, gs = columns per group
  int v, k, k_r, v_o, k_o;
  int b, b_r, b_o;                 // index bits
  int64_t words, words_r, words_o; // int32 words per packed row
  bool normalized, has_bias;
  const uint32_t* indices;
  const uint16_t* codebook;        // fp16 bits
  const uint32_t* res_indices;
  const uint16_t* res_codebook;
  const uint32_t* outlier_indices;
  const uint16_t* outlier_codebook;
  const int32_t* perm;
  const uint16_t* col_scale;
  const uint16_t* col_bias;
  const float* bias;
};

inline DeviceWeight device_weight(const VQGemmDesc& w) {
  const VQGemmDims& d = w.dims;
  DeviceWeight s{};
  s.N = d.N, s.K = d.K, s.n_out = d.n_out, s.C = d.K - d.n_out, s.gs = group_size(d);
  s.v = int(d.v), s.k = int(d.k), s.k_r = int(d.k_r), s.v_o = int(d.v_o), s.k_o = int(d.k_o);
  s.b = index_bits(d.k), s.b_r = d.k_r ? index_bits(d.k_r) : 0, s.b_o = d.n_out ? index_bits(d.k_o) : 0;
  s.words = packed_words(s.C, s.b), s.words_r = packed_words(s.C, s.b_r), s.words_o = packed_words(d.n_out, s.b_o);
  s.normalized = d.normalized, s.has_bias = d.has_bias;
  s.indices = reinterpret_cast<const uint32_t*>(w.indices);
  s.codebook = w.codebook;
  s.res_indices = reinterpret_cast<const uint32_t*>(w.res_indices);
  s.res_codebook = w.res_codebook;
  s.outlier_indices = reinterpret_cast<const uint32_t*>(w.outlier_indices);
  s.outlier_codebook = w.outlier_codebook;
  s.perm = w.perm;
  s.col_scale = w.col_scale, s.col_bias = w.col_bias, s.bias = w.bias;
  return s;
}

// Index c of a packed row (LSB first; an index may straddle two words, and then the second word
// is still inside the row), clamped to limit - 1.
VQ2TRT_HD uint32_t read_index(const uint32_t* row, int64_t c, int bits, int limit) {
  const int64_t t = c * bits;
  const int64_t i = t >> 5;
  const int off = int(t & 31);
  uint64_t v = row[i];
  if (off + bits > 32) v |= uint64_t(row[i + 1]) << 32;
  const uint32_t idx = uint32_t(v >> off) & ((1u << bits) - 1u);
  return idx < uint32_t(limit) ? idx : uint32_t(limit - 1);
}

VQ2TRT_HD int64_t clamp_channel(int32_t ch, int64_t K) { return ch < 0 ? 0 : (ch >= K ? K - 1 : ch); }

VQ2TRT_HD float half_bits_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  return half_to_float(h);
#endif
}

// The regular part's value for output n and regular column c (before normalization).
VQ2TRT_HD float regular_value(const DeviceWeight& w, int64_t n, int64_t c) {
  const int64_t r = n / w.v, g = c / w.gs;
  const int j = int(n - r * w.v);
  const uint32_t i = read_index(w.indices + r * w.words, c, w.b, w.k);
  float q = half_bits_to_float(w.codebook[(g * w.k + i) * w.v + j]);
  if (w.k_r) {
    const uint32_t ir = read_index(w.res_indices + r * w.words_r, c, w.b_r, w.k_r);
    q += half_bits_to_float(w.res_codebook[(g * w.k_r + ir) * w.v + j]);
  }
  return q;
}

// The outlier part's value for output n and outlier column p < n_out.
VQ2TRT_HD float outlier_value(const DeviceWeight& w, int64_t n, int64_t p) {
  const int64_t r = n / w.v_o;
  const uint32_t i = read_index(w.outlier_indices + r * w.words_o, p, w.b_o, w.k_o);
  return half_bits_to_float(w.outlier_codebook[int64_t(i) * w.v_o + (n - r * w.v_o)]);
}

// W[n, perm[p]] of docs/format.md §5 (normalization applied) for permuted column p.
VQ2TRT_HD float weight_value(const DeviceWeight& w, int64_t n, int64_t p) {
  const float q = p < w.n_out ? outlier_value(w, n, p) : regular_value(w, n, p - w.n_out);
  if (!w.normalized) return q;
  const int64_t ch = clamp_channel(w.perm[p], w.K);
  return q * half_bits_to_float(w.col_scale[ch]) + half_bits_to_float(w.col_bias[ch]);
}

}  // namespace vq2trt::cuda
