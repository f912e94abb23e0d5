// See logging.h.
#include "logging.h"

#include <atomic>
#include <cstdio>

namespace vq2trt::trt {
namespace {

std::atomic<nvinfer1::ILoggerFinder*> g_finder{nullptr};

}  // namespace

void set_logger_finder(nvinfer1::ILoggerFinder* finder) noexcept { g_finder.store(finder); }

void report(nvinfer1::ILogger::Severity severity, const std::string& message) noexcept {
  try {
    const std::string text = "VQGemm plugin: " + message;
    nvinfer1::ILoggerFinder* finder = g_finder.load();
    // findLogger() must be called on the thread of the plugin call that reports, which this is.
    nvinfer1::ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
    if (logger != nullptr) {
      logger->log(severity, text.c_str());
    } else {
      std::fprintf(stderr, "%s\n", text.c_str());
    }
  } catch (...) {
    std::fputs("VQGemm plugin: (could not format a message)\n", stderr);
  }
}

}  // namespace vq2trt::trt
