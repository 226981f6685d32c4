// The server's YAML config: defaults, every section read, unknown keys and bad values rejected
// with the key's path, and the mapping onto the engine's and the backend's settings.
#include "server/config.h"

#include <fstream>

#include "absl/strings/match.h"

#include "gtest/gtest.h"

namespace spanserve {
namespace {

std::string ErrorOf(const std::string& yaml) {
  absl::StatusOr<ServerConfig> config = ParseConfig(yaml);
  EXPECT_FALSE(config.ok()) << yaml;
  return config.ok() ? "" : std::string(config.status().message());
}

TEST(Config, EmptyFileGivesDefaults) {
  absl::StatusOr<ServerConfig> config = ParseConfig("");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->port, 50051);
  EXPECT_EQ(config->kv_block_size, 16);
  EXPECT_EQ(config->default_span_mode, "self_selected");
}

TEST(Config, ReadsEverySection) {
  absl::StatusOr<ServerConfig> config = ParseConfig(R"(
model: {path: /models/x}
device: cpu
kv_cache: {block_size: 32, num_blocks: 100, memory_mb: 64, gpu_memory_fraction: 0.5}
scheduler: {max_running: 8, max_batched_tokens: 512, max_waiting: 16}
limits: {max_tokens: 1000, max_stop_sequences: 4, max_stop_length: 32}
defaults: {max_tokens: 50, temperature: 0.7, top_k: 40, top_p: 0.9, span_mode: dense}
server: {bind_address: 127.0.0.1, port: 6000, metrics_port: 6001, drain_grace_seconds: 2.5}
tls: {cert_file: a.pem, key_file: a.key, client_ca_file: ca.pem}
logging: {level: debug, format: json}
debug: {step_delay_ms: 5, load_delay_ms: 7}
)");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_path, "/models/x");
  EXPECT_EQ(config->device, "cpu");
  EXPECT_EQ(config->kv_block_size, 32);
  EXPECT_EQ(config->kv_num_blocks, 100);
  EXPECT_EQ(config->kv_memory_mb, 64);
  EXPECT_DOUBLE_EQ(config->gpu_memory_fraction, 0.5);
  EXPECT_EQ(config->max_running, 8);
  EXPECT_EQ(config->max_batched_tokens, 512);
  EXPECT_EQ(config->max_waiting, 16);
  EXPECT_EQ(config->max_tokens_limit, 1000);
  EXPECT_EQ(config->max_stop_sequences, 4);
  EXPECT_EQ(config->max_stop_length, 32);
  EXPECT_EQ(config->default_max_tokens, 50);
  EXPECT_FLOAT_EQ(config->default_temperature, 0.7f);
  EXPECT_EQ(config->default_top_k, 40);
  EXPECT_FLOAT_EQ(config->default_top_p, 0.9f);
  EXPECT_EQ(config->default_span_mode, "dense");
  EXPECT_EQ(config->bind_address, "127.0.0.1");
  EXPECT_EQ(config->port, 6000);
  EXPECT_EQ(config->metrics_port, 6001);
  EXPECT_DOUBLE_EQ(config->drain_grace_seconds, 2.5);
  EXPECT_EQ(config->tls_client_ca_file, "ca.pem");
  EXPECT_EQ(config->log_format, "json");
  EXPECT_EQ(config->debug_step_delay_ms, 5);
  EXPECT_EQ(config->debug_load_delay_ms, 7);

  const EngineConfig engine = ToEngineConfig(*config);
  EXPECT_EQ(engine.max_running, 8);
  EXPECT_EQ(engine.max_waiting, 16);
  EXPECT_EQ(engine.max_tokens_limit, 1000);
  EXPECT_EQ(engine.default_span_mode, SpanMode::kDense);
  absl::StatusOr<BackendOptions> backend = ToBackendOptions(*config);
  ASSERT_TRUE(backend.ok());
  EXPECT_EQ(backend->device, Device::kCpu);
  EXPECT_EQ(backend->pool.block_size, 32);
  EXPECT_EQ(backend->pool.num_blocks, 100);
  EXPECT_EQ(backend->pool.memory_bytes, int64_t{64} << 20);
}

TEST(Config, UnknownKeysNameTheirPath) {
  EXPECT_EQ(ErrorOf("prot: 5"), "unknown key 'prot'");
  EXPECT_EQ(ErrorOf("server: {prot: 5}"), "unknown key 'server.prot'");
  EXPECT_EQ(ErrorOf("kv_cache: {block_size: 16, blocks: 3}"), "unknown key 'kv_cache.blocks'");
}

TEST(Config, BadValuesNameTheirKey) {
  EXPECT_EQ(ErrorOf("server: {port: abc}"), "server.port: expected an integer, got 'abc'");
  EXPECT_EQ(ErrorOf("server: {port: 1.5}"), "server.port: expected an integer, got '1.5'");
  EXPECT_EQ(ErrorOf("server: {port: [1]}"), "server.port: expected an integer, got a list");
  EXPECT_EQ(ErrorOf("server: 5"), "server: expected a mapping, got '5'");
  EXPECT_EQ(ErrorOf("defaults: {temperature: hot}"),
            "defaults.temperature: expected a number, got 'hot'");
  EXPECT_EQ(ErrorOf("server: {port: 70000}"), "server.port: must be between 0 and 65535, not 70000");
  EXPECT_EQ(ErrorOf("kv_cache: {block_size: 8}"),
            "kv_cache.block_size: must be between 16 and 256, not 8");
  EXPECT_EQ(ErrorOf("device: tpu"), "device: must be one of cpu, cuda, auto, not 'tpu'");
  EXPECT_EQ(ErrorOf("defaults: {span_mode: sparse}"),
            "defaults.span_mode: must be one of self_selected, dense, not 'sparse'");
  EXPECT_EQ(ErrorOf("defaults: {top_p: 0}"), "defaults.top_p: must be in (0, 1]");
  EXPECT_EQ(ErrorOf("defaults: {temperature: .nan}"),
            "defaults.temperature: must be between 0 and 1e+06, not nan");
  EXPECT_EQ(ErrorOf("limits: {max_tokens: 10}\ndefaults: {max_tokens: 20}"),
            "defaults.max_tokens: must be between 0 and 10, not 20");
  EXPECT_EQ(ErrorOf("tls: {cert_file: a.pem}"), "tls: cert_file and key_file go together");
  EXPECT_EQ(ErrorOf("logging: {level: loud}"),
            "logging.level: must be one of trace, debug, info, warn, error, off, not 'loud'");
  EXPECT_EQ(ErrorOf("server: {port: 7000, metrics_port: 7000}"),
            "server.metrics_port: must differ from server.port");
  EXPECT_EQ(ErrorOf("server: {port: 99999999999}"), "server.port: 99999999999 is out of range");
  EXPECT_NE(ErrorOf("server: {port: [").find("not valid YAML"), std::string::npos);
}

TEST(Config, FileErrorsNameTheFile) {
  absl::StatusOr<ServerConfig> missing = LoadConfigFile("/nonexistent/spanserve.yaml");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/spanserve.yaml"), std::string::npos);

  const std::string path = ::testing::TempDir() + "/bad_config.yaml";
  std::ofstream(path) << "scheduler:\n  max_runing: 3\n";
  absl::StatusOr<ServerConfig> bad = LoadConfigFile(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            "config file " + path + ": unknown key 'scheduler.max_runing'");
}

TEST(Config, ShippedExampleLoads) {
  absl::StatusOr<ServerConfig> config =
      LoadConfigFile(std::string(SPANSERVE_SOURCE_DIR) + "/deploy/spanserve.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  // The example spells out the built-in defaults: a server started without --config behaves
  // as one started with it (the request defaults once disagreed, 128 against 256 tokens).
  const ServerConfig defaults;
  EXPECT_EQ(config->model_path, defaults.model_path);
  EXPECT_EQ(config->device, defaults.device);
  EXPECT_EQ(config->port, defaults.port);
  EXPECT_EQ(config->metrics_port, defaults.metrics_port);
  EXPECT_EQ(config->http_port, defaults.http_port);
  EXPECT_EQ(config->bind_address, defaults.bind_address);
  EXPECT_EQ(config->drain_grace_seconds, defaults.drain_grace_seconds);
  EXPECT_EQ(config->kv_block_size, defaults.kv_block_size);
  EXPECT_EQ(config->kv_num_blocks, defaults.kv_num_blocks);
  EXPECT_EQ(config->kv_memory_mb, defaults.kv_memory_mb);
  EXPECT_EQ(config->gpu_memory_fraction, defaults.gpu_memory_fraction);
  EXPECT_EQ(config->max_running, defaults.max_running);
  EXPECT_EQ(config->max_batched_tokens, defaults.max_batched_tokens);
  EXPECT_EQ(config->max_waiting, defaults.max_waiting);
  EXPECT_EQ(config->max_tokens_limit, defaults.max_tokens_limit);
  EXPECT_EQ(config->max_stop_sequences, defaults.max_stop_sequences);
  EXPECT_EQ(config->max_stop_length, defaults.max_stop_length);
  EXPECT_EQ(config->default_max_tokens, defaults.default_max_tokens);
  EXPECT_EQ(config->default_temperature, defaults.default_temperature);
  EXPECT_EQ(config->default_top_k, defaults.default_top_k);
  EXPECT_EQ(config->default_top_p, defaults.default_top_p);
  EXPECT_EQ(config->default_span_mode, defaults.default_span_mode);
  EXPECT_EQ(config->log_level, defaults.log_level);
  EXPECT_EQ(config->log_format, defaults.log_format);
}

TEST(Config, HttpPort) {
  EXPECT_EQ(ServerConfig().http_port, 8000);
  absl::StatusOr<ServerConfig> config = ParseConfig("server: {http_port: 8123}");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->http_port, 8123);
  config = ParseConfig("server: {http_port: 0}");  // off
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->http_port, 0);
  // With port and metrics_port 0 (any free port), an explicit HTTP port clashes with neither.
  EXPECT_TRUE(ParseConfig("server: {port: 0, metrics_port: 0, http_port: 8123}").ok());
  EXPECT_EQ(ErrorOf("server: {http_port: 50051}"),
            "server.http_port: must differ from server.port and server.metrics_port");
  EXPECT_EQ(ErrorOf("server: {http_port: 9090}"),
            "server.http_port: must differ from server.port and server.metrics_port");
  EXPECT_EQ(ErrorOf("server: {http_port: 65536}"),
            "server.http_port: must be between 0 and 65535, not 65536");
  EXPECT_EQ(ErrorOf("server: {http_port: -1}"),
            "server.http_port: must be between 0 and 65535, not -1");
  EXPECT_EQ(ErrorOf("server: {http_port: web}"),
            "server.http_port: expected an integer, got 'web'");
}

