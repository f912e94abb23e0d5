// Prepacking one weight: split it into parts and build their lookup tables (once per weight).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "internal.h"

namespace vq2trt {

void PrepackedDeleter::operator()(Prepacked* p) const { delete p; }

namespace {

// A kernel choice that follows the CPU's vendor (x86, not AMD), with VAR=0|1 overriding it so
// that both choices can be compared on one machine.
bool unless_amd(const char* var) {
  if (const char* g = std::getenv(var)) {
    if (!std::strcmp(g, "0")) return false;
    if (!std::strcmp(g, "1")) return true;
  }
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return !__builtin_cpu_is("amd");
#else
  return false;
#endif
}

}  // namespace

// vpgatherdd on AMD's AVX2-only cores (Zen 1-3; a Zen 4 asks only when capped to AVX2) is
// microcoded and slow: on a Zen 3 EPYC the 8-column gather kernel ran the v4-k256 decode chain at
// 0.75-0.86x the float kernel's speed (RESULTS.md), while on Intel it is 1.2-1.5x faster.
bool avx2_gather_is_fast() { return unless_amd("VQ2TRT_GATHER"); }

// vpermi2b is 3 uops on Intel's AVX-512 cores and 1 on AMD's Zen 4 and 5: the int8 route's
// 256-entry lookup takes four merged vpermb on Intel (int8_avx512.cpp), measured there only.
bool permb_chain_is_fast() { return unless_amd("VQ2TRT_PERMB"); }

namespace {

bool cpu_has_avx_vnni() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("avxvnni");
#else
  return false;
#endif
}

// x86 ISAs in order of capability (kAvxVnni between AVX2 and AVX-512).
int rank(Isa isa) {
  switch (isa) {
    case Isa::kAvx2: return 1;
    case Isa::kAvxVnni: return 2;
    case Isa::kAvx512: return 3;
    default: return 0;
  }
}

// Opt-in (VQ2TRT_PAIR=1): the shared byte scale is at least twice as coarse as the main part's
// own, and VPTQ's 16-entry residual codebooks can be wider than the main one (SmolLM2 at
// v4-k16-r16: decode KL 0.56 nats/token against level 0, separate parts 0.10; RESULTS.md).
bool avx2_pairs_enabled() {
  const char* e = std::getenv("VQ2TRT_PAIR");
  return e && !std::strcmp(e, "1");
}

// Midrange c and half range of component j over a part's k codebook entries: the centre and
// span of every integer table built from the float one.
void component_range(const Part& q, int64_t j, float& c, float& half) {
  const int64_t v = q.v;
  float lo = q.ftab[size_t(j)], hi = lo;
  for (int64_t i = 0; i < q.entries; ++i) {
    lo = std::min(lo, q.ftab[size_t(i * v + j)]);
    hi = std::max(hi, q.ftab[size_t(i * v + j)]);
  }
  c = 0.5f * (lo + hi);
  half = std::max(hi - c, c - lo);
}

// Component j of a part on `levels` integer steps each side of its midrange: the centre and scale
// go to qcenter / qscale, and store(i, q) gets entry i's level q in [-levels, levels].
template <typename Store>
void round_component(Part& p, int64_t j, float levels, Store store) {
  float c, half;
  component_range(p, j, c, half);
  const float s = half > 0.f ? half / levels : 1.f;
  p.qcenter[size_t(j)] = c;
  p.qscale[size_t(j)] = s;
  for (int64_t i = 0; i < p.entries; ++i)
    store(i, std::clamp(std::nearbyint((p.ftab[size_t(i * p.v + j)] - c) / s), -levels, levels));
}

// Part::ptab for a main part and its residual (both k <= 16, same columns and v).
void make_pair_tables(Part& m, const Part& r) {
  const int64_t v = m.v;
  m.ptab.assign(size_t(v * 32), 0);
  m.pscale.assign(size_t(v), 1.f);
  m.pcenter.assign(size_t(v), 0.f);
  for (int64_t j = 0; j < v; ++j) {
    float cm, hm, cr, hr;
    component_range(m, j, cm, hm);
    component_range(r, j, cr, hr);
    // 62, not 63: each table rounds by up to 1/2, so the two bytes' offsets sum to at most 63.
    const float s = hm + hr > 0.f ? (hm + hr) / 62.f : 1.f;
    m.pscale[size_t(j)] = s;
    m.pcenter[size_t(j)] = cm + cr;
    uint8_t* t = m.ptab.data() + j * 32;
    for (int64_t i = 0; i < 16; ++i) {  // entries >= k: weight offset 0 (never indexed by valid data)
      const float a = i < m.entries ? std::nearbyint((m.ftab[size_t(i * v + j)] - cm) / s) : 0.f;
      const float b = i < r.entries ? std::nearbyint((r.ftab[size_t(i * v + j)] - cr) / s) : 0.f;
      t[i] = uint8_t(64 + int(std::clamp(a, -63.f, 63.f)));
      t[16 + i] = uint8_t(int8_t(int(std::clamp(b, -63.f, 63.f))));
    }
  }
}

}  // namespace

