// Node checks shared by the CPU and CUDA ops (see node_checks.h).
#include "node_checks.h"

#include <stdexcept>
#include <string>

#include "vq2trt/op_schema.h"

namespace vq2trt::ort {

void fail(const std::string& msg, OrtErrorCode code) { throw Ort::Exception("VQGemm: " + msg, code); }

OrtStatusPtr to_status(OrtErrorCode code, const char* msg) { return Ort::GetApi().CreateStatus(code, msg); }

namespace {

ONNXTensorElementDataType ort_type(DType t) {
  switch (t) {
    case DType::kFloat32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case DType::kFloat16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case DType::kBFloat16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
    case DType::kInt32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
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

}  // namespace

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + (s[i] < 0 ? std::string("?") : std::to_string(s[i]));
  return out + "]";
}

void check_x(const VQGemmDims& d, const InputInfo& x) {
  if (x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 &&
      x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16)
    fail("X must be float32, float16 or bfloat16 (ONNX element type " + std::to_string(int(x.type)) + ")");
  if (x.known && (x.shape.empty() || (x.shape.back() >= 0 && x.shape.back() != d.K)))
    fail("X has shape " + shape_str(x.shape) + "; its last dimension must be in_features = " + std::to_string(d.K));
}

void check_inputs(const VQGemmDims& d, const std::vector<InputInfo>& in) {
  const std::vector<TensorSpec> specs = weight_input_specs(d);
  if (in.size() != specs.size() + 1) {
    std::string names;
    for (const auto& s : specs) names += std::string(names.empty() ? "" : ", ") + s.name;
    fail("the attributes call for " + std::to_string(specs.size() + 1) + " inputs (X, " + names +
         "), the node has " + std::to_string(in.size()));
  }
  check_x(d, in[0]);
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& s = specs[i];
    const InputInfo& t = in[i + 1];
    bool same = !t.known || t.shape.size() == s.shape.size();
    for (size_t j = 0; same && j < s.shape.size(); ++j) same = t.shape[j] < 0 || t.shape[j] == s.shape[j];
    if (t.type != ort_type(s.dtype) || !same)
      fail(std::string("input ") + std::to_string(i + 1) + " (" + s.name + ") must be " + dtype_name(s.dtype) + " " +
           shape_str(s.shape) + " as the attributes say, got ONNX element type " + std::to_string(int(t.type)) +
           " " + shape_str(t.shape));
  }
}


void infer_inputs(OrtShapeInferContext* ctx, std::vector<InputInfo>* in, std::vector<std::string>* x_symbols) {
  const OrtApi& api = Ort::GetApi();
  size_t n = 0;
  Ort::ThrowOnError(api.ShapeInferContext_GetInputCount(ctx, &n));
  for (size_t i = 0; i < n; ++i) {
    OrtTensorTypeAndShapeInfo* raw = nullptr;
    Ort::ThrowOnError(api.ShapeInferContext_GetInputTypeShape(ctx, i, &raw));
    Ort::ConstTensorTypeAndShapeInfo info(raw);  // owned by the context, not by us
    std::vector<int64_t> shape = info.GetShape();
    const bool known = !shape.empty();
    in->push_back({info.GetElementType(), std::move(shape), known});
    if (i == 0 && info.GetDimensionsCount() > 0) {
      std::vector<const char*> sym(info.GetDimensionsCount(), nullptr);
      info.GetSymbolicDimensions(sym.data(), sym.size());
      for (const char* c : sym) x_symbols->emplace_back(c ? c : "");
    }
  }
}

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
    std::vector<InputInfo> in;
    std::vector<std::string> x_symbols;
    infer_inputs(ctx, &in, &x_symbols);
    if (in.empty()) fail("the node has no inputs; X comes first");
    // Y's type before anything can fail: ORT guessed it from the last multi-typed input, and a
    // wrong guess would hide the message below (a bad attribute, say) behind a type mismatch on Y.
    OrtTensorTypeAndShapeInfo* out = nullptr;
    Ort::ThrowOnError(api.CreateTensorTypeAndShapeInfo(&out));
    Ort::TensorTypeAndShapeInfo owned(out);
    Ort::ThrowOnError(api.SetTensorElementType(out, in[0].type));
    Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, 0, out));
    VQGemmDims d;
    int level = 0;
    read_attributes(get, &d, &level);
    if (in[0].known) {  // Y = X's shape with the last dim N; unknown rank in, unknown rank out
      std::vector<int64_t> y_shape = in[0].shape;
      y_shape.back() = d.N;
      x_symbols.back() = "";
      std::vector<const char*> y_symbols;
      for (const auto& s : x_symbols) y_symbols.push_back(s.c_str());
      Ort::ThrowOnError(api.SetDimensions(out, y_shape.data(), y_shape.size()));
      Ort::ThrowOnError(api.SetSymbolicDimensions(out, y_symbols.data(), y_symbols.size()));
      Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, 0, out));
    }
    check_inputs(d, in);
    return nullptr;
  } catch (const Ort::Exception& e) {
    return to_status(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return to_status(ORT_FAIL, e.what());
  }
}


