// The engine end to end on the CPU backend with a tiny random model loaded from files:
// batching invariance, preemption by recompute, cancellation, sampling, stop strings, forced
// decoding with spans, request validation and the queue limit.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "engine/backends/cpu_backend.h"
#include "engine/core/engine.h"
#include "gtest/gtest.h"
#include "tests/cpp/event_collector.h"
#include "tests/cpp/tiny_model.h"

namespace spanserve {
namespace {

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    TinyModelSpec spec;
    spec.seed = 7;
    const std::string dir = WriteTinyModelDir(spec, MakeTempDir("engine_test"));
    absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(dir);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
  }
  static void TearDownTestSuite() { model_.reset(); }

  std::unique_ptr<Engine> MakeEngine(int32_t num_blocks, EngineConfig config = {},
                                     int32_t block_size = 16) {
    KvPoolOptions pool;
    pool.block_size = block_size;
    pool.num_blocks = num_blocks;
    absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCpuBackend(model_, pool);
    EXPECT_TRUE(backend.ok()) << backend.status();
    absl::StatusOr<std::unique_ptr<Engine>> engine =
        CreateEngine(model_, std::move(*backend), config, &observer_);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return std::move(*engine);
  }

  static GenerateRequest Greedy(const std::string& prompt, int32_t max_tokens) {
    GenerateRequest request;
    request.prompt = prompt;
    request.max_tokens = max_tokens;
    request.ignore_eos = true;
    return request;
  }

  // Runs the requests all at once and returns each one's tokens.
  std::vector<std::vector<int32_t>> RunAll(Engine* engine,
                                           const std::vector<GenerateRequest>& requests) {
    std::vector<std::unique_ptr<Collector>> collectors;
    for (const GenerateRequest& request : requests) {
      collectors.push_back(std::make_unique<Collector>());
      EXPECT_TRUE(engine->Submit(request, collectors.back()->Sink()).ok());
    }
    std::vector<std::vector<int32_t>> outputs;
    for (auto& c : collectors) {
      EXPECT_TRUE(c->Wait());
      outputs.push_back(c->tokens());
    }
    return outputs;
  }

  static std::vector<GenerateRequest> VariedRequests(int n, int32_t max_tokens) {
    std::vector<GenerateRequest> requests;
    for (int i = 0; i < n; ++i) {
      std::string prompt = "(" + std::to_string(i * 37 % 1000) + "+" + std::to_string(i) + ")*";
      for (int j = 0; j < i % 5; ++j) prompt += " the cat sat on a mat.";
      requests.push_back(Greedy(prompt, max_tokens + i % 7));
    }
    return requests;
  }

  struct CountingObserver : EngineObserver {
    void OnPreemption() override { ++preemptions; }
    void OnHeaderFallback() override { ++fallbacks; }
    std::atomic<int> preemptions{0};
    std::atomic<int> fallbacks{0};
  };

  static std::shared_ptr<const Model> model_;
  CountingObserver observer_;
};

std::shared_ptr<const Model> EngineTest::model_;

TEST_F(EngineTest, ConcurrentGreedyOutputsEqualOutputsAlone) {
  const std::vector<GenerateRequest> requests = VariedRequests(32, 12);
  std::vector<std::vector<int32_t>> alone;
  {
    std::unique_ptr<Engine> engine = MakeEngine(512);
    for (const GenerateRequest& r : requests) alone.push_back(RunAll(engine.get(), {r})[0]);
  }
  std::unique_ptr<Engine> engine = MakeEngine(512);
  const std::vector<std::vector<int32_t>> together = RunAll(engine.get(), requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(together[i].size(), static_cast<size_t>(requests[i].max_tokens));
    EXPECT_EQ(together[i], alone[i]) << "request " << i;
  }
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
}

