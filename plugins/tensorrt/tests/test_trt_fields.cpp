// VQGemmPluginCreator::createPlugin on valid and invalid field collections.
#include <memory>
#include <string>

#include "creator.h"
#include "test_common.h"

using namespace vq2trt;
using namespace vq2trt::trt;
using namespace vq2trt::trt::testing;

namespace {

VQGemmPluginCreator creator;
CapturingLogger* logger = nullptr;

// createPlugin in both phases; returns the parse error ("" when accepted) and checks that the
// plugin exists exactly when the fields are valid, and carries their config.
std::string create(FieldList& f, const VQGemmConfig* expected = nullptr) {
  VQGemmConfig parsed;
  const std::string e = parse_fields(f.collection(), &parsed);
  for (auto phase : {nvinfer1::TensorRTPhase::kBUILD, nvinfer1::TensorRTPhase::kRUNTIME}) {
    const int reports = logger->count;
    std::unique_ptr<nvinfer1::IPluginV3> p(creator.createPlugin("node", f.collection(), phase));
    CHECK_MSG((p != nullptr) == e.empty(), e);
    if (p) {
      CHECK(expected == nullptr || static_cast<VQGemmPlugin*>(p.get())->config() == *expected);
      CHECK(logger->count == reports);
    } else {
      CHECK(logger->count == reports + 1);
      CHECK_MSG(logger->last.rfind("VQGemm plugin: createPlugin(\"node\"", 0) == 0, logger->last);
      CHECK_MSG(logger->last.find(e) != std::string::npos, logger->last);
    }
  }
  return e;
}

void expect_reject(FieldList f, const std::string& fragment, const std::string& what) {
  const std::string e = create(f);
  CHECK_MSG(!e.empty(), what + ": accepted");
  CHECK_MSG(e.find(fragment) != std::string::npos, what + ": message '" + e + "' lacks '" + fragment + "'");
}

void test_identity() {
  CHECK(std::string(creator.getPluginName()) == "VQGemm");
  CHECK(std::string(creator.getPluginVersion()) == "1");
  CHECK(std::string(creator.getPluginNamespace()).empty());
  const nvinfer1::PluginFieldCollection* names = creator.getFieldNames();
  CHECK(names != nullptr && names->nbFields == int32_t(kNumIntFields) + 1);
  for (size_t i = 0; names && i < kNumIntFields; ++i) {
    CHECK(std::string(names->fields[i].name) == kIntAttributes[i]);
    CHECK(names->fields[i].type == nvinfer1::PluginFieldType::kINT32);
  }
  CHECK(std::string(names->fields[kNumIntFields].name) == "plugin_version");
  CHECK(names->fields[kNumIntFields].type == nvinfer1::PluginFieldType::kCHAR);
}

void test_accepts() {
  for (const NamedConfig& nc : test_configs()) {
    for (bool as64 : {false, true}) {
      FieldList f = fields_of(nc.config, as64);
      CHECK_MSG(create(f, &nc.config).empty(), nc.name);
    }
    FieldList nul = fields_of(nc.config, false, true, true);  // "1\0", length 2
    CHECK_MSG(create(nul, &nc.config).empty(), nc.name);
    FieldList no_version = fields_of(nc.config, false, false);  // optional, as for the ORT op
    CHECK_MSG(create(no_version, &nc.config).empty(), nc.name);
    FieldList mixed = fields_of(nc.config);  // kINT32 and kINT64 in one collection, any order
    mixed.fields[3] = int_field(kIntAttributes[3], nc.config.dims.k, true);
    std::swap(mixed.fields[0], mixed.fields[12]);
    CHECK_MSG(create(mixed, &nc.config).empty(), nc.name);
  }
}

void test_rejects() {
  const VQGemmConfig base = test_configs()[0].config;
  for (size_t i = 0; i < kNumIntFields; ++i) {
    const std::string name = kIntAttributes[i];
    FieldList f = fields_of(base);
    f.fields.erase(f.fields.begin() + long(i));
    expect_reject(f, "missing INT field '" + name + "'", "missing " + name);

    f = fields_of(base);
    f.fields[i].type = nvinfer1::PluginFieldType::kFLOAT32;
    expect_reject(f, "'" + name + "' must be kINT32", "mistyped " + name);
    f.fields[i].type = nvinfer1::PluginFieldType::kCHAR;
    expect_reject(f, "'" + name + "' must be kINT32", "kCHAR " + name);

    f = fields_of(base);
    f.fields[i].bytes.resize(8);
    f.fields[i].length = 2;
    expect_reject(f, "must hold one element, got length 2", "length 2 " + name);
    f.fields[i].length = 0;
    expect_reject(f, "got length 0", "length 0 " + name);
    f.fields[i].length = -1;
    expect_reject(f, "got length -1", "length -1 " + name);

    f = fields_of(base);
    f.fields[i].null_data = true;
    expect_reject(f, "has length 1 but no data", "null " + name);

    f = fields_of(base);
    f.fields[i] = int_field(name, kIntFieldLimits[i].min - 1);
    expect_reject(f, "'" + name + "' must lie in [", "below min " + name);
    if (kIntFieldLimits[i].max != kNoMax) {
      f.fields[i] = int_field(name, kIntFieldLimits[i].max + 1, true);
      expect_reject(f, "'" + name + "' must lie in [", "above max " + name);
    }
    f.fields[i] = int_field(name, INT32_MIN);
    expect_reject(f, "must lie in", "INT32_MIN " + name);
  }
  // Inconsistent combinations that only validate_dims sees.
  auto with = [&](std::initializer_list<std::pair<const char*, int64_t>> changes, bool as64 = false) {
    FieldList f = fields_of(base);
    for (auto [name, v] : changes) *f.find(name) = int_field(name, v, as64);
    return f;
  };
  expect_reject(with({{"num_outlier_centroids", 16}}), "inconsistent fields: outlier_vector_len", "outlier k without cols");
  expect_reject(with({{"outlier_vector_len", 2}}), "inconsistent fields", "outlier v without cols");
  expect_reject(with({{"num_outlier_cols", 8}}), "inconsistent fields: with outlier columns", "cols without outlier v/k");
  expect_reject(with({{"num_groups", 65}}), "inconsistent fields: num_groups", "num_groups > columns");
  expect_reject(with({{"num_outlier_cols", 64}, {"outlier_vector_len", 2}, {"num_outlier_centroids", 4}}),
                "num_outlier_cols must lie in [0, in_features)", "all columns outliers");
  expect_reject(with({{"num_centroids", 65537}}, true), "'num_centroids' must lie in [2, 65536]", "k > 65536");
  expect_reject(with({{"num_res_centroids", 1}}), "num_res_centroids must be 0 or lie in [2, 65536]", "k_r = 1");
  expect_reject(with({{"vector_len", 4097}}), "vector_len must lie in [1, 4096]", "v > 4096");
  expect_reject(with({{"out_features", int64_t(1) << 31}}, true), "out_features and in_features", "N = 2^31");
  expect_reject(with({{"in_features", int64_t(1) << 40}}, true), "out_features and in_features", "K = 2^40");
  // plugin_version.
  FieldList f = fields_of(base);
  f.fields[12] = version_field("2", false);
  expect_reject(f, "'plugin_version' must be \"1\", got \"2\"", "version 2");
  f.fields[12] = version_field("1", false);
  f.fields[12].bytes = {'1', '1'};
  f.fields[12].length = 2;
  expect_reject(f, "got \"11\"", "version 11");
  f.fields[12] = version_field("", false);
  expect_reject(f, "got \"\"", "empty version");
  f.fields[12] = version_field("1", false);
  f.fields[12].type = nvinfer1::PluginFieldType::kINT32;
  f.fields[12].bytes.resize(4);
  expect_reject(f, "'plugin_version' must be kCHAR", "int version");
  f.fields[12] = version_field("1", false);
  f.fields[12].null_data = true;
  expect_reject(f, "'plugin_version' has length 1 but no data", "null version");
  f.fields[12] = version_field("\x01\xff", false);
  expect_reject(f, "got \"\\x01\\xff\"", "garbage version");
  // Unknown, duplicate and unnamed fields; bad collections.
  f = fields_of(base);
  f.fields.push_back(int_field("num_codebooks", 1));
  expect_reject(f, "unknown field 'num_codebooks'", "unknown");
  f = fields_of(base);
  f.fields.push_back(int_field("num_groups", 1));
  expect_reject(f, "duplicate field 'num_groups'", "duplicate");
  f = fields_of(base);
  f.fields.push_back(version_field("1", true));
  expect_reject(f, "duplicate field 'plugin_version'", "duplicate version");
  f = fields_of(base);
  f.fields[2].null_name = true;
  expect_reject(f, "field 2 has no name", "null name");
  f = fields_of(base);
  f.fields[2].name = "vector_len ";
  expect_reject(f, "unknown field 'vector_len '", "trailing space");
  FieldList empty;
  expect_reject(empty, "missing INT field 'out_features'", "no fields");
  CHECK(!parse_fields(nullptr, nullptr).empty());
  VQGemmConfig c;
  nvinfer1::PluginFieldCollection bad{3, nullptr};
  CHECK(parse_fields(&bad, &c).find("has no field array") != std::string::npos);
  bad.nbFields = -1;
  CHECK(parse_fields(&bad, &c).find("negative field count") != std::string::npos);
  CHECK(creator.createPlugin("node", nullptr, nvinfer1::TensorRTPhase::kBUILD) == nullptr);
}

void test_factory() {
  for (const NamedConfig& nc : test_configs()) {
    std::string e;
    auto p = create_plugin(nc.config, nvinfer1::TensorRTPhase::kRUNTIME, &e);
    CHECK_MSG(p && p->config() == nc.config && e.empty(), nc.name);
  }
  VQGemmConfig bad = test_configs()[0].config;
  bad.dims.N = int64_t(1) << 33;  // would wrap to 0 in an int32 field: must be caught first
  std::string e;
  CHECK(create_plugin(bad, nvinfer1::TensorRTPhase::kBUILD, &e) == nullptr && !e.empty());
  bad = test_configs()[0].config;
  bad.accuracy_level = 5;
  CHECK(create_plugin(bad, nvinfer1::TensorRTPhase::kBUILD, &e) == nullptr);
  CHECK(e.find("accuracy_level") != std::string::npos);
}

}  // namespace

int main() {
  CapturingLogger capture;
  logger = &capture;
  test_identity();
  test_accepts();
  test_rejects();
  test_factory();
  return finish("test_trt_fields");
}
