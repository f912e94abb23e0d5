// The plugin's build-time and runtime logic without TensorRT: getOutputShapes (with a test
// IExprBuilder), supportsFormatCombination, configurePlugin / onShapeChange, workspace, the
// serialize -> createPlugin(kRUNTIME) round trip, capabilities, clone, and enqueue's argument checks.
#include <memory>
#include <string>
#include <vector>

#include "creator.h"
#include "expr_builder.h"
#include "test_common.h"
#include "vq2trt/cuda_kernels.h"

using namespace vq2trt;
using namespace vq2trt::trt;
using namespace vq2trt::trt::testing;
using nvinfer1::DataType;
using nvinfer1::TensorFormat;

namespace {

std::unique_ptr<VQGemmPlugin> make(const VQGemmConfig& c) {
  std::string e;
  auto p = create_plugin(c, nvinfer1::TensorRTPhase::kBUILD, &e);
  CHECK_MSG(p != nullptr, e);
  return p;
}

// Input shapes as expressions: X from `x` (negative = a symbol), weights as the spec says.
std::vector<nvinfer1::DimsExprs> input_exprs(TestExprBuilder& b, const VQGemmConfig& c, std::vector<int64_t> x) {
  std::vector<nvinfer1::DimsExprs> in(1);
  in[0].nbDims = int32_t(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    in[0].d[i] = x[i] < 0 ? static_cast<const nvinfer1::IDimensionExpr*>(b.symbol("s" + std::to_string(i)))
                          : b.constant_expr(x[i]);
  for (const TensorSpec& s : weight_input_specs(c.dims)) {
    nvinfer1::DimsExprs e{};
    e.nbDims = int32_t(s.shape.size());
    for (size_t j = 0; j < s.shape.size(); ++j) e.d[j] = b.constant_expr(s.shape[j]);
    in.push_back(e);
  }
  return in;
}

void test_output_shapes(const NamedConfig& nc) {
  auto p = make(nc.config);
  if (!p) return;
  const int64_t K = nc.config.dims.K, N = nc.config.dims.N;
  CHECK(p->getNbOutputs() == 1);
  for (std::vector<int64_t> x : {std::vector<int64_t>{5, K}, {-1, K}, {2, 7, K}, {-1, -1, K}, {-1, -1}, {3, -1}}) {
    TestExprBuilder b;
    auto in = input_exprs(b, nc.config, x);
    nvinfer1::DimsExprs out{};
    CHECK_MSG(p->getOutputShapes(in.data(), int32_t(in.size()), nullptr, 0, &out, 1, b) == 0, nc.name);
    CHECK(out.nbDims == int32_t(x.size()));
    for (size_t i = 0; i + 1 < x.size(); ++i) CHECK(out.d[i] == in[0].d[i]);  // leading dims pass through
    CHECK(out.d[x.size() - 1]->isConstant() && out.d[x.size() - 1]->getConstantValue() == N);
  }
  TestExprBuilder b;
  nvinfer1::DimsExprs out{};
  auto wrong_k = input_exprs(b, nc.config, {4, K + 1});
  CHECK(p->getOutputShapes(wrong_k.data(), int32_t(wrong_k.size()), nullptr, 0, &out, 1, b) != 0);
  for (std::vector<int64_t> x : {std::vector<int64_t>{K}, {1, 2, 3, K}}) {
    auto bad_rank = input_exprs(b, nc.config, x);
    CHECK(p->getOutputShapes(bad_rank.data(), int32_t(bad_rank.size()), nullptr, 0, &out, 1, b) != 0);
  }
  auto in = input_exprs(b, nc.config, {4, K});
  CHECK(p->getOutputShapes(in.data(), int32_t(in.size()) - 1, nullptr, 0, &out, 1, b) != 0);  // input missing
  in.push_back(in.back());
  CHECK(p->getOutputShapes(in.data(), int32_t(in.size()), nullptr, 0, &out, 1, b) != 0);  // one too many
  in.pop_back();
  CHECK(p->getOutputShapes(in.data(), int32_t(in.size()), nullptr, 0, &out, 2, b) != 0);  // two outputs
  in[1].d[0] = b.constant_expr(in[1].d[0]->getConstantValue() + 1);                       // wrong indices rows
  CHECK(p->getOutputShapes(in.data(), int32_t(in.size()), nullptr, 0, &out, 1, b) != 0);
  in[1].d[0] = b.symbol("rows");  // unknown weight dims are accepted here (configurePlugin checks)
  CHECK(p->getOutputShapes(in.data(), int32_t(in.size()), nullptr, 0, &out, 1, b) == 0);
  // Output types.
  std::vector<DataType> types(size_t(p->num_inputs()), DataType::kINT32);
  for (DataType x : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16}) {
    types[0] = x;
    DataType y = DataType::kINT8;
    CHECK(p->getOutputDataTypes(&y, 1, types.data(), int32_t(types.size())) == 0 && y == x);
  }
  types[0] = DataType::kINT8;
  DataType y;
  CHECK(p->getOutputDataTypes(&y, 1, types.data(), int32_t(types.size())) != 0);
  CHECK(p->getOutputDataTypes(&y, 1, types.data(), 1) != 0);
}

nvinfer1::DynamicPluginTensorDesc desc(DataType t, TensorFormat f, std::vector<int64_t> dims) {
  nvinfer1::DynamicPluginTensorDesc d{};
  d.desc.type = t;
  d.desc.format = f;
  d.desc.dims.nbDims = int32_t(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) d.desc.dims.d[i] = d.min.d[i] = d.opt.d[i] = d.max.d[i] = dims[i];
  d.min.nbDims = d.opt.nbDims = d.max.nbDims = int32_t(dims.size());
  return d;
}

// Descriptions of a well-formed layer: X [rows, K] of type x, weights per spec, Y [rows, N].
std::vector<nvinfer1::DynamicPluginTensorDesc> layer(const VQGemmConfig& c, DataType x, std::vector<int64_t> xdims) {
  std::vector<nvinfer1::DynamicPluginTensorDesc> io{desc(x, TensorFormat::kLINEAR, xdims)};
  for (const TensorSpec& s : weight_input_specs(c.dims)) io.push_back(desc(trt_type(s.dtype), TensorFormat::kLINEAR, s.shape));
  xdims.back() = c.dims.N;
  io.push_back(desc(x, TensorFormat::kLINEAR, xdims));
  return io;
}

void test_formats(const NamedConfig& nc) {
  auto p = make(nc.config);
  if (!p) return;
  const int32_t nin = p->num_inputs();
  const auto specs = weight_input_specs(nc.config.dims);
  const int nt = nvinfer1::EnumMax<DataType>(), nf = nvinfer1::EnumMax<TensorFormat>();
  for (DataType x : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16}) {
    auto io = layer(nc.config, x, {4, nc.config.dims.K});
    for (int32_t pos = 0; pos <= nin; ++pos) {
      for (int t = 0; t < nt; ++t) {
        for (int f = 0; f < nf; ++f) {
          auto trial = io;
          trial[size_t(pos)].desc.type = DataType(t);
          trial[size_t(pos)].desc.format = TensorFormat(f);
          bool expected = TensorFormat(f) == TensorFormat::kLINEAR;
          if (pos == 0) expected = expected && (t == int(DataType::kFLOAT) || t == int(DataType::kHALF) || t == int(DataType::kBF16));
          else if (pos == nin) expected = expected && DataType(t) == x;
          else expected = expected && DataType(t) == trt_type(specs[size_t(pos - 1)].dtype);
          CHECK_MSG(p->supportsFormatCombination(pos, trial.data(), nin, 1) == expected,
                    std::string(nc.name) + " pos " + std::to_string(pos) + " type " + std::to_string(t) +
                        " format " + std::to_string(f));
        }
      }
    }
    CHECK(!p->supportsFormatCombination(-1, io.data(), nin, 1));
    CHECK(!p->supportsFormatCombination(nin + 1, io.data(), nin, 1));
    CHECK(!p->supportsFormatCombination(0, io.data(), nin - 1, 1));
    CHECK(!p->supportsFormatCombination(0, io.data(), nin, 2));
  }
}

