// Prefix caching through the engine on the CPU backend with a tiny random model: the same
// tokens with caching on and off (greedy and seeded sampling, SELF_SELECTED and DENSE, with
// preemption forced by a small pool), the hit tokens skipped by prefill, hits counted, and the
// pool all free once the cache drops after finished, cancelled and preempted requests.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>

#include "engine/backends/cpu_backend.h"
#include "engine/core/engine.h"
#include "gtest/gtest.h"
#include "tests/cpp/event_collector.h"
#include "tests/cpp/tiny_model.h"

namespace spanserve {
namespace {

struct CountingObserver : EngineObserver {
  void OnStep(const StepStats& s) override { rows += s.num_rows; }
  void OnPreemption() override { ++preemptions; }
  void OnPrefixCacheQuery(int64_t query, int64_t hit) override {
    queries += query;
    hits += hit;
  }
  std::atomic<int64_t> rows{0}, preemptions{0}, queries{0}, hits{0};
};

class EnginePrefixCacheTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    TinyModelSpec spec;
    spec.seed = 11;
    absl::StatusOr<std::unique_ptr<Model>> model =
        LoadModel(WriteTinyModelDir(spec, MakeTempDir("engine_prefix_test")));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
  }
  static void TearDownTestSuite() { model_.reset(); }

  std::unique_ptr<Engine> MakeEngine(int32_t num_blocks, bool caching, CountingObserver* observer,
                                     int32_t max_batched_tokens = 2048) {
    KvPoolOptions pool;
    pool.block_size = 16;
    pool.num_blocks = num_blocks;
    absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCpuBackend(model_, pool);
    EXPECT_TRUE(backend.ok()) << backend.status();
    EngineConfig config;
    config.prefix_caching = caching;
    config.max_batched_tokens = max_batched_tokens;
    absl::StatusOr<std::unique_ptr<Engine>> engine =
        CreateEngine(model_, std::move(*backend), config, observer);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return std::move(*engine);
  }

  // Ordinary token ids (no span or EOS token), from the rng.
  static std::vector<int32_t> RandomIds(std::mt19937* rng, int32_t n) {
    std::vector<int32_t> ids;
    while (static_cast<int32_t>(ids.size()) < n) {
      const int32_t id = 10 + (*rng)() % 300;
      const std::vector<int32_t>& eos = model_->config.eos_token_ids;
      if (id == model_->span.anchor_id || id == model_->span.header_end_id ||
          std::find(eos.begin(), eos.end(), id) != eos.end()) {
        continue;
      }
      ids.push_back(id);
    }
    return ids;
  }

  // Requests whose prompts are [anchor] + a shared prefix of shared_len tokens + their own,
  // alternating SELF_SELECTED and DENSE, greedy and seeded sampling.
  static std::vector<GenerateRequest> SharedPrefixRequests(int n, int32_t shared_len,
                                                           int32_t max_tokens) {
    std::mt19937 rng(3);
    std::vector<int32_t> shared = {model_->span.anchor_id};
    for (int32_t id : RandomIds(&rng, shared_len)) shared.push_back(id);
    std::vector<GenerateRequest> requests;
    for (int i = 0; i < n; ++i) {
      GenerateRequest r;
      r.prompt_token_ids = shared;
      // Request 1 repeats request 0's prompt exactly; the rest add their own 0-20 tokens.
      const int32_t own = i == 1 ? 0 : static_cast<int32_t>(rng() % 21);
      std::vector<int32_t> tail = i == 1 ? requests[0].prompt_token_ids : RandomIds(&rng, own);
      if (i == 1) r.prompt_token_ids.clear();
      r.prompt_token_ids.insert(r.prompt_token_ids.end(), tail.begin(), tail.end());
      r.max_tokens = max_tokens + i % 5;
      r.ignore_eos = true;
      r.span_mode = i % 2 ? SpanMode::kDense : SpanMode::kSelfSelected;
      if (i % 3 == 1) r.sampling = {.temperature = 0.9f, .top_k = 40, .top_p = 0.95f, .seed = 50u + i};
      requests.push_back(std::move(r));
    }
    return requests;
  }

  // The first request alone (it fills the cache), then the rest at once.
  static std::vector<std::vector<int32_t>> Run(Engine* engine,
                                               const std::vector<GenerateRequest>& requests) {
    std::vector<std::unique_ptr<Collector>> collectors;
    for (size_t i = 0; i < requests.size(); ++i) {
      collectors.push_back(std::make_unique<Collector>());
      EXPECT_TRUE(engine->Submit(requests[i], collectors.back()->Sink()).ok());
      if (i == 0) EXPECT_TRUE(collectors[0]->Wait());
    }
    std::vector<std::vector<int32_t>> outputs;
    for (auto& c : collectors) {
      EXPECT_TRUE(c->Wait());
      outputs.push_back(c->tokens());
    }
    return outputs;
  }

  // After every request ended: no block held; once the cache drops, none cached either.
  static void ExpectAllFreeAfterDrop(Engine* engine) {
    EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
    engine->DropPrefixCache();
    EXPECT_EQ(engine->Stats().kv_blocks_cached, 0);
    EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
  }

