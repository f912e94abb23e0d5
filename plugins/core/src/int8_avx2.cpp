// The int8 part kernel for AVX2 CPUs without AVX-512 VBMI/VNNI, for k <= 16 (4-bit indices):
// vpshufb looks up 32 weights of component j at once from a 16-entry byte table, and the
// u8 x s8 multiply of vpmaddubsw takes |w| and x with w's sign, so no pair sum can saturate
// (2 · 127 · 127 < 2^15). The tables are the AVX-512 route's (w + 128 as u8): xor 0x80 gives w.
// Same activation layout as int8_avx512.cpp (one scale per kXBlock columns, "split" 4-bit order).
#include <immintrin.h>

#include <cstring>

#include "internal.h"
#include "unpack.h"

namespace vq2trt {
namespace avx2 {
namespace {

inline int64_t lo(int64_t a, int64_t b) { return a < b ? a : b; }

// The lines of next[sb·chunk, (sb+1)·chunk) ∩ next[0, bytes) into L2: one slice per 256 columns
// spreads a row's prefetches over the pass (a division per block cost more than the prefetch won).
inline void prefetch_slice(const uint8_t* next, int64_t bytes, int64_t chunk, int64_t sb) {
  const uintptr_t end = reinterpret_cast<uintptr_t>(next) + uintptr_t(lo(bytes, (sb + 1) * chunk));
  for (uintptr_t a = (reinterpret_cast<uintptr_t>(next) + uintptr_t(sb * chunk)) & ~uintptr_t(63); a < end; a += 64)
    _mm_prefetch(reinterpret_cast<const char*>(a), _MM_HINT_T1);
}

}  // namespace

void unpack_index_bytes(const uint32_t* row, int64_t words, int64_t skip, int bits, int64_t count, int64_t nblk,
                  bool split, uint8_t* out) {
  if (split) {  // 4-bit, byte aligned: low nibbles then high nibbles of each 64 packed bytes
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(row) + skip / 8;
    const int64_t nbytes = (count + 1) / 2;
    const __m256i low = _mm256_set1_epi8(15);
    for (int64_t i = 0; i < nbytes; i += 64) {
      alignas(32) uint8_t tail[64] = {};
      const uint8_t* src = bytes + i;
      if (nbytes - i < 64) {  // no byte-masked loads before AVX-512: copy the row's last bytes
        std::memcpy(tail, src, size_t(nbytes - i));
        src = tail;
      }
      for (int h = 0; h < 2; ++h) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32 * h));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * i + 32 * h), _mm256_and_si256(x, low));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * i + 64 + 32 * h),
                            _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
      }
    }
    return;
  }
  unpack_generic(row, words, skip, bits, count, out);
  std::memset(out + count, 0, size_t(nblk * 64 - count));
}

