// Plain string scanning of export/vqgemm_op.json, as plugins/tests/test_schema.cpp does (copied
// here so that this folder does not reach into plugins/tests): no JSON library is needed for a file
// whose "inputs" and "attributes" are lists of objects with "name" (and "min"/"max") fields.
#pragma once

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace vq2trt::trt::testing {

inline std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The objects (as text) of the top-level list `key`.
inline std::vector<std::string> objects_in(const std::string& json, const std::string& key) {
  std::vector<std::string> out;
  size_t pos = json.find("\"" + key + "\"");
  if (pos == std::string::npos) return out;
  pos = json.find('[', pos);
  int depth = 0;
  size_t start = 0;
  for (size_t i = pos; i < json.size(); ++i) {
    const char c = json[i];
    if (c == '"') {
      i = json.find('"', i + 1);
      if (i == std::string::npos) break;
    } else if (c == '[' || c == '{') {
      if (++depth == 2) start = i;
    } else if (c == ']' || c == '}') {
      if (--depth == 1 && c == '}') out.push_back(json.substr(start, i - start + 1));
      if (depth == 0) break;
    }
  }
  return out;
}

// The value of "key" in one flat object: a string without quotes or a bare number; "" if absent.
inline std::string value_of(const std::string& object, const std::string& key) {
  const size_t k = object.find("\"" + key + "\"");
  if (k == std::string::npos) return "";
  size_t a = object.find(':', k) + 1;
  while (object[a] == ' ') ++a;
  if (object[a] == '"') return object.substr(a + 1, object.find('"', a + 1) - a - 1);
  const size_t b = object.find_first_of(",}\n ", a);
  return object.substr(a, b - a);
}

}  // namespace vq2trt::trt::testing