void test_configure(const NamedConfig& nc) {
  auto p = make(nc.config);
  if (!p) return;
  const int32_t nin = p->num_inputs();
  const int64_t K = nc.config.dims.K;
  auto io = layer(nc.config, DataType::kHALF, {2, 3, K});
  CHECK(p->configurePlugin(io.data(), nin, io.data() + nin, 1) == 0);
  io[0].desc.dims.d[0] = -1;  // dynamic batch
  CHECK(p->configurePlugin(io.data(), nin, io.data() + nin, 1) == 0);
  std::vector<nvinfer1::PluginTensorDesc> rt;
  for (auto& d : layer(nc.config, DataType::kBF16, {7, K})) rt.push_back(d.desc);
  CHECK(p->onShapeChange(rt.data(), nin, rt.data() + nin, 1) == 0);
  for (int32_t pos = 1; pos < nin; ++pos) {  // each weight with a wrong dim, type, rank
    auto bad = io;
    bad[size_t(pos)].desc.dims.d[0] += 1;
    CHECK(p->configurePlugin(bad.data(), nin, bad.data() + nin, 1) != 0);
    bad = io;
    bad[size_t(pos)].desc.type = DataType::kFLOAT == bad[size_t(pos)].desc.type ? DataType::kHALF : DataType::kFLOAT;
    CHECK(p->configurePlugin(bad.data(), nin, bad.data() + nin, 1) != 0);
    auto rbad = rt;
    rbad[size_t(pos)].dims.nbDims += 1;
    CHECK(p->onShapeChange(rbad.data(), nin, rbad.data() + nin, 1) != 0);
  }
  auto bad = io;
  bad[0].desc.dims.d[2] = K + 1;
  CHECK(p->configurePlugin(bad.data(), nin, bad.data() + nin, 1) != 0);
  bad = io;
  bad[size_t(nin)].desc.type = DataType::kFLOAT;  // Y's type differs from X's
  CHECK(p->configurePlugin(bad.data(), nin, bad.data() + nin, 1) != 0);
  bad = io;
  bad[size_t(nin)].desc.dims.d[2] = nc.config.dims.N + 1;
  CHECK(p->configurePlugin(bad.data(), nin, bad.data() + nin, 1) != 0);
  CHECK(p->configurePlugin(io.data(), nin - 1, io.data() + nin, 1) != 0);
  CHECK(p->configurePlugin(nullptr, nin, io.data() + nin, 1) != 0);
}

