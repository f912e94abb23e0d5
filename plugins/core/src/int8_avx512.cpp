// The int8 part kernel (accuracy_level 4): AVX-512 VBMI byte-table lookups + VNNI dot products.
//
// Per output row n = r*v + j and block of 64 columns, the 64 indices of vector row r select 64
// weights of component j with one vpermb (k <= 64), two vpermi2b + a blend on bit 7 (k <= 256)
// or twice that + a blend on bit 8 (k <= 512: 9-bit indices come unpacked as their low bytes and
// one 64-bit mask of bit 8 per block), already contiguous along the columns, and vpdpbusd
// multiplies them with the int8 activations.
// One unpacked index row feeds all v output rows of the vector. The tables hold the codebook
// centred on each component's midrange; the caller's float Σ x' times the centre restores it. Built with per-file flags (see
// plugins/core/CMakeLists.txt) and only called after detect_isa() reported kAvx512.
#include <immintrin.h>

#include <cstring>

#include "internal.h"
#include "unpack.h"

namespace vq2trt {
namespace avx512 {
namespace {

inline int64_t lo(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t hi(int64_t a, int64_t b) { return a > b ? a : b; }

// The lines of next[sb·chunk, (sb+1)·chunk) ∩ next[0, bytes) into L2: one slice per 256 columns
// spreads a row's prefetches over the pass (a division per block cost more than the prefetch won).
inline void prefetch_slice(const uint8_t* next, int64_t bytes, int64_t chunk, int64_t sb) {
  const uintptr_t end = reinterpret_cast<uintptr_t>(next) + uintptr_t(lo(bytes, (sb + 1) * chunk));
  for (uintptr_t a = (reinterpret_cast<uintptr_t>(next) + uintptr_t(sb * chunk)) & ~uintptr_t(63); a < end; a += 64)
    _mm_prefetch(reinterpret_cast<const char*>(a), _MM_HINT_T1);
}

// 64 bytes of a 512-entry table t (8 zmm) at 64 9-bit indices: low bytes ix, bit 8 in hi.
inline __m512i lookup512(const __m512i* t, __m512i ix, __mmask64 b7, __mmask64 hi) {
  const __m512i a = _mm512_mask_blend_epi8(b7, _mm512_permutex2var_epi8(t[0], ix, t[1]),
                                           _mm512_permutex2var_epi8(t[2], ix, t[3]));
  const __m512i b = _mm512_mask_blend_epi8(b7, _mm512_permutex2var_epi8(t[4], ix, t[5]),
                                           _mm512_permutex2var_epi8(t[6], ix, t[7]));
  return _mm512_mask_blend_epi8(hi, a, b);
}

// sums[m * JV + jj] = Σ_scale blocks sx · Σ_c table_j[idx[c]] · xq[m, c] for JV components at once.
// E: table entries (64, 256 or 512); hi: E = 512 only, bit 8 of the indices per 64-column block.
// last: the bytes of idx's last block that may be read (idx can be the packed row itself).
// C (E = 256 only): the byte table looked up by four vpermb, each merged under the mask of its
// quarter (bits 6 and 7 of the index, the masks shared by the JV components), instead of two
// vpermi2b and a blend: on Intel, where vpermi2b is 3 uops, 8-13 % faster over a 4096 x 4096
// chain at M = 1 (RESULTS.md, 16th session); not taken on AMD (permb_chain_is_fast).
// next, next_bytes: the next vector row's packed indices, fetched into L2 while this row is
// summed (0 bytes: none). Rows of 576-1536 bytes end before the hardware prefetcher
// locks on, and a 4096-byte row is a page, which it does not cross: each row start waited on
// memory (as on AVX2, decode_avx2.cpp).
template <int JV, int E, bool C>
void lookup_dot(const uint8_t* idx, const uint64_t* hi, int64_t nblk, __mmask64 last, const uint8_t* qt,
                const int8_t* xq, int64_t xq_stride, const float* sx, int64_t sx_stride, int64_t M, float* sums,
                const uint8_t* next, int64_t next_bytes) {
  constexpr int TR = E / 64;
  __m512i T[JV][TR];
  for (int jj = 0; jj < JV; ++jj)
    for (int t = 0; t < TR; ++t) T[jj][t] = _mm512_loadu_si512(qt + jj * E + 64 * t);
  const int64_t pf_chunk = next_bytes > 0 ? (next_bytes + (nblk + 3) / 4 - 1) / ((nblk + 3) / 4) : 0;
  for (int64_t m = 0; m < M; ++m) {
    __m512 acc[JV];
    for (int jj = 0; jj < JV; ++jj) acc[jj] = _mm512_setzero_ps();
    const int8_t* xr = xq + m * xq_stride;
    const float* sr = sx + m * sx_stride;
    // One activation scale per kXBlock = 4 chunks of 64 columns.
    for (int64_t sb = 0; sb * 4 < nblk; ++sb) {
      if (m == 0) prefetch_slice(next, next_bytes, pf_chunk, sb);
      __m512i isum[JV];
      for (int jj = 0; jj < JV; ++jj) isum[jj] = _mm512_setzero_si512();
      const int64_t b_end = nblk < sb * 4 + 4 ? nblk : sb * 4 + 4;
      for (int64_t b = sb * 4; b < b_end; ++b) {
        const __m512i ix = b + 1 < nblk ? _mm512_loadu_si512(idx + 64 * b) : _mm512_maskz_loadu_epi8(last, idx + 64 * b);
        const __m512i xv = _mm512_loadu_si512(xr + 64 * b);
        __mmask64 upper = 0;
        if (E >= 256) upper = _mm512_movepi8_mask(ix);  // bit 7: entries 128..255 (of each 256)
        __mmask64 q[4] = {};
        if (C) {
          const __mmask64 b6 = _mm512_test_epi8_mask(ix, _mm512_set1_epi8(64));
          q[1] = b6 & ~upper, q[2] = ~b6 & upper, q[3] = b6 & upper;
        }
        for (int jj = 0; jj < JV; ++jj) {
          __m512i w;
          if (C) {
            w = _mm512_permutexvar_epi8(ix, T[jj][0]);
            for (int r = 1; r < 4; ++r) w = _mm512_mask_permutexvar_epi8(w, q[r], ix, T[jj][r]);
          } else if (E == 512) {
            w = lookup512(T[jj], ix, upper, hi[b]);
          } else if (E == 256) {
            const __m512i l = _mm512_permutex2var_epi8(T[jj][0], ix, T[jj][1]);
            const __m512i h = _mm512_permutex2var_epi8(T[jj][2], ix, T[jj][3]);
            w = _mm512_mask_blend_epi8(upper, l, h);
          } else {
            w = _mm512_permutexvar_epi8(ix, T[jj][0]);  // uses the low 6 bits only
          }
          isum[jj] = _mm512_dpbusd_epi32(isum[jj], w, xv);
        }
      }
      const __m512 s = _mm512_set1_ps(sr[sb]);
      for (int jj = 0; jj < JV; ++jj) acc[jj] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[jj]), s, acc[jj]);
    }
    for (int jj = 0; jj < JV; ++jj) sums[m * JV + jj] = _mm512_reduce_add_ps(acc[jj]);
  }
}

template <int E, bool C = false>
void dispatch(int jv, const uint8_t* idx, const uint64_t* hi, int64_t nblk, __mmask64 last, const uint8_t* qt,
              const int8_t* xq, int64_t xq_stride, const float* sx, int64_t sx_stride, int64_t M, float* sums,
              const uint8_t* next, int64_t next_bytes) {
  switch (jv) {
    case 1: lookup_dot<1, E, C>(idx, hi, nblk, last, qt, xq, xq_stride, sx, sx_stride, M, sums, next, next_bytes); break;
    case 2: lookup_dot<2, E, C>(idx, hi, nblk, last, qt, xq, xq_stride, sx, sx_stride, M, sums, next, next_bytes); break;
    case 3: lookup_dot<3, E, C>(idx, hi, nblk, last, qt, xq, xq_stride, sx, sx_stride, M, sums, next, next_bytes); break;
    default: lookup_dot<4, E, C>(idx, hi, nblk, last, qt, xq, xq_stride, sx, sx_stride, M, sums, next, next_bytes); break;
  }
}

// 9-bit indices: every 32 indices are 36 bytes, so the bit offset within a byte is the same for
// each 32-index window. vpermb puts the two bytes holding index i into 16-bit lane i, vpsrlvw
// shifts it down; the low bytes go out as bytes, bit 8 as a mask per 64 columns.
void unpack9(const uint32_t* row, int64_t words, int64_t skip, int64_t count, int64_t nblk, uint8_t* out) {
  const uint8_t* base = reinterpret_cast<const uint8_t*>(row) + (skip >> 3);
  const int64_t avail = words * 4 - (skip >> 3);
  const int s0 = int(skip & 7);
  alignas(64) uint8_t perm[64];
  alignas(64) uint16_t shift[32];
  for (int i = 0; i < 32; ++i) {
    const int t = s0 + 9 * i;
    perm[2 * i] = uint8_t(t >> 3);
    perm[2 * i + 1] = uint8_t((t >> 3) + 1);
    shift[i] = uint16_t(t & 7);
  }
  const __m512i vperm = _mm512_load_si512(perm), vshift = _mm512_load_si512(shift);
  const __m512i m9 = _mm512_set1_epi16(0x1ff);
  uint64_t* hi = reinterpret_cast<uint64_t*>(out + nblk * 64);
  for (int64_t b = 0; b < nblk; ++b) {
    uint64_t h = 0;
    for (int half = 0; half < 2; ++half) {
      const int64_t c0 = b * 64 + half * 32, off = c0 / 32 * 36, n = avail - off;
      const int64_t valid = count - c0;
      const __mmask64 lm = n >= 64 ? ~__mmask64(0) : n <= 0 ? 0 : (__mmask64(1) << n) - 1;
      const __mmask32 cm = valid >= 32 ? ~__mmask32(0) : valid <= 0 ? 0 : (__mmask32(1) << valid) - 1;
      const __m512i win = _mm512_maskz_loadu_epi8(lm, base + (n > 0 ? off : 0));
      const __m512i v = _mm512_and_si512(_mm512_srlv_epi16(_mm512_permutexvar_epi8(vperm, win), vshift), m9);
      const __m512i vc = _mm512_maskz_mov_epi16(cm, v);  // columns past count: index 0
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c0), _mm512_cvtepi16_epi8(vc));
      h |= uint64_t(_mm512_test_epi16_mask(vc, _mm512_set1_epi16(0x100))) << (32 * half);
    }
    hi[b] = h;
  }
}

}  // namespace

