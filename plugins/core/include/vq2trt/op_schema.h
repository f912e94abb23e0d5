// The op's names in one place, shared by the ORT op (registration, attributes) and the TensorRT
// plugin (creator name/version, field list); plugins/tests/test_schema.cpp checks them against
// export/vqgemm_op.json. No runtime types here.
#pragma once

#include <cstddef>

namespace vq2trt {

inline constexpr const char* kDomain = "vq2trt";
inline constexpr const char* kOpName = "VQGemm";
inline constexpr int kOpVersion = 1;
inline constexpr const char* kPluginVersion = "1";

// Node inputs in schema order; the first kRequiredInputs are always present, the optional groups
// after them are compacted (an absent group is left out, not passed as an empty name).
inline constexpr const char* kInputNames[] = {
    "X", "indices", "codebook", "perm", "res_indices", "res_codebook", "outlier_indices",
    "outlier_codebook", "col_scale", "col_bias", "bias"};
inline constexpr size_t kNumInputs = sizeof(kInputNames) / sizeof(kInputNames[0]);
inline constexpr size_t kRequiredInputs = 4;

inline constexpr const char* kIntAttributes[] = {
    "out_features", "in_features", "vector_len", "num_centroids", "num_groups",
    "num_res_centroids", "num_outlier_cols", "outlier_vector_len", "num_outlier_centroids",
    "normalized", "has_bias", "accuracy_level"};
inline constexpr const char* kStringAttributes[] = {"plugin_version"};

}  // namespace vq2trt
