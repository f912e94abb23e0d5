// vq2trt.VQGemm kernel: checks the node against its attributes, validates and prepacks each
// weight once (cached on its data pointers), then runs the core CPU kernel on ORT's thread pool.
#include "vqgemm_op.h"

#include <stdexcept>
#include <string>

#include "vq2trt/op_schema.h"

namespace vq2trt::ort {
namespace {

struct InputInfo {
  ONNXTensorElementDataType type;
  std::vector<int64_t> shape;  // -1: unknown (shape inference only)
};

ONNXTensorElementDataType ort_type(DType t) {
  switch (t) {
    case DType::kFloat32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case DType::kFloat16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case DType::kBFloat16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
    case DType::kInt32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + (s[i] < 0 ? std::string("?") : std::to_string(s[i]));
  return out + "]";
}

[[noreturn]] void fail(const std::string& msg, OrtErrorCode code = ORT_INVALID_ARGUMENT) {
  throw Ort::Exception("VQGemm: " + msg, code);
}

// Reads the INT attributes through get(name, &value) -> found; fails on missing or bad values.
template <typename Get>
void read_attributes(Get get, VQGemmDims* d, int* accuracy_level) {
  int64_t a[sizeof(kIntAttributes) / sizeof(kIntAttributes[0])];
  for (size_t i = 0; i < sizeof(a) / sizeof(a[0]); ++i)
    if (!get(kIntAttributes[i], &a[i])) fail(std::string("missing INT attribute '") + kIntAttributes[i] + "'");
  *d = VQGemmDims{a[0], a[1], a[6], a[2], a[3], a[4], a[5], a[7], a[8], a[9] != 0, a[10] != 0};
  if ((a[9] != 0 && a[9] != 1) || (a[10] != 0 && a[10] != 1)) fail("normalized and has_bias must be 0 or 1");
  if (a[11] < 0 || a[11] > 4) fail("accuracy_level must lie in [0, 4], got " + std::to_string(a[11]));
  *accuracy_level = int(a[11]);
  const std::string e = validate_dims(*d);
  if (!e.empty()) fail("attributes: " + e);
}

// The node's inputs against what the attributes call for (count, dtypes, shapes, X's last dim).
void check_inputs(const VQGemmDims& d, const std::vector<InputInfo>& in) {
  const std::vector<TensorSpec> specs = weight_input_specs(d);
  if (in.size() != specs.size() + 1) {
    std::string names;
    for (const auto& s : specs) names += std::string(names.empty() ? "" : ", ") + s.name;
    fail("the attributes call for " + std::to_string(specs.size() + 1) + " inputs (X, " + names +
         "), the node has " + std::to_string(in.size()));
  }
  const InputInfo& x = in[0];
  if (x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 &&
      x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16)
    fail("X must be float32, float16 or bfloat16 (ONNX element type " + std::to_string(int(x.type)) + ")");
  if (x.shape.empty() || (x.shape.back() >= 0 && x.shape.back() != d.K))
    fail("X has shape " + shape_str(x.shape) + "; its last dimension must be in_features = " + std::to_string(d.K));
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& s = specs[i];
    const InputInfo& t = in[i + 1];
    bool same = t.shape.size() == s.shape.size();
    for (size_t j = 0; same && j < s.shape.size(); ++j) same = t.shape[j] < 0 || t.shape[j] == s.shape[j];
    if (t.type != ort_type(s.dtype) || !same)
      fail(std::string("input ") + std::to_string(i + 1) + " (" + s.name + ") must be " + dtype_name(s.dtype) + " " +
           shape_str(s.shape) + " as the attributes say, got ONNX element type " + std::to_string(int(t.type)) +
           " " + shape_str(t.shape));
  }
}

OrtStatusPtr to_status(OrtErrorCode code, const char* msg) { return Ort::GetApi().CreateStatus(code, msg); }

// Shape and dtype inference: Y takes X's dtype and shape [..., N]. ONNX Runtime treats a failure
// here as a warning at most, so the kernel's constructor repeats the checks that must stop a
// session (and Compute checks again, for inputs whose shapes were unknown until then).
OrtStatusPtr infer_shape(const OrtCustomOp*, OrtShapeInferContext* ctx) noexcept {
  try {
    const OrtApi& api = Ort::GetApi();
    auto get = [&](const char* name, int64_t* out) {
      const OrtOpAttr* attr = nullptr;
      OrtStatus* s = api.ShapeInferContext_GetAttribute(ctx, name, &attr);
      if (!s && attr) {
        size_t len = 0;
        s = api.ReadOpAttr(attr, ORT_OP_ATTR_INT, out, sizeof(*out), &len);
        if (!s) return true;
      }
      if (s) api.ReleaseStatus(s);
      return false;
    };
    VQGemmDims d;
    int level = 0;
    read_attributes(get, &d, &level);
    size_t n = 0;
    Ort::ThrowOnError(api.ShapeInferContext_GetInputCount(ctx, &n));
    std::vector<InputInfo> in;
    std::vector<std::string> x_symbols;
    for (size_t i = 0; i < n; ++i) {
      OrtTensorTypeAndShapeInfo* raw = nullptr;
      Ort::ThrowOnError(api.ShapeInferContext_GetInputTypeShape(ctx, i, &raw));
      Ort::ConstTensorTypeAndShapeInfo info(raw);  // owned by the context, not by us
      in.push_back({info.GetElementType(), info.GetShape()});
      if (i == 0 && info.GetDimensionsCount() > 0) {
        std::vector<const char*> sym(info.GetDimensionsCount(), nullptr);
        info.GetSymbolicDimensions(sym.data(), sym.size());
        for (const char* s : sym) x_symbols.emplace_back(s ? s : "");
      }
    }
    if (in.empty() || in[0].shape.empty()) fail("X must have at least one dimension");
    // Y's type first: ORT guessed it from the last multi-typed input, and a wrong guess would
    // hide the message below behind a type mismatch on Y.
    std::vector<int64_t> y_shape = in[0].shape;
    y_shape.back() = d.N;
    x_symbols.back() = "";
    std::vector<const char*> y_symbols;
    for (const auto& s : x_symbols) y_symbols.push_back(s.c_str());
    OrtTensorTypeAndShapeInfo* out = nullptr;
    Ort::ThrowOnError(api.CreateTensorTypeAndShapeInfo(&out));
    Ort::TensorTypeAndShapeInfo owned(out);
    Ort::ThrowOnError(api.SetTensorElementType(out, in[0].type));
    Ort::ThrowOnError(api.SetDimensions(out, y_shape.data(), y_shape.size()));
    Ort::ThrowOnError(api.SetSymbolicDimensions(out, y_symbols.data(), y_symbols.size()));
    Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, 0, out));
    check_inputs(d, in);
    return nullptr;
  } catch (const Ort::Exception& e) {
    return to_status(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return to_status(ORT_FAIL, e.what());
  }
}

void run_on_ort_pool(void* ctx, ParallelFor::TaskFn fn, size_t n_tasks, void* arg) {
  Ort::KernelContext(static_cast<OrtKernelContext*>(ctx)).ParallelFor(fn, n_tasks, 0, arg);
}

}  // namespace