// Packed row -> one index byte per column, zero padded to whole 64-column blocks.
void unpack_index_bytes(const uint32_t* row, int64_t words, int64_t skip, int bits, int64_t count, int64_t nblk, bool split,
                  uint8_t* out) {
  if (bits == 9) return unpack9(row, words, skip, count, nblk, out);
  const uint32_t* w = row + (skip >> 5);
  const int sh = int(skip & 31);
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(w) + sh / 8;  // byte-aligned cases only
  if (split) {  // 4-bit, byte aligned: low nibbles then high nibbles of each 64 bytes
    const int64_t nbytes = (count + 1) / 2;
    for (int64_t i = 0; i < nbytes; i += 64) {
      const __mmask64 m = nbytes - i >= 64 ? ~__mmask64(0) : (__mmask64(1) << (nbytes - i)) - 1;
      const __m512i x = _mm512_maskz_loadu_epi8(m, bytes + i);
      const __m512i low = _mm512_set1_epi8(15);
      _mm512_storeu_si512(out + 2 * i, _mm512_and_si512(x, low));
      _mm512_storeu_si512(out + 2 * i + 64, _mm512_and_si512(_mm512_srli_epi16(x, 4), low));
    }
    return;  // every byte of the nblk blocks written; columns past count meet zero activations
  }
  if (bits == 8) {
    std::memcpy(out, bytes, size_t(count));
  } else if (bits == 4 && sh % 8 == 0) {
    // 32 packed bytes -> 64 indices: widen to u16, low nibble to the low byte, high to the high.
    const int64_t nbytes = (count + 1) / 2;
    for (int64_t i = 0; i < nbytes; i += 32) {
      const __mmask32 m = nbytes - i >= 32 ? ~__mmask32(0) : (__mmask32(1) << (nbytes - i)) - 1;
      const __m512i x = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, bytes + i));
      const __m512i v = _mm512_or_si512(_mm512_and_si512(x, _mm512_set1_epi16(15)),
                                        _mm512_slli_epi16(_mm512_srli_epi16(x, 4), 8));
      _mm512_storeu_si512(out + 2 * i, v);  // scratch has room for a whole block past count
    }
  } else if (bits < 8 && sh % 8 == 0) {
    // 64 indices of b bits = 8b bytes: vpermb copies the b bytes holding indices 8q..8q+7 into
    // qword q (they start on a byte boundary since 8b bits is whole bytes), and vpmultishiftqb
    // pulls index 8q+j from bit j·b of that qword.
    alignas(64) uint8_t perm[64], shift[64];
    for (int q = 0; q < 8; ++q)
      for (int j = 0; j < 8; ++j) {
        perm[8 * q + j] = uint8_t(q * bits + j);
        shift[8 * q + j] = uint8_t(j * bits);
      }
    const __m512i vperm = _mm512_load_si512(perm), vshift = _mm512_load_si512(shift);
    const __m512i vmask = _mm512_set1_epi8(char((1 << bits) - 1));
    const int64_t avail = words * 4 - ((skip >> 5) * 4 + sh / 8);  // bytes left in the row
    for (int64_t c0 = 0; c0 < count; c0 += 64) {
      const int64_t off = c0 * bits / 8, n = avail - off;
      const __mmask64 m = n >= 64 ? ~__mmask64(0) : (__mmask64(1) << n) - 1;
      const __m512i win = _mm512_maskz_loadu_epi8(m, bytes + off);
      const __m512i q = _mm512_permutexvar_epi8(vperm, win);
      _mm512_storeu_si512(out + c0, _mm512_and_si512(_mm512_multishift_epi64_epi8(vshift, q), vmask));
    }
  } else {
    unpack_generic(row, words, skip, bits, count, out);
  }
  std::memset(out + count, 0, size_t(nblk * 64 - count));
}

