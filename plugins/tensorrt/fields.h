// The VQGemm plugin's fields: a PluginFieldCollection <-> a plain, validated config.
// Fields arrive from the ONNX parser (node attributes), from API users, and back from serialized
// engines (createPlugin with TensorRTPhase::kRUNTIME); all of them are untrusted and go through
// parse_fields. Only TensorRT's PluginField types are used here (no libnvinfer symbol).
#pragma once

#include <NvInferRuntime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "vq2trt/format.h"

namespace vq2trt::trt {

// What one VQGemm node says about its weight: the dims plus the accuracy level (which the CUDA
// kernels accept and ignore; kept so that a serialized engine round-trips the node exactly).
struct VQGemmConfig {
  VQGemmDims dims;
  int accuracy_level = 0;
};

bool operator==(const VQGemmConfig& a, const VQGemmConfig& b);
inline bool operator!=(const VQGemmConfig& a, const VQGemmConfig& b) { return !(a == b); }

// Limits of one INT field, as export/vqgemm_op.json states them ("min"/"max"; kNoMax = none).
struct IntFieldLimits {
  const char* name;
  int64_t min, max;
};
constexpr int64_t kNoMax = INT64_MAX;
// One entry per name of vq2trt::kIntAttributes, in that order (fields.cpp checks the names at
// compile time; tests/test_trt_schema.cpp checks the limits against the JSON).
inline constexpr IntFieldLimits kIntFieldLimits[] = {
    {"out_features", 1, kNoMax},      {"in_features", 1, kNoMax},
    {"vector_len", 1, kNoMax},        {"num_centroids", 2, 65536},
    {"num_groups", 1, kNoMax},        {"num_res_centroids", 0, 65536},
    {"num_outlier_cols", 0, kNoMax},  {"outlier_vector_len", 0, kNoMax},
    {"num_outlier_centroids", 0, 65536}, {"normalized", 0, 1},
    {"has_bias", 0, 1},               {"accuracy_level", 0, 4}};
inline constexpr size_t kNumIntFields = sizeof(kIntFieldLimits) / sizeof(kIntFieldLimits[0]);

// Reads and validates a field collection. Every INT field is required (kINT32 or kINT64, one
// element); plugin_version is optional (the ONNX parser uses it to find the plugin and may not
// pass it on) but, when present, must be kCHAR "1" with or without a trailing NUL. Rejects unknown,
// duplicate, mistyped, wrongly sized, null or out-of-range fields and dims that validate_dims
// rejects. Returns "" and fills *out when valid, else a message naming the field (no prefix).
std::string parse_fields(const nvinfer1::PluginFieldCollection* fc, VQGemmConfig* out);

// The plugin's serialized form of a config: exactly the creator's field list (12 kINT32 fields in
// kIntAttributes order, then plugin_version as kCHAR "1" without NUL). Owns the storage the
// PluginFields point at; copies rebuild their own pointers.
class SerializedFields {
 public:
  explicit SerializedFields(const VQGemmConfig& config);
  SerializedFields(const SerializedFields& other) : SerializedFields(other.config_) {}
  SerializedFields& operator=(const SerializedFields&) = delete;

  const nvinfer1::PluginFieldCollection* collection() const { return &collection_; }

 private:
  VQGemmConfig config_;
  int32_t values_[kNumIntFields];
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection collection_{};
};

// The creator's getFieldNames() list: names and types only, no data.
const nvinfer1::PluginFieldCollection* field_names();

}  // namespace vq2trt::trt
