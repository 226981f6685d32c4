// libFuzzer: bytes as the YAML config through ParseConfig and ValidateConfig (server/config.h).
// A config ParseConfig accepts must validate again and convert to the engine's and the backend's
// options.
#include "server/config.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace spanserve;
  using fuzz::Check;
  absl::StatusOr<ServerConfig> config =
      ParseConfig(std::string(reinterpret_cast<const char*>(data), size));
  if (!config.ok()) return 0;
  Check(ValidateConfig(*config).ok(), "a parsed config fails ValidateConfig");
  const EngineConfig engine = ToEngineConfig(*config);
  Check(engine.max_running >= 1 && engine.max_waiting >= 1 && engine.max_tokens_limit >= 1,
        "engine limits below 1");
  absl::StatusOr<BackendOptions> backend = ToBackendOptions(*config);
  Check(backend.ok(), "a parsed config has no backend options");
  Check(backend->pool.memory_bytes > 0, "a KV cache of no bytes");
  return 0;
}
