#include "server/service.h"

#include <chrono>
#include <filesystem>
#include <mutex>
#include <random>

#include "absl/strings/str_cat.h"
#include "server/log.h"

namespace spanserve {
namespace {

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::OK: return "OK";
    case grpc::CANCELLED: return "CANCELLED";
    case grpc::UNKNOWN: return "UNKNOWN";
    case grpc::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND: return "NOT_FOUND";
    case grpc::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::ABORTED: return "ABORTED";
    case grpc::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::INTERNAL: return "INTERNAL";
    case grpc::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::DATA_LOSS: return "DATA_LOSS";
    case grpc::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

// absl and gRPC share the canonical status codes.
grpc::Status ToGrpcStatus(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kEos: return v1::FINISH_REASON_EOS;
    case FinishReason::kStop: return v1::FINISH_REASON_STOP;
    default: return v1::FINISH_REASON_UNSPECIFIED;
  }
}

v1::SpanMode ToProto(SpanMode mode) {
  return mode == SpanMode::kDense ? v1::SPAN_MODE_DENSE : v1::SPAN_MODE_SELF_SELECTED;
}

uint64_t RandomSeed() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return rng();
}

// The finish fields shared by GenerateResponse and the last GenerateStreamResponse.
template <typename Response>
void FillFinish(const GenerationEvent& event, bool return_spans, Response* out) {
  out->set_finish_reason(ToProto(event.finish_reason));
  out->mutable_usage()->set_prompt_tokens(event.prompt_tokens);
  out->mutable_usage()->set_generated_tokens(event.generated_tokens);
  v1::AttentionSaving* attention = out->mutable_attention();
  attention->set_kv_blocks_read(event.kv_blocks_read);
  attention->set_kv_blocks_dense(event.kv_blocks_dense);
  attention->set_attended_tokens(event.attended_tokens);
  attention->set_context_tokens(event.context_tokens);
  attention->set_saved_fraction(
      event.kv_blocks_dense > 0
          ? 1.0 - static_cast<double>(event.kv_blocks_read) / event.kv_blocks_dense
          : 0.0);
  if (!return_spans) return;
  for (const SegmentReport& report : event.segments) {
    v1::Segment* segment = out->add_segments();
    segment->set_id(report.id);
    segment->mutable_referenced_ids()->Add(report.refs.begin(), report.refs.end());
    segment->set_text(report.text);
    segment->set_in_prompt(report.in_prompt);
    segment->set_dense_fallback(report.dense_fallback);
  }
}

// What a unary and a streaming generation share: submitting to the engine, passing a client's
// cancel or expired deadline on to the engine, and the status of the finished generation.
// gRPC calls OnCancel and OnDone only after the method handler (which submits) has returned.
template <typename Reactor>
class GenerationCall : public Reactor {
 public:
  GenerationCall(SpanServeService* service, grpc::CallbackServerContext* context,
                 const char* rpc)
      : service_(service), context_(context), rpc_(rpc) {}

  // Called in the method handler. On any error the RPC finishes at once.
  void Start(const v1::GenerateRequest& proto) {
    grpc::Status status = service_->Authenticate(*context_);
    if (!status.ok()) return Complete(status);
    return_spans_ = proto.return_spans();
    status = service_->Availability();
    if (!status.ok()) return Complete(status);
    absl::StatusOr<GenerateRequest> request =
        ToEngineRequest(proto, service_->config(), &seed_);
    if (!request.ok()) return Complete(ToGrpcStatus(request.status()));
    absl::StatusOr<Engine::RequestId> id = service_->engine()->Submit(
        std::move(*request), [this](GenerationEvent&& event) { OnEvent(std::move(event)); });
    if (!id.ok()) return Complete(ToGrpcStatus(id.status()));
    id_ = *id;
    submitted_ = true;
  }

  void OnCancel() override {
    client_cancelled_ = true;
    if (submitted_) service_->engine()->Cancel(id_);
  }

  void OnDone() override { delete this; }

