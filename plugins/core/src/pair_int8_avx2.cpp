// The AVX2 int8 kernel for a main part with k <= 16 and its residual (k_r <= 16) over the same
// columns (the v4-k16-r16 family): an additive 256-point codebook read as two 16-entry vpshufb
// lookups per 32 weights of a component, added as bytes, then one vpmaddubsw against x. Summing
// the two parts separately (int8_avx2.cpp) costs two lookups, two sign fix-ups and two
// multiply-add chains; here the tables share one scale per component (Part::ptab) and are
// offset so that every byte sum is an unsigned 7-bit value: vpmaddubsw's pair sums stay below
// 2 · 127 · 127 < 2^15 with no sign juggling. Activations as in the other int8 kernels (same
// quantized x in split 4-bit order, one scale per kXBlock columns). For M > 1 the looked-up
// weights are reused for two activation rows at a time. Built with -mavx2 -mfma
// (plugins/core/CMakeLists.txt) and only called when prepack() paired parts for kAvx2.
#include <immintrin.h>

#include "internal.h"
#include "unpack.h"

namespace vq2trt {
namespace avx2 {
namespace {

inline int64_t lo(int64_t a, int64_t b) { return a < b ? a : b; }

// JV components of one vector row against MB activation rows: sums[m * JV + j] = Σ_blocks
// sx · Σ_c xq · (main byte + residual byte). next_*: the next vector row's packed indices,
// fetched into L2 while this one is summed (0 bytes: none).
template <int JV, int MB>
void pair_dot(const uint8_t* ia, const uint8_t* ib, int64_t nblk, const uint8_t* tab, const int8_t* xq,
              int64_t xq_stride, const float* sx, int64_t sx_stride, float* sums, const uint8_t* next_a,
              const uint8_t* next_b, int64_t next_bytes) {
  __m256i ta[JV], tb[JV];
  #pragma GCC unroll 8
  for (int j = 0; j < JV; ++j) {
    ta[j] = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tab + 32 * j)));
    tb[j] = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tab + 32 * j + 16)));
  }
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[MB][JV];
  #pragma GCC unroll 8
  for (int m = 0; m < MB; ++m)
    #pragma GCC unroll 8
    for (int j = 0; j < JV; ++j) acc[m][j] = _mm256_setzero_ps();
  const int64_t nsb = (nblk + 3) / 4;
  const int64_t chunk = next_bytes > 0 ? (next_bytes + nsb - 1) / nsb : 0;
  for (int64_t sb = 0; sb < nsb; ++sb) {
    for (int64_t l = sb * chunk; l < lo(next_bytes, (sb + 1) * chunk); l += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(next_a + l), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(next_b + l), _MM_HINT_T1);
    }
    __m256i isum[MB][JV];
    #pragma GCC unroll 8
    for (int m = 0; m < MB; ++m)
      #pragma GCC unroll 8
      for (int j = 0; j < JV; ++j) isum[m][j] = _mm256_setzero_si256();
    const int64_t h_end = 2 * lo(nblk, sb * 4 + 4);
    for (int64_t h = 8 * sb; h < h_end; ++h) {  // 32-byte halves of the 64-column blocks
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ia + 32 * h));
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ib + 32 * h));
      __m256i xv[MB];
      #pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) xv[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + m * xq_stride + 32 * h));
      #pragma GCC unroll 8
      for (int j = 0; j < JV; ++j) {
        const __m256i u = _mm256_add_epi8(_mm256_shuffle_epi8(ta[j], a), _mm256_shuffle_epi8(tb[j], b));
        #pragma GCC unroll 8
        for (int m = 0; m < MB; ++m)
          isum[m][j] = _mm256_add_epi32(isum[m][j], _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv[m]), ones));
      }
    }
    #pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      const __m256 s = _mm256_set1_ps(sx[m * sx_stride + sb]);
      #pragma GCC unroll 8
      for (int j = 0; j < JV; ++j) acc[m][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[m][j]), s, acc[m][j]);
    }
  }
  #pragma GCC unroll 8
  for (int m = 0; m < MB; ++m)
    #pragma GCC unroll 8
    for (int j = 0; j < JV; ++j) {
      alignas(32) float t[8];
      _mm256_store_ps(t, acc[m][j]);
      sums[m * JV + j] = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
    }
}

