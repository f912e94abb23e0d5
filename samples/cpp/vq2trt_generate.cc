// vq2trt_generate: greedy generation from a `vq2trt export` folder with the ONNX Runtime C++ API
// and the custom-op library libvq2trt_ort.so. No tokenizer: token ids in, token ids out.
//
//   vq2trt_generate MODEL_DIR ID [ID ...] [--new-tokens N] [--library PATH] [--threads N] [--ignore-eos]
//
// Prints the generated ids on one line (stdout) and the speed on stderr. Exit status 2 for bad
// arguments or an unusable folder/library, 1 for an ONNX Runtime error.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <sys/stat.h>
#include <vector>

#ifndef VQ2TRT_DEFAULT_ORT_LIBRARY
#define VQ2TRT_DEFAULT_ORT_LIBRARY ""
#endif

namespace {

constexpr const char* kUsage =
    "usage: vq2trt_generate MODEL_DIR ID [ID ...] [--new-tokens N] [--library PATH] [--threads N] "
    "[--ignore-eos]\n"
    "  MODEL_DIR      a folder written by `vq2trt export` (model.onnx, vq2trt_onnx.json)\n"
    "  ID ...         prompt token ids (separate arguments or comma-separated)\n"
    "  --new-tokens N tokens to generate (default 32); stops after eos_token_id unless --ignore-eos\n"
    "  --library PATH libvq2trt_ort.so (default: $VQ2TRT_ORT_LIBRARY, else the one built with this sample)\n"
    "  --threads N    intra-op threads (default: ONNX Runtime's choice)\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

bool is_file(const std::string& p) {
  struct stat st {};
  return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_dir(const std::string& p) {
  struct stat st {};
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

int64_t parse_int(const std::string& s, const std::string& what) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != s.size()) throw UsageError(what + ": not an integer: '" + s + "'");
  return v;
}

// The integer fields of vq2trt_onnx.json this app needs. A tiny parser: finds the first top-level
// looking `"key": <value>` and reads an integer, or the first integer of a list; null -> missing.
class Info {
 public:
  explicit Info(const std::string& path) {
    std::ifstream f(path);
    if (!f) throw UsageError(path + ": missing; expected a folder written by `vq2trt export`");
    std::stringstream ss;
    ss << f.rdbuf();
    text_ = ss.str();
  }

  bool find(const std::string& key, int64_t* out) const {
    const std::string quoted = "\"" + key + "\"";
    for (size_t at = text_.find(quoted); at != std::string::npos; at = text_.find(quoted, at + 1)) {
      size_t i = skip_ws(at + quoted.size());
      if (i >= text_.size() || text_[i] != ':') continue;  // a string value, not a key
      i = skip_ws(i + 1);
      if (i < text_.size() && text_[i] == '[') i = skip_ws(i + 1);
      size_t end = i;
      if (end < text_.size() && text_[end] == '-') ++end;
      while (end < text_.size() && text_[end] >= '0' && text_[end] <= '9') ++end;
      if (end == i || (end == i + 1 && text_[i] == '-')) return false;  // null, a string, ...
      *out = std::stoll(text_.substr(i, end - i));
      return true;
    }
    return false;
  }

  int64_t require(const std::string& key, const std::string& path) const {
    int64_t v = 0;
    if (!find(key, &v) || v <= 0)
      throw UsageError(path + ": no positive integer \"" + key + "\"; re-export the model");
    return v;
  }

 private:
  size_t skip_ws(size_t i) const {
    while (i < text_.size() && (text_[i] == ' ' || text_[i] == '\n' || text_[i] == '\r' || text_[i] == '\t')) ++i;
    return i;
  }
  std::string text_;
};

struct Args {
  std::string dir;
  std::vector<int64_t> prompt;
  int64_t new_tokens = 32;
  std::string library;
  int64_t threads = 0;
  bool ignore_eos = false;
};

Args parse_args(int argc, char** argv) {
  Args a;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(s + " needs a value");
      return argv[++i];
    };
    if (s == "-h" || s == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (s == "--new-tokens") {
      a.new_tokens = parse_int(value(), s);
    } else if (s == "--library") {
      a.library = value();
    } else if (s == "--threads") {
      a.threads = parse_int(value(), s);
    } else if (s == "--ignore-eos") {
      a.ignore_eos = true;
    } else if (s.size() > 1 && s[0] == '-' && !(s[1] >= '0' && s[1] <= '9')) {
      throw UsageError("unknown option " + s);
    } else {
      positional.push_back(s);
    }
  }
  if (positional.empty()) throw UsageError("missing MODEL_DIR");
  a.dir = positional[0];
  for (size_t k = 1; k < positional.size(); ++k) {
    std::stringstream ss(positional[k]);
    for (std::string tok; std::getline(ss, tok, ',');)
      if (!tok.empty()) a.prompt.push_back(parse_int(tok, "prompt id"));
  }
  if (a.prompt.empty()) throw UsageError("no prompt token ids given");
  if (a.new_tokens < 1) throw UsageError("--new-tokens must be >= 1");
  if (a.threads < 0) throw UsageError("--threads must be >= 0");
  return a;
}

std::string find_library(const std::string& from_args) {
  if (!from_args.empty()) {
    if (!is_file(from_args)) throw UsageError("--library " + from_args + ": no such file");
    return from_args;
  }
  if (const char* env = std::getenv("VQ2TRT_ORT_LIBRARY"); env && *env) {
    if (!is_file(env)) throw UsageError(std::string("VQ2TRT_ORT_LIBRARY=") + env + " is not a file");
    return env;
  }
  const std::string built = VQ2TRT_DEFAULT_ORT_LIBRARY;
  if (!built.empty() && is_file(built)) return built;
  throw UsageError("libvq2trt_ort.so not found: pass --library PATH or set VQ2TRT_ORT_LIBRARY "
                   "(`make plugins` builds it into build/plugins/onnxruntime/)");
}

