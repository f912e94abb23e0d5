// validate_dims / validate_data reject bad descriptions, with a message naming the problem;
// and a kernel fed unvalidated data stays inside its buffers (padded tables, clamped perm).
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "random_weight.h"
#include "vq2trt/cpu_kernels.h"

using namespace vq2trt;

namespace {

int failures = 0;

void expect_error(const char* what, const std::string& err, const char* needle) {
  if (err.empty() || err.find(needle) == std::string::npos) {
    ++failures;
    std::printf("FAIL %s: expected an error mentioning '%s', got '%s'\n", what, needle, err.c_str());
  }
}

}  // namespace

int main() {
  const VQGemmDims good{48, 96, 4, 4, 256, 2, 16, 2, 64, true, true};
  if (!validate_dims(good).empty()) {
    ++failures;
    std::printf("FAIL good dims rejected: %s\n", validate_dims(good).c_str());
  }
  auto with = [&](auto change) { VQGemmDims d = good; change(d); return validate_dims(d); };
  expect_error("N=0", with([](VQGemmDims& d) { d.N = 0; }), "out_features");
  expect_error("n_out=K", with([](VQGemmDims& d) { d.n_out = d.K; }), "num_outlier_cols");
  expect_error("k=1", with([](VQGemmDims& d) { d.k = 1; }), "num_centroids");
  expect_error("k=65537", with([](VQGemmDims& d) { d.k = 65537; }), "num_centroids");
  expect_error("G>C", with([](VQGemmDims& d) { d.G = d.K; }), "num_groups");
  expect_error("k_r=1", with([](VQGemmDims& d) { d.k_r = 1; }), "num_res_centroids");
  expect_error("v_o=0", with([](VQGemmDims& d) { d.v_o = 0; }), "outlier_vector_len");
  expect_error("k_o without outliers", with([](VQGemmDims& d) { d.n_out = 0; }), "outlier");
  expect_error("v=0", with([](VQGemmDims& d) { d.v = 0; }), "vector_len");

  std::mt19937 rng(7);
  test::RandomWeight w = test::random_weight(rng, good);
  if (!validate_data(w.desc).empty()) {
    ++failures;
    std::printf("FAIL good data rejected: %s\n", validate_data(w.desc).c_str());
  }
  {  // k = 200 stored in 8 bits: 250 fits the bits but not the codebook
    VQGemmDims d = good;
    d.k = 200;
    test::RandomWeight u = test::random_weight(rng, d);
    u.indices[0] = (u.indices[0] & ~0xff) | 250;
    expect_error("index >= k", validate_data(u.desc), "out of range");
    // Memory safety without validation: the padded 256-entry table absorbs the bad index.
    PrepackedPtr p = prepack(u.desc, 0);
    std::vector<float> x(size_t(d.K), 1.f), y(size_t(d.N));
    vq_gemm(*p, DType::kFloat32, x.data(), 1, y.data());
  }
  {  // 12-bit residual indices: 96-4 = 92 per row, 1104 bits -> 35 words, 16 padding bits
    test::RandomWeight u = test::random_weight(rng, good);
    const int64_t words = packed_words(good.K - good.n_out, index_bits(good.k_r));
    u.res_indices[size_t(words - 1)] |= int32_t(1u << 31);
    expect_error("padding bits", validate_data(u.desc), "padding");
  }
  {
    test::RandomWeight u = test::random_weight(rng, good);
    u.perm[1] = u.perm[0];
    expect_error("repeated perm", validate_data(u.desc), "perm");
    u.perm[1] = -5;
    expect_error("negative perm", validate_data(u.desc), "perm");
    PrepackedPtr p = prepack(u.desc, 4);  // clamped, so no read outside X
    std::vector<float> x(size_t(good.K), 1.f), y(size_t(good.N));
    vq_gemm(*p, DType::kFloat32, x.data(), 1, y.data());
  }
  {
    test::RandomWeight u = test::random_weight(rng, good);
    u.codebook[3] = 0x7e00;  // NaN
    expect_error("NaN codebook", validate_data(u.desc), "codebook");
    u = test::random_weight(rng, good);
    u.col_scale[5] = 0x7c00;  // Inf
    expect_error("Inf col_scale", validate_data(u.desc), "col_scale");
  }
  // Shapes the dims demand, in node order (the compaction rule of docs/format.md §9).
  const std::vector<TensorSpec> specs = weight_input_specs(good);
  const char* order[] = {"indices", "codebook", "perm", "res_indices", "res_codebook", "outlier_indices",
                         "outlier_codebook", "col_scale", "col_bias", "bias"};
  if (specs.size() != 10) {
    ++failures;
    std::printf("FAIL expected 10 weight inputs, got %zu\n", specs.size());
  }
  for (size_t i = 0; i < specs.size() && i < 10; ++i)
    if (std::string(specs[i].name) != order[i]) {
      ++failures;
      std::printf("FAIL input %zu is %s, expected %s\n", i, specs[i].name, order[i]);
    }
  if (specs[0].shape != std::vector<int64_t>{12, 23}) {  // R = 48/4, words(92, 8) = 23
    ++failures;
    std::printf("FAIL indices shape\n");
  }
  VQGemmDims plain = good;
  plain.k_r = plain.n_out = plain.v_o = plain.k_o = 0;
  plain.normalized = false;
  const std::vector<TensorSpec> ps = weight_input_specs(plain);
  if (ps.size() != 4 || std::string(ps[3].name) != "bias") {
    ++failures;
    std::printf("FAIL compaction: absent groups must be left out\n");
  }
  // fp16 round trip of a few awkward values.
  for (float f : {0.f, -0.f, 1.f, 65504.f, 6.1035156e-05f, 5.9604645e-08f, -3.1415927f}) {
    {
      const float back = half_to_float(float_to_half(f));
      if (std::fabs(back - f) > std::fabs(f) * 1e-3f) {
        ++failures;
        std::printf("FAIL fp16 round trip of %g gave %g\n", double(f), double(back));
      }
    }
  }
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
