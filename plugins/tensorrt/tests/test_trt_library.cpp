// libvq2trt_trt.so as TensorRT loads it, with a stand-in plugin registry instead of libnvinfer.
// The executable defines and exports getPluginRegistry() (the one libnvinfer symbol the library
// references, weakly); its registries follow IPluginRegistry's documented rules: registerCreator
// fails for a name/version/namespace already present, and loadLibrary dlopens the library, calls
// setLoggerFinder and getCreators, and fails if any creator is already registered.
//   static-first:  dlopen (trtexec --staticPlugins, ctypes.CDLL), then loadLibrary on the same
//                  registry (Python's registry.load_library) and on a second one (a runtime's)
//   dynamic-first: loadLibrary first (trtexec --dynamicPlugins), then dlopen again
// Built without the registry (VQ2TRT_NO_REGISTRY) it checks that the library still loads where
// no libnvinfer is present and hands out its creator through getCreators.
#include <dlfcn.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "test_common.h"

using namespace vq2trt::trt::testing;

namespace {

using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*)(int32_t&);
using SetLoggerFinder = void (*)(nvinfer1::ILoggerFinder*);

nvinfer1::IPluginCreatorV3One* as_v3(nvinfer1::IPluginCreatorInterface* c) {
  return std::strcmp(c->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0
             ? static_cast<nvinfer1::IPluginCreatorV3One*>(c)
             : nullptr;
}

std::string key(nvinfer1::IPluginCreatorV3One* c) {
  return std::string(c->getPluginName()) + "/" + c->getPluginVersion() + "/" + c->getPluginNamespace();
}

// Creates a VQGemm plugin through a creator; true when it worked.
bool creates(nvinfer1::IPluginCreatorInterface* c) {
  nvinfer1::IPluginCreatorV3One* v3 = c ? as_v3(c) : nullptr;
  if (!v3) return false;
  FieldList f = fields_of(test_configs()[0].config);
  std::unique_ptr<nvinfer1::IPluginV3> p(v3->createPlugin("n", f.collection(), nvinfer1::TensorRTPhase::kBUILD));
  return p != nullptr;
}

#ifndef VQ2TRT_NO_REGISTRY
class FakeRegistry final : public nvinfer1::IPluginRegistry {
 public:
  std::vector<nvinfer1::IPluginCreatorInterface*> creators;
  int registrations = 0, deregistrations = 0;

  bool registerCreator(nvinfer1::IPluginCreatorInterface& c, const char* const ns) noexcept override {
    auto* v3 = as_v3(&c);
    if (!v3 || std::strcmp(ns, v3->getPluginNamespace()) != 0 || find(key(v3))) return false;
    creators.push_back(&c);
    ++registrations;
    return true;
  }
  bool deregisterCreator(const nvinfer1::IPluginCreatorInterface& c) noexcept override {
    for (auto it = creators.begin(); it != creators.end(); ++it)
      if (*it == &c) {
        creators.erase(it);
        ++deregistrations;
        return true;
      }
    return false;
  }
  PluginLibraryHandle loadLibrary(const char* path) noexcept override {
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) return nullptr;
    auto set_finder = reinterpret_cast<SetLoggerFinder>(dlsym(h, "setLoggerFinder"));
    auto get = reinterpret_cast<GetCreators>(dlsym(h, "getCreators"));
    if (!set_finder || !get) return nullptr;
    set_finder(nullptr);
    int32_t n = 0;
    nvinfer1::IPluginCreatorInterface* const* list = get(n);
    for (int32_t i = 0; i < n; ++i)
      if (!registerCreator(*list[i], as_v3(list[i]) ? as_v3(list[i])->getPluginNamespace() : "")) return nullptr;
    return h;
  }
  nvinfer1::IPluginCreatorInterface* getCreator(const char* name, const char* version, const char* ns) noexcept override {
    return find(std::string(name) + "/" + version + "/" + ns);
  }
  nvinfer1::IPluginCreatorInterface* find(const std::string& k) {
    for (auto* c : creators)
      if (key(as_v3(c)) == k) return c;
    return nullptr;
  }
  // Unused by the library.
  bool registerCreator(nvinfer1::IPluginCreator&, const char* const) noexcept override { return false; }
  nvinfer1::IPluginCreator* const* getPluginCreatorList(int32_t* const) const noexcept override { return nullptr; }
  nvinfer1::IPluginCreator* getPluginCreator(const char* const, const char* const, const char* const) noexcept override {
    return nullptr;
  }
  void setErrorRecorder(nvinfer1::IErrorRecorder* const) noexcept override {}
  nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
  bool deregisterCreator(const nvinfer1::IPluginCreator&) noexcept override { return false; }
  bool isParentSearchEnabled() const override { return false; }
  void setParentSearchEnabled(const bool) override {}
  void deregisterLibrary(PluginLibraryHandle) noexcept override {}
  nvinfer1::IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override {
    *n = int32_t(creators.size());
    return creators.data();
  }
  nvinfer1::IPluginResource* acquirePluginResource(const char*, nvinfer1::IPluginResource*) noexcept override {
    return nullptr;
  }
  int32_t releasePluginResource(const char*) noexcept override { return -1; }
  nvinfer1::IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override {
    return getAllCreators(n);
  }
  ~FakeRegistry() noexcept override = default;
};

