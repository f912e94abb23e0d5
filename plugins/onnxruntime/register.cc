// The library's only exported symbol (see exports.map): ONNX Runtime calls it from
// SessionOptions.register_custom_ops_library / RegisterCustomOpsLibrary.
#include <mutex>

#include "attention_op.h"
#include "vqgemm_multi_op.h"
#include "vqgemm_op.h"
#if defined(VQ2TRT_ORT_CUDA)
#include "vqgemm_cuda_op.h"
#endif
#include "vq2trt/op_schema.h"

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  // Built against the 1.21 headers; newer runtimes still serve this API version.
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return nullptr;  // cannot even report: an older runtime than the headers
  Ort::InitApi(api);
  try {
    // Sessions keep pointers to the domain and op, so both live as long as the library: they
    // are never freed (a static destructor could run after ONNX Runtime itself is gone).
    static Ort::CustomOpDomain* domain = nullptr;
    static std::once_flag once;
    std::call_once(once, [] {
      static vq2trt::ort::VQGemmOp op;
      domain = new Ort::CustomOpDomain(vq2trt::kDomain);
      domain->Add(&op);
      static vq2trt::ort::VQGemmMultiOp multi_op;  // CPU only: see vqgemm_multi_op.h
      domain->Add(&multi_op);
      static vq2trt::ort::CachedAttentionOp attention_op;  // CPU only
      domain->Add(&attention_op);
#if defined(VQ2TRT_ORT_CUDA)
      // Same name, other provider: ORT picks the kernel of the EP the node is assigned to.
      static vq2trt::ort::VQGemmCudaOp cuda_op;
      domain->Add(&cuda_op);
#endif
    });
    Ort::UnownedSessionOptions(options).Add(*domain);
    return nullptr;
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
}
