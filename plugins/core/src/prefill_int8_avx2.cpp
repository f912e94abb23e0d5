// The int8 route's prefill kernel for AVX2 CPUs (accuracy_level 4, more activation rows than the
// decode kernels take), for v = 4 parts with indices of up to 8 bits (the default v4-k256 and
// its 4-bit residuals) and v = 3 parts with up to 9 (v3-k512: the 4th component of each
// centroid is zero, and its lanes are not written).
//
// Plain AVX2 has no VNNI, and vpmaddubsw (u8 x s8) can saturate its pair sums unless one side gives up
// a bit or pays two sign instructions per product. vpmaddwd on int16 cannot: 16 exact
// multiply-adds into int32 per instruction, two a cycle on Zen 3 and Skylake alike, against 8 per
// float FMA. So the quantized x is widened to int16 once per call (vq_gemm), and the weights are
// dequantized per 256 columns (one activation scale block) into int16 tiles from a table of whole
// centroids (Part::w16: 4 components = 8 bytes, one load per index). A tile ymm holds 8 output
// rows x 2 columns (int32 lane = output row, its two int16 = the column pair): one 32-bit
// broadcast of an activation row's column pair multiplies all 8 rows with no horizontal sum.
// x16 comes pair-interleaved in blocks of kX16Rows activation rows (widen_pairs): the rows of a pass
// read one contiguous stream (rows a K apart were 4K-aliased loads, a third of the time; all M
// rows per column pair strode M · 4 bytes per pair through L2).
// Same quantized x, tables and block scales as the decode route, so the int32 sums are the
// same; the float sums run in another order. Built with -mavx2 -mfma (plugins/core/CMakeLists.txt)
// and only called after detect_isa() reported at least kAvx2.
//
// With AVX-VNNI (Intel's AVX2 cores from Alder Lake on, which have no AVX-512; part_int8_prefill_vnni)
// the products are vpdpbusd's, as on AVX-512 (prefill_int8_avx512.cpp): a tile ymm holds 8 output
// rows x 4 columns as bytes (lane = output row, its 4 bytes = the column quad), the unsigned
// table bytes (Part::w8 ^ 0x80: qtab), and each activation row broadcasts its 4 int8 x: 32
// multiply-adds an instruction against vpmaddwd's 16, with no add. A tile ymm is one vpgatherdd
// of 4 columns' centroids for 2 vector rows, transposed by vpshufb in each 128-bit lane (as
// decode_int8_avx2.cpp does). The +128 of the tables comes off per block as -128 · Σ x in int32,
// exact, so the int32 sums are those of the other int8 kernels again. 1.7-2.4x the int16 tiles on
// one core at SmolLM2's and 4096² shapes (RESULTS.md, 17th session).
#include <immintrin.h>

#include <cstring>

#include "internal.h"
#include "unpack.h"

namespace vq2trt {
namespace avx2 {
namespace {

inline int64_t lo(int64_t a, int64_t b) { return a < b ? a : b; }

constexpr int kRV = 4;       // vector rows per pass: 16 output rows, two ymm per column pair
constexpr int kMB = int(kX16Rows);  // activation rows per inner loop (internal.h)
constexpr int kChunk = 256;  // columns per tile = kXBlock, so one block scale per tile

inline int32_t load32(const int16_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// tile[2p + h]: column pair p of vector rows 2h (lanes 0-3) and 2h + 1 (lanes 4-7).
template <typename I>
inline void build_tile(const I* const (&ix)[kRV], int64_t c0, int64_t pairs, const int16_t* w16, __m256i* tile) {
  auto cent = [&](int r, int64_t c) {
    return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w16 + 4 * int64_t(ix[r][c])));
  };
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t c = c0 + 2 * p;
    for (int h = 0; h < 2; ++h) {
      const __m128i a = _mm_unpacklo_epi16(cent(2 * h, c), cent(2 * h, c + 1));
      const __m128i b = _mm_unpacklo_epi16(cent(2 * h + 1, c), cent(2 * h + 1, c + 1));
      _mm256_store_si256(tile + 2 * p + h, _mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1));
    }
  }
}

