// The int8 part kernel for prefill (accuracy_level 4, more activation rows than decode's route
// takes): AVX-512 VBMI lookups + VNNI dot products.
//
// The decode kernel (int8_avx512.cpp) looks the weights up per output row into a vector whose
// lanes are column quads and sums those lanes per 256-column block for every activation row: with
// many rows the horizontal sums and block conversions would cost more than the products. Here a
// block of 32 output rows is dequantized once per 256 columns into vpdpbusd tiles, one zmm per
// 4 columns and 16 output rows (lane = output row, its 4 bytes = the 4 columns), and each
// activation row broadcasts its 4 bytes of x against them: 64 multiply-adds per instruction with
// no horizontal sum, 12 activation rows x 2 tiles of accumulators in registers. A tile is the
// decode lookups of 16 output rows (one vector per row) put through a 16 x 16 dword transpose, so
// every k <= 512 part and any v is covered, 4-bit "split" columns included (the activations are
// stored in that order too), and 9-bit (512-entry) parts.
// Same quantized x, byte tables and block scales as the decode route; the +128 of the unsigned
// tables comes off in int32 per block (exact; decode subtracts it in float), and the float sums
// run in another order, so prefill and decode agree to float32 rounding. Built with per-file flags
// (plugins/core/CMakeLists.txt) and only called after detect_isa() reported kAvx512.
#include <immintrin.h>

#include <cstring>

#include "internal.h"

namespace vq2trt {
namespace avx512 {
namespace {

inline int64_t lo(int64_t a, int64_t b) { return a < b ? a : b; }

constexpr int kTileN = int(kInt8PrefillTileN);  // two 16-lane tiles
constexpr int kMB = 12;     // activation rows per pass: 24 accumulators + 2 tiles of the 32 zmm

// r[l] lane c -> r[c] lane l.
inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // u[4g + e], 128-bit lane k: rows 4g .. 4g+3 at lane 4k + e
  for (int g = 0; g < 16; g += 4) {
    u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
    u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
    u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
    u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
  }
  for (int e = 0; e < 4; ++e) {
    const __m512i a = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x88), b = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xdd);
    const __m512i c = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x88), d = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xdd);
    r[e] = _mm512_shuffle_i32x4(a, c, 0x88);
    r[8 + e] = _mm512_shuffle_i32x4(a, c, 0xdd);
    r[4 + e] = _mm512_shuffle_i32x4(b, d, 0x88);
    r[12 + e] = _mm512_shuffle_i32x4(b, d, 0xdd);
  }
}

// 64 table bytes at 64 indices: vpermb (64 entries), two vpermi2b and a blend on bit 7 (256), or
// that twice and a blend on bit 8 (512 entries; hi: bit 8 of the 64 indices).
inline __m512i lookup(__m512i ix, const uint8_t* t, int entries, uint64_t hi) {
  if (entries == 64) return _mm512_permutexvar_epi8(ix, _mm512_loadu_si512(t));
  const __mmask64 b7 = _mm512_movepi8_mask(ix);
  const __m512i l = _mm512_permutex2var_epi8(_mm512_loadu_si512(t), ix, _mm512_loadu_si512(t + 64));
  const __m512i h = _mm512_permutex2var_epi8(_mm512_loadu_si512(t + 128), ix, _mm512_loadu_si512(t + 192));
  const __m512i a = _mm512_mask_blend_epi8(b7, l, h);
  if (entries == 256) return a;
  const __m512i l2 = _mm512_permutex2var_epi8(_mm512_loadu_si512(t + 256), ix, _mm512_loadu_si512(t + 320));
  const __m512i h2 = _mm512_permutex2var_epi8(_mm512_loadu_si512(t + 384), ix, _mm512_loadu_si512(t + 448));
  return _mm512_mask_blend_epi8(hi, a, _mm512_mask_blend_epi8(b7, l2, h2));
}

