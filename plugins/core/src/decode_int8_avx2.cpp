// The int8 route's decode kernel for AVX2 CPUs with fast gathers (accuracy_level 4, up to 8
// activation rows), for v = 4 and v = 3 parts with 5- to 8-bit indices (the default v4-k256).
// v3-k512's 9-bit parts take the float kernel instead (vqgemm.cpp, int8_route): 2.9x this one's
// speed, whose 9-bit indices were unpacked a bit at a time.
//
// A 256-entry table is out of vpshufb's reach (16 entries), and the float kernel is bound by one
// 16-byte table-row load per 4 weights (decode_avx2.cpp). Here a centroid is 4 signed bytes, one
// dword (Part::w8; v = 3 leaves the 4th zero), so one vpgatherdd fetches the centroids of 8
// columns: 32 weights per instruction, from a 1-2 KB table that stays in L1. vpshufb then transposes each 128-bit lane
// (4 columns x 4 components) to component-major order, so that against x's 4 bytes repeated,
// vpmaddubsw + vpmaddwd(1) leave in int32 lane j of each half the component-j sum of 4 columns:
// the lanes are output rows and no horizontal sum is needed until the end of the row. Same
// sign trick as int8_avx2.cpp (|x| times w with x's sign: no pair sum can saturate, 2 · 127 ·
// 127 < 2^15), same quantized x, block scales and tables as the other int8 kernels, so the int32
// sums are theirs; only the float sums of the blocks run in another order. Built with -mavx2
// -mfma (plugins/core/CMakeLists.txt) and only called after detect_isa() reported kAvx2.
#include <immintrin.h>

#include <cstring>

#include "internal.h"
#include "unpack.h"

namespace vq2trt {
namespace avx2 {
namespace {

inline int64_t lo(int64_t a, int64_t b) { return a < b ? a : b; }

constexpr int64_t kCols = 8;  // columns per gather

// x's 8 bytes at c as the multiplier of one gather: lane h holds bytes c + 4h .. c + 4h + 3,
// repeated for the 4 components.
inline __m256i x_pattern(const int8_t* x) {
  int64_t q;
  std::memcpy(&q, x, 8);
  const __m256i rep = _mm256_setr_epi8(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3,  //
                                       4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7);
  return _mm256_shuffle_epi8(_mm256_set1_epi64x(q), rep);
}

inline __m256i load_ids(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// RV vector rows by MB activation rows. ix[r]: row r's indices (readable up to the end of its
// last 8-column group); x[m]: activation row m's bytes of the segment (zero padded to 64).
template <int RV, int MB>
void rows_dot(const uint8_t* const (&ix)[RV], int64_t count, const int32_t* w8, const int8_t* x, int64_t xs,
              const float* sx, int64_t sx_stride, const uint8_t* next, int64_t next_stride, int64_t nnext,
              __m256 (&out)[RV][MB]) {
  const __m256i tr = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,  //
                                      0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 8
  for (int r = 0; r < RV; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) out[r][m] = _mm256_setzero_ps();
  for (int64_t c0 = 0; c0 < count; c0 += kXBlock) {
    // Index rows of 576-1536 bytes end before the hardware prefetcher locks on (decode_avx2.cpp):
    // the next rows are fetched into L2 while these are summed, a line of each per 64 columns.
    if (nnext > 0)
      for (int64_t l = c0; l < lo(c0 + kXBlock, count); l += 64)
        for (int64_t r = 0; r < nnext; ++r) _mm_prefetch(reinterpret_cast<const char*>(next + r * next_stride + l), _MM_HINT_T1);
    __m256i acc[RV][MB];
#pragma GCC unroll 8
    for (int r = 0; r < RV; ++r)
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) acc[r][m] = _mm256_setzero_si256();
    const int64_t c1 = lo(c0 + kXBlock, count);
    for (int64_t c = c0; c < c1; c += kCols) {
      __m256i xa[MB], xv[MB];
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) {
        xv[m] = x_pattern(x + m * xs + c);
        xa[m] = _mm256_abs_epi8(xv[m]);
      }
#pragma GCC unroll 8
      for (int r = 0; r < RV; ++r) {
        const __m256i id = load_ids(ix[r] + c);
        const __m256i w = _mm256_shuffle_epi8(_mm256_i32gather_epi32(w8, id, 4), tr);
#pragma GCC unroll 8
        for (int m = 0; m < MB; ++m) {
          const __m256i p = _mm256_maddubs_epi16(xa[m], _mm256_sign_epi8(w, xv[m]));
          acc[r][m] = _mm256_add_epi32(acc[r][m], _mm256_madd_epi16(p, ones));
        }
      }
    }
    const int64_t sb = c0 / kXBlock;
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      const __m256 s = _mm256_set1_ps(sx[m * sx_stride + sb]);
#pragma GCC unroll 8
      for (int r = 0; r < RV; ++r) out[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][m]), s, out[r][m]);
    }
  }
}

