// End-to-end offline throughput of the engine on the CUDA backend, for a LLaMA-7B-shaped model
// with dummy bf16 weights: 256 requests whose outputs are forced chain-structured span outputs
// (segment k references segment k - 1, as in the arithmetic task, but long), so that the spans
// are real and contexts reach 1k to 4k tokens; SELF_SELECTED against DENSE in one run, the same
// tokens computed either way. Reports generated tokens per second of wall time, and the mean
// time of full-batch decode steps against its floor: (weight bytes + attended KV bytes) over
// the measured read roof (a read-only streaming kernel; the copy bandwidth is also given), and
// where the step goes: host time before the forward pass is launched, the pass's GPU time, and
// with --profile-phases (eager steps, an event after every launch) GPU time by phase. Writes a
// JSON summary.
//
// Run: cuda_e2e_bench --json e2e.json [--requests 256 --batch 64 --min-context 1024
//      --max-context 4096 --block-size 16 --profile-phases]
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/cuda/bench_util.h"
#include "bench/dummy_model.h"
#include "engine/backends/cuda_backend.h"
#include "engine/core/engine.h"

namespace spanserve::bench {
namespace {

// config.json of LLaMA-7B (vocab 32000; the test tokenizer uses the first 320 ids).
absl::StatusOr<std::shared_ptr<const Model>> Llama7bShaped() {
  auto model = LoadDummyModel("spanserve_llama7b_dummy", R"({
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": 32000,
    "max_position_embeddings": 8192, "tie_word_embeddings": false,
    "bos_token_id": 1, "eos_token_id": 2})", DType::kBF16);
  std::fprintf(stderr, "\n");
  return model;
}

// A chain of rewrite steps of about `step_chars` characters, each segment referencing the
// previous one, cut to about `tokens` tokens.
std::vector<int32_t> ChainOutput(const Tokenizer& tok, int32_t tokens, int32_t step_chars, int seed) {
  std::string step;
  for (int i = 0; step.size() < static_cast<size_t>(step_chars); ++i) {
    step += "(" + std::to_string(10 + (i + seed) % 89) + "+" + std::to_string((i * seed) % 7) + ")*";
  }
  std::string output;
  std::vector<int32_t> ids;
  for (int k = 0; ids.size() < static_cast<size_t>(tokens);) {
    for (int more = 0; more < 4; ++more, ++k) output += "<a>" + std::to_string(k) + "</a>" + step;
    ids = tok.Encode(output);
  }
  ids.resize(tokens);
  return ids;
}

// Sums the steps that decode every running sequence together (one row each).
struct StepTimer : EngineObserver {
  explicit StepTimer(int32_t batch) : batch(batch) {}
  // Called on the engine thread right after the backend's Step, so its stats are that step's.
  void OnStep(const StepStats& s) override {
    std::lock_guard<std::mutex> lock(mu);
    ++steps;
    if (s.num_rows != s.num_seqs || s.num_seqs != batch) return;
    ++full_steps;
    full_seconds += s.seconds;
    full_kv_blocks += s.kv_blocks_read;
    full_kv_dense += s.kv_blocks_dense;
    const CudaBackendStats b = GetCudaBackendStats(*backend);
    host_ms += b.last_host_ms;
    gpu_ms += b.last_gpu_ms;
    for (const auto& [phase, ms] : b.last_phases) {
      auto it = std::find_if(phase_ms.begin(), phase_ms.end(),
                             [&](const auto& p) { return p.first == phase; });
      if (it == phase_ms.end()) it = phase_ms.insert(phase_ms.end(), {phase, 0.0});
      it->second += ms;
    }
  }
  void OnPreemption() override { ++preemptions; }
  const int32_t batch;
  const Backend* backend = nullptr;
  std::mutex mu;
  double host_ms = 0, gpu_ms = 0;  // sums over full steps
  std::vector<std::pair<std::string, double>> phase_ms;
  int64_t steps = 0, full_steps = 0, full_kv_blocks = 0, full_kv_dense = 0, preemptions = 0;
  double full_seconds = 0;
};

struct ModeResult {
  std::string mode;
  double wall_seconds = 0, tokens_per_second = 0;
  int64_t generated = 0, steps = 0, full_steps = 0, preemptions = 0;
  double full_step_ms = 0, floor_ms = 0, copy_floor_ms = 0, kv_read_fraction = 0;
  double weight_floor_ms = 0, kv_floor_ms = 0;  // the floor's two parts
  double host_ms = 0, gpu_ms = 0;                // means over full steps
  std::vector<std::pair<std::string, double>> phase_ms;  // means over full steps
  CudaBackendStats backend;
};

struct Options {
  int32_t requests = 256, batch = 64, min_context = 1024, max_context = 4096, block_size = 16;
  double memory_fraction = 0.9;
  bool profile_phases = false;
  std::string decode_gemm = "measured";  // CudaBackendOptions::decode_gemm: off, on, measured
  bool early_launch = true;               // CudaBackendOptions::early_launch
  std::string json = "e2e.json";
};

ModeResult RunMode(std::shared_ptr<const Model> model, const Options& o, SpanMode mode,
                   double read_gbps, double copy_gbps) {
  ModeResult result;
  result.mode = mode == SpanMode::kSelfSelected ? "SELF_SELECTED" : "DENSE";
  CudaBackendOptions backend_options;
  backend_options.pool.block_size = o.block_size;
  backend_options.gpu_memory_fraction = o.memory_fraction;
  backend_options.profile_phases = o.profile_phases;
  using DecodeGemm = CudaBackendOptions::DecodeGemm;
  backend_options.decode_gemm = o.decode_gemm == "off" ? DecodeGemm::kOff
                                : o.decode_gemm == "on" ? DecodeGemm::kOn
                                                        : DecodeGemm::kMeasured;
  backend_options.early_launch = o.early_launch;
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(model, backend_options);
  if (!backend.ok()) {
    std::fprintf(stderr, "%s\n", backend.status().ToString().c_str());
    std::exit(1);
  }
  const Backend* backend_view = backend->get();
  StepTimer timer(o.batch);
  timer.backend = backend_view;
  EngineConfig config;
  config.max_running = o.batch;
  config.max_tokens_limit = o.max_context + 64;
  config.max_waiting = o.requests + 1;
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      CreateEngine(model, std::move(*backend), config, &timer);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    std::exit(1);
  }
  std::mt19937 rng(7);
  std::vector<GenerateRequest> requests(o.requests);
  for (int i = 0; i < o.requests; ++i) {
    GenerateRequest& r = requests[i];
    r.prompt = "(" + std::to_string(i) + "+1)*(2+3)=";
    const int32_t context = o.min_context + static_cast<int32_t>(rng() % (o.max_context - o.min_context + 1));
    r.forced_output = ChainOutput(*model->tokenizer, context, 100 + static_cast<int32_t>(rng() % 150), i);
    r.max_tokens = static_cast<int32_t>(r.forced_output.size());
    r.span_mode = mode;
    result.generated += r.max_tokens;
  }
  std::mutex mu;
  std::condition_variable cv;
  int done = 0, errors = 0;
  const auto start = std::chrono::steady_clock::now();
  for (const GenerateRequest& request : requests) {
    auto submitted = (*engine)->Submit(request, [&](GenerationEvent&& e) {
      if (!e.finished) return;
      std::lock_guard<std::mutex> lock(mu);
      ++done;
      if (e.finish_reason == FinishReason::kError) {
        if (errors++ == 0) std::fprintf(stderr, "request failed: %s\n", e.error.c_str());
      }
      cv.notify_all();
    });
    if (!submitted.ok()) {
      std::fprintf(stderr, "submit: %s\n", submitted.status().ToString().c_str());
      std::exit(1);
    }
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    while (!cv.wait_for(lock, std::chrono::seconds(15), [&] { return done == o.requests; })) {
      std::fprintf(stderr, "%s: %d of %d requests done, %.0f s\n", result.mode.c_str(), done,
                   o.requests,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  result.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.tokens_per_second = result.generated / result.wall_seconds;
  result.backend = GetCudaBackendStats(*backend_view);
  (*engine)->Shutdown(0);
  if (errors > 0) {
    std::fprintf(stderr, "%d requests failed\n", errors);
    std::exit(1);
  }
  std::lock_guard<std::mutex> lock(timer.mu);
  const ModelConfig& c = model->config;
  const double layer_bytes = 2.0 * c.hidden_size *
      ((c.num_heads + 2.0 * c.num_kv_heads) * c.head_dim + c.num_heads * c.head_dim +
       3.0 * c.intermediate_size);
  const double weight_bytes = c.num_layers * layer_bytes + 2.0 * c.vocab_size * c.hidden_size;
  const double kv_block_bytes = static_cast<double>(KvBlockBytes(c, o.block_size, 2));
  result.steps = timer.steps;
  result.full_steps = timer.full_steps;
  result.preemptions = timer.preemptions;
  if (timer.full_steps > 0) {
    result.full_step_ms = 1e3 * timer.full_seconds / timer.full_steps;
    const double kv_bytes = kv_block_bytes * timer.full_kv_blocks / timer.full_steps;
    result.weight_floor_ms = 1e3 * weight_bytes / (read_gbps * 1e9);
    result.kv_floor_ms = 1e3 * kv_bytes / (read_gbps * 1e9);
    result.floor_ms = result.weight_floor_ms + result.kv_floor_ms;
    result.copy_floor_ms = 1e3 * (weight_bytes + kv_bytes) / (copy_gbps * 1e9);
    result.host_ms = timer.host_ms / timer.full_steps;
    result.gpu_ms = timer.gpu_ms / timer.full_steps;
    for (auto [phase, ms] : timer.phase_ms) result.phase_ms.push_back({phase, ms / timer.full_steps});
    result.kv_read_fraction = static_cast<double>(timer.full_kv_blocks) / timer.full_kv_dense;
  }
  return result;
}

int Main(int argc, char** argv) {
  CLI::App app{"End-to-end throughput, SELF_SELECTED against DENSE, on the CUDA backend"};
  Options o;
  app.add_option("--requests", o.requests);
  app.add_option("--batch", o.batch, "sequences decoding at once (max_running)");
  app.add_option("--min-context", o.min_context);
  app.add_option("--max-context", o.max_context);
  app.add_option("--block-size", o.block_size);
  app.add_option("--memory-fraction", o.memory_fraction);
  app.add_option("--json", o.json);
  app.add_flag("--profile-phases", o.profile_phases,
               "eager steps with an event after every launch: GPU time by phase");
  app.add_option("--decode-gemm", o.decode_gemm,
                 "products of up to 64 rows: off (cublasGemmEx), on (the decode GEMM), measured "
                 "(the faster of the two for each shape, timed at init)")
      ->check(CLI::IsMember({"off", "on", "measured"}));
  app.add_option("--early-launch", o.early_launch,
                 "programmatic dependent launch of the layer's kernels and the decode GEMM");
  CLI11_PARSE(app, argc, argv);
  if (CudaDeviceCount() == 0) {
    std::fprintf(stderr, "no CUDA device visible\n");
    return 1;
  }
  const double copy_gbps = CopyBandwidthGBps(size_t{2} << 30, 10);
  const double read_gbps = ReadBandwidthGBps(size_t{2} << 30, 10);
  absl::StatusOr<std::shared_ptr<const Model>> model = Llama7bShaped();
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return 1;
  }
  std::vector<ModeResult> results;
  for (SpanMode mode : {SpanMode::kSelfSelected, SpanMode::kDense}) {
    results.push_back(RunMode(*model, o, mode, read_gbps, copy_gbps));
  }
  const double speedup = results[0].tokens_per_second / results[1].tokens_per_second;
  std::FILE* json = std::fopen(o.json.c_str(), "w");
  std::fprintf(json, "{\"requests\": %d, \"batch\": %d, \"min_context\": %d, \"max_context\": %d, "
                     "\"block_size\": %d, \"copy_gbps\": %.1f, \"read_gbps\": %.1f, "
                     "\"profile_phases\": %s, \"decode_gemm\": \"%s\", \"early_launch\": %s, "
                     "\"speedup\": %.4f, \"gemm_choices\": [",
               o.requests, o.batch, o.min_context, o.max_context, o.block_size, copy_gbps,
               read_gbps, o.profile_phases ? "true" : "false", o.decode_gemm.c_str(),
               o.early_launch ? "true" : "false", speedup);
  const std::vector<std::string>& choices = results[0].backend.gemm_choices;
  for (size_t i = 0; i < choices.size(); ++i) {
    std::fprintf(json, "%s\"%s\"", i ? ", " : "", choices[i].c_str());
  }
  std::fprintf(json, "], \"modes\": [");
  for (size_t i = 0; i < results.size(); ++i) {
    const ModeResult& r = results[i];
    std::fprintf(json, "%s{\"mode\": \"%s\", \"generated_tokens\": %lld, \"wall_seconds\": %.3f, "
                       "\"tokens_per_second\": %.1f, \"steps\": %lld, \"full_batch_steps\": %lld, "
                       "\"full_batch_step_ms\": %.3f, \"floor_ms\": %.3f, \"kv_read_fraction\": %.4f, "
                       "\"preemptions\": %lld, \"graph_steps\": %lld, \"eager_steps\": %lld, "
                       "\"weight_bytes\": %lld, \"kv_pool_bytes\": %lld, "
                       "\"weight_floor_ms\": %.3f, \"kv_floor_ms\": %.3f, \"copy_floor_ms\": %.3f, "
                       "\"host_ms\": %.3f, \"gpu_ms\": %.3f, \"phases_ms\": {",
                 i ? ", " : "", r.mode.c_str(), static_cast<long long>(r.generated), r.wall_seconds,
                 r.tokens_per_second, static_cast<long long>(r.steps),
                 static_cast<long long>(r.full_steps), r.full_step_ms, r.floor_ms,
                 r.kv_read_fraction, static_cast<long long>(r.preemptions),
                 static_cast<long long>(r.backend.graph_steps),
                 static_cast<long long>(r.backend.eager_steps),
                 static_cast<long long>(r.backend.weight_bytes),
                 static_cast<long long>(r.backend.kv_pool_bytes), r.weight_floor_ms,
                 r.kv_floor_ms, r.copy_floor_ms, r.host_ms, r.gpu_ms);
    for (size_t p = 0; p < r.phase_ms.size(); ++p) {
      std::fprintf(json, "%s\"%s\": %.4f", p ? ", " : "", r.phase_ms[p].first.c_str(),
                   r.phase_ms[p].second);
    }
    std::fprintf(json, "}}");
  }
  std::fprintf(json, "]}\n");
  std::fclose(json);

  std::printf("\nLLaMA-7B-shaped, dummy bf16 weights, %d requests, contexts %d-%d, batch %d, "
              "block %d, read roof %.0f GB/s, copy %.0f GB/s (read + write)%s, decode GEMM %s, "
              "early launch %s\n",
              o.requests, o.min_context, o.max_context, o.batch, o.block_size, read_gbps,
              copy_gbps, o.profile_phases ? ", PROFILED (eager steps)" : "",
              o.decode_gemm.c_str(), o.early_launch ? "on" : "off");
  for (const std::string& line : choices) std::printf("  %s\n", line.c_str());
  std::printf("%-14s %8s %7s %8s %8s %8s %8s %8s %7s %8s %7s %5s\n", "mode", "tok/s", "wall_s",
              "step_ms", "host_ms", "gpu_ms", "floor", "w_floor", "kv_floor", "stp/flr",
              "kv_read", "preem");
  for (const ModeResult& r : results) {
    std::printf("%-14s %8.0f %7.1f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %7.3f %8.3f %5lld\n",
                r.mode.c_str(), r.tokens_per_second, r.wall_seconds, r.full_step_ms, r.host_ms,
                r.gpu_ms, r.floor_ms, r.weight_floor_ms, r.kv_floor_ms,
                r.floor_ms > 0 ? r.full_step_ms / r.floor_ms : 0, r.kv_read_fraction,
                static_cast<long long>(r.preemptions));
  }
  for (const ModeResult& r : results) {
    if (r.phase_ms.empty()) continue;
    std::printf("%s GPU ms by phase, a full-batch step:", r.mode.c_str());
    for (const auto& [phase, ms] : r.phase_ms) std::printf("  %s %.3f", phase.c_str(), ms);
    std::printf("\n");
  }
  std::printf("SELF_SELECTED / DENSE throughput: %.2fx (target 1.28x)\n", speedup);
  return 0;
}

}  // namespace
}  // namespace spanserve::bench

int main(int argc, char** argv) { return spanserve::bench::Main(argc, argv); }
