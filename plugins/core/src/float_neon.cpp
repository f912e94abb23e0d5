// The float part kernel built for aarch64 (Advanced SIMD is baseline there: no extra flags).
#define VQ2TRT_ISA_NS neon
#include "kernels_float.inc"
