// Causal attention over a KV cache with rotary positions, as ONNX Runtime's
// com.microsoft.GroupQueryAttention computes it for a decoder (packed q/k/v, rotate-half rotary
// over the whole head, grouped KV heads), for the vq2trt.CachedAttention op (docs/format.md §11).
// At batch 1 on a 2-core CPU, ORT's kernel took 30-45 µs per decode step and layer for SmolLM2's
// 9 x 64 heads, most of it per-head GEMM calls and thread-pool hand-offs; the work is ~0.2 M
// multiply-adds.
#pragma once

#include <cstdint>
#include <string>

#include "vq2trt/cpu_kernels.h"

namespace vq2trt {

struct AttentionShape {
  int64_t B = 0, S = 0;     // batch, new tokens this call
  int64_t H = 0, KV = 0, D = 0;  // query heads, KV heads (H a multiple), head size (even)
  int64_t past_len = 0;     // past_key's dim 2 (rows of cache passed in)
  int64_t present_len = 0;  // present_key's dim 2: max(total, past_len)
  int64_t total = 0;        // total_sequence_length
  int64_t rotary_rows = 0;  // rows of the cos / sin tables ([rows, D / 2])
};

// qkv [B, S, (H + 2 KV) · D]; past_k/v [B, KV, past_len, D]; present_k/v [B, KV, present_len, D]
// (may be past_k/v themselves: the shared-buffer form ORT GenAI binds); seqlens_k [B]: each row's
// valid length - 1 after this call; pos [B, S] positions (null: from seqlens_k); out [B, S, H · D].
// A first prompt (S == total) starts every row at position 0; otherwise row b's S new tokens
// follow its seqlens_k[b] + 1 - S cached ones. The caller has checked shapes and that positions
// lie inside the rotary tables (attention_error).
void cached_attention(const AttentionShape& s, const float* qkv, const float* past_k, const float* past_v,
                      float* present_k, float* present_v, const int32_t* seqlens_k, const int64_t* pos,
                      const float* cos, const float* sin, float scale, float* out,
                      const ParallelFor& parallel = ParallelFor());

// "" when the call is in range (seqlens, positions, cache rows), else what is wrong.
std::string attention_error(const AttentionShape& s, const int32_t* seqlens_k, const int64_t* pos);

}  // namespace vq2trt
