// The float part kernel built for avx2; the flags come from plugins/core/CMakeLists.txt.
#define VQ2TRT_ISA_NS avx2
#include "kernels_float.inc"
