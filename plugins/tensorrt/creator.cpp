// VQGemmPluginCreator and create_plugin (see creator.h).
#include "creator.h"

#include <exception>
#include <new>

#include "logging.h"
#include "vq2trt/op_schema.h"

namespace vq2trt::trt {

nvinfer1::IPluginV3* VQGemmPluginCreator::createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                                       nvinfer1::TensorRTPhase phase) noexcept {
  try {
    VQGemmConfig config;
    const std::string e = parse_fields(fc, &config);
    if (!e.empty()) {
      const bool runtime = phase == nvinfer1::TensorRTPhase::kRUNTIME;
      report_error(std::string("createPlugin(\"") + (name != nullptr ? name : "") + "\"" +
                   (runtime ? ", from a serialized engine" : "") + "): " + e);
      return nullptr;
    }
    return new VQGemmPlugin(config, getPluginNamespace());
  } catch (const std::exception& e) {
    report_error(std::string("createPlugin: ") + e.what());
  } catch (...) {
    report_error("createPlugin: unknown exception");
  }
  return nullptr;
}

const nvinfer1::PluginFieldCollection* VQGemmPluginCreator::getFieldNames() noexcept { return field_names(); }
const char* VQGemmPluginCreator::getPluginName() const noexcept { return kOpName; }
const char* VQGemmPluginCreator::getPluginVersion() const noexcept { return kPluginVersion; }
const char* VQGemmPluginCreator::getPluginNamespace() const noexcept { return ""; }

std::unique_ptr<VQGemmPlugin> create_plugin(const VQGemmConfig& config, nvinfer1::TensorRTPhase phase,
                                            std::string* error) {
  // Check first: SerializedFields narrows to int32, which only valid dims survive unchanged.
  std::string e = validate_dims(config.dims);
  if (e.empty() && (config.accuracy_level < 0 || config.accuracy_level > 4))
    e = "accuracy_level must lie in [0, 4], got " + std::to_string(config.accuracy_level);
  if (!e.empty()) {
    if (error != nullptr) *error = e;
    return nullptr;
  }
  const SerializedFields fields(config);
  VQGemmPluginCreator creator;
  nvinfer1::IPluginV3* p = creator.createPlugin("vqgemm", fields.collection(), phase);
  if (p == nullptr && error != nullptr) {
    VQGemmConfig reparsed;
    *error = parse_fields(fields.collection(), &reparsed);
    if (error->empty()) *error = "createPlugin failed (see the reported message)";
  }
  return std::unique_ptr<VQGemmPlugin>(static_cast<VQGemmPlugin*>(p));
}

}  // namespace vq2trt::trt
