// Generic index unpacking for widths without a dedicated path. `static` on purpose: each ISA
// file gets its own copy (an inline function shared across files compiled with different
// -m flags could be resolved to the AVX-512 copy for every caller).
#pragma once

#include <cstdint>
#include <cstring>

namespace vq2trt {

// Index c of the row lives at bit skip + c·bits (docs/format.md §4). Each index is read with one
// unaligned 64-bit load (independent per c, unlike a running bit buffer); near the end of the
// row, where 8 bytes would run past it, the bits are gathered one word at a time.
template <typename T>
static inline void unpack_generic(const uint32_t* row, int64_t words, int64_t skip, int bits, int64_t count,
                                  T* out) {
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(row);
  const int64_t row_bytes = words * 4;
  const uint64_t mask = (uint64_t(1) << bits) - 1;
  int64_t c = 0;
  for (; c < count; ++c) {
    const int64_t t = skip + c * bits;
    if ((t >> 3) + 8 > row_bytes) break;
    uint64_t v;
    std::memcpy(&v, bytes + (t >> 3), 8);
    out[c] = T((v >> (t & 7)) & mask);
  }
  for (; c < count; ++c) {
    const int64_t t = skip + c * bits, i = t >> 5;
    const int off = int(t & 31);
    uint64_t v = row[i];
    if (off + bits > 32) v |= uint64_t(row[i + 1]) << 32;
    out[c] = T((v >> off) & mask);
  }
}

}  // namespace vq2trt
