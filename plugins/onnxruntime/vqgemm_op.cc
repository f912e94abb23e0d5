// vq2trt.VQGemm on ONNX Runtime's CPU EP: checks the node against its attributes, validates and
// prepacks each weight once (cached on its data pointers), then runs the core CPU kernel on ORT's
// thread pool.
#include "vqgemm_op.h"

#include <string>

#include "node_checks.h"
#include "vq2trt/op_schema.h"

namespace vq2trt::ort {
namespace {

void run_on_ort_pool(void* ctx, ParallelFor::TaskFn fn, size_t n_tasks, void* arg) {
  Ort::KernelContext(static_cast<OrtKernelContext*>(ctx)).ParallelFor(fn, n_tasks, 0, arg);
}

}  // namespace

VQGemmKernel::VQGemmKernel(const OrtApi& api, const OrtKernelInfo* info) {
  read_kernel_attributes(api, info, &dims_, &accuracy_level_);
  // Node inputs against the attributes now, so that a bad node fails session creation.
  check_inputs(dims_, kernel_input_infos(info));
  // Weights that are initializers: validate and prepack once, here (errors fail the session).
  Ort::ConstKernelInfo ki(info);
  std::vector<Ort::ConstValue> weights;
  constant_weights_ = true;
  for (size_t i = 1; i < ki.GetInputCount() && constant_weights_; ++i) {
    int is_constant = 0;
    weights.push_back(ki.GetTensorConstantInput(i, &is_constant));
    constant_weights_ = is_constant != 0;
  }
  if (constant_weights_) {
    std::vector<const void*> key;
    const VQGemmDesc desc = describe(dims_, weights, 0, &key);
    weight(desc, key);
  }
}

std::shared_ptr<const Prepacked> VQGemmKernel::weight(const VQGemmDesc& desc, const std::vector<const void*>& key) {
  if (constant_weights_) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (cached_ && key_ == key) return cached_;
  }
  // Scanning every index costs as much as one GEMV, so constant weights pay it once.
  const std::string e = validate_data(desc);
  if (!e.empty()) fail(e);
  std::shared_ptr<const Prepacked> p(prepack(desc, accuracy_level_).release(), PrepackedDeleter());
  if (constant_weights_) {
    std::lock_guard<std::mutex> lock(mutex_);
    key_ = key;
    cached_ = p;
  }
  return p;
}

void VQGemmKernel::Compute(Ort::KernelContext& ctx) {
  std::vector<InputInfo> in;
  std::vector<Ort::ConstValue> values;
  call_inputs(ctx, dims_, &values, &in);
  std::vector<const void*> key;
  const VQGemmDesc w = describe(dims_, values, 1, &key);
  std::shared_ptr<const Prepacked> packed = weight(w, key);
  int64_t M = 0;
  Ort::UnownedValue y = output(ctx, in[0].shape, dims_.N, &M);
  if (M == 0) return;
  const DType xt = x_dtype(in[0].type);
  ParallelFor par;
  par.run = run_on_ort_pool;
  par.ctx = ctx.GetOrtKernelContext();
  vq_gemm(*packed, xt, values[0].GetTensorRawData(), M, y.GetTensorMutableRawData(), par);
}

OrtStatusPtr VQGemmKernel::ComputeV2(OrtKernelContext* context) {
  return status_of([&] {
    Ort::KernelContext ctx(context);
    Compute(ctx);
  });
}

}  // namespace vq2trt::ort