// facc[m * 16 + l] += sx[m] · Σ_pairs tile · x[m] for MB activation rows; x: column pair p of
// row m at x[2 * (p * M + m)]. Not inlined: in the caller its 10 accumulators spilled.
template <int MB>
__attribute__((noinline)) void dot_tile(const __m256i* tile, int64_t pairs, const int16_t* x, int64_t M,
                                        const float* sx, int64_t sx_stride, float* facc) {
  __m256i a[MB][2];
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m) a[m][0] = a[m][1] = _mm256_setzero_si256();
  // Two column pairs a step, their products added before the accumulator: half the dependent
  // adds on each accumulator, 6-9 % faster on Zen 3 (interleaved, best of 40).
  int64_t p = 0;
  for (; p + 2 <= pairs; p += 2) {
    const __m256i w0 = _mm256_load_si256(tile + 2 * p), w1 = _mm256_load_si256(tile + 2 * p + 1);
    const __m256i w2 = _mm256_load_si256(tile + 2 * p + 2), w3 = _mm256_load_si256(tile + 2 * p + 3);
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      const __m256i xv = _mm256_set1_epi32(load32(x + 2 * (p * M + m)));
      const __m256i xw = _mm256_set1_epi32(load32(x + 2 * ((p + 1) * M + m)));
      a[m][0] = _mm256_add_epi32(a[m][0], _mm256_add_epi32(_mm256_madd_epi16(w0, xv), _mm256_madd_epi16(w2, xw)));
      a[m][1] = _mm256_add_epi32(a[m][1], _mm256_add_epi32(_mm256_madd_epi16(w1, xv), _mm256_madd_epi16(w3, xw)));
    }
  }
  for (; p < pairs; ++p) {
    const __m256i w0 = _mm256_load_si256(tile + 2 * p), w1 = _mm256_load_si256(tile + 2 * p + 1);
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      const __m256i xv = _mm256_set1_epi32(load32(x + 2 * (p * M + m)));
      a[m][0] = _mm256_add_epi32(a[m][0], _mm256_madd_epi16(w0, xv));
      a[m][1] = _mm256_add_epi32(a[m][1], _mm256_madd_epi16(w1, xv));
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m) {
    const __m256 s = _mm256_set1_ps(sx[m * sx_stride]);
    float* f = facc + m * 16;
    _mm256_storeu_ps(f, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[m][0]), s, _mm256_loadu_ps(f)));
    _mm256_storeu_ps(f + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[m][1]), s, _mm256_loadu_ps(f + 8)));
  }
}

void dot_rows(int mb, const __m256i* tile, int64_t pairs, const int16_t* x, int64_t M, const float* sx,
              int64_t sx_stride, float* facc) {
  switch (mb) {
    case 1: return dot_tile<1>(tile, pairs, x, M, sx, sx_stride, facc);
    case 2: return dot_tile<2>(tile, pairs, x, M, sx, sx_stride, facc);
    default: return dot_tile<kMB>(tile, pairs, x, M, sx, sx_stride, facc);
  }
}

// --- AVX-VNNI: byte tiles and vpdpbusd (see the top of the file) ---

constexpr int kVnniMB = 6;  // activation rows per pass: 12 accumulators + 2 tiles + x of the 16 ymm

