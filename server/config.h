// Server configuration: one YAML file (every key optional, every key defaulted), then
// command-line flags on top. deploy/spanserve.yaml documents every setting.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backends/backend_factory.h"
#include "engine/core/engine.h"

namespace spanserve {

struct ServerConfig {
  // model:
  std::string model_path = "models/arith-small";
  // Megatron tensor parallelism over this many ranks: the CPU backend simulates them
  // (engine/model/tensor_parallel.h); the CUDA backend runs on one GPU only so far.
  int32_t tensor_parallel_size = 1;
  // device: cpu | cuda | auto
  std::string device = "auto";
  // kv_cache:
  int32_t kv_block_size = 16;           // tokens per block, 16..256
  int32_t kv_num_blocks = 0;            // 0: sized from kv_memory_mb (cpu) / gpu_memory_fraction
  int64_t kv_memory_mb = 256;           // cpu: memory for the KV cache when kv_num_blocks is 0
  double gpu_memory_fraction = 0.9;     // cuda: share of free GPU memory, (0, 1]
  bool kv_prefix_caching = true;        // reuse cached prompt blocks (docs/prefix_caching.md)
  // scheduler:
  int32_t max_running = 64;
  int32_t max_batched_tokens = 2048;
  int32_t max_waiting = 1024;           // the queue limit
  // limits:
  int32_t max_tokens_limit = 4096;
  int32_t max_stop_sequences = 8;
  int32_t max_stop_length = 64;
  // defaults: (for request fields left unset)
  // 0: the room the prompt leaves in the context and the KV cache, at most max_tokens_limit
  // (vLLM's behaviour); else that many, cut to the same room.
  int32_t default_max_tokens = 0;
  float default_temperature = 0.0f;
  int32_t default_top_k = 0;
  float default_top_p = 1.0f;
  std::string default_span_mode = "self_selected";  // self_selected | dense
  // server:
  std::string bind_address = "0.0.0.0";
  int32_t port = 50051;                 // 0: any free port (logged)
  int32_t metrics_port = 9090;          // 0: any free port (logged)
  int32_t http_port = 8000;             // the OpenAI-compatible HTTP API; 0: off
  double drain_grace_seconds = 30;
  // tls: both files set turns TLS on; client_ca_file also asks for client certificates.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // auth: a file of API keys (server/api_keys.h); set, every SpanServe RPC (and the HTTP API)
  // needs `authorization: Bearer <key>`. SIGHUP re-reads it.
  std::string auth_api_keys_file;
  bool auth_protect_metrics = false;    // /metrics needs a key too
  // logging:
  std::string log_level = "info";       // trace | debug | info | warn | error | off
  std::string log_format = "text";      // text (key=value) | json
  // debug:
  int32_t debug_step_delay_ms = 0;      // sleeps before each engine step (tests, demos)
  int32_t debug_load_delay_ms = 0;      // sleeps before loading the model (tests)
  // Engine steps (1-based) the CPU backend fails with INTERNAL; test builds only
  // (engine/backends/cpu_backend.h), refused elsewhere.
  std::vector<int64_t> debug_fail_steps;
};

// Reads a YAML config file over the defaults. Unknown keys and bad values are errors naming
// the key's path (e.g. "kv_cache.block_size").
absl::StatusOr<ServerConfig> LoadConfigFile(const std::string& path);
// The same, from YAML text (tests).
absl::StatusOr<ServerConfig> ParseConfig(const std::string& yaml_text);
// Checks every value's range and choice; the file loader calls it, and main again after flags.
absl::Status ValidateConfig(const ServerConfig& config);

absl::StatusOr<SpanMode> ParseSpanMode(const std::string& name);
EngineConfig ToEngineConfig(const ServerConfig& config);
absl::StatusOr<BackendOptions> ToBackendOptions(const ServerConfig& config);

}  // namespace spanserve