  static std::shared_ptr<const Model> model_;
};

std::shared_ptr<const Model> EnginePrefixCacheTest::model_;

TEST_F(EnginePrefixCacheTest, SameTokensOnAndOffAndHitsSkipPrefill) {
  const std::vector<GenerateRequest> requests = SharedPrefixRequests(8, 70, 10);
  CountingObserver off_observer, on_observer;
  std::unique_ptr<Engine> off = MakeEngine(512, false, &off_observer);
  std::unique_ptr<Engine> on = MakeEngine(512, true, &on_observer);
  const std::vector<std::vector<int32_t>> reference = Run(off.get(), requests);
  const std::vector<std::vector<int32_t>> cached = Run(on.get(), requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(cached[i].size(), static_cast<size_t>(requests[i].max_tokens));
    EXPECT_EQ(cached[i], reference[i]) << "request " << i;
  }
  EXPECT_EQ(off_observer.queries.load(), 0);
  EXPECT_EQ(off_observer.hits.load(), 0);
  // The shared 71 tokens are 4 full blocks of 16: each later request hits their 64 tokens;
  // request 1 (request 0's prompt again) all of request 0's full blocks but one token's.
  int64_t prompt_tokens = 0;
  for (const GenerateRequest& r : requests) prompt_tokens += r.prompt_token_ids.size();
  const int64_t repeat_len = requests[0].prompt_token_ids.size();
  EXPECT_EQ(on_observer.queries.load(), prompt_tokens);
  EXPECT_EQ(on_observer.hits.load(),
            64 * (static_cast<int64_t>(requests.size()) - 2) + (repeat_len - 1) / 16 * 16);
  // Prefill computes exactly the tokens that missed (a step's OnStep comes after its events:
  // the loops are stopped first).
  off->Shutdown(0);
  on->Shutdown(0);
  EXPECT_EQ(off_observer.rows.load() - on_observer.rows.load(), on_observer.hits.load());
  ExpectAllFreeAfterDrop(on.get());
  ExpectAllFreeAfterDrop(off.get());
}

TEST_F(EnginePrefixCacheTest, SameTokensUnderPreemptionInASmallPool) {
  const std::vector<GenerateRequest> requests = SharedPrefixRequests(10, 70, 30);
  CountingObserver off_observer, on_observer;
  std::unique_ptr<Engine> off = MakeEngine(512, false, &off_observer);
  // 14 blocks of 16: about two sequences at a time; a small budget chunks the prefills.
  std::unique_ptr<Engine> on = MakeEngine(14, true, &on_observer, 48);
  const std::vector<std::vector<int32_t>> reference = Run(off.get(), requests);
  const std::vector<std::vector<int32_t>> cached = Run(on.get(), requests);
  EXPECT_GT(on_observer.preemptions.load(), 0);
  EXPECT_GT(on_observer.hits.load(), 0);
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(cached[i], reference[i]) << "request " << i;
  }
  ExpectAllFreeAfterDrop(on.get());
}

TEST_F(EnginePrefixCacheTest, PoolAllFreeAfterCancelsAndTheDropForgetsThePrefix) {
  const std::vector<GenerateRequest> requests = SharedPrefixRequests(12, 70, 40);
  CountingObserver observer;
  std::unique_ptr<Engine> engine = MakeEngine(16, true, &observer, 32);
  std::vector<std::unique_ptr<Collector>> collectors;
  std::vector<Engine::RequestId> ids;
  for (const GenerateRequest& r : requests) {
    collectors.push_back(std::make_unique<Collector>());
    absl::StatusOr<Engine::RequestId> id = engine->Submit(r, collectors.back()->Sink());
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  // Cancel every third one at different points: waiting, prefilling, decoding.
  for (size_t i = 0; i < ids.size(); i += 3) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5 * i));
    engine->Cancel(ids[i]);
  }
  int cancelled = 0;
  for (auto& c : collectors) {
    ASSERT_TRUE(c->Wait());
    cancelled += c->reason() == FinishReason::kCancelled;
  }
  EXPECT_GT(cancelled, 0);
  EXPECT_GT(observer.hits.load(), 0);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
  EXPECT_GT(engine->Stats().kv_blocks_cached, 0);  // the shared prefix, kept
  ExpectAllFreeAfterDrop(engine.get());

  // Dropped: the same prompt again finds nothing.
  const int64_t hits = observer.hits.load();
  Collector again;
  ASSERT_TRUE(engine->Submit(requests[2], again.Sink()).ok());
  ASSERT_TRUE(again.Wait());
  EXPECT_EQ(observer.hits.load(), hits);
  EXPECT_GT(engine->Stats().kv_blocks_cached, 0);
  engine->Shutdown(0);
  engine->DropPrefixCache();  // after the loop stopped: done on the caller's thread
  EXPECT_EQ(engine->Stats().kv_blocks_cached, 0);
}

}  // namespace
}  // namespace spanserve