Isa detect_isa() {
  static const Isa detected = [] {
    Isa isa = Isa::kScalar;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa = Isa::kAvx2;
    if (cpu_has_avx_vnni()) isa = Isa::kAvxVnni;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni"))
      isa = Isa::kAvx512;
#elif defined(__aarch64__)
    isa = Isa::kNeon;  // Advanced SIMD is part of the ARMv8-A base architecture
#endif
    // VQ2TRT_ISA=scalar|avx2|avxvnni caps the choice, to compare paths on one machine (avx2:
    // plain AVX2, as on AVX2-only CPUs such as Zen 3; avxvnni: where the CPU has AVX-VNNI).
    if (const char* cap = std::getenv("VQ2TRT_ISA")) {
      if (!std::strcmp(cap, "scalar")) isa = Isa::kScalar;
      if (!std::strcmp(cap, "avx2") && rank(isa) > rank(Isa::kAvx2)) isa = Isa::kAvx2;
      if (!std::strcmp(cap, "avxvnni") && rank(isa) > rank(Isa::kAvxVnni))
        isa = cpu_has_avx_vnni() ? Isa::kAvxVnni : Isa::kAvx2;
    }
    return isa;
  }();
  return detected;
}

Isa native_isa(Isa wanted) {
  const Isa best = detect_isa();
  if (wanted == Isa::kScalar || best == Isa::kScalar) return Isa::kScalar;
  // An x86 request on an ARM build (or the reverse) means "this machine's best": tests and
  // callers name ISAs without knowing which architecture they were compiled for.
  if (is_x86(best) != is_x86(wanted)) return best;
  if (!is_x86(best)) return best;
  if (rank(wanted) >= rank(best)) return best;
  // Below the best: AVX-512 CPUs need not have AVX-VNNI (Zen 4 has not).
  return wanted == Isa::kAvxVnni && !cpu_has_avx_vnni() ? Isa::kAvx2 : wanted;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvxVnni: return "avxvnni";
    case Isa::kAvx512: return "avx512";
    case Isa::kNeon: return "neon";
  }
  return "?";
}