TEST_F(EngineTest, SmallPoolPreemptsAndStillGivesTheSameOutputs) {
  std::vector<GenerateRequest> requests = VariedRequests(12, 40);
  // Half of them sample: the counter-based seed must survive recompute too.
  for (size_t i = 0; i < requests.size(); i += 2) {
    requests[i].sampling = {.temperature = 0.9f, .top_k = 50, .top_p = 0.95f, .seed = 100 + i};
  }
  std::vector<std::vector<int32_t>> large = RunAll(MakeEngine(1024).get(), requests);

  EngineConfig config;
  config.max_batched_tokens = 64;
  std::unique_ptr<Engine> engine = MakeEngine(/*num_blocks=*/12, config, /*block_size=*/16);
  std::vector<std::vector<int32_t>> small = RunAll(engine.get(), requests);
  EXPECT_GT(engine->Stats().preemptions, 0);
  EXPECT_GT(observer_.preemptions.load(), 0);
  for (size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(small[i], large[i]) << "request " << i;
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
}

TEST_F(EngineTest, PoolIsAllFreeAfterFinishedCancelledAndPreempted) {
  EngineConfig config;
  config.max_batched_tokens = 48;
  std::unique_ptr<Engine> engine = MakeEngine(10, config);
  std::vector<GenerateRequest> requests = VariedRequests(10, 60);
  for (GenerateRequest& r : requests) r.ignore_eos = true;  // only length or cancel ends one
  std::vector<std::unique_ptr<Collector>> collectors;
  std::vector<Engine::RequestId> ids(requests.size(), -1);
  std::atomic<bool> running_cancelled{false};
  std::atomic<bool> all_submitted{false};
  for (size_t i = 0; i < requests.size(); ++i) {
    collectors.push_back(std::make_unique<Collector>());
    EventSink sink = collectors.back()->Sink();
    if (i == 0) {
      // Cancel from the engine thread at request 0's third token: a test thread polling for
      // it could wake after the request had finished (CI, 2 cores), and nothing was cancelled.
      // The sink holds request 0's collector itself: `collectors` grows on this thread while
      // the engine thread runs the sink (a race TSan found).
      Collector* const first = collectors.back().get();
      sink = [&, first, sink](GenerationEvent&& event) {
        const bool third = event.token >= 0 && first->num_tokens() == 2;
        sink(std::move(event));
        if (third && !running_cancelled.exchange(true)) {
          while (!all_submitted.load()) std::this_thread::yield();  // ids[4] is known
          engine->Cancel(ids[0]);
          engine->Cancel(ids[4]);
          engine->Cancel(987654);  // unknown: ignored
        }
      };
    }
    absl::StatusOr<Engine::RequestId> id = engine->Submit(requests[i], std::move(sink));
    EXPECT_TRUE(id.ok()) << id.status();
    ids[i] = id.value_or(-1);
  }
  engine->Cancel(ids[9]);  // still waiting behind the others
  all_submitted.store(true);
  for (auto& c : collectors) ASSERT_TRUE(c->Wait());
  EXPECT_TRUE(running_cancelled.load());
  for (size_t i : {0, 4, 9}) {
    EXPECT_EQ(collectors[i]->final_event().finish_reason, FinishReason::kCancelled) << i;
    EXPECT_LT(collectors[i]->num_tokens(), static_cast<size_t>(requests[i].max_tokens)) << i;
  }
  EXPECT_LE(collectors[0]->num_tokens(), 4u);  // the cancel lands at the next step
  for (size_t i : {1, 2, 3, 5, 6, 7, 8}) {
    EXPECT_EQ(collectors[i]->final_event().finish_reason, FinishReason::kLength) << i;
  }
  EXPECT_GT(engine->Stats().preemptions, 0);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
  EXPECT_EQ(engine->Stats().running, 0);
  EXPECT_EQ(engine->Stats().waiting, 0);
}

TEST_F(EngineTest, SameSeedSameOutputOtherSeedOtherOutput) {
  std::unique_ptr<Engine> engine = MakeEngine(256);
  GenerateRequest request = Greedy("(1+2)*3=", 24);
  request.sampling = {.temperature = 1.0f, .seed = 5};
  GenerateRequest other = request;
  other.sampling.seed = 6;
  auto outputs = RunAll(engine.get(), {request, request, other});
  EXPECT_EQ(outputs[0], outputs[1]);
  EXPECT_NE(outputs[0], outputs[2]);
}

TEST_F(EngineTest, FinishReasonsLengthEosAndStop) {
  std::unique_ptr<Engine> engine = MakeEngine(256);
  Collector length;
  ASSERT_TRUE(engine->Submit(Greedy("1+1=", 5), length.Sink()).ok());
  ASSERT_TRUE(length.Wait());
  EXPECT_EQ(length.final_event().finish_reason, FinishReason::kLength);
  EXPECT_EQ(length.final_event().generated_tokens, 5);

  // Forced decoding decides the tokens, so EOS and stop strings can be placed exactly.
  const Tokenizer& tok = *model_->tokenizer;
  GenerateRequest eos = Greedy("1+1=", 20);
  eos.ignore_eos = false;
  eos.forced_output = tok.Encode("12");
  eos.forced_output.push_back(tok.eos_id());
  eos.forced_output.push_back(tok.Encode("9")[0]);
  Collector eos_run;
  ASSERT_TRUE(engine->Submit(eos, eos_run.Sink()).ok());
  ASSERT_TRUE(eos_run.Wait());
  EXPECT_EQ(eos_run.final_event().finish_reason, FinishReason::kEos);
  EXPECT_EQ(eos_run.text(), "12");

  GenerateRequest stop = Greedy("1+1=", 20);
  stop.forced_output = tok.Encode("the cat sat on a mat");
  stop.stop = {"sat", "zebra"};
  Collector stop_run;
  ASSERT_TRUE(engine->Submit(stop, stop_run.Sink()).ok());
  ASSERT_TRUE(stop_run.Wait());
  EXPECT_EQ(stop_run.final_event().finish_reason, FinishReason::kStop);
  EXPECT_EQ(stop_run.text(), "the cat ");
}

TEST_F(EngineTest, ForcedSpanOutputReadsFewerBlocksThanDense) {
  const Tokenizer& tok = *model_->tokenizer;
  // A chain like the arithmetic task's: each step references the previous one.
  std::string output;
  std::string step = "(11+22)*(33-4)+(5*6)-(7+8)*9+10";
  for (int k = 0; k < 12; ++k) output += "<a>" + std::to_string(k) + "</a>" + step;
  output += "<a>x</a>42";  // one malformed header
  GenerateRequest request = Greedy("(11+22)*(33-4)+(5*6)-(7+8)*9+10=", 900);
  request.forced_output = tok.Encode(output);
  request.include_span_markup = true;
  request.return_spans = true;

  std::unique_ptr<Engine> engine = MakeEngine(256, {}, /*block_size=*/16);
  Collector sparse, dense, unasked;
  ASSERT_TRUE(engine->Submit(request, sparse.Sink()).ok());
  request.span_mode = SpanMode::kDense;
  ASSERT_TRUE(engine->Submit(request, dense.Sink()).ok());
  ASSERT_TRUE(sparse.Wait() && dense.Wait());

  const GenerationEvent& s = sparse.final_event();
  EXPECT_EQ(sparse.tokens(), request.forced_output);
  EXPECT_EQ(sparse.text(), output);
  EXPECT_EQ(s.finish_reason, FinishReason::kLength);
  ASSERT_EQ(s.segments.size(), 14u);  // the prompt segment and 13 output segments
  EXPECT_TRUE(s.segments[0].in_prompt);
  EXPECT_EQ(s.segments[5].refs, std::vector<int32_t>{4});  // output step k references k
  EXPECT_EQ(s.segments[5].text, step);
  EXPECT_TRUE(s.segments[13].dense_fallback);
  EXPECT_EQ(observer_.fallbacks.load(), 2);  // once per request
  EXPECT_LT(s.kv_blocks_read, s.kv_blocks_dense * 6 / 10);
  EXPECT_EQ(dense.final_event().kv_blocks_read, dense.final_event().kv_blocks_dense);
  EXPECT_EQ(s.context_tokens, dense.final_event().context_tokens);
  EXPECT_LT(s.attended_tokens, s.context_tokens / 2);
  EXPECT_LE(s.attended_tokens, s.kv_blocks_read * 16);
  EXPECT_EQ(dense.final_event().attended_tokens, dense.final_event().context_tokens);
  EXPECT_EQ(dense.final_event().segments[5].refs, std::vector<int32_t>{4});

  // Without return_spans the finish carries no segment reports (they cost a decode of the
  // whole sequence on the engine thread), and everything else the same.
  request.return_spans = false;
  request.span_mode = SpanMode::kSelfSelected;
  ASSERT_TRUE(engine->Submit(request, unasked.Sink()).ok());
  ASSERT_TRUE(unasked.Wait());
  EXPECT_TRUE(unasked.final_event().segments.empty());
  EXPECT_EQ(unasked.text(), output);
  EXPECT_EQ(unasked.final_event().kv_blocks_read, s.kv_blocks_read);
}

TEST_F(EngineTest, BadRequestsGetInvalidArgumentNamingTheField) {
  std::unique_ptr<Engine> engine = MakeEngine(32);  // 512 tokens of cache, context 1024
  auto expect_bad = [&](GenerateRequest r, const std::string& field) {
    absl::StatusOr<Engine::RequestId> id = engine->Submit(r, [](GenerationEvent&&) {});
    ASSERT_FALSE(id.ok()) << field;
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_TRUE(absl::StartsWith(id.status().message(), field)) << id.status();
  };
  GenerateRequest ok = Greedy("1+1=", 4);
  GenerateRequest r = ok;
  r.prompt = "";
  expect_bad(r, "prompt");
  r = ok;
  r.prompt = "a <a> b";
  expect_bad(r, "prompt");
  r = ok;
  r.prompt = std::string(2000, '7');
  expect_bad(r, "prompt");
  r = ok;
  r.max_tokens = 0;
  expect_bad(r, "max_tokens");
  r.max_tokens = 100000;
  expect_bad(r, "max_tokens");
  r.max_tokens = 1000;  // fits the limit and the context, not the cache
  expect_bad(r, "max_tokens");
  r = ok;
  r.sampling.temperature = -1;
  expect_bad(r, "temperature");
  r.sampling.temperature = std::nanf("");
  expect_bad(r, "temperature");
  r = ok;
  r.sampling.top_p = 0;
  expect_bad(r, "top_p");
  r.sampling.top_p = 1.5f;
  expect_bad(r, "top_p");
  r = ok;
  r.sampling.top_k = -2;
  expect_bad(r, "top_k");
  r = ok;
  r.stop = std::vector<std::string>(9, "x");
  expect_bad(r, "stop");
  r.stop = {std::string(65, 'x')};
  expect_bad(r, "stop[0]");
  r.stop = {""};
  expect_bad(r, "stop[0]");
  r = ok;
  r.span_mode = static_cast<SpanMode>(7);
  expect_bad(r, "span_mode");
  r = ok;
  r.prompt.clear();
  r.segments = {"a", ""};
  expect_bad(r, "segments[1]");
  EXPECT_TRUE(engine->Submit(ok, [](GenerationEvent&&) {}).ok());
}

TEST_F(EngineTest, DefaultMaxTokensFillsTheRoomInTheContextAndThePool) {
  // 32 blocks of 16: 512 tokens of cache under a context of 1024. An unset max_tokens (the
  // server passes its limit) is cut to what the smaller of the two leaves after the prompt.
  std::unique_ptr<Engine> engine = MakeEngine(32);
  GenerateRequest request = Greedy("1+1=", 4096);
  request.max_tokens_is_default = true;
  Collector collector;
  ASSERT_TRUE(engine->Submit(request, collector.Sink()).ok());
  ASSERT_TRUE(collector.Wait());
  const GenerationEvent& done = collector.final_event();
  EXPECT_EQ(done.finish_reason, FinishReason::kLength);
  EXPECT_EQ(done.prompt_tokens + done.generated_tokens, 512);
  request.max_tokens_is_default = false;  // asked for explicitly: refused, naming the field
  absl::StatusOr<Engine::RequestId> refused = engine->Submit(request, [](GenerationEvent&&) {});
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::StartsWith(refused.status().message(), "max_tokens")) << refused.status();
}