TEST(Config, TensorParallelSize) {
  EXPECT_EQ(ServerConfig().tensor_parallel_size, 1);
  absl::StatusOr<ServerConfig> config = ParseConfig("model: {tensor_parallel_size: 4}");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->tensor_parallel_size, 4);
  absl::StatusOr<BackendOptions> options = ToBackendOptions(*config);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->tensor_parallel_size, 4);
  EXPECT_EQ(ErrorOf("model: {tensor_parallel_size: 0}"),
            "model.tensor_parallel_size: must be between 1 and 64, not 0");
}

TEST(Config, FailSteps) {
  // Test builds (SPANSERVE_FAULT_INJECTION) take them and hand them to the CPU backend; other
  // builds refuse them, naming the build option, rather than serve without the fault asked for.
  absl::StatusOr<ServerConfig> config = ParseConfig("debug: {fail_steps: [3, 7]}");
  if (CpuFaultInjectionBuilt()) {
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->debug_fail_steps, (std::vector<int64_t>{3, 7}));
    absl::StatusOr<BackendOptions> backend = ToBackendOptions(*config);
    ASSERT_TRUE(backend.ok()) << backend.status();
    EXPECT_EQ(backend->cpu_faults.fail_steps, (std::vector<int64_t>{3, 7}));
    EXPECT_EQ(ErrorOf("debug: {fail_steps: [3, 0]}"), "debug.fail_steps[1]: must be >= 1, not 0");
    EXPECT_EQ(ErrorOf("device: cuda\ndebug: {fail_steps: [3]}"),
              "debug.fail_steps: only the CPU backend injects faults");
  } else {
    ASSERT_FALSE(config.ok());
    EXPECT_TRUE(absl::StrContains(config.status().message(), "SPANSERVE_FAULT_INJECTION is OFF"))
        << config.status();
  }
  EXPECT_TRUE(ParseConfig("debug: {fail_steps: []}").ok());  // none: any build
  EXPECT_EQ(ErrorOf("debug: {fail_steps: 3}"),
            "debug.fail_steps: expected a list of integers, got '3'");
  EXPECT_EQ(ErrorOf("debug: {fail_steps: [x]}"),
            "debug.fail_steps[0]: expected an integer, got 'x'");
}

