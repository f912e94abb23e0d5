// vq_gemm(): per-call activation preprocessing and the parallel loop over output rows.
//
// Permutation and normalisation fold into x: with W[n, ch] = q[n, p] · scale[ch] + cbias[ch]
// (ch = perm[p]), Y[m, n] = Σ_p x'[m, p] · q[n, p] + Σ_ch x[m, ch] · cbias[ch] where
// x'[m, p] = x[m, perm[p]] · scale[perm[p]]: a per-row constant plus one primitive per part.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "internal.h"

namespace vq2trt {

void ParallelFor::operator()(TaskFn fn, size_t n_tasks, void* arg) const {
  if (run && n_tasks > 1) {
    run(ctx, fn, n_tasks, arg);
  } else {
    for (size_t i = 0; i < n_tasks; ++i) fn(arg, i);
  }
}

namespace {

// Up to this many activation rows the int8 route runs the decode kernels (a lookup per output
// row and activation row); beyond, the prefill kernels (lookups once per output row, reused by
// every activation row: prefill_int8_avx512.cpp, and prefill_int8_avx2.cpp for v = 3 and 4).
constexpr int64_t kMaxInt8Rows = 8;

struct Call {
  const Prepacked* p;
  int64_t M, row_block;
  const float* xp;            // [M, K]
  const int8_t* xq;           // [M, xq_bytes]
  const float* sx;            // [M, xq_blocks]
  const float* corr;          // [M, segments]
  const float* xsum;          // [M, segments]: Σ x' over the segment, float32
  const int16_t* x16;         // xq widened (AVX2 prefill: widen_pairs' blocks of kX16Rows rows), or null
  bool use_int8;              // xq, sx, corr, xsum (and x16) are there: some part takes the int8 route
  const float* rowconst;      // [M]: Σ_ch x[m, ch] · cbias[ch], or 0
  const int16_t* x16h;        // the heads' 14-bit x (AVX2 prefill; x16's layout), or null
  const float* sxh;           // [M, wide]: its scale per row and head range
  const float* xsumh;         // [M, wide]: Σ x' over the head range
  const int8_t* xq4;          // Dense4 decode: x' at int8 per block [M, blocks · 32], or null
  const float* sv4;           // [M, blocks, 8]: dense4_gemv's sv
  const int16_t* xh4;         // [M, head_cols]: x' over Dense4's head columns at 16 bits
  const float* xhsum4;        // [M, 2]: its exact sum, the 16 bits' scale
  const int16_t* xh16;        // [M, 128]: x' over [0, head16_cols) at 14 bits (Part::h16tab heads), or null
  const float* sxh16;         // [M]: its scale
  float* y;                   // [M, N]
};

// Decode on AVX2 without fast gathers: 256/512-entry parts take the float kernel (x' is there
// at every level) instead of decode_int8_avx2.cpp; prefill keeps its int16 tiles. With fast
// gathers (Intel), 512-entry parts (v3-k512) still take it: 2.9x the gather kernel's speed at
// M = 1 on an AVX-512 Intel Xeon capped to AVX2 (RESULTS.md, 16th session).
bool int8_route(const Prepacked& p, const Part& q, int64_t M) {
  const bool decode_float = p.isa == Isa::kAvx2 && M <= kMaxInt8Rows && q.w8 && q.qentries > 16 &&
                            (!p.avx2_gather || q.qentries > 256);
  return q.int8 && !decode_float;
}

void run_rows(void* arg, size_t task) {
  const Call& c = *static_cast<const Call*>(arg);
  const Prepacked& p = *c.p;
  const int64_t N = p.dims.N, n0 = int64_t(task) * c.row_block, n1 = std::min(N, n0 + c.row_block);
  // Per thread and kept between calls: allocating (and zeroing) it per task showed up in decode
  // timings, and a prefill tile of 256 KB would be a fresh mmap every time.
  thread_local std::vector<float> buffer;
  const size_t need = size_t(scratch_floats(p, c.M)) + 16;
  if (buffer.size() < need) buffer.resize(need);
  // 64-byte aligned start, as scratch_floats promises.
  float* scratch = buffer.data() + (16 - (reinterpret_cast<uintptr_t>(buffer.data()) / 4) % 16) % 16;
  const int64_t nseg = int64_t(p.segments.size());
  // The float head of the int8 route (the first permuted columns of a part, split off as the part
  // before it) runs after its int8 tail, whose sequential read of each index row brings the head's
  // indices (the row's first bytes) into cache; run first, the head touched one line per row (a
  // page apart for 4096 columns) and paid a memory latency per row. The tail's sums wait in
  // `tail` and are added after the head's, so y sees the same float32 additions in the same order.
  thread_local std::vector<float> tail;
  // Float parts; `head`: one that is on the float route only as the int8 route's head. On AVX2 the
  // 8-bit v = 4 parts (the default format) take their own kernel at every M (decode_avx2.cpp,
  // which also uses BMI2: every AVX2 CPU has it, but detect_isa() does not ask).
  // The x86 kernels exist only in x86 builds (VQ2TRT_X86) and NEON's only in aarch64 builds;
  // prepack() never sets an ISA the build lacks (native_isa).
  auto float_part = [&](const Part& q, bool head) {
#if VQ2TRT_X86
    static const bool bmi2 = __builtin_cpu_supports("bmi2");
    if (c.xh16 && q.h16)  // AVX-512 decode of a head: 13-bit tables, 14-bit x'
      return avx512::part_head16(q, c.xp, p.dims.K, c.xh16, c.sxh16, c.M, c.y, N, n0, n1,
                                 reinterpret_cast<uint8_t*>(scratch));
    if (head && c.x16h && q.wseg >= 0) {  // AVX2 prefill of a head: the same, in the int16 tiles
      const int64_t nw = int64_t(p.wide.size());
      return avx2::part_int8_prefill(q, c.x16h + p.wide[size_t(q.wseg)].byte_offset * 2 * kX16Rows,
                                     p.wide_pairs * 2 * kX16Rows,
                                     c.sxh + q.wseg, nw, c.xsumh + q.wseg, nw, c.M, c.y, N, 0, n0, n1, scratch);
    }
    // AVX-512 CPUs take it too for decode (M <= 8) at level 0: 1.8x the AVX-512 float kernel at
    // M = 1 on Zen 4/5 (their table-row loads are the limit at any width); prefill and the int8
    // route's other heads (prefill, v > 4) stay on the AVX-512 kernels, as fast there.
    const bool v4_b8 = bmi2 && q.v == 4 && q.bits == 8 && q.skip_bits % 8 == 0;
    if (v4_b8 && (p.isa == Isa::kAvx2 || (p.isa == Isa::kAvx512 && !head && c.M <= kMaxInt8Rows)))
      return avx2::part_v4_b8(q, c.xp, p.dims.K, c.M, c.y, N, n0, n1);
    // v3-k512 on AVX2 (level 0, and level-4 decode: see int8_route): 4-8x part_float at M = 1
    // and 3x at M = 64 (level 0; level-4 prefill takes the int16 tiles). On AVX-512, decode at
    // level 0: 3.6x avx512::part_float at M = 1, 0.9x at M = 64 (Intel, RESULTS.md). 8-bit v = 2
    // (the demo formats' outlier parts, ~2.6 % of a decode step's samples in part_float): decode
    // only, where it was measured (half its lanes are padding, so a prefill would pay twice the FMAs).
    const bool v3_b9 = bmi2 && q.v == 3 && q.bits == 9 && q.ft4;
    if (v3_b9 && (p.isa == Isa::kAvx2 || (p.isa == Isa::kAvx512 && c.M <= kMaxInt8Rows)))
      return avx2::part_v3_b9(q, c.xp, p.dims.K, c.M, c.y, N, n0, n1);
    if (bmi2 && p.isa == Isa::kAvx2 && q.v == 2 && q.bits == 8 && q.skip_bits % 8 == 0 && q.ft4 &&
        c.M <= kMaxInt8Rows)
      return avx2::part_v2_b8(q, c.xp, p.dims.K, c.M, c.y, N, n0, n1);
    if (p.isa == Isa::kAvx512)
      return (head ? avx512::part_head : avx512::part_float)(q, c.xp, p.dims.K, c.M, c.y, N, n0, n1, scratch);
    if (p.isa == Isa::kAvx2)
      return (head ? avx2::part_head : avx2::part_float)(q, c.xp, p.dims.K, c.M, c.y, N, n0, n1, scratch);
#elif VQ2TRT_NEON
    if (p.isa == Isa::kNeon)
      return (head ? neon::part_head : neon::part_float)(q, c.xp, p.dims.K, c.M, c.y, N, n0, n1, scratch);
#endif
    (head ? scalar::part_head : scalar::part_float)(q, c.xp, p.dims.K, c.M, c.y, N, n0, n1, scratch);
  };
  auto int8_route = [&](const Part& q) { return vq2trt::int8_route(p, q, c.M); };
  // This task's rows of y start at the per-row constant plus bias (here, not in vq_gemm: in
  // prefill that is M x N stores, which the tasks share out).
  for (int64_t m = 0; m < c.M; ++m) {
    float* ym = c.y + m * N;
    const float r = c.rowconst[m];
    if (p.bias.empty())
      std::fill(ym + n0, ym + n1, r);
    else
      for (int64_t n = n0; n < n1; ++n) ym[n] = r + p.bias[size_t(n)];
  }
#if VQ2TRT_X86
  if (c.xq4) return avx2::dense4_gemv(p.dense4, c.xq4, c.sv4, c.xh4, c.xhsum4, c.M, c.y, N, n0, n1);
#endif
  for (size_t i = 0; i < p.parts.size(); ++i) {
    const Part& pt = p.parts[i];
    auto int8_part = [&](const Part& q, float* yq, int64_t ys, int64_t y0) {
#if VQ2TRT_X86
      const Segment& s = p.segments[size_t(q.segment)];
      if (q.paired) return;  // summed with its main part
      if (q.pair >= 0)
        return avx2::part_pair_k16(q, p.parts[size_t(q.pair)], c.xq + s.byte_offset, p.xq_bytes,
                                   c.sx + s.block_offset, p.xq_blocks, c.corr + q.segment, c.xsum + q.segment, nseg,
                                   c.M, yq, ys, y0, n0, n1, scratch);
      if (c.M > kMaxInt8Rows && p.isa == Isa::kAvx512)
        return avx512::part_int8_prefill(q, c.xq + s.byte_offset, p.xq_bytes, c.sx + s.block_offset, p.xq_blocks,
                                         c.xsum + q.segment, nseg, c.M, yq, ys, y0, n0, n1, scratch);
      if (c.M > kMaxInt8Rows && q.w16 && p.avx_vnni && q.w8)
        return avx2::part_int8_prefill_vnni(q, c.xq + s.byte_offset, p.xq_bytes, c.sx + s.block_offset, p.xq_blocks,
                                            c.xsum + q.segment, nseg, c.M, yq, ys, y0, n0, n1, scratch);
      if (c.M > kMaxInt8Rows && q.w16 && c.x16)
        return avx2::part_int8_prefill(q, c.x16 + s.byte_offset * kX16Rows, p.xq_bytes * kX16Rows, c.sx + s.block_offset, p.xq_blocks,
                                       c.xsum + q.segment, nseg, c.M, yq, ys, y0, n0, n1, scratch);
      if (p.isa == Isa::kAvx2 && q.w8 && q.qentries > 16)
        return avx2::part_int8_gather(q, c.xq + s.byte_offset, p.xq_bytes, c.sx + s.block_offset, p.xq_blocks,
                                  c.xsum + q.segment, nseg, c.M, yq, ys, y0, n0, n1, scratch);
      (p.isa == Isa::kAvx512 ? avx512::part_int8 : p.avx_vnni ? avx2::part_int8_vnni : avx2::part_int8)(q, c.xq + s.byte_offset, p.xq_bytes, c.sx + s.block_offset,
                        p.xq_blocks, c.corr + q.segment, c.xsum + q.segment, nseg, c.M, yq, ys, y0, n0, n1, scratch);
#else
      (void)q, (void)yq, (void)ys, (void)y0, (void)nseg;  // no int8 parts outside x86 (prepack)
#endif
    };
    if (c.use_int8 && int8_route(pt)) {
      int8_part(pt, c.y, N, 0);
    } else if (c.use_int8 && i + 1 < p.parts.size() && int8_route(p.parts[i + 1]) &&
               p.parts[i + 1].indices == pt.indices && p.parts[i + 1].col0 == pt.col0 + pt.count) {
      const int64_t rows = n1 - n0;
      tail.assign(size_t(c.M * rows), 0.f);
      int8_part(p.parts[++i], tail.data(), rows, n0);
      float_part(pt, true);
      for (int64_t m = 0; m < c.M; ++m)
        for (int64_t n = n0; n < n1; ++n) c.y[m * N + n] += tail[size_t(m * rows + n - n0)];
    } else {  // with segments (the parts split for the int8 route): a head with no int8 tail
              // (outlier columns), or a part with no byte tables
      float_part(pt, !p.segments.empty());
    }
  }
}

// The portable twin of avx512::quantize_segment (same rounding: nearest even), for AVX2 CPUs.
float quantize_segment(const float* x, int64_t count, int8_t* q, float* sx) {
  const int64_t padded = ceil_div(count, 64) * 64;
  float corr = 0.f;
  for (int64_t b = 0; b * kXBlock < count; ++b) {
    const int64_t c0 = b * kXBlock, cn = std::min(kXBlock, count - c0), cp = std::min(kXBlock, padded - c0);
    float amax = 0.f;
    for (int64_t c = 0; c < cn; ++c) amax = std::max(amax, std::fabs(x[c0 + c]));
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    int32_t sum = 0;
    for (int64_t c = 0; c < cp; ++c) {
      const int v = c < cn ? int(std::nearbyint(x[c0 + c] * inv)) : 0;
      q[c0 + c] = int8_t(std::clamp(v, -127, 127));
      sum += q[c0 + c];
    }
    sx[b] = amax / 127.f;
    corr += sx[b] * 128.f * float(sum);
  }
  return corr;
}

// Sums for the activation preparation in lanes (a fixed order: same bytes every call): as one
// running sum they were latency-bound chains (4 cycles an element) and 20 % of an AVX2 prefill.
double dot_f64(const float* a, const float* b, int64_t n) {
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) s[j] += double(a[i + j]) * double(b[i + j]);
  for (; i < n; ++i) s[0] += double(a[i]) * double(b[i]);
  return (s[0] + s[1]) + (s[2] + s[3]);
}

float sum_f32(const float* a, int64_t n) {
  float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[i + j];
  for (; i < n; ++i) s[0] += a[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// One activation row's preparation: x' (permuted, scaled), the per-row constant and, for the
// int8 route, each segment's Σ x' and int8 form (x16: widened for the AVX2 prefill).
struct Prep {
  const Prepacked* p;
  DType x_type;
  const void* x;
  int64_t M, rows_per_task;
  float* xp;
  float* rowconst;
  int8_t* xq;       // null: no int8 route this call
  float* sx;
  float* corr;
  float* xsum;
  int16_t* x16;     // or null
  int16_t* x16h;    // the heads' 14-bit x (Call::x16h), or null
  float* sxh;
  float* xsumh;
  int8_t* xq4;      // Dense4 decode (Call::xq4), or null
  float* sv4;
  int16_t* xh4;
  float* xhsum4;
  int16_t* xh16;    // Part::h16tab heads (Call::xh16), or null
  float* sxh16;
};

// x'[0, count) of row m at 14 bits with one scale (absmax / 8191) into x16h (x16's layout: kX16Rows-row
// blocks of `block` int16, from the range's first column pair); returns the scale.
// x[0, count) at 14 bits with one scale (absmax / 8191), element c into out[at(c)]; returns the
// scale. The heads' x' in both layouts below (AVX2 prefill, AVX-512 decode).
template <class At>
float quantize14(const float* x, int64_t count, int16_t* out, At at) {
  float amax = 0.f;
  for (int64_t c = 0; c < count; ++c) amax = std::max(amax, std::fabs(x[c]));
  const float inv = amax > 0.f ? 8191.f / amax : 0.f;
  for (int64_t c = 0; c < count; ++c) out[at(c)] = int16_t(std::clamp(std::nearbyint(x[c] * inv), -8191.f, 8191.f));
  return amax / 8191.f;
}

float quantize_wide(const float* x, int64_t count, int64_t m, int64_t block, int16_t* x16h) {
  return quantize14(x, count, x16h + m / kX16Rows * block + m % kX16Rows * 2,
                    [](int64_t c) { return c / 2 * 2 * kX16Rows + c % 2; });
}

void prep_rows(void* arg, size_t task) {
  const Prep& c = *static_cast<const Prep*>(arg);
  const Prepacked& p = *c.p;
  const int64_t K = p.dims.K, m0 = int64_t(task) * c.rows_per_task, m1 = std::min(c.M, m0 + c.rows_per_task);
  const int64_t nseg = int64_t(p.segments.size());
  thread_local std::vector<float> xrow, xs;  // per worker thread (tasks run on the pool)
  for (int64_t m = m0; m < m1; ++m) {
    const float* xf = static_cast<const float*>(c.x) + m * K;
    if (c.x_type != DType::kFloat32) {
      xrow.resize(size_t(K));
      for (int64_t ch = 0; ch < K; ++ch) xrow[size_t(ch)] = load(c.x_type, c.x, m * K + ch);
      xf = xrow.data();
    }
    // The sequential pass first: it brings the row into L1 for the permuted reads (the other
    // order had the gather wait on L2 for 40 % of prep_rows in an AVX2 prefill profile).
    float* xo = c.xp + m * K;
#if VQ2TRT_X86
    if (p.isa == Isa::kAvx2 || p.isa == Isa::kAvx512) {
      if (!p.col_bias.empty()) c.rowconst[m] = float(avx2::dot_f64(xf, p.col_bias.data(), K));
      avx2::permute_scale(xf, p.perm.data(), p.pscale.data(), K, xo);
    } else
#endif
    {
      if (!p.col_bias.empty()) c.rowconst[m] = float(dot_f64(xf, p.col_bias.data(), K));
      for (int64_t q = 0; q < K; ++q) xo[q] = xf[p.perm[size_t(q)]] * p.pscale[size_t(q)];
    }
#if VQ2TRT_X86
    if (c.xq4) {
      const int64_t nb = p.dense4.blocks;
      const int64_t c0 = p.dense4.col0;
      avx2::dense4_quantize(xo + c0, K - c0, nb, c.xq4 + m * nb * kDense4Block, c.sv4 + m * nb * 8);
      // The head columns at 16 bits on one scale: the massive activations that make a block's
      // int8 scale useless sit here, and 1/32767 of the largest is well under the 8-bit weights'
      // own step (SmolLM2 decode KL against level 0: 0.094 with float x', 0.094 with these).
      const int64_t hc = p.dense4.head_cols;
      int16_t* xh = c.xh4 + m * hc;
      float amax = 0.f;
      for (int64_t q = 0; q < c0; ++q) amax = std::max(amax, std::fabs(xo[q]));
      const float scale = amax / 32767.f, inv = amax > 0.f ? 32767.f / amax : 0.f;
      for (int64_t q = 0; q < hc; ++q) xh[q] = q < c0 ? int16_t(std::nearbyint(xo[q] * inv)) : int16_t(0);
      c.xhsum4[2 * m] = sum_f32(xo, c0);
      c.xhsum4[2 * m + 1] = scale;
    }
#endif
    if (c.xh16) {  // Part::h16tab heads: [0, head16_cols) in order, zero up to 128
      int16_t* o = c.xh16 + m * 128;
      c.sxh16[m] = quantize14(xo, p.head16_cols, o, [](int64_t q) { return q; });
      std::fill(o + p.head16_cols, o + 128, int16_t(0));
    }
    if (!c.xq) continue;
    const int64_t nw = int64_t(p.wide.size());
    if (c.x16h)
      for (int64_t s = 0; s < nw; ++s) {
        const Segment& g = p.wide[size_t(s)];
        c.xsumh[m * nw + s] = sum_f32(xo + g.col0, g.count);
        c.sxh[m * nw + s] = quantize_wide(xo + g.col0, g.count, m, p.wide_pairs * 2 * kX16Rows,
                                          c.x16h + g.byte_offset * 2 * kX16Rows);
      }
    for (int64_t s = 0; s < nseg; ++s) {
      const Segment& g = p.segments[size_t(s)];
      const float* xg = xo + g.col0;
      int64_t count = g.count;
      c.xsum[m * nseg + s] = sum_f32(xg, g.count);
      if (g.split) {  // even columns of each 128 first, then the odd ones (see Part::split4)
        count = g.blocks * 64;
        xs.assign(size_t(count), 0.f);
        for (int64_t i = 0; i < g.count; ++i) xs[size_t((i & ~int64_t(127)) + (i & 1) * 64 + ((i & 127) >> 1))] = xg[i];
        xg = xs.data();
      }
#if VQ2TRT_X86
      auto quantize = p.isa == Isa::kAvx512 ? avx512::quantize_segment
                      : p.isa == Isa::kAvx2 ? avx2::quantize_segment : quantize_segment;
#else
      auto quantize = quantize_segment;
#endif
      c.corr[m * nseg + s] = quantize(xg, count, c.xq + m * p.xq_bytes + g.byte_offset, c.sx + m * p.xq_blocks + g.block_offset);
    }
  }
#if VQ2TRT_X86
  if (c.x16) avx2::widen_pairs(c.xq, c.M, m0, m1, p.xq_bytes, c.x16);
#endif
}

struct CallBuffers {
  std::vector<float> xp, rowconst, sx, corr, xsum, ybuf;
  std::vector<int8_t> xq;
  std::vector<int16_t> x16, x16h;
  std::vector<float> sxh, xsumh, sv4, xhsum4;
  std::vector<int16_t> xh4, xh16;
  std::vector<int8_t> xq4;
  std::vector<float> sxh16;
};

// Frees the buffers that outgrew decode sizes when a call ends (normal return or exception).
void trim_buffers(CallBuffers& b) {
  constexpr size_t kKeep = size_t(1) << 18;  // elements (1 MiB of float): decode stays far below
  auto trim = [](auto& v) {
    if (v.capacity() > kKeep) std::decay_t<decltype(v)>().swap(v);
  };
  trim(b.xp), trim(b.sx), trim(b.corr), trim(b.xsum), trim(b.ybuf), trim(b.xq), trim(b.x16), trim(b.x16h);
  trim(b.sxh), trim(b.xsumh), trim(b.sv4), trim(b.xq4), trim(b.xh4), trim(b.xhsum4);
  trim(b.rowconst), trim(b.xh16), trim(b.sxh16);
}

struct BufferTrim {
  CallBuffers& b;
  ~BufferTrim() { trim_buffers(b); }
};

// One weight's share of a call: its activation preparation (done by prepare_call) and the Call
// its row tasks read. The buffers are the caller's, so that the weights of one multi-weight call
// each keep their own.
int64_t prepare_call(const Prepacked& p, DType x_type, const void* x, int64_t M, float* y32, CallBuffers& buf,
                     const ParallelFor& parallel, Call* out) {
  const VQGemmDims& d = p.dims;
  const int64_t K = d.K, N = d.N;
  // x' and its int8 forms are only made for the parts that read them: on AVX2 without fast
  // gathers decode takes no int8 route, and quantizing x there was work for nothing.
  // Dense4 (opt-in) takes the whole decode: no part reads x' at int8 then.
  const bool dense4 = !p.dense4.q.empty() && M <= kMaxInt8Rows;
  bool any_int8 = false;
  for (const Part& q : p.parts) any_int8 = any_int8 || (!dense4 && int8_route(p, q, M));
  const int64_t nseg = any_int8 ? int64_t(p.segments.size()) : 0;
  buf.xp.resize(size_t(M * K));
  buf.rowconst.assign(size_t(M), 0.f);
  if (any_int8) {
    buf.xq.assign(size_t(M * p.xq_bytes), 0);
    buf.sx.assign(size_t(M * p.xq_blocks), 0.f);
    buf.corr.assign(size_t(M * nseg), 0.f);
    buf.xsum.assign(size_t(M * nseg), 0.f);
  }
  Prep prep{&p, x_type, x, M, 0, buf.xp.data(), buf.rowconst.data(), nullptr, nullptr, nullptr, nullptr, nullptr,
            nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  // The int16 heads (AVX-512 level 4) in decode, where the parts run (not in a Dense4 decode).
  // Prefill keeps the float heads: the tiled float kernel serves 128 rows ~9 % faster than
  // part_head16's per-row sums (SmolLM2's 128-token prefill through GenAI, Zen 4).
  if (p.head16_cols > 0 && any_int8 && M <= kMaxInt8Rows) {
    buf.xh16.resize(size_t(M * 128));
    buf.sxh16.resize(size_t(M));
    prep.xh16 = buf.xh16.data();
    prep.sxh16 = buf.sxh16.data();
  }
  if (dense4) {
    const int64_t nb = p.dense4.blocks;
    buf.xq4.resize(size_t(M * nb * kDense4Block));
    buf.sv4.resize(size_t(M * nb * 8));
    buf.xh4.resize(size_t(std::max<int64_t>(1, M * p.dense4.head_cols)));
    buf.xhsum4.resize(size_t(2 * M));
    prep.xq4 = buf.xq4.data();
    prep.sv4 = buf.sv4.data();
    prep.xh4 = buf.xh4.data();
    prep.xhsum4 = buf.xhsum4.data();
  }
  if (any_int8) {
    prep.xq = buf.xq.data();
    prep.sx = buf.sx.data();
    prep.corr = buf.corr.data();
    prep.xsum = buf.xsum.data();
#if VQ2TRT_X86
    if (p.isa == Isa::kAvx2 && M > kMaxInt8Rows) {
      if (!p.avx_vnni) {  // AVX-VNNI's prefill reads xq (part_int8_prefill_vnni)
        buf.x16.resize(size_t(ceil_div(M, kX16Rows) * kX16Rows * p.xq_bytes));  // blocks of rows: see widen_pairs
        prep.x16 = buf.x16.data();
      }
      if (!p.wide.empty()) {
        const int64_t nw = int64_t(p.wide.size());
        buf.x16h.assign(size_t(ceil_div(M, kX16Rows) * kX16Rows * p.wide_pairs * 2), 0);  // zero past each range's count
        buf.sxh.assign(size_t(M * nw), 0.f);
        buf.xsumh.assign(size_t(M * nw), 0.f);
        prep.x16h = buf.x16h.data();
        prep.sxh = buf.sxh.data();
        prep.xsumh = buf.xsumh.data();
      }
    }
#endif
  }
  // Prefill: the activation rows are prepared in parallel (16 tasks, as the GEMM's), the serial
  // share of a 2-thread prefill; decode's one row is not worth a dispatch.
  prep.rows_per_task = M > kMaxInt8Rows ? ceil_div(M, int64_t(16)) : M;
  parallel(prep_rows, size_t(ceil_div(M, prep.rows_per_task)), &prep);
  *out = Call{&p, M, 0, buf.xp.data(), prep.xq, prep.sx, prep.corr, prep.xsum, prep.x16, any_int8,
              buf.rowconst.data(), prep.x16h, prep.sxh, prep.xsumh, prep.xq4, prep.sv4, prep.xh4, prep.xhsum4,
              prep.xh16, prep.sxh16, y32};
  // Enough tasks (16) for load balance on a few cores, each a multiple of every part's vector
  // length and, in decode, of at least ~64K weights: SmolLM2's k/v projections (192 x 576) came
  // in 16 tasks of 12 rows, and at 30 us a call for 110K weights ran at a quarter of the speed
  // of the 1536 x 576 ones (per-task set-up, short passes).
  const int64_t unit = p.row_unit, units = ceil_div(N, unit);
  const int64_t min_units = M <= kMaxInt8Rows ? ceil_div(ceil_div(int64_t(1) << 16, std::max<int64_t>(K, 1)), unit) : 1;
  const int64_t per_task = std::max<int64_t>(min_units, ceil_div(units, 16));
  out->row_block = per_task * unit;
  // The int8 kernels compute 16 or 32 output rows a pass: tasks of 36 rows (N = 576) would pay a
  // 16-row pass for 4 (unless the vector lengths make 16-row steps too coarse).
  const int64_t u16 = std::lcm(unit, int64_t(16));
  if (!p.segments.empty() && u16 <= 64) out->row_block = ceil_div(out->row_block, u16) * u16;
  if (dense4) out->row_block = ceil_div(out->row_block, int64_t(4)) * 4;  // Dense4's groups of 4 rows
  return ceil_div(N, out->row_block);
}

void store_output(DType x_type, const float* y32, int64_t count, void* y) {
  if (x_type == DType::kFloat16)
    for (int64_t i = 0; i < count; ++i) static_cast<uint16_t*>(y)[i] = float_to_half(y32[i]);
  else if (x_type == DType::kBFloat16)
    for (int64_t i = 0; i < count; ++i) static_cast<uint16_t*>(y)[i] = float_to_bf16(y32[i]);
}

// The row tasks of several weights as one task list: task t of the dispatch is task
// t - first[w] of weight w.
struct MultiCall {
  const Call* calls;
  const int64_t* first;  // [weights + 1]
  size_t weights;
};

void run_multi(void* arg, size_t task) {
  const MultiCall& c = *static_cast<const MultiCall*>(arg);
  size_t w = 0;
  while (w + 1 < c.weights && int64_t(task) >= c.first[w + 1]) ++w;
  run_rows(const_cast<Call*>(&c.calls[w]), size_t(int64_t(task) - c.first[w]));
}

// A multi-weight call's per-thread state, kept between calls as CallBuffers are (vq_gemm): each
// weight's buffers and Call, where its tasks start in the one task list, its output and row stride.
struct MultiScratch {
  std::vector<CallBuffers> bufs;
  std::vector<Call> calls;
  std::vector<int64_t> first, ld;
  std::vector<void*> out;
};

MultiScratch& multi_scratch(size_t count) {
  thread_local MultiScratch s;
  if (s.bufs.size() < count) s.bufs.resize(count);
  s.calls.resize(count);
  s.first.assign(count + 1, 0);
  s.ld.resize(count);
  s.out.resize(count);
  return s;
}

// Weight w's outputs go to s.out[w] (in x_type elements) with rows s.ld[w] elements apart.
void multi(MultiScratch& s, const Prepacked* const* ps, size_t count, DType x_type, const void* x, int64_t M,
           const ParallelFor& parallel) {
  for (size_t w = 0; w < count; ++w)
    if (ps[w]->dims.K != ps[0]->dims.K) throw std::invalid_argument("vq_gemm_multi: weights differ in K");
  struct TrimAll {
    std::vector<CallBuffers>& b;
    size_t n;
    ~TrimAll() {
      for (size_t w = 0; w < n; ++w) trim_buffers(b[w]);
    }
  } const trim{s.bufs, count};
  // float32 rows as the kernels lay them out (one row, or rows N apart) are written in place;
  // others are made in the weight's buffer and copied (converted) after.
  auto direct = [&](size_t w) { return x_type == DType::kFloat32 && (M == 1 || s.ld[w] == ps[w]->dims.N); };
  for (size_t w = 0; w < count; ++w) {
    const int64_t N = ps[w]->dims.N;
    float* y32 = static_cast<float*>(s.out[w]);
    if (!direct(w)) {
      s.bufs[w].ybuf.resize(size_t(M * N));
      y32 = s.bufs[w].ybuf.data();
    }
    s.first[w + 1] = s.first[w] + prepare_call(*ps[w], x_type, x, M, y32, s.bufs[w], parallel, &s.calls[w]);
  }
  MultiCall mc{s.calls.data(), s.first.data(), count};
  parallel(run_multi, size_t(s.first[count]), &mc);
  const size_t elem = x_type == DType::kFloat32 ? 4 : 2;
  for (size_t w = 0; w < count; ++w) {
    if (direct(w)) continue;
    const int64_t N = ps[w]->dims.N;
    for (int64_t m = 0; m < M; ++m) {
      const float* src = s.bufs[w].ybuf.data() + m * N;
      void* dst = static_cast<char*>(s.out[w]) + size_t(m * s.ld[w]) * elem;
      if (x_type == DType::kFloat32)
        std::copy_n(src, N, static_cast<float*>(dst));
      else
        store_output(x_type, src, N, dst);
    }
  }
}

}  // namespace

void vq_gemm(const Prepacked& p, DType x_type, const void* x, int64_t M, void* y, const ParallelFor& parallel) {
  if (M <= 0) return;
  // Per-thread buffers kept between calls: a decode step makes ~200 calls, and their fresh
  // vectors showed up as malloc/free in decode profiles. Large ones (prefill) are freed after.
  thread_local CallBuffers buf;
  const BufferTrim trim{buf};
  float* y32 = static_cast<float*>(y);
  if (x_type != DType::kFloat32) {
    buf.ybuf.resize(size_t(M * p.dims.N));
    y32 = buf.ybuf.data();
  }
  Call call;
  const int64_t tasks = prepare_call(p, x_type, x, M, y32, buf, parallel, &call);
  parallel(run_rows, size_t(tasks), &call);
  store_output(x_type, y32, M * p.dims.N, y);
}

void vq_gemm_multi(const Prepacked* const* ps, size_t count, DType x_type, const void* x, int64_t M, void* y,
                   const ParallelFor& parallel) {
  if (M <= 0 || count == 0) return;
  MultiScratch& s = multi_scratch(count);
  int64_t total = 0;
  for (size_t w = 0; w < count; ++w) total += ps[w]->dims.N;
  const size_t elem = x_type == DType::kFloat32 ? 4 : 2;
  int64_t offset = 0;
  for (size_t w = 0; w < count; ++w) {
    s.out[w] = static_cast<char*>(y) + size_t(offset) * elem;
    s.ld[w] = total;
    offset += ps[w]->dims.N;
  }
  multi(s, ps, count, x_type, x, M, parallel);
}

void vq_gemm_multi(const Prepacked* const* ps, size_t count, DType x_type, const void* x, int64_t M,
                   void* const* ys, const ParallelFor& parallel) {
  if (M <= 0 || count == 0) return;
  MultiScratch& s = multi_scratch(count);
  for (size_t w = 0; w < count; ++w) s.out[w] = ys[w], s.ld[w] = ps[w]->dims.N;
  multi(s, ps, count, x_type, x, M, parallel);
}

}  // namespace vq2trt