TEST_F(EngineTest, FullQueueIsResourceExhaustedAndShutdownIsUnavailable) {
  EngineConfig config;
  config.max_running = 1;
  config.max_waiting = 2;
  std::unique_ptr<Engine> engine = MakeEngine(64, config);
  std::vector<std::unique_ptr<Collector>> collectors;
  absl::Status last;
  for (int i = 0; i < 8 && last.ok(); ++i) {
    collectors.push_back(std::make_unique<Collector>());
    last = engine->Submit(Greedy("1+2=", 200), collectors.back()->Sink()).status();
  }
  EXPECT_EQ(last.code(), absl::StatusCode::kResourceExhausted);
  engine->Shutdown(0);  // no grace: in-flight requests are cancelled
  for (size_t i = 0; i + 1 < collectors.size(); ++i) {
    ASSERT_TRUE(collectors[i]->Wait());
    EXPECT_EQ(collectors[i]->final_event().finish_reason, FinishReason::kCancelled);
  }
  absl::Status after = engine->Submit(Greedy("1+2=", 2), [](GenerationEvent&&) {}).status();
  EXPECT_EQ(after.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
}

TEST_F(EngineTest, ShutdownWithGraceLetsRequestsFinish) {
  std::unique_ptr<Engine> engine = MakeEngine(64);
  Collector collector;
  ASSERT_TRUE(engine->Submit(Greedy("1+2=", 16), collector.Sink()).ok());
  engine->Shutdown(60);
  ASSERT_TRUE(collector.Wait(0));
  EXPECT_EQ(collector.final_event().finish_reason, FinishReason::kLength);
}

// The engine thread against caller threads (what the TSan build checks): four threads submit and
// cancel while the loop runs and a fifth reads Stats(); every request finishes exactly once, the
// cancelled ones as kCancelled or done before the cancel arrived, and the pool ends all free.
TEST_F(EngineTest, SubmitAndCancelFromManyThreadsWhileTheLoopRuns) {
  std::unique_ptr<Engine> engine = MakeEngine(128);
  constexpr int kThreads = 4, kPerThread = 6;
  std::vector<std::unique_ptr<Collector>> collectors(kThreads * kPerThread);
  for (auto& c : collectors) c = std::make_unique<Collector>();
  std::atomic<bool> stop_stats{false};
  std::thread stats([&] {
    while (!stop_stats) {
      const EngineStats s = engine->Stats();
      EXPECT_LE(s.kv_blocks_used, s.kv_blocks_total);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  std::vector<std::thread> submitters;
  for (int t = 0; t < kThreads; ++t) {
    submitters.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        Collector* c = collectors[t * kPerThread + i].get();
        absl::StatusOr<Engine::RequestId> id =
            engine->Submit(Greedy("(" + std::to_string(t) + "+" + std::to_string(i) + ")*3=", 8),
                           c->Sink());
        ASSERT_TRUE(id.ok()) << id.status();
        if (i % 2 == 1) engine->Cancel(*id);  // some before their first step, some during it
        if (i % 3 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
  }
  for (std::thread& s : submitters) s.join();
  int cancelled = 0;
  for (size_t i = 0; i < collectors.size(); ++i) {
    ASSERT_TRUE(collectors[i]->Wait()) << "request " << i;
    const FinishReason reason = collectors[i]->final_event().finish_reason;
    if (i % kPerThread % 2 == 0) {
      EXPECT_EQ(reason, FinishReason::kLength) << "request " << i;
      EXPECT_EQ(collectors[i]->num_tokens(), 8u) << "request " << i;
    } else {
      EXPECT_TRUE(reason == FinishReason::kCancelled || reason == FinishReason::kLength) << i;
      cancelled += reason == FinishReason::kCancelled;
    }
  }
  stop_stats = true;
  stats.join();
  EXPECT_GT(cancelled, 0);
  engine->Shutdown(0);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
  EXPECT_EQ(engine->Stats().running + engine->Stats().waiting, 0);
}

// ---- Faults: a failed step, prompts against the pool (issue 21, part 5) ----

// Passes steps on to the backend it wraps and counts each step's sequences; the first step waits
// for Open(), so that requests submitted meanwhile all join the second step.
class GatedBackend : public Backend {
 public:
  explicit GatedBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}
  std::string name() const override { return inner_->name(); }
  absl::Status Step(const StepBatch& batch, StepOutput* out) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      step_seqs_.push_back(static_cast<int>(batch.seqs.size()));
      cv_.notify_all();
      cv_.wait(lock, [this] { return open_; });
    }
    return inner_->Step(batch, out);
  }
  int32_t num_kv_blocks() const override { return inner_->num_kv_blocks(); }
  int32_t block_size() const override { return inner_->block_size(); }
  int32_t vocab_size() const override { return inner_->vocab_size(); }

  void WaitForFirstStep() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return !step_seqs_.empty(); });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  std::vector<int> step_seqs() const {
    std::lock_guard<std::mutex> lock(mu_);
    return step_seqs_;
  }

 private:
  std::unique_ptr<Backend> inner_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  std::vector<int> step_seqs_;  // sequences of each step so far
};

