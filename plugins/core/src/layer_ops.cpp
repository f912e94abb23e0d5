// rms_norm and silu_mul (vq2trt/layer_ops.h). Rows go out as tasks when there are many (prefill);
// a decode step's one row is not worth a dispatch.
#include "vq2trt/layer_ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "internal.h"

namespace vq2trt {
namespace avx2 {
void silu_mul(const float* g, const float* u, int64_t n, float* y);
}  // namespace avx2

namespace {

float round_to(DType t, float v) {
  if (t == DType::kFloat16) return half_to_float(float_to_half(v));
  if (t == DType::kBFloat16) return bf16_to_float(float_to_bf16(v));
  return v;
}

// One row's values in float32: the row itself when t is float32, else converted into buf.
const float* row_f32(DType t, const void* p, int64_t off, int64_t n, std::vector<float>& buf) {
  if (t == DType::kFloat32) return static_cast<const float*>(p) + off;
  buf.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) buf[size_t(i)] = load(t, p, off + i);
  return buf.data();
}

constexpr int64_t kRowsPerTask = 8;

void for_rows(int64_t M, const ParallelFor& parallel, void (*fn)(void*, size_t), void* arg) {
  if (M <= kRowsPerTask)
    for (size_t i = 0; i < size_t((M + kRowsPerTask - 1) / kRowsPerTask); ++i) fn(arg, i);
  else
    parallel(fn, size_t((M + kRowsPerTask - 1) / kRowsPerTask), arg);
}

struct NormArgs {
  DType t;
  const void *x, *skip, *gamma;
  float eps;
  int64_t M, K;
  void *y, *sum;
};

void norm_rows(void* arg, size_t task) {
  const NormArgs& a = *static_cast<const NormArgs*>(arg);
  // Thread-locals by reference once: in a shared library each use of the name is a TLS lookup
  // (__tls_get_addr), which in the loops below was a tenth of a 128-row prefill node.
  thread_local std::vector<float> s_tls, xb, gb, sb;
  std::vector<float>& sv = s_tls;
  const float* gamma = row_f32(a.t, a.gamma, 0, a.K, gb);
  sv.resize(size_t(a.K));
  float* s = sv.data();
  const int64_t end = std::min(a.M, int64_t(task + 1) * kRowsPerTask);
  for (int64_t m = int64_t(task) * kRowsPerTask; m < end; ++m) {
    const int64_t off = m * a.K;
    const float* x = row_f32(a.t, a.x, off, a.K, xb);
    const float* skip = a.skip ? row_f32(a.t, a.skip, off, a.K, sb) : nullptr;
    if (skip)
      for (int64_t k = 0; k < a.K; ++k) s[k] = x[k] + skip[k];
    else
      std::copy_n(x, a.K, s);
    if (a.t != DType::kFloat32)
      for (int64_t k = 0; k < a.K; ++k) s[k] = round_to(a.t, s[k]);
    if (a.sum) {
      if (a.t == DType::kFloat32)
        std::copy_n(s, a.K, static_cast<float*>(a.sum) + off);
      else
        for (int64_t k = 0; k < a.K; ++k) store(a.t, a.sum, off + k, s[k]);
    }
    // Eight running sums in a fixed order: vectorisable, and the same bytes on every ISA.
    float acc[8] = {};
    int64_t k = 0;
    for (; k + 8 <= a.K; k += 8)
      for (int j = 0; j < 8; ++j) acc[j] += s[k + j] * s[k + j];
    for (; k < a.K; ++k) acc[0] += s[k] * s[k];
    const float ms = (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))) / float(a.K);
    const float inv = 1.f / std::sqrt(ms + a.eps);
    if (a.t == DType::kFloat32) {
      float* y = static_cast<float*>(a.y) + off;
      for (k = 0; k < a.K; ++k) y[k] = s[k] * inv * gamma[k];
    } else {
      for (k = 0; k < a.K; ++k) store(a.t, a.y, off + k, s[k] * inv * gamma[k]);
    }
  }
}

struct SiluArgs {
  DType t;
  const void *g, *u;
  int64_t M, N;
  void* y;
  bool avx2;
};

void silu_rows(void* arg, size_t task) {
  const SiluArgs& a = *static_cast<const SiluArgs*>(arg);
  thread_local std::vector<float> gb, ub, yb_tls;
  std::vector<float>& yb = yb_tls;  // one TLS lookup (see norm_rows)
  const int64_t end = std::min(a.M, int64_t(task + 1) * kRowsPerTask);
  for (int64_t m = int64_t(task) * kRowsPerTask; m < end; ++m) {
    const float* g = row_f32(a.t, a.g, m * a.N, a.N, gb);
    const float* u = row_f32(a.t, a.u, m * a.N, a.N, ub);
    float* y = static_cast<float*>(a.y) + m * a.N;
    if (a.t != DType::kFloat32) {
      yb.resize(size_t(a.N));
      y = yb.data();
    }
#if VQ2TRT_X86
    if (a.avx2)
      avx2::silu_mul(g, u, a.N, y);
    else
#endif
      for (int64_t j = 0; j < a.N; ++j) y[j] = g[j] / (1.f + std::exp(-g[j])) * u[j];
    if (a.t != DType::kFloat32)
      for (int64_t j = 0; j < a.N; ++j) store(a.t, a.y, m * a.N + j, y[j]);
  }
}

}  // namespace

void rms_norm(DType t, const void* x, const void* skip, const void* gamma, float eps, int64_t M, int64_t K, void* y,
              void* sum, const ParallelFor& parallel) {
  if (M <= 0 || K <= 0) return;
  NormArgs a{t, x, skip, gamma, eps, M, K, y, sum};
  for_rows(M, parallel, norm_rows, &a);
}

void silu_mul(DType t, const void* g, const void* u, int64_t M, int64_t N, void* y, Isa isa,
              const ParallelFor& parallel) {
  if (M <= 0 || N <= 0) return;
  SiluArgs a{t, g, u, M, N, y, is_x86(isa)};
  for_rows(M, parallel, silu_rows, &a);
}

}  // namespace vq2trt
