// The small per-layer operations that sit between a decoder layer's projections, done inside a
// VQGemmMulti node (docs/format.md §10) so that they cost no node of their own: the RMS
// normalisation (with the residual add) before q/k/v and gate/up, and SwiGLU after gate/up.
// At batch 1 on a 2-core CPU each such ONNX Runtime node cost 10-20 µs, most of it dispatch.
#pragma once

#include <cstdint>

#include "vq2trt/cpu_kernels.h"
#include "vq2trt/format.h"

namespace vq2trt {

// s = x + skip (skip may be null: s = x); y = s / sqrt(mean(s²) + eps) · gamma over the last axis,
// as ONNX RMSNormalization (stash_type 1) and ONNX Runtime's SkipSimplifiedLayerNormalization
// compute it: in float32 whatever t is, with s rounded to t before it is normalised. x, skip, y
// and sum (or null) are [M, K] in t; gamma [K] in t.
void rms_norm(DType t, const void* x, const void* skip, const void* gamma, float eps, int64_t M, int64_t K, void* y,
              void* sum, const ParallelFor& parallel = ParallelFor());

// y = silu(g) · u elementwise, g, u and y [M, N] in t, computed in float32. The AVX2 form (isa
// AVX2 or better) uses a polynomial exp (~2 ulp) instead of the C library's.
void silu_mul(DType t, const void* g, const void* u, int64_t M, int64_t N, void* y, Isa isa = detect_isa(),
              const ParallelFor& parallel = ParallelFor());

}  // namespace vq2trt
