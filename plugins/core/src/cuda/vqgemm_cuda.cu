// vq2trt::cuda entry points: argument checks, workspace layout, path choice (decode GEMV or
// dequantize + GEMM), and the device-data validation used once per weight by the adapters.
#include <algorithm>
#include <vector>

#include "kernels.cuh"
#include "vq2trt/cuda_kernels.h"

namespace vq2trt::cuda {
namespace {

constexpr size_t kAlign = 256;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

bool use_decode(const VQGemmDims& d, int64_t M) { return M <= kDecodeMaxRows && d.v <= kDecodeMaxVectorLen; }

// Decode: xp [M, K] float32, then xc [M] float32.
size_t decode_bytes(const VQGemmDims& d, int64_t M) {
  return align_up(size_t(M * d.K) * sizeof(float)) + align_up(size_t(M) * sizeof(float));
}

size_t element_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }

// Prefill: Wd [N, K] in the activations' type.
size_t prefill_bytes(const VQGemmDims& d, DType x_type) { return align_up(size_t(d.N * d.K) * element_size(x_type)); }

template <typename T>
cudaError_t run(const VQGemmDesc& desc, const T* x, int64_t M, T* y, unsigned char* ws, cudaStream_t s) {
  const DeviceWeight w = device_weight(desc);
  if (use_decode(desc.dims, M)) {
    float* xp = reinterpret_cast<float*>(ws);
    float* xc = reinterpret_cast<float*>(ws + align_up(size_t(M * w.K) * sizeof(float)));
    cudaError_t e = launch_prepare_x<T>(w, x, M, xp, xc, s);
    if (e == cudaSuccess) e = launch_decode_gemv<T>(w, xp, xc, M, y, s);
    return e;
  }
  T* wd = reinterpret_cast<T*>(ws);
  cudaError_t e = launch_dequantize<T>(w, wd, s);
  if (e == cudaSuccess) e = launch_gemm<T>(x, wd, w.has_bias ? w.bias : nullptr, M, w.N, w.K, y, s);
  return e;
}

}  // namespace

size_t workspace_size(const VQGemmDims& d, int64_t max_rows, DType x_type) {
  if (max_rows <= 0) return 0;
  size_t bytes = 0;
  if (d.v <= kDecodeMaxVectorLen) bytes = decode_bytes(d, max_rows < kDecodeMaxRows ? max_rows : kDecodeMaxRows);
  if (!use_decode(d, max_rows)) bytes = std::max(bytes, prefill_bytes(d, x_type));
  return bytes;
}

cudaError_t vq_gemm(const VQGemmDesc& w, DType x_type, const void* x, int64_t M, void* y, void* workspace,
                    size_t workspace_bytes, cudaStream_t stream) {
  const VQGemmDims& d = w.dims;
  if (M < 0 || !validate_dims(d).empty()) return cudaErrorInvalidValue;
  if (M == 0) return cudaSuccess;
  const bool missing = !x || !y || !w.indices || !w.codebook || !w.perm || (d.k_r && (!w.res_indices || !w.res_codebook)) ||
                       (d.n_out && (!w.outlier_indices || !w.outlier_codebook)) ||
                       (d.normalized && (!w.col_scale || !w.col_bias)) || (d.has_bias && !w.bias);
  const size_t need = use_decode(d, M) ? decode_bytes(d, M) : prefill_bytes(d, x_type);
  if (missing || !workspace || workspace_bytes < need) return cudaErrorInvalidValue;
  auto* ws = static_cast<unsigned char*>(workspace);
  switch (x_type) {
    case DType::kFloat32:
      return run(w, static_cast<const float*>(x), M, static_cast<float*>(y), ws, stream);
    case DType::kFloat16:
      return run(w, static_cast<const __half*>(x), M, static_cast<__half*>(y), ws, stream);
    case DType::kBFloat16:
      return run(w, static_cast<const __nv_bfloat16*>(x), M, static_cast<__nv_bfloat16*>(y), ws, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

std::string validate_device_data(const VQGemmDesc& w, cudaStream_t stream) {
  const std::string dims_error = validate_dims(w.dims);
  if (!dims_error.empty()) return dims_error;
  std::vector<std::vector<unsigned char>> host;
  std::string error;
  auto fetch = [&](const void* device, int64_t elements, size_t element_bytes) -> const void* {
    if (!device || !error.empty()) return nullptr;
    host.emplace_back(size_t(elements) * element_bytes);
    const cudaError_t e = cudaMemcpyAsync(host.back().data(), device, host.back().size(), cudaMemcpyDeviceToHost, stream);
    if (e != cudaSuccess) error = std::string("copying the weight to the host failed: ") + cudaGetErrorString(e);
    return host.back().data();
  };
  const VQGemmDims& d = w.dims;
  const int64_t C = d.K - d.n_out, R = ceil_div(d.N, d.v);
  VQGemmDesc h;
  h.dims = d;
  h.perm = static_cast<const int32_t*>(fetch(w.perm, d.K, 4));
  h.indices = static_cast<const int32_t*>(fetch(w.indices, R * packed_words(C, index_bits(d.k)), 4));
  h.codebook = static_cast<const uint16_t*>(fetch(w.codebook, d.G * d.k * d.v, 2));
  if (d.k_r) {
    h.res_indices = static_cast<const int32_t*>(fetch(w.res_indices, R * packed_words(C, index_bits(d.k_r)), 4));
    h.res_codebook = static_cast<const uint16_t*>(fetch(w.res_codebook, d.G * d.k_r * d.v, 2));
  }
  if (d.n_out) {
    h.outlier_indices = static_cast<const int32_t*>(
        fetch(w.outlier_indices, ceil_div(d.N, d.v_o) * packed_words(d.n_out, index_bits(d.k_o)), 4));
    h.outlier_codebook = static_cast<const uint16_t*>(fetch(w.outlier_codebook, d.k_o * d.v_o, 2));
  }
  if (d.normalized) {
    h.col_scale = static_cast<const uint16_t*>(fetch(w.col_scale, d.K, 2));
    h.col_bias = static_cast<const uint16_t*>(fetch(w.col_bias, d.K, 2));
  }
  if (d.has_bias) h.bias = static_cast<const float*>(fetch(w.bias, d.N, 4));
  if (!error.empty()) return error;
  const cudaError_t e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) return std::string("copying the weight to the host failed: ") + cudaGetErrorString(e);
  if (!h.perm || !h.indices || !h.codebook || (d.k_r && !h.res_codebook) || (d.n_out && !h.outlier_codebook) ||
      (d.normalized && !h.col_bias) || (d.has_bias && !h.bias))
    return "a weight tensor the attributes call for is missing (null pointer)";
  return validate_data(h);
}

}  // namespace vq2trt::cuda
