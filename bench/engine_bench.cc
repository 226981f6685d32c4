// CPU engine benchmarks on a small LLaMA-shaped model with dummy weights:
//  - decode throughput at batch 1, 8 and 32 (generated tokens per second of decode steps, and
//    of wall time from submit to the last token);
//  - forced decoding of chain-structured span outputs (like the arithmetic task's, but long),
//    SELF_SELECTED against DENSE, the same tokens computed either way.
// Run: build/bench/engine_bench --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "bench/dummy_model.h"
#include "bench/summ_workload.h"
#include "engine/backends/cpu_backend.h"
#include "engine/backends/cuda_step_plan.h"
#include "engine/core/engine.h"
#include "engine/model/tokenizer.h"

namespace spanserve {
namespace {

// hidden 512, 8 layers, 8 query heads of 64, 4 KV heads: about 25M parameters.
std::shared_ptr<const Model> SmallModel() {
  static std::shared_ptr<const Model> model = [] {
    absl::StatusOr<std::shared_ptr<const Model>> loaded = LoadDummyModel("spanserve_bench_small", R"({
      "model_type": "llama", "hidden_size": 512, "intermediate_size": 1408,
      "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 4,
      "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": 320,
      "max_position_embeddings": 4096, "tie_word_embeddings": false,
      "bos_token_id": 1, "eos_token_id": 2})", DType::kF32);
    if (!loaded.ok()) {
      fprintf(stderr, "%s\n", std::string(loaded.status().message()).c_str());
      std::abort();
    }
    return *loaded;
  }();
  return model;
}

// Sums the backend time of steps with decode rows only, and counts their rows.
struct DecodeTimer : EngineObserver {
  void OnStep(const StepStats& s) override {
    std::lock_guard<std::mutex> lock(mu);
    if (s.num_rows != s.num_seqs) return;
    seconds += s.seconds;
    rows += s.num_rows;
    kv_read += s.kv_blocks_read;
    kv_dense += s.kv_blocks_dense;
  }
  std::mutex mu;
  double seconds = 0;
  int64_t rows = 0, kv_read = 0, kv_dense = 0;
};

// Submits all requests at once and waits for every finish. Returns wall seconds.
double RunBatch(Engine* engine, const std::vector<GenerateRequest>& requests) {
  std::mutex mu;
  std::condition_variable cv;
  size_t done = 0;
  const auto start = std::chrono::steady_clock::now();
  for (const GenerateRequest& request : requests) {
    auto submitted = engine->Submit(request, [&](GenerationEvent&& e) {
      if (!e.finished) return;
      if (e.finish_reason == FinishReason::kError) {  // a benchmark of failures measures nothing
        std::fprintf(stderr, "request failed: %s\n", e.error.c_str());
        std::abort();
      }
      std::lock_guard<std::mutex> lock(mu);
      ++done;
      cv.notify_all();
    });
    if (!submitted.ok()) std::abort();
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done == requests.size(); });
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::unique_ptr<Engine> MakeEngine(DecodeTimer* timer, int32_t num_blocks) {
  KvPoolOptions pool;
  pool.block_size = 16;
  pool.num_blocks = num_blocks;
  auto backend = CreateCpuBackend(SmallModel(), pool);
  if (!backend.ok()) std::abort();
  EngineConfig config;
  config.max_running = 64;
  auto engine = CreateEngine(SmallModel(), std::move(*backend), config, timer);
  if (!engine.ok()) std::abort();
  return std::move(*engine);
}

void BM_DecodeThroughput(benchmark::State& state) {
  const int batch = static_cast<int>(state.range(0));
  const int32_t max_tokens = 64;
  std::vector<GenerateRequest> requests(batch);
  for (int i = 0; i < batch; ++i) {
    requests[i].prompt = "((12+" + std::to_string(i) + ")*(5-2))+6= the cat sat on a mat.";
    requests[i].max_tokens = max_tokens;
    requests[i].ignore_eos = true;
  }
  DecodeTimer timer;
  std::unique_ptr<Engine> engine = MakeEngine(&timer, 2048);
  double wall = 0;
  for (auto _ : state) wall += RunBatch(engine.get(), requests);
  const double generated = double(batch) * max_tokens * state.iterations();
  state.counters["decode_tok_per_s"] = timer.rows / timer.seconds;
  state.counters["e2e_tok_per_s"] = generated / wall;
  state.counters["step_ms"] = 1e3 * timer.seconds * batch / timer.rows;
}
BENCHMARK(BM_DecodeThroughput)->Arg(1)->Arg(8)->Arg(32)->Unit(benchmark::kMillisecond)
    ->Iterations(2)->UseRealTime();

// A chain of rewrite steps, each segment referencing the previous one.
std::vector<int32_t> ChainOutput(const Tokenizer& tok, int steps, int step_len) {
  std::string step;
  for (int i = 0; step.size() < static_cast<size_t>(step_len); ++i) {
    step += "(" + std::to_string(10 + i % 89) + "+" + std::to_string(i % 7) + ")*";
  }
  std::string output;
  for (int k = 0; k < steps; ++k) output += "<a>" + std::to_string(k) + "</a>" + step;
  return tok.Encode(output);
}

void BM_ForcedChain(benchmark::State& state) {
  const SpanMode mode = state.range(0) ? SpanMode::kSelfSelected : SpanMode::kDense;
  const int batch = 8;
  const Tokenizer& tok = *SmallModel()->tokenizer;
  std::vector<GenerateRequest> requests(batch);
  for (int i = 0; i < batch; ++i) {
    requests[i].prompt = "(" + std::to_string(i) + "+1)*(2+3)=";
    requests[i].forced_output = ChainOutput(tok, 16, 120);  // about 2k tokens
    requests[i].max_tokens = static_cast<int32_t>(requests[i].forced_output.size());
    requests[i].span_mode = mode;
  }
  DecodeTimer timer;
  std::unique_ptr<Engine> engine = MakeEngine(&timer, 1024);
  double wall = 0;
  for (auto _ : state) wall += RunBatch(engine.get(), requests);
  state.counters["decode_tok_per_s"] = timer.rows / timer.seconds;
  state.counters["kv_read_fraction"] = double(timer.kv_read) / timer.kv_dense;
  state.counters["context_tokens"] = requests[0].max_tokens;
}
BENCHMARK(BM_ForcedChain)->ArgName("self_selected")->Arg(0)->Arg(1)
    ->Unit(benchmark::kMillisecond)->Iterations(1)->UseRealTime();

// ---- The engine thread's own cost, with a backend that computes nothing ----

// Returns each sampled sequence's forced token (or token 5) at once: what is left of a step
// is the engine's scheduling, batch building, span planning and token hand-out.
// With plan_like_cuda, it also builds the CUDA backend's host step plan (the metadata blob it
// copies to the GPU each step), so that "backend" time is that plan's host cost.
class NullBackend : public Backend {
 public:
  NullBackend(int32_t num_blocks, int32_t block_size, int32_t vocab, bool plan_like_cuda)
      : num_blocks_(num_blocks), block_size_(block_size), vocab_(vocab),
        plan_like_cuda_(plan_like_cuda) {}
  std::string name() const override { return "null"; }
  absl::Status Step(const StepBatch& batch, StepOutput* out) override {
    if (absl::Status s = ValidateStepBatch(batch, num_blocks_, block_size_, vocab_); !s.ok()) {
      return s;
    }
    if (plan_like_cuda_) {
      gpu::PlanOptions options;
      options.block_size = block_size_;
      options.num_splits = 4;
      const gpu::PlanCapacity need = gpu::NeededCapacity(batch, options);
      if (!capacity_.Covers(need)) {
        capacity_ = capacity_.Max(need);
        layout_ = gpu::PlanLayout::For(capacity_);
        blob_.assign(layout_.total, 0);
      }
      benchmark::DoNotOptimize(gpu::BuildStepPlan(batch, options, layout_, blob_.data()));
    }
    out->tokens.assign(batch.seqs.size(), -1);
    for (size_t i = 0; i < batch.seqs.size(); ++i) {
      const StepSequence& seq = batch.seqs[i];
      if (seq.sample) out->tokens[i] = seq.forced_token >= 0 ? seq.forced_token : 5;
    }
    return absl::OkStatus();
  }
  int32_t num_kv_blocks() const override { return num_blocks_; }
  int32_t block_size() const override { return block_size_; }
  int32_t vocab_size() const override { return vocab_; }

