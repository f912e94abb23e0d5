// Randomly corrupted field collections (seeded): each is either rejected with a message or
// accepted only when what the plugin serializes parses back to the same, valid config. Built a
// second time with -fsanitize=address,undefined (test_trt_fuzz_asan): over-reads of a field's
// bytes, UB in the parsing, and leaks fail that run.
#include <climits>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>

#include "creator.h"
#include "test_common.h"

using namespace vq2trt;
using namespace vq2trt::trt;
using namespace vq2trt::trt::testing;
using nvinfer1::PluginFieldType;

namespace {

size_t type_size(PluginFieldType t) {
  switch (t) {
    case PluginFieldType::kFLOAT64: case PluginFieldType::kINT64: return 8;
    case PluginFieldType::kFLOAT32: case PluginFieldType::kINT32: return 4;
    case PluginFieldType::kFLOAT16: case PluginFieldType::kINT16: case PluginFieldType::kBF16: return 2;
    default: return 1;
  }
}

class Fuzzer {
 public:
  explicit Fuzzer(uint32_t seed) : rng_(seed) {}

  int64_t interesting() {
    static const int64_t values[] = {0, 1, -1, 2, 3, 4, 5, 16, 255, 256, 4096, 4097, 65535, 65536, 65537,
                                     INT32_MAX, INT32_MIN, int64_t(INT32_MAX) + 1, INT64_MAX, INT64_MIN};
    if (pick(3) == 0) return int64_t(rng_()) - int64_t(rng_());
    return values[pick(sizeof(values) / sizeof(values[0]))];
  }
  size_t pick(size_t n) { return size_t(rng_() % n); }

  // Gives the field `length` elements of its type (random bytes): the storage always matches what
  // the field claims, as TensorRT's contract asks; only the meaning is corrupted.
  void resize(RawField& f, int32_t length) {
    f.length = length;
    if (length > 16) {  // claims more than any real field: no storage behind it
      f.bytes.clear();
      f.null_data = true;
      return;
    }
    const size_t n = length > 0 ? size_t(length) * type_size(f.type) : 0;
    f.bytes.resize(n);
    for (auto& b : f.bytes) b = static_cast<unsigned char>(rng_());
  }

  void mutate(FieldList& list) {
    if (list.fields.empty()) return;
    RawField& f = list.fields[pick(list.fields.size())];
    switch (pick(11)) {
      case 0: f.type = PluginFieldType(pick(15)); resize(f, f.length); break;
      case 1: resize(f, int32_t(pick(5)) - 1); break;
      case 2: f = int_field(f.name, interesting(), pick(2) == 0); break;
      case 3: f.null_data = true; break;
      case 4: list.fields.erase(list.fields.begin() + long(pick(list.fields.size()))); break;
      case 5: list.fields.push_back(list.fields[pick(list.fields.size())]); break;
      case 6: f.name = pick(2) ? std::string(kIntAttributes[pick(kNumIntFields)]) : f.name + "x"; break;
      case 7: f.null_name = pick(4) == 0; if (!f.null_name) f.name = f.name.substr(0, pick(f.name.size() + 1)); break;
      case 8: {  // plugin_version garbage: random bytes, no terminating NUL
        f.name = "plugin_version";
        f.type = PluginFieldType::kCHAR;
        resize(f, int32_t(pick(6)));
        if (pick(2) && f.length > 0) f.bytes[0] = '1';
        break;
      }
      case 9: std::swap(list.fields[pick(list.fields.size())], f); break;
      case 10: f.length = pick(2) ? INT32_MAX : INT32_MIN; f.bytes.clear(); f.null_data = true; break;
    }
  }

 private:
  std::mt19937 rng_;
};

}  // namespace

int main(int argc, char** argv) {
  const int iterations = argc > 1 ? std::atoi(argv[1]) : 5000;
  CapturingLogger capture;  // keeps thousands of rejections off stderr
  VQGemmPluginCreator creator;
  const auto configs = test_configs();
  Fuzzer fz(20240611u);
  int accepted = 0, rejected = 0;
  for (int it = 0; it < iterations; ++it) {
    const VQGemmConfig& base = configs[fz.pick(configs.size())].config;
    FieldList list = fields_of(base, fz.pick(2) == 0, fz.pick(4) != 0, fz.pick(2) == 0);
    const size_t mutations = 1 + fz.pick(4);
    for (size_t m = 0; m < mutations; ++m) fz.mutate(list);
    const auto phase = fz.pick(2) ? nvinfer1::TensorRTPhase::kBUILD : nvinfer1::TensorRTPhase::kRUNTIME;
    const int reports = capture.count;
    std::unique_ptr<nvinfer1::IPluginV3> p(creator.createPlugin("fuzz", list.collection(), phase));
    if (!p) {
      ++rejected;
      CHECK_MSG(capture.count == reports + 1 && capture.last.find("VQGemm plugin: createPlugin") == 0,
                "iteration " + std::to_string(it));
      continue;
    }
    ++accepted;
    const VQGemmConfig& c = static_cast<VQGemmPlugin*>(p.get())->config();
    CHECK_MSG(validate_dims(c.dims).empty() && c.accuracy_level >= 0 && c.accuracy_level <= 4,
              "iteration " + std::to_string(it));
    auto* rt = static_cast<nvinfer1::IPluginV3OneRuntime*>(p->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    VQGemmConfig again;
    CHECK_MSG(parse_fields(rt->getFieldsToSerialize(), &again).empty() && again == c, "iteration " + std::to_string(it));
  }
  std::printf("test_trt_fuzz: %d iterations, %d accepted, %d rejected\n", iterations, accepted, rejected);
  CHECK(accepted > 0 && rejected > iterations / 2);
  return finish("test_trt_fuzz");
}
