// The CUDA kernels' element access (plugins/core/src/cuda/device_format.cuh: index unpacking,
// dequantization of one weight, clamping of out-of-range data) compiled as host code and checked
// against the scalar reference: the part of the GPU code CI can run without a GPU.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "../core/src/cuda/device_format.cuh"
#include "random_weight.h"
#include "vq2trt/cpu_kernels.h"

using namespace vq2trt;

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("FAIL %s\n", what.c_str());
  }
}

// Every index of random rows for each width 1..16, at every bit offset, against the packer.
void test_read_index(std::mt19937& rng) {
  for (int bits = 1; bits <= kMaxIndexBits; ++bits) {
    const int64_t rows = 3, count = 97;  // 97·bits is rarely a multiple of 32: straddles and tails
    const int64_t k = int64_t(1) << bits;
    std::vector<uint32_t> idx(size_t(rows * count));
    std::uniform_int_distribution<uint32_t> u(0, uint32_t(k - 1));
    for (auto& i : idx) i = u(rng);
    const std::vector<int32_t> packed = test::pack(idx, rows, count, bits);
    const int64_t words = packed_words(count, bits);
    int bad = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < count; ++c) {
        const uint32_t* row = reinterpret_cast<const uint32_t*>(packed.data()) + r * words;
        bad += cuda::read_index(row, c, bits, int(k)) != idx[size_t(r * count + c)];
      }
    expect(bad == 0, "read_index " + std::to_string(bits) + " bits: " + std::to_string(bad) + " wrong");
  }
}

// Y = X · Wᵀ with W from cuda::weight_value must equal the reference (same float rounding of
// q·scale + bias, so only the double summation is left: near-exact).
void test_weight_value(std::mt19937& rng, const VQGemmDims& d, const char* name) {
  expect(validate_dims(d).empty(), std::string(name) + ": " + validate_dims(d));
  test::RandomWeight w = test::random_weight(rng, d);
  const cuda::DeviceWeight dw = cuda::device_weight(w.desc);
  const int64_t M = 3;
  std::vector<float> x(size_t(M * d.K));
  std::normal_distribution<float> g;
  for (auto& v : x) v = g(rng);
  std::vector<float> ref(size_t(M * d.N)), got(size_t(M * d.N));
  vq_gemm_reference(w.desc, x.data(), M, ref.data());
  std::vector<float> W(size_t(d.N * d.K));
  for (int64_t n = 0; n < d.N; ++n)
    for (int64_t p = 0; p < d.K; ++p) W[size_t(n * d.K + w.perm[size_t(p)])] = cuda::weight_value(dw, n, p);
  double err = 0, rms = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < d.N; ++n) {
      double acc = d.has_bias ? w.bias[size_t(n)] : 0.0;
      for (int64_t c = 0; c < d.K; ++c) acc += double(x[size_t(m * d.K + c)]) * W[size_t(n * d.K + c)];
      const double r = ref[size_t(m * d.N + n)];
      err = std::max(err, std::fabs(acc - r));
      rms += r * r;
    }
  rms = std::sqrt(rms / double(M * d.N));
  expect(err <= 1e-6 * std::max(rms, 1.0), std::string("weight_value ") + name + ": max error " + std::to_string(err));
}

// Indices >= k (possible in b bits when k is not a power of two) and perm entries outside
// [0, K) are clamped: every value read is a codebook entry, no read leaves the arrays.
void test_clamping(std::mt19937& rng) {
  VQGemmDims d;
  d.N = 12, d.K = 40, d.v = 4, d.k = 5, d.G = 1, d.normalized = true;
  test::RandomWeight w = test::random_weight(rng, d);
  for (auto& word : w.indices) word = -1;  // every 3-bit index = 7 >= k = 5
  w.perm[0] = -3;
  w.perm[1] = 1 << 30;
  const cuda::DeviceWeight dw = cuda::device_weight(w.desc);
  bool ok = true;
  for (int64_t n = 0; n < d.N; ++n) {
    const float q = cuda::regular_value(dw, n, 0);
    ok = ok && q == half_to_float(w.codebook[size_t((d.k - 1) * d.v + n % d.v)]);
    ok = ok && std::isfinite(cuda::weight_value(dw, n, 0)) && std::isfinite(cuda::weight_value(dw, n, 1));
  }
  expect(ok, "clamping of out-of-range indices and perm entries");
  expect(cuda::clamp_channel(-3, d.K) == 0 && cuda::clamp_channel(1 << 30, d.K) == d.K - 1, "clamp_channel");
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  test_read_index(rng);
  auto dims = [](int64_t N, int64_t K, int64_t v, int64_t k) {
    VQGemmDims d;
    d.N = N, d.K = K, d.v = v, d.k = k, d.G = 1;
    return d;
  };
  test_weight_value(rng, dims(64, 96, 4, 256), "v4-k256");
  test_weight_value(rng, dims(30, 70, 3, 1000), "v3-k1000 (N % v != 0, 10-bit straddling)");
  test_weight_value(rng, dims(16, 33, 1, 65536), "v1-k65536");
  VQGemmDims r = dims(40, 128, 8, 16);
  r.k_r = 256;
  r.G = 3;
  test_weight_value(rng, r, "residual + 3 groups");
  VQGemmDims o = dims(36, 100, 4, 64);
  o.n_out = 7, o.v_o = 3, o.k_o = 9;
  o.normalized = o.has_bias = true;
  test_weight_value(rng, o, "outliers + normalized + bias");
  VQGemmDims all = dims(48, 150, 2, 300);
  all.k_r = 17, all.G = 4, all.n_out = 10, all.v_o = 6, all.k_o = 33, all.normalized = all.has_bias = true;
  test_weight_value(rng, all, "every feature");
  test_clamping(rng);
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