void part_int8(const Part& pt, const int8_t* xq, int64_t xq_stride, const float* sx, int64_t sx_stride,
               const float* corr, const float* xsum, int64_t corr_stride, int64_t M, float* y, int64_t N, int64_t y0,
               int64_t n0, int64_t n1, float* scratch) {
  static const bool chain = permb_chain_is_fast();
  const int64_t v = pt.v, nblk = pt.split4 ? 2 * ((pt.count + 127) / 128) : (pt.count + 63) / 64;
  uint8_t* buf = reinterpret_cast<uint8_t*>(scratch);
  const uint64_t* hi = reinterpret_cast<const uint64_t*>(buf + nblk * 64);  // 9-bit indices only
  // Byte-aligned 8-bit indices are read where they lie (the copy into scratch was ~15 % of a
  // decode step); the last block then loads only the row's own bytes, the rest as index 0 (their
  // activations are zero).
  const bool in_place = pt.bits == 8 && pt.skip_bits % 8 == 0 && !pt.split4;
  const int64_t tail = pt.count - (nblk - 1) * 64;
  const __mmask64 last = in_place && tail < 64 ? (__mmask64(1) << tail) - 1 : ~__mmask64(0);
  // Sums of up to 4 components for every activation row; M is small on this route (see vqgemm.cpp).
  float* sums = scratch + (nblk * 64 + nblk * 8) / 4 + 16;
  for (int64_t r = n0 / v; r * v < n1; ++r) {
    const uint32_t* row = reinterpret_cast<const uint32_t*>(pt.indices) + r * pt.words;
    const uint8_t* idx = in_place ? reinterpret_cast<const uint8_t*>(row) + pt.skip_bits / 8 : buf;
    if (!in_place) unpack_index_bytes(row, pt.words, pt.skip_bits, pt.bits, pt.count, nblk, pt.split4, buf);
    // The packed bytes of the next row this task computes (the part's rows lie pt.words apart).
    const bool more = (r + 1) * v < n1 && r + 1 < pt.rows;
    const int64_t row_bytes = (pt.skip_bits % 8 + pt.count * pt.bits + 7) / 8;
    const uint8_t* next = more ? reinterpret_cast<const uint8_t*>(row + pt.words) + pt.skip_bits / 8 : nullptr;
    for (int64_t jc = 0; jc < v; jc += 4) {
      const int64_t nb = r * v + jc, jv = lo(4, v - jc);
      if (nb + jv <= n0 || nb >= n1) continue;
      const uint8_t* qt = pt.qt + jc * pt.qentries;
      const int64_t next_bytes = more && jc == 0 ? row_bytes : 0;
      if (pt.qentries == 512)
        dispatch<512>(int(jv), idx, hi, nblk, last, qt, xq, xq_stride, sx, sx_stride, M, sums, next, next_bytes);
      else if (pt.qentries == 256 && chain)
        dispatch<256, true>(int(jv), idx, hi, nblk, last, qt, xq, xq_stride, sx, sx_stride, M, sums, next, next_bytes);
      else if (pt.qentries == 256)
        dispatch<256>(int(jv), idx, hi, nblk, last, qt, xq, xq_stride, sx, sx_stride, M, sums, next, next_bytes);
      else
        dispatch<64>(int(jv), idx, hi, nblk, last, qt, xq, xq_stride, sx, sx_stride, M, sums, next, next_bytes);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t jj = 0; jj < jv; ++jj) {
          const int64_t n = nb + jj;
          if (n >= n0 && n < n1)
            y[m * N + n - y0] += pt.qs[jc + jj] * (sums[m * jv + jj] - corr[m * corr_stride]) + pt.qc[jc + jj] * xsum[m * corr_stride];
        }
    }
  }
}

