// The opt-in dense 4-bit decode form of a weight (Dense4, VQ2TRT_DENSE4=1): built once at prepack
// from the parts' float tables, so it sees exactly the weight the float route computes with.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "internal.h"
#include "unpack.h"

namespace vq2trt {

bool dense4_requested() {
  const char* e = std::getenv("VQ2TRT_DENSE4");
  return e && !std::strcmp(e, "1");
}

void make_dense4(Prepacked& p, int64_t exact_cols) {
  const int64_t N = p.dims.N, KK = p.dims.K, col0 = std::clamp<int64_t>(exact_cols, 0, KK), K = KK - col0;
  const int64_t nb = ceil_div(K, kDense4Block), groups = ceil_div(N, int64_t(4));
  Dense4& w = p.dense4;
  w.col0 = col0;
  w.head_cols = ceil_div(col0, int64_t(8)) * 8;
  w.blocks = nb;
  w.group_bytes = w.prefix_bytes() + nb * kDense4Bytes;
  w.q.assign(size_t(groups * w.group_bytes), 0);
  // One vector row (v output rows) at a time: the parts' sums in permuted order, as x' is.
  std::vector<float> rows;
  std::vector<uint32_t> idx;
  const int64_t v_max = std::max<int64_t>(p.row_unit, 4);
  for (int64_t n0 = 0; n0 < N; n0 += v_max) {
    const int64_t nr = std::min(v_max, N - n0);
    rows.assign(size_t(nr * KK), 0.f);
    for (const Part& pt : p.parts) {
      idx.resize(size_t(pt.count));
      for (int64_t r = n0 / pt.v; r * pt.v < n0 + nr; ++r) {
        const uint32_t* row = reinterpret_cast<const uint32_t*>(pt.indices) + r * pt.words;
        unpack_generic(row, pt.words, pt.skip_bits, pt.bits, pt.count, idx.data());
        for (int64_t j = 0; j < pt.v; ++j) {
          const int64_t n = r * pt.v + j;
          if (n < n0 || n >= n0 + nr) continue;
          float* out = rows.data() + (n - n0) * KK + pt.col0;
          for (int64_t c = 0; c < pt.count; ++c) out[c] += pt.ftab[size_t(idx[size_t(c)] * pt.v + j)];
        }
      }
    }
    for (int64_t i = 0; i < nr; ++i) {
      const int64_t n = n0 + i, g = n / 4, lane = n % 4;
      uint8_t* grp = w.q.data() + g * w.group_bytes;
      const float* full = rows.data() + i * KK;
      if (col0 > 0) {
        // 8-bit head: 255 steps between the row's extremes over the head columns. Fewer bits cost
        // dearly here, where the massive activations multiply the error (SmolLM2 decode KL against
        // level 0 with 6 bits 0.118, 4 bits 0.745, 8 bits 0.091, exact 0.089).
        float lo = full[0], hi = full[0];
        for (int64_t c = 1; c < col0; ++c) lo = std::min(lo, full[c]), hi = std::max(hi, full[c]);
        const float step = (hi - lo) / 255.f;
        for (int64_t c = 0; c < col0 && step > 0.f; ++c)
          grp[lane * w.head_cols + c] = uint8_t(std::clamp(std::nearbyint((full[c] - lo) / step), 0.f, 255.f));
        std::memcpy(grp + 4 * w.head_cols + 4 * lane, &step, 4);
        std::memcpy(grp + 4 * w.head_cols + 16 + 4 * lane, &lo, 4);
      }
      const float* src = full + col0;
      // Each block's extremes, then the row's code units: minima rounded down to base + k · unit,
      // then steps rounded up (from each block's rounded minimum) to k · unit, so that every
      // block's range stays inside its 16 levels.
      std::vector<float> lo(static_cast<size_t>(nb)), hi(static_cast<size_t>(nb));
      for (int64_t b = 0; b < nb; ++b) {
        const float* blk = src + b * kDense4Block;
        const int64_t valid = std::min(kDense4Block, K - b * kDense4Block);  // padding is not weight
        lo[size_t(b)] = hi[size_t(b)] = blk[0];
        for (int64_t c = 1; c < valid; ++c)
          lo[size_t(b)] = std::min(lo[size_t(b)], blk[c]), hi[size_t(b)] = std::max(hi[size_t(b)], blk[c]);
      }
      if (nb == 0) continue;  // every column in the head
      const float mbase = *std::min_element(lo.begin(), lo.end());
      const float munit = (*std::max_element(lo.begin(), lo.end()) - mbase) / 255.f;
      std::vector<uint8_t> mcode(static_cast<size_t>(nb));
      std::vector<float> mins(static_cast<size_t>(nb));
      float smax = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        const float k = munit > 0.f ? std::floor((lo[size_t(b)] - mbase) / munit) : 0.f;
        mcode[size_t(b)] = uint8_t(std::clamp(k, 0.f, 255.f));
        mins[size_t(b)] = std::fma(float(mcode[size_t(b)]), munit, mbase);  // as the kernel's FMA
        while (mins[size_t(b)] > lo[size_t(b)] && mcode[size_t(b)] > 0)  // floor's rounding (code 0 is mbase <= lo)
          mins[size_t(b)] = std::fma(float(--mcode[size_t(b)]), munit, mbase);
        smax = std::max(smax, (hi[size_t(b)] - mins[size_t(b)]) / 15.f);
      }
      const float sunit = smax / 255.f;
      if (!std::isfinite(mbase) || !std::isfinite(munit) || !std::isfinite(sunit) || !std::isfinite(smax * 15.f)) {
        w = Dense4();  // non-finite weights: this weight keeps the lookup route
        return;
      }
      uint8_t* params = grp + w.head_bytes();
      std::memcpy(params + 4 * lane, &sunit, 4);
      std::memcpy(params + 16 + 4 * lane, &munit, 4);
      std::memcpy(params + 32 + 4 * lane, &mbase, 4);
      for (int64_t b = 0; b < nb; ++b) {
        const float* blk = src + b * kDense4Block;
        const int64_t valid = std::min(kDense4Block, K - b * kDense4Block);
        const float need = (hi[size_t(b)] - mins[size_t(b)]) / 15.f;
        uint8_t code = sunit > 0.f ? uint8_t(std::clamp(std::ceil(need / sunit), 0.f, 255.f)) : 0;
        if (code < 255 && float(code) * sunit < need) ++code;  // the division rounded down
        const float step = float(code) * sunit, m = mins[size_t(b)];
        uint8_t u[kDense4Block] = {};
        for (int64_t c = 0; c < valid && step > 0.f; ++c)
          u[c] = uint8_t(std::clamp(std::nearbyint((blk[c] - m) / step), 0.f, 15.f));
        // Rows in pairs: byte c of the pair's 32 holds the even row's element c (low nibble) and
        // the odd row's (high): one mask, or one shift and one mask, give either row's 32 in
        // order (dense4_avx2.cpp).
        uint8_t* rec = grp + w.prefix_bytes() + b * kDense4Bytes;
        for (int64_t c = 0; c < kDense4Block; ++c) rec[(lane / 2) * 32 + c] |= uint8_t(u[c] << (4 * (lane % 2)));
        rec[64 + lane] = code;
        rec[68 + lane] = mcode[size_t(b)];
      }
    }
  }
}

}  // namespace vq2trt