// tile8[2q + h]: column quad q of vector rows 2h (lanes 0-3) and 2h + 1 (lanes 4-7), the unsigned
// table bytes of 4 columns per lane. ix[r] is readable (zero padded) up to c0 + 4 · quads.
template <typename I>
void build_tile8(const I* const (&ix)[kRV], int64_t c0, int64_t quads, const int32_t* w8, __m256i* tile8) {
  const __m256i tr = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,  //
                                      0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m256i flip = _mm256_set1_epi8(char(0x80));
  for (int64_t q = 0; q < quads; ++q) {
    const int64_t c = c0 + 4 * q;
    for (int h = 0; h < 2; ++h) {
      __m256i id;
      if (sizeof(I) == 1) {
        int32_t a, b;
        std::memcpy(&a, ix[2 * h] + c, 4);
        std::memcpy(&b, ix[2 * h + 1] + c, 4);
        id = _mm256_cvtepu8_epi32(_mm_insert_epi32(_mm_cvtsi32_si128(a), b, 1));
      } else {
        int64_t a, b;
        std::memcpy(&a, ix[2 * h] + c, 8);
        std::memcpy(&b, ix[2 * h + 1] + c, 8);
        id = _mm256_cvtepu16_epi32(_mm_insert_epi64(_mm_cvtsi64_si128(a), b, 1));
      }
      const __m256i w = _mm256_shuffle_epi8(_mm256_i32gather_epi32(w8, id, 4), tr);
      _mm256_store_si256(tile8 + 2 * q + h, _mm256_xor_si256(w, flip));
    }
  }
}

// a += vpdpbusd(t, x). As an intrinsic gcc 12 copied accumulators between registers in the
// unrolled loop (dot_tile8<6>: 52 register moves against 17 this way), as prefill_int8_avx512.cpp
// found for zmm.
__attribute__((target("avx2,fma,avxvnni"))) inline void dpbusd(__m256i& a, __m256i t, __m256i x) {
  __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(a) : "x"(t), "x"(x));
}

// facc[m * 16 + l] += sx[m] · (Σ_quads tile8 · x[m] + init[m]) for MB activation rows; x: row m's
// int8 bytes of the block at x + m · xs.
template <int MB>
__attribute__((noinline, target("avx2,fma,avxvnni"))) void dot_tile8(const __m256i* tile8, int64_t quads,
                                                                      const int8_t* x, int64_t xs, const int32_t* init,
                                                                      int64_t is, const float* sx, int64_t ss,
                                                                      float* facc) {
  __m256i a[MB][2];
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m) a[m][0] = a[m][1] = _mm256_setzero_si256();
  for (int64_t q = 0; q < quads; ++q) {
    const __m256i t0 = _mm256_load_si256(tile8 + 2 * q), t1 = _mm256_load_si256(tile8 + 2 * q + 1);
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      int32_t x4;
      std::memcpy(&x4, x + m * xs + 4 * q, 4);
      const __m256i xb = _mm256_set1_epi32(x4);
      dpbusd(a[m][0], t0, xb);
      dpbusd(a[m][1], t1, xb);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m) {
    const __m256 s = _mm256_set1_ps(sx[m * ss]);
    const __m256i c = _mm256_set1_epi32(init[m * is]);
    float* f = facc + m * 16;
    _mm256_storeu_ps(f, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(a[m][0], c)), s, _mm256_loadu_ps(f)));
    _mm256_storeu_ps(f + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(a[m][1], c)), s, _mm256_loadu_ps(f + 8)));
  }
}

void dot_rows8(int mb, const __m256i* tile8, int64_t quads, const int8_t* x, int64_t xs, const int32_t* init, int64_t is,
               const float* sx, int64_t ss, float* facc) {
  switch (mb) {
    case 1: return dot_tile8<1>(tile8, quads, x, xs, init, is, sx, ss, facc);
    case 2: return dot_tile8<2>(tile8, quads, x, xs, init, is, sx, ss, facc);
    case 3: return dot_tile8<3>(tile8, quads, x, xs, init, is, sx, ss, facc);
    case 4: return dot_tile8<4>(tile8, quads, x, xs, init, is, sx, ss, facc);
    case 5: return dot_tile8<5>(tile8, quads, x, xs, init, is, sx, ss, facc);
    default: return dot_tile8<kVnniMB>(tile8, quads, x, xs, init, is, sx, ss, facc);
  }
}