namespace {

// 64 bytes of one byte table of E entries at the indices ix (bit 7 in b7; bit 8 in hi9, E = 512),
// the table read from memory (operands of the permutes, no copies).
template <int E>
inline __m512i lookup_bytes(const uint8_t* t, __m512i ix, __mmask64 b7, __mmask64 hi9) {
  auto ld = [t](int i) { return _mm512_loadu_si512(t + 64 * i); };
  if (E == 64) return _mm512_permutexvar_epi8(ix, ld(0));
  const __m512i a = _mm512_mask_blend_epi8(b7, _mm512_permutex2var_epi8(ld(0), ix, ld(1)),
                                           _mm512_permutex2var_epi8(ld(2), ix, ld(3)));
  if (E == 256) return a;
  const __m512i b = _mm512_mask_blend_epi8(b7, _mm512_permutex2var_epi8(ld(4), ix, ld(5)),
                                           _mm512_permutex2var_epi8(ld(6), ix, ld(7)));
  return _mm512_mask_blend_epi8(hi9, a, b);
}

template <int V, int E>
void head16_rows(const Part& pt, const int16_t* xh, const float* sxh, const float* xsum, int64_t mb, int64_t mn,
                 float* y, int64_t N, int64_t n0, int64_t n1, uint8_t* scratch) {
  // vpunpck{l,h}bw interleave within 128-bit lanes: this order of the index bytes makes the
  // low / high words of the two lookups columns 0-31 and 32-63 in order, so x' is read as it lies.
  static const __m512i ord = _mm512_set_epi8(
      63, 62, 61, 60, 59, 58, 57, 56, 31, 30, 29, 28, 27, 26, 25, 24, 55, 54, 53, 52, 51, 50, 49, 48, 23, 22, 21,
      20, 19, 18, 17, 16, 47, 46, 45, 44, 43, 42, 41, 40, 15, 14, 13, 12, 11, 10, 9, 8, 39, 38, 37, 36, 35, 34, 33,
      32, 7, 6, 5, 4, 3, 2, 1, 0);
  const int64_t count = pt.count;
  const __mmask64 cmask = count >= 64 ? ~__mmask64(0) : (__mmask64(1) << count) - 1;
  // Columns past count read the next part's x': their weights are zeroed.
  const __mmask32 m0 = __mmask32(cmask), m1 = __mmask32(cmask >> 32);
  const bool direct = pt.bits == 8 && pt.skip_bits % 8 == 0;
  // RR vector rows a pass, so that one fold serves 4 outputs: the outlier parts (v = 2, a few
  // columns) spent most of their time in the fold and the update of y.
  constexpr int RR = V <= 2 ? 4 / V : 1, S = RR * V;
  alignas(16) float qsv[4] = {0.f, 0.f, 0.f, 0.f}, qcv[4] = {0.f, 0.f, 0.f, 0.f};
  for (int k = 0; k < S; ++k) qsv[k] = pt.qs[k % V], qcv[k] = pt.qc[k % V];
  const __m128 qs = _mm_load_ps(qsv), qc = _mm_load_ps(qcv);
  for (int64_t r = n0 / V; r * V < n1; r += RR) {
    __m512i w0[S], w1[S];
    for (int i = 0; i < RR; ++i) {
      if ((r + i) * V >= n1) {  // past this task's rows (and maybe the matrix): nothing read
        for (int j = 0; j < V; ++j) w0[i * V + j] = w1[i * V + j] = _mm512_setzero_si512();
        continue;
      }
      const uint32_t* row = reinterpret_cast<const uint32_t*>(pt.indices) + (r + i) * pt.words;
      __m512i ix;
      __mmask64 hi9 = 0;
      if (direct) {
        ix = _mm512_maskz_loadu_epi8(cmask, reinterpret_cast<const uint8_t*>(row) + pt.skip_bits / 8);
      } else {
        unpack_index_bytes(row, pt.words, pt.skip_bits, pt.bits, count, 1, false, scratch);
        ix = _mm512_load_si512(scratch);
        if (E == 512) {
          uint64_t h;
          std::memcpy(&h, scratch + 64, 8);
          hi9 = _mm512_movepi8_mask(_mm512_permutexvar_epi8(ord, _mm512_movm_epi8(__mmask64(h))));
        }
      }
      ix = _mm512_permutexvar_epi8(ord, ix);
      const __mmask64 b7 = E >= 256 ? _mm512_movepi8_mask(ix) : 0;
      for (int j = 0; j < V; ++j) {
        const __m512i lo8 = lookup_bytes<E>(pt.h16 + (2 * j) * E, ix, b7, hi9);
        const __m512i hi8 = lookup_bytes<E>(pt.h16 + (2 * j + 1) * E, ix, b7, hi9);
        w0[i * V + j] = _mm512_maskz_mov_epi16(m0, _mm512_unpacklo_epi8(lo8, hi8));
        w1[i * V + j] = _mm512_maskz_mov_epi16(m1, _mm512_unpackhi_epi8(lo8, hi8));
      }
    }
    // The S outputs of this pass: the int32 sums of 4 slots (zero past S) folded into one 128-bit
    // lane by 2 unpack rounds and 2 lane shuffles (4 horizontal sums cost twice that), then one
    // 4-lane multiply-add and a masked add into y.
    const int64_t nb = r * V;
    const __mmask8 lanes = __mmask8(((1u << S) - 1) & ~((1u << hi(0, n0 - nb)) - 1) & ((1u << lo(S, n1 - nb)) - 1));
    for (int64_t m = 0; m < mn; ++m) {
      const int16_t* xr = xh + (mb + m) * 128 + pt.col0;
      const __m512i x0 = _mm512_loadu_si512(xr), x1 = _mm512_loadu_si512(xr + 32);
      // 13-bit weights x 14-bit x': each int32 lane sums 4 products, < 2^27.
      __m512i a[4];
      for (int k = 0; k < 4; ++k)
        a[k] = k < S ? _mm512_dpwssd_epi32(_mm512_madd_epi16(w0[k], x0), w1[k], x1) : _mm512_setzero_si512();
      const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
      const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
      __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
      u = _mm512_add_epi32(u, _mm512_shuffle_i32x4(u, u, _MM_SHUFFLE(1, 0, 3, 2)));
      u = _mm512_add_epi32(u, _mm512_shuffle_i32x4(u, u, _MM_SHUFFLE(2, 3, 0, 1)));
      const __m128 f = _mm_mul_ps(_mm_cvtepi32_ps(_mm512_castsi512_si128(u)), _mm_set1_ps(sxh[mb + m]));
      const __m128 add = _mm_fmadd_ps(qs, f, _mm_mul_ps(qc, _mm_set1_ps(xsum[m])));
      float* yr = y + (mb + m) * N + nb;
      _mm_mask_storeu_ps(yr, lanes, _mm_add_ps(_mm_maskz_loadu_ps(lanes, yr), add));
    }
  }
}

}  // namespace

