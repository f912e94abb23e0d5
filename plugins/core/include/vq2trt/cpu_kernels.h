// CPU VQGemm: Y[M, N] = X[M, K] · dequant(W)ᵀ + bias, from a prepacked weight.
// Prepacking (float / int8 lookup tables, padded to 2^b entries so that no index value can read
// out of bounds) is done once per weight; computing needs only the prepacked object.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "vq2trt/format.h"

namespace vq2trt {

// Runs fn(arg, i) for every i < n_tasks, possibly concurrently. A default-constructed
// ParallelFor (run == nullptr) runs the tasks serially.
struct ParallelFor {
  using TaskFn = void (*)(void* arg, size_t task);
  void (*run)(void* ctx, TaskFn fn, size_t n_tasks, void* arg) = nullptr;
  void* ctx = nullptr;
  void operator()(TaskFn fn, size_t n_tasks, void* arg) const;
};

// Instruction sets a kernel may use; detect_isa() asks the CPU at run time. kNeon is the
// aarch64 build's (ARMv8-A Advanced SIMD); x86 builds never report it, ARM builds never AVX.
// kAvxVnni is AVX2 plus AVX-VNNI (vpdpbusd on 256-bit registers: Intel's Alder Lake and later
// client cores, which have no AVX-512, and Zen 5): ranked between kAvx2 and kAvx512, but an
// AVX-512 CPU without it (Zen 4) serves a kAvxVnni request as kAvx2.
enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 /* F, BW, VL, VBMI, VNNI */, kNeon = 3, kAvxVnni = 4 };
Isa detect_isa();
// The ISA prepack() uses for a request: at most detect_isa(), and this build's best for a
// request of the other architecture.
Isa native_isa(Isa wanted);
// Whether AVX2 decode (M <= 8) takes 256/512-entry tables on the int8 route, by vpgatherdd: not on
// AMD (microcoded gathers before Zen 4) unless VQ2TRT_GATHER=1; VQ2TRT_GATHER=0 turns it off.
bool avx2_gather_is_fast();
const char* isa_name(Isa isa);

struct Prepacked;  // opaque: parts, lookup tables, permuted scales
struct PrepackedDeleter { void operator()(Prepacked* p) const; };
using PrepackedPtr = std::unique_ptr<Prepacked, PrepackedDeleter>;

// accuracy_level 0: float32 arithmetic throughout. 4: parts with k <= 256 may round the
// activations (per 256-column block) and the codebooks (per component, centred) to int8, on
// AVX-512 VNNI, at every M (decode and prefill), except the first 64 permuted columns (the most
// salient), which stay float32. On AVX2-only CPUs the int8 route covers parts with k <= 16
// (vpshufb tables; with AVX-VNNI, vpdpbusd on them), v = 4 parts with k <= 256 and v = 3 parts with k <= 512 (gathers in decode,
// int16 tiles with vpmaddwd in prefill), at every M; NEON stays float32. `isa` caps the
// instruction set (tests compare every level against the scalar path).
// The weight must have passed validate_dims; the data need not be validated for memory
// safety (indices are masked to their bit width and tables padded), only for correct results.
PrepackedPtr prepack(const VQGemmDesc& w, int accuracy_level, Isa isa = detect_isa());

// X [M, K] and Y [M, N] row-major in x_type (kFloat32, kFloat16 or kBFloat16).
void vq_gemm(const Prepacked& p, DType x_type, const void* x, int64_t M, void* y,
             const ParallelFor& parallel = ParallelFor());

// Several weights that read the same X (a layer's q, k and v, or gate and up) in one call:
// Y [M, ΣN] holds each weight's outputs side by side, in order, each as vq_gemm computes them
// (same bytes). Each weight's X preparation is its own (their permutations differ); what is
// shared is the thread-pool dispatch: all weights' row tasks go out as one task list. The
// weights must have the same K.
void vq_gemm_multi(const Prepacked* const* ps, size_t count, DType x_type, const void* x, int64_t M, void* y,
                   const ParallelFor& parallel = ParallelFor());
// The same with each weight's outputs in a tensor of its own: ys[w] is [M, N_w].
void vq_gemm_multi(const Prepacked* const* ps, size_t count, DType x_type, const void* x, int64_t M,
                   void* const* ys, const ParallelFor& parallel = ParallelFor());

// The scalar reference written from docs/format.md §5, accumulated in double; Y float32 [M, N].
void vq_gemm_reference(const VQGemmDesc& w, const float* x, int64_t M, float* y);

}  // namespace vq2trt