namespace {

// kInt8HeadCols, or VQ2TRT_INT8_HEAD=<columns> to measure the accuracy / speed trade-off.
int64_t int8_head_cols() {
  static const int64_t cols = [] {
    const char* s = std::getenv("VQ2TRT_INT8_HEAD");
    return s ? std::clamp<int64_t>(std::atoll(s), 0, int64_t(1) << 30) : kInt8HeadCols;
  }();
  return cols;
}

// A part's tables from its fp16 codebook [k, v]; `int8` also builds the byte tables.
Part make_part(int64_t col0, int64_t count, int64_t N, int64_t k, int64_t v, const int32_t* indices,
               const uint16_t* cb, Isa int8) {
  Part p;
  p.col0 = col0;
  p.count = count;
  p.entries = k;
  p.v = v;
  p.rows = ceil_div(N, v);
  p.bits = index_bits(k);
  p.words = packed_words(count, p.bits);
  p.indices = indices;
  p.ftab.assign(size_t(v) << p.bits, 0.f);  // zeros beyond k: any b-bit value is a safe read
  for (int64_t i = 0; i < k * v; ++i) p.ftab[size_t(i)] = half_to_float(cb[i]);
  p.ft = p.ftab.data();
  if (v == 2 || v == 3) {  // rows padded to 4 floats: kernels_float.inc (v = 3), decode_avx2.cpp
    p.ftab4.assign(size_t(4) << p.bits, 0.f);
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < v; ++j) p.ftab4[size_t(i * 4 + j)] = p.ftab[size_t(i * v + j)];
  }
  // Byte tables: the AVX-512 route takes up to 512 entries; the AVX2 one 16 (vpshufb, any v),
  // 256 for v = 4 and 512 for v = 3 (gathers and int16 tiles from the centroid tables below).
  const bool avx2_int8 = int8 == Isa::kAvx2 && (p.bits <= 4 || (p.bits <= 8 && v == 4) || (p.bits <= 9 && v == 3));
  if ((int8 == Isa::kAvx512 && p.bits <= 9) || avx2_int8) {
    p.int8 = true;
    p.qentries = int8 == Isa::kAvx2 ? (p.bits <= 4 ? 16 : p.bits <= 8 ? 256 : 512)
                                    : p.bits <= 6 ? 64 : p.bits <= 8 ? 256 : 512;
    p.qtab.assign(size_t(v * p.qentries), 128);  // 128 = weight 0 for the unused entries
    p.qscale.assign(size_t(v), 1.f);
    p.qcenter.assign(size_t(v), 0.f);
    // One centre and scale per component j: components of a VQ codebook often differ in range,
    // and a normalised weight's codebook holds q in [0, 1] (see Part::qcenter).
    for (int64_t j = 0; j < v; ++j)
      round_component(p, j, 127.f, [&](int64_t i, float q) { p.qtab[size_t(j * p.qentries + i)] = uint8_t(int(q) + 128); });
    if (int8 == Isa::kAvx2 && (v == 3 || v == 4)) {
      p.wtab16.assign(size_t(4 * p.qentries), 0);
      for (int64_t i = 0; i < p.qentries; ++i)
        for (int64_t j = 0; j < v; ++j) p.wtab16[size_t(4 * i + j)] = int16_t(p.qtab[size_t(j * p.qentries + i)] - 128);
      p.wtab8.resize(size_t(p.qentries));
      for (int64_t i = 0; i < p.qentries; ++i) {
        uint32_t w = 0;
        for (int64_t j = 0; j < v; ++j) w |= uint32_t(uint8_t(p.qtab[size_t(j * p.qentries + i)] ^ 0x80)) << (8 * j);
        p.wtab8[size_t(i)] = int32_t(w);
      }
    }
  }
  return p;
}

// A float head's 13-bit tables for the AVX2 prefill (Part::wseg): per component the same
// centre as the int8 route's, a scale 32x finer. Entries >= k are the centre (weight 0 after
// the centring, as the byte tables' unused entries).
void make_wide_tables(Part& p) {
  const int64_t v = p.v, n = int64_t(1) << p.bits;
  p.qscale.assign(size_t(v), 1.f);
  p.qcenter.assign(size_t(v), 0.f);
  p.wtab16.assign(size_t(4 * n), 0);
  for (int64_t j = 0; j < v; ++j)
    round_component(p, j, 4095.f, [&](int64_t i, float q) { p.wtab16[size_t(4 * i + j)] = int16_t(q); });
}

}  // namespace