namespace {

// next, next_bytes: the next vector row's packed indices, fetched into L2 while this row is
// summed, as in int8_avx512.cpp (0 bytes: none).
template <int JV>
void lookup_dot(const uint8_t* idx, int64_t nblk, const uint8_t* qt, const int8_t* xq, int64_t xq_stride,
                const float* sx, int64_t sx_stride, int64_t M, float* sums, const uint8_t* next, int64_t next_bytes) {
  __m256i T[JV];
  const __m256i flip = _mm256_set1_epi8(char(0x80)), ones = _mm256_set1_epi16(1);
  for (int jj = 0; jj < JV; ++jj) {
    const __m128i t = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qt + jj * 16)),
                                    _mm256_castsi256_si128(flip));
    T[jj] = _mm256_broadcastsi128_si256(t);  // vpshufb looks up within each 128-bit lane
  }
  const int64_t pf_chunk = next_bytes > 0 ? (next_bytes + (nblk + 3) / 4 - 1) / ((nblk + 3) / 4) : 0;
  for (int64_t m = 0; m < M; ++m) {
    __m256 acc[JV];
    for (int jj = 0; jj < JV; ++jj) acc[jj] = _mm256_setzero_ps();
    const int8_t* xr = xq + m * xq_stride;
    for (int64_t sb = 0; sb * 4 < nblk; ++sb) {
      if (m == 0) prefetch_slice(next, next_bytes, pf_chunk, sb);
      __m256i isum[JV];
      for (int jj = 0; jj < JV; ++jj) isum[jj] = _mm256_setzero_si256();
      const int64_t h_end = 2 * lo(nblk, sb * 4 + 4);
      for (int64_t h = 8 * sb; h < h_end; ++h) {  // 32-byte halves of the 64-column blocks
        const __m256i ix = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + 32 * h));
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + 32 * h));
        for (int jj = 0; jj < JV; ++jj) {
          const __m256i w = _mm256_shuffle_epi8(T[jj], ix);
          const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(xv, w));
          isum[jj] = _mm256_add_epi32(isum[jj], _mm256_madd_epi16(p, ones));
        }
      }
      const __m256 s = _mm256_set1_ps(sx[m * sx_stride + sb]);
      for (int jj = 0; jj < JV; ++jj) acc[jj] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[jj]), s, acc[jj]);
    }
    for (int jj = 0; jj < JV; ++jj) {
      alignas(32) float t[8];
      _mm256_store_ps(t, acc[jj]);
      sums[m * JV + jj] = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
    }
  }
}

// As lookup_dot with AVX-VNNI: vpdpbusd takes the unsigned table bytes (w + 128) as they are
// and sums four u8 x s8 products into int32 without saturation, so the sign juggling and the
// pair sums go: 2 instructions per component and 32 columns instead of 6. The sums carry
// 128 · Σ x, which the caller takes off (corr), as on AVX-512.
template <int JV>
__attribute__((target("avx2,fma,avxvnni"))) void lookup_dot_vnni(
    const uint8_t* idx, int64_t nblk, const uint8_t* qt, const int8_t* xq, int64_t xq_stride, const float* sx,
    int64_t sx_stride, int64_t M, float* sums, const uint8_t* next, int64_t next_bytes) {
  __m256i T[JV];
  for (int jj = 0; jj < JV; ++jj)
    T[jj] = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qt + jj * 16)));
  const int64_t pf_chunk = next_bytes > 0 ? (next_bytes + (nblk + 3) / 4 - 1) / ((nblk + 3) / 4) : 0;
  for (int64_t m = 0; m < M; ++m) {
    __m256 acc[JV];
    for (int jj = 0; jj < JV; ++jj) acc[jj] = _mm256_setzero_ps();
    const int8_t* xr = xq + m * xq_stride;
    for (int64_t sb = 0; sb * 4 < nblk; ++sb) {
      if (m == 0) prefetch_slice(next, next_bytes, pf_chunk, sb);
      __m256i isum[JV];
      for (int jj = 0; jj < JV; ++jj) isum[jj] = _mm256_setzero_si256();
      const int64_t h_end = 2 * lo(nblk, sb * 4 + 4);
      for (int64_t h = 8 * sb; h < h_end; ++h) {
        const __m256i ix = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + 32 * h));
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + 32 * h));
        for (int jj = 0; jj < JV; ++jj) isum[jj] = _mm256_dpbusd_avx_epi32(isum[jj], _mm256_shuffle_epi8(T[jj], ix), xv);
      }
      const __m256 s = _mm256_set1_ps(sx[m * sx_stride + sb]);
      for (int jj = 0; jj < JV; ++jj) acc[jj] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[jj]), s, acc[jj]);
    }
    for (int jj = 0; jj < JV; ++jj) {
      alignas(32) float t[8];
      _mm256_store_ps(t, acc[jj]);
      sums[m * JV + jj] = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
    }
  }
}

}  // namespace

