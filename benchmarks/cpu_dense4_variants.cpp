// Dense4's AVX2 decode block loop (dense4_avx2.cpp), forms side by side on one random weight in
// its record layout (72 bytes per 4 rows x 32 columns, 8-bit head columns first), one thread,
// thread CPU time, forms interleaved in every repetition; min and median per call:
//   first:    one 16-byte load per row (its 32 nibbles as byte i = u[i] | u[i + 16] << 4), a
//             shift, an insert and a mask, vpmaddubsw + vpmaddwd, one conversion and one FMA per
//             row with its scale broadcast from a stack copy (the 12th session's kernel);
//   permute:  the same with the scale permuted out of the register instead;
//   pairs:    rows 0/1 and 2/3 as the low/high nibbles of one 32-byte load each (a mask, or a
//             shift and a mask, per row), one conversion and FMA per row;
//   pairs + vphaddd: the 4 rows' int32 sums folded by two rounds of vphaddd, one
//             conversion and one FMA for all 4;
//   first, no prefetch: the first form without the software prefetch 4 KB ahead;
//   pairs + vphaddw: the fold at 16 bits before vpmaddwd (one vpmaddwd per 2 rows);
//   pairs + vphaddd, 16-bit head x (shipped since): the head columns' x' at 16 bits against the
//             8-bit weights with vpmaddwd, 16 columns a pass, where the forms above convert each
//             weight to float for an FMA with float x'.
// L weights of N x K in turn: L = 1 stays in L2, 30 x 576 x 576 in L3, 300 streams from memory.
//
//   g++ -O2 -mavx2 -mfma -mf16c -std=c++17 benchmarks/cpu_dense4_variants.cpp -o /tmp/dense4
//   /tmp/dense4 N K L [reps]      (e.g. 576 576 30 300; HC=0 leaves the head columns out)
#include <immintrin.h>
#include <time.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>
#include <type_traits>
constexpr int64_t kB = 32, kRec = 72;
// q: records with each row's nibbles on its own (the first form's layout); qp: in pairs (the rest).
struct W { int64_t N, K, hc, blocks, group_bytes; std::vector<uint8_t> q, qp; int64_t head_bytes() const { return hc ? 4*hc+32 : 0; } int64_t prefix() const { return head_bytes()+48; } };
static inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}
// The head's x' at 16 bits for form 6 (scale 1/32767 of the largest: here 0.5 everywhere).
static int16_t xh16[512];
static float xh16_scale = 0.5f / 32767.f;
template <int VAR>
void gemv(const W& w, const int8_t* xm, const float* svm, const float* xhm, float xhsum, float* y) {
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t blocks = w.blocks, hc = w.hc;
  for (int64_t g = 0; g * 4 < w.N; ++g) {
    const uint8_t* qg = (VAR == 0 || VAR == 1 || VAR == 4 ? w.q : w.qp).data() + g * w.group_bytes;
    float head[4] = {0, 0, 0, 0};
    if (hc > 0 && VAR == 6) {  // 16-bit x' against the 8-bit head: vpmaddwd (the shipped head)
      __m256i h[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
      for (int64_t c = 0; c < hc; c += 16) {
        const __m256i xv = _mm256_loadu_si256((const __m256i*)(xh16 + c));
        for (int r = 0; r < 4; ++r)
          h[r] = _mm256_add_epi32(h[r], _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(qg + r * hc + c))), xv));
      }
      float st[4], mn[4]; std::memcpy(st, qg + 4 * hc, 16); std::memcpy(mn, qg + 4 * hc + 16, 16);
      for (int r = 0; r < 4; ++r) head[r] = st[r] * (xh16_scale * hsum(_mm256_cvtepi32_ps(h[r]))) + mn[r] * xhsum;
    } else if (hc > 0) {
      __m256 h0 = _mm256_setzero_ps(), h1 = h0, h2 = h0, h3 = h0;
      auto wrow = [&](int r, int64_t c) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(qg + r * hc + c)))); };
      for (int64_t c = 0; c < hc; c += 8) {
        const __m256 xv = _mm256_loadu_ps(xhm + c);
        h0 = _mm256_fmadd_ps(wrow(0, c), xv, h0); h1 = _mm256_fmadd_ps(wrow(1, c), xv, h1);
        h2 = _mm256_fmadd_ps(wrow(2, c), xv, h2); h3 = _mm256_fmadd_ps(wrow(3, c), xv, h3);
      }
      float st[4], mn[4]; std::memcpy(st, qg + 4 * hc, 16); std::memcpy(mn, qg + 4 * hc + 16, 16);
      const float hs[4] = {hsum(h0), hsum(h1), hsum(h2), hsum(h3)};
      for (int r = 0; r < 4; ++r) head[r] = st[r] * hs[r] + mn[r] * xhsum;
    }
    const float* par = (const float*)(qg + w.head_bytes());
    const __m256 unit = _mm256_loadu_ps(par);
    const __m256 base_hi = _mm256_insertf128_ps(_mm256_setzero_ps(), _mm_loadu_ps(par + 8), 1);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0, accm = acc0;
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* rec = qg + w.prefix() + b * kRec;
      if (VAR != 4) _mm_prefetch((const char*)rec + 4096, _MM_HINT_T0);
      const __m256i xv = _mm256_loadu_si256((const __m256i*)(xm + b * kB));
      const __m256 codes = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(rec + 64))));
      const __m256 t = _mm256_mul_ps(_mm256_fmadd_ps(codes, unit, base_hi), _mm256_loadu_ps(svm + b * 8));
      accm = _mm256_add_ps(accm, t);
      if (VAR == 0 || VAR == 4) {
        alignas(32) float tb[8]; _mm256_store_ps(tb, t);
        auto row = [&](int r, __m256& acc) {
          const __m128i nib = _mm_loadu_si128((const __m128i*)(rec + r * 16));
          const __m256i u = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(nib), _mm_srli_epi16(nib, 4), 1), low);
          const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv), ones);
          acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(tb + r), acc);
        };
        row(0, acc0); row(1, acc1); row(2, acc2); row(3, acc3);
      } else if (VAR == 1) {
        auto row = [&](int r, __m256& acc) {
          const __m128i nib = _mm_loadu_si128((const __m128i*)(rec + r * 16));
          const __m256i u = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(nib), _mm_srli_epi16(nib, 4), 1), low);
          const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv), ones);
          acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_permutevar8x32_ps(t, _mm256_set1_epi32(r)), acc);
        };
        row(0, acc0); row(1, acc1); row(2, acc2); row(3, acc3);
      } else {  // pairs: 32 bytes hold rows 0 and 1, the next 32 rows 2 and 3
        alignas(32) float tb[8]; _mm256_store_ps(tb, t);
        const __m256i v01 = _mm256_loadu_si256((const __m256i*)rec), v23 = _mm256_loadu_si256((const __m256i*)(rec + 32));
        auto dot = [&](__m256i u) { return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, xv), ones)); };
        if (VAR == 2) {
          acc0 = _mm256_fmadd_ps(dot(_mm256_and_si256(v01, low)), _mm256_broadcast_ss(tb + 0), acc0);
          acc1 = _mm256_fmadd_ps(dot(_mm256_and_si256(_mm256_srli_epi16(v01, 4), low)), _mm256_broadcast_ss(tb + 1), acc1);
          acc2 = _mm256_fmadd_ps(dot(_mm256_and_si256(v23, low)), _mm256_broadcast_ss(tb + 2), acc2);
          acc3 = _mm256_fmadd_ps(dot(_mm256_and_si256(_mm256_srli_epi16(v23, 4), low)), _mm256_broadcast_ss(tb + 3), acc3);
        } else if (VAR == 3 || VAR == 6) {
          const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(v01, low), xv), ones);
          const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v01, 4), low), xv), ones);
          const __m256i p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(v23, low), xv), ones);
          const __m256i p3 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v23, 4), low), xv), ones);
          const __m256i h01 = _mm256_hadd_epi32(p0, p1), h23 = _mm256_hadd_epi32(p2, p3);
          const __m256i h = _mm256_hadd_epi32(h01, h23);  // rows 0-3 in lanes 0-3 and 4-7
          const __m256 sc = _mm256_permutevar8x32_ps(t, _mm256_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3));
          acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), sc, acc0);
        }
        if (VAR == 5) {
          const __m256i m0 = _mm256_maddubs_epi16(_mm256_and_si256(v01, low), xv);
          const __m256i m1 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v01, 4), low), xv);
          const __m256i m2 = _mm256_maddubs_epi16(_mm256_and_si256(v23, low), xv);
          const __m256i m3 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v23, 4), low), xv);
          const __m256i q01 = _mm256_madd_epi16(_mm256_hadd_epi16(m0, m1), ones);
          const __m256i q23 = _mm256_madd_epi16(_mm256_hadd_epi16(m2, m3), ones);
          const __m256i h = _mm256_hadd_epi32(q01, q23);  // rows 0-3 in lanes 0-3 and 4-7
          const __m256 sc = _mm256_permutevar8x32_ps(t, _mm256_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3));
          acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), sc, acc0);
        }
      }
    }
    alignas(32) float mins[8]; _mm256_store_ps(mins, accm);
    float sums[4];
    if (VAR == 3 || VAR == 5 || VAR == 6) { alignas(32) float a[8]; _mm256_store_ps(a, acc0); for (int r = 0; r < 4; ++r) sums[r] = a[r] + a[4 + r]; }
    else { sums[0] = hsum(acc0); sums[1] = hsum(acc1); sums[2] = hsum(acc2); sums[3] = hsum(acc3); }
    for (int r = 0; r < 4; ++r) y[g * 4 + r] = head[r] + sums[r] + mins[4 + r];
  }
}
static double now() { timespec ts; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3; }
int main(int argc, char** argv) {
  const int64_t N = atoll(argv[1]), K = atoll(argv[2]), L = atoll(argv[3]); const int reps = argc > 4 ? atoi(argv[4]) : 300;
  std::mt19937 rng(1);
  std::vector<W> ws(L);
  for (auto& w : ws) {
    w.N = N, w.K = K, w.hc = getenv("HC") ? atoi(getenv("HC")) : 64;
    w.blocks = (K - w.hc + 31) / 32, w.group_bytes = w.prefix() + w.blocks * kRec;
    w.q.resize((N / 4) * w.group_bytes);
    for (auto& b : w.q) b = uint8_t(rng());
    for (int64_t g = 0; g < N / 4; ++g) {  // plausible scales (random bytes make NaNs and infinities)
      float* par = reinterpret_cast<float*>(w.q.data() + g * w.group_bytes + w.head_bytes());
      for (int i = 0; i < 12; ++i) par[i] = 0.01f * (i + 1);
      float* st = reinterpret_cast<float*>(w.q.data() + g * w.group_bytes + 4 * w.hc);
      for (int i = 0; i < 8 && w.hc; ++i) st[i] = 0.02f;
    }
    w.qp = w.q;  // the same nibbles, in pairs: byte c of pair p = u_{2p}[c] | u_{2p+1}[c] << 4
    for (int64_t g = 0; g < N / 4; ++g)
      for (int64_t b = 0; b < w.blocks; ++b) {
        const uint8_t* r = w.q.data() + g * w.group_bytes + w.prefix() + b * kRec;
        uint8_t* o = w.qp.data() + g * w.group_bytes + w.prefix() + b * kRec;
        for (int row = 0; row < 4; ++row)
          for (int c = 0; c < 32; ++c) {
            const uint8_t u = c < 16 ? r[row * 16 + c] & 15 : r[row * 16 + c - 16] >> 4;
            o[(row / 2) * 32 + c] = row % 2 ? uint8_t(o[(row / 2) * 32 + c] | (u << 4)) : u;
          }
      }
  }
  const int64_t nb = ws[0].blocks;
  std::vector<int8_t> xq(nb * 32); for (auto& v : xq) v = int8_t(rng());
  std::vector<float> sv(nb * 8, 0.01f), xh(64, 0.5f), y(N);
  using F = void (*)(const W&, const int8_t*, const float*, const float*, float, float*);
  F fs[] = {gemv<0>, gemv<1>, gemv<2>, gemv<3>, gemv<4>, gemv<5>, gemv<6>};
  for (auto& v : xh16) v = 32767;
  const char* names[] = {"first", "permute", "pairs", "pairs + vphaddd", "first, no prefetch", "pairs + vphaddw", "pairs + vphaddd, 16-bit head x"};
  // Every form computes the same outputs (up to float summation order): checked once.
  std::vector<float> ref(N), got(N);
  fs[0](ws[0], xq.data(), sv.data(), xh.data(), 1.f, ref.data());
  for (int v = 1; v < 7; ++v) {
    fs[v](ws[0], xq.data(), sv.data(), xh.data(), 1.f, got.data());
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < N; ++i) worst = std::max(worst, double(std::abs(got[i] - ref[i]))), scale = std::max(scale, double(std::abs(ref[i])));
    if (worst > 1e-4 * scale) { printf("form %d differs from the first: %g (scale %g)\n", v, worst, scale); return 1; }
  }
  std::vector<std::vector<double>> t(7);
  for (int r = 0; r < reps; ++r)
    for (int v = 0; v < 7; ++v) {
      double t0 = now();
      for (auto& w : ws) fs[v](w, xq.data(), sv.data(), xh.data(), 1.f, y.data());
      t[v].push_back((now() - t0) / L);
    }
  for (int v = 0; v < 7; ++v) { std::sort(t[v].begin(), t[v].end()); printf("%-20s min %7.2f  med %7.2f us  (%.1f w/ns med)\n", names[v], t[v][0], t[v][t[v].size()/2], N*K/1e3/t[v][t[v].size()/2]); }
}
