// AVX2 float kernel for 8-bit indices with v = 4 (the default v4-k256 format), 9-bit ones with
// v = 3 (v3-k512, the bit allocation's step up) and 8-bit ones with v = 2 (outlier parts), any M.
//
// A 256-entry lookup on AVX2 is bound by loads: vpshufb covers 16 entries (a 256-entry byte
// lookup needs 16 shuffles per 32 weights) and a gather is one load per element. The float table
// gives the most weights per load: one 16-byte row is a whole vector of 4 weights. So each load
// fetches a table row, two rows (two vector rows, i.e. eight output rows, at one column) fill a
// ymm register, and one broadcast of x'[m, c] serves every row of the pass. Index bytes are read
// eight at a time from the packed rows and taken apart in general registers (ALU ports, which the
// lookup leaves idle), so nothing is unpacked to memory first and no horizontal sums are needed:
// the lanes of an accumulator are output rows. Each table row pair feeds up to four activation
// rows, which makes M >= 4 bound by the FMAs (two 8-lane FMAs a cycle) like a dense GEMM:
// part_float's dequantize-a-tile path is no faster there on AVX2. Exact float32 products; sums
// in column order per accumulator (for M = 1 even and odd columns apart, then added).
// v = 3 and 2 rows are padded to 4 floats (Part::ftab4, zeros after v): a ymm holds two vector
// rows, so each load brings v weights instead of 4; 9-bit indices come as groups of eight in 9
// bytes, taken apart in registers as the bytes are. Before this kernel v3-k512 decode took
// part_float at 2.5-2.9 G weights/s on Zen 3 against v4-k256's 12-19 (16 x 3072², 2 threads).
#include <immintrin.h>

#include <cstring>

#include "internal.h"

namespace vq2trt {
namespace avx2 {
namespace {

inline int64_t lo(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t hi(int64_t a, int64_t b) { return a > b ? a : b; }

// Words of a group of eight B-bit indices kept per index row: B = 8, its 8 bytes; B = 9, its first
// 8 bytes and 8 later ones (index 7 ends in the ninth byte, or the tenth when shifted).
template <int B>
constexpr int kWords = B == 9 ? 2 : 1;

// S: 9-bit rows whose indices start s0 = 1..7 bits into their first byte (a level-4 tail after a
// head of 64 columns less the outliers): both words are shifted down by s0, the second read from
// byte 2, which the group's 73-79 bits reach, so nothing past the row is read.
template <int B, bool S>
inline void load_group(uint64_t (&q)[kWords<B>], const uint8_t* g, int s0) {
  std::memcpy(&q[0], g, 8);
  if constexpr (B == 9) std::memcpy(&q[1], g + (S ? 2 : 1), 8);
  if constexpr (S) {
    q[0] >>= s0;
    q[1] >>= s0;
  }
}

// Index c of an index row (the row's last columns, not a whole group).
template <int B>
inline uint64_t index_at(const uint8_t* row, int64_t c, int s0) {
  if constexpr (B == 8) return row[c];
  const int64_t bit = s0 + c * B;
  uint16_t w;
  std::memcpy(&w, row + bit / 8, 2);  // 9 bits from bit % 8 end inside these 2 bytes
  return (w >> (bit % 8)) & ((1u << B) - 1);
}

// Table row of index P of a group as a byte offset (16 bytes a row): a rotate and a mask leave it
// ready for the address, with no extra shift to scale it. Built with -mbmi2 (the caller checks
// the CPU): rorx keeps q, so no register copy per index, 5-9 % faster at M = 1, 2. A lone index
// (a row's last columns) comes as P = 0 with its value in q[0].
template <int B, bool S, int P>
inline const float* row_at(const float* tab, const uint64_t (&q)[kWords<B>]) {
  // 9-bit: index 7 from bit 55 of q[1] (read from byte 1); shifted, 6 and 7 from bits 38 and 47
  // of q[1] (read from byte 2).
  constexpr int w = B == 9 && (P == 7 || (S && P == 6)) ? 1 : 0;
  constexpr int at = w == 0 ? B * P : S ? B * P - 16 : B * P - 8;
  constexpr int s = (at - 4) & 63;
  constexpr uint64_t mask = ((uint64_t(1) << B) - 1) << 4;
  const uint64_t off = ((q[w] >> s) | (q[w] << ((64 - s) & 63))) & mask;
  return reinterpret_cast<const float*>(reinterpret_cast<const char*>(tab) + off);
}

inline __m256 pair_row(const float* a, const float* b) {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(a)), _mm_loadu_ps(b), 1);
}

// RP row pairs (8·RP output rows) by MB activation rows; NA accumulator sets take alternate
// columns so that an accumulator's next FMA does not wait on its last (see sets()). XB:
// x' comes as four columns in both lanes (one vbroadcastf128 per four columns) and vpermilps
// broadcasts each, instead of one vbroadcastss load per column: loads are the bound, shuffles
// are not. XF: a column's MB broadcasts first, then each table row pair is used at once; else
// the RP pairs first: whichever keeps fewer registers live next to the accumulators. The loops
// are unrolled by force: left as loops, the accumulators live on the stack.
template <int B, bool S, int MB, int RP, int NA, bool XB, bool XF>
struct Pass {
  static_assert(NA == 1 || NA == 2 || NA == 4, "see the final sum");
  using Group = uint64_t[kWords<B>];
  template <int P>
  static inline void column(__m256 (&a)[NA][MB][RP], const Group* q, const float* tab, const float* x,
                            int64_t xs, const __m256* x4) {
    auto xcol = [&](int m) {
      return XB ? _mm256_permute_ps(x4[m], (P & 3) * 0x55) : _mm256_broadcast_ss(x + m * xs + P);
    };
    auto wrow = [&](int k) { return pair_row(row_at<B, S, P>(tab, q[2 * k]), row_at<B, S, P>(tab, q[2 * k + 1])); };
    if (XF) {
      __m256 xv[MB];
#pragma GCC unroll 16
      for (int m = 0; m < MB; ++m) xv[m] = xcol(m);
#pragma GCC unroll 16
      for (int k = 0; k < RP; ++k) {
        const __m256 w = wrow(k);
#pragma GCC unroll 16
        for (int m = 0; m < MB; ++m) a[P % NA][m][k] = _mm256_fmadd_ps(w, xv[m], a[P % NA][m][k]);
      }
    } else {
      __m256 w[RP];
#pragma GCC unroll 16
      for (int k = 0; k < RP; ++k) w[k] = wrow(k);
#pragma GCC unroll 16
      for (int m = 0; m < MB; ++m) {
        const __m256 xv = xcol(m);
#pragma GCC unroll 16
        for (int k = 0; k < RP; ++k) a[P % NA][m][k] = _mm256_fmadd_ps(w[k], xv, a[P % NA][m][k]);
      }
    }
  }

