// The SpanServe gRPC service on the callback API: each RPC is a reactor that converts the
// request, submits it to the engine, and turns the engine's events (which arrive on the engine
// thread) into the response or the stream. No gRPC thread blocks on a generation.
#pragma once

#include <atomic>
#include <string>

#include "engine/core/engine.h"
#include "server/api_keys.h"
#include "server/config.h"
#include "server/server_metrics.h"
#include "server/write_queue.h"
#include "spanserve/v1/spanserve.grpc.pb.h"

namespace spanserve {

class SpanServeService final : public v1::SpanServe::CallbackService {
 public:
  // With api_keys, every RPC needs `authorization: Bearer <key>` for one of them.
  SpanServeService(const ServerConfig& config, ServerMetrics* metrics,
                   const ApiKeys* api_keys = nullptr)
      : config_(config), metrics_(metrics), api_keys_(api_keys) {}

  // Until the engine is set, RPCs answer UNAVAILABLE (the model is loading).
  void SetEngine(Engine* engine, std::string backend_name);
  // From now on, new RPCs answer UNAVAILABLE; in-flight ones go on.
  void StartDraining() { draining_ = true; }

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const v1::GenerateRequest* request,
                                     v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

  // Internal to the reactors.
  Engine* engine() const { return engine_.load(); }
  const ServerConfig& config() const { return config_; }
  ServerMetrics* metrics() const { return metrics_; }
  WriteQueue* write_queue() { return &write_queue_; }
  // UNAVAILABLE while loading or draining, else OK.
  grpc::Status Availability() const;
  // UNAUTHENTICATED unless the call carries one of the API keys (OK when none are set).
  grpc::Status Authenticate(const grpc::CallbackServerContext& context) const;

 private:
  const ServerConfig config_;
  ServerMetrics* metrics_;
  const ApiKeys* const api_keys_;
  std::atomic<Engine*> engine_{nullptr};
  std::string backend_name_;
  std::atomic<bool> draining_{false};
  WriteQueue write_queue_{2};  // the streams' writes, off the engine thread
};

// The engine request for a protocol request: unset fields take the configured defaults, a
// missing seed is drawn at random (*seed gets the one used). INVALID_ARGUMENT for protocol-level
// errors (an unknown span_mode); field values are checked by the engine.
absl::StatusOr<GenerateRequest> ToEngineRequest(const v1::GenerateRequest& request,
                                                const ServerConfig& config, uint64_t* seed);

// The served model's name: its directory's name (GetModelInfo.name, the HTTP API's model id).
std::string ModelName(const Model& model);

}  // namespace spanserve