PrepackedPtr prepack(const VQGemmDesc& w, int accuracy_level, Isa isa) {
  const VQGemmDims& d = w.dims;
  PrepackedPtr pp(new Prepacked);
  Prepacked& p = *pp;
  p.dims = d;
  p.accuracy_level = accuracy_level;
  p.isa = native_isa(isa);
  // AVX-VNNI only changes the k <= 16 int8 kernel: everything else runs the AVX2 code.
  p.avx_vnni = p.isa == Isa::kAvxVnni;
  if (p.avx_vnni) p.isa = Isa::kAvx2;
  p.avx2_gather = p.isa == Isa::kAvx2 && avx2_gather_is_fast();
  p.avx2_pairs = p.isa == Isa::kAvx2 && avx2_pairs_enabled();
  // kScalar: no int8 tables (NEON has no int8 route yet: its level 4 is the float path)
  const Isa int8 = accuracy_level >= 4 && p.isa != Isa::kNeon ? p.isa : Isa::kScalar;
  p.perm.assign(w.perm, w.perm + d.K);
  // Clamp so that even an unvalidated perm cannot index outside X.
  for (auto& ch : p.perm) ch = std::clamp<int32_t>(ch, 0, int32_t(d.K - 1));
  p.pscale.assign(size_t(d.K), 1.f);
  if (d.normalized) {
    p.col_bias.resize(size_t(d.K));
    for (int64_t ch = 0; ch < d.K; ++ch) p.col_bias[size_t(ch)] = half_to_float(w.col_bias[ch]);
    for (int64_t q = 0; q < d.K; ++q) p.pscale[size_t(q)] = half_to_float(w.col_scale[p.perm[size_t(q)]]);
  }
  if (d.has_bias) p.bias.assign(w.bias, w.bias + d.N);

  auto add_segment = [&](int64_t col0, int64_t count, bool split) {
    for (size_t i = 0; i < p.segments.size(); ++i) {
      const Segment& s = p.segments[i];
      if (s.col0 == col0 && s.count == count && s.split == split) return int(i);
    }
    Segment s;
    s.col0 = col0;
    s.count = count;
    s.blocks = split ? 2 * ceil_div(count, 128) : ceil_div(count, 64);
    s.split = split;
    s.byte_offset = p.xq_bytes;
    s.block_offset = p.xq_blocks;
    p.xq_bytes += s.blocks * 64;
    p.xq_blocks += s.blocks;
    p.segments.push_back(s);
    return int(p.segments.size() - 1);
  };
  // The first kInt8HeadCols permuted positions (the most salient columns: outliers, then the
  // largest diag(H) = E[x²], where LLMs put their massive activation channels) stay on the float
  // route at every accuracy level; the int8 route starts after them (see internal.h).
  const int64_t head = int8 != Isa::kScalar ? int8_head_cols() : 0;
  auto push = [&](Part&& pt) {
    if (pt.int8) {
      pt.split4 = pt.bits == 4 && pt.skip_bits % 8 == 0;
      pt.segment = add_segment(pt.col0, pt.count, pt.split4);
    }
    p.parts.push_back(std::move(pt));
  };
  auto add_wide = [&](int64_t col0, int64_t count) {
    for (size_t i = 0; i < p.wide.size(); ++i)
      if (p.wide[i].col0 == col0 && p.wide[i].count == count) return int(i);
    Segment s;
    s.col0 = col0;
    s.count = count;
    s.blocks = 1;
    s.byte_offset = p.wide_pairs;
    p.wide_pairs += ceil_div(count, 64) * 32;
    p.wide.push_back(s);
    return int(p.wide.size() - 1);
  };
  auto add_part = [&](Part&& pt) {
    if (!pt.int8 || pt.col0 >= head) return push(std::move(pt));
    const int64_t hn = std::min(head - pt.col0, pt.count);
    Part tail = pt;
    pt.count = hn;
    pt.int8 = false;
    pt.qentries = 0;
    pt.qtab.clear();
    pt.qscale.clear();
    pt.qcenter.clear();
    pt.wtab16.clear();
    pt.wtab8.clear();
    if (int8 == Isa::kAvx2 && !tail.wtab16.empty() && hn <= kInt8HeadCols) {  // at most 32 pairs: see Part::wseg
      make_wide_tables(pt);
      pt.wseg = add_wide(pt.col0, pt.count);
    }
    if (int8 == Isa::kAvx512 && pt.v <= 4 && pt.col0 + hn <= kInt8HeadCols) {
      make_wide_tables(pt);
      pt.h16n = pt.bits <= 6 ? 64 : pt.bits <= 8 ? 256 : 512;
      pt.h16tab.assign(size_t(pt.v * 2 * pt.h16n), 0);
      for (int64_t j = 0; j < pt.v; ++j)
        for (int64_t i = 0; i < (int64_t(1) << pt.bits); ++i) {
          const uint16_t w = uint16_t(pt.wtab16[size_t(4 * i + j)]);
          pt.h16tab[size_t((2 * j) * pt.h16n + i)] = uint8_t(w & 0xff);
          pt.h16tab[size_t((2 * j + 1) * pt.h16n + i)] = uint8_t(w >> 8);
        }
      pt.wtab16.clear();
      p.head16_cols = std::max(p.head16_cols, pt.col0 + hn);
    }
    push(std::move(pt));
    if (hn < tail.count) {
      tail.col0 += hn;
      tail.count -= hn;
      tail.skip_bits += hn * tail.bits;
      push(std::move(tail));
    }
  };
  if (d.n_out > 0)
    add_part(make_part(0, d.n_out, d.N, d.k_o, d.v_o, w.outlier_indices, w.outlier_codebook, int8));
  const int64_t C = d.K - d.n_out, gs = group_size(d);
  const int b = index_bits(d.k), br = d.k_r ? index_bits(d.k_r) : 0;
  const int64_t words = packed_words(C, b), words_r = packed_words(C, br);
  for (int64_t g = 0; g < d.G; ++g) {
    const int64_t c0 = g * gs, cn = std::min(gs, C - c0);
    if (cn <= 0) break;
    // A group's columns start mid-row (all groups share one packed row): the part skips those bits.
    Part main = make_part(d.n_out + c0, cn, d.N, d.k, d.v, w.indices, w.codebook + g * d.k * d.v, int8);
    main.words = words;
    main.skip_bits = c0 * b;
    add_part(std::move(main));
    if (d.k_r) {
      Part res = make_part(d.n_out + c0, cn, d.N, d.k_r, d.v, w.res_indices,
                           w.res_codebook + g * d.k_r * d.v, int8);
      res.words = words_r;
      res.skip_bits = c0 * br;
      add_part(std::move(res));
    }
  }
  // AVX2: each int8 main part with k <= 16 and its residual's int8 part over the same columns.
  if (int8 == Isa::kAvx2 && p.avx2_pairs && d.k_r)
    for (Part& m : p.parts) {
      if (!m.int8 || m.indices != w.indices || m.qentries != 16) continue;
      for (size_t j = 0; j < p.parts.size(); ++j) {
        Part& r = p.parts[j];
        if (r.int8 && r.indices == w.res_indices && r.qentries == 16 && r.col0 == m.col0 && r.count == m.count &&
            r.v == m.v && r.split4 == m.split4 && r.segment == m.segment) {
          make_pair_tables(m, r);
          m.pair = int64_t(j);
          r.paired = true;
          break;
        }
      }
    }
  // Raw views last: add_part copies parts, and push_back may move them.
  for (Part& q : p.parts) {
    q.ft = q.ftab.data();
    q.ft4 = q.ftab4.empty() ? nullptr : q.ftab4.data();
    q.qt = q.int8 ? q.qtab.data() : nullptr;
    q.qs = q.int8 || q.wseg >= 0 || q.h16n ? q.qscale.data() : nullptr;
    q.qc = q.int8 || q.wseg >= 0 || q.h16n ? q.qcenter.data() : nullptr;
    q.h16 = q.h16tab.empty() ? nullptr : q.h16tab.data();
    q.w16 = (q.int8 || q.wseg >= 0) && !q.wtab16.empty() ? q.wtab16.data() : nullptr;
    q.w8 = q.int8 && !q.wtab8.empty() ? q.wtab8.data() : nullptr;
    q.pt = q.ptab.empty() ? nullptr : q.ptab.data();
    q.ps = q.pscale.empty() ? nullptr : q.pscale.data();
    q.pc = q.pcenter.empty() ? nullptr : q.pcenter.data();
  }
  p.max_count = 0;
  for (const Part& q : p.parts) p.max_count = std::max(p.max_count, q.count);
  const int64_t vo = d.n_out ? d.v_o : 1, l = std::lcm(d.v, vo);
  p.row_unit = l <= 256 ? l : d.v;
  // Dense4's kernel is AVX2 code (AVX-512 CPUs run it too); elsewhere the request is ignored.
  if (accuracy_level >= 4 && (p.isa == Isa::kAvx2 || p.isa == Isa::kAvx512) && dense4_requested())
    make_dense4(p, int8_head_cols());
  return pp;
}

}  // namespace vq2trt
