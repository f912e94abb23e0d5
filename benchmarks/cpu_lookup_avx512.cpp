// How fast the AVX-512 int8 route's 256-entry byte lookup can go on one core, whatever the memory:
// the default v4-k256 format's inner loop (int8_avx512.cpp, lookup_dot) on cache-resident indices,
// 4 components of 256-entry byte tables, one vpdpbusd per component and 64 columns, in three forms
// timed in one process, one thread:
//   A: two vpermi2b (entries 0-127 and 128-255) and a blend on bit 7 (AMD's form);
//   B: the same with zero-masked vpermi2b and two vpdpbusd instead of the blend;
//   C: four vpermb, each merged under the mask of its quarter (bits 6, 7), the masks shared by
//      the 4 components (Intel's form: vpermi2b is 3 uops there, vpermb 1).
// On a 2-core Intel Xeon (Sapphire Rapids class; RESULTS.md, 16th session) A ran 35.7-36.8
// weights/ns and C 39.3-40.6: at ~40 weights/ns a core, the 4096 x 4096 chain of cpu_vqgemm.py
// (268 M weights, 2 threads) cannot go below ~3.4 ms, 1.4x that machine's 2-bit memory floor.
//
//   g++ -O2 -march=native -std=c++17 benchmarks/cpu_lookup_avx512.cpp -o /tmp/lookup512
//   /tmp/lookup512            (needs AVX-512 VBMI + VNNI)
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

template <char F>
__attribute__((noinline)) void lookup(const uint8_t* idx, int64_t n, const uint8_t* qt, const int8_t* x, int32_t* out) {
  __m512i T[4][4];
  for (int j = 0; j < 4; ++j)
    for (int t = 0; t < 4; ++t) T[j][t] = _mm512_loadu_si512(qt + j * 256 + 64 * t);
  __m512i acc[4] = {};
  for (int64_t b = 0; b < n; b += 64) {
    const __m512i ix = _mm512_loadu_si512(idx + b), xv = _mm512_loadu_si512(x + (b & 4095));
    const __mmask64 up = _mm512_movepi8_mask(ix);
    const __mmask64 b6 = _mm512_test_epi8_mask(ix, _mm512_set1_epi8(64));
    const __mmask64 q1 = b6 & ~up, q2 = ~b6 & up, q3 = b6 & up;
    for (int j = 0; j < 4; ++j) {
      if (F == 'A') {
        const __m512i w = _mm512_mask_blend_epi8(up, _mm512_permutex2var_epi8(T[j][0], ix, T[j][1]),
                                                 _mm512_permutex2var_epi8(T[j][2], ix, T[j][3]));
        acc[j] = _mm512_dpbusd_epi32(acc[j], w, xv);
      } else if (F == 'B') {
        acc[j] = _mm512_dpbusd_epi32(acc[j], _mm512_maskz_permutex2var_epi8(~up, T[j][0], ix, T[j][1]), xv);
        acc[j] = _mm512_dpbusd_epi32(acc[j], _mm512_maskz_permutex2var_epi8(up, T[j][2], ix, T[j][3]), xv);
      } else {
        __m512i w = _mm512_permutexvar_epi8(ix, T[j][0]);
        w = _mm512_mask_permutexvar_epi8(w, q1, ix, T[j][1]);
        w = _mm512_mask_permutexvar_epi8(w, q2, ix, T[j][2]);
        w = _mm512_mask_permutexvar_epi8(w, q3, ix, T[j][3]);
        acc[j] = _mm512_dpbusd_epi32(acc[j], w, xv);
      }
    }
  }
  for (int j = 0; j < 4; ++j) out[j] = _mm512_reduce_add_epi32(acc[j]);
}

int main() {
  const int64_t n = 16384;  // 16 KB of indices: L1 / L2
  std::vector<uint8_t> idx(n), qt(1024);
  std::vector<int8_t> x(4096);
  std::mt19937 g(1);
  for (auto& v : idx) v = uint8_t(g());
  for (auto& v : qt) v = uint8_t(g() & 127);
  for (auto& v : x) v = int8_t(g());
  int32_t ref[4];
  lookup<'A'>(idx.data(), n, qt.data(), x.data(), ref);
  auto run = [&](auto f, const char* name) {
    int32_t o[4];
    double best = 1e9;
    for (int r = 0; r < 20; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 200; ++i) f(idx.data(), n, qt.data(), x.data(), o);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    const bool same = std::equal(o, o + 4, ref);
    std::printf("| %s | %.1f | %s |\n", name, 200.0 * double(n) * 4 / best * 1e-9, same ? "yes" : "NO");
  };
  std::printf("| form | weights/ns, one core (best of 20) | sums equal A's |\n|---|---|---|\n");
  for (int round = 0; round < 2; ++round) {
    run(lookup<'A'>, "A: 2 vpermi2b + blend");
    run(lookup<'B'>, "B: 2 zero-masked vpermi2b, 2 vpdpbusd");
    run(lookup<'C'>, "C: 4 merged vpermb");
  }
}
