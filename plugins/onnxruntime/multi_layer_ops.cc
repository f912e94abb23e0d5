#include "multi_layer_ops.h"

namespace vq2trt::ort {

LayerOps make_layer_ops(int64_t prenorm, float epsilon, const std::string& activation,
                        const std::vector<VQGemmDims>& dims) {
  LayerOps lo;
  if (prenorm < 0 || prenorm > 2)
    fail("VQGemmMulti: attribute 'prenorm' must be 0 (none), 1 (RMS norm of X) or 2 (of X + skip), got " +
         std::to_string(prenorm));
  if (!(epsilon > 0.f)) fail("VQGemmMulti: attribute 'epsilon' must be > 0, got " + std::to_string(epsilon));
  if (!activation.empty() && activation != "swiglu")
    fail("VQGemmMulti: attribute 'activation' must be \"\" or \"swiglu\", got \"" + activation + "\"");
  lo.prenorm = int(prenorm);
  lo.epsilon = epsilon;
  lo.swiglu = activation == "swiglu";
  if (lo.swiglu && (dims.size() != 2 || dims[0].N != dims[1].N))
    fail("VQGemmMulti: activation \"swiglu\" needs two weights (gate, then up) of one out_features, the node has " +
         std::to_string(dims.size()) + (dims.size() == 2 ? " with out_features " + std::to_string(dims[0].N) +
                                                               " and " + std::to_string(dims[1].N)
                                                         : std::string()));
  return lo;
}

void check_layer_inputs(const LayerOps& lo, const std::vector<InputInfo>& in, int64_t K) {
  if (in.size() < 1 + lo.extra_inputs())
    fail("VQGemmMulti: prenorm " + std::to_string(lo.prenorm) + " needs X, " + (lo.prenorm == 2 ? "skip, " : "") +
         "gamma before the weights' inputs; the node has " + std::to_string(in.size()) + " inputs");
  const InputInfo& x = in[0];
  if (lo.prenorm == 2) {
    const InputInfo& s = in[1];
    bool same = s.type == x.type && (!s.known || !x.known || s.shape.size() == x.shape.size());
    for (size_t i = 0; same && s.known && x.known && i < s.shape.size(); ++i)
      same = s.shape[i] < 0 || x.shape[i] < 0 || s.shape[i] == x.shape[i];
    if (!same)
      fail("VQGemmMulti: input 1 (skip) must have X's dtype and shape " + shape_str(x.shape) +
           ", got ONNX element type " + std::to_string(int(s.type)) + " " + shape_str(s.shape));
  }
  if (lo.prenorm > 0) {
    const size_t gi = lo.extra_inputs();
    const InputInfo& g = in[gi];
    if (g.type != x.type || (g.known && (g.shape.size() != 1 || (g.shape[0] >= 0 && g.shape[0] != K))))
      fail("VQGemmMulti: input " + std::to_string(gi) + " (gamma) must be X's dtype, shape [" + std::to_string(K) +
           "] (in_features), got ONNX element type " + std::to_string(int(g.type)) + " " + shape_str(g.shape));
  }
}

size_t main_outputs(const LayerOps& lo, size_t node_outputs, size_t weights) {
  const size_t extra = lo.extra_outputs();
  const size_t main = node_outputs >= extra ? node_outputs - extra : 0;
  const std::string sum = extra ? " and the sum X + skip last" : "";
  if (lo.swiglu && main != 1)
    fail("VQGemmMulti: the node has " + std::to_string(node_outputs) + " outputs; activation \"swiglu\" gives one" +
         sum);
  if (main != 1 && main != weights)
    fail("VQGemmMulti: the node has " + std::to_string(node_outputs) + " outputs; expected 1 (the " +
         std::to_string(weights) + " weights' outputs concatenated) or " + std::to_string(weights) +
         " (one per weight)" + sum);
  return main;
}

}  // namespace vq2trt::ort
