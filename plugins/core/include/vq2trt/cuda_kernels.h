// CUDA VQGemm: Y[M, N] = X[M, K] · dequant(W)ᵀ + bias on a stream, fp32 accumulation.
// Raw device pointers and plain structs only (no TensorRT / ORT / torch types), so the TensorRT
// plugin and the ORT CUDA op call the same code.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "vq2trt/format.h"

namespace vq2trt::cuda {

// Up to this many rows of X (decode), vq_gemm runs a fused dequant + GEMV that streams the packed
// indices once for all rows. Above it (prefill) it dequantizes W into the workspace (fp16 / bf16
// for those activations, fp32 for fp32) and runs a tiled GEMM of its own (tensor cores for
// fp16 / bf16; no cuBLAS).
constexpr int64_t kDecodeMaxRows = 8;
// The decode path keeps v accumulators per row in registers; longer vectors take the GEMM path.
constexpr int64_t kDecodeMaxVectorLen = 8;

// Device workspace bytes vq_gemm needs for any M <= max_rows with activations of x_type.
size_t workspace_size(const VQGemmDims& d, int64_t max_rows, DType x_type);

// Launches the op on `stream` (asynchronous). Every pointer in w, x, y and workspace is a device
// pointer; x and y have x_type (kFloat32, kFloat16 or kBFloat16); workspace_bytes must be at least
// workspace_size(w.dims, M, x_type). The dims must have passed validate_dims. The data need not be
// validated for memory safety: an index >= its codebook size and a perm entry outside [0, K) are
// clamped into range (wrong results, never an out-of-bounds read). Returns cudaErrorInvalidValue
// for arguments it cannot run with (null pointers, M < 0, small workspace), else the launch status.
cudaError_t vq_gemm(const VQGemmDesc& w, DType x_type, const void* x, int64_t M, void* y,
                    void* workspace, size_t workspace_bytes, cudaStream_t stream);

// validate_data() for a weight whose tensors live on the device: copies them to the host (a
// synchronous round trip; run it once per weight, not per call). Empty string when valid.
std::string validate_device_data(const VQGemmDesc& w, cudaStream_t stream);

}  // namespace vq2trt::cuda