TEST(Config, Auth) {
  absl::StatusOr<ServerConfig> config =
      ParseConfig("auth: {api_keys_file: /etc/keys.txt, protect_metrics: true}");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->auth_api_keys_file, "/etc/keys.txt");
  EXPECT_TRUE(config->auth_protect_metrics);
  config = ParseConfig("auth: {api_keys_file: keys.txt}");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->auth_protect_metrics);

  EXPECT_EQ(ErrorOf("auth: {api_keys_file: k, protect_metrics: maybe}"),
            "auth.protect_metrics: expected true or false, got 'maybe'");
  EXPECT_EQ(ErrorOf("auth: {protect_metrics: true}"),
            "auth.protect_metrics: needs auth.api_keys_file");
  EXPECT_EQ(ErrorOf("auth: {api_keys: k}"), "unknown key 'auth.api_keys'");

  // Off by default, in the built-in defaults and in the shipped example alike.
  const ServerConfig defaults;
  EXPECT_TRUE(defaults.auth_api_keys_file.empty());
  EXPECT_FALSE(defaults.auth_protect_metrics);
  absl::StatusOr<ServerConfig> example =
      LoadConfigFile(std::string(SPANSERVE_SOURCE_DIR) + "/deploy/spanserve.yaml");
  ASSERT_TRUE(example.ok()) << example.status();
  EXPECT_EQ(example->auth_api_keys_file, defaults.auth_api_keys_file);
  EXPECT_EQ(example->auth_protect_metrics, defaults.auth_protect_metrics);
}

}  // namespace
}  // namespace spanserve
