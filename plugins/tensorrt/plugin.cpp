// VQGemmPlugin (see plugin.h). The kernels are vq2trt::cuda::vq_gemm / workspace_size
// (plugins/core/include/vq2trt/cuda_kernels.h); this file only adapts TensorRT's descriptions.
#include "plugin.h"

#include <exception>
#include <new>
#include <string>

#include "logging.h"
#include "vq2trt/cuda_kernels.h"
#include "vq2trt/op_schema.h"

namespace vq2trt::trt {

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace {

std::string type_str(DataType t) {
  switch (t) {
    case DataType::kFLOAT: return "kFLOAT";
    case DataType::kHALF: return "kHALF";
    case DataType::kBF16: return "kBF16";
    case DataType::kINT32: return "kINT32";
    default: return "DataType " + std::to_string(int32_t(t));
  }
}

std::string dims_str(const Dims& d) {
  if (d.nbDims < 0 || d.nbDims > Dims::MAX_DIMS) return "[rank " + std::to_string(d.nbDims) + "]";
  std::string s = "[";
  for (int32_t i = 0; i < d.nbDims; ++i) s += (i ? ", " : "") + (d.d[i] < 0 ? std::string("?") : std::to_string(d.d[i]));
  return s + "]";
}

std::string spec_str(const TensorSpec& s) {
  std::string out = type_str(trt_type(s.dtype)) + " [";
  for (size_t i = 0; i < s.shape.size(); ++i) out += (i ? ", " : "") + std::to_string(s.shape[i]);
  return out + "]";
}

bool x_type_ok(DataType t) { return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16; }

// Runs an override body: exceptions become a report and the given failure value.
template <typename R, typename F>
R guarded(const char* method, R failure, F&& body) noexcept {
  try {
    return body();
  } catch (const InternalError& e) {
    report_error(std::string(method) + ": internal error: " + e.what());
  } catch (const std::exception& e) {
    report_error(std::string(method) + ": " + e.what());
  } catch (...) {
    report_error(std::string(method) + ": unknown exception");
  }
  return failure;
}

void internal_check(bool ok, const char* what) {
  if (!ok) throw InternalError(what);
}

}  // namespace

DataType trt_type(DType t) {
  switch (t) {
    case DType::kFloat32: return DataType::kFLOAT;
    case DType::kFloat16: return DataType::kHALF;
    case DType::kBFloat16: return DataType::kBF16;
    case DType::kInt32: return DataType::kINT32;
  }
  throw InternalError("unknown vq2trt::DType");
}

bool vq_type(DataType t, DType* out) {
  switch (t) {
    case DataType::kFLOAT: *out = DType::kFloat32; return true;
    case DataType::kHALF: *out = DType::kFloat16; return true;
    case DataType::kBF16: *out = DType::kBFloat16; return true;
    case DataType::kINT32: *out = DType::kInt32; return true;
    default: return false;
  }
}

VQGemmPlugin::VQGemmPlugin(const VQGemmConfig& config, std::string plugin_namespace)
    : config_(config), namespace_(std::move(plugin_namespace)), serialized_(config) {
  internal_check(validate_dims(config.dims).empty() && config.accuracy_level >= 0 && config.accuracy_level <= 4,
                 "VQGemmPlugin built from a config that parse_fields did not accept");
  specs_ = weight_input_specs(config.dims);
  const VQGemmDims& d = config.dims;
  metadata_ = "N=" + std::to_string(d.N) + " K=" + std::to_string(d.K) + " v=" + std::to_string(d.v) +
              " k=" + std::to_string(d.k) + " G=" + std::to_string(d.G) + " k_r=" + std::to_string(d.k_r) +
              " n_out=" + std::to_string(d.n_out) + " normalized=" + std::to_string(int(d.normalized)) +
              " has_bias=" + std::to_string(int(d.has_bias)) +
              " accuracy_level=" + std::to_string(config.accuracy_level);
}

VQGemmPlugin::VQGemmPlugin(const VQGemmPlugin& other)
    : IPluginV3(other), IPluginV3OneCore(other), IPluginV3OneBuild(other), IPluginV3OneRuntime(other),
      config_(other.config_), specs_(other.specs_), namespace_(other.namespace_), metadata_(other.metadata_),
      serialized_(other.serialized_) {}

void VQGemmPlugin::setPluginNamespace(const char* plugin_namespace) noexcept {
  guarded("setPluginNamespace", 0, [&] {
    namespace_ = plugin_namespace != nullptr ? plugin_namespace : "";
    return 0;
  });
}

std::string VQGemmPlugin::check_count(int32_t nb_in, int32_t nb_out) const {
  if (nb_in != num_inputs()) {
    std::string names;
    for (const auto& s : specs_) names += std::string(", ") + s.name;
    return "the fields call for " + std::to_string(num_inputs()) + " inputs (X" + names + "), the layer has " +
           std::to_string(nb_in);
  }
  if (nb_out != 1) return "VQGemm has 1 output, the layer has " + std::to_string(nb_out);
  return "";
}

std::string VQGemmPlugin::check_io(const TensorView* in, int32_t nb_in, const TensorView* out, int32_t nb_out) const {
  std::string e = check_count(nb_in, nb_out);
  if (!e.empty()) return e;
  internal_check(in != nullptr && out != nullptr, "tensor descriptions are null");
  const TensorView& x = in[0];
  if (!x_type_ok(x.type) || x.format != TensorFormat::kLINEAR)
    return "X must be kFLOAT, kHALF or kBF16 in kLINEAR format, got " + type_str(x.type) + " format " +
           std::to_string(int32_t(x.format));
  if (x.dims.nbDims != 2 && x.dims.nbDims != 3)
    return "X must have rank 2 [M, K] or 3 [B, S, K], got " + dims_str(x.dims);
  const int64_t k = x.dims.d[x.dims.nbDims - 1];
  if (k >= 0 && k != config_.dims.K)
    return "X has shape " + dims_str(x.dims) + "; its last dimension must be in_features = " +
           std::to_string(config_.dims.K);
  for (size_t i = 0; i < specs_.size(); ++i) {
    const TensorSpec& s = specs_[i];
    const TensorView& t = in[i + 1];
    bool same = t.type == trt_type(s.dtype) && t.format == TensorFormat::kLINEAR &&
                t.dims.nbDims == int32_t(s.shape.size());
    for (size_t j = 0; same && j < s.shape.size(); ++j) same = t.dims.d[j] < 0 || t.dims.d[j] == s.shape[j];
    if (!same)
      return "input " + std::to_string(i + 1) + " (" + s.name + ") must be " + spec_str(s) +
             " kLINEAR as the fields say, got " + type_str(t.type) + " " + dims_str(t.dims) + " format " +
             std::to_string(int32_t(t.format));
  }
  const TensorView& y = out[0];
  if (y.type != x.type || y.format != TensorFormat::kLINEAR || y.dims.nbDims != x.dims.nbDims)
    return "Y must have X's type and rank in kLINEAR format, got " + type_str(y.type) + " " + dims_str(y.dims);
  const int64_t n = y.dims.d[y.dims.nbDims - 1];
  if (n >= 0 && n != config_.dims.N)
    return "Y has shape " + dims_str(y.dims) + "; its last dimension must be out_features = " +
           std::to_string(config_.dims.N);
  return "";
}

// ---- IPluginV3 ----------------------------------------------------------------------------------

nvinfer1::IPluginCapability* VQGemmPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  return guarded("getCapabilityInterface", static_cast<nvinfer1::IPluginCapability*>(nullptr),
                 [&]() -> nvinfer1::IPluginCapability* {
                   switch (type) {
                     case nvinfer1::PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
                     case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
                     case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
                   }
                   return nullptr;
                 });
}

