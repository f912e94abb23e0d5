// Why the default v4-k256 format's AVX2 decode stays at ~10 weights/ns a core: three ways to do its
// lookups on raw arrays (indices [R][K] bytes, a 256 x 4 float table, x [K]; y[4r + d] =
// Σ_c x[c] · table[idx[r][c]][d]), timed in one process, one thread, cache-resident:
//   A: the shipped scheme (decode_avx2.cpp): 8 index bytes a load, taken apart with rorx + and,
//      two table rows per 256-bit FMA;
//   B: one 128-bit FMA per index with the table row as its memory operand (fewer instructions);
//   C, D: one movzx load per index, two rows per ymm by insert (C) or broadcast + blend (D).
// A = C = D within noise and B slower: every variant is bound by its one table-row load per index
// (about 2.6 a nanosecond on a Zen 3 core), not by instruction count. Then a plain gather test:
// vpgatherdd and scalar loads fetch table entries at the same rate there.
//
//   g++ -O2 -mavx2 -mfma -mbmi2 -std=c++17 benchmarks/cpu_lookup_variants.cpp -o /tmp/lookup
//   /tmp/lookup [N K reps]      (e.g. 576 576 2000; N output rows, a multiple of 16)
#include <immintrin.h>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <vector>
#include <random>
#include <algorithm>
// y[4r+d] = sum_c x[c] * tab[idx[r][c]][d]
static inline const float* row_at(const float* tab, uint64_t q, int P) {
  const int s = (8 * P - 4) & 63;
  const uint64_t off = ((q >> s) | (q << ((64 - s) & 63))) & 0xff0u;
  return reinterpret_cast<const float*>(reinterpret_cast<const char*>(tab) + off);
}
// Variant B: 128-bit FMA per index, RV vector rows per pass, 2 accumulator sets
template <int RV>
void kB(const uint8_t* idx, int64_t R, int64_t K, const float* tab, const float* x, float* y) {
  for (int64_t r0 = 0; r0 < R; r0 += RV) {
    __m128 a[RV], b[RV];
    for (int r = 0; r < RV; ++r) a[r] = b[r] = _mm_setzero_ps();
    const uint8_t* p = idx + r0 * K;
    for (int64_t c = 0; c < K; c += 2) {
      const __m128 x0 = _mm_broadcast_ss(x + c), x1 = _mm_broadcast_ss(x + c + 1);
#pragma GCC unroll 16
      for (int r = 0; r < RV; ++r) a[r] = _mm_fmadd_ps(x0, _mm_load_ps(tab + (size_t(p[r * K + c]) << 2)), a[r]);
#pragma GCC unroll 16
      for (int r = 0; r < RV; ++r) b[r] = _mm_fmadd_ps(x1, _mm_load_ps(tab + (size_t(p[r * K + c + 1]) << 2)), b[r]);
    }
    for (int r = 0; r < RV; ++r) _mm_storeu_ps(y + 4 * (r0 + r), _mm_add_ps(a[r], b[r]));
  }
}
// Variant C: 256-bit, two rows in a ymm via insert, movzx per index
template <int RP>
void kC(const uint8_t* idx, int64_t R, int64_t K, const float* tab, const float* x, float* y) {
  for (int64_t r0 = 0; r0 < R; r0 += 2 * RP) {
    __m256 a[RP], b[RP];
    for (int r = 0; r < RP; ++r) a[r] = b[r] = _mm256_setzero_ps();
    const uint8_t* p = idx + r0 * K;
    for (int64_t c = 0; c < K; c += 2) {
      const __m256 x0 = _mm256_broadcast_ss(x + c), x1 = _mm256_broadcast_ss(x + c + 1);
#pragma GCC unroll 16
      for (int r = 0; r < RP; ++r) {
        __m256 w = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_load_ps(tab + (size_t(p[2 * r * K + c]) << 2))), _mm_load_ps(tab + (size_t(p[(2 * r + 1) * K + c]) << 2)), 1);
        a[r] = _mm256_fmadd_ps(x0, w, a[r]);
      }
#pragma GCC unroll 16
      for (int r = 0; r < RP; ++r) {
        __m256 w = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_load_ps(tab + (size_t(p[2 * r * K + c + 1]) << 2))), _mm_load_ps(tab + (size_t(p[(2 * r + 1) * K + c + 1]) << 2)), 1);
        b[r] = _mm256_fmadd_ps(x1, w, b[r]);
      }
    }
    for (int r = 0; r < RP; ++r) _mm256_storeu_ps(y + 4 * (r0 + 2 * r), _mm256_add_ps(a[r], b[r]));
  }
}
// Variant D: broadcastf128 + blend instead of insert
template <int RP>
void kD(const uint8_t* idx, int64_t R, int64_t K, const float* tab, const float* x, float* y) {
  for (int64_t r0 = 0; r0 < R; r0 += 2 * RP) {
    __m256 a[RP], b[RP];
    for (int r = 0; r < RP; ++r) a[r] = b[r] = _mm256_setzero_ps();
    const uint8_t* p = idx + r0 * K;
    for (int64_t c = 0; c < K; c += 2) {
      const __m256 x0 = _mm256_broadcast_ss(x + c), x1 = _mm256_broadcast_ss(x + c + 1);
#pragma GCC unroll 16
      for (int r = 0; r < RP; ++r) {
        __m256 w = _mm256_blend_ps(_mm256_castps128_ps256(_mm_load_ps(tab + (size_t(p[2 * r * K + c]) << 2))), _mm256_broadcast_ps((const __m128*)(tab + (size_t(p[(2 * r + 1) * K + c]) << 2))), 0xF0);
        a[r] = _mm256_fmadd_ps(x0, w, a[r]);
      }
#pragma GCC unroll 16
      for (int r = 0; r < RP; ++r) {
        __m256 w = _mm256_blend_ps(_mm256_castps128_ps256(_mm_load_ps(tab + (size_t(p[2 * r * K + c + 1]) << 2))), _mm256_broadcast_ps((const __m128*)(tab + (size_t(p[(2 * r + 1) * K + c + 1]) << 2))), 0xF0);
        b[r] = _mm256_fmadd_ps(x1, w, b[r]);
      }
    }
    for (int r = 0; r < RP; ++r) _mm256_storeu_ps(y + 4 * (r0 + 2 * r), _mm256_add_ps(a[r], b[r]));
  }
}
// Variant A: rorx from 8-byte loads (current style), RP=4 pairs, NA=2 sets
template <int RP>
void kA(const uint8_t* idx, int64_t R, int64_t K, const float* tab, const float* x, float* y) {
  for (int64_t r0 = 0; r0 < R; r0 += 2 * RP) {
    __m256 a[2][RP];
    for (int r = 0; r < RP; ++r) a[0][r] = a[1][r] = _mm256_setzero_ps();
    const uint8_t* p = idx + r0 * K;
    for (int64_t c = 0; c < K; c += 8) {
      uint64_t q[2 * RP];
      for (int i = 0; i < 2 * RP; ++i) std::memcpy(&q[i], p + i * K + c, 8);
#pragma GCC unroll 8
      for (int P = 0; P < 8; ++P) {
        const __m256 xv = _mm256_broadcast_ss(x + c + P);
#pragma GCC unroll 8
        for (int k = 0; k < RP; ++k) {
          __m256 w = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(row_at(tab, q[2 * k], P))), _mm_loadu_ps(row_at(tab, q[2 * k + 1], P)), 1);
          a[P & 1][k] = _mm256_fmadd_ps(w, xv, a[P & 1][k]);
        }
      }
    }
    for (int r = 0; r < RP; ++r) _mm256_storeu_ps(y + 4 * (r0 + 2 * r), _mm256_add_ps(a[0][r], a[1][r]));
  }
}
// Table entries a nanosecond: 8 per vpgatherdd against one scalar load each (a 1 KB table, 64 KB
// of indices).
void gather_vs_scalar() {
  std::vector<int32_t> tab(256);
  for (int i = 0; i < 256; ++i) tab[i] = i * 7;
  std::vector<uint8_t> idx(1 << 16);
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = uint8_t((i * 97 + 13) & 255);
  auto ids = [&](size_t i) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(&idx[i]))); };
  for (int rep = 0; rep < 3; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    long n = 0;
    for (int it = 0; it < 200; ++it)
      for (size_t i = 0; i < idx.size(); i += 32, n += 32) {
        a0 = _mm256_add_epi32(a0, _mm256_i32gather_epi32(tab.data(), ids(i), 4));
        a1 = _mm256_add_epi32(a1, _mm256_i32gather_epi32(tab.data(), ids(i + 8), 4));
        a2 = _mm256_add_epi32(a2, _mm256_i32gather_epi32(tab.data(), ids(i + 16), 4));
        a3 = _mm256_add_epi32(a3, _mm256_i32gather_epi32(tab.data(), ids(i + 24), 4));
      }
    double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    int32_t o[8];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3)));
    const double g = n / ns;
    t0 = std::chrono::steady_clock::now();
    long s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    n = 0;
    for (int it = 0; it < 200; ++it)
      for (size_t i = 0; i < idx.size(); i += 4, n += 4)
        s0 += tab[idx[i]], s1 += tab[idx[i + 1]], s2 += tab[idx[i + 2]], s3 += tab[idx[i + 3]];
    ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    printf("entries/ns: vpgatherdd %.2f, scalar %.2f (checksums %d %ld)\n", g, n / ns, o[0], s0 + s1 + s2 + s3);
  }
}