template <int RV, int MB>
void rows_out(const Part& pt, const uint8_t* const (&ix)[RV], const int8_t* xq, int64_t xq_stride,
              const float* sx, int64_t sx_stride, const float* xsum, int64_t xsum_stride, float* y, int64_t N,
              int64_t y0, int64_t r0, int64_t n0, int64_t n1, const uint8_t* next, int64_t next_stride,
              int64_t nnext) {
  __m256 out[RV][MB];
  rows_dot<RV, MB>(ix, pt.count, reinterpret_cast<const int32_t*>(pt.w8), xq, xq_stride, sx, sx_stride, next,
                   next_stride, nnext, out);
  for (int m = 0; m < MB; ++m) {
    const float xs = xsum[m * xsum_stride];
    for (int r = 0; r < RV; ++r) {
      alignas(16) float t[4];
      _mm_store_ps(t, _mm_add_ps(_mm256_castps256_ps128(out[r][m]), _mm256_extractf128_ps(out[r][m], 1)));
      for (int64_t j = 0; j < pt.v; ++j) {
        const int64_t n = (r0 + r) * pt.v + j;
        if (n >= n0 && n < n1) y[m * N + n - y0] += pt.qs[j] * t[j] + pt.qc[j] * xs;
      }
    }
  }
}

// Vector rows [n0 / v, ceil(n1 / v)), kRV at a time.
void part_rows(const Part& pt, const int8_t* xq, int64_t xq_stride, const float* sx, int64_t sx_stride,
               const float* xsum, int64_t xsum_stride, int64_t M, float* y, int64_t N, int64_t y0, int64_t n0,
               int64_t n1, float* scratch) {
  constexpr int kRV = 4;
  const int64_t v = pt.v, nblk = (pt.count + 63) / 64, cols = nblk * 64;
  const bool direct = pt.bits == 8 && pt.skip_bits % 8 == 0;
  const int64_t rs = pt.words * 4, full = pt.count / kCols * kCols;
  const uint8_t* b0 = reinterpret_cast<const uint8_t*>(pt.indices) + pt.skip_bits / 8;
  // Scratch: kRV index rows of `cols` indices (unpacked, zero padded; for packed bytes only rows
  // whose last 8-column group is partial: a direct read there could pass the end of the indices).
  uint8_t* ibuf = reinterpret_cast<uint8_t*>(scratch);
  const int64_t r_end = (n1 + v - 1) / v;
  for (int64_t r0 = n0 / v; r0 < r_end; r0 += kRV) {
    const int64_t rv = lo(kRV, r_end - r0);
    const uint8_t* ix[kRV];
    for (int64_t r = 0; r < kRV; ++r) {
      uint8_t* buf = ibuf + r * cols;
      const int64_t row = r0 + lo(r, rv - 1);  // past the end: the last row again, not written
      if (direct && full == pt.count) {
        ix[r] = b0 + row * rs;
        continue;
      }
      if (direct) {
        std::memset(buf + full, 0, kCols);
        std::memcpy(buf, b0 + row * rs, size_t(pt.count));
      } else {
        unpack_index_bytes(reinterpret_cast<const uint32_t*>(pt.indices) + row * pt.words, pt.words, pt.skip_bits,
                           pt.bits, pt.count, nblk, false, buf);
      }
      ix[r] = buf;
    }
    const int64_t nnext = direct ? lo(kRV, r_end - r0 - kRV) : 0;
    const uint8_t* next = b0 + (r0 + kRV) * rs;
    for (int64_t m = 0; m < M;) {
      const int8_t* xm = xq + m * xq_stride;
      const float* sm = sx + m * sx_stride;
      const float* xsm = xsum + m * xsum_stride;
      float* ym = y + m * N;
      const uint8_t* nx = m == 0 ? next : nullptr;
      const int64_t nn = m == 0 ? nnext : 0;
      if (M - m >= 2) {
        const uint8_t* ix2[2] = {ix[0], ix[1]};
        const uint8_t* ix3[2] = {ix[2], ix[3]};
        rows_out<2, 2>(pt, ix2, xm, xq_stride, sm, sx_stride, xsm, xsum_stride, ym, N, y0, r0, n0, n1, nx, rs, nn);
        if (rv > 2)
          rows_out<2, 2>(pt, ix3, xm, xq_stride, sm, sx_stride, xsm, xsum_stride, ym, N, y0, r0 + 2, n0, n1, nullptr,
                            rs, 0);
        m += 2;
      } else {
        // Fewer rows than a pass at the end of a task: no repeated row's work.
        if (rv == kRV) {
          rows_out<kRV, 1>(pt, ix, xm, xq_stride, sm, sx_stride, xsm, xsum_stride, ym, N, y0, r0, n0, n1, nx, rs, nn);
        } else {
          for (int64_t r = 0; r < rv; ++r) {
            const uint8_t* ix1[1] = {ix[r]};
            rows_out<1, 1>(pt, ix1, xm, xq_stride, sm, sx_stride, xsm, xsum_stride, ym, N, y0, r0 + r, n0, n1,
                              nullptr, rs, 0);
          }
        }
        m += 1;
      }
    }
  }
}

}  // namespace

void part_int8_gather(const Part& pt, const int8_t* xq, int64_t xq_stride, const float* sx, int64_t sx_stride,
                      const float* xsum, int64_t xsum_stride, int64_t M, float* y, int64_t N, int64_t y0, int64_t n0,
                      int64_t n1, float* scratch) {
  part_rows(pt, xq, xq_stride, sx, sx_stride, xsum, xsum_stride, M, y, N, y0, n0, n1, scratch);
}

}  // namespace avx2
}  // namespace vq2trt