void read_kernel_attributes(const OrtApi& api, const OrtKernelInfo* info, VQGemmDims* dims, int* accuracy_level) {
  auto get = [&](const char* name, int64_t* out) {
    OrtStatus* s = api.KernelInfoGetAttribute_int64(info, name, out);
    if (s) api.ReleaseStatus(s);
    return s == nullptr;
  };
  read_attributes(get, dims, accuracy_level);
  std::string version = kPluginVersion;  // optional for ONNX Runtime; TensorRT's parser needs it
  try {
    version = Ort::ConstKernelInfo(info).GetAttribute<std::string>("plugin_version");
  } catch (const Ort::Exception&) {
  }
  if (version != kPluginVersion) fail("plugin_version must be \"1\", got \"" + version + "\"");
}

std::vector<InputInfo> kernel_input_infos(const OrtKernelInfo* info) {
  Ort::ConstKernelInfo ki(info);
  std::vector<InputInfo> in;
  for (size_t i = 0; i < ki.GetInputCount(); ++i) {
    Ort::TypeInfo type = ki.GetInputTypeInfo(i);
    if (type.GetONNXType() != ONNX_TYPE_TENSOR) fail("input " + std::to_string(i) + " must be a tensor");
    auto t = type.GetTensorTypeAndShapeInfo();
    std::vector<int64_t> shape = t.GetShape();
    const bool known = !shape.empty();  // no dimensions before a call: rank unknown (a scalar fails per call)
    in.push_back({t.GetElementType(), std::move(shape), known});
  }
  return in;
}

void call_inputs(Ort::KernelContext& ctx, const VQGemmDims& d, std::vector<Ort::ConstValue>* values,
                 std::vector<InputInfo>* infos) {
  const size_t n = ctx.GetInputCount();
  for (size_t i = 0; i < n; ++i) {
    Ort::ConstValue v = ctx.GetInput(i);
    if (!v) fail("input " + std::to_string(i) + " is missing");
    auto info = v.GetTensorTypeAndShapeInfo();
    infos->push_back({info.GetElementType(), info.GetShape()});
    values->push_back(v);
  }
  check_inputs(d, *infos);
}

VQGemmDesc describe(const VQGemmDims& d, const std::vector<Ort::ConstValue>& values, size_t first,
                    std::vector<const void*>* key) {
  const size_t start = key->size();
  for (size_t i = first; i < values.size(); ++i) key->push_back(values[i].GetTensorRawData());
  return describe_weight_inputs(d, key->data() + start);
}

Ort::UnownedValue output(Ort::KernelContext& ctx, std::vector<int64_t> x_shape, int64_t N, int64_t* rows) {
  *rows = 1;
  for (size_t i = 0; i + 1 < x_shape.size(); ++i) *rows *= x_shape[i];
  x_shape.back() = N;
  return ctx.GetOutput(0, x_shape.data(), x_shape.size());
}

DType x_dtype(ONNXTensorElementDataType t) {
  return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT     ? DType::kFloat32
         : t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? DType::kFloat16
                                                      : DType::kBFloat16;
}

// X and the optional inputs are typed per node: which tensor sits at index 4 and on depends on
// which groups are present, so their dtypes are checked against the attributes in check_inputs.
ONNXTensorElementDataType input_type(size_t index) {
  if (index == 1 || index == 3) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  if (index == 2) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

OrtCustomOpInputOutputCharacteristic input_characteristic(size_t index) {
  return index < kRequiredInputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}

}  // namespace vq2trt::ort
