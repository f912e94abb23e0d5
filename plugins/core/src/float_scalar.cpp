// The float part kernel built for scalar; the flags come from plugins/core/CMakeLists.txt.
#define VQ2TRT_ISA_NS scalar
#include "kernels_float.inc"
