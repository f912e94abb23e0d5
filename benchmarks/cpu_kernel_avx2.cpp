// AVX2 decode of v4-k256: the per-part float kernel (avx2::part_float, the path before
// part_v4_b8) against avx2::part_v4_b8, interleaved in one process, one thread.
// Each sample runs a chain of `layers` random weights N x K (enough to stream from memory by
// default), tasks split as vq_gemm splits them; prints medians and the old / new ratio.
//
// Build against a build of the core library (BUILD: its cmake build directory), run with AVX2:
//   g++ -O2 -std=c++17 -Iplugins/core/include -Iplugins/core/src benchmarks/cpu_kernel_avx2.cpp BUILD/plugins/core/libvq2trt_core.a -o /tmp/cpu_kernel_avx2
//   VQ2TRT_ISA=avx2 /tmp/cpu_kernel_avx2 [N K [layers [runs]]]     (e.g. 4096 4096 16 31)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "internal.h"
#include "vq2trt/cpu_kernels.h"

using namespace vq2trt;

namespace {

struct Layer {
  std::vector<int32_t> perm, indices;
  std::vector<uint16_t> codebook;
  PrepackedPtr p;
};

Layer make_layer(std::mt19937& rng, int64_t N, int64_t K) {
  Layer l;
  VQGemmDesc d{};
  d.dims = VQGemmDims{N, K, 0, 4, 256, 1, 0, 0, 0, false, false};
  l.perm.resize(size_t(K));
  for (int64_t i = 0; i < K; ++i) l.perm[size_t(i)] = int32_t(i);
  std::shuffle(l.perm.begin(), l.perm.end(), rng);
  l.indices.resize(size_t(ceil_div(N, 4) * packed_words(K, 8)));
  for (auto& w : l.indices) w = int32_t(rng());
  std::normal_distribution<float> g(0.f, 0.02f);
  l.codebook.resize(256 * 4);
  for (auto& h : l.codebook) h = float_to_half(g(rng));
  d.perm = l.perm.data();
  d.indices = l.indices.data();
  d.codebook = l.codebook.data();
  l.p = prepack(d, 0, Isa::kAvx2);
  return l;
}

// run_rows without the dispatch: every part through `use_new ? decode : part_float`.
void layer_parts(const Prepacked& p, const float* xp, int64_t M, float* y, bool use_new, float* scratch) {
  const int64_t N = p.dims.N, unit = p.row_unit, units = ceil_div(N, unit);
  const int64_t block = std::max<int64_t>(1, ceil_div(units, 16)) * unit;
  for (int64_t n0 = 0; n0 < N; n0 += block) {
    const int64_t n1 = std::min(N, n0 + block);
    for (const Part& pt : p.parts) {
      if (use_new) avx2::part_v4_b8(pt, xp, p.dims.K, M, y, N, n0, n1);
      else avx2::part_float(pt, xp, p.dims.K, M, y, N, n0, n1, scratch);
    }
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t N = argc > 2 ? std::atoll(argv[1]) : 4096, K = argc > 2 ? std::atoll(argv[2]) : 4096;
  // Default: at least 128 MB of index bytes (beyond any L3 here), at most 64 layers.
  const int64_t layers = argc > 3 ? std::atoll(argv[3]) : std::clamp<int64_t>((128 << 20) / (N * K / 4), 1, 64);
  const int runs = argc > 4 ? std::atoi(argv[4]) : 31;
  if (detect_isa() == Isa::kScalar) {
    std::printf("needs AVX2\n");
    return 1;
  }
  std::mt19937 rng(7);
  std::vector<Layer> chain;
  for (int64_t i = 0; i < layers; ++i) chain.push_back(make_layer(rng, N, K));
  std::normal_distribution<float> g(0.f, 1.f);
  std::printf("N=%ld K=%ld layers=%ld runs=%d (ISA avx2, one thread): ms per chain, median\n", long(N), long(K),
              long(layers), runs);
  std::printf("%3s %10s %10s %10s %8s %12s\n", "M", "old", "new", "vq_gemm", "old/new", "max rel diff");
  // VQ2TRT_BENCH_M=a,b,...: other activation row counts (default 1, 2, 3, 4, 8).
  std::vector<int64_t> ms = {1, 2, 3, 4, 8};
  if (const char* e = std::getenv("VQ2TRT_BENCH_M")) {
    ms.clear();
    for (const char* t = e; *t;) {
      ms.push_back(std::atoll(t));
      while (*t && *t != ',') ++t;
      if (*t) ++t;
    }
  }
  for (int64_t M : ms) {
    std::vector<float> xp(size_t(M * K)), y0(size_t(M * N)), y1(size_t(M * N)), y2(size_t(M * N));
    for (auto& v : xp) v = g(rng);
    const Prepacked& p0 = *chain[0].p;
    std::vector<float> buf(size_t(scratch_floats(p0, M) + 16));
    float* scratch = buf.data() + (16 - (reinterpret_cast<uintptr_t>(buf.data()) / 4) % 16) % 16;
    std::vector<double> t_old, t_new, t_gemm;
    for (int r = 0; r < runs + 2; ++r) {
      for (int which = 0; which < 3; ++which) {
        auto t0 = std::chrono::steady_clock::now();
        for (const Layer& l : chain) {
          if (which == 2) {
            vq_gemm(*l.p, DType::kFloat32, xp.data(), M, y2.data());
          } else {
            float* y = which ? y1.data() : y0.data();
            std::fill(y, y + M * N, 0.f);
            layer_parts(*l.p, xp.data(), M, y, which == 1, scratch);
          }
        }
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (r >= 2) (which == 0 ? t_old : which == 1 ? t_new : t_gemm).push_back(ms);
      }
    }
    // The last layer's outputs (x' here is x unpermuted, so only old vs new are comparable).
    double rms = 0, err = 0;
    for (size_t i = 0; i < y0.size(); ++i) {
      rms += double(y0[i]) * y0[i];
      err = std::max(err, std::fabs(double(y1[i]) - y0[i]));
    }
    rms = std::sqrt(rms / double(y0.size()));
    const double a = median(t_old), b = median(t_new);
    std::printf("%3ld %10.3f %10.3f %10.3f %8.2f %12.2e\n", long(M), a, b, median(t_gemm), a / b, err / rms);
  }
  return 0;
}
