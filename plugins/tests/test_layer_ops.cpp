// rms_norm and silu_mul (vq2trt/layer_ops.h) against float64 references: every ISA this CPU has
// (silu_mul's AVX2 exp and the C library's), fp32 / fp16 / bf16 rows, decode and prefill row
// counts, serial and reversed task order (the same bytes), a skip and none.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "vq2trt/layer_ops.h"

using namespace vq2trt;

namespace {

int failures = 0;

void expect(bool ok, const char* what, double got, double bound) {
  if (!ok) {
    std::printf("FAIL %s: %.3g (bound %.3g)\n", what, got, bound);
    ++failures;
  }
}

void run_reversed(void*, ParallelFor::TaskFn fn, size_t n, void* arg) {
  for (size_t i = n; i-- > 0;) fn(arg, i);
}

std::vector<uint16_t> to16(DType t, const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = t == DType::kFloat16 ? float_to_half(v[i]) : float_to_bf16(v[i]);
  return out;
}

float from16(DType t, uint16_t h) { return t == DType::kFloat16 ? half_to_float(h) : bf16_to_float(h); }

// Values in t, read back as float (what the op sees).
std::vector<float> rounded(DType t, const std::vector<float>& v) {
  if (t == DType::kFloat32) return v;
  std::vector<float> out;
  for (uint16_t h : to16(t, v)) out.push_back(from16(t, h));
  return out;
}

// Output as float: from fp32 storage or 16-bit.
template <typename Fn>
std::vector<float> run_typed(DType t, size_t n_out, Fn fn) {
  if (t == DType::kFloat32) {
    std::vector<float> y(n_out);
    fn(y.data());
    return y;
  }
  std::vector<uint16_t> y(n_out);
  fn(y.data());
  std::vector<float> out;
  for (uint16_t h : y) out.push_back(from16(t, h));
  return out;
}

const void* data_of(DType t, const std::vector<float>& v, std::vector<uint16_t>& keep) {
  if (t == DType::kFloat32) return v.data();
  keep = to16(t, v);
  return keep.data();
}

void check_norm(std::mt19937& rng, DType t, int64_t M, int64_t K, bool skip) {
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(M * K)), s(static_cast<size_t>(M * K)), g(static_cast<size_t>(K));
  for (float& v : x) v = 3 * nd(rng);
  for (float& v : s) v = nd(rng);
  for (float& v : g) v = 1 + 0.3f * nd(rng);
  const float eps = 1e-5f;
  std::vector<uint16_t> kx, ks, kg;
  const void* px = data_of(t, x, kx);
  const void* ps = skip ? data_of(t, s, ks) : nullptr;
  const void* pg = data_of(t, g, kg);
  const std::vector<float> xr = rounded(t, x), sr = rounded(t, s), gr = rounded(t, g);
  std::vector<float> sum_out;
  std::vector<float> y = run_typed(t, size_t(M * K), [&](void* out) {
    if (t == DType::kFloat32) {
      sum_out.resize(size_t(M * K));
      rms_norm(t, px, ps, pg, eps, M, K, out, skip ? sum_out.data() : nullptr);
    } else {
      std::vector<uint16_t> s16(size_t(M * K));
      rms_norm(t, px, ps, pg, eps, M, K, out, skip ? s16.data() : nullptr);
      for (uint16_t h : s16) sum_out.push_back(from16(t, h));
    }
  });
  ParallelFor rev;
  rev.run = run_reversed;
  std::vector<float> y2 = run_typed(t, size_t(M * K), [&](void* out) {
    rms_norm(t, px, ps, pg, eps, M, K, out, nullptr, rev);
  });
  expect(y == y2, "rms_norm: reversed tasks give other bytes", 0, 0);
  const double tol = t == DType::kFloat32 ? 2e-6 : t == DType::kFloat16 ? 2e-3 : 1.6e-2;
  double worst = 0;
  for (int64_t m = 0; m < M; ++m) {
    std::vector<double> r(static_cast<size_t>(K));
    double ms = 0;
    for (int64_t k = 0; k < K; ++k) {
      const size_t i = size_t(m * K + k);
      r[size_t(k)] = skip ? double(rounded(t, {xr[i] + sr[i]})[0]) : double(xr[i]);
      if (skip && sum_out[i] != float(r[size_t(k)])) {
        expect(false, "rms_norm: the sum output is not x + skip rounded", sum_out[i], r[size_t(k)]);
        return;
      }
      ms += r[size_t(k)] * r[size_t(k)];
    }
    const double inv = 1 / std::sqrt(ms / double(K) + eps);
    for (int64_t k = 0; k < K; ++k) {
      const double want = r[size_t(k)] * inv * gr[size_t(k)];
      worst = std::max(worst, std::abs(y[size_t(m * K + k)] - want) / (std::abs(want) + 1e-3));
    }
  }
  expect(worst < tol, "rms_norm: relative error", worst, tol);
}

