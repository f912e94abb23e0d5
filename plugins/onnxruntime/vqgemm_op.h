// vq2trt.VQGemm for ONNX Runtime's CPU execution provider (ORT C++ API, status-returning kernel).
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include "node_checks.h"
#include "vq2trt/cpu_kernels.h"
#include "vq2trt/format.h"

namespace vq2trt::ort {

struct VQGemmKernel {
  VQGemmKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  void Compute(Ort::KernelContext& ctx);
  std::shared_ptr<const Prepacked> weight(const VQGemmDesc& desc, const std::vector<const void*>& key);
  // The prepacked initializer weight if the call's weight inputs are the buffers it came from, else null.
  std::shared_ptr<const Prepacked> cached_weight(Ort::KernelContext& ctx);

  VQGemmDims dims_;
  int accuracy_level_ = 0;
  bool constant_weights_ = false;  // initializers: their buffers live as long as the session
  std::mutex mutex_;               // sessions may run concurrently
  std::vector<const void*> key_;   // data pointers (and sizes) the cached weight was built from
  std::shared_ptr<const Prepacked> cached_;
};

struct VQGemmOp : VQGemmOpBase<VQGemmOp, VQGemmKernel> {
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
};

}  // namespace vq2trt::ort
