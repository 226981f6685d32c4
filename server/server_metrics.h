// spanserve's metrics (names follow Prometheus conventions: spanserve_ prefix, base units,
// _total on counters) and the bridge that feeds them from the engine's observer callbacks.
#pragma once

#include <string>

#include "engine/core/engine.h"
#include "server/metrics.h"

namespace spanserve {

class ServerMetrics {
 public:
  explicit ServerMetrics(metrics::Registry* registry);

  // One finished RPC: rpc is the method name, code the gRPC status code name (e.g. "OK").
  void CountRequest(const std::string& rpc, const std::string& code);
  // The engine's gauges, read at scrape time.
  void SetEngineStats(const EngineStats& stats);

  metrics::Family<metrics::Counter>& requests;
  metrics::Family<metrics::Counter>& finished;
  metrics::Counter& prompt_tokens;
  metrics::Counter& generated_tokens;
  metrics::Histogram& time_to_first_token;
  metrics::Histogram& inter_token_latency;
  metrics::Histogram& request_duration;
  metrics::Gauge& running;
  metrics::Gauge& waiting;
  metrics::Gauge& kv_blocks_used;
  metrics::Gauge& kv_blocks_capacity;
  metrics::Counter& preemptions;
  metrics::Histogram& batch_size;
  metrics::Family<metrics::Histogram>& step_duration;  // by phase: decode, prefill
  metrics::Histogram& decode_step_duration;            // its two children, looked up once
  metrics::Histogram& prefill_step_duration;
  metrics::Family<metrics::Counter>& engine_loop;  // by phase: schedule, build, backend, emit
  metrics::Counter& loop_schedule;
  metrics::Counter& loop_build;
  metrics::Counter& loop_backend;
  metrics::Counter& loop_emit;
  metrics::Histogram& attention_density;
  metrics::Counter& kv_blocks_read;
  metrics::Counter& kv_blocks_dense;
  metrics::Counter& header_fallbacks;
  metrics::Gauge& kv_blocks_cached;
  metrics::Counter& prefix_cache_queries;
  metrics::Counter& prefix_cache_hits;
};

// Called on the engine thread: only atomic updates and short locks.
class MetricsObserver : public EngineObserver {
 public:
  explicit MetricsObserver(ServerMetrics* metrics) : m_(metrics) {}
  void OnStep(const StepStats& stats) override;
  void OnInterTokenLatency(double seconds) override;
  void OnRequestFinished(const RequestStats& stats) override;
  void OnPreemption() override;
  void OnHeaderFallback() override;
  void OnPrefixCacheQuery(int64_t query_tokens, int64_t hit_tokens) override;

 private:
  ServerMetrics* m_;
};

}  // namespace spanserve
