// vq2trt.VQGemmMulti for ONNX Runtime's CPU execution provider: several VQGemm weights that read
// one X (a layer's q, k and v, or gate and up) as one node (docs/format.md §10): one output
// Y = [X·W_0ᵀ | X·W_1ᵀ | ...] along the last axis, or one output per weight. One node and one
// thread-pool dispatch instead of one per weight; each weight's outputs are the bytes its own
// VQGemm node would give. Optionally the node also normalises X first (RMS norm, with a residual
// skip) and applies SwiGLU to a gate/up pair (multi_layer_ops.h).
#pragma once

#include <memory>
#include <vector>

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include "multi_layer_ops.h"
#include "node_checks.h"
#include "vq2trt/cpu_kernels.h"
#include "vq2trt/format.h"

namespace vq2trt::ort {

inline constexpr const char* kMultiOpName = "VQGemmMulti";

struct VQGemmMultiKernel {
  VQGemmMultiKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  std::vector<VQGemmDims> dims_;
  int64_t total_n_ = 0;
  bool separate_ = false;  // one output per weight (else one, concatenated)
  LayerOps lo_;
  std::vector<std::shared_ptr<const Prepacked>> packed_;
  std::vector<const Prepacked*> raw_;
};

OrtStatusPtr infer_multi_shape(const OrtCustomOp*, OrtShapeInferContext* ctx) noexcept;

struct VQGemmMultiOp : Ort::CustomOpBase<VQGemmMultiOp, VQGemmMultiKernel, /*WithStatus=*/true> {
  VQGemmMultiOp() { OrtCustomOp::InferOutputShapeFn = infer_multi_shape; }
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    return status_of([&] { *kernel = new VQGemmMultiKernel(api, info); });
  }
  const char* GetName() const { return kMultiOpName; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  // X, [skip, gamma,] then every weight's inputs in VQGemm's order (types differ: int32, float16,
  // float32).
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_VARIADIC;
  }
  int GetVariadicInputMinArity() const { return 3; }
  bool GetVariadicInputHomogeneity() const { return false; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
  // Y, or Y_0 .. Y_{W-1}: one per weight; then X + skip where prenorm = 2.
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t) const { return INPUT_OUTPUT_VARIADIC; }
  int GetVariadicOutputMinArity() const { return 1; }
  bool GetVariadicOutputHomogeneity() const { return true; }
};

}  // namespace vq2trt::ort