nvinfer1::IPluginV3* VQGemmPlugin::clone() noexcept {
  return guarded("clone", static_cast<nvinfer1::IPluginV3*>(nullptr),
                 [&]() -> nvinfer1::IPluginV3* { return new VQGemmPlugin(*this); });
}

// ---- IPluginV3OneCore ---------------------------------------------------------------------------

const char* VQGemmPlugin::getPluginName() const noexcept { return kOpName; }
const char* VQGemmPlugin::getPluginVersion() const noexcept { return kPluginVersion; }
const char* VQGemmPlugin::getPluginNamespace() const noexcept { return namespace_.c_str(); }

// ---- IPluginV3OneBuild --------------------------------------------------------------------------

int32_t VQGemmPlugin::getNbOutputs() const noexcept { return 1; }

int32_t VQGemmPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, const DataType* inputTypes,
                                         int32_t nbInputs) const noexcept {
  return guarded("getOutputDataTypes", -1, [&] {
    std::string e = check_count(nbInputs, nbOutputs);
    if (e.empty() && (outputTypes == nullptr || inputTypes == nullptr)) e = "null type arrays";
    if (e.empty() && !x_type_ok(inputTypes[0])) e = "X must be kFLOAT, kHALF or kBF16, got " + type_str(inputTypes[0]);
    if (!e.empty()) {
      report_error("getOutputDataTypes: " + e);
      return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
  });
}

int32_t VQGemmPlugin::getOutputShapes(const DimsExprs* inputs, int32_t nbInputs, const DimsExprs*, int32_t,
                                      DimsExprs* outputs, int32_t nbOutputs,
                                      nvinfer1::IExprBuilder& exprBuilder) noexcept {
  return guarded("getOutputShapes", -1, [&] {
    auto fail = [](const std::string& e) {
      report_error("getOutputShapes: " + e);
      return -1;
    };
    std::string e = check_count(nbInputs, nbOutputs);
    if (!e.empty()) return fail(e);
    if (inputs == nullptr || outputs == nullptr) return fail("null shape arrays");
    const DimsExprs& x = inputs[0];
    if (x.nbDims != 2 && x.nbDims != 3)
      return fail("X must have rank 2 [M, K] or 3 [B, S, K], got rank " + std::to_string(x.nbDims));
    for (int32_t i = 0; i < x.nbDims; ++i)
      if (x.d[i] == nullptr) return fail("X's dimension " + std::to_string(i) + " is null");
    const nvinfer1::IDimensionExpr* k = x.d[x.nbDims - 1];
    if (k->isConstant() && k->getConstantValue() != config_.dims.K)
      return fail("X's last dimension is " + std::to_string(k->getConstantValue()) + ", in_features is " +
                  std::to_string(config_.dims.K));
    for (size_t i = 0; i < specs_.size(); ++i) {
      const TensorSpec& s = specs_[i];
      const DimsExprs& t = inputs[i + 1];
      bool same = t.nbDims == int32_t(s.shape.size());
      for (size_t j = 0; same && j < s.shape.size(); ++j)
        same = t.d[j] != nullptr && (!t.d[j]->isConstant() || t.d[j]->getConstantValue() == s.shape[j]);
      if (!same)
        return fail("input " + std::to_string(i + 1) + " (" + s.name + ") must have shape " + spec_str(s) +
                    " as the fields say");
    }
    const nvinfer1::IDimensionExpr* n = exprBuilder.constant(config_.dims.N);
    if (n == nullptr) return fail("the expression builder returned no constant");
    outputs[0].nbDims = x.nbDims;
    for (int32_t i = 0; i + 1 < x.nbDims; ++i) outputs[0].d[i] = x.d[i];
    outputs[0].d[x.nbDims - 1] = n;
    return 0;
  });
}

bool VQGemmPlugin::supportsFormatCombination(int32_t pos, const DynamicPluginTensorDesc* inOut, int32_t nbInputs,
                                             int32_t nbOutputs) noexcept {
  return guarded("supportsFormatCombination", false, [&] {
    if (inOut == nullptr || !check_count(nbInputs, nbOutputs).empty() || pos < 0 || pos > nbInputs) return false;
    const PluginTensorDesc& t = inOut[pos].desc;
    if (t.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return x_type_ok(t.type);
    if (pos == nbInputs) return t.type == inOut[0].desc.type;  // TensorRT asks in order: X is fixed by now
    return t.type == trt_type(specs_[size_t(pos - 1)].dtype);
  });
}

int32_t VQGemmPlugin::configurePlugin(const DynamicPluginTensorDesc* in, int32_t nbInputs,
                                      const DynamicPluginTensorDesc* out, int32_t nbOutputs) noexcept {
  return guarded("configurePlugin", -1, [&] {
    std::string e = check_count(nbInputs, nbOutputs);
    if (e.empty() && (in == nullptr || out == nullptr)) e = "null tensor descriptions";
    if (e.empty()) {
      std::vector<TensorView> vin, vout;
      for (int32_t i = 0; i < nbInputs; ++i) vin.push_back({in[i].desc.type, in[i].desc.format, in[i].desc.dims});
      vout.push_back({out[0].desc.type, out[0].desc.format, out[0].desc.dims});
      e = check_io(vin.data(), nbInputs, vout.data(), nbOutputs);
    }
    if (e.empty()) return 0;
    report_error("configurePlugin: " + e);
    return -1;
  });
}

size_t VQGemmPlugin::getWorkspaceSize(const DynamicPluginTensorDesc* inputs, int32_t nbInputs,
                                      const DynamicPluginTensorDesc*, int32_t nbOutputs) const noexcept {
  return guarded("getWorkspaceSize", size_t(0), [&] {
    DType xt;
    std::string e = check_count(nbInputs, nbOutputs);
    if (e.empty() && inputs == nullptr) e = "null tensor descriptions";
    if (e.empty() && !(x_type_ok(inputs[0].desc.type) && vq_type(inputs[0].desc.type, &xt)))
      e = "X must be kFLOAT, kHALF or kBF16";
    const Dims& max = e.empty() ? inputs[0].max : Dims{};
    if (e.empty() && (max.nbDims < 2 || max.nbDims > 3)) e = "X must have rank 2 or 3 at the profile's max";
    int64_t rows = 1;
    for (int32_t i = 0; e.empty() && i + 1 < max.nbDims; ++i) {
      if (max.d[i] < 0 || (max.d[i] > 0 && rows > INT64_MAX / max.d[i])) e = "X's max shape " + dims_str(max) + " is unusable";
      else rows *= max.d[i];
    }
    if (!e.empty()) {
      // enqueue then meets a workspace smaller than it needs and fails cleanly.
      report_error("getWorkspaceSize: " + e);
      return size_t(0);
    }
    return cuda::workspace_size(config_.dims, rows, xt);
  });
}

const char* VQGemmPlugin::getMetadataString() noexcept { return metadata_.c_str(); }

// ---- IPluginV3OneRuntime ------------------------------------------------------------------------

int32_t VQGemmPlugin::onShapeChange(const PluginTensorDesc* in, int32_t nbInputs, const PluginTensorDesc* out,
                                    int32_t nbOutputs) noexcept {
  return guarded("onShapeChange", -1, [&] {
    std::string e = check_count(nbInputs, nbOutputs);
    if (e.empty() && (in == nullptr || out == nullptr)) e = "null tensor descriptions";
    if (e.empty()) {
      std::vector<TensorView> vin, vout;
      for (int32_t i = 0; i < nbInputs; ++i) vin.push_back({in[i].type, in[i].format, in[i].dims});
      vout.push_back({out[0].type, out[0].format, out[0].dims});
      e = check_io(vin.data(), nbInputs, vout.data(), nbOutputs);
    }
    if (e.empty()) return 0;
    report_error("onShapeChange: " + e);
    return -1;
  });
}

int32_t VQGemmPlugin::enqueue(const PluginTensorDesc* inputDesc, const PluginTensorDesc*,
                              const void* const* inputs, void* const* outputs, void* workspace,
                              cudaStream_t stream) noexcept {
  return guarded("enqueue", -1, [&] {
    auto fail = [](const std::string& e) {
      report_error("enqueue: " + e);
      return -1;
    };
    if (inputDesc == nullptr || inputs == nullptr || outputs == nullptr) return fail("null arguments");
    const Dims& xd = inputDesc[0].dims;
    DType xt;
    if (!x_type_ok(inputDesc[0].type) || !vq_type(inputDesc[0].type, &xt))
      return fail("X must be kFLOAT, kHALF or kBF16, got " + type_str(inputDesc[0].type));
    if (xd.nbDims != 2 && xd.nbDims != 3) return fail("X must have rank 2 or 3, got " + dims_str(xd));
    int64_t M = 1;
    for (int32_t i = 0; i + 1 < xd.nbDims; ++i) {
      if (xd.d[i] < 0 || (xd.d[i] > 0 && M > INT64_MAX / xd.d[i])) return fail("X has shape " + dims_str(xd));
      M *= xd.d[i];
    }
    // The weight inputs follow X in weight_input_specs order (optional groups compacted).
    const VQGemmDesc w = describe_weight_inputs(config_.dims, inputs + 1);
    // TensorRT allocated getWorkspaceSize() for the profile's largest X; workspace_size grows with
    // the row count, so the size for this M is what the kernels may use of it.
    const size_t ws = cuda::workspace_size(config_.dims, M, xt);
    const cudaError_t status = cuda::vq_gemm(w, xt, inputs[0], M, outputs[0], workspace, ws, stream);
    if (status != cudaSuccess)
      return fail(std::string("vq_gemm failed: ") + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
    return 0;
  });
}

nvinfer1::IPluginV3* VQGemmPlugin::attachToContext(nvinfer1::IPluginResourceContext*) noexcept {
  // No per-context resources: every execution context gets its own copy.
  return clone();
}

const nvinfer1::PluginFieldCollection* VQGemmPlugin::getFieldsToSerialize() noexcept {
  return serialized_.collection();
}

}  // namespace vq2trt::trt
