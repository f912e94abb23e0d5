// Where the plugin's messages go: the logger TensorRT hands over through setLoggerFinder (when the
// library was loaded with IPluginRegistry::loadLibrary), else stderr. Every message carries the
// "VQGemm plugin: " prefix. No libnvinfer symbol is needed (ILoggerFinder/ILogger are interfaces).
#pragma once

#include <NvInferRuntime.h>

#include <string>

namespace vq2trt::trt {

// Remembers the finder (thread-safe; nullptr reverts to stderr).
void set_logger_finder(nvinfer1::ILoggerFinder* finder) noexcept;

// Reports a user-facing error or warning; never throws.
void report(nvinfer1::ILogger::Severity severity, const std::string& message) noexcept;
inline void report_error(const std::string& message) noexcept {
  report(nvinfer1::ILogger::Severity::kERROR, message);
}

}  // namespace vq2trt::trt