// Tiles of 64-column blocks [b0, b1) for the pass's output rows: tile + (q·2 + h)·64 holds column
// quad q (counted from b0) of rows 16h .. 16h+15. ix[i] / tab[i]: row i's index bytes and table
// (null past the task's rows: weight 0, any value would do since those lanes are never stored).
// 512-entry tables: row i's bit-8 masks follow its nblk index blocks (unpack_index_bytes).
void build_tiles(const uint8_t* const* ix, const uint8_t* const* tab, int entries, int64_t nblk, int nt, int64_t b0,
                 int64_t b1, uint8_t* tile) {
  for (int64_t b = b0; b < b1; ++b)
    for (int h = 0; h < nt; ++h) {
      __m512i r[16];
      for (int l = 0; l < 16; ++l) {
        const int i = 16 * h + l;
        uint64_t hi = 0;
        if (entries == 512 && tab[i]) std::memcpy(&hi, ix[i] + nblk * 64 + 8 * b, 8);
        r[l] = tab[i] ? lookup(_mm512_loadu_si512(ix[i] + 64 * b), tab[i], entries, hi) : _mm512_set1_epi8(char(0x80));
      }
      transpose16(r);
      uint8_t* out = tile + (b - b0) * 16 * 128 + 64 * h;
      for (int q = 0; q < 16; ++q) _mm512_storeu_si512(out + q * 128, r[q]);
    }
}

inline int32_t load4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// a += vpdpbusd(t, b). As an intrinsic in the unrolled loop below, GCC 12 copied every
// accumulator to another register and back each iteration (24 extra moves per 24 products).
inline void dpbusd(__m512i& a, __m512i t, __m512i b) { __asm__("vpdpbusd %2, %1, %0" : "+v"(a) : "v"(t), "v"(b)); }

// MB activation rows over one scale block of `quads` column quads: facc[mm][16·NT] += sx · (Σ
// table byte · x + init), init = -128 · Σ x (the unsigned tables' offset, exact in int32).
// NT = 1 for a pass of at most 16 rows (the last of a task, or all of a small one).
template <int MB, int NT>
void dot_rows(const uint8_t* tile, int64_t quads, const int8_t* x, int64_t xs, const int32_t* init, int64_t is,
              const float* sx, int64_t ss, float* facc) {
  __m512i a0[MB], a1[MB];  // a1: NT = 2 only
#pragma GCC unroll 16
  for (int mm = 0; mm < MB; ++mm) a0[mm] = a1[mm] = _mm512_setzero_si512();
  for (int64_t q = 0; q < quads; ++q) {
    const __m512i t0 = _mm512_loadu_si512(tile + q * 128), t1 = NT > 1 ? _mm512_loadu_si512(tile + q * 128 + 64) : t0;
#pragma GCC unroll 16
    for (int mm = 0; mm < MB; ++mm) {
      const __m512i xb = _mm512_set1_epi32(load4(x + mm * xs + 4 * q));
      dpbusd(a0[mm], t0, xb);
      if (NT > 1) dpbusd(a1[mm], t1, xb);
    }
  }
#pragma GCC unroll 16
  for (int mm = 0; mm < MB; ++mm) {
    const __m512 s = _mm512_set1_ps(sx[mm * ss]);
    const __m512i c = _mm512_set1_epi32(init[mm * is]);
    float* f = facc + mm * kTileN;
    for (int h = 0; h < NT; ++h) {
      const __m512 a = _mm512_cvtepi32_ps(_mm512_add_epi32(h ? a1[mm] : a0[mm], c));
      _mm512_storeu_ps(f + 16 * h, _mm512_fmadd_ps(a, s, _mm512_loadu_ps(f + 16 * h)));
    }
  }
}

// All M activation rows, in passes of 12, then 8, 4 and 1.
template <int NT>
void dot_all(const uint8_t* tile, int64_t quads, const int8_t* x, int64_t xs, const int32_t* init, int64_t is,
             const float* sx, int64_t ss, int64_t M, float* facc) {
  for (int64_t m = 0; m < M;) {
    const int64_t left = M - m;
    const int8_t* xm = x + m * xs;
    const int32_t* im = init + m * is;
    const float* sm = sx + m * ss;
    float* fm = facc + m * kTileN;
    const int mb = left >= kMB ? kMB : left >= 8 ? 8 : left >= 4 ? 4 : 1;
    switch (mb) {
      case kMB: dot_rows<kMB, NT>(tile, quads, xm, xs, im, is, sm, ss, fm); break;
      case 8: dot_rows<8, NT>(tile, quads, xm, xs, im, is, sm, ss, fm); break;
      case 4: dot_rows<4, NT>(tile, quads, xm, xs, im, is, sm, ss, fm); break;
      default: dot_rows<1, NT>(tile, quads, xm, xs, im, is, sm, ss, fm);
    }
    m += mb;
  }
}

}  // namespace

