// Optimized kernels (every ISA this CPU has; accuracy levels 0 and 4, i.e. the int8 routes of
// AVX-512 and AVX2; decode and prefill row counts; fp32/fp16/bf16 activations) against the
// scalar reference on random formats.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <initializer_list>
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
// AVX2's main + residual pairs (k, k_r <= 16): the two codebooks share one byte scale per
// component, 62 steps over the sum's half range, so that the byte sums fit vpmaddubsw's 7 bits.
// Random test codebooks have residuals as wide as the main, which makes that step 4x the
// per-part one (a real residual is a fraction of the main's range: decode_accuracy.py).
constexpr double kPairRelTol = 8e-2;
// AVX2's level-4 prefill and AVX-512's level-4 decode take the heads (first 64 permuted columns)
// on 13-bit tables and 14-bit x (Part::wseg, Part::h16tab) where AVX2's decode and AVX-512's
// prefill keep them in float32: a step of 1/8190 of a component's range and 1/16382 of a row's
// largest head activation (up to 2.7e-3 measured with a 300x activation in the head, which also
// sets the RMS).
constexpr double kWideHeadRelTol = 5e-3;
// Dense4 (VQ2TRT_DENSE4=1) on random weights: each weight rounded once more to 16 levels over its
// 32-column block (step and minimum coded in a byte against the row's units), the first 64
// permuted columns to 256 levels per row. Codebooks uniform in [-1, 1] put ~1.9 in a block (a step
// of 0.13, 6 % of the weights' RMS per weight); measured at most 0.22 x RMS over these cases
// (0.21 with fp16 steps and exact head columns, the first version). A minimum coded one unit off
// gave 1.24: this bound catches such errors, the exact case below the layout.
constexpr double kDense4RelTol = 0.35;

int failures = 0;

// Whether AVX2 and AVX-512 put the same parts on the int8 route at level 4 (prepack.cpp): AVX-512
// takes up to 9-bit indices, AVX2 up to 4 bits, with v = 4 up to 8 and with v = 3 up to 9 (in
// decode only where it gathers: avx2_gather_is_fast, off on AMD, where a Zen 4 or 5 capped to
// AVX2 stands in for a Zen 3; and 9-bit ones in prefill only).
bool same_int8_parts(const VQGemmDims& d, int64_t M) {
  // AVX2 decode takes 256-entry parts to the float kernel where gathers are slow, 512-entry ones
  // always (vqgemm.cpp, int8_route).
  const bool wide = M > 8 || avx2_gather_is_fast(), wide9 = M > 8;
  auto same = [wide, wide9](int64_t v, int64_t k) {
    const int b = index_bits(k);
    return b <= 4 || (wide && b <= 8 && (v == 4 || v == 3)) || (wide9 && b == 9 && v == 3) || b > 9;
  };
  return same(d.v, d.k) && (!d.k_r || same(d.v, d.k_r)) && (!d.n_out || same(d.v_o, d.k_o));
}

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