  template <int P>
  static inline void column4(__m256 (&a)[NA][MB][RP], const Group* q, const float* tab, const float* x,
                             int64_t xs) {
    __m256 x4[MB];
    if (XB) {
#pragma GCC unroll 16
      for (int m = 0; m < MB; ++m) x4[m] = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(x + m * xs + P));
    }
    column<P>(a, q, tab, x, xs, x4);
    column<P + 1>(a, q, tab, x, xs, x4);
    column<P + 2>(a, q, tab, x, xs, x4);
    column<P + 3>(a, q, tab, x, xs, x4);
  }

  // out[m][k]: the sums of activation row m, row pair k. Row i of the pass starts at b + i·rs.
  // next / nnext: the first index row of the pass after this one and how many rows it has (see block()).
  static void run(const uint8_t* b, int64_t rs, const float* tab, const float* x, int64_t xs, int64_t count, int s0,
                  const uint8_t* next, int64_t nnext, __m256 (&out)[MB][RP]) {
    __m256 a[NA][MB][RP];
#pragma GCC unroll 16
    for (int s = 0; s < NA; ++s)
#pragma GCC unroll 16
      for (int m = 0; m < MB; ++m)
#pragma GCC unroll 16
        for (int k = 0; k < RP; ++k) a[s][m][k] = _mm256_setzero_ps();
    int64_t c = 0;
    // Lines of index rows per 64 columns of a pass.
    constexpr int kLines = (2 * RP * B + 7) / 8;
    for (; c + 8 <= count; c += 8) {
      // The next pass's rows are one contiguous block: swept into L2 at the rate this pass reads
      // its own (2·RP·B / 8 lines per 64 columns), so it is there, whole, when the next pass starts.
      if ((c & 63) == 0 && nnext > 0)
        for (int64_t i = 0; i < kLines; ++i)
          _mm_prefetch(reinterpret_cast<const char*>(next + (c / 64 * kLines + i) * 64 % (nnext * rs)), _MM_HINT_T1);
      Group q[2 * RP];
#pragma GCC unroll 16
      for (int i = 0; i < 2 * RP; ++i) load_group<B, S>(q[i], b + i * rs + c / 8 * B, s0);
      column4<0>(a, q, tab, x + c, xs);
      column4<4>(a, q, tab, x + c, xs);
    }
    for (; c < count; ++c) {
      Group q[2 * RP];
#pragma GCC unroll 16
      for (int i = 0; i < 2 * RP; ++i) q[i][0] = index_at<B>(b + i * rs, c, s0);
      __m256 x4[MB];
#pragma GCC unroll 16
      for (int m = 0; m < MB; ++m) x4[m] = _mm256_broadcast_ss(x + m * xs + c);
      column<0>(a, q, tab, x + c, xs, x4);
    }
#pragma GCC unroll 16
    for (int m = 0; m < MB; ++m)
#pragma GCC unroll 16
      for (int k = 0; k < RP; ++k) {
        out[m][k] = a[0][m][k];
        if (NA == 2) out[m][k] = _mm256_add_ps(a[0][m][k], a[NA - 1][m][k]);
        if (NA == 4)
          out[m][k] = _mm256_add_ps(_mm256_add_ps(a[0][m][k], a[1 % NA][m][k]),
                                    _mm256_add_ps(a[2 % NA][m][k], a[3 % NA][m][k]));
      }
  }
};

// The sums of a row pair into y: output rows base .. base + 2V - 1 (lanes 0 .. V - 1, then
// 4 .. 3 + V), those inside [n0, n1).
template <int V>
inline void add_pair(float* y, int64_t base, int64_t n0, int64_t n1, __m256 acc) {
  if (V == 4 && base >= n0 && base + 8 <= n1) {
    _mm256_storeu_ps(y + base, _mm256_add_ps(_mm256_loadu_ps(y + base), acc));
    return;
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, acc);
  for (int64_t l = hi(0, n0 - base); l < lo(2 * V, n1 - base); ++l) y[base + l] += t[l < V ? l : l - V + 4];
}

// Vector rows r0 .. r0 + rows - 1 (rows <= 2·RP; rs = 0 repeats one row) of activation rows
// [0, MB) into y.
template <int V, int B, bool S, int MB, int RP, int NA, bool XB, bool XF>
void pass(const uint8_t* b, int64_t rs, const float* tab, const float* x, int64_t xs, int64_t count, int s0, float* y,
          int64_t N, int64_t r0, int64_t rows, int64_t n0, int64_t n1, int64_t nnext) {
  __m256 acc[MB][RP];
  Pass<B, S, MB, RP, NA, XB, XF>::run(b, rs, tab, x, xs, count, s0, b + rows * rs, nnext, acc);
  n1 = lo(n1, (r0 + rows) * V);
#pragma GCC unroll 16
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 16
    for (int k = 0; k < RP; ++k) add_pair<V>(y + m * N, (r0 + 2 * k) * V, n0, n1, acc[m][k]);
}

// Accumulator sets for a pass of MB x RP: an FMA has a latency of 4 cycles and a column takes
// about one cycle per row pair, so smaller passes need more sets to keep the FMAs independent.
constexpr int sets(int MB, int RP) { return MB * RP <= 3 ? 4 : MB * RP <= 6 ? 2 : 1; }

// Vector rows [r0, r1) for activation rows [0, MB): RP row pairs a pass, then fewer; an odd last
// row pairs with itself.
template <int V, int B, bool S, int MB, int RP, bool XB, bool XF>
void block(const Part& pt, const float* x, int64_t xs, float* y, int64_t N, int64_t r0, int64_t r1, int64_t n0,
           int64_t n1) {
  constexpr int R3 = RP < 3 ? RP : 3, R2 = RP < 2 ? RP : 2;
  const int64_t rs = pt.words * 4;
  const uint8_t* b0 = reinterpret_cast<const uint8_t*>(pt.indices) + pt.skip_bits / 8;
  const float* tab = V == 4 ? pt.ft : pt.ft4;
  const int64_t count = pt.count;
  const int s0 = int(pt.skip_bits % 8);
  // Short index rows (K = 576 .. 1536 bytes) end before the hardware prefetcher has caught on to
  // them, and each pass starts 2·RP new ones, so a pass waited on memory at every row start. With
  // the next pass's rows prefetched during this one, SmolLM2's shapes at M = 1 ran 1.5-1.8x the
  // speed on Zen 3 (4096 x 4096 unchanged; benchmarks/cpu_kernel_avx2.cpp). Rows past the part are
  // not prefetched.
  auto nnext = [&](int64_t r, int64_t rows) { return lo(2 * RP, hi(0, pt.rows - r - rows)); };
  for (int64_t r = r0; r < r1;) {
    const int64_t left = r1 - r;
    const uint8_t* b = b0 + r * rs;
    if (left >= 2 * RP) {
      pass<V, B, S, MB, RP, sets(MB, RP), XB, XF>(b, rs, tab, x, xs, count, s0, y, N, r, 2 * RP, n0, n1, nnext(r, 2 * RP));
      r += 2 * RP;
    } else if (left >= 6) {
      pass<V, B, S, MB, R3, sets(MB, R3), XB, XF>(b, rs, tab, x, xs, count, s0, y, N, r, 6, n0, n1, nnext(r, 6));
      r += 6;
    } else if (left >= 4) {
      pass<V, B, S, MB, R2, sets(MB, R2), XB, XF>(b, rs, tab, x, xs, count, s0, y, N, r, 4, n0, n1, nnext(r, 4));
      r += 4;
    } else if (left >= 2) {
      pass<V, B, S, MB, 1, sets(MB, 1), XB, XF>(b, rs, tab, x, xs, count, s0, y, N, r, 2, n0, n1, nnext(r, 2));
      r += 2;
    } else {
      pass<V, B, S, MB, 1, sets(MB, 1), XB, XF>(b, 0, tab, x, xs, count, s0, y, N, r, 1, n0, n1, 0);
      r += 1;
    }
  }
}

template <int V, int B, bool S>
void part_rows(const Part& pt, const float* xp, int64_t xs, int64_t M, float* y, int64_t N, int64_t n0, int64_t n1) {
  // Row groups of 24 vector rows (a multiple of every pass size below): each block of activation
  // rows sweeps the group's index bytes (24 KB for 1024 columns), which stay in L2 for the next.
  constexpr int64_t kGroupRows = 24;
  const int64_t r_end = (n1 + V - 1) / V;
  const float* x = xp + pt.col0;
  for (int64_t g = n0 / V; g < r_end; g += kGroupRows) {
    const int64_t g1 = lo(r_end, g + kGroupRows);
    // At most 12 accumulators (16 ymm registers): more activation rows per pass share each table
    // load, fewer row pairs keep them in registers.
    for (int64_t m = 0; m < M;) {
      const int64_t left = M - m;
      float* ym = y + m * N;
      const float* xm = x + m * xs;
      if (left == 1) {
        block<V, B, S, 1, 4, true, true>(pt, xm, xs, ym, N, g, g1, n0, n1);
        m += 1;
      } else if (left == 2) {
        block<V, B, S, 2, 4, true, true>(pt, xm, xs, ym, N, g, g1, n0, n1);
        m += 2;
      } else if (left == 3) {
        block<V, B, S, 3, 4, false, true>(pt, xm, xs, ym, N, g, g1, n0, n1);
        m += 3;
      } else {
        block<V, B, S, 4, 3, false, false>(pt, xm, xs, ym, N, g, g1, n0, n1);
        m += 4;
      }
    }
  }
}

}  // namespace

void part_v4_b8(const Part& pt, const float* xp, int64_t xs, int64_t M, float* y, int64_t N, int64_t n0, int64_t n1) {
  part_rows<4, 8, false>(pt, xp, xs, M, y, N, n0, n1);
}

void part_v3_b9(const Part& pt, const float* xp, int64_t xs, int64_t M, float* y, int64_t N, int64_t n0, int64_t n1) {
  if (pt.skip_bits % 8 == 0)
    part_rows<3, 9, false>(pt, xp, xs, M, y, N, n0, n1);
  else
    part_rows<3, 9, true>(pt, xp, xs, M, y, N, n0, n1);
}

void part_v2_b8(const Part& pt, const float* xp, int64_t xs, int64_t M, float* y, int64_t N, int64_t n0, int64_t n1) {
  part_rows<2, 8, false>(pt, xp, xs, M, y, N, n0, n1);
}

}  // namespace avx2
}  // namespace vq2trt
