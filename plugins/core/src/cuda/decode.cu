// Decode path (M <= 8 rows): the packed indices are streamed once for all rows. One warp owns one
// vector row r (outputs r·v .. r·v + v - 1) and walks the columns lane by lane; the permuted,
// scaled activations are staged in shared memory a chunk of columns at a time, and the codebooks
// too when they fit (else they are read through L2, which holds them for every block).
#include "kernels.cuh"
#include "vq2trt/cuda_kernels.h"

namespace vq2trt::cuda {
namespace {

constexpr int kWarps = 4;                   // vector rows per block
constexpr int kChunkFloats = 2048;          // staged activations per block: rows x columns
constexpr int kMaxStagedCodebook = 16384;   // fp16 entries of main + residual codebooks (32 KB)

template <typename T>
__global__ void prepare_x_kernel(DeviceWeight w, const T* __restrict__ x, float* __restrict__ xp,
                                 float* __restrict__ xc) {
  const int64_t m = blockIdx.x;
  const T* xr = x + m * w.K;
  float partial = 0.f;
  for (int64_t p = threadIdx.x; p < w.K; p += blockDim.x) {
    const int64_t ch = clamp_channel(w.perm[p], w.K);
    float v = to_float(xr[ch]);
    if (w.normalized) {
      // X · W[n, :] = Σ_p x[perm p]·scale[perm p]·q[n, p] + Σ_ch x[ch]·col_bias[ch]: the second sum
      // is the same for every output, so it is computed once here.
      partial += to_float(xr[p]) * half_bits_to_float(w.col_bias[p]);
      v *= half_bits_to_float(w.col_scale[ch]);
    }
    xp[m * w.K + p] = v;
  }
  __shared__ float sums[32];
  for (int o = 16; o > 0; o >>= 1) partial += __shfl_xor_sync(0xffffffffu, partial, o);
  if ((threadIdx.x & 31) == 0) sums[threadIdx.x >> 5] = partial;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int i = 0; i < int(blockDim.x >> 5); ++i) total += sums[i];
    xc[m] = total;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// MR: rows computed (>= M, padded rows are skipped on store); acc[m][j] for vector component j.
template <typename T, int MR>
__global__ void __launch_bounds__(kWarps * 32)
decode_gemv_kernel(DeviceWeight w, const float* __restrict__ xp, const float* __restrict__ xc, int M,
                   T* __restrict__ y, bool stage_codebook) {
  constexpr int kCols = kChunkFloats / MR;
  constexpr int kV = kDecodeMaxVectorLen;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* xs = reinterpret_cast<float*>(smem_raw);                         // [MR][kCols]
  uint16_t* cbs = reinterpret_cast<uint16_t*>(xs + kChunkFloats);        // [G·k·v] then [G·k_r·v]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t R = (w.N + w.v - 1) / w.v;
  const int64_t r = int64_t(blockIdx.x) * kWarps + warp;
  const int64_t G = (w.C + w.gs - 1) / w.gs;

  const uint16_t* cb = w.codebook;
  const uint16_t* cb_r = w.res_codebook;
  if (stage_codebook) {
    const int64_t n_main = G * w.k * w.v, n_res = G * w.k_r * w.v;
    for (int64_t i = threadIdx.x; i < n_main; i += blockDim.x) cbs[i] = w.codebook[i];
    for (int64_t i = threadIdx.x; i < n_res; i += blockDim.x) cbs[n_main + i] = w.res_codebook[i];
    cb = cbs;
    cb_r = cbs + n_main;
    // the first __syncthreads of the column loop publishes the staged codebooks
  }

  float acc[MR][kV];
#pragma unroll
  for (int m = 0; m < MR; ++m)
#pragma unroll
    for (int j = 0; j < kV; ++j) acc[m][j] = 0.f;

  const uint32_t* row = w.indices + (r < R ? r : 0) * w.words;
  const uint32_t* row_r = w.k_r ? w.res_indices + (r < R ? r : 0) * w.words_r : nullptr;
  for (int64_t c0 = 0; c0 < w.C; c0 += kCols) {
    const int64_t cols = w.C - c0 < kCols ? w.C - c0 : kCols;
    __syncthreads();  // the previous chunk is no longer read
    for (int64_t i = threadIdx.x; i < int64_t(MR) * kCols; i += blockDim.x) {
      const int m = int(i / kCols);
      const int64_t c = i - int64_t(m) * kCols;
      xs[i] = (m < M && c < cols) ? xp[int64_t(m) * w.K + w.n_out + c0 + c] : 0.f;
    }
    __syncthreads();
    if (r >= R) continue;
    for (int64_t c = lane; c < cols; c += 32) {
      const int64_t col = c0 + c, g = col / w.gs;
      const uint32_t i = read_index(row, col, w.b, w.k);
      const uint16_t* e = cb + (g * w.k + i) * w.v;
      float q[kV];
#pragma unroll
      for (int j = 0; j < kV; ++j) q[j] = j < w.v ? half_bits_to_float(e[j]) : 0.f;
      if (w.k_r) {
        const uint32_t ir = read_index(row_r, col, w.b_r, w.k_r);
        const uint16_t* er = cb_r + (g * w.k_r + ir) * w.v;
#pragma unroll
        for (int j = 0; j < kV; ++j) q[j] += j < w.v ? half_bits_to_float(er[j]) : 0.f;
      }
#pragma unroll
      for (int m = 0; m < MR; ++m) {
        const float xv = xs[m * kCols + c];
#pragma unroll
        for (int j = 0; j < kV; ++j) acc[m][j] += xv * q[j];
      }
    }
  }
  if (r >= R) return;

  // Outlier columns: few, each output's own index row (n / v_o), read element by element.
  if (w.n_out > 0) {
#pragma unroll
    for (int j = 0; j < kV; ++j) {
      const int64_t n = r * w.v + j;
      if (j >= w.v || n >= w.N) continue;
      for (int64_t p = lane; p < w.n_out; p += 32) {
        const float q = outlier_value(w, n, p);
#pragma unroll
        for (int m = 0; m < MR; ++m)
          if (m < M) acc[m][j] += xp[int64_t(m) * w.K + p] * q;
      }
    }
  }

#pragma unroll
  for (int m = 0; m < MR; ++m) {
#pragma unroll
    for (int j = 0; j < kV; ++j) {
      const float s = warp_sum(acc[m][j]);
      const int64_t n = r * w.v + j;
      if (lane == 0 && m < M && j < w.v && n < w.N)
        y[int64_t(m) * w.N + n] = from_float<T>(s + xc[m] + (w.has_bias ? w.bias[n] : 0.f));
    }
  }
}

template <typename T, int MR>
cudaError_t launch_rows(const DeviceWeight& w, const float* xp, const float* xc, int M, T* y, cudaStream_t s) {
  const int64_t R = (w.N + w.v - 1) / w.v, G = (w.C + w.gs - 1) / w.gs;
  const int64_t staged = G * (int64_t(w.k) + w.k_r) * w.v;
  const bool stage = staged <= kMaxStagedCodebook;
  const size_t smem = kChunkFloats * sizeof(float) + (stage ? size_t(staged) * sizeof(uint16_t) : 0);
  const int64_t blocks = (R + kWarps - 1) / kWarps;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  // 8 KB + up to 32 KB: under the 48 KB every GPU grants without an opt-in.
  decode_gemv_kernel<T, MR><<<unsigned(blocks), kWarps * 32, smem, s>>>(w, xp, xc, M, y, stage);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_prepare_x(const DeviceWeight& w, const T* x, int64_t M, float* xp, float* xc, cudaStream_t s) {
  prepare_x_kernel<T><<<unsigned(M), 256, 0, s>>>(w, x, xp, xc);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_decode_gemv(const DeviceWeight& w, const float* xp, const float* xc, int64_t M, T* y,
                               cudaStream_t s) {
  if (M <= 1) return launch_rows<T, 1>(w, xp, xc, int(M), y, s);
  if (M <= 2) return launch_rows<T, 2>(w, xp, xc, int(M), y, s);
  if (M <= 4) return launch_rows<T, 4>(w, xp, xc, int(M), y, s);
  return launch_rows<T, 8>(w, xp, xc, int(M), y, s);
}

#define VQ2TRT_INSTANTIATE(T)                                                                              \
  template cudaError_t launch_prepare_x<T>(const DeviceWeight&, const T*, int64_t, float*, float*, cudaStream_t); \
  template cudaError_t launch_decode_gemv<T>(const DeviceWeight&, const float*, const float*, int64_t, T*,   \
                                             cudaStream_t);
VQ2TRT_INSTANTIATE(float)
VQ2TRT_INSTANTIATE(__half)
VQ2TRT_INSTANTIATE(__nv_bfloat16)
#undef VQ2TRT_INSTANTIATE

}  // namespace vq2trt::cuda