void part_int8_prefill(const Part& pt, const int8_t* xq, int64_t xq_stride, const float* sx, int64_t sx_stride,
                       const float* xsum, int64_t xsum_stride, int64_t M, float* y, int64_t N, int64_t y0, int64_t n0,
                       int64_t n1, float* scratch) {
  const int64_t v = pt.v, nblk = pt.split4 ? 2 * ((pt.count + 127) / 128) : (pt.count + 63) / 64;
  const int64_t nsb = (nblk + 3) / 4, rowbytes = nblk * 64 + nblk * 8 + 64;  // layout: unpack_index_bytes
  int32_t* init = reinterpret_cast<int32_t*>(scratch);
  float* facc = scratch + ((M * nsb + 15) / 16) * 16;  // 64-byte aligned (scratch is)
  uint8_t* tile = reinterpret_cast<uint8_t*>(facc + M * kTileN);
  uint8_t* idx = tile + 64 * 128;  // layout: int8_prefill_scratch_floats
  // Σ x per activation row and scale block (padding bytes are zero).
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t sb = 0; sb < nsb; ++sb) {
      __m512i s = _mm512_setzero_si512();
      for (int64_t b = 4 * sb; b < lo(nblk, 4 * sb + 4); ++b)
        s = _mm512_dpbusd_epi32(s, ones, _mm512_loadu_si512(xq + m * xq_stride + 64 * b));
      init[m * nsb + sb] = -128 * _mm512_reduce_add_epi32(s);
    }
  for (int64_t nb = n0; nb < n1; nb += kTileN) {
    const int64_t rows = lo(kTileN, n1 - nb), r0 = nb / v, r1 = (nb + rows - 1) / v;
    const int nt = rows > 16 ? 2 : 1;
    for (int64_t r = r0; r <= r1; ++r)
      unpack_index_bytes(reinterpret_cast<const uint32_t*>(pt.indices) + r * pt.words, pt.words, pt.skip_bits,
                         pt.bits, pt.count, nblk, pt.split4, idx + (r - r0) * rowbytes);
    const uint8_t* ix[kTileN];
    const uint8_t* tab[kTileN];
    alignas(64) float qs[kTileN], qc[kTileN];
    for (int i = 0; i < kTileN; ++i) {
      const int64_t n = nb + i, r = n / v, j = n - r * v;
      ix[i] = idx + (r - r0) * rowbytes;
      tab[i] = i < rows ? pt.qt + j * pt.qentries : nullptr;
      qs[i] = i < rows ? pt.qs[j] : 0.f;
      qc[i] = i < rows ? pt.qc[j] : 0.f;
    }
    std::memset(facc, 0, size_t(M * kTileN) * sizeof(float));
    for (int64_t sb = 0; sb < nsb; ++sb) {
      const int64_t b0 = 4 * sb, b1 = lo(nblk, b0 + 4), quads = (b1 - b0) * 16;
      build_tiles(ix, tab, pt.qentries, nblk, nt, b0, b1, tile);
      const int8_t* x = xq + 64 * b0;
      if (nt == 2)
        dot_all<2>(tile, quads, x, xq_stride, init + sb, nsb, sx + sb, sx_stride, M, facc);
      else
        dot_all<1>(tile, quads, x, xq_stride, init + sb, nsb, sx + sb, sx_stride, M, facc);
    }
    for (int h = 0; h < nt; ++h) {
      const int64_t l1 = lo(16, rows - 16 * h);
      const __mmask16 mask = __mmask16((1u << l1) - 1);
      const __m512 s = _mm512_load_ps(qs + 16 * h), c = _mm512_load_ps(qc + 16 * h);
      for (int64_t m = 0; m < M; ++m) {
        float* yr = y + m * N + nb + 16 * h - y0;
        const __m512 add = _mm512_fmadd_ps(c, _mm512_set1_ps(xsum[m * xsum_stride]),
                                           _mm512_mul_ps(s, _mm512_loadu_ps(facc + m * kTileN + 16 * h)));
        _mm512_mask_storeu_ps(yr, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, yr), add));
      }
    }
  }
}

}  // namespace avx512
}  // namespace vq2trt