 protected:
  // Engine thread: one event of the generation.
  virtual void OnEvent(GenerationEvent&& event) = 0;
  // Finishes the RPC with `status` (for the stream: after writing what is pending).
  virtual void FinishRpc(const grpc::Status& status) = 0;

  void Complete(const grpc::Status& status) {
    Record(status);
    FinishRpc(status);
  }

  // Counts the finished RPC and logs its error, if any.
  void Record(const grpc::Status& status) {
    service_->metrics()->CountRequest(rpc_, CodeName(status.error_code()));
    if (!status.ok() && status.error_code() != grpc::CANCELLED &&
        status.error_code() != grpc::DEADLINE_EXCEEDED) {
      LogWarn("request_failed", {{"rpc", rpc_},
                                 {"code", CodeName(status.error_code())},
                                 {"message", status.error_message()}});
    }
  }

  // The RPC status of a finished generation that did not end normally; OK when it did.
  grpc::Status FinalStatus(const GenerationEvent& event) const {
    switch (event.finish_reason) {
      case FinishReason::kError:
        return grpc::Status(grpc::INTERNAL, "generation failed: " + event.error);
      case FinishReason::kCancelled:
        if (client_cancelled_) {
          const bool expired = context_->deadline() <= std::chrono::system_clock::now();
          return expired ? grpc::Status(grpc::DEADLINE_EXCEEDED, "deadline exceeded")
                         : grpc::Status(grpc::CANCELLED, "cancelled by the client");
        }
        return grpc::Status(grpc::UNAVAILABLE,
                            "the server shut down before the generation finished");
      default:
        return grpc::Status::OK;
    }
  }

  SpanServeService* const service_;
  grpc::CallbackServerContext* const context_;
  const char* const rpc_;
  bool return_spans_ = false;
  uint64_t seed_ = 0;
  std::atomic<bool> client_cancelled_{false};

 private:
  Engine::RequestId id_ = 0;
  std::atomic<bool> submitted_{false};
};

class GenerateCall final : public GenerationCall<grpc::ServerUnaryReactor> {
 public:
  GenerateCall(SpanServeService* service, grpc::CallbackServerContext* context,
               v1::GenerateResponse* response)
      : GenerationCall(service, context, "Generate"), response_(response) {}

 private:
  void OnEvent(GenerationEvent&& event) override {
    response_->mutable_text()->append(event.text);
    if (event.token >= 0) response_->add_token_ids(event.token);
    if (!event.finished) return;
    const grpc::Status status = FinalStatus(event);
    if (status.ok()) {
      FillFinish(event, return_spans_, response_);
      response_->set_seed(seed_);
    }
    Complete(status);
  }

  void FinishRpc(const grpc::Status& status) override { Finish(status); }

  v1::GenerateResponse* const response_;
};