void part_head16(const Part& pt, const float* xp, int64_t xs, const int16_t* xh, const float* sxh, int64_t M,
                 float* y, int64_t N, int64_t n0, int64_t n1, uint8_t* scratch) {
  const int64_t count = pt.count;
  const __mmask64 cmask = count >= 64 ? ~__mmask64(0) : (__mmask64(1) << count) - 1;
  using Fn = void (*)(const Part&, const int16_t*, const float*, const float*, int64_t, int64_t, float*, int64_t,
                      int64_t, int64_t, uint8_t*);
  static constexpr Fn table[4][3] = {
      {head16_rows<1, 64>, head16_rows<1, 256>, head16_rows<1, 512>},
      {head16_rows<2, 64>, head16_rows<2, 256>, head16_rows<2, 512>},
      {head16_rows<3, 64>, head16_rows<3, 256>, head16_rows<3, 512>},
      {head16_rows<4, 64>, head16_rows<4, 256>, head16_rows<4, 512>}};
  const Fn fn = table[pt.v - 1][pt.h16n == 64 ? 0 : pt.h16n == 256 ? 1 : 2];
  // Activation rows in blocks of 8 (decode calls have at most 8); each block repeats the lookups.
  for (int64_t mb = 0; mb < M; mb += 8) {
    const int64_t mn = lo(8, M - mb);
    float xsum[8];  // Σ x' over the part's columns: the codebook centres' term, in float32
    for (int64_t m = 0; m < mn; ++m) {
      const float* xr = xp + (mb + m) * xs + pt.col0;
      __m512 a = _mm512_setzero_ps();
      for (int64_t c = 0; c < count; c += 16)
        a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(__mmask16(cmask >> c), xr + c));
      xsum[m] = _mm512_reduce_add_ps(a);
    }
    fn(pt, xh, sxh, xsum, mb, mn, y, N, n0, n1, scratch);
  }
}