namespace {

template <bool Vnni, int JV>
void lookup(const uint8_t* idx, int64_t nblk, const uint8_t* qt, const int8_t* xq, int64_t xq_stride, const float* sx,
            int64_t sx_stride, int64_t M, float* sums, const uint8_t* next, int64_t next_bytes) {
  (Vnni ? lookup_dot_vnni<JV> : lookup_dot<JV>)(idx, nblk, qt, xq, xq_stride, sx, sx_stride, M, sums, next, next_bytes);
}

template <bool Vnni>
void part_k16(const Part& pt, const int8_t* xq, int64_t xq_stride, const float* sx, int64_t sx_stride,
              const float* corr, const float* xsum, int64_t xsum_stride, int64_t M, float* y, int64_t N, int64_t y0,
              int64_t n0, int64_t n1, float* scratch) {
  const int64_t v = pt.v, nblk = pt.split4 ? 2 * ((pt.count + 127) / 128) : (pt.count + 63) / 64;
  uint8_t* idx = reinterpret_cast<uint8_t*>(scratch);
  float* sums = scratch + (nblk * 64) / 4 + 16;
  for (int64_t r = n0 / v; r * v < n1; ++r) {
    unpack_index_bytes(reinterpret_cast<const uint32_t*>(pt.indices) + r * pt.words, pt.words, pt.skip_bits, pt.bits,
                 pt.count, nblk, pt.split4, idx);
    const bool more = (r + 1) * v < n1 && r + 1 < pt.rows;
    const uint8_t* next =
        more ? reinterpret_cast<const uint8_t*>(reinterpret_cast<const uint32_t*>(pt.indices) + (r + 1) * pt.words) + pt.skip_bits / 8
             : nullptr;
    const int64_t row_bytes = (pt.skip_bits % 8 + pt.count * pt.bits + 7) / 8;
    for (int64_t jc = 0; jc < v; jc += 4) {
      const int64_t nb = r * v + jc, jv = lo(4, v - jc);
      if (nb + jv <= n0 || nb >= n1) continue;
      const uint8_t* qt = pt.qt + jc * pt.qentries;
      const int64_t nl = more && jc == 0 ? row_bytes : 0;
      switch (jv) {
        case 1: lookup<Vnni, 1>(idx, nblk, qt, xq, xq_stride, sx, sx_stride, M, sums, next, nl); break;
        case 2: lookup<Vnni, 2>(idx, nblk, qt, xq, xq_stride, sx, sx_stride, M, sums, next, nl); break;
        case 3: lookup<Vnni, 3>(idx, nblk, qt, xq, xq_stride, sx, sx_stride, M, sums, next, nl); break;
        default: lookup<Vnni, 4>(idx, nblk, qt, xq, xq_stride, sx, sx_stride, M, sums, next, nl); break;
      }
      for (int64_t m = 0; m < M; ++m) {
        const float off = Vnni ? corr[m * xsum_stride] : 0.f;
        for (int64_t jj = 0; jj < jv; ++jj) {
          const int64_t n = nb + jj;
          if (n >= n0 && n < n1)
            y[m * N + n - y0] += pt.qs[jc + jj] * (sums[m * jv + jj] - off) + pt.qc[jc + jj] * xsum[m * xsum_stride];
        }
      }
    }
  }
}

}  // namespace

void part_int8(const Part& pt, const int8_t* xq, int64_t xq_stride, const float* sx, int64_t sx_stride,
               const float* corr, const float* xsum, int64_t xsum_stride, int64_t M, float* y, int64_t N, int64_t y0,
               int64_t n0, int64_t n1, float* scratch) {
  part_k16<false>(pt, xq, xq_stride, sx, sx_stride, corr, xsum, xsum_stride, M, y, N, y0, n0, n1, scratch);
}

