// The float part kernel built for avx512; the flags come from plugins/core/CMakeLists.txt.
#define VQ2TRT_ISA_NS avx512
#include "kernels_float.inc"
