// Sizes, limits and data checks of docs/format.md §3-§4, and fp16/bf16 conversions.
#include "vq2trt/format.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace vq2trt {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kInt32: return "int32";
  }
  return "?";
}

int index_bits(int64_t k) {
  int b = 1;
  while (b < 62 && (int64_t(1) << b) < k) ++b;
  return b;
}

std::vector<TensorSpec> weight_input_specs(const VQGemmDims& d) {
  const int64_t C = d.K - d.n_out, R = ceil_div(d.N, d.v);
  std::vector<TensorSpec> s;
  s.push_back({"indices", DType::kInt32, {R, packed_words(C, index_bits(d.k))}});
  s.push_back({"codebook", DType::kFloat16, {d.G, d.k, d.v}});
  s.push_back({"perm", DType::kInt32, {d.K}});
  if (d.k_r > 0) {
    s.push_back({"res_indices", DType::kInt32, {R, packed_words(C, index_bits(d.k_r))}});
    s.push_back({"res_codebook", DType::kFloat16, {d.G, d.k_r, d.v}});
  }
  if (d.n_out > 0) {
    s.push_back({"outlier_indices", DType::kInt32,
                 {ceil_div(d.N, d.v_o), packed_words(d.n_out, index_bits(d.k_o))}});
    s.push_back({"outlier_codebook", DType::kFloat16, {d.k_o, d.v_o}});
  }
  if (d.normalized) {
    s.push_back({"col_scale", DType::kFloat16, {d.K}});
    s.push_back({"col_bias", DType::kFloat16, {d.K}});
  }
  if (d.has_bias) s.push_back({"bias", DType::kFloat32, {d.N}});
  return s;
}

VQGemmDesc describe_weight_inputs(const VQGemmDims& d, const void* const* inputs) {
  VQGemmDesc w;
  w.dims = d;
  const std::vector<TensorSpec> specs = weight_input_specs(d);
  for (size_t i = 0; i < specs.size(); ++i) {
    const std::string name = specs[i].name;
    const void* p = inputs[i];
    auto i32 = static_cast<const int32_t*>(p);
    auto f16 = static_cast<const uint16_t*>(p);
    if (name == "indices") w.indices = i32;
    else if (name == "codebook") w.codebook = f16;
    else if (name == "perm") w.perm = i32;
    else if (name == "res_indices") w.res_indices = i32;
    else if (name == "res_codebook") w.res_codebook = f16;
    else if (name == "outlier_indices") w.outlier_indices = i32;
    else if (name == "outlier_codebook") w.outlier_codebook = f16;
    else if (name == "col_scale") w.col_scale = f16;
    else if (name == "col_bias") w.col_bias = f16;
    else if (name == "bias") w.bias = static_cast<const float*>(p);
  }
  return w;
}

std::string validate_dims(const VQGemmDims& d) {
  // Sizes above 2^31 would overflow the int32 words a row is addressed with; no Linear is that big.
  constexpr int64_t kMaxDim = int64_t(1) << 31;
  auto centroids_ok = [](int64_t k) { return k >= 2 && k <= (int64_t(1) << kMaxIndexBits); };
  if (d.N < 1 || d.K < 1 || d.N >= kMaxDim || d.K >= kMaxDim)
    return "out_features and in_features must lie in [1, 2^31), got N=" + std::to_string(d.N) +
           ", K=" + std::to_string(d.K);
  if (d.n_out < 0 || d.n_out >= d.K)
    return "num_outlier_cols must lie in [0, in_features), got " + std::to_string(d.n_out);
  if (d.v < 1 || d.v > 4096) return "vector_len must lie in [1, 4096], got " + std::to_string(d.v);
  if (!centroids_ok(d.k)) return "num_centroids must lie in [2, 65536], got " + std::to_string(d.k);
  if (d.G < 1 || d.G > d.K - d.n_out)
    return "num_groups must lie in [1, in_features - num_outlier_cols], got " + std::to_string(d.G);
  if (d.k_r != 0 && !centroids_ok(d.k_r))
    return "num_res_centroids must be 0 or lie in [2, 65536], got " + std::to_string(d.k_r);
  if (d.n_out == 0 && (d.v_o != 0 || d.k_o != 0))
    return "outlier_vector_len and num_outlier_centroids must be 0 without outlier columns";
  if (d.n_out > 0 && (d.v_o < 1 || d.v_o > 4096 || !centroids_ok(d.k_o)))
    return "with outlier columns, outlier_vector_len must lie in [1, 4096] and num_outlier_centroids "
           "in [2, 65536], got " + std::to_string(d.v_o) + ", " + std::to_string(d.k_o);
  return "";
}

