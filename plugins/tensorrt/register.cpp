// Entry points of libvq2trt_trt.so (only in the shared library: the tests link the plugin logic
// without this file, so they need no libnvinfer).
//
// How TensorRT finds the creator (facts, see README.md "Loading"):
// - trtexec --staticPlugins=lib.so and Python's ctypes.CDLL(lib.so) only dlopen the library, so the
//   creator must register itself while the library loads (what REGISTER_TENSORRT_PLUGIN does:
//   a static object whose constructor calls getPluginRegistry()->registerCreator(creator, "")).
// - trtexec --dynamicPlugins=lib.so and IPluginRegistry::loadLibrary (Python:
//   registry.load_library) dlopen it, call the exported setLoggerFinder and getCreators, and
//   register every creator getCreators returns. IPluginRegistry::loadLibrary "will fail and return
//   nullptr if any of the plugins are already registered" (NvInferRuntimeCommon.h), and the
//   load-time registration above has, by then, already put the same creator in the global registry
//   (the one Python's load_library and, in some builds, the builder use).
// So a library that both registers at load time and exports getCreators breaks --dynamicPlugins.
// Design: this file registers at load time like REGISTER_TENSORRT_PLUGIN (own registrar instead of
// the macro, to keep a handle on what it registered), and getCreators withdraws that load-time
// registration before handing the creator to loadLibrary, which then registers it once, where it
// wants it. Loading the same library both ways in one process therefore works in either order.
// getPluginRegistry is referenced weakly: where no libnvinfer is loaded (or a lean runtime without
// that symbol), the load-time registration is skipped instead of failing dlopen, and getCreators
// still works.
#include <NvInferRuntime.h>

#include <mutex>

#include "creator.h"
#include "logging.h"

#pragma weak getPluginRegistry

// TensorRT's TENSORRTAPI is empty outside TensorRT's own build, and this library is compiled with
// hidden visibility: the two entry points are made visible here (exports.map lists them).
#define VQ2TRT_TRT_EXPORT __attribute__((visibility("default")))

namespace vq2trt::trt {
namespace {

VQGemmPluginCreator& the_creator() {
  static VQGemmPluginCreator creator;
  return creator;
}

class LoadTimeRegistration {
 public:
  LoadTimeRegistration() noexcept {
    if (&getPluginRegistry == nullptr) return;  // no libnvinfer in this process (yet)
    registry_ = getPluginRegistry();
    if (registry_ == nullptr) return;
    registered_ = registry_->registerCreator(the_creator(), "");
    if (!registered_) report_error("could not register the VQGemm creator at load time (already registered?)");
  }

  // Called from getCreators: loadLibrary is about to register the creator itself.
  void withdraw() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    if (registered_) registry_->deregisterCreator(the_creator());
    registered_ = false;
  }

 private:
  std::mutex mutex_;
  nvinfer1::IPluginRegistry* registry_ = nullptr;
  bool registered_ = false;
};

LoadTimeRegistration g_load_time_registration;

}  // namespace
}  // namespace vq2trt::trt

extern "C" VQ2TRT_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept {
  vq2trt::trt::set_logger_finder(finder);
}

extern "C" VQ2TRT_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) noexcept {
  using namespace vq2trt::trt;
  g_load_time_registration.withdraw();
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&the_creator()};
  nbCreators = int32_t(sizeof(creators) / sizeof(creators[0]));
  return creators;
}