 private:
  int32_t num_blocks_, block_size_, vocab_;
  bool plan_like_cuda_;
  gpu::PlanCapacity capacity_;
  gpu::PlanLayout layout_;
  std::vector<uint8_t> blob_;
};

// The test tokenizer with sentence segmentation: the summary task's span plans.
std::shared_ptr<const Model> SentenceModel() {
  static std::shared_ptr<const Model> model = [] {
    auto loaded = LoadDummyModel("spanserve_bench_sentences", R"({
      "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
      "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
      "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": 320,
      "max_position_embeddings": 8192, "tie_word_embeddings": false,
      "bos_token_id": 1, "eos_token_id": 2})", DType::kF32, "sentences");
    if (!loaded.ok()) std::abort();
    return *loaded;
  }();
  return model;
}

struct PhaseTimer : EngineObserver {
  void OnStep(const StepStats& s) override {
    std::lock_guard<std::mutex> lock(mu);
    schedule += s.schedule_seconds;
    build += s.build_seconds;
    backend += s.seconds;
    emit += s.emit_seconds;
    rows += s.num_rows;
    ++steps;
  }
  std::mutex mu;
  double schedule = 0, build = 0, backend = 0, emit = 0;
  int64_t rows = 0, steps = 0;
};

// The served summary benchmark's shape (bench/summ_workload.h): 64 requests of 2.5k-3.1k prompt
// tokens in numbered sentences (about 60 with the test tokenizer), each output ~300 tokens of
// summary sentences that name 1-3 sources. Counters are microseconds of engine-thread time per
// prompt row and per generated token.
void BM_EngineHostCost(benchmark::State& state) {
  const SpanMode mode = state.range(0) ? SpanMode::kSelfSelected : SpanMode::kDense;
  const bool return_spans = state.range(1) != 0;  // the segment reports, as before 013de2b
  const bool plan_like_cuda = state.range(2) != 0;
  std::shared_ptr<const Model> model = SentenceModel();
  const Tokenizer& tok = *model->tokenizer;
  const int batch = 64;
  bench::SummWorkloadOptions workload;
  workload.requests = batch;
  workload.min_prompt_tokens = 2500;
  workload.max_prompt_tokens = 3100;
  workload.output_tokens = 300;
  std::vector<GenerateRequest> requests = bench::SummRequests(tok, workload, mode);
  for (GenerateRequest& r : requests) r.return_spans = return_spans;
  KvPoolOptions pool;
  pool.block_size = 16;
  pool.num_blocks = 65536;
  PhaseTimer timer;
  EngineConfig config;
  config.max_running = 256;
  config.max_batched_tokens = 8192;
  auto engine = CreateEngine(model, std::make_unique<NullBackend>(pool.num_blocks,
                             pool.block_size, model->config.vocab_size, plan_like_cuda),
                             config, &timer);
  if (!engine.ok()) std::abort();
  double wall = 0;
  for (auto _ : state) wall += RunBatch(engine->get(), requests);
  int64_t generated = 0, prompt = 0;
  for (const GenerateRequest& r : requests) generated += r.max_tokens;
  for (const GenerateRequest& r : requests) {
    for (const std::string& sentence : r.segments) prompt += tok.Encode(sentence).size() + 1;
  }
  generated *= state.iterations();
  prompt *= state.iterations();
  state.counters["prompt_tokens"] = double(prompt) / state.iterations() / batch;
  state.counters["out_tokens"] = double(generated) / state.iterations() / batch;
  state.counters["build_us_per_row"] = 1e6 * timer.build / timer.rows;
  state.counters["emit_us_per_tok"] = 1e6 * timer.emit / generated;
  state.counters["sched_us_per_step"] = 1e6 * timer.schedule / timer.steps;
  state.counters["null_step_us"] = 1e6 * timer.backend / timer.steps;
  state.counters["step_us_per_row"] = 1e6 * timer.backend / timer.rows;
  state.counters["host_us_per_tok"] = 1e6 * (timer.schedule + timer.build + timer.emit) / generated;
  state.counters["wall_us_per_tok"] = 1e6 * wall / generated;
}
BENCHMARK(BM_EngineHostCost)->ArgNames({"self_selected", "return_spans", "cuda_plan"})
    ->ArgsProduct({{0, 1}, {0, 1}, {0, 1}})->Unit(benchmark::kMillisecond)->Iterations(2)->UseRealTime();

