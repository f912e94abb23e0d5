// On a GPU: the CUDA kernels (vq2trt::cuda::vq_gemm) and, when built, the TensorRT plugin's
// enqueue, on device buffers, against the scalar reference, for every format feature, fp32 /
// fp16 / bf16 activations and M = 1, 4, 16, 128, 2048 (both the decode and the prefill paths),
// plus corrupted weights (must run, clamped, and be caught by validate_device_data). Fresh random
// inputs each run unless --seed is given. Exits 77 (ctest: skipped) when there is no CUDA device.
// `--quick` runs a small subset (for compute-sanitizer).
#include <cuda_runtime_api.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../random_weight.h"
#include "vq2trt/cpu_kernels.h"
#include "vq2trt/cuda_kernels.h"
#if defined(VQ2TRT_GPU_TEST_PLUGIN)
#include "plugin.h"
#endif

using namespace vq2trt;

namespace {

// Max |error| as a fraction of the reference output's RMS (as plugins/tests/test_kernels.cpp).
// fp32: summation order only. fp16: output rounded to 11 bits (and, on the prefill path, W to
// fp16 before the tensor-core GEMM). bf16: 8 bits for the output and, on the prefill path, W.
constexpr double kTolF32 = 1e-4, kTolF16 = 5e-3, kTolBf16 = 3e-2;

int failures = 0;

#define CUDA_OK(call)                                                                              \
  do {                                                                                             \
    const cudaError_t e_ = (call);                                                                 \
    if (e_ != cudaSuccess) {                                                                       \
      std::printf("FATAL %s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));     \
      std::exit(1);                                                                                \
    }                                                                                              \
  } while (0)

struct DeviceBuffer {
  void* p = nullptr;
  explicit DeviceBuffer(size_t bytes) { CUDA_OK(cudaMalloc(&p, bytes ? bytes : 1)); }
  DeviceBuffer(const void* host, size_t bytes) : DeviceBuffer(bytes) {
    CUDA_OK(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice));
  }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

template <typename T>
std::unique_ptr<DeviceBuffer> upload(const std::vector<T>& v) {
  return v.empty() ? nullptr : std::make_unique<DeviceBuffer>(v.data(), v.size() * sizeof(T));
}

// A weight on the device; `inputs` are its tensors in node order (weight_input_specs).
struct DeviceWeightCopy {
  std::vector<std::unique_ptr<DeviceBuffer>> buffers;
  VQGemmDesc desc;
  std::vector<const void*> inputs;
  explicit DeviceWeightCopy(const test::RandomWeight& w) {
    desc.dims = w.desc.dims;
    auto put = [&](const auto& v) -> const void* {
      buffers.push_back(upload(v));
      return buffers.back() ? buffers.back()->p : nullptr;
    };
    desc.perm = static_cast<const int32_t*>(put(w.perm));
    desc.indices = static_cast<const int32_t*>(put(w.indices));
    desc.codebook = static_cast<const uint16_t*>(put(w.codebook));
    desc.res_indices = static_cast<const int32_t*>(put(w.res_indices));
    desc.res_codebook = static_cast<const uint16_t*>(put(w.res_codebook));
    desc.outlier_indices = static_cast<const int32_t*>(put(w.outlier_indices));
    desc.outlier_codebook = static_cast<const uint16_t*>(put(w.outlier_codebook));
    desc.col_scale = static_cast<const uint16_t*>(put(w.col_scale));
    desc.col_bias = static_cast<const uint16_t*>(put(w.col_bias));
    desc.bias = static_cast<const float*>(put(w.bias));
    // Node order, as an adapter receives them; mapping back must give the same desc.
    const std::string n_order[] = {"indices", "codebook", "perm", "res_indices", "res_codebook", "outlier_indices",
                                   "outlier_codebook", "col_scale", "col_bias", "bias"};
    const void* by_name[] = {desc.indices, desc.codebook, desc.perm, desc.res_indices, desc.res_codebook,
                             desc.outlier_indices, desc.outlier_codebook, desc.col_scale, desc.col_bias, desc.bias};
    for (const TensorSpec& s : weight_input_specs(desc.dims))
      for (size_t i = 0; i < 10; ++i)
        if (n_order[i] == s.name) inputs.push_back(by_name[i]);
  }
};

// Runs launch() on the stream and returns its GPU time in ms (the stream is synchronized).
template <typename Launch>
float timed(cudaStream_t stream, Launch&& launch) {
  cudaEvent_t a, b;
  CUDA_OK(cudaEventCreate(&a));
  CUDA_OK(cudaEventCreate(&b));
  CUDA_OK(cudaEventRecord(a, stream));
  launch();
  CUDA_OK(cudaEventRecord(b, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  float ms = 0;
  CUDA_OK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms;
}

struct Case {
  const char* name;
  VQGemmDims dims;
};

std::vector<Case> cases(bool quick) {
  auto d = [](int64_t N, int64_t K, int64_t v, int64_t k) {
    VQGemmDims x;
    x.N = N, x.K = K, x.v = v, x.k = k, x.G = 1;
    return x;
  };
  std::vector<Case> out;
  out.push_back({"v4-k256", d(392, 520, 4, 256)});
  if (quick) return out;
  VQGemmDims res = d(264, 520, 8, 4096);
  res.k_r = 256, res.G = 2;  // 2·(4096+256)·8 halves: too big to stage, read through L2
  out.push_back({"v8-k4096 + residual k256, 2 groups", res});
  out.push_back({"v2-k16", d(391, 333, 2, 16)});
  VQGemmDims o = d(392, 520, 4, 256);
  o.n_out = 24, o.v_o = 4, o.k_o = 64;
  out.push_back({"outliers 24 cols", o});
  VQGemmDims nb = d(392, 520, 4, 256);
  nb.normalized = nb.has_bias = true;
  out.push_back({"normalized + bias", nb});
  VQGemmDims all = d(390, 530, 6, 300);
  all.k_r = 17, all.G = 3, all.n_out = 10, all.v_o = 6, all.k_o = 33, all.normalized = all.has_bias = true;
  out.push_back({"every feature (v6-k300)", all});
  out.push_back({"v12-k64 (prefill path at any M)", d(396, 256, 12, 64)});
  out.push_back({"v1-k65536", d(130, 300, 1, 65536)});
  return out;
}

uint16_t to_bits(float f, DType t) { return t == DType::kFloat16 ? float_to_half(f) : float_to_bf16(f); }
float from_bits(uint16_t h, DType t) { return t == DType::kFloat16 ? half_to_float(h) : bf16_to_float(h); }

// X in the activation type (device bytes) and the float values the reference sees.
std::vector<unsigned char> encode(const std::vector<float>& x, DType t, std::vector<float>* seen) {
  seen->resize(x.size());
  if (t == DType::kFloat32) {
    *seen = x;
    std::vector<unsigned char> b(x.size() * 4);
    std::memcpy(b.data(), x.data(), b.size());
    return b;
  }
  std::vector<unsigned char> b(x.size() * 2);
  for (size_t i = 0; i < x.size(); ++i) {
    const uint16_t h = to_bits(x[i], t);
    (*seen)[i] = from_bits(h, t);
    std::memcpy(b.data() + 2 * i, &h, 2);
  }
  return b;
}

std::vector<float> decode(const std::vector<unsigned char>& b, DType t) {
  std::vector<float> out(b.size() / (t == DType::kFloat32 ? 4 : 2));
  for (size_t i = 0; i < out.size(); ++i) {
    if (t == DType::kFloat32) {
      std::memcpy(&out[i], b.data() + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, b.data() + 2 * i, 2);
      out[i] = from_bits(h, t);
    }
  }
  return out;
}

double rel_error(const std::vector<float>& got, const float* ref, size_t n) {
  double rms = 0, err = 0;
  for (size_t i = 0; i < n; ++i) {
    rms += double(ref[i]) * ref[i];
    const double e = std::fabs(double(got[i]) - ref[i]);
    err = std::isfinite(e) ? std::max(err, e) : INFINITY;
  }
  return err / std::max(std::sqrt(rms / double(n)), 1e-12);
}

void report(const char* who, const Case& c, DType t, int64_t M, double rel, double tol, double ms) {
  const bool ok = rel <= tol;
  failures += !ok;
  const bool decode_path = M <= cuda::kDecodeMaxRows && c.dims.v <= cuda::kDecodeMaxVectorLen;
  std::printf("%-6s %-36s %-8s M=%-5lld %-7s err %.2e (limit %.0e) %7.3f ms  %s\n", who, c.name, dtype_name(t),
              static_cast<long long>(M), decode_path ? "decode" : "prefill", rel, tol, ms, ok ? "ok" : "FAIL");
}

#if defined(VQ2TRT_GPU_TEST_PLUGIN)
// The plugin as TensorRT would drive it at run time: onShapeChange, getWorkspaceSize, enqueue.
double run_plugin(const Case& c, const DeviceWeightCopy& w, DType t, int64_t M, bool rank3, const void* x, void* y,
                  cudaStream_t stream, std::string* error) {
  trt::VQGemmConfig config;
  config.dims = c.dims;
  trt::VQGemmPlugin plugin(config);
  const std::vector<TensorSpec> specs = weight_input_specs(c.dims);
  std::vector<nvinfer1::PluginTensorDesc> in(specs.size() + 1);
  std::vector<nvinfer1::DynamicPluginTensorDesc> din(in.size());
  nvinfer1::PluginTensorDesc out{};
  const nvinfer1::DataType xt = trt::trt_type(t);
  in[0].type = xt;
  in[0].format = nvinfer1::TensorFormat::kLINEAR;
  in[0].dims = rank3 && M % 2 == 0 ? nvinfer1::Dims{3, {2, M / 2, c.dims.K}} : nvinfer1::Dims{2, {M, c.dims.K}};
  for (size_t i = 0; i < specs.size(); ++i) {
    in[i + 1].type = trt::trt_type(specs[i].dtype);
    in[i + 1].format = nvinfer1::TensorFormat::kLINEAR;
    in[i + 1].dims.nbDims = int32_t(specs[i].shape.size());
    for (size_t j = 0; j < specs[i].shape.size(); ++j) in[i + 1].dims.d[j] = specs[i].shape[j];
  }
  out = in[0];
  out.dims.d[out.dims.nbDims - 1] = c.dims.N;
  for (size_t i = 0; i < in.size(); ++i) din[i] = {in[i], in[i].dims, in[i].dims, in[i].dims};
  nvinfer1::DynamicPluginTensorDesc dout{out, out.dims, out.dims, out.dims};
  if (plugin.onShapeChange(in.data(), int32_t(in.size()), &out, 1) != 0) {
    *error = "onShapeChange rejected the shapes";
    return -1;
  }
  const size_t bytes = plugin.getWorkspaceSize(din.data(), int32_t(din.size()), &dout, 1);
  DeviceBuffer ws(bytes);
  std::vector<const void*> inputs{x};
  inputs.insert(inputs.end(), w.inputs.begin(), w.inputs.end());
  void* outputs[] = {y};
  int32_t rc = 0;
  const float ms = timed(stream, [&] { rc = plugin.enqueue(in.data(), &out, inputs.data(), outputs, ws.p, stream); });
  if (rc != 0) *error = "enqueue returned " + std::to_string(rc);
  return ms;
}
#endif

void check_case(const Case& c, std::mt19937& rng, const std::vector<int64_t>& rows, cudaStream_t stream) {
  test::RandomWeight w = test::random_weight(rng, c.dims);
  const DeviceWeightCopy dw(w);
  const std::string valid = cuda::validate_device_data(dw.desc, stream);
  if (!valid.empty()) {
    ++failures;
    std::printf("FAIL %s: validate_device_data rejected a valid weight: %s\n", c.name, valid.c_str());
  }
  const int64_t M_max = rows.back(), K = c.dims.K, N = c.dims.N;
  std::vector<float> x(size_t(M_max * K));
  std::student_t_distribution<float> heavy(3.f);  // some large activations, as real models have
  for (auto& v : x) v = heavy(rng);
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    std::vector<float> seen, ref(size_t(M_max * N));
    const std::vector<unsigned char> xb = encode(x, t, &seen);
    vq_gemm_reference(w.desc, seen.data(), M_max, ref.data());  // rows are independent: one call for all M
    const double tol = t == DType::kFloat32 ? kTolF32 : t == DType::kFloat16 ? kTolF16 : kTolBf16;
    const size_t es = t == DType::kFloat32 ? 4 : 2;
    const DeviceBuffer dx(xb.data(), xb.size());
    for (int64_t M : rows) {
      DeviceBuffer dy(size_t(M * N) * es);
      const size_t bytes = cuda::workspace_size(c.dims, M, t);
      DeviceBuffer ws(bytes);
      CUDA_OK(cudaMemsetAsync(dy.p, 0xff, size_t(M * N) * es, stream));  // NaNs: unwritten outputs show
      cudaError_t e = cudaSuccess;
      const float ms = timed(stream, [&] { e = cuda::vq_gemm(dw.desc, t, dx.p, M, dy.p, ws.p, bytes, stream); });
      std::vector<unsigned char> yb(size_t(M * N) * es);
      CUDA_OK(cudaMemcpy(yb.data(), dy.p, yb.size(), cudaMemcpyDeviceToHost));
      if (e != cudaSuccess) {
        ++failures;
        std::printf("FAIL core %s M=%lld: %s\n", c.name, static_cast<long long>(M), cudaGetErrorString(e));
        continue;
      }
      report("core", c, t, M, rel_error(decode(yb, t), ref.data(), yb.size() / es), tol, ms);
#if defined(VQ2TRT_GPU_TEST_PLUGIN)
      CUDA_OK(cudaMemsetAsync(dy.p, 0xff, size_t(M * N) * es, stream));
      std::string error;
      const double pms = run_plugin(c, dw, t, M, /*rank3=*/M >= 4, dx.p, dy.p, stream, &error);
      CUDA_OK(cudaMemcpy(yb.data(), dy.p, yb.size(), cudaMemcpyDeviceToHost));
      if (!error.empty()) {
        ++failures;
        std::printf("FAIL plugin %s M=%lld: %s\n", c.name, static_cast<long long>(M), error.c_str());
        continue;
      }
      report("plugin", c, t, M, rel_error(decode(yb, t), ref.data(), yb.size() / es), tol, pms);
#endif
    }
  }
}

// Out-of-range indices (k = 5 in 3 bits) and perm entries: the kernels must run without an
// out-of-bounds access (compute-sanitizer checks that) and validate_device_data must say why.
void check_corrupt(std::mt19937& rng, cudaStream_t stream) {
  VQGemmDims d;
  d.N = 64, d.K = 96, d.v = 4, d.k = 5, d.G = 1, d.normalized = true;
  test::RandomWeight w = test::random_weight(rng, d);
  for (auto& word : w.indices) word = -1;
  w.perm[3] = 1 << 28;
  const DeviceWeightCopy dw(w);
  const std::string why = cuda::validate_device_data(dw.desc, stream);
  if (why.empty()) {
    ++failures;
    std::printf("FAIL corrupt weight: validate_device_data accepted it\n");
  }
  for (int64_t M : {int64_t(1), int64_t(100)}) {
    DeviceBuffer dx(size_t(M * d.K) * 4), dy(size_t(M * d.N) * 4);
    CUDA_OK(cudaMemset(dx.p, 0, size_t(M * d.K) * 4));
    const size_t bytes = cuda::workspace_size(d, M, DType::kFloat32);
    DeviceBuffer ws(bytes);
    const cudaError_t e = cuda::vq_gemm(dw.desc, DType::kFloat32, dx.p, M, dy.p, ws.p, bytes, stream);
    const cudaError_t s = cudaStreamSynchronize(stream);
    if (e != cudaSuccess || s != cudaSuccess) {
      ++failures;
      std::printf("FAIL corrupt weight M=%lld: %s\n", static_cast<long long>(M), cudaGetErrorString(e ? e : s));
    }
  }
  std::printf("corrupt weight: kernels ran clamped; validate_device_data: %s\n", why.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  unsigned seed = unsigned(std::chrono::steady_clock::now().time_since_epoch().count());
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--seed") && i + 1 < argc) seed = unsigned(std::stoul(argv[++i]));
  }
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    std::printf("SKIP: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    return 77;
  }
  cudaDeviceProp prop{};
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s (sm_%d%d), seed %u\n", prop.name, prop.major, prop.minor, seed);
  std::mt19937 rng(seed);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreate(&stream));
  const std::vector<int64_t> rows = quick ? std::vector<int64_t>{1, 16} : std::vector<int64_t>{1, 4, 16, 128, 2048};
  for (const Case& c : cases(quick)) check_case(c, rng, rows, stream);
  check_corrupt(rng, stream);
  cudaStreamDestroy(stream);
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
