// vq2trt.VQGemmMulti (see vqgemm_multi_op.h): the attributes give each weight's dims, the inputs
// after X are split into the weights' groups by those dims, each group is checked as a VQGemm
// node's inputs would be, and the weights (initializers only) are prepacked at session creation.
#include "vqgemm_multi_op.h"

#include <algorithm>
#include <string>

#include "vq2trt/layer_ops.h"
#include "vq2trt/op_schema.h"

namespace vq2trt::ort {
namespace {

constexpr size_t kNumInt = sizeof(kIntAttributes) / sizeof(kIntAttributes[0]);

void run_on_pool(void* ctx, ParallelFor::TaskFn fn, size_t n_tasks, void* arg) {
  Ort::KernelContext(static_cast<OrtKernelContext*>(ctx)).ParallelFor(fn, n_tasks, 0, arg);
}

std::string weight_name(size_t w) { return "weight " + std::to_string(w) + ": "; }

// Where weight w's inputs start among the node's inputs (X is input 0, then the layer ops'
// inputs), for each w and the end.
std::vector<size_t> input_offsets(const std::vector<VQGemmDims>& dims, const LayerOps& lo) {
  std::vector<size_t> first{1 + lo.extra_inputs()};
  for (const VQGemmDims& d : dims) first.push_back(first.back() + weight_input_specs(d).size());
  return first;
}

// Each weight's inputs against its dims, as check_inputs does for one VQGemm node (X included).
void check_multi_inputs(const std::vector<VQGemmDims>& dims, const LayerOps& lo, const std::vector<InputInfo>& in) {
  const std::vector<size_t> first = input_offsets(dims, lo);
  if (in.size() != first.back())
    fail(std::string(kMultiOpName) + ": the attributes call for " + std::to_string(first.back()) + " inputs (X, " +
         (lo.prenorm == 2 ? "skip, gamma, " : lo.prenorm == 1 ? "gamma, " : "") + std::to_string(dims.size()) +
         " weights), the node has " + std::to_string(in.size()));
  check_layer_inputs(lo, in, dims[0].K);
  for (size_t w = 0; w < dims.size(); ++w) {
    std::vector<InputInfo> group{in[0]};
    group.insert(group.end(), in.begin() + long(first[w]), in.begin() + long(first[w + 1]));
    try {
      check_inputs(dims[w], group);
    } catch (const Ort::Exception& e) {
      std::string what = e.what();
      if (what.rfind("VQGemm: ", 0) == 0) what = what.substr(8);
      fail(std::string(kMultiOpName) + " " + weight_name(w) + "(node inputs " + std::to_string(first[w]) + ".." +
               std::to_string(first[w + 1] - 1) + "; numbered below within the weight, X = 0) " + what,
           e.GetOrtErrorCode());
    }
  }
}

// The weights' dims from the node's attributes: VQGemm's INT attributes as INTS, one entry per
// weight (accuracy_level stays one INT for all). get_ints(name, &values) -> found.
template <typename GetInts, typename GetInt>
std::vector<VQGemmDims> read_multi_attributes(GetInts get_ints, GetInt get_int, int* accuracy_level) {
  std::vector<int64_t> lists[kNumInt];
  size_t count = 0;
  for (size_t i = 0; i + 1 < kNumInt; ++i) {  // the last is accuracy_level, one INT
    if (!get_ints(kIntAttributes[i], &lists[i]))
      fail(std::string(kMultiOpName) + ": missing INTS attribute '" + kIntAttributes[i] + "'");
    if (i == 0) count = lists[0].size();
    if (lists[i].empty() || lists[i].size() != count)
      fail(std::string(kMultiOpName) + ": attribute '" + kIntAttributes[i] + "' has " +
           std::to_string(lists[i].size()) + " entries; every per-weight attribute needs one per weight (" +
           std::to_string(count) + ", as out_features)");
  }
  int64_t level = 0;
  if (!get_int("accuracy_level", &level)) fail(std::string(kMultiOpName) + ": missing INT attribute 'accuracy_level'");
  if (level < 0 || level > 4) fail("accuracy_level must lie in [0, 4], got " + std::to_string(level));
  *accuracy_level = int(level);
  std::vector<VQGemmDims> dims;
  for (size_t w = 0; w < count; ++w) {
    int64_t a[kNumInt];
    for (size_t i = 0; i + 1 < kNumInt; ++i) a[i] = lists[i][w];
    if ((a[9] != 0 && a[9] != 1) || (a[10] != 0 && a[10] != 1))
      fail(std::string(kMultiOpName) + " " + weight_name(w) + "normalized and has_bias must be 0 or 1");
    const VQGemmDims d{a[0], a[1], a[6], a[2], a[3], a[4], a[5], a[7], a[8], a[9] != 0, a[10] != 0};
    const std::string e = validate_dims(d);
    if (!e.empty()) fail(std::string(kMultiOpName) + " " + weight_name(w) + "attributes: " + e);
    if (!dims.empty() && d.K != dims[0].K)
      fail(std::string(kMultiOpName) + " " + weight_name(w) + "in_features " + std::to_string(d.K) +
           " differs from weight 0's " + std::to_string(dims[0].K) + " (all weights read one X)");
    dims.push_back(d);
  }
  return dims;
}

// The layer-op attributes, read by get_int / get_float / get_string (name, &value) -> found.
template <typename GetInt, typename GetFloat, typename GetString>
LayerOps read_layer_ops(GetInt get_int, GetFloat get_float, GetString get_string, const std::vector<VQGemmDims>& dims) {
  int64_t prenorm = 0;
  float epsilon = 1e-5f;
  std::string activation;
  get_int("prenorm", &prenorm);
  get_float("epsilon", &epsilon);
  get_string("activation", &activation);
  return make_layer_ops(prenorm, epsilon, activation, dims);
}

// Per-thread buffers of a call (normalised X, gate/up before SwiGLU), kept between calls as
// vq_gemm's are; those over 4 MB (prompts past ~300 tokens on SmolLM2) are freed after.
struct LayerBuffers {
  std::vector<char> xn, gu;
};

struct LayerTrim {
  LayerBuffers& b;
  ~LayerTrim() {
    for (std::vector<char>* v : {&b.xn, &b.gu})
      if (v->capacity() > (size_t(4) << 20)) std::vector<char>().swap(*v);
  }
};

}  // namespace

VQGemmMultiKernel::VQGemmMultiKernel(const OrtApi& api, const OrtKernelInfo* info) {
  auto get_ints = [&](const char* name, std::vector<int64_t>* out) {
    size_t n = 0;
    OrtStatus* s = api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &n);
    if (!s) {
      out->resize(n);
      s = api.KernelInfoGetAttributeArray_int64(info, name, out->data(), &n);
    }
    if (s) api.ReleaseStatus(s);
    return s == nullptr;
  };
  auto get_int = [&](const char* name, int64_t* out) {
    OrtStatus* s = api.KernelInfoGetAttribute_int64(info, name, out);
    if (s) api.ReleaseStatus(s);
    return s == nullptr;
  };
  auto get_float = [&](const char* name, float* out) {
    OrtStatus* s = api.KernelInfoGetAttribute_float(info, name, out);
    if (s) api.ReleaseStatus(s);
    return s == nullptr;
  };
  Ort::ConstKernelInfo ki(info);
  auto get_string = [&](const char* name, std::string* out) {
    try {
      *out = ki.GetAttribute<std::string>(name);
      return true;
    } catch (const Ort::Exception&) {
      return false;
    }
  };
  int level = 0;
  dims_ = read_multi_attributes(get_ints, get_int, &level);
  lo_ = read_layer_ops(get_int, get_float, get_string, dims_);
  check_multi_inputs(dims_, lo_, kernel_input_infos(info));
  std::string version = kPluginVersion;  // optional, as for VQGemm
  try {
    version = ki.GetAttribute<std::string>("plugin_version");
  } catch (const Ort::Exception&) {
  }
  if (version != kPluginVersion)
    fail(std::string(kMultiOpName) + ": plugin_version must be \"1\", got \"" + version + "\"");
  separate_ = main_outputs(lo_, ki.GetOutputCount(), dims_.size()) > 1;
  const std::vector<size_t> first = input_offsets(dims_, lo_);
  for (size_t w = 0; w < dims_.size(); ++w) {
    std::vector<Ort::ConstValue> values;
    for (size_t i = first[w]; i < first[w + 1]; ++i) {
      int is_constant = 0;
      values.push_back(ki.GetTensorConstantInput(i, &is_constant));
      if (!is_constant)
        fail(std::string(kMultiOpName) + " " + weight_name(w) + "input " + std::to_string(i) +
             " must be an initializer (a multi-weight node prepacks its weights once; use VQGemm nodes for "
             "weights computed in the graph)");
    }
    std::vector<const void*> key;
    const VQGemmDesc desc = describe(dims_[w], values, 0, &key);
    const std::string e = validate_data(desc);
    if (!e.empty()) fail(std::string(kMultiOpName) + " " + weight_name(w) + e);
    packed_.emplace_back(prepack(desc, level).release(), PrepackedDeleter());
    raw_.push_back(packed_.back().get());
    total_n_ += dims_[w].N;
  }
}