Ort::Value tensor(const Ort::MemoryInfo& mem, std::vector<int64_t>& data, std::array<int64_t, 2> shape) {
  return Ort::Value::CreateTensor<int64_t>(mem, data.data(), data.size(), shape.data(), shape.size());
}

int run(const Args& a) {
  if (!is_dir(a.dir)) throw UsageError(a.dir + ": no such folder");
  const std::string model = a.dir + "/model.onnx", info_path = a.dir + "/vq2trt_onnx.json";
  if (!is_file(model)) throw UsageError(a.dir + ": no model.onnx; expected a folder written by `vq2trt export`");
  const Info info(info_path);
  const int64_t layers = info.require("num_layers", info_path);
  const int64_t kv_heads = info.require("num_key_value_heads", info_path);
  const int64_t head_dim = info.require("head_dim", info_path);
  int64_t eos = -1;
  const bool has_eos = !a.ignore_eos && info.find("eos_token_id", &eos);
  const std::string library = find_library(a.library);

  const OrtApi* api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    std::cerr << "vq2trt_generate: the ONNX Runtime library (" << OrtGetApiBase()->GetVersionString()
              << ") is older than the headers this was built with (API " << ORT_API_VERSION << ")\n";
    return 2;
  }
  Ort::InitApi(api);

  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "vq2trt_generate");
  Ort::SessionOptions so;
  if (a.threads > 0) so.SetIntraOpNumThreads(static_cast<int>(a.threads));
  so.RegisterCustomOpsLibrary(library.c_str());
  Ort::Session session(env, model.c_str(), so);

  // Names as `vq2trt export` writes them (vq2trt_onnx.json "inputs"/"outputs").
  std::vector<std::string> in_names = {"input_ids", "attention_mask", "position_ids"}, out_names = {"logits"};
  for (int64_t i = 0; i < layers; ++i)
    for (const char* kv : {"key", "value"}) {
      in_names.push_back("past_key_values." + std::to_string(i) + "." + kv);
      out_names.push_back("present." + std::to_string(i) + "." + kv);
    }
  std::vector<const char*> in_ptrs, out_ptrs;
  for (auto& n : in_names) in_ptrs.push_back(n.c_str());
  for (auto& n : out_names) out_ptrs.push_back(n.c_str());

  const auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<Ort::Value> past;  // 2 * layers, [1, kv_heads, past, head_dim]
  std::array<int64_t, 4> empty_shape = {1, kv_heads, 0, head_dim};
  float dummy = 0.f;
  for (int64_t i = 0; i < 2 * layers; ++i)
    past.push_back(Ort::Value::CreateTensor<float>(mem, &dummy, 0, empty_shape.data(), empty_shape.size()));

  std::vector<int64_t> feed_ids = a.prompt, out;
  const auto P = static_cast<int64_t>(a.prompt.size());
  double prefill_s = 0, decode_s = 0;
  for (int64_t n = 0; n < a.new_tokens; ++n) {
    const int64_t total = P + static_cast<int64_t>(out.size()), S = static_cast<int64_t>(feed_ids.size());
    std::vector<int64_t> mask(total, 1), pos(S);
    for (int64_t k = 0; k < S; ++k) pos[k] = total - S + k;
    std::vector<Ort::Value> feeds;
    feeds.push_back(tensor(mem, feed_ids, {1, S}));
    feeds.push_back(tensor(mem, mask, {1, total}));
    feeds.push_back(tensor(mem, pos, {1, S}));
    for (auto& v : past) feeds.push_back(std::move(v));

    const auto t0 = std::chrono::steady_clock::now();
    auto results = session.Run(Ort::RunOptions{nullptr}, in_ptrs.data(), feeds.data(), feeds.size(),
                               out_ptrs.data(), out_ptrs.size());
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    (n == 0 ? prefill_s : decode_s) += dt;

    // [1, S, V], or [1, 1, V] from an export with --logits last
    const auto shape = results[0].GetTensorTypeAndShapeInfo().GetShape();
    const int64_t V = shape.at(2);
    const float* last = results[0].GetTensorData<float>() + (shape.at(1) - 1) * V;
    const int64_t next = std::max_element(last, last + V) - last;  // first maximum, as numpy's argmax
    out.push_back(next);
    if (has_eos && next == eos) break;
    past.clear();
    for (size_t k = 1; k < results.size(); ++k) past.push_back(std::move(results[k]));  // present -> past
    feed_ids.assign(1, next);
  }

  for (size_t k = 0; k < out.size(); ++k) std::cout << (k ? " " : "") << out[k];
  std::cout << "\n";
  std::cerr << "prompt " << P << " tokens: prefill " << prefill_s * 1e3 << " ms; " << out.size()
            << " new tokens";
  if (out.size() > 1 && decode_s > 0)
    std::cerr << ", decode " << (out.size() - 1) / decode_s << " tokens/s";
  std::cerr << " (ONNX Runtime " << Ort::GetVersionString() << ")\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const UsageError& e) {
    std::cerr << "vq2trt_generate: " << e.what() << "\n";
    if (argc < 2) std::cerr << kUsage;
    return 2;
  } catch (const Ort::Exception& e) {
    std::cerr << "vq2trt_generate: onnxruntime: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "vq2trt_generate: " << e.what() << "\n";
    return 1;
  }
}