// The CUDA backend's host step plan alone, on a full prefill step (8192 causal rows of 3
// prompts, 2.9k tokens each) and on a dense decode step (64 rows of 2.9k-token contexts, one
// chunk a block, as the engine plans dense decode rows): what the backend's host spends
// before its first launch.
void BM_CudaStepPlan(benchmark::State& state) {
  const bool prefill = state.range(0) != 0;
  const int32_t block_size = 16, context = 2900;
  StepBatch batch;
  const int32_t seqs = prefill ? 3 : 64;
  for (int32_t s = 0; s < seqs; ++s) {
    const int32_t rows = prefill ? (s < 2 ? context : 8192 - 2 * context) : 1;
    const int32_t first = prefill ? 0 : context - 1;
    StepSequence seq;
    seq.row_begin = batch.num_rows();
    seq.num_rows = rows;
    seq.table_begin = static_cast<int32_t>(batch.block_tables.size());
    seq.num_blocks = (first + rows + block_size - 1) / block_size;
    seq.sample = true;
    for (int32_t b = 0; b < seq.num_blocks; ++b) batch.block_tables.push_back(s * 256 + b);
    for (int32_t r = 0; r < rows; ++r) {
      AttentionRow row;
      row.seq = s;
      row.causal = prefill;
      if (!prefill) {
        row.chunk_begin = static_cast<int32_t>(batch.chunks.size());
        for (int32_t b = 0; b < seq.num_blocks; ++b) {
          const int32_t end = std::min(block_size, context - b * block_size);
          batch.chunks.push_back({s * 256 + b, 0, end});
        }
        row.chunk_end = static_cast<int32_t>(batch.chunks.size());
      }
      batch.token_ids.push_back(5);
      batch.positions.push_back(first + r);
      batch.rows.push_back(row);
    }
    batch.seqs.push_back(seq);
  }
  gpu::PlanOptions options;
  options.block_size = block_size;
  options.num_splits = 4;
  const gpu::PlanLayout layout = gpu::PlanLayout::For(gpu::NeededCapacity(batch, options));
  std::vector<uint8_t> blob(layout.total);
  for (auto _ : state) {
    benchmark::DoNotOptimize(ValidateStepBatch(batch, 64 * 256, block_size, 320));
    benchmark::DoNotOptimize(gpu::BuildStepPlan(batch, options, layout, blob.data()));
  }
  state.counters["rows"] = batch.num_rows();
  state.counters["us_per_row"] = benchmark::Counter(
      batch.num_rows(), benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.counters["blob_kb"] = layout.total / 1024.0;
}
BENCHMARK(BM_CudaStepPlan)->ArgName("prefill")->Arg(1)->Arg(0)->Unit(benchmark::kMicrosecond);

// What the engine's detokenizer pays a generated token: Decode of a two-token window (and of
// its one-token context), for each kind of tokenizer a model directory can ship.
void BM_TokenizerDecodeWindow(benchmark::State& state) {
  // 5 and 6: the first two through SentencePiece's processor alone (no piece tables).
  static const char* kDirs[] = {"tests/data/tokenizer", "models/summ-long",
                                "tests/data/tokenizers/gpt2", "tests/data/tokenizers/llama3",
                                "tests/data/tokenizers/qwen2", "tests/data/tokenizer",
                                "models/summ-long"};
  const std::string dir = std::string(SPANSERVE_SOURCE_DIR) + "/" + kDirs[state.range(0)];
  std::string error;
  std::unique_ptr<Tokenizer> tok =
      state.range(0) >= 5 ? LoadSentencePieceTokenizer(dir + "/tokenizer.model", &error, false)
                          : LoadTokenizer(dir, &error);
  if (!tok) {
    state.SkipWithError(error.c_str());
    return;
  }
  const std::vector<int32_t> ids =
      tok->Encode("On 3 May, Otto Gallo delivered 51 food parcels to the old market in Kell.");
  size_t i = 0, bytes = 0;
  for (auto _ : state) {
    const size_t a = i++ % (ids.size() - 1);
    bytes += tok->Decode({ids[a], ids[a + 1]}).size() + tok->Decode({ids[a]}).size();
  }
  benchmark::DoNotOptimize(bytes);
  state.SetLabel(std::string(kDirs[state.range(0)]) +
                 (state.range(0) >= 5 ? " (processor)" : ""));
}
BENCHMARK(BM_TokenizerDecodeWindow)->DenseRange(0, 6)->Unit(benchmark::kNanosecond);

}  // namespace
}  // namespace spanserve

BENCHMARK_MAIN();
