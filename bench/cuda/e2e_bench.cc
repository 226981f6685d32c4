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
// --workload summ is instead issue 17's served shape (bench/summ_workload.h) on a model of the
// summary model's shape (configs/train-summ-long.json: 15M parameters, 8 layers, 6 query heads
// over 3 KV heads of 64) with dummy weights: prompts of --min-context to --max-context tokens,
// forced summaries of --output-tokens whose sentences name 1-3 prompt sentences, steps of up to
// 8192 tokens as served. Prefill is then most of the work, so it also reports the step time of
// prefill steps (any step with a prompt row) and of decode steps, the engine thread's own time,
// and with --profile-phases the GPU time by phase of a prefill step.
//
// Run: cuda_e2e_bench --json e2e.json [--requests 256 --batch 64 --min-context 1024
//      --max-context 4096 --block-size 16 --profile-phases]
//      cuda_e2e_bench --workload summ [--requests 256 --batch 256 --min-context 1200
//      --max-context 4900 --output-tokens 160]
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
#include "bench/summ_workload.h"
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

// The shape of issue 17's summary model (training/configs/train-summ-long.json).
absl::StatusOr<std::shared_ptr<const Model>> SummShaped() {
  return LoadDummyModel("spanserve_summ_dummy", R"({
    "model_type": "llama", "hidden_size": 384, "intermediate_size": 1024,
    "num_hidden_layers": 8, "num_attention_heads": 6, "num_key_value_heads": 3,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": 4000,
    "max_position_embeddings": 8192, "tie_word_embeddings": false,
    "bos_token_id": 1, "eos_token_id": 2})", DType::kBF16, "sentences");
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
    engine_host_seconds += s.schedule_seconds + s.build_seconds + s.emit_seconds;
    const CudaBackendStats b = GetCudaBackendStats(*backend);  // this step's
    if (s.num_rows != s.num_seqs) {  // a prompt row in it
      ++prefill_steps;
      prefill_seconds += s.seconds;
      prefill_rows += s.num_rows;
      AddPhases(b, &prefill_phase_ms);
      return;
    }
    ++decode_steps;
    decode_seconds += s.seconds;
    decode_rows += s.num_rows;
    AddPhases(b, &decode_phase_ms);
    if (s.num_seqs != batch) return;
    ++full_steps;
    full_seconds += s.seconds;
    full_kv_blocks += s.kv_blocks_read;
    full_kv_dense += s.kv_blocks_dense;
    host_ms += b.last_host_ms;
    gpu_ms += b.last_gpu_ms;
    AddPhases(b, &phase_ms);
  }
  using Phases = std::vector<std::pair<std::string, double>>;
  static void AddPhases(const CudaBackendStats& b, Phases* sums) {
    for (const auto& [phase, ms] : b.last_phases) {
      auto it = std::find_if(sums->begin(), sums->end(),
                             [&](const auto& p) { return p.first == phase; });
      if (it == sums->end()) it = sums->insert(sums->end(), {phase, 0.0});
      it->second += ms;
    }
  }
  void OnPreemption() override { ++preemptions; }
  const int32_t batch;
  const Backend* backend = nullptr;
  std::mutex mu;
  double host_ms = 0, gpu_ms = 0;  // sums over full steps
  Phases phase_ms, prefill_phase_ms, decode_phase_ms;
  int64_t steps = 0, full_steps = 0, full_kv_blocks = 0, full_kv_dense = 0, preemptions = 0;
  int64_t prefill_steps = 0, prefill_rows = 0, decode_steps = 0, decode_rows = 0;
  double full_seconds = 0, prefill_seconds = 0, decode_seconds = 0, engine_host_seconds = 0;
};