int main(int argc, char** argv) {
  if (argc < 4) { printf("usage: %s N K reps\n", argv[0]); return 1; }
  int64_t R = atoi(argv[1]) / 4, K = atoi(argv[2]); int reps = atoi(argv[3]);
  std::mt19937 rng(1);
  std::vector<uint8_t> idx(R * K); for (auto& v : idx) v = rng();
  float* tab = (float*)aligned_alloc(64, 256 * 16); for (int i = 0; i < 1024; ++i) tab[i] = (rng() % 1000) / 1000.f;
  std::vector<float> x(K), y(4 * R), y0(4 * R);
  for (auto& v : x) v = (rng() % 1000) / 1000.f;
  for (int64_t r = 0; r < R; ++r) for (int d = 0; d < 4; ++d) { double s = 0; for (int64_t c = 0; c < K; ++c) s += x[c] * tab[idx[r*K+c]*4+d]; y0[4*r+d] = s; }
  using F = void (*)(const uint8_t*, int64_t, int64_t, const float*, const float*, float*);
  F fs[] = {kA<4>, kB<6>, kB<4>, kC<4>, kD<4>}; const char* nm[] = {"A rorx RP4", "B xmm RV6", "B xmm RV4", "C ymm RP4", "D blend RP4"};
  std::vector<std::vector<double>> t(5);
  for (int rep = 0; rep < 7; ++rep) for (int f = 0; f < 5; ++f) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) fs[f](idx.data(), R, K, tab, x.data(), y.data());
    t[f].push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / reps);
    double e = 0; for (int64_t i = 0; i < 4 * R; ++i) e = std::max(e, (double)std::fabs(y[i] - y0[i]) / (std::fabs(y0[i]) + 1));
    if (e > 1e-3) printf("bad %s %g\n", nm[f], e);
  }
  for (int f = 0; f < 5; ++f) { std::sort(t[f].begin(), t[f].end()); printf("%-12s %8.1f us  %6.2f w/ns\n", nm[f], t[f][3] / 1000, 4.0 * R * K / t[f][3]); }
  gather_vs_scalar();
}
