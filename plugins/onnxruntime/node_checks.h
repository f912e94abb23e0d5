// What the CPU and CUDA VQGemm ops share: reading the node's attributes, checking its inputs
// against them (at session creation and on every call), shape inference, the input type table,
// and describing the weight inputs as a VQGemmDesc. Errors are thrown as Ort::Exception.
#pragma once

#include <string>
#include <vector>

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include "vq2trt/format.h"
#include "vq2trt/op_schema.h"

namespace vq2trt::ort {

struct InputInfo {
  ONNXTensorElementDataType type;
  std::vector<int64_t> shape;  // -1: unknown (shape inference only)
  // False before any call when the graph does not know the rank (ORT reports no dimensions, as
  // for a scalar): e.g. X from a Reshape whose shape is a runtime tensor. Checked on each call.
  bool known = true;
};

[[noreturn]] void fail(const std::string& msg, OrtErrorCode code = ORT_INVALID_ARGUMENT);
// "[2, ?, 576]": a shape in error messages (-1: unknown).
std::string shape_str(const std::vector<int64_t>& s);
OrtStatusPtr to_status(OrtErrorCode code, const char* msg);

// Calls fn() and turns what it throws into an OrtStatus (nullptr on success). Shape inference
// passes prefix "" (ORT reads a failure there as a warning at most, and names no op).
template <typename Fn>
OrtStatusPtr status_of(Fn&& fn, const char* prefix = "VQGemm: ") noexcept {
  try {
    fn();
    return nullptr;
  } catch (const Ort::Exception& e) {
    return to_status(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return to_status(ORT_FAIL, (std::string(prefix) + e.what()).c_str());
  }
}

// The node's attributes (kernel construction): dims, accuracy_level and plugin_version checked.
void read_kernel_attributes(const OrtApi& api, const OrtKernelInfo* info, VQGemmDims* dims, int* accuracy_level);
// The node's input types and shapes as the kernel info states them (before any call).
std::vector<InputInfo> kernel_input_infos(const OrtKernelInfo* info);
// The node's inputs against what the attributes call for (count, dtypes, shapes, X's last dim).
void check_inputs(const VQGemmDims& d, const std::vector<InputInfo>& in);
// X alone (dtype, last dimension), for calls whose weight inputs were checked at session creation.
void check_x(const VQGemmDims& d, const InputInfo& x);
// A call's inputs: values (X first) and their types/shapes, checked against the attributes.
void call_inputs(Ort::KernelContext& ctx, const VQGemmDims& d, std::vector<Ort::ConstValue>* values,
                 std::vector<InputInfo>* infos);
// The weight inputs values[first...] (in weight_input_specs order) as a VQGemmDesc; their data
// pointers are appended to *key (a cache key: same pointers, same weight).
VQGemmDesc describe(const VQGemmDims& d, const std::vector<Ort::ConstValue>& values, size_t first,
                    std::vector<const void*>* key);
DType x_dtype(ONNXTensorElementDataType t);
// Allocates Y = X's shape with the last dim N; *rows = the product of X's leading dims.
Ort::UnownedValue output(Ort::KernelContext& ctx, std::vector<int64_t> x_shape, int64_t N, int64_t* rows);

// Shape inference's view of the node's inputs: type and shape of each (known: the rank is), and
// X's symbolic dimensions (ORT reads a bare -1 in an output shape as a value, not as unknown).
void infer_inputs(OrtShapeInferContext* ctx, std::vector<InputInfo>* in, std::vector<std::string>* x_symbols);
// Shape and dtype inference, shared by both ops (OrtCustomOp::InferOutputShapeFn).
OrtStatusPtr infer_shape(const OrtCustomOp*, OrtShapeInferContext* ctx) noexcept;
// Input type table: X and the optional inputs are typed per node.
ONNXTensorElementDataType input_type(size_t index);
OrtCustomOpInputOutputCharacteristic input_characteristic(size_t index);

// Everything the CPU and CUDA ops declare alike (name, input/output table, shape inference,
// kernel creation); each op adds only its execution provider.
template <typename Op, typename Kernel>
struct VQGemmOpBase : Ort::CustomOpBase<Op, Kernel, /*WithStatus=*/true> {
  VQGemmOpBase() { OrtCustomOp::InferOutputShapeFn = infer_shape; }
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    return status_of([&] { *kernel = new Kernel(api, info); });
  }
  const char* GetName() const { return kOpName; }
  size_t GetInputTypeCount() const { return kNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const { return input_type(index); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return input_characteristic(index);
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; }
};

}  // namespace vq2trt::ort
