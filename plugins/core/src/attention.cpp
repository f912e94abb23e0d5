// cached_attention (vq2trt/attention.h): per (row, KV head) task, the query heads that share it
// rotated and scaled, scored against the cached keys up to their own position, softmax in
// float32, the weighted sum of values. Rotated new keys and the new values go into the cache first.
#include "vq2trt/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "internal.h"

namespace vq2trt {
namespace avx2 {
void attend_heads(const float* q, int64_t G, int64_t D, const float* K, const float* V, int64_t keys, float* out,
                  int64_t ostride, float* scores, float* ml);
}  // namespace avx2

namespace {

// avx2::attend_heads in plain C++ (other ISAs, head sizes not a multiple of 8): G query heads
// (q: G rows of D, rotated and scaled) against one KV head's first `keys` rows. ml (optional):
// each head's score maximum and exp-sum, the output left unnormalised (a key range of a split).
void attend_heads(const float* q, int64_t G, int64_t D, const float* K, const float* V, int64_t keys, float* out,
                  int64_t ostride, float* scores, float* ml) {
  for (int64_t g = 0; g < G; ++g) {
    float* sc = scores + g * keys;
    float mx = -INFINITY;
    for (int64_t j = 0; j < keys; ++j) {
      float acc = 0.f;
      for (int64_t c = 0; c < D; ++c) acc += q[g * D + c] * K[j * D + c];
      mx = std::max(mx, sc[j] = acc);
    }
    float sum = 0.f;
    for (int64_t j = 0; j < keys; ++j) sum += sc[j] = std::exp(sc[j] - mx);
    float* o = out + g * ostride;
    std::fill(o, o + D, 0.f);
    for (int64_t j = 0; j < keys; ++j)
      for (int64_t c = 0; c < D; ++c) o[c] += sc[j] * V[j * D + c];
    if (ml) {
      ml[2 * g] = mx, ml[2 * g + 1] = sum;
      continue;
    }
    for (int64_t c = 0; c < D; ++c) o[c] /= sum;
  }
}

// Rotate-half rotary of one head vector at position p into out.
void rotate(const float* x, int64_t D, const float* cos, const float* sin, int64_t p, float* out) {
  const int64_t h = D / 2;
  const float* c = cos + p * h;
  const float* s = sin + p * h;
  for (int64_t i = 0; i < h; ++i) {
    out[i] = x[i] * c[i] - x[i + h] * s[i];
    out[i + h] = x[i + h] * c[i] + x[i] * s[i];
  }
}

struct Args {
  const AttentionShape* s;
  const float* qkv;
  float *present_k, *present_v;
  const int32_t* seqlens_k;
  const int64_t* pos;
  const float *cos, *sin;
  float scale;
  float* out;
  bool first_prompt, avx2;
  // A split decode (attend_part): keys per part, parts per (row, KV head), and their results:
  // part_out [B·KV, parts, G, D] unnormalised, part_ml [B·KV, parts, G, 2] (maximum, exp-sum).
  int64_t part_keys = 0, parts = 0;
  float *part_out = nullptr, *part_ml = nullptr;
};

int64_t past_of(const Args& a, int64_t b) {
  return a.first_prompt ? 0 : int64_t(a.seqlens_k[b]) + 1 - a.s->S;
}

int64_t position(const Args& a, int64_t b, int64_t i) {
  return a.pos ? a.pos[b * a.s->S + i] : past_of(a, b) + i;
}

// Task (b, kv head): its S new keys rotated and values copied into the cache.
void append_kv(void* arg, size_t task) {
  const Args& a = *static_cast<const Args*>(arg);
  const AttentionShape& s = *a.s;
  const int64_t b = int64_t(task) / s.KV, g = int64_t(task) % s.KV, D = s.D, W = (s.H + 2 * s.KV) * D;
  const int64_t past = past_of(a, b);
  for (int64_t i = 0; i < s.S; ++i) {
    const float* row = a.qkv + (b * s.S + i) * W;
    const int64_t at = past + i;
    if (at < 0 || at >= s.present_len) continue;  // a first prompt's padding past the cache
    float* k = a.present_k + ((b * s.KV + g) * s.present_len + at) * D;
    float* v = a.present_v + ((b * s.KV + g) * s.present_len + at) * D;
    rotate(row + (s.H + g) * D, D, a.cos, a.sin, position(a, b, i), k);
    std::memcpy(v, row + (s.H + s.KV + g) * D, size_t(D) * sizeof(float));
  }
}

// Keys new position i of row b sees: its causal range, at most the row's valid length and the cache.
int64_t causal_keys(const Args& a, int64_t b, int64_t i) {
  const int64_t valid = int64_t(a.seqlens_k[b]) + 1;
  return std::min(past_of(a, b) + i + 1, std::min(valid, a.s->present_len));
}

// The G query heads of (row b, KV head g) at new position i, rotated and scaled, into q [G, D].
void query_heads(const Args& a, int64_t b, int64_t g, int64_t i, float* q) {
  const AttentionShape& s = *a.s;
  const int64_t D = s.D, G = s.H / s.KV, W = (s.H + 2 * s.KV) * D;
  for (int64_t h = 0; h < G; ++h) {
    rotate(a.qkv + (b * s.S + i) * W + (g * G + h) * D, D, a.cos, a.sin, position(a, b, i), q + h * D);
    for (int64_t c = 0; c < D; ++c) q[h * D + c] *= a.scale;
  }
}

void heads(const Args& a, const float* q, const float* K, const float* V, int64_t keys, float* o, float* scores,
           float* ml) {
  const int64_t G = a.s->H / a.s->KV, D = a.s->D;
#if VQ2TRT_X86
  if (a.avx2 && D % 8 == 0) return avx2::attend_heads(q, G, D, K, V, keys, o, D, scores, ml);
#endif
  attend_heads(q, G, D, K, V, keys, o, D, scores, ml);
}

// Query positions per attention task: a prefill's rows split finer than (row, KV head), which
// gave SmolLM2's 3 KV heads to 2 threads as 2 + 1.
constexpr int64_t kQueriesPerTask = 16;

int64_t query_chunks(const AttentionShape& s) { return (s.S + kQueriesPerTask - 1) / kQueriesPerTask; }

// Task (b, KV head, chunk of query positions): the query heads that read that KV head, each
// query position with its causal keys.
void attend(void* arg, size_t task) {
  const Args& a = *static_cast<const Args*>(arg);
  const AttentionShape& s = *a.s;
  const int64_t chunks = query_chunks(s), chunk = int64_t(task) % chunks, bg = int64_t(task) / chunks;
  const int64_t b = bg / s.KV, g = bg % s.KV, D = s.D;
  const int64_t G = s.H / s.KV;
  const float* K = a.present_k + (b * s.KV + g) * s.present_len * D;
  const float* V = a.present_v + (b * s.KV + g) * s.present_len * D;
  // Thread-locals by reference once: each use of the name is a TLS lookup in a shared library.
  thread_local std::vector<float> q_tls, scores_tls;
  std::vector<float>& q = q_tls;
  std::vector<float>& scores = scores_tls;
  q.resize(size_t(G * D));
  for (int64_t i = chunk * kQueriesPerTask; i < std::min(s.S, (chunk + 1) * kQueriesPerTask); ++i) {
    float* o = a.out + (b * s.S + i) * s.H * D + g * G * D;
    const int64_t keys = causal_keys(a, b, i);
    if (keys <= 0) {  // a first prompt's padding row
      std::fill(o, o + G * D, 0.f);
      continue;
    }
    query_heads(a, b, g, i, q.data());
    scores.resize(size_t(G * keys));
    heads(a, q.data(), K, V, keys, o, scores.data(), nullptr);
  }
}

// Task (b, KV head, part) of a split decode: the query heads against keys [part · part_keys,
// + part_keys) of that row, unnormalised, with each head's maximum and exp-sum for merge_parts.
void attend_part(void* arg, size_t task) {
  const Args& a = *static_cast<const Args*>(arg);
  const AttentionShape& s = *a.s;
  const int64_t bg = int64_t(task) / a.parts, part = int64_t(task) % a.parts;
  const int64_t b = bg / s.KV, g = bg % s.KV, D = s.D, G = s.H / s.KV;
  const int64_t k0 = part * a.part_keys, keys = std::min(causal_keys(a, b, 0), k0 + a.part_keys) - k0;
  float* o = a.part_out + task * G * D;
  float* ml = a.part_ml + task * G * 2;
  if (keys <= 0) {  // past this row's keys: merge_parts gives it no weight
    for (int64_t h = 0; h < G; ++h) ml[2 * h] = -INFINITY, ml[2 * h + 1] = 0.f;
    return;
  }
  thread_local std::vector<float> q_tls, scores_tls;
  std::vector<float>& q = q_tls;
  std::vector<float>& scores = scores_tls;
  q.resize(size_t(G * D));
  scores.resize(size_t(G * keys));
  query_heads(a, b, g, 0, q.data());
  const int64_t at = (b * s.KV + g) * s.present_len + k0;
  heads(a, q.data(), a.present_k + at * D, a.present_v + at * D, keys, o, scores.data(), ml);
}

// The parts of each (row, query head) into out: weights exp(m_p - max m) rescale each part's sums.
void merge_parts(const Args& a) {
  const AttentionShape& s = *a.s;
  const int64_t D = s.D, G = s.H / s.KV;
  for (int64_t bg = 0; bg < s.B * s.KV; ++bg) {
    const int64_t b = bg / s.KV, g = bg % s.KV;
    for (int64_t h = 0; h < G; ++h) {
      float* o = a.out + b * s.H * D + (g * G + h) * D;
      float m = -INFINITY;
      for (int64_t p = 0; p < a.parts; ++p) m = std::max(m, a.part_ml[((bg * a.parts + p) * G + h) * 2]);
      std::fill(o, o + D, 0.f);
      if (m == -INFINITY) continue;  // no keys (a padding row)
      float sum = 0.f;
      for (int64_t p = 0; p < a.parts; ++p) {
        const float* ml = a.part_ml + ((bg * a.parts + p) * G + h) * 2;
        if (ml[1] == 0.f) continue;
        const float w = std::exp(ml[0] - m);
        sum += w * ml[1];
        const float* po = a.part_out + ((bg * a.parts + p) * G + h) * D;
        for (int64_t c = 0; c < D; ++c) o[c] += w * po[c];
      }
      const float inv = 1.f / sum;
      for (int64_t c = 0; c < D; ++c) o[c] *= inv;
    }
  }
}

// Keys per part of a split decode over `total` cached keys (0: no split); decode splits from
// twice that many keys on. Parts of 128 from 256 keys, of 64 from 128: at 150-200 keys 64-key
// parts took a layer from 15-20 to 11-15 µs on an Intel Xeon (benchmarks/cpu_attention.py, 2
// threads; +3-7 % decode at 128-160 tokens of context); on a Zen 3 splitting there was no
// faster (15th session). VQ2TRT_ATTENTION_SPLIT=<keys> fixes the part size, 0 turns the split
// off (for A/B measurements).
int64_t split_keys(int64_t total) {
  static const int64_t fixed = [] {
    const char* e = std::getenv("VQ2TRT_ATTENTION_SPLIT");
    return e ? int64_t(std::max(std::atol(e), 0L)) : int64_t(-1);
  }();
  if (fixed >= 0) return fixed;
  return total >= 256 ? 128 : 64;
}

}  // namespace

std::string attention_error(const AttentionShape& s, const int32_t* seqlens_k, const int64_t* pos) {
  const bool first_prompt = s.S == s.total;
  for (int64_t b = 0; b < s.B; ++b) {
    const int64_t len = int64_t(seqlens_k[b]) + 1;
    if (len < 1 || len > s.total || (!first_prompt && len < s.S))
      return "seqlens_k[" + std::to_string(b) + "] = " + std::to_string(seqlens_k[b]) +
             ": each row's valid length - 1 must lie in [" + std::to_string(first_prompt ? 0 : s.S - 1) + ", " +
             std::to_string(s.total - 1) + "] (total_sequence_length " + std::to_string(s.total) + ", " +
             std::to_string(s.S) + " new tokens)";
    if (len > s.present_len)
      return "seqlens_k[" + std::to_string(b) + "] = " + std::to_string(seqlens_k[b]) + " needs " +
             std::to_string(len) + " cache rows, the cache has " + std::to_string(s.present_len);
    const int64_t past = first_prompt ? 0 : len - s.S;
    for (int64_t i = 0; i < s.S; ++i) {
      const int64_t p = pos ? pos[b * s.S + i] : past + i;
      if (p < 0 || p >= s.rotary_rows)
        return "position " + std::to_string(p) + " (row " + std::to_string(b) + ", token " + std::to_string(i) +
               ") lies outside the rotary tables' " + std::to_string(s.rotary_rows) + " rows";
    }
  }
  return "";
}

void cached_attention(const AttentionShape& s, const float* qkv, const float* past_k, const float* past_v,
                      float* present_k, float* present_v, const int32_t* seqlens_k, const int64_t* pos,
                      const float* cos, const float* sin, float scale, float* out, const ParallelFor& parallel) {
  if (s.B <= 0 || s.S <= 0) return;
  // Not the shared buffer: the present cache starts as the past one (zeros after it).
  if (present_k != past_k || present_v != past_v) {
    for (int64_t r = 0; r < s.B * s.KV; ++r) {
      const size_t row = size_t(s.past_len * s.D), rest = size_t((s.present_len - s.past_len) * s.D);
      if (s.past_len > 0) {
        std::memcpy(present_k + r * s.present_len * s.D, past_k + r * s.past_len * s.D, row * sizeof(float));
        std::memcpy(present_v + r * s.present_len * s.D, past_v + r * s.past_len * s.D, row * sizeof(float));
      }
      std::fill_n(present_k + r * s.present_len * s.D + row, rest, 0.f);
      std::fill_n(present_v + r * s.present_len * s.D + row, rest, 0.f);
    }
  }
  Args a{&s, qkv, present_k, present_v, seqlens_k, pos, cos, sin, scale, out, s.S == s.total, is_x86(detect_isa())};
  const int64_t part_keys = split_keys(s.total);
  if (s.S == 1 && part_keys > 0 && s.total >= 2 * part_keys && parallel.run) {
    // Decode over a long cache: (row, KV head) tasks give SmolLM2's 3 KV heads to 2 threads as
    // 2 + 1, and below 2^20 multiply-adds it ran on one thread. Parts of the keys, merged after,
    // balance it: 200 -> 127 µs a layer at 1000 cached tokens, 67.5 -> 47.3 at 300
    // (benchmarks/cpu_attention.py, Zen 3, 2 threads). Below 128 keys the cache stays on one thread.
    a.part_keys = part_keys;
    a.parts = (s.total + part_keys - 1) / part_keys;
    const int64_t G = s.H / s.KV, tasks = s.B * s.KV * a.parts;
    thread_local std::vector<float> part_tls;
    std::vector<float>& part = part_tls;
    part.resize(size_t(tasks * G * (s.D + 2)));
    a.part_out = part.data();
    a.part_ml = part.data() + tasks * G * s.D;
    for (size_t t = 0; t < size_t(s.B * s.KV); ++t) append_kv(&a, t);
    parallel(attend_part, size_t(tasks), &a);
    merge_parts(a);
    return;
  }
  // A short decode's ~0.2 M multiply-adds per layer are not worth a dispatch: one pass here.
  const bool big = s.S * s.total * s.H * s.D > (int64_t(1) << 20);
  if (big) {
    parallel(append_kv, size_t(s.B * s.KV), &a);
    parallel(attend, size_t(s.B * s.KV * query_chunks(s)), &a);
  } else {
    for (size_t t = 0; t < size_t(s.B * s.KV); ++t) append_kv(&a, t);
    for (size_t t = 0; t < size_t(s.B * s.KV * query_chunks(s)); ++t) attend(&a, t);
  }
}

}  // namespace vq2trt
