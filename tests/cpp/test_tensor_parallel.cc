// Tensor parallelism on the CPU: the shard plan's properties, the weight slicing, the all-reduce,
// and the CPU backend with N simulated ranks against the unsharded one (logits within 1e-4,
// greedy tokens identical), dense and with span masks, through the backend and the engine.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <numeric>
#include <random>
#include <string>

#include "engine/backends/cpu_backend.h"
#include "engine/backends/cpu_math.h"
#include "engine/core/attention_plan.h"
#include "engine/core/engine.h"
#include "engine/model/safetensors.h"
#include "engine/model/tensor_parallel.h"
#include "gtest/gtest.h"
#include "tests/cpp/event_collector.h"
#include "tests/cpp/tiny_model.h"

namespace spanserve {
namespace {

ModelConfig Config(int32_t heads, int32_t kv_heads, int32_t inter, int32_t head_dim = 8) {
  ModelConfig c;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.intermediate_size = inter;
  c.head_dim = head_dim;
  c.hidden_size = heads * head_dim;
  return c;
}

// ---------------------------------------------------------------------------------------------
// The plan

TEST(ShardPlan, EveryHeadAndFeatureHasItsOwnersAndGqaStaysOnTheRank) {
  struct Case { int32_t heads, kv_heads, inter; };
  for (Case mc : {Case{4, 4, 128}, Case{8, 2, 96}, Case{8, 1, 64}, Case{32, 8, 256},
                  Case{12, 6, 48}, Case{16, 16, 32}}) {
    const ModelConfig c = Config(mc.heads, mc.kv_heads, mc.inter);
    for (int32_t n = 1; n <= mc.heads; ++n) {
      absl::StatusOr<TensorParallelPlan> plan = PlanTensorParallel(c, n);
      const bool fits = mc.heads % n == 0 && mc.inter % n == 0 &&
                        (n <= mc.kv_heads ? mc.kv_heads % n == 0 : n % mc.kv_heads == 0);
      ASSERT_EQ(plan.ok(), fits) << mc.heads << "/" << mc.kv_heads << " n=" << n << " "
                                 << plan.status();
      if (!fits) continue;
      const std::string what = std::to_string(mc.heads) + "/" + std::to_string(mc.kv_heads) +
                               " n=" + std::to_string(n);
      ASSERT_EQ(plan->size, n);
      ASSERT_EQ(static_cast<int32_t>(plan->ranks.size()), n);
      EXPECT_EQ(plan->group, mc.heads / mc.kv_heads);
      std::vector<int> head_owners(mc.heads), kv_owners(mc.kv_heads), inter_owners(mc.inter);
      for (const RankShard& s : plan->ranks) {
        for (int32_t h = s.head_begin; h < s.head_begin + s.num_heads; ++h) ++head_owners[h];
        for (int32_t k = s.kv_head_begin; k < s.kv_head_begin + s.num_kv_heads; ++k) {
          ++kv_owners[k];
        }
        for (int32_t i = s.inter_begin; i < s.inter_begin + s.inter_size; ++i) ++inter_owners[i];
        // Each local query head reads a KV head of this rank, the one the full model pairs it
        // with, and each KV head the rank holds is read by one of its query heads.
        std::vector<bool> read(s.num_kv_heads, false);
        for (int32_t h = 0; h < s.num_heads; ++h) {
          const int32_t local = s.LocalKvHead(h, plan->group);
          ASSERT_GE(local, 0) << what;
          ASSERT_LT(local, s.num_kv_heads) << what;
          EXPECT_EQ(s.kv_head_begin + local, (s.head_begin + h) / plan->group) << what;
          read[local] = true;
        }
        EXPECT_EQ(std::count(read.begin(), read.end(), true), s.num_kv_heads) << what;
        EXPECT_EQ(s.q_features().size(), int64_t{s.num_heads} * c.head_dim);
        EXPECT_EQ(s.kv_features().begin, int64_t{s.kv_head_begin} * c.head_dim);
        EXPECT_EQ(s.inter_features().size(), s.inter_size);
      }
      EXPECT_EQ(head_owners, std::vector<int>(mc.heads, 1)) << what;
      EXPECT_EQ(inter_owners, std::vector<int>(mc.inter, 1)) << what;
      // Split KV heads have one owner; fewer KV heads than ranks are replicated evenly.
      EXPECT_EQ(plan->kv_replicas, n > mc.kv_heads ? n / mc.kv_heads : 1) << what;
      EXPECT_EQ(kv_owners, std::vector<int>(mc.kv_heads, plan->kv_replicas)) << what;
    }
  }
}

TEST(ShardPlan, RefusesSizesThatDoNotSplitNamingTheValues) {
  auto message = [](const ModelConfig& c, int32_t n) {
    absl::StatusOr<TensorParallelPlan> plan = PlanTensorParallel(c, n);
    EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(plan.status().message());
  };
  EXPECT_NE(message(Config(4, 2, 64), 3).find("num_heads 4"), std::string::npos);
  EXPECT_NE(message(Config(4, 2, 64), 3).find("tensor_parallel_size 3"), std::string::npos);
  EXPECT_NE(message(Config(12, 6, 48), 4).find("num_kv_heads 6"), std::string::npos);
  EXPECT_NE(message(Config(6, 3, 48), 2).find("num_kv_heads 3"), std::string::npos);
  EXPECT_NE(message(Config(8, 8, 100), 8).find("intermediate_size 100"), std::string::npos);
  EXPECT_NE(message(Config(8, 8, 64), 0).find("tensor_parallel_size 0"), std::string::npos);
  EXPECT_NE(message(Config(8, 3, 64), 1).find("num_kv_heads 3"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Slicing weights

// A [rows, cols] tensor whose element (r, c) is r * 100 + c, in the dtype (bf16 rounds some).
struct Numbered {
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
  TensorView view;
  Numbered(DType dtype, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) f32.push_back(static_cast<float>(r * 100 + c));
    }
    for (float v : f32) bf16.push_back(FloatToBf16(v));
    view = {"w", dtype, {rows, cols}, nullptr};
    view.data = dtype == DType::kF32 ? static_cast<const void*>(f32.data()) : bf16.data();
  }
};

float At(const TensorView& t, int64_t r, int64_t c) {
  const int64_t i = r * t.shape[1] + c;
  return t.dtype == DType::kF32 ? static_cast<const float*>(t.data)[i]
                                : Bf16ToFloat(static_cast<const uint16_t*>(t.data)[i]);
}

TEST(WeightShards, RowsAreViewsColumnsAreCopiesOfJustTheShard) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Numbered w(dtype, 6, 8);
    const char* base = static_cast<const char*>(w.view.data);
    const int64_t elem = DTypeSize(dtype);

    absl::StatusOr<TensorView> rows = RowShard(w.view, {2, 5});
    ASSERT_TRUE(rows.ok()) << rows.status();
    EXPECT_EQ(rows->shape, (std::vector<int64_t>{3, 8}));
    EXPECT_EQ(rows->dtype, dtype);
    EXPECT_EQ(rows->data, base + 2 * 8 * elem);  // into the same bytes
    for (int64_t r = 0; r < 3; ++r) {
      for (int64_t c = 0; c < 8; ++c) EXPECT_EQ(At(*rows, r, c), At(w.view, r + 2, c));
    }

    absl::StatusOr<OwnedTensor> cols = ColumnShard(w.view, {3, 7});
    ASSERT_TRUE(cols.ok()) << cols.status();
    ASSERT_NE(cols->storage, nullptr);
    EXPECT_EQ(cols->view.shape, (std::vector<int64_t>{6, 4}));
    EXPECT_EQ(cols->view.data, cols->storage.get());
    for (int64_t r = 0; r < 6; ++r) {
      for (int64_t c = 0; c < 4; ++c) EXPECT_EQ(At(cols->view, r, c), At(w.view, r, c + 3));
    }
    absl::StatusOr<OwnedTensor> all = ColumnShard(w.view, {0, 8});
    ASSERT_TRUE(all.ok());
    EXPECT_EQ(all->storage, nullptr);
    EXPECT_EQ(all->view.data, w.view.data);

    EXPECT_FALSE(RowShard(w.view, {4, 7}).ok());
    EXPECT_FALSE(RowShard(w.view, {3, 2}).ok());
    EXPECT_FALSE(ColumnShard(w.view, {-1, 2}).ok());
    absl::StatusOr<OwnedTensor> wide = ColumnShard(w.view, {6, 9});
    EXPECT_EQ(wide.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(wide.status().message().find("'w'"), std::string::npos) << wide.status();
  }
  // A vector (a bias) shards by rows; it has no columns.
  const std::vector<float> bias = {1, 2, 3, 4};
  const TensorView b{"b", DType::kF32, {4}, bias.data()};
  absl::StatusOr<TensorView> half = RowShard(b, {2, 4});
  ASSERT_TRUE(half.ok());
  EXPECT_EQ(static_cast<const float*>(half->data)[0], 3.0f);
  EXPECT_FALSE(ColumnShard(b, {0, 2}).ok());
}

TEST(WeightShards, EveryRanksShardsTileTheWholeTensor) {
  const Numbered wo(DType::kBF16, 16, 32);  // [hidden, q_dim]: 4 heads of 8
  absl::StatusOr<TensorParallelPlan> plan = PlanTensorParallel(Config(4, 2, 64), 4);
  ASSERT_TRUE(plan.ok());
  std::vector<float> seen(16 * 32, -1);
  for (const RankShard& s : plan->ranks) {
    absl::StatusOr<OwnedTensor> shard = ColumnShard(wo.view, s.q_features());
    ASSERT_TRUE(shard.ok());
    for (int64_t r = 0; r < 16; ++r) {
      for (int64_t c = 0; c < s.q_features().size(); ++c) {
        seen[r * 32 + s.q_features().begin + c] = At(shard->view, r, c);
      }
    }
  }
  for (int64_t i = 0; i < 16 * 32; ++i) EXPECT_EQ(seen[i], At(wo.view, i / 32, i % 32)) << i;
}

TEST(AllReduceSum, EveryBufferGetsTheSumInRankOrder) {
  std::vector<std::vector<float>> parts = {{1, 2, 3}, {10, 20, 30}, {100, 200, 300}};
  std::vector<float*> buffers;
  for (auto& p : parts) buffers.push_back(p.data());
  AllReduceSum(buffers, 3);
  for (const auto& p : parts) EXPECT_EQ(p, (std::vector<float>{111, 222, 333}));
  // Rank order: (1e8 + 1) + -1e8 rounds the 1 away; another order would keep it.
  std::vector<float> a = {1e8f}, b = {1.0f}, c = {-1e8f};
  std::vector<float*> ordered = {a.data(), b.data(), c.data()};
  AllReduceSum(ordered, 1);
  EXPECT_EQ(a[0], 0.0f);
  std::vector<float> one = {5};
  std::vector<float*> single = {one.data()};
  AllReduceSum(single, 1);
  EXPECT_EQ(one[0], 5.0f);
}

// ---------------------------------------------------------------------------------------------
// The sharded CPU backend against the unsharded one

std::shared_ptr<Model> LoadTiny(const TinyModelSpec& spec) {
  absl::StatusOr<std::unique_ptr<Model>> model =
      LoadModel(WriteTinyModelDir(spec, MakeTempDir("tensor_parallel")));
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::shared_ptr<Model>(std::move(*model)) : nullptr;
}

// Qwen2-style q, k and v biases, random, owned by the model.
void AddQkvBiases(Model* model, uint32_t seed) {
  ModelConfig& c = model->config;
  c.qkv_bias = true;
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.1f);
  auto make = [&](const char* name, int64_t n) {
    auto values = std::make_shared<std::vector<float>>(n);
    for (float& v : *values) v = dist(rng);
    model->weights.storage.push_back(values);
    return TensorView{name, DType::kF32, {n}, values->data()};
  };
  for (LayerWeights& lw : model->weights.layers) {
    lw.bq = make("bq", int64_t{c.num_heads} * c.head_dim);
    lw.bk = make("bk", int64_t{c.num_kv_heads} * c.head_dim);
    lw.bv = make("bv", int64_t{c.num_kv_heads} * c.head_dim);
  }
}

std::unique_ptr<Backend> MakeBackend(std::shared_ptr<const Model> model, int32_t block_size,
                                     int32_t num_blocks, int32_t tp) {
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      CreateCpuBackend(std::move(model), {.block_size = block_size, .num_blocks = num_blocks}, {},
                       {.tensor_parallel_size = tp});
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

// A sequence of a run: its tokens, what each position attends and its blocks in the pool.
struct TestSeq {
  std::vector<int32_t> tokens;
  std::vector<std::vector<TokenRange>> ranges;
  std::vector<int32_t> table;
};

// Segments of 6 tokens; with spans, a position of segment s >= 2 attends the sink [0, 2), one
// earlier segment it picked and its own segment so far (a self-selected span's mask); else all.
std::vector<std::vector<TokenRange>> Masks(int32_t len, bool spans, std::mt19937& rng) {
  constexpr int32_t kSegment = 6;
  std::vector<std::vector<TokenRange>> ranges(len);
  int32_t picked = 1;
  for (int32_t p = 0; p < len; ++p) {
    const int32_t s = p / kSegment;
    if (!spans || s < 2) {
      ranges[p] = {{0, p + 1}};
      continue;
    }
    if (p % kSegment == 0) picked = std::uniform_int_distribution<int32_t>(1, s - 1)(rng);
    ranges[p] = {{0, 2}, {picked * kSegment, (picked + 1) * kSegment}, {s * kSegment, p + 1}};
  }
  return ranges;
}

// Three sequences of different lengths over one shuffled pool.
std::vector<TestSeq> MakeSeqs(int32_t vocab, int32_t block_size, int32_t num_blocks, bool spans,
                              uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> free(num_blocks);
  std::iota(free.begin(), free.end(), 0);
  std::shuffle(free.begin(), free.end(), rng);
  std::vector<TestSeq> seqs;
  for (int32_t len : {41, 23, 34}) {
    TestSeq seq;
    std::uniform_int_distribution<int32_t> token(0, vocab - 1);
    for (int32_t p = 0; p < len; ++p) seq.tokens.push_back(token(rng));
    seq.ranges = Masks(len, spans, rng);
    const int32_t blocks = DenseBlocks(len - 1, block_size);
    seq.table.assign(free.end() - blocks, free.end());
    free.resize(free.size() - blocks);
    seqs.push_back(std::move(seq));
  }
  return seqs;
}

struct RunResult {
  std::vector<float> logits;   // every row of every step, in order
  std::vector<int32_t> tokens; // greedy tokens of every sequence at every step
};

// All sequences together, each taking `first` rows in the first step and `each` after (1:
// decode, the length: prefill). Dense rows of multi-row steps run causal, the rest on chunks.
RunResult RunSeqs(Backend* backend, const std::vector<TestSeq>& seqs, int32_t first, int32_t each) {
  RunResult result;
  std::vector<int32_t> done(seqs.size(), 0);
  const int32_t B = backend->block_size();
  for (int32_t step = 0;; ++step) {
    StepBatch batch;
    batch.logits_mode = LogitsMode::kAllRows;
    for (size_t i = 0; i < seqs.size(); ++i) {
      const TestSeq& seq = seqs[i];
      const int32_t len = static_cast<int32_t>(seq.tokens.size());
      const int32_t rows = std::min(step == 0 ? first : each, len - done[i]);
      if (rows <= 0) continue;
      StepSequence s{.row_begin = batch.num_rows(), .num_rows = rows,
                     .table_begin = static_cast<int32_t>(batch.block_tables.size()),
                     .num_blocks = static_cast<int32_t>(seq.table.size()), .sample = true,
                     .sample_index = static_cast<uint64_t>(step)};
      for (int32_t p = done[i]; p < done[i] + rows; ++p) {
        AttentionRow row{.seq = static_cast<int32_t>(batch.seqs.size())};
        if (rows > 1 && seq.ranges[p] == std::vector<TokenRange>{{0, p + 1}}) {
          row.causal = true;
        } else {
          row.chunk_begin = static_cast<int32_t>(batch.chunks.size());
          AppendRangeChunks(seq.ranges[p], seq.table, B, &batch.chunks);
          row.chunk_end = static_cast<int32_t>(batch.chunks.size());
        }
        batch.rows.push_back(row);
        batch.token_ids.push_back(seq.tokens[p]);
        batch.positions.push_back(p);
      }
      done[i] += rows;
      batch.seqs.push_back(s);
      batch.block_tables.insert(batch.block_tables.end(), seq.table.begin(), seq.table.end());
    }
    if (batch.rows.empty()) return result;
    StepOutput out;
    absl::Status status = backend->Step(batch, &out);
    EXPECT_TRUE(status.ok()) << status;
    if (!status.ok()) return result;
    result.logits.insert(result.logits.end(), out.logits.begin(), out.logits.end());
    result.tokens.insert(result.tokens.end(), out.tokens.begin(), out.tokens.end());
  }
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    diff = std::max(diff, std::abs(double{a[i]} - double{b[i]}));
  }
  return diff;
}

struct TpCase {
  std::string name;
  TinyModelSpec spec;
  bool bias = false;
  std::vector<int32_t> sizes;  // tensor-parallel sizes to check against 1
};

void PrintTo(const TpCase& tc, std::ostream* os) { *os << tc.name; }

TinyModelSpec Spec(int heads, int kv_heads, DType dtype = DType::kF32) {
  TinyModelSpec spec;
  spec.heads = heads;
  spec.kv_heads = kv_heads;
  spec.dtype = dtype;
  spec.seed = 3 + heads * 10 + kv_heads;
  return spec;
}

class ShardedBackend : public testing::TestWithParam<TpCase> {};

TEST_P(ShardedBackend, LogitsMatchUnshardedInPrefillDecodeAndChunks) {
  const TpCase& tc = GetParam();
  std::shared_ptr<Model> model = LoadTiny(tc.spec);
  ASSERT_NE(model, nullptr);
  if (tc.bias) AddQkvBiases(model.get(), 5);
  const int32_t B = 4, num_blocks = 40, vocab = model->config.vocab_size;
  double worst = 0;
  std::vector<float> dense_prefill;
  for (bool spans : {false, true}) {
    const std::vector<TestSeq> seqs = MakeSeqs(vocab, B, num_blocks, spans, 9);
    struct Mode { const char* name; int32_t first, each; };
    for (Mode mode : {Mode{"prefill", 64, 64}, Mode{"decode", 1, 1}, Mode{"chunked", 7, 5},
                      Mode{"prefill+decode", 20, 1}}) {
      const std::string what = std::string(spans ? "spans " : "dense ") + mode.name;
      std::unique_ptr<Backend> plain = MakeBackend(model, B, num_blocks, 1);
      const RunResult ref = RunSeqs(plain.get(), seqs, mode.first, mode.each);
      ASSERT_FALSE(ref.logits.empty()) << what;
      if (!spans && mode.first == 64) dense_prefill = ref.logits;
      if (spans && mode.first == 64) {  // the span masks change the logits: they are exercised
        EXPECT_GT(MaxAbsDiff(ref.logits, dense_prefill), 1e-2) << what;
      }
      for (int32_t n : tc.sizes) {
        std::unique_ptr<Backend> sharded = MakeBackend(model, B, num_blocks, n);
        ASSERT_NE(sharded, nullptr);
        EXPECT_EQ(sharded->name(), "cpu-tp" + std::to_string(n));
        EXPECT_EQ(sharded->num_kv_blocks(), num_blocks);
        const RunResult got = RunSeqs(sharded.get(), seqs, mode.first, mode.each);
        const double diff = MaxAbsDiff(got.logits, ref.logits);
        EXPECT_LT(diff, 1e-4) << what << " tp " << n;
        EXPECT_EQ(got.tokens, ref.tokens) << what << " tp " << n;
        worst = std::max(worst, diff);
      }
    }
  }
  std::cout << "[ max |logit diff| ] " << tc.name << ": " << worst << "\n";
  RecordProperty("max_logit_diff", std::to_string(worst));
}

INSTANTIATE_TEST_SUITE_P(
    Models, ShardedBackend,
    testing::Values(TpCase{"mha_h4_kv4", Spec(4, 4), false, {2, 4}},
                    TpCase{"gqa_h4_kv2", Spec(4, 2), false, {2, 4}},  // tp 4: KV replicated
                    TpCase{"gqa_h8_kv2", Spec(8, 2), false, {2, 4, 8}},
                    TpCase{"mqa_h4_kv1", Spec(4, 1), false, {2, 4}},
                    TpCase{"gqa_h8_kv4_bf16", Spec(8, 4, DType::kBF16), false, {2, 4}},
                    TpCase{"gqa_h4_kv2_bias", Spec(4, 2), true, {2, 4}}),
    [](const testing::TestParamInfo<TpCase>& info) { return info.param.name; });

TEST(ShardedBackendOptions, RefusesASizeTheModelCannotSplit) {
  std::shared_ptr<Model> model = LoadTiny(Spec(4, 2));
  ASSERT_NE(model, nullptr);
  absl::StatusOr<std::unique_ptr<Backend>> made =
      CreateCpuBackend(model, {.num_blocks = 4}, {}, {.tensor_parallel_size = 3});
  EXPECT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(made.status().message().find("tensor_parallel_size 3"), std::string::npos)
      << made.status();
  EXPECT_FALSE(CreateCpuBackend(model, {.num_blocks = 4}, {}, {.tensor_parallel_size = 0}).ok());
  // A weight of the wrong shape is named as the model's tensor, not as a shard.
  model->weights.layers[1].wo.shape = {64, 31};
  made = CreateCpuBackend(model, {.num_blocks = 4}, {}, {.tensor_parallel_size = 2});
  EXPECT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(made.status().message().find("[64,31]"), std::string::npos) << made.status();
}

// ---------------------------------------------------------------------------------------------
// Through the engine

std::vector<std::vector<int32_t>> GreedyOutputs(std::shared_ptr<const Model> model, int32_t tp) {
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCpuBackend(
      model, {.block_size = 16, .num_blocks = 256}, {}, {.tensor_parallel_size = tp});
  EXPECT_TRUE(backend.ok()) << backend.status();
  if (!backend.ok()) return {};
  absl::StatusOr<std::unique_ptr<Engine>> engine = CreateEngine(model, std::move(*backend), {});
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return {};
  std::vector<std::unique_ptr<Collector>> collectors;
  for (int i = 0; i < 12; ++i) {
    GenerateRequest request;
    request.prompt = "(" + std::to_string(i * 37 % 1000) + "+" + std::to_string(i) + ")*";
    for (int j = 0; j < i % 4; ++j) request.prompt += " the cat sat on a mat.";
    request.max_tokens = 24 + i % 5;
    request.ignore_eos = true;
    request.span_mode = i % 2 == 0 ? SpanMode::kSelfSelected : SpanMode::kDense;
    collectors.push_back(std::make_unique<Collector>());
    EXPECT_TRUE((*engine)->Submit(request, collectors.back()->Sink()).ok());
  }
  std::vector<std::vector<int32_t>> outputs;
  for (auto& c : collectors) {
    EXPECT_TRUE(c->Wait());
    outputs.push_back(c->tokens());
  }
  return outputs;
}

TEST(ShardedEngine, GreedyOutputsEqualOneRank) {
  std::shared_ptr<Model> model = LoadTiny(Spec(4, 2));
  ASSERT_NE(model, nullptr);
  const std::vector<std::vector<int32_t>> one = GreedyOutputs(model, 1);
  ASSERT_EQ(one.size(), 12u);
  for (const auto& tokens : one) EXPECT_GE(tokens.size(), 24u);
  for (int32_t tp : {2, 4}) EXPECT_EQ(GreedyOutputs(model, tp), one) << "tp " << tp;
}

}  // namespace
}  // namespace spanserve