template <int JV>
void pair_rows(const uint8_t* ia, const uint8_t* ib, int64_t nblk, const uint8_t* tab, const int8_t* xq,
               int64_t xq_stride, const float* sx, int64_t sx_stride, int64_t M, float* sums, const uint8_t* next_a,
               const uint8_t* next_b, int64_t next_bytes) {
  int64_t m = 0;
  for (; m + 2 <= M; m += 2, next_bytes = 0)
    pair_dot<JV, 2>(ia, ib, nblk, tab, xq + m * xq_stride, xq_stride, sx + m * sx_stride, sx_stride, sums + m * JV,
                    next_a, next_b, next_bytes);
  if (m < M)
    pair_dot<JV, 1>(ia, ib, nblk, tab, xq + m * xq_stride, xq_stride, sx + m * sx_stride, sx_stride, sums + m * JV,
                    next_a, next_b, next_bytes);
}

}  // namespace

void part_pair_k16(const Part& pm, const Part& pr, const int8_t* xq, int64_t xq_stride, const float* sx,
                   int64_t sx_stride, const float* corr, const float* xsum, int64_t xsum_stride, int64_t M, float* y,
                   int64_t N, int64_t y0, int64_t n0, int64_t n1, float* scratch) {
  const int64_t v = pm.v, nblk = pm.split4 ? 2 * ((pm.count + 127) / 128) : (pm.count + 63) / 64;
  uint8_t* ia = reinterpret_cast<uint8_t*>(scratch);
  uint8_t* ib = ia + nblk * 64;
  // Sums of up to 4 components for every activation row, after the two index rows.
  float* sums = reinterpret_cast<float*>(ib + nblk * 64);
  const int64_t bytes_m = (pm.skip_bits % 8 + pm.count * pm.bits + 7) / 8;
  const int64_t bytes_r = (pr.skip_bits % 8 + pr.count * pr.bits + 7) / 8;
  auto row_ptr = [](const Part& q, int64_t r) {
    return reinterpret_cast<const uint8_t*>(reinterpret_cast<const uint32_t*>(q.indices) + r * q.words) + q.skip_bits / 8;
  };
  for (int64_t r = n0 / v; r * v < n1; ++r) {
    unpack_index_bytes(reinterpret_cast<const uint32_t*>(pm.indices) + r * pm.words, pm.words, pm.skip_bits, pm.bits,
                       pm.count, nblk, pm.split4, ia);
    unpack_index_bytes(reinterpret_cast<const uint32_t*>(pr.indices) + r * pr.words, pr.words, pr.skip_bits, pr.bits,
                       pr.count, nblk, pr.split4, ib);
    const bool more = (r + 1) * v < n1 && r + 1 < pm.rows;
    for (int64_t jc = 0; jc < v; jc += 4) {
      const int64_t nb = r * v + jc, jv = lo(4, v - jc);
      if (nb + jv <= n0 || nb >= n1) continue;
      const uint8_t* tab = pm.pt + jc * 32;
      const uint8_t* na = more && jc == 0 ? row_ptr(pm, r + 1) : nullptr;
      const uint8_t* nbp = more && jc == 0 ? row_ptr(pr, r + 1) : nullptr;
      const int64_t nl = na ? lo(bytes_m, bytes_r) : 0;
      switch (jv) {
        case 1: pair_rows<1>(ia, ib, nblk, tab, xq, xq_stride, sx, sx_stride, M, sums, na, nbp, nl); break;
        case 2: pair_rows<2>(ia, ib, nblk, tab, xq, xq_stride, sx, sx_stride, M, sums, na, nbp, nl); break;
        case 3: pair_rows<3>(ia, ib, nblk, tab, xq, xq_stride, sx, sx_stride, M, sums, na, nbp, nl); break;
        default: pair_rows<4>(ia, ib, nblk, tab, xq, xq_stride, sx, sx_stride, M, sums, na, nbp, nl); break;
      }
      for (int64_t m = 0; m < M; ++m) {
        const float off = 0.5f * corr[m * xsum_stride], xs = xsum[m * xsum_stride];
        for (int64_t jj = 0; jj < jv; ++jj) {
          const int64_t n = nb + jj;
          if (n >= n0 && n < n1) y[m * N + n - y0] += pm.ps[jc + jj] * (sums[m * jv + jj] - off) + pm.pc[jc + jj] * xs;
        }
      }
    }
  }
}

}  // namespace avx2
}  // namespace vq2trt
