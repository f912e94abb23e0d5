// VQGemm as a TensorRT IPluginV3: Y = X · dequant(W)ᵀ + bias with X [M, K] or [B, S, K] and the
// weight tensors as further inputs (export/README.md). The methods are grouped by the interface
// that declares them; every override is noexcept, catches everything and reports through
// logging.h. Checks of what TensorRT or the network hand us (shapes, types, counts) return errors;
// internal invariants throw InternalError, which the override turns into a failure.
#pragma once

#include <NvInferRuntime.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "fields.h"
#include "vq2trt/format.h"

namespace vq2trt::trt {

// A broken invariant of this code (not a bad input): caught in the override and reported.
struct InternalError : std::logic_error {
  using std::logic_error::logic_error;
};

// The dtype TensorRT uses for a weight input of the given spec dtype, and back; false when the
// TensorRT type has no VQGemm counterpart.
nvinfer1::DataType trt_type(DType t);
bool vq_type(nvinfer1::DataType t, DType* out);

class VQGemmPlugin final : public nvinfer1::IPluginV3,
                           public nvinfer1::IPluginV3OneCore,
                           public nvinfer1::IPluginV3OneBuild,
                           public nvinfer1::IPluginV3OneRuntime {
 public:
  // `config` must have passed parse_fields (InternalError otherwise).
  explicit VQGemmPlugin(const VQGemmConfig& config, std::string plugin_namespace = "");
  VQGemmPlugin(const VQGemmPlugin& other);
  VQGemmPlugin& operator=(const VQGemmPlugin&) = delete;
  ~VQGemmPlugin() override = default;

  const VQGemmConfig& config() const { return config_; }
  // Inputs the node has: X, then the weight inputs of weight_input_specs(dims).
  int32_t num_inputs() const { return int32_t(specs_.size()) + 1; }
  void setPluginNamespace(const char* plugin_namespace) noexcept;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  const char* getPluginName() const noexcept override;
  const char* getPluginVersion() const noexcept override;
  const char* getPluginNamespace() const noexcept override;

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                             const nvinfer1::DataType* inputTypes, int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs,
                          const nvinfer1::DimsExprs* shapeInputs, int32_t nbShapeInputs,
                          nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                          const nvinfer1::DynamicPluginTensorDesc* out, int32_t nbOutputs) noexcept override;
  size_t getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* inputs, int32_t nbInputs,
                          const nvinfer1::DynamicPluginTensorDesc* outputs,
                          int32_t nbOutputs) const noexcept override;
  const char* getMetadataString() noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nbInputs,
                        const nvinfer1::PluginTensorDesc* out, int32_t nbOutputs) noexcept override;
  int32_t enqueue(const nvinfer1::PluginTensorDesc* inputDesc, const nvinfer1::PluginTensorDesc* outputDesc,
                  const void* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldsToSerialize() noexcept override;

 private:
  // One tensor as the checks see it; dims of -1 are not known yet.
  struct TensorView {
    nvinfer1::DataType type;
    nvinfer1::TensorFormat format;
    nvinfer1::Dims dims;
  };
  // "" when the inputs and outputs agree with the config, else why not.
  std::string check_io(const TensorView* in, int32_t nb_in, const TensorView* out, int32_t nb_out) const;
  std::string check_count(int32_t nb_in, int32_t nb_out) const;

  VQGemmConfig config_;
  std::vector<TensorSpec> specs_;
  std::string namespace_;
  std::string metadata_;
  SerializedFields serialized_;
};

}  // namespace vq2trt::trt
