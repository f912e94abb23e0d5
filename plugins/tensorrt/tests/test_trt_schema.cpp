// The plugin's field list (creator, serialization, limits) against vq2trt/op_schema.h and
// export/vqgemm_op.json, the op contract (path passed by ctest).
#include <cstdio>
#include <string>
#include <vector>

#include "creator.h"
#include "json_names.h"
#include "test_common.h"

using namespace vq2trt;
using namespace vq2trt::trt;
using namespace vq2trt::trt::testing;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::printf("usage: test_trt_schema path/to/vqgemm_op.json\n");
    return 2;
  }
  const std::string json = read_text(argv[1]);
  const std::vector<std::string> attrs = objects_in(json, "attributes");
  CHECK_MSG(!attrs.empty(), std::string("no attributes in ") + argv[1]);
  CHECK(value_of(json, "name") == kOpName);
  CHECK(value_of(json, "plugin_version") == kPluginVersion);
  CHECK(value_of(json, "plugin_namespace").empty());

  VQGemmPluginCreator creator;
  CHECK(std::string(creator.getPluginName()) == value_of(json, "name"));
  CHECK(std::string(creator.getPluginVersion()) == value_of(json, "plugin_version"));
  const nvinfer1::PluginFieldCollection* names = creator.getFieldNames();
  auto plugin = create_plugin(test_configs()[0].config);
  CHECK(plugin != nullptr);
  const nvinfer1::PluginFieldCollection* serialized = plugin ? plugin->getFieldsToSerialize() : names;

  // Same names, same order: JSON == op_schema.h == creator == serialized.
  std::vector<std::string> schema;
  for (const char* a : kIntAttributes) schema.push_back(a);
  for (const char* a : kStringAttributes) schema.push_back(a);
  CHECK_MSG(attrs.size() == schema.size(), std::to_string(attrs.size()) + " attributes in the JSON");
  CHECK(names->nbFields == int32_t(schema.size()) && serialized->nbFields == int32_t(schema.size()));
  for (size_t i = 0; i < attrs.size() && i < schema.size(); ++i) {
    const std::string json_name = value_of(attrs[i], "name");
    CHECK_MSG(json_name == schema[i], json_name + " vs " + schema[i]);
    if (int32_t(i) < names->nbFields) CHECK_MSG(names->fields[i].name == schema[i], schema[i]);
    if (int32_t(i) < serialized->nbFields) CHECK_MSG(serialized->fields[i].name == schema[i], schema[i]);
    const std::string type = value_of(attrs[i], "type");
    const bool is_int = i < kNumIntFields;
    CHECK_MSG(type == (is_int ? "INT" : "STRING"), json_name + " is " + type);
    if (!is_int) continue;
    // The limits parse_fields enforces are the JSON's min/max.
    const IntFieldLimits& lim = kIntFieldLimits[i];
    const std::string min = value_of(attrs[i], "min"), max = value_of(attrs[i], "max");
    CHECK_MSG(min == std::to_string(lim.min), json_name + " min " + min);
    CHECK_MSG(max == (lim.max == kNoMax ? std::string() : std::to_string(lim.max)), json_name + " max " + max);
  }
  return finish("test_trt_schema");
}
