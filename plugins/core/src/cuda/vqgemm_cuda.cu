// Placeholder while the kernels are written: every entry point reports "not supported".
#include "vq2trt/cuda_kernels.h"

namespace vq2trt::cuda {

size_t workspace_size(const VQGemmDims&, int64_t, DType) { return 0; }

cudaError_t vq_gemm(const VQGemmDesc&, DType, const void*, int64_t, void*, void*, size_t, cudaStream_t) {
  return cudaErrorNotSupported;
}

std::string validate_device_data(const VQGemmDesc&, cudaStream_t) { return "not implemented"; }

}  // namespace vq2trt::cuda