// An engine on a CPU backend that fails the given steps, behind a GatedBackend (*gate).
std::unique_ptr<Engine> MakeFaultyEngine(std::shared_ptr<const Model> model, int32_t num_blocks,
                                         std::vector<int64_t> fail_steps, EngineConfig config,
                                         GatedBackend** gate) {
  KvPoolOptions pool;
  pool.num_blocks = num_blocks;
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      CreateCpuBackend(model, pool, {.fail_steps = std::move(fail_steps)});
  EXPECT_TRUE(backend.ok()) << backend.status();
  auto gated = std::make_unique<GatedBackend>(std::move(*backend));
  *gate = gated.get();
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      CreateEngine(model, std::move(gated), config);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return std::move(*engine);
}

std::vector<int32_t> Prefix(const std::vector<int32_t>& tokens, size_t n) {
  return {tokens.begin(), tokens.begin() + std::min(n, tokens.size())};
}

TEST_F(EngineTest, FailedStepFailsItsRequestsAndTheOthersGiveTheirOutputsAlone) {
  if (!CpuFaultInjectionBuilt()) GTEST_SKIP() << "built without SPANSERVE_FAULT_INJECTION";
  std::vector<GenerateRequest> requests = {
      Greedy("(12+34)*5=", 30), Greedy("7*(8-9)+10=", 30), Greedy("the cat sat. 1+1=", 12),
      Greedy("99-98=", 16), Greedy("(1+2)*(3+4)=", 20)};
  requests[1].sampling = {.temperature = 0.9f, .top_k = 50, .top_p = 0.95f, .seed = 77};
  requests[2].sampling = {.temperature = 1.0f, .seed = 5};
  requests[4].sampling = {.temperature = 0.8f, .seed = 9};
  std::vector<std::vector<int32_t>> alone;
  {
    std::unique_ptr<Engine> engine = MakeEngine(256);
    for (const GenerateRequest& r : requests) alone.push_back(RunAll(engine.get(), {r})[0]);
  }

  // At most 2 running: step 1 is {0}, steps 2-4 are {0, 1} (4 fails), 2 and 3 wait meanwhile
  // and run from step 5; 4 comes after the failure.
  EngineConfig config;
  config.max_running = 2;
  GatedBackend* gate = nullptr;
  std::unique_ptr<Engine> engine = MakeFaultyEngine(model_, 256, {4}, config, &gate);
  std::vector<Collector> c(requests.size());
  ASSERT_TRUE(engine->Submit(requests[0], c[0].Sink()).ok());
  gate->WaitForFirstStep();
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(engine->Submit(requests[i], c[i].Sink()).ok());
  gate->Open();
  for (int i = 0; i <= 3; ++i) ASSERT_TRUE(c[i].Wait()) << i;
  ASSERT_TRUE(engine->Submit(requests[4], c[4].Sink()).ok());
  ASSERT_TRUE(c[4].Wait());

  const std::vector<int> seqs = gate->step_seqs();
  ASSERT_GE(seqs.size(), 5u);
  EXPECT_EQ(std::vector<int>(seqs.begin(), seqs.begin() + 5), (std::vector<int>{1, 2, 2, 2, 2}));
  for (int i : {0, 1}) {
    const GenerationEvent& done = c[i].final_event();
    EXPECT_EQ(done.finish_reason, FinishReason::kError) << i;
    EXPECT_EQ(done.error, "injected fault at step 4") << i;
    // What came before the failure is what the request gives alone.
    EXPECT_EQ(c[i].tokens(), Prefix(alone[i], 3 - i)) << i;
  }
  for (int i : {2, 3, 4}) {
    EXPECT_EQ(c[i].final_event().finish_reason, FinishReason::kLength) << i;
    EXPECT_EQ(c[i].tokens(), alone[i]) << i;
  }
  const EngineStats stats = engine->Stats();
  EXPECT_EQ(stats.kv_blocks_used, 0);
  EXPECT_EQ(stats.running, 0);
  EXPECT_EQ(stats.waiting, 0);
}