void part_int8_vnni(const Part& pt, const int8_t* xq, int64_t xq_stride, const float* sx, int64_t sx_stride,
                    const float* corr, const float* xsum, int64_t xsum_stride, int64_t M, float* y, int64_t N,
                    int64_t y0, int64_t n0, int64_t n1, float* scratch) {
  part_k16<true>(pt, xq, xq_stride, sx, sx_stride, corr, xsum, xsum_stride, M, y, N, y0, n0, n1, scratch);
}

// As avx512::quantize_segment (the same rounding, so the same bytes). The portable loop it
// replaces called libm's nearbyintf per column: 6 % of an AVX2 prefill.
float quantize_segment(const float* x, int64_t count, int8_t* q, float* sx) {
  const int64_t padded = (count + 63) / 64 * 64;
  // 8 floats from x + c, zero past n (n <= 0: none): no masked loads on AVX2, so a copy.
  auto load8 = [](const float* x, int64_t n) {
    if (n >= 8) return _mm256_loadu_ps(x);
    alignas(32) float t[8] = {};
    for (int64_t i = 0; i < n; ++i) t[i] = x[i];
    return _mm256_load_ps(t);
  };
  const __m256 sign = _mm256_set1_ps(-0.f);
  float corr = 0.f;
  for (int64_t b = 0; b * kXBlock < count; ++b) {
    const int64_t c0 = b * kXBlock, cn = lo(kXBlock, count - c0), cp = lo(kXBlock, padded - c0);
    __m256 amax = _mm256_setzero_ps();
    for (int64_t c = 0; c < cn; c += 8) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, load8(x + c0 + c, cn - c)));
    alignas(32) float m8[8];
    _mm256_store_ps(m8, amax);
    float a = 0.f;
    for (float v : m8) a = a > v ? a : v;
    const __m256 inv = _mm256_set1_ps(a > 0.f ? 127.f / a : 0.f);
    __m256i sum = _mm256_setzero_si256();
    const __m256i lo127 = _mm256_set1_epi32(-127), hi127 = _mm256_set1_epi32(127);
    for (int64_t c = 0; c < cp; c += 8) {  // padding columns quantize to 0
      __m256i i = _mm256_cvtps_epi32(_mm256_mul_ps(load8(x + c0 + c, cn - c), inv));  // nearest even
      i = _mm256_min_epi32(_mm256_max_epi32(i, lo127), hi127);
      sum = _mm256_add_epi32(sum, i);
      const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(q + c0 + c), _mm_packs_epi16(w, w));
    }
    alignas(32) int32_t s8[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(s8), sum);
    int32_t total = 0;
    for (int32_t v : s8) total += v;
    sx[b] = a / 127.f;
    corr += sx[b] * 128.f * float(total);
  }
  return corr;
}

// xq [M, bytes] -> x16 in blocks of kX16Rows rows, [pairs, kX16Rows, 2] each: each column pair of
// a row widened to one int32 of two int16, stored where prefill_int8_avx2.cpp reads it.
void widen_pairs(const int8_t* xq, int64_t M, int64_t m0, int64_t m1, int64_t bytes, int16_t* x16) {
  (void)M;
  int32_t* out = reinterpret_cast<int32_t*>(x16);
  const int64_t pairs = bytes / 2;
  for (int64_t m = m0; m < m1; ++m) {
    const int8_t* row = xq + m * bytes;
    int32_t* o = out + m / kX16Rows * pairs * kX16Rows + m % kX16Rows;  // row block, then pair, then row
    int64_t p = 0;
    for (; p + 8 <= pairs; p += 8) {
      alignas(32) int32_t t[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(t),
                         _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * p))));
      for (int i = 0; i < 8; ++i) o[(p + i) * kX16Rows] = t[i];
    }
    for (; p < pairs; ++p)
      o[p * kX16Rows] = int32_t(uint32_t(uint16_t(int16_t(row[2 * p]))) | (uint32_t(uint16_t(int16_t(row[2 * p + 1]))) << 16));
  }
}

}  // namespace avx2
}  // namespace vq2trt