float quantize_segment(const float* x, int64_t count, int8_t* q, float* sx) {
  const int64_t padded = (count + 63) / 64 * 64;
  auto lanes = [](int64_t n) -> __mmask16 { return n >= 16 ? 0xffff : n <= 0 ? 0 : __mmask16((1u << n) - 1); };
  float corr = 0.f;
  for (int64_t b = 0; b * kXBlock < count; ++b) {
    const int64_t c0 = b * kXBlock, cn = lo(kXBlock, count - c0), cp = lo(kXBlock, padded - c0);
    __m512 amax = _mm512_setzero_ps();
    for (int64_t c = 0; c < cn; c += 16)
      amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(lanes(cn - c), x + c0 + c)));
    const float a = _mm512_reduce_max_ps(amax);
    const __m512 inv = _mm512_set1_ps(a > 0.f ? 127.f / a : 0.f);
    __m512i sum = _mm512_setzero_si512();
    for (int64_t c = 0; c < cp; c += 16) {  // padding columns quantize to 0
      const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes(cn - c), x + c0 + c), inv);
      __m512i i = _mm512_cvtps_epi32(v);  // round to nearest even, like nearbyint
      i = _mm512_min_epi32(_mm512_max_epi32(i, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c0 + c), _mm512_cvtepi32_epi8(i));
      sum = _mm512_add_epi32(sum, i);
    }
    sx[b] = a / 127.f;
    corr += sx[b] * 128.f * float(_mm512_reduce_add_epi32(sum));
  }
  return corr;
}

}  // namespace avx512
}  // namespace vq2trt
