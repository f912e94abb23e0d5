// vq2trt.VQGemm for ONNX Runtime's CUDA EP. Inputs (weights included: ORT copies initializers to
// the device) are device buffers; the kernel runs on ORT's compute stream with a workspace from
// ORT's CUDA allocator. Each weight's data is validated once (a device-to-host copy), keyed on its
// device pointers; the kernels clamp indices, so even unvalidated data cannot read out of bounds.
#include "vqgemm_cuda_op.h"

#include <memory>
#include <string>

#include "node_checks.h"
#include "vq2trt/cuda_kernels.h"
#include "vq2trt/op_schema.h"

namespace vq2trt::ort {

VQGemmCudaKernel::VQGemmCudaKernel(const OrtApi& api, const OrtKernelInfo* info) {
  int accuracy_level = 0;  // the CUDA kernels always accumulate in float32; the level is CPU-only
  read_kernel_attributes(api, info, &dims_, &accuracy_level);
  check_inputs(dims_, kernel_input_infos(info));
}

void VQGemmCudaKernel::Compute(Ort::KernelContext& ctx) {
  std::vector<InputInfo> in;
  std::vector<Ort::ConstValue> values;
  call_inputs(ctx, dims_, &values, &in);
  std::vector<const void*> key;
  const VQGemmDesc w = describe(dims_, values, 1, &key);
  auto stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (checked_ != key) {
      const std::string e = cuda::validate_device_data(w, stream);
      if (!e.empty()) fail(e);
      checked_ = key;
    }
  }
  int64_t M = 0;
  Ort::UnownedValue y = output(ctx, in[0].shape, dims_.N, &M);
  if (M == 0) return;
  const DType xt = x_dtype(in[0].type);
  const size_t bytes = cuda::workspace_size(dims_, M, xt);
  // Freed right after the launch: ORT's arena hands it out again only to work on this same
  // stream, which runs after this kernel.
  const Ort::MemoryInfo mem("Cuda", OrtArenaAllocator, values[0].GetTensorMemoryInfo().GetDeviceId(),
                            OrtMemTypeDefault);
  std::unique_ptr<OrtAllocator, void (*)(OrtAllocator*)> alloc(
      ctx.GetAllocator(*mem), [](OrtAllocator* a) { Ort::GetApi().ReleaseAllocator(a); });
  void* ws = bytes ? alloc->Alloc(alloc.get(), bytes) : nullptr;
  if (bytes && !ws) fail("could not allocate " + std::to_string(bytes) + " bytes of CUDA workspace", ORT_FAIL);
  const cudaError_t e = cuda::vq_gemm(w, xt, values[0].GetTensorRawData(), M, y.GetTensorMutableRawData(), ws,
                                      bytes, stream);
  if (ws) alloc->Free(alloc.get(), ws);
  if (e != cudaSuccess) fail(std::string("CUDA kernel launch failed: ") + cudaGetErrorString(e), ORT_FAIL);
}

OrtStatusPtr VQGemmCudaKernel::ComputeV2(OrtKernelContext* context) {
  return status_of([&] {
    Ort::KernelContext ctx(context);
    Compute(ctx);
  });
}

}  // namespace vq2trt::ort