// Where the two forms read x: the int16 pairs (x16, block stride x16_block) or the int8 bytes
// (xq, row stride xq_stride), with the block sums the VNNI form takes off (init [M, nsb]).
struct XIn {
  const int16_t* x16;
  int64_t x16_block;
  const int8_t* xq;
  int64_t xq_stride;
  const int32_t* init;
};

// I: uint8_t indices, or uint16_t for 9 bits. VNNI: the byte tiles (above), else the int16 ones.
template <typename I, bool VNNI>
void part_rows(const Part& pt, const XIn& in, const float* sx, int64_t sx_stride, const float* xsum,
               int64_t xsum_stride, int64_t M, float* y, int64_t N, int64_t y0, int64_t n0, int64_t n1, float* scratch) {
  const int64_t v = pt.v;
  const int64_t nblk = pt.split4 ? 2 * ((pt.count + 127) / 128) : (pt.count + 63) / 64, cols = nblk * 64;
  const int64_t nsb = (nblk + 3) / 4;
  // Layout (int8_prefill_scratch_floats covers it): [VNNI: the block sums, M · nsb int32] facc
  // [M, 16], one tile (int16: kChunk ymm; bytes: kChunk / 2), kRV index rows.
  float* facc = scratch + (VNNI ? (M * nsb + 15) / 16 * 16 : 0);
  __m256i* tile = reinterpret_cast<__m256i*>(facc + (M * 16 + 15) / 16 * 16);
  I* ibuf = reinterpret_cast<I*>(tile + (VNNI ? kChunk / 2 : kChunk));
  const bool bytes8 = sizeof(I) == 1 && pt.bits == 8 && pt.skip_bits % 8 == 0;
  for (int64_t r0 = n0 / v; r0 * v < n1; r0 += kRV) {
    // Indices in the segment's column order, zero past count: rows past n1 read index 0 and are
    // not written, padding columns meet zero activations.
    const I* ix[kRV];
    for (int rv = 0; rv < kRV; ++rv) {
      I* out = ibuf + rv * cols;
      const int64_t r = r0 + rv;
      const uint32_t* row = reinterpret_cast<const uint32_t*>(pt.indices) + r * pt.words;
      if (r * v >= n1) {
        std::memset(out, 0, size_t(cols) * sizeof(I));
      } else if (bytes8) {
        std::memcpy(out, reinterpret_cast<const uint8_t*>(row) + pt.skip_bits / 8, size_t(pt.count));
        std::memset(out + pt.count, 0, size_t(cols - pt.count));
      } else if (sizeof(I) == 1) {
        unpack_index_bytes(row, pt.words, pt.skip_bits, pt.bits, pt.count, nblk, pt.split4,
                           reinterpret_cast<uint8_t*>(out));
      } else {
        unpack_generic(row, pt.words, pt.skip_bits, pt.bits, pt.count, out);
        std::memset(out + pt.count, 0, size_t(cols - pt.count) * sizeof(I));
      }
      ix[rv] = out;
    }
    std::memset(facc, 0, size_t(M * 16) * sizeof(float));
    for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
      const int64_t pairs = lo(kChunk, cols - c0) / 2, sb = c0 / kChunk;
      if (VNNI) {
        build_tile8(ix, c0, pairs / 2, pt.w8, tile);
        for (int64_t m0 = 0; m0 < M; m0 += kVnniMB)
          dot_rows8(int(lo(kVnniMB, M - m0)), tile, pairs / 2, in.xq + m0 * in.xq_stride + c0, in.xq_stride,
                    in.init + m0 * nsb + sb, nsb, sx + m0 * sx_stride + sb, sx_stride, facc + m0 * 16);
        continue;
      }
      build_tile(ix, c0, pairs, pt.w16, tile);
      for (int64_t m0 = 0; m0 < M; m0 += kMB)
        dot_rows(int(lo(kMB, M - m0)), tile, pairs, in.x16 + m0 / kMB * in.x16_block + c0 * kMB, kMB,
                 sx + m0 * sx_stride + sb, sx_stride, facc + m0 * 16);
    }
    // Lane l: vector row r0 + l / 4, component l % 4 (v = 3: lanes 3, 7, 11, 15 are padding).
    // v = 4 with all 16 rows inside [n0, n1) (every pass but a task's edges): lane l is output
    // row 4 r0 + l, so two ymm per activation row. As a scalar loop with its bounds tests it cost
    // 30-40 % of the kernel at K = 576 (16 output rows x M against 16 x M x 512 products).
    if (v == 4 && 4 * r0 >= n0 && 4 * r0 + 16 <= n1) {
      const __m256 qs = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(pt.qs));
      const __m256 qc = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(pt.qc));
      for (int64_t m = 0; m < M; ++m) {
        const __m256 xs = _mm256_set1_ps(xsum[m * xsum_stride]);
        float* yo = y + m * N + 4 * r0 - y0;
        for (int h = 0; h < 2; ++h) {
          // Rounded as the scalar loop below (no contraction): a row's sum does not depend on
          // where a task boundary falls.
          const __m256 t = _mm256_add_ps(_mm256_mul_ps(qs, _mm256_loadu_ps(facc + m * 16 + 8 * h)), _mm256_mul_ps(qc, xs));
          _mm256_storeu_ps(yo + 8 * h, _mm256_add_ps(_mm256_loadu_ps(yo + 8 * h), t));
        }
      }
      continue;
    }
    for (int64_t m = 0; m < M; ++m) {
      const float xs = xsum[m * xsum_stride];
      for (int64_t l = 0; l < 16; ++l) {
        const int64_t j = l & 3, n = (r0 + l / 4) * v + j;
        if (j < v && n >= n0 && n < n1) y[m * N + n - y0] += pt.qs[j] * facc[m * 16 + l] + pt.qc[j] * xs;
      }
    }
  }
}

}  // namespace

