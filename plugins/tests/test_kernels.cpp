// Optimized kernels (every ISA this CPU has; accuracy levels 0 and 4, i.e. the int8 routes of
// AVX-512 and AVX2; decode and prefill row counts; fp32/fp16/bf16 activations) against the
// scalar reference on random formats.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "random_weight.h"
#include "vq2trt/cpu_kernels.h"

using namespace vq2trt;

namespace {

// Errors are measured relative to the RMS of the reference output.
// Float32 path: only summation order differs from the double reference.
constexpr double kFloatRelTol = 2e-5;
// fp16 / bf16 activations: the output is rounded to 11 / 8 significant bits.
constexpr double kHalfRelTol = 2e-3, kBf16RelTol = 1.6e-2;
// int8 route: activations per 256-column block and codebooks per component rounded to 8 bits
// (relative step 1/254 each, errors of random sign; the first 64 permuted columns exact): about
// 1% of the RMS per output, and this is the maximum over all outputs, so a few sigma of that.
constexpr double kInt8RelTol = 5e-2;

int failures = 0;

void compare(const char* what, const std::vector<float>& got, const std::vector<float>& ref, double tol) {
  double rms = 0, err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    rms += double(ref[i]) * ref[i];
    err = std::max(err, std::fabs(double(got[i]) - ref[i]));
  }
  rms = std::sqrt(rms / double(ref.size()));
  const double rel = err / std::max(rms, 1e-12);
  if (!(rel <= tol)) {
    ++failures;
    std::printf("FAIL %s: max error %.3g x RMS (limit %.3g)\n", what, rel, tol);
  }
}

void check_weight(std::mt19937& rng, const VQGemmDims& d) {
  test::RandomWeight w = test::random_weight(rng, d);
  const std::string err = validate_data(w.desc);
  if (!err.empty()) {
    ++failures;
    std::printf("FAIL random weight invalid: %s\n", err.c_str());
    return;
  }
  char name[256];
  std::snprintf(name, sizeof(name), "N=%ld K=%ld n_out=%ld v=%ld k=%ld G=%ld k_r=%ld v_o=%ld k_o=%ld norm=%d bias=%d",
                long(d.N), long(d.K), long(d.n_out), long(d.v), long(d.k), long(d.G), long(d.k_r), long(d.v_o),
                long(d.k_o), int(d.normalized), int(d.has_bias));
  std::normal_distribution<float> g(0.f, 1.f);
  for (int64_t M : {1, 3, 8, 12}) {
    std::vector<float> x(size_t(M * d.K)), ref(size_t(M * d.N)), y(size_t(M * d.N));
    for (auto& v : x) v = g(rng);
    vq_gemm_reference(w.desc, x.data(), M, ref.data());
    for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
      if (isa > detect_isa()) continue;
      for (int level : {0, 4}) {
        PrepackedPtr p = prepack(w.desc, level, isa);
        vq_gemm(*p, DType::kFloat32, x.data(), M, y.data());
        const bool int8 = level == 4 && isa != Isa::kScalar && M <= 8;  // AVX2: only parts with k <= 16
        const std::string what = std::string(name) + " M=" + std::to_string(M) + " isa=" + isa_name(isa) +
                                 " level=" + std::to_string(level);
        compare(what.c_str(), y, ref, int8 ? kInt8RelTol : kFloatRelTol);
      }
    }
    // Half and bfloat16 activations: inputs rounded first, so the reference sees the same X.
    for (DType t : {DType::kFloat16, DType::kBFloat16}) {
      std::vector<uint16_t> xh(x.size()), yh(y.size());
      std::vector<float> xr(x.size()), yr(y.size());
      for (size_t i = 0; i < x.size(); ++i) {
        xh[i] = t == DType::kFloat16 ? float_to_half(x[i]) : float_to_bf16(x[i]);
        xr[i] = t == DType::kFloat16 ? half_to_float(xh[i]) : bf16_to_float(xh[i]);
      }
      vq_gemm_reference(w.desc, xr.data(), M, ref.data());
      PrepackedPtr p = prepack(w.desc, 0);
      vq_gemm(*p, t, xh.data(), M, yh.data());
      for (size_t i = 0; i < y.size(); ++i) yr[i] = t == DType::kFloat16 ? half_to_float(yh[i]) : bf16_to_float(yh[i]);
      const std::string what = std::string(name) + " M=" + std::to_string(M) + " " + dtype_name(t);
      compare(what.c_str(), yr, ref, t == DType::kFloat16 ? kHalfRelTol : kBf16RelTol);
    }
  }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  std::printf("detected ISA: %s\n", isa_name(detect_isa()));
  // Hand-picked corners: every index width class of the kernels, straddling indices, groups
  // with unaligned starts, vector lengths that do not divide N, outliers with their own v_o.
  const VQGemmDims fixed[] = {
      {64, 256, 0, 4, 256, 1, 0, 0, 0, false, false},    // the default v4-k256
      {64, 256, 0, 2, 16, 1, 0, 0, 0, false, false},     // v2-k16
      {37, 100, 0, 3, 2, 3, 0, 0, 0, false, true},       // 1-bit indices, 3 groups
      {50, 130, 5, 6, 4096, 2, 16, 4, 300, true, true},  // 12-bit straddling + residual + outliers
      {40, 90, 0, 8, 65536, 1, 0, 0, 0, true, false},    // 16-bit indices
      {33, 77, 3, 1, 32, 5, 64, 2, 8, false, true},      // 5-bit, odd group starts
      {24, 200, 10, 4, 128, 3, 256, 3, 64, true, false}, // 7-bit (256-entry tables), residual 8-bit
      {16, 70, 0, 2, 16, 7, 16, 0, 0, false, false},     // 4-bit with odd group starts
      {45, 130, 5, 1, 16, 1, 0, 1, 16, false, true},    // level-4 float head: v = 1, odd head count
      {30, 100, 0, 4, 16, 2, 0, 0, 0, true, false},     // level-4 float head: 4-bit, v = 4
  };
  for (const auto& d : fixed) check_weight(rng, d);
  // Random formats.
  for (int t = 0; t < 24; ++t) {
    VQGemmDims d;
    const int64_t vs[] = {1, 2, 3, 4, 6, 8}, ks[] = {2, 3, 16, 50, 256, 300, 4096};
    d.v = vs[rng() % 6];
    d.k = ks[rng() % 7];
    d.N = 1 + int64_t(rng() % 80);
    d.K = 2 + int64_t(rng() % 200);
    d.n_out = rng() % 3 == 0 ? int64_t(rng() % std::min<int64_t>(d.K - 1, 12)) : 0;
    if (d.n_out) {
      d.v_o = vs[rng() % 6];
      d.k_o = ks[rng() % 7];
    }
    d.G = 1 + int64_t(rng() % std::min<int64_t>(d.K - d.n_out, 4));
    d.k_r = rng() % 3 == 0 ? ks[rng() % 5] : 0;
    d.normalized = rng() % 2;
    d.has_bias = rng() % 2;
    check_weight(rng, d);
  }
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
