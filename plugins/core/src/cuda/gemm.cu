// Prefill, step 2: Y [M, N] = X [M, K] · Wd [N, K]ᵀ + bias with float32 accumulation, a kernel of
// our own (IPluginV3 gets no cuBLAS handle and Jetson builds stay lean). fp16 / bf16: 64x64 block
// tiles on tensor cores (WMMA 16x16x16, four warps of 32x32); fp32: a 64x64 SIMT tile. Edges are
// zero-filled in shared memory, so any M, N, K works.
#include <mma.h>

#include <type_traits>

#include "kernels.cuh"

namespace vq2trt::cuda {
namespace {

constexpr int kBM = 64, kBN = 64;

template <typename T>
__global__ void __launch_bounds__(128)
gemm_wmma_kernel(const T* __restrict__ x, const T* __restrict__ wd, const float* __restrict__ bias, int64_t M,
                 int64_t N, int64_t K, T* __restrict__ y) {
  using namespace nvcuda;
  constexpr int kBK = 32, kLd = kBK + 8, kLdC = kBN + 4;  // padding keeps 32-byte fragment alignment
  __shared__ __align__(32) T As[kBM][kLd];
  __shared__ __align__(32) T Bs[kBN][kLd];
  __shared__ __align__(32) float Cs[kBM][kLdC];
  const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  const int warp = threadIdx.x >> 5, wm = warp >> 1, wn = warp & 1;
  const T zero = from_float<T>(0.f);

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
    for (int t = threadIdx.x; t < kBM * kBK; t += blockDim.x) {
      const int r = t / kBK, c = t % kBK;
      const int64_t gk = k0 + c;
      As[r][c] = (m0 + r < M && gk < K) ? x[(m0 + r) * K + gk] : zero;
      Bs[r][c] = (n0 + r < N && gk < K) ? wd[(n0 + r) * K + gk] : zero;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], &As[wm * 32 + i * 16][kk], kLd);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], &Bs[wn * 32 + j * 16][kk], kLd);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&Cs[wm * 32 + i * 16][wn * 32 + j * 16], acc[i][j], kLdC, wmma::mem_row_major);
  __syncthreads();
  for (int t = threadIdx.x; t < kBM * kBN; t += blockDim.x) {
    const int r = t / kBN, c = t % kBN;
    const int64_t m = m0 + r, n = n0 + c;
    if (m < M && n < N) y[m * N + n] = from_float<T>(Cs[r][c] + (bias ? bias[n] : 0.f));
  }
}

__global__ void __launch_bounds__(256)
gemm_f32_kernel(const float* __restrict__ x, const float* __restrict__ wd, const float* __restrict__ bias, int64_t M,
                int64_t N, int64_t K, float* __restrict__ y) {
  constexpr int kBK = 16;
  __shared__ float As[kBM][kBK + 1];
  __shared__ float Bs[kBN][kBK + 1];
  const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // rows ty + 16i, columns tx + 16j
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
    for (int t = threadIdx.x; t < kBM * kBK; t += blockDim.x) {
      const int r = t / kBK, c = t % kBK;
      const int64_t gk = k0 + c;
      As[r][c] = (m0 + r < M && gk < K) ? x[(m0 + r) * K + gk] : 0.f;
      Bs[r][c] = (n0 + r < N && gk < K) ? wd[(n0 + r) * K + gk] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[ty + 16 * i][kk];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[tx + 16 * j][kk];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < M && n < N) y[m * N + n] = acc[i][j] + (bias ? bias[n] : 0.f);
    }
}

constexpr int64_t kMaxGridY = 65535;

}  // namespace

template <typename T>
cudaError_t launch_gemm(const T* x, const T* wd, const float* bias, int64_t M, int64_t N, int64_t K, T* y,
                        cudaStream_t s) {
  const int64_t grid_x = (N + kBN - 1) / kBN;
  if (grid_x > 0x7fffffff) return cudaErrorInvalidConfiguration;
  // Rows beyond one grid's reach run as further launches over row slices.
  for (int64_t r0 = 0; r0 < M; r0 += kMaxGridY * kBM) {
    const int64_t rows = M - r0 < kMaxGridY * kBM ? M - r0 : kMaxGridY * kBM;
    const dim3 grid(unsigned(grid_x), unsigned((rows + kBM - 1) / kBM));
    if constexpr (std::is_same_v<T, float>)
      gemm_f32_kernel<<<grid, 256, 0, s>>>(x + r0 * K, wd, bias, rows, N, K, y + r0 * N);
    else
      gemm_wmma_kernel<T><<<grid, 128, 0, s>>>(x + r0 * K, wd, bias, rows, N, K, y + r0 * N);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template cudaError_t launch_gemm<float>(const float*, const float*, const float*, int64_t, int64_t, int64_t, float*,
                                        cudaStream_t);
template cudaError_t launch_gemm<__half>(const __half*, const __half*, const float*, int64_t, int64_t, int64_t,
                                         __half*, cudaStream_t);
template cudaError_t launch_gemm<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*, const float*, int64_t,
                                                int64_t, int64_t, __nv_bfloat16*, cudaStream_t);

}  // namespace vq2trt::cuda
