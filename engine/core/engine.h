// The engine API: thread-safe submit and cancel, one engine loop thread, a stream of events
// back per request. The gRPC server sits on this; so do the benchmarks and the tests.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backends/backend.h"
#include "engine/core/types.h"
#include "engine/model/model.h"

namespace spanserve {

struct EngineConfig {
  int32_t max_running = 64;            // sequences decoding at once
  int32_t max_batched_tokens = 2048;   // rows per step (prefill chunks + decodes)
  int32_t max_waiting = 1024;          // queue limit: beyond it Submit says RESOURCE_EXHAUSTED
  int32_t max_tokens_limit = 4096;     // the largest max_tokens a request may ask
  int32_t max_stop_sequences = 8;
  int32_t max_stop_length = 64;        // bytes
  SpanMode default_span_mode = SpanMode::kSelfSelected;
  bool prefix_caching = true;          // reuse the KV of cached prompt blocks (docs/prefix_caching.md)
};

struct GenerateRequest {
  std::string prompt;                    // cut by the model's segmentation rule, or
  std::vector<std::string> segments;     // the client's own segments, or
  std::vector<int32_t> prompt_token_ids; // an encoded prompt, anchors included (benchmarks)
  int32_t max_tokens = 128;
  // max_tokens is a default the client did not ask for: fitted to the room the prompt leaves in
  // the context and the KV pool instead of refused.
  bool max_tokens_is_default = false;
  SamplingParams sampling;
  // Sampling fields and the span mode the client left out: the model's generation_config.json
  // may fill the first; a plain checkpoint (no span config) serves the second DENSE.
  bool temperature_is_default = false, top_p_is_default = false, top_k_is_default = false;
  bool span_mode_is_default = false;
  std::vector<std::string> stop;
  SpanMode span_mode = SpanMode::kSelfSelected;
  bool ignore_eos = false;
  bool include_span_markup = false;      // keep <a>header</a> in the returned text
  // The final event carries every segment's report. Its texts decode the whole prompt and
  // output on the engine thread (~1 ms at 3k tokens), so only a request that asks gets them.
  bool return_spans = false;
  std::vector<int32_t> forced_output;    // benchmarks: emit these tokens, computing every step
};

struct SegmentReport {
  int32_t id = 0;
  std::vector<int32_t> refs;
  std::string text;           // the segment's content text (no markup)
  bool in_prompt = false;
  bool dense_fallback = false;
};

struct GenerationEvent {
  int32_t token = -1;         // the new token, -1 on a finish-only event
  std::string text;           // newly visible text (held back while it may start a stop string)
  int32_t segment = -1;       // segment of the token (-1: sink)
  bool segment_opened = false;
  // Set on the last event of a request.
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  std::string error;
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;
  int64_t kv_blocks_read = 0;   // over all decode steps of the request
  int64_t kv_blocks_dense = 0;  // what dense attention would have read
  int64_t attended_tokens = 0;  // tokens attended, summed over the same steps
  int64_t context_tokens = 0;   // tokens in context (dense attention), summed likewise
  std::vector<SegmentReport> segments;
};

// Called on the engine thread; must not block.
using EventSink = std::function<void(GenerationEvent&&)>;

struct EngineStats {
  int32_t running = 0;
  int32_t waiting = 0;
  int32_t kv_blocks_used = 0;
  int32_t kv_blocks_total = 0;
  int32_t kv_blocks_cached = 0;  // cached prefix blocks no request holds (free, not in used)
  int64_t preemptions = 0;
  int64_t steps = 0;
};

struct StepStats {
  int32_t num_seqs = 0;
  int32_t num_rows = 0;
  double seconds = 0;            // the backend's Step
  // The engine thread's own work around it: choosing the work, building the batch (span
  // plans included), and handing out the tokens (sinks, stop strings, finishes).
  double schedule_seconds = 0;
  double build_seconds = 0;
  double emit_seconds = 0;
  int64_t kv_blocks_read = 0;    // decode rows of this step
  int64_t kv_blocks_dense = 0;
  std::vector<double> densities; // per decode row: attended tokens / (position + 1)
};

struct RequestStats {
  FinishReason finish_reason = FinishReason::kNone;
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;
  double time_to_first_token = -1;   // seconds; -1 if no token came
  double end_to_end = 0;
};

// The server turns these into metrics; the engine knows nothing of Prometheus.
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void OnStep(const StepStats&) {}
  virtual void OnInterTokenLatency(double /*seconds*/) {}
  virtual void OnRequestFinished(const RequestStats&) {}
  virtual void OnPreemption() {}
  virtual void OnHeaderFallback() {}
  // Prefix caching, over a step's admissions: tokens they needed KV for, and those found cached.
  virtual void OnPrefixCacheQuery(int64_t /*query_tokens*/, int64_t /*hit_tokens*/) {}
};

class Engine {
 public:
  using RequestId = uint64_t;

  virtual ~Engine() = default;

  // INVALID_ARGUMENT (naming the field) for a bad request, RESOURCE_EXHAUSTED when the
  // waiting queue is full, UNAVAILABLE once shutdown began. The sink sees every event.
  virtual absl::StatusOr<RequestId> Submit(GenerateRequest request, EventSink sink) = 0;
  // Finishes the request with kCancelled and frees its blocks, at any point. Unknown ids: no-op.
  virtual void Cancel(RequestId id) = 0;
  // Stops taking requests; lets in-flight ones finish for up to grace_seconds, cancels the rest,
  // stops the loop. Blocks until the loop has stopped.
  virtual void Shutdown(double grace_seconds) = 0;

  virtual EngineStats Stats() const = 0;
  // Forgets every cached prefix block no request holds (they become plain free blocks).
  // Returns once the engine thread has done it.
  virtual void DropPrefixCache() = 0;
  virtual const Model& model() const = 0;
  virtual const EngineConfig& config() const = 0;
};

absl::StatusOr<std::unique_ptr<Engine>> CreateEngine(std::shared_ptr<const Model> model,
                                                     std::unique_ptr<Backend> backend,
                                                     EngineConfig config,
                                                     EngineObserver* observer = nullptr);

}  // namespace spanserve
