// spanserve: the gRPC inference server. Starts the gRPC and /metrics endpoints at once (health
// NOT_SERVING), loads the model, serves; SIGHUP re-reads the API keys; SIGTERM or SIGINT drains
// and exits 0.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cerrno>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "engine/backends/backend_factory.h"
#include "engine/core/engine.h"
#include "server/api_keys.h"
#include "server/config.h"
#include "server/http_api.h"
#include "server/log.h"
#include "server/metrics_http.h"
#include "server/server_metrics.h"
#include "server/service.h"

namespace spanserve {
namespace {

constexpr char kServiceName[] = "spanserve.v1.SpanServe";

// Slows each step down by a fixed delay (config debug.step_delay_ms): lets tests and demos
// watch long generations on a small model.
class DelayedBackend : public Backend {
 public:
  DelayedBackend(std::unique_ptr<Backend> inner, int delay_ms)
      : inner_(std::move(inner)), delay_(delay_ms) {}
  std::string name() const override { return inner_->name(); }
  absl::Status Step(const StepBatch& batch, StepOutput* out) override {
    std::this_thread::sleep_for(delay_);
    return inner_->Step(batch, out);
  }
  int32_t num_kv_blocks() const override { return inner_->num_kv_blocks(); }
  int32_t block_size() const override { return inner_->block_size(); }
  int32_t vocab_size() const override { return inner_->vocab_size(); }

 private:
  std::unique_ptr<Backend> inner_;
  std::chrono::milliseconds delay_;
};

// SIGTERM, SIGINT and SIGHUP, through a pipe: the handler (which may run on any thread, some
// started by libraries before main) only writes the signal number; Wait reads it.
class SignalPipe {
 public:
  SignalPipe() {
    if (pipe(pipe_) != 0) pipe_[0] = pipe_[1] = -1;
    write_end_ = pipe_[1];
    struct sigaction action = {};
    action.sa_handler = [](int signal) {
      const char byte = static_cast<char>(signal);
      [[maybe_unused]] ssize_t n = write(write_end_, &byte, 1);
    };
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &action, nullptr);
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGHUP, &action, nullptr);
  }
  // Blocks until a signal came; returns it.
  int Wait() {
    char byte = 0;
    while (read(pipe_[0], &byte, 1) < 0 && errno == EINTR) {
    }
    return byte;
  }

