// Launchers shared by the dispatcher (vqgemm_cuda.cu) and the kernel files. Internal.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "device_format.cuh"

namespace vq2trt::cuda {

// Activation element <-> float.
template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Decode: xp [M, K] float32 = X permuted (and scaled by col_scale), xc [M] = X · col_bias.
template <typename T>
cudaError_t launch_prepare_x(const DeviceWeight& w, const T* x, int64_t M, float* xp, float* xc, cudaStream_t s);
// Decode: Y [M, N] from xp / xc, M <= kDecodeMaxRows, v <= kDecodeMaxVectorLen.
template <typename T>
cudaError_t launch_decode_gemv(const DeviceWeight& w, const float* xp, const float* xc, int64_t M, T* y,
                               cudaStream_t s);
// Prefill: Wd [N, K] = dequant(W) in TW (original channel order, normalization applied).
template <typename TW>
cudaError_t launch_dequantize(const DeviceWeight& w, TW* wd, cudaStream_t s);
// Prefill: Y [M, N] = X [M, K] · Wd [N, K]ᵀ + bias, float32 accumulation.
template <typename T>
cudaError_t launch_gemm(const T* x, const T* wd, const float* bias, int64_t M, int64_t N, int64_t K, T* y,
                        cudaStream_t s);

}  // namespace vq2trt::cuda
