// vq2trt.CachedAttention (see attention_op.h): attributes at kernel creation, every call's shapes
// and values (seqlens, positions) checked before the core reads a byte.
#include "attention_op.h"

#include <cmath>
#include <string>
#include <vector>

#include "vq2trt/attention.h"

namespace vq2trt::ort {
namespace {

[[noreturn]] void bad(const std::string& what) { fail(std::string(kAttentionOpName) + ": " + what); }

void run_on_pool(void* ctx, ParallelFor::TaskFn fn, size_t n_tasks, void* arg) {
  Ort::KernelContext(static_cast<OrtKernelContext*>(ctx)).ParallelFor(fn, n_tasks, 0, arg);
}

}  // namespace

CachedAttentionKernel::CachedAttentionKernel(const OrtApi& api, const OrtKernelInfo* info) {
  auto get_int = [&](const char* name) {
    int64_t v = 0;
    if (OrtStatus* s = api.KernelInfoGetAttribute_int64(info, name, &v)) {
      api.ReleaseStatus(s);
      bad(std::string("missing INT attribute '") + name + "'");
    }
    return v;
  };
  H_ = get_int("num_heads");
  KV_ = get_int("kv_num_heads");
  if (H_ <= 0 || KV_ <= 0 || H_ % KV_ != 0)
    bad("num_heads (" + std::to_string(H_) + ") must be a positive multiple of kv_num_heads (" +
        std::to_string(KV_) + ")");
  if (OrtStatus* s = api.KernelInfoGetAttribute_float(info, "scale", &scale_)) {
    api.ReleaseStatus(s);
    scale_ = 0.f;
  }
  if (!(scale_ >= 0.f) || !std::isfinite(scale_)) bad("scale must be finite and >= 0 (0: 1/sqrt(head size))");
}

OrtStatusPtr CachedAttentionKernel::ComputeV2(OrtKernelContext* context) {
  return status_of([&] {
    Ort::KernelContext ctx(context);
    std::vector<Ort::ConstValue> in;
    std::vector<std::vector<int64_t>> shape;
    static const char* names[] = {"qkv", "past_key", "past_value", "seqlens_k", "total_sequence_length",
                                  "cos_cache", "sin_cache", "position_ids"};
    for (size_t i = 0; i < 8; ++i) {
      in.push_back(ctx.GetInput(i));
      if (!in.back() && i < 7) bad(std::string("input ") + std::to_string(i) + " (" + names[i] + ") is missing");
      shape.push_back(in.back() ? in.back().GetTensorTypeAndShapeInfo().GetShape() : std::vector<int64_t>{});
    }
    const auto& q = shape[0];
    if (q.size() != 3) bad("qkv must be [batch, sequence, (num_heads + 2 kv_num_heads) * head_size], got " + shape_str(q));
    const int64_t B = q[0], S = q[1], width = q[2];
    if (width % (H_ + 2 * KV_) != 0 || (width / (H_ + 2 * KV_)) % 2 != 0)
      bad("qkv's last dimension " + std::to_string(width) + " must be (num_heads + 2 kv_num_heads) = " +
          std::to_string(H_ + 2 * KV_) + " times an even head size");
    const int64_t D = width / (H_ + 2 * KV_);
    for (int i = 1; i <= 2; ++i) {
      const auto& p = shape[size_t(i)];
      if (p.size() != 4 || p[0] != B || p[1] != KV_ || p[3] != D)
        bad(std::string(names[i]) + " must be [" + std::to_string(B) + ", " + std::to_string(KV_) + ", past, " +
            std::to_string(D) + "], got " + shape_str(p));
    }
    if (shape[1] != shape[2]) bad("past_key " + shape_str(shape[1]) + " and past_value " + shape_str(shape[2]) + " differ");
    if (shape[3].size() != 1 || shape[3][0] != B) bad("seqlens_k must be [" + std::to_string(B) + "], got " + shape_str(shape[3]));
    const int64_t elems = [&] { int64_t n = 1; for (int64_t d : shape[4]) n *= d; return n; }();
    if (elems != 1) bad("total_sequence_length must hold one value, got shape " + shape_str(shape[4]));
    for (int i = 5; i <= 6; ++i)
      if (shape[size_t(i)].size() != 2 || shape[size_t(i)][1] != D / 2)
        bad(std::string(names[i]) + " must be [positions, " + std::to_string(D / 2) + "], got " + shape_str(shape[size_t(i)]));
    if (shape[5] != shape[6]) bad("cos_cache " + shape_str(shape[5]) + " and sin_cache " + shape_str(shape[6]) + " differ");
    const bool has_pos = bool(in[7]);
    if (has_pos && (shape[7].size() != 2 || shape[7][0] != B || shape[7][1] != S))
      bad("position_ids must be [" + std::to_string(B) + ", " + std::to_string(S) + "], got " + shape_str(shape[7]));
    AttentionShape s;
    s.B = B, s.S = S, s.H = H_, s.KV = KV_, s.D = D;
    s.past_len = shape[1][2];
    s.total = in[4].GetTensorData<int32_t>()[0];
    s.present_len = std::max(s.total, s.past_len);
    s.rotary_rows = shape[5][0];
    if (s.total < S) bad("total_sequence_length " + std::to_string(s.total) + " is less than the " + std::to_string(S) +
                         " new tokens");
    const int32_t* seqlens = in[3].GetTensorData<int32_t>();
    const int64_t* pos = has_pos ? in[7].GetTensorData<int64_t>() : nullptr;
    const std::string e = attention_error(s, seqlens, pos);
    if (!e.empty()) bad(e);
    const std::vector<int64_t> out_shape{B, S, H_ * D}, cache{B, KV_, s.present_len, D};
    float* out = ctx.GetOutput(0, out_shape).GetTensorMutableData<float>();
    float* pk = ctx.GetOutput(1, cache).GetTensorMutableData<float>();
    float* pv = ctx.GetOutput(2, cache).GetTensorMutableData<float>();
    ParallelFor par;
    par.run = run_on_pool;
    par.ctx = ctx.GetOrtKernelContext();
    cached_attention(s, in[0].GetTensorData<float>(), in[1].GetTensorData<float>(), in[2].GetTensorData<float>(), pk,
                     pv, seqlens, pos, in[5].GetTensorData<float>(), in[6].GetTensorData<float>(),
                     scale_ > 0.f ? scale_ : 1.f / std::sqrt(float(D)), out, par);
  });
}

OrtStatusPtr infer_attention_shape(const OrtCustomOp*, OrtShapeInferContext* ctx) noexcept {
  return status_of([&] {
    const OrtApi& api = Ort::GetApi();
    std::vector<InputInfo> in;
    std::vector<std::string> x_symbols;
    infer_inputs(ctx, &in, &x_symbols);
    if (in.size() < 3 || in[0].shape.size() != 3) return;  // checked at run time
    const OrtOpAttr* attr = nullptr;
    int64_t H = 0;
    size_t len = 0;
    OrtStatus* st = api.ShapeInferContext_GetAttribute(ctx, "num_heads", &attr);
    if (!st && attr) st = api.ReadOpAttr(attr, ORT_OP_ATTR_INT, &H, sizeof(H), &len);
    if (st) {
      api.ReleaseStatus(st);
      return;
    }
    int64_t KV = in[1].shape.size() == 4 ? in[1].shape[1] : -1;
    const int64_t width = in[0].shape[2];
    const int64_t D = width > 0 && KV > 0 ? width / (H + 2 * KV) : -1;
    OrtTensorTypeAndShapeInfo* out = nullptr;
    Ort::ThrowOnError(api.CreateTensorTypeAndShapeInfo(&out));
    Ort::TensorTypeAndShapeInfo owned(out);
    Ort::ThrowOnError(api.SetTensorElementType(out, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT));
    const std::vector<int64_t> y{in[0].shape[0], in[0].shape[1], D > 0 ? H * D : -1};
    std::vector<const char*> sym;
    for (size_t i = 0; i < 2 && i < x_symbols.size(); ++i) sym.push_back(x_symbols[i].c_str());
    sym.push_back(D > 0 ? "" : "attention_out");
    Ort::ThrowOnError(api.SetDimensions(out, y.data(), y.size()));
    if (sym.size() == 3) Ort::ThrowOnError(api.SetSymbolicDimensions(out, sym.data(), sym.size()));
    Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, 0, out));
    const std::vector<int64_t> c{in[0].shape[0], KV, -1, D};
    std::vector<const char*> csym{sym.empty() ? "" : sym[0], "", "present_sequence_length", ""};
    Ort::ThrowOnError(api.SetDimensions(out, c.data(), c.size()));
    Ort::ThrowOnError(api.SetSymbolicDimensions(out, csym.data(), csym.size()));
    for (size_t o = 1; o <= 2; ++o) Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, o, out));
  }, "");
}

}  // namespace vq2trt::ort