 private:
  static inline int write_end_ = -1;
  int pipe_[2];
};

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError("cannot read " + path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerConfig& c) {
  if (c.tls_cert_file.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options;
  absl::StatusOr<std::string> cert = ReadFile(c.tls_cert_file);
  absl::StatusOr<std::string> key = ReadFile(c.tls_key_file);
  if (!cert.ok()) return absl::NotFoundError("tls.cert_file: " + std::string(cert.status().message()));
  if (!key.ok()) return absl::NotFoundError("tls.key_file: " + std::string(key.status().message()));
  options.pem_key_cert_pairs.push_back({*key, *cert});
  if (!c.tls_client_ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadFile(c.tls_client_ca_file);
    if (!ca.ok()) {
      return absl::NotFoundError("tls.client_ca_file: " + std::string(ca.status().message()));
    }
    options.pem_root_certs = *ca;
    options.client_certificate_request =
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

// Leaves server reflection out of a server (the plugin registers itself with every builder):
// with API keys set, reflection would be the one unauthenticated service besides health.
class WithoutReflection : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    std::erase_if(*plugins, [](const auto& plugin) {
      return plugin->name() == "proto_server_reflection";
    });
  }
};

// SIGHUP: re-reads the API key file; a bad file keeps the keys in force. Logs counts, never keys.
void ReloadApiKeys(ApiKeys* keys) {
  if (keys == nullptr) {
    LogInfo("sighup_ignored", {{"reason", "no auth.api_keys_file"}});
    return;
  }
  if (absl::Status status = keys->Reload(); !status.ok()) {
    LogError("api_keys_reload_failed", {{"message", status.message()},
                                        {"count_kept", static_cast<int64_t>(keys->size())}});
    return;
  }
  LogInfo("api_keys_reloaded", {{"count", static_cast<int64_t>(keys->size())}});
}

std::string HostPort(const std::string& host, int port) {
  const bool ipv6 = host.find(':') != std::string::npos && host.front() != '[';
  return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// Loads the model and builds backend and engine. Logs progress for large models.
absl::StatusOr<std::unique_ptr<Engine>> LoadEngine(const ServerConfig& config,
                                                   EngineObserver* observer,
                                                   std::string* backend_name) {
  if (config.debug_load_delay_ms > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(config.debug_load_delay_ms));
  }
  LogInfo("model_load_start", {{"path", config.model_path}});
  const auto start = std::chrono::steady_clock::now();
  LoadOptions load;
  int last_tenth = -1;
  load.progress = [&last_tenth](int64_t done, int64_t total) {
    if (total < (int64_t{256} << 20)) return;  // small models load in a blink
    const int tenth = static_cast<int>(done * 10 / std::max<int64_t>(total, 1));
    if (tenth == last_tenth) return;
    last_tenth = tenth;
    LogInfo("model_load_progress", {{"percent", tenth * 10}, {"bytes_done", done},
                                    {"bytes_total", total}});
  };
  absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(config.model_path, load);
  if (!model.ok()) return model.status();
  std::shared_ptr<const Model> shared_model = std::move(*model);

  absl::StatusOr<BackendOptions> options = ToBackendOptions(config);
  if (!options.ok()) return options.status();
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend(shared_model, *options);
  if (!backend.ok()) return backend.status();
  *backend_name = (*backend)->name();
  const int32_t kv_blocks = (*backend)->num_kv_blocks();
  std::unique_ptr<Backend> chosen = std::move(*backend);
  if (config.debug_step_delay_ms > 0) {
    chosen = std::make_unique<DelayedBackend>(std::move(chosen), config.debug_step_delay_ms);
  }
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      CreateEngine(shared_model, std::move(chosen), ToEngineConfig(config), observer);
  if (!engine.ok()) return engine.status();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const ModelConfig& mc = shared_model->config;
  LogInfo("model_loaded", {{"path", config.model_path}, {"backend", *backend_name},
                           {"layers", mc.num_layers}, {"hidden", mc.hidden_size},
                           {"vocab", mc.vocab_size}, {"context", mc.max_position_embeddings},
                           {"kv_blocks", kv_blocks}, {"kv_block_size", config.kv_block_size},
                           {"seconds", seconds}});
  if (!shared_model->has_span_config) {
    LogWarn("plain_checkpoint", {{"path", config.model_path},
                                 {"message", "no spanserve.json: served DENSE only; "
                                             "SELF_SELECTED requests are refused"}});
  }
  return engine;
}

struct Flags {
  std::string config_path;
  ServerConfig overrides;
};

int Run(int argc, char** argv) {
  SignalPipe signals;

  CLI::App app{"spanserve: gRPC LLM server with self-selected attention spans"};
  std::string config_path;
  ServerConfig flags;
  app.add_option("--config", config_path, "YAML config file (see deploy/spanserve.yaml)");
  CLI::Option* model = app.add_option("--model", flags.model_path, "model directory");
  CLI::Option* device = app.add_option("--device", flags.device, "cpu, cuda or auto");
  CLI::Option* tensor_parallel = app.add_option(
      "--tensor-parallel-size", flags.tensor_parallel_size,
      "tensor-parallel ranks (the CPU backend simulates them; CUDA: 1)");
  CLI::Option* port = app.add_option("--port", flags.port, "gRPC port (0: any free port)");
  CLI::Option* metrics_port =
      app.add_option("--metrics-port", flags.metrics_port, "/metrics port (0: any free port)");
  CLI::Option* http_port =
      app.add_option("--http-port", flags.http_port, "OpenAI-compatible HTTP API port (0: off)");
  CLI::Option* bind = app.add_option("--bind-address", flags.bind_address, "address to bind");
  CLI::Option* log_level = app.add_option("--log-level", flags.log_level, "log level");
  CLI::Option* log_format = app.add_option("--log-format", flags.log_format, "text or json");
  CLI::Option* grace = app.add_option("--drain-grace-seconds", flags.drain_grace_seconds,
                                      "time in-flight requests get to finish on shutdown");
  CLI::Option* block_size = app.add_option("--kv-block-size", flags.kv_block_size,
                                           "tokens per KV block");
  CLI::Option* kv_blocks = app.add_option("--kv-blocks", flags.kv_num_blocks,
                                          "KV blocks in the pool (0: from memory)");
  bool no_prefix_caching = false;
  app.add_flag("--no-prefix-caching", no_prefix_caching, "turn kv_cache.prefix_caching off");
  CLI::Option* max_running = app.add_option("--max-running", flags.max_running,
                                            "sequences decoding at once");
  CLI::Option* max_waiting = app.add_option("--max-waiting", flags.max_waiting,
                                            "waiting queue limit");
  CLI::Option* api_key_file = app.add_option("--api-key-file", flags.auth_api_keys_file,
                                             "API keys, one a line: every RPC needs one");
  CLI11_PARSE(app, argc, argv);

  ServerConfig config;
  if (!config_path.empty()) {
    absl::StatusOr<ServerConfig> loaded = LoadConfigFile(config_path);
    if (!loaded.ok()) {
      std::cerr << "spanserve: " << loaded.status().message() << "\n";
      return 2;
    }
    config = *loaded;
  }
  if (model->count()) config.model_path = flags.model_path;
  if (device->count()) config.device = flags.device;
  if (tensor_parallel->count()) config.tensor_parallel_size = flags.tensor_parallel_size;
  if (port->count()) config.port = flags.port;
  if (metrics_port->count()) config.metrics_port = flags.metrics_port;
  if (http_port->count()) config.http_port = flags.http_port;
  if (bind->count()) config.bind_address = flags.bind_address;
  if (log_level->count()) config.log_level = flags.log_level;
  if (log_format->count()) config.log_format = flags.log_format;
  if (grace->count()) config.drain_grace_seconds = flags.drain_grace_seconds;
  if (block_size->count()) config.kv_block_size = flags.kv_block_size;
  if (kv_blocks->count()) config.kv_num_blocks = flags.kv_num_blocks;
  if (no_prefix_caching) config.kv_prefix_caching = false;
  if (max_running->count()) config.max_running = flags.max_running;
  if (max_waiting->count()) config.max_waiting = flags.max_waiting;
  if (api_key_file->count()) config.auth_api_keys_file = flags.auth_api_keys_file;
  if (absl::Status status = ValidateConfig(config); !status.ok()) {
    std::cerr << "spanserve: " << status.message() << "\n";
    return 2;
  }

  InitLogging(config.log_level, config.log_format);
  LogInfo("start", {{"version", "0.1.0"}, {"config", config_path}, {"model", config.model_path},
                    {"device", config.device}, {"pid", static_cast<int>(getpid())}});

  std::unique_ptr<ApiKeys> api_keys;
  if (!config.auth_api_keys_file.empty()) {
    absl::StatusOr<std::unique_ptr<ApiKeys>> loaded = ApiKeys::Load(config.auth_api_keys_file);
    if (!loaded.ok()) {
      LogError("api_keys_error", {{"message", loaded.status().message()}});
      return 1;
    }
    api_keys = std::move(*loaded);
    LogInfo("api_keys_loaded", {{"count", static_cast<int64_t>(api_keys->size())},
                                {"protect_metrics", config.auth_protect_metrics}});
  }
  // For /metrics and the HTTP API: the same keys as gRPC.
  auto authorize = [keys = api_keys.get()](std::string_view header) {
    return keys->Allows(header);
  };

  metrics::Registry registry;
  ServerMetrics server_metrics(&registry);
  MetricsObserver observer(&server_metrics);
  SpanServeService service(config, &server_metrics, api_keys.get());
  registry.AddCollectHook([&] {
    if (Engine* engine = service.engine()) server_metrics.SetEngineStats(engine->Stats());
  });

  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = Credentials(config);
  if (!credentials.ok()) {
    LogError("tls_error", {{"message", credentials.status().message()}});
    return 1;
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (api_keys) builder.SetOption(std::make_unique<WithoutReflection>());
  int grpc_port = 0;
  builder.AddListeningPort(HostPort(config.bind_address, config.port), *credentials, &grpc_port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || grpc_port == 0) {
    LogError("listen_failed", {{"address", HostPort(config.bind_address, config.port)}});
    return 1;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(false);
  health->SetServingStatus(kServiceName, false);

  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> metrics_http =
      MetricsHttpServer::Start(&registry, config.bind_address, config.metrics_port,
                               config.auth_protect_metrics ? MetricsHttpServer::Authorize(authorize)
                                                           : nullptr);
  if (!metrics_http.ok()) {
    LogError("listen_failed", {{"message", metrics_http.status().message()}});
    server->Shutdown();
    return 1;
  }
  std::unique_ptr<HttpApi> http_api;  // the OpenAI-compatible API, unless http_port is 0
  if (config.http_port != 0) {
    HttpApiOptions http_options;
    if (api_keys) http_options.authorize = authorize;
    absl::StatusOr<std::unique_ptr<HttpApi>> started =
        HttpApi::Start(&service, std::move(http_options));
    if (!started.ok()) {
      LogError("listen_failed", {{"message", started.status().message()}});
      server->Shutdown();
      (*metrics_http)->Stop();
      return 1;
    }
    http_api = std::move(*started);
  }
  LogInfo("listening", {{"address", config.bind_address}, {"grpc_port", grpc_port},
                        {"metrics_port", (*metrics_http)->port()},
                        {"http_port", http_api ? http_api->port() : 0},
                        {"tls", !config.tls_cert_file.empty()}});

  std::string backend_name;
  absl::StatusOr<std::unique_ptr<Engine>> engine = LoadEngine(config, &observer, &backend_name);
  if (!engine.ok()) {
    LogError("model_load_failed", {{"path", config.model_path},
                                   {"message", engine.status().message()}});
    server->Shutdown();
    (*metrics_http)->Stop();
    if (http_api) http_api->Stop();
    return 1;
  }
  service.SetEngine(engine->get(), backend_name);
  health->SetServingStatus(true);
  health->SetServingStatus(kServiceName, true);
  LogInfo("serving", {{"grpc_port", grpc_port}});

  int signal = 0;
  while ((signal = signals.Wait()) == SIGHUP) ReloadApiKeys(api_keys.get());
  health->Shutdown();  // NOT_SERVING from now on
  service.StartDraining();
  LogInfo("draining", {{"signal", signal == SIGTERM ? "SIGTERM" : "SIGINT"},
                       {"grace_seconds", config.drain_grace_seconds}});
  (*engine)->Shutdown(config.drain_grace_seconds);
  // Every generation has finished; give the last writes a moment to reach their clients.
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (http_api) http_api->Stop();  // its handlers touch the engine until they return
  (*metrics_http)->Stop();
  service.SetEngine(nullptr, backend_name);
  engine->reset();
  LogInfo("stopped");
  return 0;
}

}  // namespace
}  // namespace spanserve

int main(int argc, char** argv) { return spanserve::Run(argc, argv); }
