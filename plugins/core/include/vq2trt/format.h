// One VQGemm weight as plain sizes and raw pointers: the C++ side of docs/format.md (format v1).
// No ORT / TensorRT / torch types here, so every runtime adapter can describe its tensors with it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vq2trt {

constexpr int kFormatVersion = 1;
constexpr int kMaxIndexBits = 16;

// Element types of the op's tensors (docs/format.md §3, §9).
enum class DType { kFloat32, kFloat16, kBFloat16, kInt32 };
const char* dtype_name(DType t);

// Sizes of one quantized Linear, as the node's attributes state them (docs/format.md §9).
struct VQGemmDims {
  int64_t N = 0, K = 0, n_out = 0;  // out_features, in_features, num_outlier_cols
  int64_t v = 0, k = 0, G = 0;      // vector_len, num_centroids, num_groups
  int64_t k_r = 0;                  // num_res_centroids, 0 = no residual
  int64_t v_o = 0, k_o = 0;         // outlier vector length / centroids, 0 when n_out == 0
  bool normalized = false, has_bias = false;
};

// A weight: dims plus pointers to the stored tensors (fp16 values as raw uint16 bits).
// Absent optional tensors are nullptr.
struct VQGemmDesc {
  VQGemmDims dims;
  const int32_t* perm = nullptr;              // [K]
  const int32_t* indices = nullptr;           // [R, words(C, b)]
  const uint16_t* codebook = nullptr;         // [G, k, v]
  const int32_t* res_indices = nullptr;       // [R, words(C, b_r)]
  const uint16_t* res_codebook = nullptr;     // [G, k_r, v]
  const int32_t* outlier_indices = nullptr;   // [R_o, words(n_out, b_o)]
  const uint16_t* outlier_codebook = nullptr; // [k_o, v_o]
  const uint16_t* col_scale = nullptr;        // [K], original channel order
  const uint16_t* col_bias = nullptr;         // [K]
  const float* bias = nullptr;                // [N]
};

// Bits of one packed index for a codebook of k entries: max(1, ceil(log2 k)).
int index_bits(int64_t k);
// int32 words holding one row of `count` indices of `bits` bits.
inline int64_t packed_words(int64_t count, int bits) { return (count * bits + 31) / 32; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
// Regular columns per group; the last group may be shorter.
inline int64_t group_size(const VQGemmDims& d) { return ceil_div(d.K - d.n_out, d.G); }

// One weight input of the node (after X), in node order, with the dtype and shape the dims demand.
struct TensorSpec {
  const char* name;
  DType dtype;
  std::vector<int64_t> shape;
};
std::vector<TensorSpec> weight_input_specs(const VQGemmDims& d);
// The weight described by the node's weight inputs (data pointers in weight_input_specs order,
// i.e. the node's inputs after X): every adapter maps its inputs through this one function.
VQGemmDesc describe_weight_inputs(const VQGemmDims& d, const void* const* inputs);

// Empty string when the dims describe a valid weight (limits of docs/format.md §3), else why not.
std::string validate_dims(const VQGemmDims& d);
// Full check of the data (call after validate_dims; pointers must cover the spec'd shapes):
// perm is a permutation, every index < its codebook size, padding bits zero, values finite.
std::string validate_data(const VQGemmDesc& w);

// IEEE half / bfloat16 <-> float32 (round to nearest even).
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);
inline float bf16_to_float(uint16_t h) {
  union { uint32_t u; float f; } c{uint32_t(h) << 16};
  return c.f;
}
uint16_t float_to_bf16(float f);

}  // namespace vq2trt