namespace {

// Every index of a packed [rows, count] matrix must be < k and the padding bits zero.
std::string check_indices(const char* name, const int32_t* packed, int64_t rows, int64_t count,
                          int64_t k) {
  const int b = index_bits(k);
  const int64_t words = packed_words(count, b);
  const uint32_t mask = (1u << b) - 1;
  for (int64_t r = 0; r < rows; ++r) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(packed) + r * words;
    for (int64_t c = 0; c < count; ++c) {
      const int64_t t = c * b, i = t >> 5;
      const int off = int(t & 31);
      uint64_t bits = w[i];
      if (off + b > 32) bits |= uint64_t(w[i + 1]) << 32;
      const uint32_t idx = uint32_t(bits >> off) & mask;
      if (idx >= k)
        return std::string(name) + ": index " + std::to_string(idx) + " at row " + std::to_string(r) +
               ", column " + std::to_string(c) + " is out of range for a codebook of " +
               std::to_string(k) + " entries";
    }
    const int tail = int(count * b % 32);
    if (tail && (w[words - 1] >> tail) != 0)
      return std::string(name) + ": padding bits after the last index of row " + std::to_string(r) +
             " must be zero";
  }
  return "";
}

std::string check_finite(const char* name, const uint16_t* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if ((h[i] & 0x7c00) == 0x7c00) return std::string(name) + ": NaN or Inf at element " + std::to_string(i);
  return "";
}

}  // namespace

std::string validate_data(const VQGemmDesc& w) {
  const VQGemmDims& d = w.dims;
  std::string e = validate_dims(d);
  if (!e.empty()) return e;
  const int64_t C = d.K - d.n_out, R = ceil_div(d.N, d.v);
  std::vector<char> seen(size_t(d.K), 0);
  for (int64_t p = 0; p < d.K; ++p) {
    const int32_t ch = w.perm[p];
    if (ch < 0 || ch >= d.K || seen[size_t(ch)])
      return "perm: not a permutation of 0.." + std::to_string(d.K - 1) + " (channel " +
             std::to_string(ch) + " at position " + std::to_string(p) + ")";
    seen[size_t(ch)] = 1;
  }
  if (!(e = check_indices("indices", w.indices, R, C, d.k)).empty()) return e;
  if (!(e = check_finite("codebook", w.codebook, d.G * d.k * d.v)).empty()) return e;
  if (d.k_r > 0) {
    if (!(e = check_indices("res_indices", w.res_indices, R, C, d.k_r)).empty()) return e;
    if (!(e = check_finite("res_codebook", w.res_codebook, d.G * d.k_r * d.v)).empty()) return e;
  }
  if (d.n_out > 0) {
    if (!(e = check_indices("outlier_indices", w.outlier_indices, ceil_div(d.N, d.v_o), d.n_out, d.k_o))
             .empty())
      return e;
    if (!(e = check_finite("outlier_codebook", w.outlier_codebook, d.k_o * d.v_o)).empty()) return e;
  }
  if (d.normalized) {
    if (!(e = check_finite("col_scale", w.col_scale, d.K)).empty()) return e;
    if (!(e = check_finite("col_bias", w.col_bias, d.K)).empty()) return e;
  }
  return "";
}

float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    u = sign;
  } else {  // subnormal: renormalise
    exp = 113;
    while (!(man & 0x400)) { man <<= 1; --exp; }
    u = sign | (exp << 23) | ((man & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t float_to_half(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000);
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return uint16_t(sign | 0x7c00 | (a > 0x7f800000u ? 0x200 : 0));
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00);  // rounds to >= 65520: overflow
  if (a < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    if (a < 0x33000000u) return sign;
    const uint32_t man = (a & 0x7fffff) | 0x800000;
    const int shift = 126 - int(a >> 23);  // 14..24 bits dropped
    uint32_t r = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) ++r;
    return uint16_t(sign | r);
  }
  uint32_t r = ((a >> 13) - (112u << 10));
  const uint32_t rem = a & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) ++r;
  return uint16_t(sign | r);
}

uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // keep NaN a NaN
  u += 0x7fff + ((u >> 16) & 1);
  return uint16_t(u >> 16);
}

}  // namespace vq2trt