void check_weight(std::mt19937& rng, const VQGemmDims& d, std::initializer_list<int64_t> rows = {1, 3, 8, 12}) {
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
  for (int64_t M : rows) {
    std::vector<float> x(size_t(M * d.K)), ref(size_t(M * d.N)), y(size_t(M * d.N));
    for (auto& v : x) v = g(rng);
    vq_gemm_reference(w.desc, x.data(), M, ref.data());
    for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvxVnni, Isa::kAvx512, Isa::kNeon}) {
      if (native_isa(isa) != isa) continue;  // not on this CPU or not in this build
      for (int level : {0, 4}) {
        PrepackedPtr p = prepack(w.desc, level, isa);
        vq_gemm(*p, DType::kFloat32, x.data(), M, y.data());
        // int8 routes exist on x86 only (AVX2: parts with k <= 16, and v = 4 parts with k <= 256)
        const bool int8 = level == 4 && (isa == Isa::kAvx512 || isa == Isa::kAvxVnni || isa == Isa::kAvx2);
        const std::string what = std::string(name) + " M=" + std::to_string(M) + " isa=" + isa_name(isa) +
                                 " level=" + std::to_string(level);
        compare(what.c_str(), y, ref, int8 ? kInt8RelTol : kFloatRelTol);
      }
    }
    // Level 4 prefill (M > 8) against the decode route row by row: the same quantized x and byte
    // tables for the int8 columns, so those agree to float32 rounding; the heads (first 64
    // permuted columns) are float in prefill and 13-bit tables x 14-bit x' in decode
    // (Part::h16tab), which sets the bound.
    if (M > 8 && native_isa(Isa::kAvx512) == Isa::kAvx512) {
      PrepackedPtr p = prepack(w.desc, 4, Isa::kAvx512);
      vq_gemm(*p, DType::kFloat32, x.data(), M, y.data());
      std::vector<float> yd(y.size());
      for (int64_t m = 0; m < M; ++m) vq_gemm(*p, DType::kFloat32, x.data() + m * d.K, 1, yd.data() + m * d.N);
      const std::string what = std::string(name) + " M=" + std::to_string(M) + " level-4 prefill vs decode";
      compare(what.c_str(), y, yd, kWideHeadRelTol);
    }
    // Level 4 on AVX2 (prefill: int16 products, prefill_int8_avx2.cpp; decode of 256-entry
    // tables: gathers, decode_int8_avx2.cpp) against AVX-512's where both put the same parts on
    // the int8 route: same quantized x and tables, so float32 rounding apart.
    // AVX-VNNI (vpdpbusd on the k <= 16 tables) is held to the same bound.
    for (Isa isa : {Isa::kAvx2, Isa::kAvxVnni}) {
      if (native_isa(Isa::kAvx512) != Isa::kAvx512 || native_isa(isa) != isa || !same_int8_parts(d, M)) continue;
      PrepackedPtr p2 = prepack(w.desc, 4, isa), p5 = prepack(w.desc, 4, Isa::kAvx512);
      std::vector<float> y5(y.size());
      vq_gemm(*p2, DType::kFloat32, x.data(), M, y.data());
      vq_gemm(*p5, DType::kFloat32, x.data(), M, y5.data());
      const std::string what = std::string(name) + " M=" + std::to_string(M) + " level-4 " + isa_name(isa) + " vs avx512";
      // The heads differ at every M: 13-bit tables x 14-bit x' in AVX-512's decode and AVX2's
      // prefill, float32 in AVX2's decode and AVX-512's prefill.
      compare(what.c_str(), y, y5, kWideHeadRelTol);
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

// With VQ2TRT_PAIR=1 the pair route is the one taken on AVX2 at level 4 (its sums differ from
// those of the two parts on their own, the default), and both stay within their tolerance.
void check_pair_route(std::mt19937& rng, const VQGemmDims& d, int64_t M) {
  if (native_isa(Isa::kAvx2) != Isa::kAvx2) return;
  test::RandomWeight w = test::random_weight(rng, d);
  std::vector<float> x(size_t(M * d.K)), ref(size_t(M * d.N)), y(ref.size()), y0(ref.size());
  std::normal_distribution<float> g(0.f, 1.f);
  for (auto& v : x) v = g(rng);
  vq_gemm_reference(w.desc, x.data(), M, ref.data());
  PrepackedPtr p0 = prepack(w.desc, 4, Isa::kAvx2);
  setenv("VQ2TRT_PAIR", "1", 1);
  PrepackedPtr p = prepack(w.desc, 4, Isa::kAvx2);
  unsetenv("VQ2TRT_PAIR");
  vq_gemm(*p, DType::kFloat32, x.data(), M, y.data());
  vq_gemm(*p0, DType::kFloat32, x.data(), M, y0.data());
  char name[96];
  std::snprintf(name, sizeof(name), "pair route N=%ld K=%ld v=%ld M=%ld", long(d.N), long(d.K), long(d.v), long(M));
  compare((std::string(name) + " paired").c_str(), y, ref, kPairRelTol);
  compare((std::string(name) + " unpaired").c_str(), y0, ref, kInt8RelTol);
  if (y == y0) {
    ++failures;
    std::printf("FAIL %s: same sums with and without pairing (pair kernel not taken)\n", name);
  }
}

// AVX2 level-4 prefill against its decode route row by row, gathers on (VQ2TRT_GATHER=1: every
// int8 part on the int8 route, as in prefill): the same int8 tails, and the decode's float heads
// against the prefill's 13/14-bit ones. The sums must differ (the prefill heads are taken).
void check_avx2_prefill_heads(std::mt19937& rng, const VQGemmDims& d, int64_t M) {
  if (native_isa(Isa::kAvx2) != Isa::kAvx2) return;
  test::RandomWeight w = test::random_weight(rng, d);
  std::vector<float> x(size_t(M * d.K)), ref(size_t(M * d.N)), y(ref.size()), yd(ref.size());
  std::normal_distribution<float> g(0.f, 1.f);
  for (auto& v : x) v = g(rng);
  // A massive activation per row (300x) on a head column, where prepack's order puts them.
  for (int64_t m = 0; m < M; ++m) x[size_t(m * d.K + w.desc.perm[m % std::min<int64_t>(d.K, 64)])] *= 300.f;
  vq_gemm_reference(w.desc, x.data(), M, ref.data());
  const char* prev = std::getenv("VQ2TRT_GATHER");
  const std::string saved = prev ? prev : "";
  setenv("VQ2TRT_GATHER", "1", 1);
  PrepackedPtr p = prepack(w.desc, 4, Isa::kAvx2);
  if (prev) setenv("VQ2TRT_GATHER", saved.c_str(), 1); else unsetenv("VQ2TRT_GATHER");
  vq_gemm(*p, DType::kFloat32, x.data(), M, y.data());
  for (int64_t m = 0; m < M; ++m) vq_gemm(*p, DType::kFloat32, x.data() + m * d.K, 1, yd.data() + m * d.N);
  char name[96];
  std::snprintf(name, sizeof(name), "avx2 prefill heads N=%ld K=%ld v=%ld k=%ld M=%ld", long(d.N), long(d.K), long(d.v),
                long(d.k), long(M));
  compare((std::string(name) + " vs decode").c_str(), y, yd, kWideHeadRelTol);
  compare((std::string(name) + " vs reference").c_str(), y, ref, kInt8RelTol);
  if (y == yd) {
    ++failures;
    std::printf("FAIL %s: prefill and decode sums equal (13-bit heads not taken)\n", name);
  }
}

// Dense4 (internal.h) at decode row counts on every x86 ISA here (its blocks start after the 64
// exact head columns):
// - exact: codebooks of two values per component (any block then holds at most two values, u is 0
//   or 15) and integer x' with 127 in every block (int8 with scale 1), and the head columns' x' in
//   {-127, 0, 127} (16 bits on the scale 127 / 32767: exact), so the result is the reference's up
//   to float32 rounding: any misplaced nibble, block, row or scale shows.
// - random: within kDense4Rel of the reference, and not the sums of the level-4 lookup route.
void check_dense4(std::mt19937& rng, VQGemmDims d, bool exact) {
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    if (native_isa(isa) != isa) continue;
    if (exact) d.normalized = false, d.k_r = 0;
    test::RandomWeight w = test::random_weight(rng, d);
    std::bernoulli_distribution coin(0.5);
    if (exact) {
      for (auto* cb : {&w.codebook, &w.outlier_codebook})
        for (auto& h : *cb) h = float_to_half(coin(rng) ? -0.5f : 0.4375f);  // 15 fp16-exact steps of 1/16
    }
    for (int64_t M : {1, 2, 5, 8}) {
      std::vector<float> x(size_t(M * d.K)), ref(size_t(M * d.N)), y(ref.size()), y0(ref.size());
      std::normal_distribution<float> g(0.f, 1.f);
      std::uniform_int_distribution<int> u(-127, 127);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t p = 0; p < d.K; ++p)
          x[size_t(m * d.K + w.perm[size_t(p)])] =
              exact ? float(p < 64 ? 127 * (int(rng() % 3) - 1) : (p - 64) % 32 == 0 ? (coin(rng) ? 127 : -127) : u(rng))
                    : g(rng);
      vq_gemm_reference(w.desc, x.data(), M, ref.data());
      PrepackedPtr p0 = prepack(w.desc, 4, isa);
      setenv("VQ2TRT_DENSE4", "1", 1);
      PrepackedPtr p = prepack(w.desc, 4, isa);
      unsetenv("VQ2TRT_DENSE4");
      vq_gemm(*p, DType::kFloat32, x.data(), M, y.data());
      vq_gemm(*p0, DType::kFloat32, x.data(), M, y0.data());
      char name[160];
      std::snprintf(name, sizeof(name), "dense4 %s N=%ld K=%ld v=%ld k=%ld n_out=%ld M=%ld isa=%s",
                    exact ? "exact" : "random", long(d.N), long(d.K), long(d.v), long(d.k), long(d.n_out), long(M),
                    isa_name(isa));
      compare(name, y, ref, exact ? kFloatRelTol : kDense4RelTol);
      if (!exact && d.K > 64 && y == y0) {  // the first 64 permuted columns are the lookup route's
        ++failures;
        std::printf("FAIL %s: same sums as the lookup route (Dense4 not taken)\n", name);
      }
    }
  }
}

