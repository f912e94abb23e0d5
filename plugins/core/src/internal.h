// Prepacked weight and the per-ISA part kernels (not installed; core-internal).
//
// A VQGemm decomposes into parts (outlier columns; each group's main codebook; each group's
// residual) that all compute the same primitive on the permuted, scaled activations x':
//   y[m, r*v + j] += Σ_{c in part} x'[m, col0 + c] · table[idx[r, c]][j]
// The ISA-specific files take raw pointers and scratch only: a std template instantiated with
// AVX-512 code generation could be picked by the linker for callers on older CPUs.
#pragma once

#include <cstdint>
#include <vector>

#include "vq2trt/cpu_kernels.h"

namespace vq2trt {

// An x86 ISA with AVX2 at least (the AVX2 kernels serve AVX-VNNI and AVX-512 CPUs too).
inline bool is_x86(Isa isa) { return isa == Isa::kAvx2 || isa == Isa::kAvxVnni || isa == Isa::kAvx512; }

// Element i of an activation tensor in dtype t, as float32, and back.
inline float load(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::kFloat16: return half_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kBFloat16: return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

inline void store(DType t, void* p, int64_t i, float v) {
  switch (t) {
    case DType::kFloat16: static_cast<uint16_t*>(p)[i] = float_to_half(v); break;
    case DType::kBFloat16: static_cast<uint16_t*>(p)[i] = float_to_bf16(v); break;
    default: static_cast<float*>(p)[i] = v;
  }
}

struct Part {
  int64_t col0 = 0, count = 0;  // permuted positions col0 .. col0+count-1
  int64_t v = 1, rows = 0;      // vector length, R = ceil(N / v)
  int bits = 1;
  int64_t words = 0;            // int32 words per packed index row (of the whole matrix)
  int64_t skip_bits = 0;        // a group's first index sits this far into each row
  const int32_t* indices = nullptr;
  // float32 table [2^bits, v]; entries >= k are zero so that any masked index is a valid read.
  std::vector<float> ftab;
  // v = 3 only: the table again with rows padded to 4 floats, so that decode loads one 16-byte row
  // per index and does one 4-lane multiply-add (the 3-wide table went through a scalar loop).
  std::vector<float> ftab4;
  // int8 route (accuracy_level 4; AVX-512 VBMI + VNNI with bits <= 9; AVX2 with bits <= 4, v = 4
  // with bits <= 8 and v = 3 with bits <= 9): per
  // component j a byte table of `qentries` (16 for vpshufb, 64 for vpermb, 256 for two vpermi2b
  // halves, 512 for two of those) holding round((q - qcenter[j]) / qscale[j]) + 128, unsigned because vpdpbusd
  // multiplies u8 by s8; the +128 is subtracted once per x block. Centering on the midrange uses
  // all 255 levels for one-signed codebooks (normalised weights have q in [0, 1]) and takes the
  // common part qcenter[j] · Σ x' out of the int8 products: it is added back from the float x',
  // so the activation rounding error only meets q - qcenter[j], not the whole q.
  bool int8 = false;
  int qentries = 0;
  std::vector<uint8_t> qtab;    // [v, qentries]
  std::vector<float> qscale;    // [v]
  std::vector<float> qcenter;   // [v]
  int segment = -1;             // quantized-x segment (shared by a group's main and residual)
  // 4-bit indices on the int8 route come unpacked in "split" order: per 128 columns the 64 low
  // nibbles (even columns), then the 64 high nibbles (odd columns); the segment's activations
  // are stored in the same order, so the kernel needs no interleaving shuffle.
  bool split4 = false;
  // AVX2 int8 route, v = 3 or 4: the byte tables as whole centroids, [qentries, 4] int16 holding
  // qtab - 128, v = 3 with a zero 4th (prefill_int8_avx2.cpp loads a centroid with one 8-byte load).
  std::vector<int16_t> wtab16;
  // AVX2 int8 route, v = 3 or 4: the centroids as 4 signed bytes in one int32 (v = 3: the 4th
  // zero), [qentries] (decode_int8_avx2.cpp gathers 8 of them at once).
  std::vector<int32_t> wtab8;
  // AVX2 int8 route, a main part with k <= 16 whose residual (k_r <= 16) covers the same
  // columns: both are summed in one pass (pair_int8_avx2.cpp) from byte tables on one scale per
  // component, [v, 32]: 16 main bytes (64 + round((c_m - centre_m) / s)), then 16 residual bytes
  // (round((c_r - centre_r) / s), signed), with s = (half range_m + half range_r) / 62, so that
  // any main + residual byte sum lies in [1, 127]: vpmaddubsw's unsigned operand, no saturation.
  // The weight is pcenter[j] + pscale[j] · (sum - 64). pair: the residual's index in parts;
  // paired: this is that residual (its work is done with the main's).
  // AVX2 prefill (M > 8) of a float head (the int8 route's first kInt8HeadCols columns, which
  // stay off 8-bit activations): wtab16 / qscale / qcenter hold 13-bit tables (same layout as
  // the int8 route's, |value| <= 4095) and x comes at 14 bits (|x| <= 8191) with one scale per
  // activation row over the head's columns (Prepacked::wide[wseg]), 32-64x finer than the int8
  // route. The products run in the int8 prefill kernel (int16 x int16 -> int32): 32 column pairs
  // of 2 · 8191 · 4095 stay below 2^31, so a head has at most 64 columns. The float kernel ran
  // these 64 columns at half the speed per product (a pass over 64 columns is mostly set-up).
  // Prefill KL against level 0 (SmolLM2 v4-k256, wiki.test): 0.0103 / 0.0101 (512 / 1024
  // tokens) against 0.0107 / 0.0100 with the float head; with 8-bit x (the int8 route's
  // precision) 0.065. -1: none (int8 stays false).
  int wseg = -1;
  // AVX-512 level-4 decode (M <= 8), a head of the int8 route with v <= 4 and bits <= 9: the
  // same 13-bit tables as wseg's (qscale / qcenter) as two byte tables per component, [v][2][h16n]
  // (low bytes, then high bytes; h16n = 64, 256 or 512 entries), looked up with vpermb /
  // vpermi2b as the int8 route looks up its bytes; x' at 14 bits with one scale per row over the
  // first Prepacked::head16_cols columns; vpdpwssd sums (avx512::part_head16). The float kernel
  // loaded one table row per index and column: at K = 576 the 64 head columns were 14 % of a
  // SmolLM2 decode step's samples on Zen 4, against 28 % for the 512 int8 columns.
  std::vector<uint8_t> h16tab;
  int64_t h16n = 0;
  int64_t entries = 0;          // codebook entries (k); the tables have 2^bits
  int64_t pair = -1;
  bool paired = false;
  std::vector<uint8_t> ptab;
  std::vector<float> pscale, pcenter;
  // Raw views of the vectors above: the ISA files must not call std::vector members.
  const float* ft = nullptr;
  const float* ft4 = nullptr;   // ftab4, or null
  const uint8_t* qt = nullptr;
  const float* qs = nullptr;
  const float* qc = nullptr;
  const int16_t* w16 = nullptr;  // wtab16, or null
  const int32_t* w8 = nullptr;   // wtab8, or null
  const uint8_t* pt = nullptr;   // ptab, or null
  const float* ps = nullptr;
  const float* pc = nullptr;
  const uint8_t* h16 = nullptr;  // h16tab, or null
};

// A column range of x' quantized to int8 (scale per 256 columns, bytes zero padded to 64). It
// never includes the first kInt8HeadCols permuted columns.
struct Segment {
  int64_t col0 = 0, count = 0, blocks = 0;  // blocks of 64 bytes, padded to 128 columns if split
  bool split = false;
  int64_t byte_offset = 0, block_offset = 0;  // into a row's xq bytes / block scales
};

// Opt-in dense 4-bit decode (VQ2TRT_DENSE4=1 at prepack; accuracy_level 4 on x86 with AVX2). The
// lookup kernels spend about one instruction per weight (index extraction, a table-row load, an
// FMA share: decode_avx2.cpp), which on CPUs without fast gathers leaves the 2-bit default format
// 1.3-1.6x slower per weight than ORT's 4-bit MatMulNBits. Here the weight is dequantized once, in
// permuted order (outliers, main and residual summed in float32), and rounded to 4 bits per block
// of kDense4Block columns with a float step and minimum (w = m + step · u, u in 0..15); decode (M <=
// 8) then runs an int8 x 4-bit GEMV at ~1/3 instruction per weight (dense4_avx2.cpp), on x' rounded
// to int8 per block. Costs: 5 more bits per weight in memory (the indices stay, for prefill) and a
// second rounding of the weight (RESULTS.md has its KL against level 0). The file is unchanged.
constexpr int64_t kDense4Block = 32;
constexpr int64_t kDense4Bytes = 4 * 16 + 4 + 4;  // one block's record for 4 rows
struct Dense4 {
  // The first col0 permuted columns (kInt8HeadCols, or VQ2TRT_INT8_HEAD: the most salient, as on
  // the int8 route) are kept apart from the 4-bit blocks: rounded with the rest (x' to int8 per
  // block, where a massive activation channel takes the block's scale; 4-bit weights), they cost
  // most of the accuracy (SmolLM2 decode KL against level 0: 0.93 nats/token). They are stored at
  // 8 bits per weight (w = min + step · u per row, float32 step and minimum over the head) and
  // multiplied with x' in float32 (KL 0.091 where exact lookups gave 0.089): the first version
  // ran their lookups, ~1 instruction per weight on a ninth of the columns at K = 576; this one
  // is 0-16 % faster per node on SmolLM2's shapes (one thread, RESULTS.md).
  int64_t col0 = 0;
  int64_t head_cols = 0;     // col0 rounded up to a multiple of 8 (zero weights past col0)
  int64_t blocks = 0;        // ceil((K - col0) / kDense4Block); empty q: off
  int64_t group_bytes = 0;   // prefix_bytes() + blocks · kDense4Bytes
  int64_t head_bytes() const { return head_cols ? 4 * head_cols + 32 : 0; }
  int64_t prefix_bytes() const { return head_bytes() + 48; }
  // Groups of 4 output rows in one stream: per group the head (the 4 rows' head_cols bytes u,
  // then their float32 steps and minima), the rows' code scales (float32: 4 step units, 4 minimum
  // units, 4 minimum bases), then one kDense4Bytes record per block: the 4 rows' nibbles in pairs
  // (32 bytes for rows 0 and 1, byte c = u_0[c] | u_1[c] << 4, then 32 for rows 2 and 3), their
  // step codes and their minimum codes, one byte each:
  // step = code · unit, minimum = base + code · unit (as llama.cpp's Q4_K codes its sub-block
  // scales). 4.5 bits a weight, as Q4_0 and MatMulNBits 4-bit with block 32 (fp16 steps and
  // minima took 5): at decode the kernel streams its weight from memory, so bytes are its speed.
  std::vector<uint8_t> q;    // [groups][group_bytes]
};
bool dense4_requested();     // VQ2TRT_DENSE4=1
void make_dense4(Prepacked& p, int64_t exact_cols);  // the first exact_cols stay exact (Dense4::col0)

struct Prepacked {
  VQGemmDims dims;
  int accuracy_level = 0;
  Isa isa = Isa::kScalar;        // never kAvxVnni: that is kAvx2 with avx_vnni
  bool avx_vnni = false;         // k <= 16 int8 parts take avx2::part_int8_vnni, prefill part_int8_prefill_vnni
  // AVX2 decode of 256/512-entry int8 parts by vpgatherdd (decode_int8_avx2.cpp); off where
  // gathers are slow (AMD before Zen 4: see avx2_gather_is_fast), where the float kernel wins.
  bool avx2_gather = true;
  // AVX2 int8 route: main + residual k <= 16 pairs in one pass (Part::pair), with VQ2TRT_PAIR=1
  // (prepack.cpp says why it is not the default).
  bool avx2_pairs = false;
  std::vector<int32_t> perm;
  std::vector<float> pscale;     // col_scale[perm[p]] (1 when not normalised), permuted order
  std::vector<float> col_bias;   // original order, empty when not normalised
  std::vector<float> bias;       // empty without bias
  std::vector<Part> parts;
  std::vector<Segment> segments;
  int64_t xq_bytes = 0, xq_blocks = 0;  // per activation row, over all segments
  // Column ranges of the heads with 12-bit tables (Part::wseg): byte_offset is the range's first
  // column pair in the 14-bit x16h (x16's layout over wide_pairs pairs); each range has
  // ceil(count / 64) · 32 pairs.
  std::vector<Segment> wide;
  int64_t wide_pairs = 0;
  Dense4 dense4;
  int64_t head16_cols = 0;       // x' columns [0, head16_cols) the Part::h16tab heads read; 0: none
  int64_t max_count = 0;                // longest part, for scratch sizing
  int64_t row_unit = 1;                 // task boundaries are multiples of this (lcm of v's)
};

// accuracy_level 4 keeps the first kInt8HeadCols permuted positions on the float route. They
// are the most salient columns (outliers, then decreasing diag(H) = E[x²]) and hold the massive
// activation channels of LLMs (100-1000x the others): in an int8 block with the rest they would
// set the scale and round the other columns to zero, and their own products are where codebook
// rounding costs most. 64 columns cost ~1.6 % of a 4096-column row at float speed, but 11 % of
// SmolLM2's 576: there AVX-512 decode and AVX2 prefill take them at 13 x 14 bits instead
// (Part::h16tab, Part::wseg), 32-64x finer than the int8 route.
constexpr int64_t kInt8HeadCols = 64;

// Columns sharing one int8 activation scale: the int32 sums of a block are converted and scaled
// once (256 · 255 · 127 stays far below 2^31).
constexpr int64_t kXBlock = 256;
// Activation rows per block of the AVX2 prefill's int16 x (widen_pairs, prefill_int8_avx2.cpp):
// also the rows its inner loop takes at once. 3 rows keep the loop's 6 accumulators, 4 tile
// vectors and 4 broadcasts in AVX2's 16 ymm; with 4 rows gcc spilled two accumulators to the
// stack (RESULTS.md, 17th session).
constexpr int64_t kX16Rows = 3;

// Scratch a part kernel may use: an index row (ceil64(max_count) uint32), then a float tile
// (prefill: [max_count, 16]). Allocate 64-byte aligned.
constexpr int64_t kTileCols = 128, kTileRows = 16;
// The int8 prefill kernel's scratch (prefill_int8_avx512.cpp): per activation row the block sums
// of x (int32) and 32 float sums, 64 column-quad tiles of 128 bytes, and up to 33 index rows.
constexpr int64_t kInt8PrefillTileN = 32;  // output rows per pass
inline int64_t int8_prefill_scratch_floats(int64_t max_count, int64_t M) {
  const int64_t nblk = 2 * ((max_count + 127) / 128), nsb = (nblk + 3) / 4;
  return (M * nsb + 16) + M * kInt8PrefillTileN + 64 * 128 / 4 + (kInt8PrefillTileN + 1) * (nblk * 72 + 64) / 4 + 64;
}
inline int64_t scratch_floats(const Prepacked& p, int64_t M) {
  const int64_t tile = M > 1 ? (p.max_count + 1) * 16 + kTileCols * kTileRows : kTileCols * kTileRows;
  // The first term also holds 4 index rows of bytes (decode_int8_avx2.cpp).
  const int64_t n = 2 * (p.max_count + 64 + 16) + tile + 16 + 4 * M;
  const int64_t q = !p.segments.empty() && M > 1 ? int8_prefill_scratch_floats(p.max_count, M) : 0;
  return n > q ? n : q;
}

// y [M, N] += part's contribution for output rows [n0, n1). xp: x' [M, xs] (float32).
#define VQ2TRT_DECLARE_FLOAT_KERNEL(ns)                                                       \
  namespace ns {                                                                              \
  void part_float(const Part& pt, const float* xp, int64_t xs, int64_t M, float* y, int64_t N, \
                  int64_t n0, int64_t n1, float* scratch);                                    \
  void part_head(const Part& pt, const float* xp, int64_t xs, int64_t M, float* y, int64_t N,  \
                 int64_t n0, int64_t n1, float* scratch);                                     \
  }
VQ2TRT_DECLARE_FLOAT_KERNEL(scalar)
VQ2TRT_DECLARE_FLOAT_KERNEL(avx2)
VQ2TRT_DECLARE_FLOAT_KERNEL(avx512)
VQ2TRT_DECLARE_FLOAT_KERNEL(neon)

// Whether the AVX-512 int8 route looks 256-entry tables up by four merged vpermb (Intel) rather
// than two vpermi2b and a blend (AMD); VQ2TRT_PERMB=0|1 overrides (prepack.cpp).
bool permb_chain_is_fast();

namespace avx512 {
// xq: int8 x' [M, xq_stride] for the part's segment; sx: block scales [M, sx_stride];
// corr[m * corr_stride]: Σ_blocks sx · 128 · Σ xq (the unsigned-table offset to remove);
// xsum[m * corr_stride]: Σ x' over the segment in float32 (times qcenter: the centred part).
// Output row n of activation row m goes to y[m * N + n - y0] (y0 = 0: y itself).
void part_int8(const Part& pt, const int8_t* xq, int64_t xq_stride, const float* sx,
               int64_t sx_stride, const float* corr, const float* xsum, int64_t corr_stride, int64_t M, float* y,
               int64_t N, int64_t y0, int64_t n0, int64_t n1, float* scratch);
}  // namespace avx512

namespace avx2 {
// As avx512::part_int8, for parts with k <= 16 (corr is not needed: the tables are made signed).
void part_int8(const Part& pt, const int8_t* xq, int64_t xq_stride, const float* sx,
               int64_t sx_stride, const float* corr, const float* xsum, int64_t corr_stride, int64_t M, float* y,
               int64_t N, int64_t y0, int64_t n0, int64_t n1, float* scratch);
// As part_int8 with AVX-VNNI: the unsigned tables (w + 128) straight into vpdpbusd, and corr
// taken off as on AVX-512 (int8_avx2.cpp; only called when the CPU reported avxvnni).
void part_int8_vnni(const Part& pt, const int8_t* xq, int64_t xq_stride, const float* sx,
                    int64_t sx_stride, const float* corr, const float* xsum, int64_t corr_stride, int64_t M, float* y,
                    int64_t N, int64_t y0, int64_t n0, int64_t n1, float* scratch);
// A main part and its residual (main.pair) in one pass, at any M: same arguments as part_int8
// (corr: the 128 · Σ x offset; the pair tables carry 64, so half of it is taken off).
void part_pair_k16(const Part& main, const Part& res, const int8_t* xq, int64_t xq_stride, const float* sx,
                   int64_t sx_stride, const float* corr, const float* xsum, int64_t corr_stride, int64_t M, float* y,
                   int64_t N, int64_t y0, int64_t n0, int64_t n1, float* scratch);
// As part_float for a part with v = 4 and byte-aligned 8-bit indices: the same float32 products,
// summed in another order (decode_avx2.cpp).
void part_v4_b8(const Part& pt, const float* xp, int64_t xs, int64_t M, float* y, int64_t N, int64_t n0, int64_t n1);
// The same for v = 3 and 9-bit indices (v3-k512), and v = 2 with byte-aligned 8-bit ones, from Part::ftab4.
void part_v3_b9(const Part& pt, const float* xp, int64_t xs, int64_t M, float* y, int64_t N, int64_t n0, int64_t n1);
void part_v2_b8(const Part& pt, const float* xp, int64_t xs, int64_t M, float* y, int64_t N, int64_t n0, int64_t n1);
// As avx512::part_int8_prefill for v = 3 and 4 parts with w16 (prefill_int8_avx2.cpp): x16 is the
// quantized x widened to int16 in blocks of kX16Rows activation rows, each [column pairs, kX16Rows, 2]
// (widen_pairs), from the part's first column pair in block 0; x16_block: int16 elements from
// one block to the next.
void part_int8_prefill(const Part& pt, const int16_t* x16, int64_t x16_block, const float* sx, int64_t sx_stride,
                       const float* xsum, int64_t xsum_stride, int64_t M, float* y, int64_t N, int64_t y0, int64_t n0,
                       int64_t n1, float* scratch);
// The same with AVX-VNNI (Prepacked::avx_vnni): byte tiles and vpdpbusd on xq as it lies (the
// segment's int8 bytes, row stride xq_stride), as avx512::part_int8_prefill takes it.
void part_int8_prefill_vnni(const Part& pt, const int8_t* xq, int64_t xq_stride, const float* sx, int64_t sx_stride,
                            const float* xsum, int64_t xsum_stride, int64_t M, float* y, int64_t N, int64_t y0,
                            int64_t n0, int64_t n1, float* scratch);
// As part_int8 for parts with w8 and up to 8 index bits (v = 4 or 3), any M but meant for M <= 8
// (decode_int8_avx2.cpp). 9-bit parts never come here: int8_route (vqgemm.cpp) sends their decode
// to the float kernel and prefill takes the int16 tiles (w16, built with w8).
void part_int8_gather(const Part& pt, const int8_t* xq, int64_t xq_stride, const float* sx, int64_t sx_stride,
                  const float* xsum, int64_t xsum_stride, int64_t M, float* y, int64_t N, int64_t y0, int64_t n0,
                  int64_t n1, float* scratch);
// As avx512::quantize_segment, with the same bytes (int8_avx2.cpp).
float quantize_segment(const float* x, int64_t count, int8_t* q, float* sx);
// xq [M, bytes] -> x16 [ceil(M / kX16Rows), bytes / 2, kX16Rows, 2], the layout of part_int8_prefill (bytes
// even), for activation rows [m0, m1).
void widen_pairs(const int8_t* xq, int64_t M, int64_t m0, int64_t m1, int64_t bytes, int16_t* x16);
// Decode with the Dense4 form (dense4_avx2.cpp): y[m * N + n] += row n's dot with activation row m
// for n in [n0, n1) (n0 a multiple of 4). xq [M, blocks · 32]: x' rounded to int8 per block; sv
// [M, blocks, 8]: its scale 4 times, then Σ x' over the block (float32) 4 times. xh [M, head_cols]:
// x' over the head columns at 16 bits (zero past col0), xhsum [M, 2]: their exact sum, the scale.
void dense4_gemv(const Dense4& w, const int8_t* xq, const float* sv, const int16_t* xh, const float* xhsum,
                 int64_t M, float* y, int64_t N, int64_t n0, int64_t n1);
// x'[q] = x[perm[q]] · pscale[q] for q < K, and vqgemm.cpp's dot_f64 (same lanes, same sums):
// prep_avx2.cpp.
void permute_scale(const float* x, const int32_t* perm, const float* pscale, int64_t K, float* out);
double dot_f64(const float* a, const float* b, int64_t n);
// x[0, count) -> int8 per block of 32 (zero padded to blocks · 32) and sv (dense4_gemv's).
void dense4_quantize(const float* x, int64_t count, int64_t blocks, int8_t* q, float* sv);
// As avx512::unpack_index_bytes for every width but 9 (int8_avx2.cpp).
void unpack_index_bytes(const uint32_t* row, int64_t words, int64_t skip, int bits, int64_t count, int64_t nblk,
                        bool split, uint8_t* out);
}  // namespace avx2

namespace avx512 {
// As part_int8 for many activation rows (prefill; prefill_int8_avx512.cpp): the same products
// from the same quantized x and tables, the +128 offset removed in int32 (no corr needed).
void part_int8_prefill(const Part& pt, const int8_t* xq, int64_t xq_stride, const float* sx, int64_t sx_stride,
                       const float* xsum, int64_t xsum_stride, int64_t M, float* y, int64_t N, int64_t y0, int64_t n0,
                       int64_t n1, float* scratch);
// Packed index row -> one byte per column in the int8 route's order (Part::split4), zero padded
// to nblk blocks of 64 (int8_avx512.cpp; out needs nblk · 64 bytes). 9-bit indices: the low
// bytes, then nblk uint64 masks of bit 8 (out needs nblk · 72 bytes).
void unpack_index_bytes(const uint32_t* row, int64_t words, int64_t skip, int bits, int64_t count, int64_t nblk,
                        bool split, uint8_t* out);
// A Part::h16tab head (count <= 64): y[m * N + n] += its dot with activation row m, from xh
// ([M, 128] int16: 14-bit x' over columns [0, 128), zero past head16_cols) with scale sxh[m] and
// the float x' (xp, row stride xs) for the codebook centre's term. scratch: 64-byte aligned, 128 bytes.
void part_head16(const Part& pt, const float* xp, int64_t xs, const int16_t* xh, const float* sxh, int64_t M,
                 float* y, int64_t N, int64_t n0, int64_t n1, uint8_t* scratch);
// x'[0, count) -> int8 q (zero padded to a multiple of 64) with one scale per kXBlock columns in
// sx; returns Σ_blocks sx · 128 · Σ q, the offset the unsigned tables add.
float quantize_segment(const float* x, int64_t count, int8_t* q, float* sx);
}  // namespace avx512

}  // namespace vq2trt