TEST_F(EngineTest, FailedStepsUnderPreemptionLeaveTheOthersExactAndThePoolFree) {
  if (!CpuFaultInjectionBuilt()) GTEST_SKIP() << "built without SPANSERVE_FAULT_INJECTION";
  std::vector<GenerateRequest> requests = VariedRequests(12, 40);
  for (size_t i = 0; i < requests.size(); i += 2) {
    requests[i].sampling = {.temperature = 0.9f, .top_k = 50, .top_p = 0.95f, .seed = 300 + i};
  }
  const std::vector<std::vector<int32_t>> alone = RunAll(MakeEngine(1024).get(), requests);

  // A small pool and token budget: preemption, chunked prefill, running sequences left out of
  // a step; two steps fail along the way.
  EngineConfig config;
  config.max_batched_tokens = 24;
  config.max_running = 6;
  const std::vector<int64_t> fail_steps = {4, 24};
  GatedBackend* gate = nullptr;
  std::unique_ptr<Engine> engine = MakeFaultyEngine(model_, 12, fail_steps, config, &gate);
  std::vector<Collector> c(requests.size());
  ASSERT_TRUE(engine->Submit(requests[0], c[0].Sink()).ok());
  gate->WaitForFirstStep();  // the others arrive during step 1: the schedule is fixed
  for (size_t i = 1; i < requests.size(); ++i) {
    ASSERT_TRUE(engine->Submit(requests[i], c[i].Sink()).ok());
  }
  gate->Open();
  std::set<std::string> errors;
  int failed = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(c[i].Wait()) << i;
    const GenerationEvent& done = c[i].final_event();
    if (done.finish_reason == FinishReason::kError) {
      ++failed;
      errors.insert(done.error);
      EXPECT_EQ(c[i].tokens(), Prefix(alone[i], c[i].tokens().size())) << i;
    } else {
      EXPECT_EQ(done.finish_reason, FinishReason::kLength) << i;
      EXPECT_EQ(c[i].tokens(), alone[i]) << i;
    }
  }
  // Each failed step failed someone (7 of 12 in all as the schedule stands); enough others
  // lived through both to compare.
  std::set<std::string> expected;
  for (int64_t step : fail_steps) expected.insert("injected fault at step " + std::to_string(step));
  EXPECT_EQ(errors, expected);
  EXPECT_LE(failed, 9);
  const EngineStats stats = engine->Stats();
  EXPECT_GT(stats.preemptions, 0);
  EXPECT_EQ(stats.kv_blocks_used, 0);
  EXPECT_EQ(stats.running, 0);
  EXPECT_EQ(stats.waiting, 0);
}

