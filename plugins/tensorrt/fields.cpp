// Field parsing and validation of the VQGemm plugin (see fields.h). The messages follow the ORT
// op's (plugins/onnxruntime/vqgemm_op.cc) with "field" for "attribute".
#include "fields.h"

#include <cstring>
#include <string>

#include "vq2trt/op_schema.h"

namespace vq2trt::trt {
namespace {

using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;

constexpr bool same_name(const char* a, const char* b) {
  while (*a && *a == *b) ++a, ++b;
  return *a == *b;
}

constexpr bool limits_follow_schema() {
  if (kNumIntFields != sizeof(kIntAttributes) / sizeof(kIntAttributes[0])) return false;
  for (size_t i = 0; i < kNumIntFields; ++i)
    if (!same_name(kIntFieldLimits[i].name, kIntAttributes[i])) return false;
  return true;
}
static_assert(limits_follow_schema(), "kIntFieldLimits must list vq2trt::kIntAttributes in order");
static_assert(sizeof(kStringAttributes) / sizeof(kStringAttributes[0]) == 1 &&
                  same_name(kStringAttributes[0], "plugin_version"),
              "the only STRING field is plugin_version");

constexpr size_t kPluginVersionField = kNumIntFields;  // index in "seen" and the serialized list
constexpr size_t kNumFields = kNumIntFields + 1;

// A printable, bounded rendering of untrusted bytes (names and strings need not be printable).
std::string printable(const char* s, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\'') {
      out += char(c);
    } else {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string field_name(const char* name) {
  constexpr size_t kMaxShown = 64;
  const size_t n = strnlen(name, kMaxShown + 1);
  return "'" + printable(name, n > kMaxShown ? kMaxShown : n) + (n > kMaxShown ? "...'" : "'");
}

// Index of a known field name, or -1. strcmp reads no further than the known name's length + 1.
int find_field(const char* name) {
  for (size_t i = 0; i < kNumIntFields; ++i)
    if (std::strcmp(name, kIntAttributes[i]) == 0) return int(i);
  if (std::strcmp(name, kStringAttributes[0]) == 0) return int(kPluginVersionField);
  return -1;
}

std::string read_int(const PluginField& f, int64_t* value) {
  if (f.type != PluginFieldType::kINT32 && f.type != PluginFieldType::kINT64)
    return "field " + field_name(f.name) + " must be kINT32 (or kINT64) with one element, got type " +
           std::to_string(int32_t(f.type));
  if (f.length != 1)
    return "field " + field_name(f.name) + " must hold one element, got length " + std::to_string(f.length);
  if (f.data == nullptr) return "field " + field_name(f.name) + " has length 1 but no data";
  if (f.type == PluginFieldType::kINT32) {
    int32_t v;
    std::memcpy(&v, f.data, sizeof(v));
    *value = v;
  } else {
    std::memcpy(value, f.data, sizeof(*value));
  }
  return "";
}

std::string check_version(const PluginField& f) {
  if (f.type != PluginFieldType::kCHAR)
    return "field 'plugin_version' must be kCHAR, got type " + std::to_string(int32_t(f.type));
  if (f.length < 0) return "field 'plugin_version' has a negative length " + std::to_string(f.length);
  if (f.length > 0 && f.data == nullptr)
    return "field 'plugin_version' has length " + std::to_string(f.length) + " but no data";
  const char* s = static_cast<const char*>(f.data);
  size_t n = size_t(f.length);
  if (n > 0 && s[n - 1] == '\0') --n;  // the parser may or may not count the terminating NUL
  const size_t expected = std::strlen(kPluginVersion);
  if (n != expected || std::memcmp(s, kPluginVersion, n) != 0) {
    constexpr size_t kMaxShown = 32;
    return std::string("field 'plugin_version' must be \"") + kPluginVersion + "\", got \"" +
           printable(s, n > kMaxShown ? kMaxShown : n) + (n > kMaxShown ? "...\"" : "\"");
  }
  return "";
}

}  // namespace

bool operator==(const VQGemmConfig& a, const VQGemmConfig& b) {
  const VQGemmDims &x = a.dims, &y = b.dims;
  return x.N == y.N && x.K == y.K && x.n_out == y.n_out && x.v == y.v && x.k == y.k && x.G == y.G &&
         x.k_r == y.k_r && x.v_o == y.v_o && x.k_o == y.k_o && x.normalized == y.normalized &&
         x.has_bias == y.has_bias && a.accuracy_level == b.accuracy_level;
}

std::string parse_fields(const PluginFieldCollection* fc, VQGemmConfig* out) {
  if (fc == nullptr) return "no field collection";
  if (fc->nbFields < 0) return "negative field count " + std::to_string(fc->nbFields);
  if (fc->nbFields > 0 && fc->fields == nullptr)
    return "field collection of " + std::to_string(fc->nbFields) + " fields has no field array";
  int64_t a[kNumIntFields] = {};
  bool seen[kNumFields] = {};
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    const PluginField& f = fc->fields[i];
    if (f.name == nullptr) return "field " + std::to_string(i) + " has no name";
    const int id = find_field(f.name);
    if (id < 0) return "unknown field " + field_name(f.name);
    if (seen[id]) return "duplicate field " + field_name(f.name);
    seen[id] = true;
    std::string e;
    if (size_t(id) == kPluginVersionField) {
      e = check_version(f);
    } else {
      e = read_int(f, &a[id]);
      const IntFieldLimits& lim = kIntFieldLimits[id];
      if (e.empty() && (a[id] < lim.min || a[id] > lim.max))
        e = "field " + field_name(f.name) + " must lie in [" + std::to_string(lim.min) + ", " +
            (lim.max == kNoMax ? std::string("inf") : std::to_string(lim.max)) + "], got " +
            std::to_string(a[id]);
    }
    if (!e.empty()) return e;
  }
  for (size_t i = 0; i < kNumIntFields; ++i)
    if (!seen[i]) return std::string("missing INT field '") + kIntAttributes[i] + "'";
  VQGemmConfig c;
  c.dims = VQGemmDims{a[0], a[1], a[6], a[2], a[3], a[4], a[5], a[7], a[8], a[9] != 0, a[10] != 0};
  c.accuracy_level = int(a[11]);
  const std::string e = validate_dims(c.dims);
  if (!e.empty()) return "inconsistent fields: " + e;
  *out = c;
  return "";
}

SerializedFields::SerializedFields(const VQGemmConfig& config) : config_(config) {
  const VQGemmDims& d = config.dims;
  // Valid dims fit int32 (validate_dims bounds N, K < 2^31 and the rest far below).
  const int64_t v[kNumIntFields] = {d.N,   d.K,   d.v,          d.k,          d.G,
                                    d.k_r, d.n_out, d.v_o,       d.k_o,        d.normalized ? 1 : 0,
                                    d.has_bias ? 1 : 0, config.accuracy_level};
  fields_.reserve(kNumFields);
  for (size_t i = 0; i < kNumIntFields; ++i) {
    values_[i] = int32_t(v[i]);
    fields_.emplace_back(kIntAttributes[i], &values_[i], PluginFieldType::kINT32, 1);
  }
  fields_.emplace_back(kStringAttributes[0], kPluginVersion, PluginFieldType::kCHAR,
                       int32_t(std::strlen(kPluginVersion)));
  collection_.nbFields = int32_t(fields_.size());
  collection_.fields = fields_.data();
}

const PluginFieldCollection* field_names() {
  static const struct Names {
    PluginField fields[kNumFields];
    PluginFieldCollection fc;
    Names() {
      for (size_t i = 0; i < kNumIntFields; ++i)
        fields[i] = PluginField(kIntAttributes[i], nullptr, PluginFieldType::kINT32, 1);
      fields[kPluginVersionField] = PluginField(kStringAttributes[0], nullptr, PluginFieldType::kCHAR, 1);
      fc.nbFields = int32_t(kNumFields);
      fc.fields = fields;
    }
  } names;
  return &names.fc;
}

}  // namespace vq2trt::trt