VQGemmKernel::VQGemmKernel(const OrtApi& api, const OrtKernelInfo* info) {
  auto get = [&](const char* name, int64_t* out) {
    OrtStatus* s = api.KernelInfoGetAttribute_int64(info, name, out);
    if (s) api.ReleaseStatus(s);
    return s == nullptr;
  };
  read_attributes(get, &dims_, &accuracy_level_);
  Ort::ConstKernelInfo ki(info);
  std::string version = kPluginVersion;  // optional for ONNX Runtime; TensorRT's parser needs it
  try {
    version = ki.GetAttribute<std::string>("plugin_version");
  } catch (const Ort::Exception&) {
  }
  if (version != kPluginVersion) fail("plugin_version must be \"1\", got \"" + version + "\"");
  // Node inputs against the attributes now, so that a bad node fails session creation.
  std::vector<InputInfo> in;
  for (size_t i = 0; i < ki.GetInputCount(); ++i) {
    Ort::TypeInfo type = ki.GetInputTypeInfo(i);
    if (type.GetONNXType() != ONNX_TYPE_TENSOR) fail("input " + std::to_string(i) + " must be a tensor");
    auto t = type.GetTensorTypeAndShapeInfo();
    in.push_back({t.GetElementType(), t.GetShape()});
  }
  check_inputs(dims_, in);
  // Weights that are initializers: validate and prepack once, here (errors fail the session).
  std::vector<Ort::ConstValue> weights;
  constant_weights_ = true;
  for (size_t i = 1; i < ki.GetInputCount() && constant_weights_; ++i) {
    int is_constant = 0;
    weights.push_back(ki.GetTensorConstantInput(i, &is_constant));
    constant_weights_ = is_constant != 0;
  }
  if (constant_weights_) {
    std::vector<const void*> key;
    const VQGemmDesc desc = describe(weights, 0, &key);
    weight(desc, key);
  }
}