OrtStatusPtr VQGemmMultiKernel::ComputeV2(OrtKernelContext* context) {
  return status_of([&] {
    Ort::KernelContext ctx(context);
    Ort::ConstValue xv = ctx.GetInput(0);
    if (!xv) fail("input 0 (X) is missing");
    auto info = xv.GetTensorTypeAndShapeInfo();
    const InputInfo x{info.GetElementType(), info.GetShape()};
    check_x(dims_[0], x);
    const DType t = x_dtype(x.type);
    const size_t elem = t == DType::kFloat32 ? 4 : 2;
    const int64_t K = dims_[0].K;
    int64_t M = 1;
    for (size_t i = 0; i + 1 < x.shape.size(); ++i) M *= x.shape[i];
    ParallelFor par;
    par.run = run_on_pool;
    par.ctx = ctx.GetOrtKernelContext();
    thread_local LayerBuffers buf;
    const LayerTrim trim{buf};
    const void* xin = xv.GetTensorRawData();
    if (lo_.prenorm > 0) {
      std::vector<InputInfo> in{x};
      std::vector<Ort::ConstValue> vals;
      for (size_t i = 1; i <= lo_.extra_inputs(); ++i) {
        vals.push_back(ctx.GetInput(i));
        if (!vals.back())
          fail("VQGemmMulti: input " + std::to_string(i) + (lo_.prenorm == 2 && i == 1 ? " (skip)" : " (gamma)") +
               " is missing");
        auto vi = vals.back().GetTensorTypeAndShapeInfo();
        in.push_back({vi.GetElementType(), vi.GetShape()});
      }
      check_layer_inputs(lo_, in, K);
      void* sum = nullptr;
      if (lo_.prenorm == 2) {
        const size_t index = (separate_ ? dims_.size() : 1);
        sum = ctx.GetOutput(index, x.shape.data(), x.shape.size()).GetTensorMutableRawData();
      }
      buf.xn.resize(size_t(M * K) * elem);
      if (M > 0)
        rms_norm(t, xin, lo_.prenorm == 2 ? vals[0].GetTensorRawData() : nullptr, vals.back().GetTensorRawData(),
                 lo_.epsilon, M, K, buf.xn.data(), sum, par);
      xin = buf.xn.data();
    }
    if (lo_.swiglu) {
      const int64_t N = dims_[0].N;
      std::vector<int64_t> shape = x.shape;
      shape.back() = N;
      void* y = ctx.GetOutput(0, shape.data(), shape.size()).GetTensorMutableRawData();
      if (M == 0) return;
      // Gate and up each in a buffer of its own: written in place by the kernels (side by side
      // they were rows 2N apart, computed elsewhere and copied: +15 % on a 128-token prefill).
      buf.gu.resize(size_t(M * 2 * N) * elem);
      void* const halves[2] = {buf.gu.data(), buf.gu.data() + size_t(M * N) * elem};
      vq_gemm_multi(raw_.data(), raw_.size(), t, xin, M, halves, par);
      silu_mul(t, halves[0], halves[1], M, N, y, detect_isa(), par);
      return;
    }
    if (!separate_) {
      Ort::UnownedValue y = output(ctx, x.shape, total_n_, &M);
      if (M == 0) return;
      vq_gemm_multi(raw_.data(), raw_.size(), t, xin, M, y.GetTensorMutableRawData(), par);
      return;
    }
    std::vector<void*> ys;
    for (size_t w = 0; w < dims_.size(); ++w) {
      std::vector<int64_t> shape = x.shape;
      shape.back() = dims_[w].N;
      ys.push_back(ctx.GetOutput(w, shape.data(), shape.size()).GetTensorMutableRawData());
    }
    if (M == 0) return;
    vq_gemm_multi(raw_.data(), raw_.size(), t, xin, M, ys.data(), par);
  });
}

