// The layer operations a vq2trt.VQGemmMulti node may fold in (docs/format.md §10): RMS
// normalisation of X (with a residual skip added first) before its weights, and SwiGLU after a
// gate/up pair. Their attributes, inputs and outputs are read and checked here; the arithmetic is
// vq2trt/layer_ops.h's.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "node_checks.h"
#include "vq2trt/cpu_kernels.h"

namespace vq2trt::ort {

struct LayerOps {
  int prenorm = 0;        // 0: none; 1: RMS norm of X; 2: of X + skip, the sum an extra last output
  float epsilon = 1e-5f;
  bool swiglu = false;    // one output silu(Y_0) · Y_1 instead of the weights' outputs
  // Inputs between X and the first weight's: [skip,] gamma.
  size_t extra_inputs() const { return prenorm == 2 ? 2 : size_t(prenorm); }
  size_t extra_outputs() const { return prenorm == 2 ? 1 : 0; }
};

// The attribute values (prenorm: 0 when absent; epsilon; activation: "" when absent) checked
// against the weights: SwiGLU needs two weights of one out_features.
LayerOps make_layer_ops(int64_t prenorm, float epsilon, const std::string& activation,
                        const std::vector<VQGemmDims>& dims);
// skip and gamma (inputs 1.. of the node, X input 0): skip X's dtype and shape, gamma [K].
void check_layer_inputs(const LayerOps& lo, const std::vector<InputInfo>& in, int64_t K);
// How many of the node's outputs are the weights' (1 or one per weight; SwiGLU: 1).
size_t main_outputs(const LayerOps& lo, size_t node_outputs, size_t weights);

}  // namespace vq2trt::ort
