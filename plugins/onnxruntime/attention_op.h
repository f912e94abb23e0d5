// vq2trt.CachedAttention for ONNX Runtime's CPU execution provider: GroupQueryAttention's
// decoder contract (packed q/k/v, rotary, KV cache shared with past or grown from it) computed
// by core/src/attention.cpp (docs/format.md §11). float32 only.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include "node_checks.h"

namespace vq2trt::ort {

inline constexpr const char* kAttentionOpName = "CachedAttention";

struct CachedAttentionKernel {
  CachedAttentionKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  int64_t H_ = 0, KV_ = 0;
  float scale_ = 0.f;
};

OrtStatusPtr infer_attention_shape(const OrtCustomOp*, OrtShapeInferContext* ctx) noexcept;

struct CachedAttentionOp : Ort::CustomOpBase<CachedAttentionOp, CachedAttentionKernel, /*WithStatus=*/true> {
  CachedAttentionOp() { OrtCustomOp::InferOutputShapeFn = infer_attention_shape; }
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    return status_of([&] { *kernel = new CachedAttentionKernel(api, info); });
  }
  const char* GetName() const { return kAttentionOpName; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  // qkv, past_key, past_value, seqlens_k, total_sequence_length, cos_cache, sin_cache, position_ids
  size_t GetInputTypeCount() const { return 8; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i == 3 || i == 4 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32
           : i == 7         ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64
                            : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i == 7 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 3; }  // output, present_key, present_value
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace vq2trt::ort
