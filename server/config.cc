#include "server/config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace spanserve {
namespace {

using Reader = std::function<absl::Status(const YAML::Node&, const std::string& path)>;

absl::Status BadValue(const std::string& path, const YAML::Node& node, const char* expected) {
  std::string got = node.IsScalar() ? "'" + node.Scalar() + "'"
                    : node.IsMap()  ? "a mapping"
                    : node.IsSequence() ? "a list"
                                         : "nothing";
  return absl::InvalidArgumentError(absl::StrCat(path, ": expected ", expected, ", got ", got));
}

template <typename T>
Reader Integer(T* out) {
  return [out](const YAML::Node& node, const std::string& path) -> absl::Status {
    int64_t value = 0;
    if (!node.IsScalar() || !YAML::convert<int64_t>::decode(node, value)) {
      return BadValue(path, node, "an integer");
    }
    if (value < std::numeric_limits<T>::min() || value > std::numeric_limits<T>::max()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", value, " is out of range"));
    }
    *out = static_cast<T>(value);
    return absl::OkStatus();
  };
}

template <typename T>
Reader Number(T* out) {
  return [out](const YAML::Node& node, const std::string& path) -> absl::Status {
    double value = 0;
    if (!node.IsScalar() || !YAML::convert<double>::decode(node, value)) {
      return BadValue(path, node, "a number");
    }
    *out = static_cast<T>(value);
    return absl::OkStatus();
  };
}

Reader IntegerList(std::vector<int64_t>* out) {
  return [out](const YAML::Node& node, const std::string& path) -> absl::Status {
    if (!node.IsSequence()) return BadValue(path, node, "a list of integers");
    out->clear();
    for (size_t i = 0; i < node.size(); ++i) {
      int64_t value = 0;
      if (!node[i].IsScalar() || !YAML::convert<int64_t>::decode(node[i], value)) {
        return BadValue(absl::StrCat(path, "[", i, "]"), node[i], "an integer");
      }
      out->push_back(value);
    }
    return absl::OkStatus();
  };
}

Reader Boolean(bool* out) {
  return [out](const YAML::Node& node, const std::string& path) -> absl::Status {
    if (!node.IsScalar() || !YAML::convert<bool>::decode(node, *out)) {
      return BadValue(path, node, "true or false");
    }
    return absl::OkStatus();
  };
}

Reader String(std::string* out) {
  return [out](const YAML::Node& node, const std::string& path) -> absl::Status {
    if (node.IsNull()) {
      out->clear();
      return absl::OkStatus();
    }
    if (!node.IsScalar()) return BadValue(path, node, "a string");
    *out = node.Scalar();
    return absl::OkStatus();
  };
}

// Every key of the file, by its dotted path.
std::vector<std::pair<std::string, Reader>> Fields(ServerConfig* c) {
  return {
      {"model.path", String(&c->model_path)},
      {"model.tensor_parallel_size", Integer(&c->tensor_parallel_size)},
      {"device", String(&c->device)},
      {"kv_cache.block_size", Integer(&c->kv_block_size)},
      {"kv_cache.num_blocks", Integer(&c->kv_num_blocks)},
      {"kv_cache.memory_mb", Integer(&c->kv_memory_mb)},
      {"kv_cache.gpu_memory_fraction", Number(&c->gpu_memory_fraction)},
      {"kv_cache.prefix_caching", Boolean(&c->kv_prefix_caching)},
      {"scheduler.max_running", Integer(&c->max_running)},
      {"scheduler.max_batched_tokens", Integer(&c->max_batched_tokens)},
      {"scheduler.max_waiting", Integer(&c->max_waiting)},
      {"limits.max_tokens", Integer(&c->max_tokens_limit)},
      {"limits.max_stop_sequences", Integer(&c->max_stop_sequences)},
      {"limits.max_stop_length", Integer(&c->max_stop_length)},
      {"defaults.max_tokens", Integer(&c->default_max_tokens)},
      {"defaults.temperature", Number(&c->default_temperature)},
      {"defaults.top_k", Integer(&c->default_top_k)},
      {"defaults.top_p", Number(&c->default_top_p)},
      {"defaults.span_mode", String(&c->default_span_mode)},
      {"server.bind_address", String(&c->bind_address)},
      {"server.port", Integer(&c->port)},
      {"server.metrics_port", Integer(&c->metrics_port)},
      {"server.http_port", Integer(&c->http_port)},
      {"server.drain_grace_seconds", Number(&c->drain_grace_seconds)},
      {"tls.cert_file", String(&c->tls_cert_file)},
      {"tls.key_file", String(&c->tls_key_file)},
      {"tls.client_ca_file", String(&c->tls_client_ca_file)},
      {"auth.api_keys_file", String(&c->auth_api_keys_file)},
      {"auth.protect_metrics", Boolean(&c->auth_protect_metrics)},
      {"logging.level", String(&c->log_level)},
      {"logging.format", String(&c->log_format)},
      {"debug.step_delay_ms", Integer(&c->debug_step_delay_ms)},
      {"debug.load_delay_ms", Integer(&c->debug_load_delay_ms)},
      {"debug.fail_steps", IntegerList(&c->debug_fail_steps)},
  };
}

// Reads `node` (at `path`, "" for the root) into the fields, rejecting keys no field has.
absl::Status ReadNode(const YAML::Node& node, const std::string& path,
                      const std::vector<std::pair<std::string, Reader>>& fields) {
  for (const auto& [field_path, read] : fields) {
    if (field_path == path) return read(node, path);
  }
  if (!node.IsMap()) {
    if (path.empty() && node.IsNull()) return absl::OkStatus();  // an empty file
    return BadValue(path.empty() ? "config" : path, node, "a mapping");
  }
  for (const auto& entry : node) {
    const std::string key = entry.first.Scalar();
    const std::string child = path.empty() ? key : path + "." + key;
    bool known = false;
    for (const auto& field : fields) {
      known |= field.first == child || field.first.starts_with(child + ".");
    }
    if (!known) return absl::InvalidArgumentError(absl::StrCat("unknown key '", child, "'"));
    if (absl::Status status = ReadNode(entry.second, child, fields); !status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status OneOf(const std::string& key, const std::string& value,
                   const std::vector<std::string>& choices) {
  for (const std::string& choice : choices) {
    if (value == choice) return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(key, ": must be one of ",
                                                 absl::StrJoin(choices, ", "), ", not '", value,
                                                 "'"));
}

absl::Status Range(const std::string& key, double value, double lo, double hi) {
  if (std::isfinite(value) && value >= lo && value <= hi) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(key, ": must be between ", lo, " and ", hi, ", not ", value));
}

absl::Status CheckFailSteps(const ServerConfig& c) {
  if (c.debug_fail_steps.empty()) return absl::OkStatus();
  if (!CpuFaultInjectionBuilt()) {
    return absl::InvalidArgumentError(
        "debug.fail_steps: this build has no fault injection (CMake SPANSERVE_FAULT_INJECTION "
        "is OFF; test builds only)");
  }
  if (c.device == "cuda") {
    return absl::InvalidArgumentError("debug.fail_steps: only the CPU backend injects faults");
  }
  for (size_t i = 0; i < c.debug_fail_steps.size(); ++i) {
    if (c.debug_fail_steps[i] < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "debug.fail_steps[", i, "]: must be >= 1, not ", c.debug_fail_steps[i]));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ServerConfig> ParseConfig(const std::string& yaml_text) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("not valid YAML: ", e.what()));
  }
  ServerConfig config;
  if (absl::Status status = ReadNode(root, "", Fields(&config)); !status.ok()) return status;
  if (absl::Status status = ValidateConfig(config); !status.ok()) return status;
  return config;
}

absl::StatusOr<ServerConfig> LoadConfigFile(const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat("config file ", path, ": cannot be read"));
  std::stringstream text;
  text << file.rdbuf();
  absl::StatusOr<ServerConfig> config = ParseConfig(text.str());
  if (!config.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config file ", path, ": ", config.status().message()));
  }
  return config;
}

