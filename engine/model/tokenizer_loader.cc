// Debian's libsentencepiece carries its own protobuf-lite (3.14) and exports its symbols. In a
// process that also holds libprotobuf 3.21 (gRPC's generated code and reflection), one copy's
// calls land in the other and the process dies at start-up, whichever is linked first. So no
// binary links libsentencepiece: SentencePiece lives in a module of its own
// (libspanserve_sentencepiece.so, from tokenizer_sp.cc), opened here with RTLD_DEEPBIND, which
// binds the module's protobuf calls to its own copy.
#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <vector>

#include "engine/model/tokenizer.h"
#include "engine/model/tokenizer_hf.h"

namespace spanserve {
namespace {

constexpr char kModuleName[] = "libspanserve_sentencepiece.so";

// The ASan and TSan runtimes intercept dlopen and refuse RTLD_DEEPBIND (google/sanitizers#611:
// a deep-bound library that calls malloc itself gets libc's, not theirs). Neither the module nor
// libsentencepiece calls malloc, only operator new (libstdc++'s, whose malloc is the runtime's),
// so their builds (cmake/sanitizers.cmake) call libc's dlopen past the interceptor and bind the
// module as release builds do.
void* OpenModule(const std::string& path) {
  constexpr int kFlags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#ifdef SPANSERVE_SANITIZED
  using Dlopen = void* (*)(const char*, int);
  static const auto libc_dlopen = reinterpret_cast<Dlopen>(dlsym(RTLD_NEXT, "dlopen"));
  return libc_dlopen(path.c_str(), kFlags);
#else
  return dlopen(path.c_str(), kFlags);
#endif
}

using LoadFunction = Tokenizer* (*)(const char*, std::string*, bool);

// Where the module may be: $SPANSERVE_SENTENCEPIECE_MODULE, beside the executable, in ../lib
// (an install or a packed folder), then where this build put it.
std::vector<std::string> ModuleCandidates() {
  std::vector<std::string> paths;
  if (const char* env = std::getenv("SPANSERVE_SENTENCEPIECE_MODULE")) paths.push_back(env);
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    paths.push_back((exe.parent_path() / kModuleName).string());
    paths.push_back((exe.parent_path() / ".." / "lib" / kModuleName).string());
  }
  paths.push_back(SPANSERVE_SENTENCEPIECE_MODULE);
  return paths;
}

LoadFunction FindLoad(std::string* error) {
  static std::once_flag once;
  static LoadFunction load = nullptr;
  static std::string load_error;
  std::call_once(once, [] {
    std::string tried;
    for (const std::string& path : ModuleCandidates()) {
      if (!std::filesystem::exists(path)) {
        tried += " " + path;
        continue;
      }
      void* module = OpenModule(path);
      if (!module) {
        load_error = "cannot load the SentencePiece module " + path + ": " + dlerror();
        return;
      }
      load = reinterpret_cast<LoadFunction>(dlsym(module, "spanserve_load_sentencepiece"));
      if (!load) load_error = path + " has no spanserve_load_sentencepiece";
      return;
    }
    load_error = std::string("the SentencePiece module ") + kModuleName +
                 " was not found; looked at:" + tried;
  });
  if (!load) *error = load_error;
  return load;
}

}  // namespace

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
// Deep-bound, the module allocates with libstdc++'s operator new (the runtime's malloc inside)
// while the strings and tokenizers it returns are freed by the runtime's operator delete: one
// allocator, two tags, which ASan would report as a malloc/delete mismatch.
extern "C" const char* __asan_default_options() { return "alloc_dealloc_mismatch=0"; }
#endif
#endif

std::unique_ptr<Tokenizer> LoadSentencePieceTokenizer(const std::string& path,
                                                      std::string* error, bool decode_tables) {
  LoadFunction load = FindLoad(error);
  if (!load) return nullptr;
  return std::unique_ptr<Tokenizer>(load(path.c_str(), error, decode_tables));
}

}  // namespace spanserve

namespace spanserve {

std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& model_dir, std::string* error,
                                         std::string* path) {
  std::string chosen;
  std::error_code ec;
  for (const char* name : {"tokenizer.json", "tokenizer.model"}) {
    const std::string candidate = (std::filesystem::path(model_dir) / name).string();
    if (std::filesystem::is_regular_file(candidate, ec)) {
      chosen = candidate;
      break;
    }
  }
  if (path) *path = chosen;
  if (chosen.empty()) {
    *error = model_dir + ": no tokenizer.json or tokenizer.model";
    return nullptr;
  }
  std::string why;
  std::unique_ptr<Tokenizer> tokenizer =
      chosen.ends_with(".json") ? std::unique_ptr<Tokenizer>(LoadHfTokenizer(chosen, &why))
                                : LoadSentencePieceTokenizer(chosen, &why);
  if (!tokenizer) {
    const char* what = chosen.ends_with(".json") ? ": " : ": not a valid SentencePiece model: ";
    *error = chosen + what + why;
  }
  return tokenizer;
}

}  // namespace spanserve