// Several weights on one X (vq_gemm_multi): each weight's slice of Y (or its own output) is the
// bytes vq_gemm gives it alone, float32 and float16 X, decode and prefill row counts, levels 0 and 4, Dense4 on and
// off, tasks run out of order (a pool hands them out in any order).
void run_reversed(void*, ParallelFor::TaskFn fn, size_t n, void* arg) {
  for (size_t i = n; i-- > 0;) fn(arg, i);
}

void check_multi(std::mt19937& rng) {
  const int64_t K = 150;
  const VQGemmDims ds[] = {{64, K, 0, 4, 256, 1, 0, 0, 0, true, false},
                           {21, K, 3, 3, 512, 2, 16, 2, 16, false, true},
                           {40, K, 0, 2, 16, 1, 0, 0, 0, true, true}};
  std::vector<test::RandomWeight> ws;
  for (const auto& d : ds) ws.push_back(test::random_weight(rng, d));
  ParallelFor pool;
  pool.run = run_reversed;
  for (int level : {0, 4})
    for (bool dense4 : {false, true}) {
      if (dense4) setenv("VQ2TRT_DENSE4", "1", 1);
      std::vector<PrepackedPtr> ps;
      std::vector<const Prepacked*> raw;
      for (auto& w : ws) ps.push_back(prepack(w.desc, level)), raw.push_back(ps.back().get());
      unsetenv("VQ2TRT_DENSE4");
      for (int64_t M : {1, 3, 12}) {
        int64_t total = 0;
        for (const auto& d : ds) total += d.N;
        std::vector<float> x(size_t(M * K));
        std::normal_distribution<float> g(0.f, 1.f);
        for (auto& v : x) v = g(rng);
        std::vector<uint16_t> xh(x.size());
        for (size_t i = 0; i < x.size(); ++i) xh[i] = float_to_half(x[i]);
        std::vector<float> y(size_t(M * total));
        std::vector<uint16_t> yh(y.size());
        vq_gemm_multi(raw.data(), raw.size(), DType::kFloat32, x.data(), M, y.data(), pool);
        vq_gemm_multi(raw.data(), raw.size(), DType::kFloat16, xh.data(), M, yh.data(), pool);
        // one output tensor per weight
        std::vector<std::vector<float>> sep;
        std::vector<void*> ptrs;
        for (const auto& d : ds) sep.emplace_back(size_t(M * d.N));
        for (auto& v : sep) ptrs.push_back(v.data());
        vq_gemm_multi(raw.data(), raw.size(), DType::kFloat32, x.data(), M, ptrs.data(), pool);
        int64_t off = 0;
        for (size_t w = 0; w < ws.size(); ++w) {
          const int64_t N = ds[w].N;
          std::vector<float> one(size_t(M * N));
          std::vector<uint16_t> oneh(one.size());
          vq_gemm(*ps[w], DType::kFloat32, x.data(), M, one.data());
          vq_gemm(*ps[w], DType::kFloat16, xh.data(), M, oneh.data());
          bool same = true;
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              same = same && std::memcmp(&y[size_t(m * total + off + n)], &one[size_t(m * N + n)], 4) == 0;
              same = same && yh[size_t(m * total + off + n)] == oneh[size_t(m * N + n)];
              same = same && std::memcmp(&sep[w][size_t(m * N + n)], &one[size_t(m * N + n)], 4) == 0;
            }
          if (!same) {
            ++failures;
            std::printf("FAIL multi: weight %zu level %d dense4 %d M=%ld differs from vq_gemm alone\n", w, level,
                        int(dense4), long(M));
          }
          off += N;
        }
      }
    }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  std::printf("detected ISA: %s\n", isa_name(detect_isa()));
  // Which kernel families the checks below run here (each check skips the ISAs native_isa refuses).
  std::printf("kernel ISAs tested:");
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvxVnni, Isa::kAvx512, Isa::kNeon})
    if (native_isa(isa) == isa) std::printf(" %s", isa_name(isa));
  std::printf("; skipped (not on this CPU, not in this build, or above VQ2TRT_ISA):");
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvxVnni, Isa::kAvx512, Isa::kNeon})
    if (native_isa(isa) != isa) std::printf(" %s", isa_name(isa));
  std::printf("\n");
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
      {48, 300, 3, 3, 512, 1, 0, 2, 256, true, false},   // 9-bit (512-entry tables): v3-k512-o1
      {20, 130, 0, 2, 300, 3, 512, 0, 0, false, true},    // 9-bit groups at unaligned starts, 9-bit residual
      {16, 70, 0, 2, 16, 7, 16, 0, 0, false, false},     // 4-bit with odd group starts
      {45, 130, 5, 1, 16, 1, 0, 1, 16, false, true},    // level-4 float head: v = 1, odd head count
      {30, 100, 0, 4, 16, 2, 0, 0, 0, true, false},     // level-4 float head: 4-bit, v = 4
  };
  for (const auto& d : fixed) check_weight(rng, d);
  // v = 4 with 8-bit indices (AVX2: decode_avx2.cpp) at every decode row count: N not a multiple
  // of the 8 or 6 vector rows of a pass (down to a single vector row), tasks of several passes
  // (N = 1000: 16 rows each), column counts that are not a multiple of 8, groups starting at odd
  // bytes, 8-bit residual and outliers on the same kernel, outliers on other kernels (v = 2; v = 3
  // with k = 16, on the int8 route at level 4 with no int8 tail), a 4-bit residual whose int8 tail
  // follows a float head.
  const VQGemmDims v4k256[] = {
      {3, 40, 0, 4, 256, 1, 0, 0, 0, false, false},
      {6, 41, 0, 4, 256, 1, 0, 0, 0, false, true},
      {37, 90, 0, 4, 256, 1, 0, 0, 0, false, false},
      {1000, 160, 0, 4, 256, 1, 0, 0, 0, true, false},
      {101, 200, 6, 4, 256, 3, 256, 4, 256, true, true},
      {70, 150, 5, 4, 256, 2, 16, 2, 256, false, true},
      {90, 300, 8, 4, 256, 1, 0, 3, 16, true, false},
      // AVX2 decode (decode_int8_avx2.cpp, 4 vector rows a pass): 7-bit indices (unpacked), an
      // int8 tail of 2 blocks ending in a partial 8-column group, N cutting a pass.
      {30, 333, 0, 4, 100, 1, 0, 0, 0, false, true},
      {26, 389, 0, 4, 256, 1, 0, 0, 0, true, false},
      // v = 3 on the same kernel: 9-bit indices (uint16), 4-bit outliers, N not a multiple of 3.
      {45, 300, 5, 3, 512, 2, 0, 2, 16, true, false},
      {31, 260, 0, 3, 300, 1, 0, 0, 0, false, true},
  };
  for (const auto& d : v4k256) check_weight(rng, d, {1, 2, 3, 4, 5, 6, 7, 8, 13});
  // Prefill (M > 8: the float path, except level 4 on AVX-512): parts longer than the 256-column
  // chunk of kernels_float.inc (one, two and three chunks, the last partial; a group boundary
  // inside a chunk), row counts around the 4 / 6 activation rows of a block, 16-row tiles cut by N.
  const VQGemmDims prefill[] = {
      {21, 600, 0, 4, 256, 1, 0, 0, 0, true, true},
      {40, 520, 7, 3, 512, 2, 0, 2, 256, true, false},
      {9, 257, 0, 2, 16, 1, 4, 0, 0, false, true},
      {18, 780, 0, 8, 64, 3, 0, 0, 0, false, false},
  };
  for (const auto& d : prefill) check_weight(rng, d, {9, 12, 13, 19, 24});
  // Level-4 prefill on AVX-512 (prefill_int8_avx512.cpp: passes of 32 or 16 output rows by 12, 8,
  // 4, 1 activation rows; 256-column scale blocks): row counts that leave every remainder, N not a
  // multiple of 16 or 32 (N = 1000: 64-row tasks, the last one 32 + 8 rows; N = 75: 16-row tasks),
  // int8 tails of several blocks with a partial last one after the 64 float head columns, groups
  // and residuals (one segment shared), outliers on their own int8 part (4-bit split order), 6- and
  // 4-bit tables (vpermb), v = 3 and 1 (passes cutting vector rows).
  const VQGemmDims prefill4[] = {
      {75, 700, 0, 4, 256, 1, 0, 0, 0, false, false},
      {1000, 330, 0, 4, 256, 1, 0, 0, 0, true, true},
      {70, 900, 9, 4, 256, 3, 256, 2, 16, true, true},
      {48, 1100, 0, 2, 16, 2, 16, 0, 0, false, true},
      {41, 600, 5, 3, 64, 2, 0, 4, 256, true, false},
      {37, 400, 0, 1, 256, 1, 0, 0, 0, false, true},
      {40, 700, 4, 3, 512, 1, 0, 2, 256, true, true},
      {50, 333, 0, 4, 400, 2, 0, 0, 0, false, false},
      // AVX2's int16 prefill (prefill_int8_avx2.cpp: passes of 4 vector rows by 4 activation
      // rows, 256-column tiles): a 4-bit residual (split order) on several blocks, 7-bit indices
      // not byte aligned (unpacked), N cutting a pass.
      {60, 800, 0, 4, 256, 2, 16, 0, 0, true, false},
      {44, 520, 0, 4, 100, 1, 0, 0, 0, false, true},
      // and v = 3 (4th lane of each centroid padding): 9-bit indices, N cutting a vector row.
      {47, 700, 0, 3, 512, 1, 0, 0, 0, true, true},
      {40, 600, 3, 3, 300, 2, 16, 2, 16, false, false},
  };
  for (const auto& d : prefill4) check_weight(rng, d, {9, 11, 16, 21, 29, 64});
  // AVX2 prefill heads (Part::wseg): v = 4 and 3, a head cut by outlier columns (two head
  // ranges), one shorter than its 64 columns (K < 64 + a tail), residual heads sharing the range.
  const VQGemmDims heads[] = {
      {96, 576, 0, 4, 256, 1, 0, 0, 0, true, false},
      {40, 700, 4, 3, 512, 1, 0, 2, 256, true, true},
      {64, 300, 0, 4, 256, 2, 16, 0, 0, false, false},
      {30, 90, 0, 4, 100, 1, 0, 0, 0, false, true},
  };
  for (const auto& d : heads)
    for (int64_t M : {9, 16, 37}) check_avx2_prefill_heads(rng, d, M);
  // AVX2 main + residual pairs with k, k_r <= 16 (pair_int8_avx2.cpp, one pass on one byte scale):
  // SmolLM2's shape, the -o1 family members (v = 4 and 3 with 8-bit outliers, N not a multiple of
  // v, groups), codebooks smaller than 16, v = 6 (a 4- and a 2-component pass), decode and prefill
  // row counts (two activation rows a pass, one left over).
  const VQGemmDims pairs[] = {
      {64, 576, 0, 4, 16, 1, 16, 0, 0, true, false},
      {37, 300, 5, 4, 16, 1, 16, 2, 256, true, true},
      {46, 333, 4, 3, 16, 2, 16, 2, 256, false, true},
      {20, 130, 0, 4, 12, 1, 9, 0, 0, false, false},
      {9, 100, 0, 6, 16, 1, 16, 0, 0, false, false},
  };
  for (const auto& d : pairs) {
    check_weight(rng, d, {1, 2, 3, 8, 9, 13, 64});
    for (int64_t M : {1, 3, 13}) check_pair_route(rng, d, M);
  }
  // Dense4: SmolLM2's default shape, N not a multiple of the 4-row groups nor of v, K not a
  // multiple of the 32-column blocks (down to one partial block), outliers, residual, groups,
  // normalisation and bias, 16-bit indices, several tasks (N = 1000).
  const VQGemmDims dense4[] = {
      {192, 576, 0, 4, 256, 1, 0, 0, 0, true, false},
      {37, 100, 0, 3, 512, 1, 0, 0, 0, false, true},
      {1000, 70, 5, 4, 256, 2, 0, 2, 16, true, true},
      {22, 13, 0, 2, 16, 1, 0, 0, 0, false, false},
      {50, 130, 5, 6, 4096, 2, 16, 4, 300, true, true},
  };
  for (const auto& d : dense4) {
    check_dense4(rng, d, true);
    check_dense4(rng, d, false);
  }
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
  check_multi(rng);
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
