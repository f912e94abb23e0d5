// Prefill of v4-k256 on the CPU: accuracy_level 0 (the float path, which level 4 also took for
// M > 8 before prefill_int8_avx512.cpp) against level 4 (the int8 prefill kernel where the ISA
// has one), interleaved in one process, one thread, on random weights; prints medians and the
// old / new ratio per shape.
//
// Build against a build of the core library (BUILD: its cmake build directory):
//   g++ -O2 -std=c++17 -Iplugins/core/include benchmarks/cpu_prefill_int8.cpp BUILD/plugins/core/libvq2trt_core.a -o /tmp/cpu_prefill_int8
//   /tmp/cpu_prefill_int8 [runs [N K M ...]]    (VQ2TRT_ISA=avx2 caps the ISA; default shapes below)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "vq2trt/cpu_kernels.h"

using namespace vq2trt;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double seconds(const Prepacked& p, const std::vector<float>& x, int64_t M, std::vector<float>& y) {
  const auto t0 = std::chrono::steady_clock::now();
  vq_gemm(p, DType::kFloat32, x.data(), M, y.data());
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const int runs = argc > 1 ? std::atoi(argv[1]) : 11;
  std::vector<int64_t> shapes = {4096, 4096, 16, 4096, 4096, 64, 4096, 4096, 128, 576, 576, 128,
                                 1536, 576, 128, 576, 1536, 128, 192, 576, 128};
  if (argc > 4) {
    shapes.clear();
    for (int i = 2; i + 2 < argc; i += 3)
      for (int j = 0; j < 3; ++j) shapes.push_back(std::atoll(argv[i + j]));
  }
  std::printf("isa %s, %d runs, one thread\n", isa_name(detect_isa()), runs);
  std::mt19937 rng(7);
  for (size_t s = 0; s + 2 < shapes.size(); s += 3) {
    const int64_t N = shapes[s], K = shapes[s + 1], M = shapes[s + 2];
    VQGemmDesc d{};
    d.dims = VQGemmDims{N, K, 0, 4, 256, 1, 0, 0, 0, false, false};
    std::vector<int32_t> perm(static_cast<size_t>(K)), indices(static_cast<size_t>(ceil_div(N, 4) * packed_words(K, 8)));
    for (int64_t i = 0; i < K; ++i) perm[size_t(i)] = int32_t(i);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (auto& w : indices) w = int32_t(rng());
    std::normal_distribution<float> g(0.f, 0.02f), gx(0.f, 1.f);
    std::vector<uint16_t> codebook(256 * 4);
    for (auto& h : codebook) h = float_to_half(g(rng));
    d.perm = perm.data();
    d.indices = indices.data();
    d.codebook = codebook.data();
    PrepackedPtr p0 = prepack(d, 0), p4 = prepack(d, 4);
    std::vector<float> x(size_t(M * K)), y0(size_t(M * N)), y4(y0.size());
    for (auto& v : x) v = gx(rng);
    seconds(*p0, x, M, y0);  // warm-up (scratch allocation, caches)
    seconds(*p4, x, M, y4);
    std::vector<double> t0, t4;
    for (int r = 0; r < runs; ++r) {
      t0.push_back(seconds(*p0, x, M, y0));
      t4.push_back(seconds(*p4, x, M, y4));
    }
    double rms = 0, err = 0;
    for (size_t i = 0; i < y0.size(); ++i) {
      rms += double(y0[i]) * y0[i];
      err = std::max(err, std::fabs(double(y4[i]) - y0[i]));
    }
    rms = std::sqrt(rms / double(y0.size()));
    const double a = median(t0) * 1e3, b = median(t4) * 1e3;
    std::printf("N=%5ld K=%5ld M=%4ld  level 0 %8.3f ms  level 4 %8.3f ms  ratio %5.2f  (level 4: %6.1f GMAC/s, "
                "max |diff| %.3g x RMS)\n",
                long(N), long(K), long(M), a, b, a / b, double(M * N * K) / (b * 1e-3) / 1e9, err / rms);
  }
  return 0;
}
