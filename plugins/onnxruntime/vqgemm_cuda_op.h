// vq2trt.VQGemm on ONNX Runtime's CUDA execution provider: the core CUDA kernels on ORT's stream.
#pragma once

#include <mutex>
#include <vector>

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include "vq2trt/format.h"

namespace vq2trt::ort {

struct VQGemmCudaKernel {
  VQGemmCudaKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(Ort::KernelContext& ctx);

  VQGemmDims dims_;
  std::mutex mutex_;                  // sessions may run concurrently
  std::vector<const void*> checked_;  // device pointers of the weight validated last
};

struct VQGemmCudaOp : Ort::CustomOpBase<VQGemmCudaOp, VQGemmCudaKernel, /*WithStatus=*/true> {
  VQGemmCudaOp();
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const { return "VQGemm"; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  size_t GetInputTypeCount() const;
  ONNXTensorElementDataType GetInputType(size_t index) const;
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const;
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
};

}  // namespace vq2trt::ort