VQGemmDesc VQGemmKernel::describe(const std::vector<Ort::ConstValue>& values, size_t first,
                                  std::vector<const void*>* key) const {
  VQGemmDesc w;
  w.dims = dims_;
  const std::vector<TensorSpec> specs = weight_input_specs(dims_);
  for (size_t i = 0; i < specs.size(); ++i) {
    const void* p = values[first + i].GetTensorRawData();
    key->push_back(p);
    const std::string name = specs[i].name;
    auto i32 = static_cast<const int32_t*>(p);
    auto f16 = static_cast<const uint16_t*>(p);
    if (name == "indices") w.indices = i32;
    else if (name == "codebook") w.codebook = f16;
    else if (name == "perm") w.perm = i32;
    else if (name == "res_indices") w.res_indices = i32;
    else if (name == "res_codebook") w.res_codebook = f16;
    else if (name == "outlier_indices") w.outlier_indices = i32;
    else if (name == "outlier_codebook") w.outlier_codebook = f16;
    else if (name == "col_scale") w.col_scale = f16;
    else if (name == "col_bias") w.col_bias = f16;
    else if (name == "bias") w.bias = static_cast<const float*>(p);
  }
  return w;
}

std::shared_ptr<const Prepacked> VQGemmKernel::weight(const VQGemmDesc& desc, const std::vector<const void*>& key) {
  if (constant_weights_) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (cached_ && key_ == key) return cached_;
  }
  // Scanning every index costs as much as one GEMV, so constant weights pay it once.
  const std::string e = validate_data(desc);
  if (!e.empty()) fail(e);
  std::shared_ptr<const Prepacked> p(prepack(desc, accuracy_level_).release(), PrepackedDeleter());
  if (constant_weights_) {
    std::lock_guard<std::mutex> lock(mutex_);
    key_ = key;
    cached_ = p;
  }
  return p;
}

void VQGemmKernel::Compute(Ort::KernelContext& ctx) {
  const size_t n = ctx.GetInputCount();
  std::vector<InputInfo> in;
  std::vector<Ort::ConstValue> values;
  for (size_t i = 0; i < n; ++i) {
    Ort::ConstValue v = ctx.GetInput(i);
    if (!v) fail("input " + std::to_string(i) + " is missing");
    auto info = v.GetTensorTypeAndShapeInfo();
    in.push_back({info.GetElementType(), info.GetShape()});
    values.push_back(v);
  }
  check_inputs(dims_, in);
  std::vector<const void*> key;
  const VQGemmDesc w = describe(values, 1, &key);
  std::shared_ptr<const Prepacked> packed = weight(w, key);
  std::vector<int64_t> y_shape = in[0].shape;
  int64_t M = 1;
  for (size_t i = 0; i + 1 < y_shape.size(); ++i) M *= y_shape[i];
  y_shape.back() = dims_.N;
  Ort::UnownedValue y = ctx.GetOutput(0, y_shape.data(), y_shape.size());
  if (M == 0) return;
  const DType xt = in[0].type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT     ? DType::kFloat32
                   : in[0].type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? DType::kFloat16
                                                                         : DType::kBFloat16;
  ParallelFor par;
  par.run = run_on_ort_pool;
  par.ctx = ctx.GetOrtKernelContext();
  vq_gemm(*packed, xt, values[0].GetTensorRawData(), M, y.GetTensorMutableRawData(), par);
}

OrtStatusPtr VQGemmKernel::ComputeV2(OrtKernelContext* context) {
  try {
    Ort::KernelContext ctx(context);
    Compute(ctx);
    return nullptr;
  } catch (const Ort::Exception& e) {
    return to_status(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return to_status(ORT_FAIL, (std::string("VQGemm: ") + e.what()).c_str());
  }
}

VQGemmOp::VQGemmOp() { OrtCustomOp::InferOutputShapeFn = infer_shape; }

OrtStatusPtr VQGemmOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
  try {
    *kernel = new VQGemmKernel(api, info);
    return nullptr;
  } catch (const Ort::Exception& e) {
    return to_status(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return to_status(ORT_FAIL, e.what());
  }
}

size_t VQGemmOp::GetInputTypeCount() const { return kNumInputs; }

// X and the optional inputs are typed per node: which tensor sits at index 4 and on depends on
// which groups are present, so their dtypes are checked against the attributes in Compute.
ONNXTensorElementDataType VQGemmOp::GetInputType(size_t index) const {
  if (index == 1 || index == 3) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  if (index == 2) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

OrtCustomOpInputOutputCharacteristic VQGemmOp::GetInputCharacteristic(size_t index) const {
  return index < kRequiredInputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}

}  // namespace vq2trt::ort