// Events are buffered as they come; one write is in flight at a time, and it carries every
// token that arrived since the last one, so a slow reader gets groups of tokens. The engine
// thread only buffers: a write it makes due is started on the service's WriteQueue.
class GenerateStreamCall final
    : public GenerationCall<grpc::ServerWriteReactor<v1::GenerateStreamResponse>> {
 public:
  GenerateStreamCall(SpanServeService* service, grpc::CallbackServerContext* context)
      : GenerationCall(service, context, "GenerateStream") {}

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_now_ = false;
      if (!ok) broken_ = true;  // the client is gone: its cancel is on its way
    }
    Pump();
  }

 private:
  void OnEvent(GenerationEvent&& event) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.mutable_text()->append(event.text);
      if (event.token >= 0) pending_.add_token_ids(event.token);
      if (event.finished) {
        final_status_ = FinalStatus(event);
        if (final_status_.ok()) {
          FillFinish(event, return_spans_, &pending_);
          pending_.set_seed(seed_);
        }
        have_final_ = true;
      }
      // A write in flight takes the buffer when it is done (OnWriteDone); a posted pump will.
      if (writing_now_ || pump_posted_ || finishing_) return;
      pump_posted_ = true;
    }
    // The call lives until its Finish, which only the posted pump can start from here.
    service_->write_queue()->Post([this] { Pump(); });
  }

  void FinishRpc(const grpc::Status& status) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      final_status_ = status;
      have_final_ = true;
      counted_ = true;
    }
    Pump();
  }

  // Starts the next write or the finish, if one is due. gRPC is called outside the lock: a
  // reaction may run inline.
  void Pump() {
    enum { kNothing, kWrite, kWriteAndFinish, kFinish } action = kNothing;
    grpc::Status status;
    bool counted = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      pump_posted_ = false;
      if (finishing_ || writing_now_) return;
      const bool has_data = pending_.token_ids_size() > 0 || !pending_.text().empty();
      if (have_final_ && (broken_ || client_cancelled_ || !final_status_.ok())) {
        if (has_data && !broken_ && !client_cancelled_) {
          action = kWrite;  // what was generated before the error, then the error
        } else {
          action = kFinish;
        }
      } else if (have_final_) {
        action = kWriteAndFinish;  // pending_ carries the finish fields
      } else if (has_data && !broken_) {
        action = kWrite;
      }
      if (action == kNothing) return;
      status = final_status_;
      counted = counted_;
      if (action != kFinish) {
        writing_.Swap(&pending_);
        pending_.Clear();
        writing_now_ = action == kWrite;
      }
      finishing_ = action != kWrite;
    }
    if (action == kWrite) {
      StartWrite(&writing_);
      return;
    }
    // Reached once: record the RPC here unless Complete (an early error) already did.
    if (!counted) Record(status);
    if (action == kWriteAndFinish) {
      StartWriteAndFinish(&writing_, grpc::WriteOptions(), status);
    } else {
      Finish(status);
    }
  }

  std::mutex mu_;
  v1::GenerateStreamResponse pending_;   // arrived since the last write
  v1::GenerateStreamResponse writing_;   // owned by the write in flight
  bool writing_now_ = false;
  bool pump_posted_ = false;  // a Pump waits in the write queue
  bool broken_ = false;
  bool have_final_ = false;
  bool finishing_ = false;
  bool counted_ = false;
  grpc::Status final_status_;
};

}  // namespace

absl::StatusOr<GenerateRequest> ToEngineRequest(const v1::GenerateRequest& proto,
                                                const ServerConfig& config, uint64_t* seed) {
  GenerateRequest request;
  request.prompt = proto.prompt();
  request.segments.assign(proto.segments().begin(), proto.segments().end());
  const int32_t default_max_tokens =
      config.default_max_tokens > 0 ? config.default_max_tokens : config.max_tokens_limit;
  request.max_tokens = proto.has_max_tokens() ? proto.max_tokens() : default_max_tokens;
  request.max_tokens_is_default = !proto.has_max_tokens();
  request.sampling.temperature =
      proto.has_temperature() ? proto.temperature() : config.default_temperature;
  request.sampling.top_k = proto.has_top_k() ? proto.top_k() : config.default_top_k;
  request.sampling.top_p = proto.has_top_p() ? proto.top_p() : config.default_top_p;
  request.temperature_is_default = !proto.has_temperature();
  request.top_k_is_default = !proto.has_top_k();
  request.top_p_is_default = !proto.has_top_p();
  *seed = proto.has_seed() ? proto.seed() : RandomSeed();
  request.sampling.seed = *seed;
  request.stop.assign(proto.stop().begin(), proto.stop().end());
  switch (proto.span_mode()) {
    case v1::SPAN_MODE_UNSPECIFIED:
      request.span_mode = ParseSpanMode(config.default_span_mode).value_or(SpanMode::kSelfSelected);
      request.span_mode_is_default = true;
      break;
    case v1::SPAN_MODE_SELF_SELECTED:
      request.span_mode = SpanMode::kSelfSelected;
      break;
    case v1::SPAN_MODE_DENSE:
      request.span_mode = SpanMode::kDense;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("span_mode: unknown span mode ", static_cast<int>(proto.span_mode())));
  }
  request.include_span_markup = proto.include_span_markup();
  request.return_spans = proto.return_spans();
  request.ignore_eos = proto.ignore_eos();
  return request;
}