absl::Status ValidateConfig(const ServerConfig& c) {
  const double kInt = std::numeric_limits<int32_t>::max();
  std::vector<absl::Status> checks = {
      c.model_path.empty() ? absl::InvalidArgumentError("model.path: must not be empty")
                           : absl::OkStatus(),
      OneOf("device", c.device, {"cpu", "cuda", "auto"}),
      Range("kv_cache.block_size", c.kv_block_size, 16, 256),
      Range("kv_cache.num_blocks", c.kv_num_blocks, 0, kInt),
      Range("model.tensor_parallel_size", c.tensor_parallel_size, 1, 64),
      Range("kv_cache.memory_mb", static_cast<double>(c.kv_memory_mb), 1, 1 << 24),
      c.gpu_memory_fraction > 0 && c.gpu_memory_fraction <= 1
          ? absl::OkStatus()
          : absl::InvalidArgumentError("kv_cache.gpu_memory_fraction: must be in (0, 1]"),
      Range("scheduler.max_running", c.max_running, 1, kInt),
      Range("scheduler.max_batched_tokens", c.max_batched_tokens, 1, kInt),
      Range("scheduler.max_waiting", c.max_waiting, 1, kInt),
      Range("limits.max_tokens", c.max_tokens_limit, 1, kInt),
      Range("limits.max_stop_sequences", c.max_stop_sequences, 0, 1024),
      Range("limits.max_stop_length", c.max_stop_length, 1, 65536),
      Range("defaults.max_tokens", c.default_max_tokens, 0, c.max_tokens_limit),
      Range("defaults.temperature", c.default_temperature, 0, 1e6),
      Range("defaults.top_k", c.default_top_k, 0, kInt),
      c.default_top_p > 0 && c.default_top_p <= 1
          ? absl::OkStatus()
          : absl::InvalidArgumentError("defaults.top_p: must be in (0, 1]"),
      OneOf("defaults.span_mode", c.default_span_mode, {"self_selected", "dense"}),
      c.bind_address.empty() ? absl::InvalidArgumentError("server.bind_address: must not be empty")
                             : absl::OkStatus(),
      Range("server.port", c.port, 0, 65535),
      Range("server.metrics_port", c.metrics_port, 0, 65535),
      c.port != 0 && c.port == c.metrics_port
          ? absl::InvalidArgumentError("server.metrics_port: must differ from server.port")
          : absl::OkStatus(),
      Range("server.http_port", c.http_port, 0, 65535),
      c.http_port != 0 && (c.http_port == c.port || c.http_port == c.metrics_port)
          ? absl::InvalidArgumentError(
                "server.http_port: must differ from server.port and server.metrics_port")
          : absl::OkStatus(),
      Range("server.drain_grace_seconds", c.drain_grace_seconds, 0, 86400),
      c.tls_cert_file.empty() != c.tls_key_file.empty()
          ? absl::InvalidArgumentError("tls: cert_file and key_file go together")
          : absl::OkStatus(),
      !c.tls_client_ca_file.empty() && c.tls_cert_file.empty()
          ? absl::InvalidArgumentError("tls.client_ca_file: needs cert_file and key_file")
          : absl::OkStatus(),
      c.auth_protect_metrics && c.auth_api_keys_file.empty()
          ? absl::InvalidArgumentError("auth.protect_metrics: needs auth.api_keys_file")
          : absl::OkStatus(),
      OneOf("logging.level", c.log_level, {"trace", "debug", "info", "warn", "error", "off"}),
      OneOf("logging.format", c.log_format, {"text", "json"}),
      Range("debug.step_delay_ms", c.debug_step_delay_ms, 0, 60000),
      Range("debug.load_delay_ms", c.debug_load_delay_ms, 0, 600000),
      CheckFailSteps(c),
  };
  for (const absl::Status& status : checks) {
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::StatusOr<SpanMode> ParseSpanMode(const std::string& name) {
  if (name == "self_selected") return SpanMode::kSelfSelected;
  if (name == "dense") return SpanMode::kDense;
  return absl::InvalidArgumentError(
      absl::StrCat("span mode must be self_selected or dense, not '", name, "'"));
}

EngineConfig ToEngineConfig(const ServerConfig& c) {
  EngineConfig engine;
  engine.max_running = c.max_running;
  engine.max_batched_tokens = c.max_batched_tokens;
  engine.max_waiting = c.max_waiting;
  engine.max_tokens_limit = c.max_tokens_limit;
  engine.max_stop_sequences = c.max_stop_sequences;
  engine.max_stop_length = c.max_stop_length;
  engine.prefix_caching = c.kv_prefix_caching;
  engine.default_span_mode = ParseSpanMode(c.default_span_mode).value_or(SpanMode::kSelfSelected);
  return engine;
}

absl::StatusOr<BackendOptions> ToBackendOptions(const ServerConfig& c) {
  absl::StatusOr<Device> device = ParseDevice(c.device);
  if (!device.ok()) return device.status();
  BackendOptions options;
  options.device = *device;
  options.pool.block_size = c.kv_block_size;
  options.pool.num_blocks = c.kv_num_blocks;
  options.pool.memory_bytes = c.kv_memory_mb << 20;
  options.gpu_memory_fraction = c.gpu_memory_fraction;
  options.cpu_faults.fail_steps = c.debug_fail_steps;
  options.tensor_parallel_size = c.tensor_parallel_size;
  return options;
}

}  // namespace spanserve
