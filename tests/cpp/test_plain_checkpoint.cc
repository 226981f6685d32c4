// Plain Hugging Face checkpoints in the engine: a directory without spanserve.json is served
// DENSE (its prompt without anchors, SELF_SELECTED refused), and generation_config.json's
// sampling fills only what a request leaves out.
#include <filesystem>
#include <fstream>
#include <future>

#include "absl/strings/match.h"
#include "engine/backends/cpu_backend.h"
#include "engine/core/engine.h"
#include "gtest/gtest.h"
#include "tests/cpp/tiny_model.h"

namespace spanserve {
namespace {

struct Result {
  std::vector<int32_t> tokens;
  GenerationEvent final_event;
};

std::shared_ptr<const Model> Load(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(dir);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::shared_ptr<const Model>(std::move(*model)) : nullptr;
}

std::unique_ptr<Engine> MakeEngine(std::shared_ptr<const Model> model) {
  KvPoolOptions pool;
  pool.block_size = 16;
  pool.num_blocks = 64;
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCpuBackend(model, pool);
  EXPECT_TRUE(backend.ok()) << backend.status();
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      CreateEngine(model, std::move(*backend), EngineConfig{}, nullptr);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return std::move(*engine);
}

// Submits one request and waits for its finish; the Submit status when it is refused.
absl::StatusOr<Result> RunOne(Engine* engine, const GenerateRequest& request) {
  auto result = std::make_shared<Result>();
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> finished = done->get_future();
  absl::StatusOr<Engine::RequestId> id =
      engine->Submit(request, [result, done](GenerationEvent&& event) {
        if (event.token >= 0) result->tokens.push_back(event.token);
        if (event.finished) {
          result->final_event = std::move(event);
          done->set_value();
        }
      });
  if (!id.ok()) return id.status();
  EXPECT_EQ(finished.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  return *result;
}

// What ToEngineRequest makes of a request that gives only the prompt and max_tokens.
GenerateRequest Defaulted(const std::string& prompt) {
  GenerateRequest r;
  r.prompt = prompt;
  r.max_tokens = 12;
  r.ignore_eos = true;
  r.sampling.temperature = 1.0f;
  r.sampling.seed = 5;
  r.temperature_is_default = r.top_p_is_default = r.top_k_is_default = true;
  r.span_mode_is_default = true;  // and span_mode at the server's default, SELF_SELECTED
  return r;
}

class PlainCheckpointTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    TinyModelSpec spec;
    spec.seed = 11;
    spans_dir_ = WriteTinyModelDir(spec, MakeTempDir("plain_spans"));
    plain_dir_ = WriteTinyModelDir(spec, MakeTempDir("plain"));
    std::filesystem::remove(plain_dir_ + "/spanserve.json");
  }
  static std::string spans_dir_, plain_dir_;
};
std::string PlainCheckpointTest::spans_dir_, PlainCheckpointTest::plain_dir_;

TEST_F(PlainCheckpointTest, UnsetModeIsDenseOverThePromptWithoutAnchors) {
  std::shared_ptr<const Model> plain = Load(plain_dir_), spans = Load(spans_dir_);
  ASSERT_TRUE(plain && spans);
  std::unique_ptr<Engine> plain_engine = MakeEngine(plain), span_engine = MakeEngine(spans);

  GenerateRequest unset = Defaulted("(3+4)*5 the cat");
  unset.sampling.temperature = 0.0f;
  absl::StatusOr<Result> served = RunOne(plain_engine.get(), unset);
  ASSERT_TRUE(served.ok()) << served.status();
  EXPECT_EQ(served->final_event.finish_reason, FinishReason::kLength);
  EXPECT_EQ(served->final_event.kv_blocks_read, served->final_event.kv_blocks_dense);

  GenerateRequest dense = unset;
  dense.span_mode = SpanMode::kDense;
  dense.span_mode_is_default = false;
  absl::StatusOr<Result> explicit_dense = RunOne(plain_engine.get(), dense);
  ASSERT_TRUE(explicit_dense.ok()) << explicit_dense.status();
  EXPECT_EQ(served->tokens, explicit_dense->tokens);

  // The same weights with spans, given [BOS] + the text's ids (no anchor): the same tokens.
  GenerateRequest by_ids = dense;
  by_ids.prompt.clear();
  by_ids.prompt_token_ids = {spans->tokenizer->bos_id()};
  for (int32_t id : spans->tokenizer->Encode(unset.prompt)) by_ids.prompt_token_ids.push_back(id);
  absl::StatusOr<Result> reference = RunOne(span_engine.get(), by_ids);
  ASSERT_TRUE(reference.ok()) << reference.status();
  EXPECT_EQ(served->final_event.prompt_tokens, static_cast<int32_t>(by_ids.prompt_token_ids.size()));
  EXPECT_EQ(served->tokens, reference->tokens);
}

TEST_F(PlainCheckpointTest, SelfSelectedAskedForIsRefusedNamingTheSpanConfig) {
  std::shared_ptr<const Model> plain = Load(plain_dir_);
  ASSERT_TRUE(plain);
  std::unique_ptr<Engine> engine = MakeEngine(plain);
  GenerateRequest asked = Defaulted("(3+4)*5");
  asked.span_mode = SpanMode::kSelfSelected;
  asked.span_mode_is_default = false;
  absl::StatusOr<Result> refused = RunOne(engine.get(), asked);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "spanserve.json"))
      << refused.status();
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
}

