// The VQGemm plugin creator (name "VQGemm", version "1", namespace "": vq2trt/op_schema.h), and a
// factory for programs that drive the plugin directly (GPU harnesses, tests) without libnvinfer.
#pragma once

#include <NvInferRuntime.h>

#include <memory>
#include <string>

#include "fields.h"
#include "plugin.h"

namespace vq2trt::trt {

class VQGemmPluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  VQGemmPluginCreator() = default;

  // Validates the fields (fields.h) in both phases: a serialized engine is untrusted input too.
  // Returns nullptr and reports why on bad fields.
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override;
  const char* getPluginName() const noexcept override;
  const char* getPluginVersion() const noexcept override;
  const char* getPluginNamespace() const noexcept override;
};

// Builds a plugin from a config the way TensorRT would: serializes it to fields and hands them to
// VQGemmPluginCreator::createPlugin. nullptr (and *error set, when given) for an invalid config.
std::unique_ptr<VQGemmPlugin> create_plugin(const VQGemmConfig& config,
                                            nvinfer1::TensorRTPhase phase = nvinfer1::TensorRTPhase::kBUILD,
                                            std::string* error = nullptr);

}  // namespace vq2trt::trt