void part_int8_prefill(const Part& pt, const int16_t* x16, int64_t x16_block, const float* sx, int64_t sx_stride,
                       const float* xsum, int64_t xsum_stride, int64_t M, float* y, int64_t N, int64_t y0, int64_t n0,
                       int64_t n1, float* scratch) {
  const XIn in{x16, x16_block, nullptr, 0, nullptr};
  (pt.bits > 8 ? part_rows<uint16_t, false> : part_rows<uint8_t, false>)(pt, in, sx, sx_stride, xsum, xsum_stride, M,
                                                                       y, N, y0, n0, n1, scratch);
}

void part_int8_prefill_vnni(const Part& pt, const int8_t* xq, int64_t xq_stride, const float* sx, int64_t sx_stride,
                            const float* xsum, int64_t xsum_stride, int64_t M, float* y, int64_t N, int64_t y0,
                            int64_t n0, int64_t n1, float* scratch) {
  const int64_t nblk = pt.split4 ? 2 * ((pt.count + 127) / 128) : (pt.count + 63) / 64, nsb = (nblk + 3) / 4;
  // -128 · Σ x per activation row and scale block (the segment's padding bytes are zero).
  int32_t* init = reinterpret_cast<int32_t*>(scratch);
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t sb = 0; sb < nsb; ++sb) {
      __m256i s = _mm256_setzero_si256();
      for (int64_t h = 8 * sb; h < 2 * lo(nblk, 4 * sb + 4); ++h) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + m * xq_stride + 32 * h));
        s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, xv), ones16));
      }
      alignas(32) int32_t t[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(t), s);
      init[m * nsb + sb] = -128 * (t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7]);
    }
  const XIn in{nullptr, 0, xq, xq_stride, init};
  (pt.bits > 8 ? part_rows<uint16_t, true> : part_rows<uint8_t, true>)(pt, in, sx, sx_stride, xsum, xsum_stride, M, y,
                                                                     N, y0, n0, n1, scratch);
}

}  // namespace avx2
}  // namespace vq2trt