TEST_F(EngineTest, PromptLongerThanThePoolIsRefusedNamingThePrompt) {
  std::unique_ptr<Engine> engine = MakeEngine(4);  // 64 tokens of cache, context 1024
  std::string prompt;
  while (model_->tokenizer->Encode(prompt).size() < 100) prompt += "12+34*";
  for (bool default_max_tokens : {true, false}) {
    GenerateRequest request = Greedy(prompt, default_max_tokens ? 4096 : 1);
    request.max_tokens_is_default = default_max_tokens;
    absl::StatusOr<Engine::RequestId> id = engine->Submit(request, [](GenerationEvent&&) {});
    ASSERT_FALSE(id.ok());
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StartsWith(id.status().message(), "prompt: ")) << id.status();
    EXPECT_TRUE(absl::StrContains(id.status().message(), "KV cache of 64 tokens")) << id.status();
  }
  // A prompt that fits, with a max_tokens that does not: max_tokens is named.
  absl::StatusOr<Engine::RequestId> id =
      engine->Submit(Greedy("1+1=", 100), [](GenerationEvent&&) {});
  ASSERT_FALSE(id.ok());
  EXPECT_TRUE(absl::StartsWith(id.status().message(), "max_tokens: ")) << id.status();
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
}

TEST_F(EngineTest, PromptThatFillsThePoolAloneFinishesAmongOthers) {
  // 8 blocks of 16: 128 tokens. The big request fills the whole pool, so it can run only when
  // nothing else holds a block: the others must finish or be preempted, and later arrivals
  // must not overtake it forever.
  std::string prompt;
  while (model_->tokenizer->Encode(prompt).size() < 90) prompt += "(5-3)*";
  GenerateRequest big = Greedy(prompt, 8);
  std::vector<GenerateRequest> others = VariedRequests(6, 30);
  std::vector<std::vector<int32_t>> alone;
  int32_t big_prompt_tokens = 0;
  {
    std::unique_ptr<Engine> engine = MakeEngine(1024);
    Collector probe;
    ASSERT_TRUE(engine->Submit(big, probe.Sink()).ok());
    ASSERT_TRUE(probe.Wait());
    big_prompt_tokens = probe.final_event().prompt_tokens;
    ASSERT_LT(big_prompt_tokens, 128);
    big.max_tokens = 128 - big_prompt_tokens;
    alone.push_back(RunAll(engine.get(), {big})[0]);
    for (const GenerateRequest& r : others) alone.push_back(RunAll(engine.get(), {r})[0]);
  }
  EngineConfig config;
  config.max_batched_tokens = 32;
  std::unique_ptr<Engine> engine = MakeEngine(8, config);
  std::vector<Collector> c(1 + others.size());
  for (size_t i = 0; i < 3; ++i) ASSERT_TRUE(engine->Submit(others[i], c[1 + i].Sink()).ok());
  ASSERT_TRUE(engine->Submit(big, c[0].Sink()).ok());
  for (size_t i = 3; i < others.size(); ++i) {
    ASSERT_TRUE(engine->Submit(others[i], c[1 + i].Sink()).ok());
  }
  for (size_t i = 0; i < c.size(); ++i) {
    ASSERT_TRUE(c[i].Wait(60)) << "request " << i << " did not finish";
    EXPECT_EQ(c[i].final_event().finish_reason, FinishReason::kLength) << i;
    EXPECT_EQ(c[i].tokens(), alone[i]) << i;
  }
  EXPECT_EQ(c[0].final_event().prompt_tokens + c[0].final_event().generated_tokens, 128);
  EXPECT_GT(engine->Stats().preemptions, 0);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
}

}  // namespace
}  // namespace spanserve