TEST_F(PlainCheckpointTest, SpanMarkupInAPlainModelsPromptIsJustText) {
  std::shared_ptr<const Model> plain = Load(plain_dir_), spans = Load(spans_dir_);
  ASSERT_TRUE(plain && spans);
  const GenerateRequest typed = Defaulted("<a>0</a> is text here");
  absl::StatusOr<Result> served = RunOne(MakeEngine(plain).get(), typed);
  EXPECT_TRUE(served.ok()) << served.status();
  absl::StatusOr<Result> refused = RunOne(MakeEngine(spans).get(), typed);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PlainCheckpointTest, GenerationConfigFillsOnlyWhatTheRequestLeavesOut) {
  const std::string greedy_dir = WriteTinyModelDir(TinyModelSpec{.seed = 11}, MakeTempDir("gen"));
  std::ofstream(greedy_dir + "/generation_config.json") << R"({"do_sample": false})";
  std::shared_ptr<const Model> greedy_model = Load(greedy_dir), spans = Load(spans_dir_);
  ASSERT_TRUE(greedy_model && spans);
  std::unique_ptr<Engine> greedy_engine = MakeEngine(greedy_model), engine = MakeEngine(spans);

  GenerateRequest left_out = Defaulted("(8-2)*3");  // temperature 1.0, but only as a default
  absl::StatusOr<Result> by_file = RunOne(greedy_engine.get(), left_out);
  GenerateRequest greedy = left_out;
  greedy.sampling.temperature = 0.0f;
  greedy.temperature_is_default = false;
  absl::StatusOr<Result> by_request = RunOne(engine.get(), greedy);
  ASSERT_TRUE(by_file.ok() && by_request.ok());
  EXPECT_EQ(by_file->tokens, by_request->tokens);

  // Asked for in the request, temperature 1.0 stands: the same draw as without the file.
  GenerateRequest sampled = left_out;
  sampled.temperature_is_default = false;
  absl::StatusOr<Result> with_file = RunOne(greedy_engine.get(), sampled);
  absl::StatusOr<Result> without_file = RunOne(engine.get(), sampled);
  ASSERT_TRUE(with_file.ok() && without_file.ok());
  EXPECT_EQ(with_file->tokens, without_file->tokens);
  EXPECT_NE(with_file->tokens, by_file->tokens);  // seed 5 at temperature 1 is not the greedy path
}

}  // namespace
}  // namespace spanserve