struct ModeResult {
  std::string mode;
  double wall_seconds = 0, tokens_per_second = 0;
  int64_t generated = 0, steps = 0, full_steps = 0, preemptions = 0;
  double full_step_ms = 0, floor_ms = 0, copy_floor_ms = 0, kv_read_fraction = 0;
  double weight_floor_ms = 0, kv_floor_ms = 0;  // the floor's two parts
  double host_ms = 0, gpu_ms = 0;                // means over full steps
  std::vector<std::pair<std::string, double>> phase_ms;  // means over full steps
  // All steps: those with a prompt row (prefill) and the others (decode), and the engine
  // thread's own time around them (schedule, build, emit); seconds over the run.
  int64_t prefill_steps = 0, decode_steps = 0;
  double prefill_rows_mean = 0, prefill_seconds = 0, decode_seconds = 0, engine_host_seconds = 0;
  double decode_rows_mean = 0;
  // Means over prefill steps and over decode steps (any batch).
  std::vector<std::pair<std::string, double>> prefill_phase_ms, decode_phase_ms;
  CudaBackendStats backend;
};

struct Options {
  std::string workload = "chain";  // chain (forced span chains) or summ (issue 17's shape)
  int32_t requests = 256, batch = 64, min_context = 1024, max_context = 4096, block_size = 16;
  int32_t output_tokens = 160;     // summ: each forced summary's tokens (at least)
  double memory_fraction = 0.9;
  bool profile_phases = false;
  std::string decode_gemm = "measured";  // CudaBackendOptions::decode_gemm: off, on, measured
  bool early_launch = true;               // CudaBackendOptions::early_launch
  std::string json = "e2e.json";
};

// Short prompts, forced span chains of --min-context to --max-context tokens.
std::vector<GenerateRequest> ChainRequests(const Tokenizer& tok, const Options& o, SpanMode mode) {
  std::mt19937 rng(7);
  std::vector<GenerateRequest> requests(o.requests);
  for (int i = 0; i < o.requests; ++i) {
    GenerateRequest& r = requests[i];
    r.prompt = "(" + std::to_string(i) + "+1)*(2+3)=";
    const int32_t context = o.min_context + static_cast<int32_t>(rng() % (o.max_context - o.min_context + 1));
    r.forced_output = ChainOutput(tok, context, 100 + static_cast<int32_t>(rng() % 150), i);
    r.max_tokens = static_cast<int32_t>(r.forced_output.size());
    r.span_mode = mode;
  }
  return requests;
}

SummWorkloadOptions SummOptions(const Options& o) {
  SummWorkloadOptions w;
  w.requests = o.requests;
  w.min_prompt_tokens = o.min_context;
  w.max_prompt_tokens = o.max_context;
  w.output_tokens = o.output_tokens;
  return w;
}

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
  if (o.workload == "summ") config.max_batched_tokens = 8192;  // as summ_serve_bench.sh serves
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      CreateEngine(model, std::move(*backend), config, &timer);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    std::exit(1);
  }
  std::vector<GenerateRequest> requests =
      o.workload == "summ" ? SummRequests(*model->tokenizer, SummOptions(o), mode)
                           : ChainRequests(*model->tokenizer, o, mode);
  for (const GenerateRequest& r : requests) result.generated += r.max_tokens;
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
  result.prefill_steps = timer.prefill_steps;
  result.prefill_seconds = timer.prefill_seconds;
  result.decode_seconds = timer.decode_seconds;
  result.engine_host_seconds = timer.engine_host_seconds;
  result.decode_steps = timer.decode_steps;
  if (timer.prefill_steps > 0) {
    result.prefill_rows_mean = static_cast<double>(timer.prefill_rows) / timer.prefill_steps;
    for (auto [phase, ms] : timer.prefill_phase_ms) {
      result.prefill_phase_ms.push_back({phase, ms / timer.prefill_steps});
    }
  }
  if (timer.decode_steps > 0) {
    result.decode_rows_mean = static_cast<double>(timer.decode_rows) / timer.decode_steps;
    for (auto [phase, ms] : timer.decode_phase_ms) {
      result.decode_phase_ms.push_back({phase, ms / timer.decode_steps});
    }
  }
  return result;
}

