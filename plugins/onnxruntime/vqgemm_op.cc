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

std::shared_ptr<const Prepacked> VQGemmKernel::cached_weight(Ort::KernelContext& ctx) {
  if (!constant_weights_ || ctx.GetInputCount() != key_.size() + 1) return nullptr;
  std::lock_guard<std::mutex> lock(mutex_);
  for (size_t i = 0; i < key_.size(); ++i)
    if (ctx.GetInput(i + 1).GetTensorRawData() != key_[i]) return nullptr;
  return cached_;
}

void VQGemmKernel::Compute(Ort::KernelContext& ctx) {
  // Initializer weights were checked and prepacked at session creation: a decode step then reads
  // only X's type and shape (the full path asked ORT for every input's, ~10 per node, 210 nodes).
  std::shared_ptr<const Prepacked> packed = cached_weight(ctx);
  InputInfo x;
  Ort::ConstValue xv = ctx.GetInput(0);
  if (packed) {
    if (!xv) fail("input 0 (X) is missing");
    auto info = xv.GetTensorTypeAndShapeInfo();
    x = {info.GetElementType(), info.GetShape()};
    check_x(dims_, x);
  } else {
    std::vector<InputInfo> in;
    std::vector<Ort::ConstValue> values;
    call_inputs(ctx, dims_, &values, &in);
    std::vector<const void*> key;
    packed = weight(describe(dims_, values, 1, &key), key);
    x = in[0];
  }
  int64_t M = 0;
  Ort::UnownedValue y = output(ctx, x.shape, dims_.N, &M);
  if (M == 0) return;
  ParallelFor par;
  par.run = run_on_ort_pool;
  par.ctx = ctx.GetOrtKernelContext();
  vq_gemm(*packed, x_dtype(x.type), xv.GetTensorRawData(), M, y.GetTensorMutableRawData(), par);
}

OrtStatusPtr VQGemmKernel::ComputeV2(OrtKernelContext* context) {
  return status_of([&] {
    Ort::KernelContext ctx(context);
    Compute(ctx);
  });
}

}  // namespace vq2trt::ort
