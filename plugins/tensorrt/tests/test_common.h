// Shared helpers of the plugin tests: a tiny check macro, the configs the tests walk, an editable
// field list (the fuzz test corrupts it), and a logger that captures the plugin's reports.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fields.h"
#include "logging.h"
#include "vq2trt/op_schema.h"

namespace vq2trt::trt::testing {

inline int g_failures = 0;
#define CHECK(cond)                                                                        \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      ++::vq2trt::trt::testing::g_failures;                                                \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                         \
    }                                                                                      \
  } while (0)
#define CHECK_MSG(cond, msg)                                                               \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      ++::vq2trt::trt::testing::g_failures;                                                \
      std::printf("FAIL %s:%d: %s (%s)\n", __FILE__, __LINE__, #cond, std::string(msg).c_str()); \
    }                                                                                      \
  } while (0)

inline int finish(const char* name) {
  std::printf("%s: %s (%d failures)\n", name, g_failures ? "FAILED" : "ok", g_failures);
  return g_failures ? 1 : 0;
}

struct NamedConfig {
  const char* name;
  VQGemmConfig config;
};

// Small but complete: every optional group alone, and all of them together.
inline std::vector<NamedConfig> test_configs() {
  auto make = [](int64_t N, int64_t K, int64_t v, int64_t k, int64_t G, int64_t k_r, int64_t n_out, int64_t v_o,
                 int64_t k_o, bool normalized, bool has_bias, int level) {
    VQGemmConfig c;
    c.dims = VQGemmDims{N, K, n_out, v, k, G, k_r, v_o, k_o, normalized, has_bias};
    c.accuracy_level = level;
    return c;
  };
  return {
      {"v4-k256", make(32, 64, 4, 256, 1, 0, 0, 0, 0, false, false, 0)},
      {"residual", make(32, 64, 4, 256, 1, 16, 0, 0, 0, false, false, 0)},
      {"outliers", make(30, 72, 6, 4096, 1, 0, 8, 2, 16, false, false, 4)},
      {"groups", make(48, 96, 8, 65536, 4, 0, 0, 0, 0, false, false, 0)},
      {"normalized", make(32, 64, 2, 16, 1, 0, 0, 0, 0, true, false, 0)},
      {"bias", make(40, 64, 4, 256, 1, 0, 0, 0, 0, false, true, 0)},
      {"everything", make(36, 80, 6, 512, 3, 64, 16, 3, 32, true, true, 4)},
  };
}

// One field with its bytes; built into exact-size heap blocks, so a read past `length`
// elements is an ASan error in the sanitizer build.
struct RawField {
  std::string name;
  bool null_name = false;
  nvinfer1::PluginFieldType type = nvinfer1::PluginFieldType::kINT32;
  std::vector<unsigned char> bytes;
  int32_t length = 1;
  bool null_data = false;
};

class FieldList {
 public:
  std::vector<RawField> fields;

  FieldList() = default;
  FieldList(const FieldList& o) : fields(o.fields) {}  // the built arrays are rebuilt on demand
  FieldList& operator=(const FieldList& o) {
    fields = o.fields;
    return *this;
  }

  const nvinfer1::PluginFieldCollection* collection() {
    blocks_.clear();
    built_.clear();
    for (const RawField& f : fields) {
      const void* data = nullptr;
      if (!f.null_data) {
        blocks_.emplace_back(new unsigned char[f.bytes.size() ? f.bytes.size() : 1]);
        if (!f.bytes.empty()) std::memcpy(blocks_.back().get(), f.bytes.data(), f.bytes.size());
        data = blocks_.back().get();
      }
      built_.emplace_back(f.null_name ? nullptr : f.name.c_str(), data, f.type, f.length);
    }
    fc_.nbFields = int32_t(built_.size());
    fc_.fields = built_.empty() ? nullptr : built_.data();
    return &fc_;
  }

  RawField* find(const std::string& name) {
    for (RawField& f : fields)
      if (f.name == name) return &f;
    return nullptr;
  }

 private:
  std::vector<std::unique_ptr<unsigned char[]>> blocks_;
  std::vector<nvinfer1::PluginField> built_;
  nvinfer1::PluginFieldCollection fc_{};
};

inline RawField int_field(const std::string& name, int64_t v, bool as_int64 = false) {
  RawField f;
  f.name = name;
  f.type = as_int64 ? nvinfer1::PluginFieldType::kINT64 : nvinfer1::PluginFieldType::kINT32;
  if (as_int64) {
    f.bytes.resize(8);
    std::memcpy(f.bytes.data(), &v, 8);
  } else {
    const int32_t w = int32_t(v);
    f.bytes.resize(4);
    std::memcpy(f.bytes.data(), &w, 4);
  }
  return f;
}

inline RawField version_field(const std::string& value, bool with_nul) {
  RawField f;
  f.name = "plugin_version";
  f.type = nvinfer1::PluginFieldType::kCHAR;
  f.bytes.assign(value.begin(), value.end());
  if (with_nul) f.bytes.push_back(0);
  f.length = int32_t(f.bytes.size());
  return f;
}

inline FieldList fields_of(const VQGemmConfig& c, bool as_int64 = false, bool with_version = true,
                           bool version_nul = false) {
  const VQGemmDims& d = c.dims;
  const int64_t v[] = {d.N,   d.K,     d.v,   d.k,   d.G,
                       d.k_r, d.n_out, d.v_o, d.k_o, d.normalized ? 1 : 0,
                       d.has_bias ? 1 : 0, c.accuracy_level};
  FieldList out;
  for (size_t i = 0; i < kNumIntFields; ++i) out.fields.push_back(int_field(kIntAttributes[i], v[i], as_int64));
  if (with_version) out.fields.push_back(version_field(kPluginVersion, version_nul));
  return out;
}

// Captures what the plugin reports (installed through set_logger_finder).
class CapturingLogger final : public nvinfer1::ILogger, public nvinfer1::ILoggerFinder {
 public:
  CapturingLogger() { set_logger_finder(this); }
  ~CapturingLogger() override { set_logger_finder(nullptr); }
  void log(Severity, const char* msg) noexcept override { last = msg; ++count; }
  nvinfer1::ILogger* findLogger() override { return this; }
  std::string last;
  int count = 0;
};

}  // namespace vq2trt::trt::testing