std::string ModelName(const Model& model) {
  const std::filesystem::path dir = std::filesystem::path(model.dir).lexically_normal();
  const std::string name = dir.filename().string();
  return name.empty() ? dir.parent_path().filename().string() : name;  // "models/x/"
}

void SpanServeService::SetEngine(Engine* engine, std::string backend_name) {
  backend_name_ = std::move(backend_name);
  engine_ = engine;
}

grpc::Status SpanServeService::Availability() const {
  if (draining_) return grpc::Status(grpc::UNAVAILABLE, "the server is shutting down");
  if (!engine_) return grpc::Status(grpc::UNAVAILABLE, "the model is still loading");
  return grpc::Status::OK;
}

grpc::Status SpanServeService::Authenticate(const grpc::CallbackServerContext& context) const {
  if (api_keys_ == nullptr) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  const auto header = metadata.find("authorization");
  const std::string_view value =
      header == metadata.end() ? std::string_view()
                               : std::string_view(header->second.data(), header->second.size());
  if (api_keys_->Allows(value)) return grpc::Status::OK;
  return grpc::Status(grpc::UNAUTHENTICATED, "missing or invalid API key");
}

grpc::ServerUnaryReactor* SpanServeService::Generate(grpc::CallbackServerContext* context,
                                                     const v1::GenerateRequest* request,
                                                     v1::GenerateResponse* response) {
  auto* call = new GenerateCall(this, context, response);
  call->Start(*request);
  return call;
}

grpc::ServerWriteReactor<v1::GenerateStreamResponse>* SpanServeService::GenerateStream(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  auto* call = new GenerateStreamCall(this, context);
  call->Start(*request);
  return call;
}

grpc::ServerUnaryReactor* SpanServeService::GetModelInfo(grpc::CallbackServerContext* context,
                                                         const v1::GetModelInfoRequest*,
                                                         v1::ModelInfo* info) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  grpc::Status status = Authenticate(*context);
  if (status.ok()) status = Availability();
  if (status.ok()) {
    const Engine& engine = *engine_.load();
    const Model& model = engine.model();
    const EngineStats stats = engine.Stats();
    info->set_name(ModelName(model));
    info->set_path(model.dir);
    info->set_backend(backend_name_);
    info->set_vocab_size(model.config.vocab_size);
    info->set_max_context(model.config.max_position_embeddings);
    info->set_num_layers(model.config.num_layers);
    info->set_hidden_size(model.config.hidden_size);
    info->set_num_heads(model.config.num_heads);
    info->set_num_kv_heads(model.config.num_kv_heads);
    info->set_anchor_token(model.span.anchor_token);
    info->set_header_end_token(model.span.header_end_token);
    static const char* kSegmentation[] = {"whole", "sentences", "paragraphs", "client"};
    info->set_prompt_segmentation(kSegmentation[static_cast<int>(model.span.prompt_segmentation)]);
    info->set_max_header_tokens(model.span.max_header_tokens);
    info->set_kv_block_size(config_.kv_block_size);
    info->set_kv_blocks_total(stats.kv_blocks_total);
    info->set_max_tokens_limit(engine.config().max_tokens_limit);
    info->set_default_max_tokens(config_.default_max_tokens);
    info->set_max_stop_sequences(engine.config().max_stop_sequences);
    info->set_max_stop_length(engine.config().max_stop_length);
    info->set_span_support(model.has_span_config);
    info->set_default_span_mode(
        ToProto(model.has_span_config ? engine.config().default_span_mode : SpanMode::kDense));
  }
  metrics_->CountRequest("GetModelInfo", CodeName(status.error_code()));
  reactor->Finish(status);
  return reactor;
}

}  // namespace spanserve
