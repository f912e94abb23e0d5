// export/vqgemm_op.json (the op contract) against the names the ORT op registers with
// (plugins/core/include/vq2trt/op_schema.h). Plain string scanning: no JSON library needed for a
// file whose "inputs" and "attributes" are lists of objects with a "name" field.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "vq2trt/op_schema.h"

namespace {

// The "name" values of the objects inside the top-level list `key`.
std::vector<std::string> names_in(const std::string& json, const std::string& key) {
  std::vector<std::string> out;
  size_t pos = json.find("\"" + key + "\"");
  if (pos == std::string::npos) return out;
  pos = json.find('[', pos);
  int depth = 0;
  for (size_t i = pos; i < json.size(); ++i) {
    const char c = json[i];
    if (c == '"') {  // skip strings, picking up "name": "<value>" at object depth 1
      const size_t end = json.find('"', i + 1);
      const std::string s = json.substr(i + 1, end - i - 1);
      i = end;
      if (s == "name" && depth == 2) {
        const size_t a = json.find('"', json.find(':', end) + 1), b = json.find('"', a + 1);
        out.push_back(json.substr(a + 1, b - a - 1));
        i = b;
      }
    } else if (c == '[' || c == '{') {
      ++depth;
    } else if (c == ']' || c == '}') {
      if (--depth == 0) break;
    }
  }
  return out;
}

std::string field(const std::string& json, const std::string& key) {
  const size_t k = json.find("\"" + key + "\"");
  const size_t colon = json.find(':', k);
  size_t a = colon + 1;
  while (json[a] == ' ') ++a;
  if (json[a] == '"') return json.substr(a + 1, json.find('"', a + 1) - a - 1);
  return json.substr(a, json.find_first_of(",}\n", a) - a);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::printf("usage: test_schema path/to/vqgemm_op.json\n");
    return 2;
  }
  std::ifstream f(argv[1]);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string json = ss.str();
  using namespace vq2trt;
  int failures = 0;
  auto expect = [&](bool ok, const std::string& what) {
    if (!ok) {
      ++failures;
      std::printf("FAIL %s\n", what.c_str());
    }
  };
  expect(field(json, "name") == kOpName, "op name " + field(json, "name"));
  expect(field(json, "domain") == kDomain, "domain " + field(json, "domain"));
  expect(field(json, "version") == std::to_string(kOpVersion), "version " + field(json, "version"));
  expect(field(json, "plugin_version") == kPluginVersion, "plugin_version");
  const std::vector<std::string> inputs = names_in(json, "inputs");
  expect(inputs.size() == kNumInputs, "input count " + std::to_string(inputs.size()) + " vs " + std::to_string(kNumInputs));
  for (size_t i = 0; i < inputs.size() && i < kNumInputs; ++i)
    expect(inputs[i] == kInputNames[i], "input " + std::to_string(i) + ": schema " + inputs[i] + ", op " + kInputNames[i]);
  std::vector<std::string> attrs;
  for (const char* a : kIntAttributes) attrs.push_back(a);
  for (const char* a : kStringAttributes) attrs.push_back(a);
  const std::vector<std::string> schema_attrs = names_in(json, "attributes");
  expect(schema_attrs == attrs, "attribute names differ from the op's (" + std::to_string(schema_attrs.size()) +
                                    " in the schema, " + std::to_string(attrs.size()) + " in the op)");
  std::printf("%s: %zu inputs, %zu attributes (%d failures)\n", failures ? "FAILED" : "ok", inputs.size(),
              schema_attrs.size(), failures);
  return failures ? 1 : 0;
}