void WritePhases(std::FILE* json, const std::vector<std::pair<std::string, double>>& phases) {
  for (size_t p = 0; p < phases.size(); ++p) {
    std::fprintf(json, "%s\"%s\": %.4f", p ? ", " : "", phases[p].first.c_str(),
                 phases[p].second);
  }
}

int Main(int argc, char** argv) {
  CLI::App app{"End-to-end throughput, SELF_SELECTED against DENSE, on the CUDA backend"};
  Options o;
  app.add_option("--workload", o.workload, "chain (forced span chains) or summ (issue 17's shape)")
      ->check(CLI::IsMember({"chain", "summ"}));
  app.add_option("--output-tokens", o.output_tokens, "summ: tokens of each forced summary");
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
  absl::StatusOr<std::shared_ptr<const Model>> model =
      o.workload == "summ" ? SummShaped() : Llama7bShaped();
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
  std::fprintf(json, "{\"workload\": \"%s\", \"output_tokens\": %d, ", o.workload.c_str(),
               o.output_tokens);
  std::fprintf(json, "\"requests\": %d, \"batch\": %d, \"min_context\": %d, \"max_context\": %d, "
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
    WritePhases(json, r.phase_ms);
    std::fprintf(json, "}, \"prefill_steps\": %lld, \"prefill_rows_mean\": %.1f, "
                       "\"prefill_seconds\": %.4f, \"decode_steps\": %lld, "
                       "\"decode_rows_mean\": %.1f, \"decode_seconds\": %.4f, "
                       "\"engine_host_seconds\": %.4f, \"prefill_phases_ms\": {",
                 static_cast<long long>(r.prefill_steps), r.prefill_rows_mean, r.prefill_seconds,
                 static_cast<long long>(r.decode_steps), r.decode_rows_mean, r.decode_seconds,
                 r.engine_host_seconds);
    WritePhases(json, r.prefill_phase_ms);
    std::fprintf(json, "}, \"decode_phases_ms\": {");
    WritePhases(json, r.decode_phase_ms);
    std::fprintf(json, "}}");
  }
  std::fprintf(json, "]}\n");
  std::fclose(json);

  std::printf("\n%s, dummy bf16 weights, %d requests, %s %d-%d, batch %d, "
              "block %d, read roof %.0f GB/s, copy %.0f GB/s (read + write)%s, decode GEMM %s, "
              "early launch %s\n",
              o.workload == "summ" ? "summary-model-shaped (15M), the served summary task"
                                   : "LLaMA-7B-shaped",
              o.requests, o.workload == "summ" ? "prompts" : "contexts", o.min_context,
              o.max_context, o.batch, o.block_size, read_gbps,
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
  for (const ModeResult& r : results) {
    std::printf("%s: %lld prefill steps (%.0f rows a step) %.3f s, %lld decode steps (%.0f rows "
                "a step) %.3f s, engine thread %.3f s, wall %.3f s\n", r.mode.c_str(),
                static_cast<long long>(r.prefill_steps), r.prefill_rows_mean, r.prefill_seconds,
                static_cast<long long>(r.decode_steps), r.decode_rows_mean, r.decode_seconds,
                r.engine_host_seconds, r.wall_seconds);
    for (const auto& [what, phases] : {std::pair{"prefill", &r.prefill_phase_ms},
                                       std::pair{"decode", &r.decode_phase_ms}}) {
      if (phases->empty()) continue;
      std::printf("%s GPU ms by phase, a %s step:", r.mode.c_str(), what);
      for (const auto& [phase, ms] : *phases) std::printf("  %s %.3f", phase.c_str(), ms);
      std::printf("\n");
    }
  }
  std::printf("SELF_SELECTED / DENSE throughput: %.2fx (target 1.28x)\n", speedup);
  return 0;
}

}  // namespace
}  // namespace spanserve::bench

int main(int argc, char** argv) { return spanserve::bench::Main(argc, argv); }
