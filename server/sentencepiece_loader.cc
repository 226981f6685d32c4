// Debian's libsentencepiece carries its own protobuf-lite (3.14) and exports its symbols. In a
// process that also holds libprotobuf 3.21 (gRPC's generated code and reflection), one copy's
// calls land in the other and the process dies at start-up, whichever is linked first. So the
// server defines LoadSentencePieceTokenizer itself (the linker then leaves engine/tokenizer_sp.cc
// and libsentencepiece out of the executable) and loads them from a module of their own with
// RTLD_DEEPBIND, which binds the module's protobuf calls to its own copy.
#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>

#include "engine/tokenizer.h"

namespace spanserve {
namespace {

constexpr char kModuleName[] = "libspanserve_sentencepiece.so";

using LoadFunction = Tokenizer* (*)(const char*, std::string*);

// The module beside the executable.
std::string ModulePath() {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? kModuleName : (exe.parent_path() / kModuleName).string();
}

LoadFunction FindLoad(std::string* error) {
  static std::once_flag once;
  static LoadFunction load = nullptr;
  static std::string load_error;
  std::call_once(once, [] {
    const std::string path = ModulePath();
    void* module = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!module) {
      load_error = "cannot load the SentencePiece module " + path + ": " + dlerror();
      return;
    }
    load = reinterpret_cast<LoadFunction>(dlsym(module, "spanserve_load_sentencepiece"));
    if (!load) load_error = path + ": no spanserve_load_sentencepiece";
  });
  if (!load) *error = load_error;
  return load;
}

}  // namespace

std::unique_ptr<Tokenizer> LoadSentencePieceTokenizer(const std::string& path,
                                                      std::string* error) {
  LoadFunction load = FindLoad(error);
  if (!load) return nullptr;
  return std::unique_ptr<Tokenizer>(load(path.c_str(), error));
}

}  // namespace spanserve