void check_silu(std::mt19937& rng, DType t, Isa isa, int64_t M, int64_t N) {
  std::uniform_real_distribution<float> ud(-100.f, 100.f);
  std::normal_distribution<float> nd;
  std::vector<float> gu(size_t(M * 2 * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < 2 * N; ++j) gu[size_t(m * 2 * N + j)] = j < N ? (j % 3 ? 4 * nd(rng) : ud(rng)) : nd(rng);
  const std::vector<float> r = rounded(t, gu);
  // gu holds rows [gate | up]; the op reads them as two [M, N] tensors.
  std::vector<float> g32, u32;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < N; ++j) g32.push_back(gu[size_t(m * 2 * N + j)]), u32.push_back(gu[size_t(m * 2 * N + N + j)]);
  std::vector<uint16_t> kg, ku;
  const void* pg = data_of(t, g32, kg);
  const void* pu = data_of(t, u32, ku);
  std::vector<float> y = run_typed(t, size_t(M * N), [&](void* out) { silu_mul(t, pg, pu, M, N, out, isa); });
  ParallelFor rev;
  rev.run = run_reversed;
  std::vector<float> y2 = run_typed(t, size_t(M * N), [&](void* out) { silu_mul(t, pg, pu, M, N, out, isa, rev); });
  expect(y == y2, "silu_mul: reversed tasks give other bytes", 0, 0);
  // float32: ~2 ulp of exp, then a division and a product (the tail past 88 saturates to 0 · u).
  const double tol = t == DType::kFloat32 ? 1e-6 : t == DType::kFloat16 ? 1e-3 : 8e-3;
  double worst = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < N; ++j) {
      const double g = r[size_t(m * 2 * N + j)], u = r[size_t(m * 2 * N + N + j)];
      const double want = g / (1 + std::exp(-g)) * u;
      // Where the exact value is ~0 (g < -88: exp(-g) overflows to inf, silu to -0; fp16 below
      // its normal range) the error is absolute.
      const double floor = t == DType::kFloat16 ? 6.1e-5 : 1e-30;
      const double e = std::abs(y[size_t(m * N + j)] - want) / std::max(std::abs(want), floor);
      worst = std::max(worst, e);
    }
  char what[96];
  std::snprintf(what, sizeof what, "silu_mul (%s, %s, M %lld, N %lld): relative error", isa_name(isa), dtype_name(t),
                static_cast<long long>(M), static_cast<long long>(N));
  expect(worst < tol, what, worst, tol);
}

}  // namespace

int main() {
  std::mt19937 rng(11);
  const DType types[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
  for (DType t : types)
    for (int64_t M : {1, 3, 40})
      for (int64_t K : {64, 90, 576}) {
        check_norm(rng, t, M, K, true);
        check_norm(rng, t, M, K, false);
      }
  for (Isa isa : {Isa::kScalar, detect_isa()})
    for (DType t : types)
      for (int64_t M : {1, 17})
        for (int64_t N : {7, 64, 1536}) check_silu(rng, t, isa, M, N);
  std::printf("%s: %d failures (ISA %s)\n", failures ? "FAIL" : "ok", failures, isa_name(detect_isa()));
  return failures ? 1 : 0;
}