FakeRegistry g_global, g_runtime;
#endif

}  // namespace

#ifndef VQ2TRT_NO_REGISTRY
extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginRegistry* getPluginRegistry() noexcept {
  return &g_global;
}
#endif

int main(int argc, char** argv) {
  if (argc != 3) {
    std::printf("usage: test_trt_library path/to/libvq2trt_trt.so static-first|dynamic-first|bare\n");
    return 2;
  }
  const char* lib = argv[1];
  const std::string mode = argv[2];
#ifdef VQ2TRT_NO_REGISTRY
  CHECK(mode == "bare");
  void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);  // no getPluginRegistry anywhere: must still load
  CHECK_MSG(h != nullptr, dlerror());
  if (!h) return finish("test_trt_library");
  auto get = reinterpret_cast<GetCreators>(dlsym(h, "getCreators"));
  CHECK(get != nullptr && dlsym(h, "setLoggerFinder") != nullptr);
  int32_t n = 0;
  auto* const* list = get ? get(n) : nullptr;
  CHECK(n == 1 && list && as_v3(list[0]) && key(as_v3(list[0])) == "VQGemm/1/");
  CHECK(n == 1 && creates(list[0]));
  // Only the two entry points are exported (e.g. not the plugin's own functions).
  CHECK(dlsym(h, "_ZN6vq2trt3trt12parse_fieldsEPKN8nvinfer121PluginFieldCollectionEPNS0_12VQGemmConfigE") == nullptr);
  CHECK(dlsym(h, "RegisterCustomOps") == nullptr);
#else
  if (mode == "static-first") {
    void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    CHECK_MSG(h != nullptr, dlerror());
    CHECK(g_global.creators.size() == 1 && creates(g_global.getCreator("VQGemm", "1", "")));  // registered at load
    CHECK(g_global.loadLibrary(lib) != nullptr);  // no "already registered" failure
    CHECK(g_global.creators.size() == 1 && creates(g_global.getCreator("VQGemm", "1", "")));
    CHECK(g_global.registrations == 2 && g_global.deregistrations == 1);
  } else if (mode == "dynamic-first") {
    CHECK(g_global.loadLibrary(lib) != nullptr);  // load-time registration, withdrawn by getCreators
    CHECK(g_global.creators.size() == 1 && creates(g_global.getCreator("VQGemm", "1", "")));
    CHECK(dlopen(lib, RTLD_NOW | RTLD_LOCAL) != nullptr);
    CHECK(g_global.creators.size() == 1);
  } else {
    CHECK_MSG(false, "unknown mode " + mode);
  }
  CHECK(g_runtime.loadLibrary(lib) != nullptr);  // a second registry (a runtime's) loads it too
  CHECK(g_runtime.creators.size() == 1 && creates(g_runtime.getCreator("VQGemm", "1", "")));
  CHECK(g_global.creators.size() == 1);
#endif
  return finish("test_trt_library");
}