void test_round_trip(const NamedConfig& nc) {
  auto p = make(nc.config);
  if (!p) return;
  VQGemmPluginCreator creator;
  std::unique_ptr<nvinfer1::IPluginV3> clone(p->clone());
  std::unique_ptr<nvinfer1::IPluginV3> attached(p->attachToContext(nullptr));
  p.reset();  // the copies own their serialized fields
  for (nvinfer1::IPluginV3* copy : {clone.get(), attached.get()}) {
    auto* rt = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        copy->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    const nvinfer1::PluginFieldCollection* fc = rt->getFieldsToSerialize();
    const nvinfer1::PluginFieldCollection* names = creator.getFieldNames();
    CHECK(fc->nbFields == names->nbFields);
    for (int32_t i = 0; i < fc->nbFields && i < names->nbFields; ++i) {
      CHECK(std::string(fc->fields[i].name) == names->fields[i].name);
      CHECK(fc->fields[i].type == names->fields[i].type);
    }
    std::unique_ptr<nvinfer1::IPluginV3> back(creator.createPlugin("n", fc, nvinfer1::TensorRTPhase::kRUNTIME));
    CHECK(back != nullptr);
    if (!back) continue;
    auto* q = static_cast<VQGemmPlugin*>(back.get());
    CHECK(q->config() == nc.config);
    auto* core = static_cast<nvinfer1::IPluginV3OneCore*>(back->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
    CHECK(std::string(core->getPluginName()) == "VQGemm" && std::string(core->getPluginVersion()) == "1");
    CHECK(std::string(core->getPluginNamespace()).empty());
    // Same shapes and workspace as the original config gives.
    TestExprBuilder b;
    auto in = input_exprs(b, nc.config, {-1, 3, nc.config.dims.K});
    nvinfer1::DimsExprs out{};
    CHECK(q->getOutputShapes(in.data(), int32_t(in.size()), nullptr, 0, &out, 1, b) == 0);
    CHECK(out.nbDims == 3 && out.d[2]->getConstantValue() == nc.config.dims.N);
    const int32_t nin = q->num_inputs();
    for (DataType x : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16}) {
      auto io = layer(nc.config, x, {16, 4, nc.config.dims.K});
      DType vx;
      CHECK(vq_type(x, &vx));
      CHECK(q->getWorkspaceSize(io.data(), nin, io.data() + nin, 1) == cuda::workspace_size(nc.config.dims, 64, vx));
    }
  }
}

void test_runtime_args(const NamedConfig& nc) {
  auto p = make(nc.config);
  if (!p) return;
  CHECK(p->getCapabilityInterface(nvinfer1::PluginCapabilityType(7)) == nullptr);
  CHECK(p->getMetadataString() != nullptr && std::string(p->getMetadataString()).find("N=") == 0);
  CapturingLogger capture;
  auto io = layer(nc.config, DataType::kHALF, {2, nc.config.dims.K});
  std::vector<nvinfer1::PluginTensorDesc> rt;
  for (auto& d : io) rt.push_back(d.desc);
  std::vector<const void*> inputs(rt.size() - 1, nullptr);
  void* outputs[1] = {nullptr};
  CHECK(p->enqueue(nullptr, nullptr, inputs.data(), outputs, nullptr, nullptr) == -1);
  CHECK(capture.last.find("enqueue: null arguments") != std::string::npos);
  rt[0].type = DataType::kINT8;
  CHECK(p->enqueue(rt.data(), rt.data() + rt.size() - 1, inputs.data(), outputs, nullptr, nullptr) == -1);
  rt[0].type = DataType::kHALF;
  rt[0].dims.nbDims = 1;
  CHECK(p->enqueue(rt.data(), rt.data() + rt.size() - 1, inputs.data(), outputs, nullptr, nullptr) == -1);
  CHECK(capture.last.find("rank 2 or 3") != std::string::npos);
}

}  // namespace

int main() {
  for (const NamedConfig& nc : test_configs()) {
    test_output_shapes(nc);
    test_formats(nc);
    test_configure(nc);
    test_round_trip(nc);
    test_runtime_args(nc);
  }
  return finish("test_trt_build");
}
