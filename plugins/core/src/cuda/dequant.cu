// Prefill, step 1: dequantize the whole weight into the workspace, Wd [N, K] in the activations'
// precision (fp16 / bf16 for tensor cores, fp32 for fp32), original channel order, normalization
// applied. One thread per (output, permuted column); N·K work, amortized over the GEMM's M rows.
#include "kernels.cuh"

namespace vq2trt::cuda {
namespace {

template <typename TW>
__global__ void dequantize_kernel(DeviceWeight w, TW* __restrict__ wd) {
  const int64_t total = w.N * w.K;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    // Consecutive threads take consecutive permuted columns of one output: their index reads are
    // coalesced; the stores scatter by perm within the row.
    const int64_t n = t / w.K, p = t - n * w.K;
    const int64_t ch = clamp_channel(w.perm[p], w.K);
    wd[n * w.K + ch] = from_float<TW>(weight_value(w, n, p));
  }
}

}  // namespace

template <typename TW>
cudaError_t launch_dequantize(const DeviceWeight& w, TW* wd, cudaStream_t s) {
  const int64_t total = w.N * w.K;
  const int64_t blocks = (total + 255) / 256 < 65536 * 8 ? (total + 255) / 256 : 65536 * 8;
  dequantize_kernel<TW><<<unsigned(blocks), 256, 0, s>>>(w, wd);
  return cudaGetLastError();
}

template cudaError_t launch_dequantize<float>(const DeviceWeight&, float*, cudaStream_t);
template cudaError_t launch_dequantize<__half>(const DeviceWeight&, __half*, cudaStream_t);
template cudaError_t launch_dequantize<__nv_bfloat16>(const DeviceWeight&, __nv_bfloat16*, cudaStream_t);

}  // namespace vq2trt::cuda