OrtStatusPtr infer_multi_shape(const OrtCustomOp*, OrtShapeInferContext* ctx) noexcept {
  return status_of([&] {
    const OrtApi& api = Ort::GetApi();
    auto read = [&](const char* name, OrtOpAttrType type, void* out, size_t bytes, size_t* len) {
      const OrtOpAttr* attr = nullptr;
      OrtStatus* s = api.ShapeInferContext_GetAttribute(ctx, name, &attr);
      if (!s && attr) s = api.ReadOpAttr(attr, type, out, bytes, len);
      const bool ok = !s && attr;
      if (s) api.ReleaseStatus(s);
      return ok;
    };
    auto get_ints = [&](const char* name, std::vector<int64_t>* out) {
      size_t len = 0;
      out->assign(64, 0);
      if (!read(name, ORT_OP_ATTR_INTS, out->data(), out->size() * sizeof(int64_t), &len)) return false;
      out->resize(len / sizeof(int64_t));
      return true;
    };
    auto get_int = [&](const char* name, int64_t* out) {
      size_t len = 0;
      return read(name, ORT_OP_ATTR_INT, out, sizeof(*out), &len);
    };
    auto get_float = [&](const char* name, float* out) {
      size_t len = 0;
      return read(name, ORT_OP_ATTR_FLOAT, out, sizeof(*out), &len);
    };
    auto get_string = [&](const char* name, std::string* out) {
      size_t len = 0;
      std::string buf(256, '\0');
      if (!read(name, ORT_OP_ATTR_STRING, buf.data(), buf.size(), &len)) return false;
      buf.resize(std::min(len, buf.size()));
      *out = buf;
      return true;
    };
    std::vector<InputInfo> in;
    std::vector<std::string> x_symbols;  // Y keeps them
    infer_inputs(ctx, &in, &x_symbols);
    auto set_shape = [&](OrtTensorTypeAndShapeInfo* out, int64_t last, const char* last_symbol) {
      std::vector<int64_t> y_shape = in[0].shape;
      y_shape.back() = last;
      std::vector<const char*> y_symbols;
      for (const auto& c : x_symbols) y_symbols.push_back(c.c_str());
      y_symbols.back() = last_symbol;
      Ort::ThrowOnError(api.SetDimensions(out, y_shape.data(), y_shape.size()));
      Ort::ThrowOnError(api.SetSymbolicDimensions(out, y_symbols.data(), y_symbols.size()));
    };
    if (in.empty()) fail(std::string(kMultiOpName) + ": the node has no inputs; X comes first");
    OrtTensorTypeAndShapeInfo* out = nullptr;
    Ort::ThrowOnError(api.CreateTensorTypeAndShapeInfo(&out));
    Ort::TensorTypeAndShapeInfo owned(out);
    Ort::ThrowOnError(api.SetTensorElementType(out, in[0].type));
    // X's rank before anything can fail: the nodes after need it. Whether the node has one output
    // or one per weight, the context does not say: setting output 1 (2 after a sum output) tells.
    int64_t prenorm = 0;
    get_int("prenorm", &prenorm);
    const size_t extra = prenorm == 2 ? 1 : 0;
    if (in[0].known) set_shape(out, -1, "vqgemm_multi_out");
    Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, 0, out));
    bool separate = false;
    if (OrtStatus* st = api.ShapeInferContext_SetOutputTypeShape(ctx, 1 + extra, out))
      api.ReleaseStatus(st);
    else
      separate = true;
    int level = 0;
    const std::vector<VQGemmDims> dims = read_multi_attributes(get_ints, get_int, &level);
    const LayerOps lo = read_layer_ops(get_int, get_float, get_string, dims);
    const size_t mains = separate ? dims.size() : 1;
    if (in[0].known) {
      int64_t total = 0;
      for (const VQGemmDims& d : dims) total += d.N;
      if (lo.swiglu) total = dims[0].N;
      for (size_t w = 0; w < mains; ++w) {
        set_shape(out, separate ? dims[w].N : total, "");
        Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, w, out));
      }
      if (extra) {  // X + skip: X's shape
        set_shape(out, in[0].shape.back(), x_symbols.empty() ? "" : x_symbols.back().c_str());
        Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, mains, out));
      }
    }
    check_multi_inputs(dims, lo, in);
  }, "");
}

}  // namespace vq2trt::ort
