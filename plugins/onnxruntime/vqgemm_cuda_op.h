// vq2trt.VQGemm on ONNX Runtime's CUDA execution provider: the core CUDA kernels on ORT's stream.
#pragma once

#include <mutex>
#include <vector>

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include "node_checks.h"
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

struct VQGemmCudaOp : VQGemmOpBase<VQGemmCudaOp, VQGemmCudaKernel> {
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
};

}  // namespace vq2trt::ort
