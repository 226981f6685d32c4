// The whole CUDA backend against the CPU backend on tiny random models with bf16 weights
// (matrices scaled 1/sqrt(hidden), as trained models are): 200 prompts prefilled in chunks
// (causal rows and rows with chunk lists) then decoded greedily over random span chunk lists,
// each backend taking its own tokens. Logits agree within 2e-2 norm-wise relative error while
// the inputs agree, and greedy outputs are identical except where the CPU's own top two logits
// are closer than the rows' difference (a tie no bf16 backend can break the same way). The
// shipped model through the engine gives the CPU engine's outputs on 200 arithmetic prompts.
// Also: CUDA graphs against eager steps, the factory, clear errors for bad batches and for
// memory that is not there. Skipped where no GPU is visible.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "engine/backends/backend_factory.h"
#include "engine/backends/cpu_backend.h"
#include "engine/backends/cuda_backend.h"
#include "engine/core/attention_plan.h"
#include "engine/core/engine.h"
#include "tests/cpp/tiny_model.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/random_batch.h"

namespace spanserve::testing {
namespace {

constexpr double kLogitTolerance = 2e-2;

std::shared_ptr<const Model> TestModel(int hidden, int heads, int kv_heads, int layers) {
  TinyModelSpec spec;
  spec.hidden = hidden;
  spec.intermediate = 2 * hidden + 64;
  spec.heads = heads;
  spec.kv_heads = kv_heads;
  spec.layers = layers;
  spec.vocab = 320;
  spec.max_positions = 4096;
  spec.dtype = DType::kBF16;
  spec.seed = 3;
  spec.weight_std = 1.0f / std::sqrt(static_cast<float>(hidden));  // see TinyModelSpec
  absl::StatusOr<std::unique_ptr<Model>> model =
      LoadModel(WriteTinyModelDir(spec, MakeTempDir("cuda_backend_test")));
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::shared_ptr<const Model>(std::move(*model)) : nullptr;
}

std::unique_ptr<Backend> MakeCuda(std::shared_ptr<const Model> model, int32_t block_size,
                                  int32_t num_blocks, bool graphs, bool decode_gemm = true,
                                  bool early_launch = true) {
  CudaBackendOptions options;
  options.pool.block_size = block_size;
  options.pool.num_blocks = num_blocks;
  options.cuda_graphs = graphs;
  options.decode_gemm = decode_gemm ? CudaBackendOptions::DecodeGemm::kOn
                                    : CudaBackendOptions::DecodeGemm::kOff;
  options.early_launch = early_launch;
  options.max_step_rows = 256;
  options.progress = false;
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(model, options);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

std::unique_ptr<Backend> MakeCpu(std::shared_ptr<const Model> model, int32_t block_size,
                                 int32_t num_blocks) {
  KvPoolOptions pool;
  pool.block_size = block_size;
  pool.num_blocks = num_blocks;
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCpuBackend(model, pool);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

// The steps every backend is given: groups of `batch` sequences, each prefilled in chunks of its
// own size (rows causal, or with chunk lists as after a preemption) and then decoded one row a
// step over random span chunk lists. Everything but the sampled tokens depends on the schedule
// alone, so backends that sample differently still run the same steps.
struct Schedule {
  int32_t block_size = 16;
  std::vector<std::vector<int32_t>> prompts;
  int32_t new_tokens = 24;
  int32_t batch = 8;
  uint64_t seed = 1;
};

struct SeqRun {
  std::vector<int32_t> tokens;  // prompt, then generated
  std::vector<int32_t> generated;
  std::vector<std::vector<float>> logits;  // the row each generated token came from
};

Schedule MakeSchedule(int32_t num_prompts, int32_t block_size, uint64_t seed) {
  std::mt19937 rng(seed);
  Schedule s;
  s.block_size = block_size;
  s.seed = seed;
  for (int32_t i = 0; i < num_prompts; ++i) {
    std::vector<int32_t> prompt(5 + rng() % 300);
    for (int32_t& t : prompt) t = static_cast<int32_t>(3 + rng() % 317);
    s.prompts.push_back(prompt);
  }
  return s;
}

std::vector<SeqRun> RunGreedy(Backend* backend, const Schedule& s) {
  const int32_t B = s.block_size, n = static_cast<int32_t>(s.prompts.size());
  std::vector<SeqRun> runs(n);
  for (int32_t first = 0; first < n; first += s.batch) {
    const int32_t last = std::min(n, first + s.batch);
    std::vector<std::vector<int32_t>> tables(n);
    std::vector<int32_t> computed(n, 0), chunk(n);
    int32_t next_block = 0;
    for (int32_t i = first; i < last; ++i) {
      runs[i].tokens = s.prompts[i];
      const int32_t blocks = (static_cast<int32_t>(s.prompts[i].size()) + s.new_tokens + B - 1) / B;
      for (int32_t b = 0; b < blocks; ++b) tables[i].push_back(next_block++);
      chunk[i] = 1 + static_cast<int32_t>((s.seed + 7919 * i) % 64);
    }
    for (;;) {
      StepBatch batch;
      batch.logits_mode = LogitsMode::kSampled;
      std::vector<int32_t> members;
      for (int32_t i = first; i < last; ++i) {
        SeqRun& run = runs[i];
        if (static_cast<int32_t>(run.generated.size()) == s.new_tokens) continue;
        const int32_t len = static_cast<int32_t>(run.tokens.size());
        const int32_t end = std::min(len, computed[i] + chunk[i]);
        StepSequence seq;
        seq.row_begin = batch.num_rows();
        seq.num_rows = end - computed[i];
        seq.table_begin = static_cast<int32_t>(batch.block_tables.size());
        seq.num_blocks = static_cast<int32_t>(tables[i].size());
        batch.block_tables.insert(batch.block_tables.end(), tables[i].begin(), tables[i].end());
        seq.sample = end == len;
        seq.sample_index = static_cast<uint64_t>(run.generated.size());
        for (int32_t pos = computed[i]; pos < end; ++pos) {
          std::mt19937 row_rng(static_cast<uint32_t>(s.seed * 1000003 + i * 7919 + pos));
          AttentionRow row;
          row.seq = static_cast<int32_t>(batch.seqs.size());
          row.causal = seq.num_rows > 1 && row_rng() % 4 != 0;
          if (!row.causal) {
            row.chunk_begin = static_cast<int32_t>(batch.chunks.size());
            AppendRangeChunks(RandomRanges(row_rng, pos + 1), tables[i], B, &batch.chunks);
            row.chunk_end = static_cast<int32_t>(batch.chunks.size());
          }
          batch.rows.push_back(row);
          batch.token_ids.push_back(run.tokens[pos]);
          batch.positions.push_back(pos);
        }
        batch.seqs.push_back(seq);
        members.push_back(i);
        computed[i] = end;
      }
      if (members.empty()) break;
      StepOutput out;
      const absl::Status status = backend->Step(batch, &out);
      EXPECT_TRUE(status.ok()) << status;
      if (!status.ok()) return runs;
      const int64_t V = backend->vocab_size();
      int64_t logits_row = 0;
      for (size_t k = 0; k < members.size(); ++k) {
        if (!batch.seqs[k].sample) continue;
        SeqRun& run = runs[members[k]];
        run.logits.emplace_back(out.logits.begin() + logits_row * V,
                                out.logits.begin() + (logits_row + 1) * V);
        ++logits_row;
        run.tokens.push_back(out.tokens[k]);
        run.generated.push_back(out.tokens[k]);
      }
    }
  }
  return runs;
}

struct Agreement {
  int32_t identical = 0;   // sequences with the same greedy output
  int32_t near_ties = 0;   // sequences that parted where the reference's top two were within error
  double max_logit_error = 0;      // max over rows of ||got - want||_2 / ||want||_2
  double max_abs_logit_error = 0;  // max over rows of max |got - want| / max |want|
};

// Compares runs of a backend with runs of the reference while their inputs agree. The logit
// error of a row is norm-wise, ||got - want|| / ||want|| (docs: METHOD.md of the device notes).
// Greedy choices may part only where the reference's top two logits are closer than twice the
// largest elementwise difference of that row: a tie the rounding of bf16 activations decides.
Agreement Compare(const std::vector<SeqRun>& got, const std::vector<SeqRun>& want, double tolerance) {
  Agreement a;
  for (size_t i = 0; i < want.size(); ++i) {
    const size_t steps = std::min(got[i].generated.size(), want[i].generated.size());
    EXPECT_EQ(steps, want[i].generated.size()) << "sequence " << i << " stopped early";
    bool same = true;
    for (size_t t = 0; t < steps && same; ++t) {
      const std::vector<float>& g = got[i].logits[t];
      const std::vector<float>& w = want[i].logits[t];
      double diff2 = 0, norm2 = 0, max_diff = 0, max_w = 0;
      for (size_t v = 0; v < w.size(); ++v) {
        const double d = double{g[v]} - w[v];
        diff2 += d * d;
        norm2 += double{w[v]} * w[v];
        max_diff = std::max(max_diff, std::abs(d));
        max_w = std::max(max_w, std::abs(double{w[v]}));
      }
      const double err = norm2 > 0 ? std::sqrt(diff2 / norm2) : std::sqrt(diff2);
      a.max_logit_error = std::max(a.max_logit_error, err);
      a.max_abs_logit_error = std::max(a.max_abs_logit_error, max_w > 0 ? max_diff / max_w : 0);
      EXPECT_LT(err, tolerance) << "sequence " << i << " token " << t;
      const int32_t wt = want[i].generated[t], gt = got[i].generated[t];
      if (wt == gt) continue;
      same = false;
      const double margin = std::abs(double{w[wt]} - w[gt]);
      EXPECT_LE(margin, 2 * max_diff)
          << "sequence " << i << " token " << t << ": greedy " << gt << " against " << wt
          << ", whose logits differ by " << margin << " in the reference";
      ++a.near_ties;
    }
    a.identical += same;
  }
  return a;
}

void ExpectMatchesCpu(std::shared_ptr<const Model> model, int32_t block_size, uint64_t seed) {
  const Schedule schedule = MakeSchedule(200, block_size, seed);
  const int32_t blocks = 8 * (330 / block_size + 2);
  std::unique_ptr<Backend> cpu = MakeCpu(model, block_size, blocks);
  std::unique_ptr<Backend> cuda = MakeCuda(model, block_size, blocks, true);
  ASSERT_TRUE(cpu && cuda);
  const std::vector<SeqRun> want = RunGreedy(cpu.get(), schedule);
  const std::vector<SeqRun> got = RunGreedy(cuda.get(), schedule);
  const Agreement a = Compare(got, want, kLogitTolerance);
  const CudaBackendStats stats = GetCudaBackendStats(*cuda);
  std::printf("block %d: %d of 200 greedy outputs identical, %d parted at near-ties; max logit "
              "error %.2e (norm-wise), %.2e (max-abs); %lld graph steps, %lld eager\n",
              block_size, a.identical, a.near_ties, a.max_logit_error, a.max_abs_logit_error,
              static_cast<long long>(stats.graph_steps), static_cast<long long>(stats.eager_steps));
  EXPECT_EQ(a.identical + a.near_ties, 200);
  EXPECT_GT(stats.graph_steps, 0);
}

TEST(CudaBackend, MatchesCpuOn200PromptsWithGqa) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  ExpectMatchesCpu(TestModel(256, 4, 2, 3), 16, 1);  // head_dim 64, 2 query heads per KV head
}

TEST(CudaBackend, MatchesCpuOn200PromptsHeadDim128) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  ExpectMatchesCpu(TestModel(512, 4, 4, 2), 64, 2);  // head_dim 128, no GQA, blocks of 64
}

// Decode steps replayed from CUDA graphs give what eager steps give.
TEST(CudaBackend, GraphsMatchEagerSteps) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::shared_ptr<const Model> model = TestModel(512, 8, 2, 2);  // head_dim 64, 4 per KV head
  Schedule schedule = MakeSchedule(60, 16, 3);
  schedule.batch = 30;  // graph buckets up to 32
  std::unique_ptr<Backend> eager = MakeCuda(model, 16, 1024, false);
  std::unique_ptr<Backend> graphs = MakeCuda(model, 16, 1024, true);
  ASSERT_TRUE(eager && graphs);
  const Agreement a = Compare(RunGreedy(graphs.get(), schedule), RunGreedy(eager.get(), schedule),
                              kLogitTolerance);
  EXPECT_GE(a.identical, 55);
  EXPECT_EQ(a.identical + a.near_ties, 60);
  EXPECT_GT(GetCudaBackendStats(*graphs).graph_steps, 0);
  EXPECT_EQ(GetCudaBackendStats(*eager).graph_steps, 0);
  EXPECT_GE(GetCudaBackendStats(*graphs).graphs_captured, 2);  // more than one bucket
}

// The decode GEMM (products of up to 64 rows) gives what cuBLAS gives, in graphs and eagerly.
TEST(CudaBackend, DecodeGemmMatchesCublas) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::shared_ptr<const Model> model = TestModel(512, 8, 2, 2);
  Schedule schedule = MakeSchedule(60, 16, 5);
  schedule.batch = 40;  // decode steps of up to 40 rows: three row tiles
  for (const bool graphs : {true, false}) {
    std::unique_ptr<Backend> cublas = MakeCuda(model, 16, 1024, graphs, false);
    std::unique_ptr<Backend> decode_gemm = MakeCuda(model, 16, 1024, graphs, true);
    ASSERT_TRUE(cublas && decode_gemm);
    const Agreement a = Compare(RunGreedy(decode_gemm.get(), schedule),
                                RunGreedy(cublas.get(), schedule), kLogitTolerance);
    std::printf("graphs %d: %d of 60 greedy outputs identical, %d parted at near-ties; max logit "
                "error %.2e\n", graphs, a.identical, a.near_ties, a.max_logit_error);
    EXPECT_GE(a.identical, 55);
    EXPECT_EQ(a.identical + a.near_ties, 60);
  }
}

// Early launches (each kernel waits for the one ahead before it reads its output) compute the
// same bits as plain launches, in graphs and eagerly, with either product kernel.
TEST(CudaBackend, EarlyLaunchesGiveThePlainLaunchesBits) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::shared_ptr<const Model> model = TestModel(512, 8, 2, 2);
  Schedule schedule = MakeSchedule(60, 16, 6);
  schedule.batch = 40;
  for (const bool graphs : {true, false}) {
    for (const bool decode_gemm : {true, false}) {
      std::unique_ptr<Backend> plain = MakeCuda(model, 16, 1024, graphs, decode_gemm, false);
      std::unique_ptr<Backend> early = MakeCuda(model, 16, 1024, graphs, decode_gemm, true);
      ASSERT_TRUE(plain && early);
      const Agreement a = Compare(RunGreedy(early.get(), schedule), RunGreedy(plain.get(), schedule),
                                  kLogitTolerance);
      EXPECT_EQ(a.identical, 60) << "graphs " << graphs << ", decode GEMM " << decode_gemm;
      EXPECT_EQ(a.max_logit_error, 0.0) << "graphs " << graphs << ", decode GEMM " << decode_gemm;
    }
  }
}

// The measured choice times cuBLAS and the decode GEMM at its split counts for every shape and
// row tile count.
TEST(CudaBackend, MeasuredDecodeGemmChoosesForEveryShape) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::shared_ptr<const Model> model = TestModel(512, 8, 2, 2);
  CudaBackendOptions options;
  options.pool.num_blocks = 256;
  options.max_step_rows = 256;
  options.progress = false;
  ASSERT_EQ(options.decode_gemm, CudaBackendOptions::DecodeGemm::kMeasured);
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(model, options);
  ASSERT_TRUE(backend.ok()) << backend.status();
  const std::vector<std::string>& choices = GetCudaBackendStats(**backend).gemm_choices;
  EXPECT_EQ(choices.size(), 5u * 4u);  // qkv, o, gate_up, down, lm_head at 16, 32, 48, 64 rows
  for (const std::string& line : choices) {
    std::printf("%s\n", line.c_str());
    EXPECT_NE(line.find("(cuBLAS "), std::string::npos) << line;  // both were timed
    EXPECT_NE(line.find(" splits "), std::string::npos) << line;
  }
  const Agreement a = Compare(RunGreedy(backend->get(), MakeSchedule(20, 16, 7)),
                              RunGreedy(MakeCpu(model, 16, 256).get(), MakeSchedule(20, 16, 7)),
                              kLogitTolerance);
  EXPECT_EQ(a.identical + a.near_ties, 20);
}

// A bad batch is an INVALID_ARGUMENT error, and the backend goes on working after it.
TEST(CudaBackend, RejectsBadBatchesAndGoesOn) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::shared_ptr<const Model> model = TestModel(256, 4, 2, 1);
  std::unique_ptr<Backend> cuda = MakeCuda(model, 16, 64, true);
  ASSERT_TRUE(cuda);
  std::mt19937 rng(4);
  RandomBatchSpec spec;
  spec.num_blocks = 64;
  spec.max_seqs = 3;
  spec.max_start = 20;
  spec.max_prefill_rows = 8;
  StepBatch good = RandomBatch(rng, spec);
  StepOutput out;
  ASSERT_TRUE(cuda->Step(good, &out).ok());
  StepBatch bad = good;
  bad.block_tables[0] = 64;
  EXPECT_EQ(cuda->Step(bad, &out).code(), absl::StatusCode::kInvalidArgument);
  bad = good;
  bad.token_ids.back() = 320;
  EXPECT_EQ(cuda->Step(bad, &out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(cuda->Step(good, &out).ok());
  EXPECT_EQ(out.tokens.size(), good.seqs.size());
}

TEST(CudaBackend, OutOfMemoryAtStartSaysHowMuch) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::shared_ptr<const Model> model = TestModel(256, 4, 2, 1);
  CudaBackendOptions options;
  options.pool.num_blocks = 2000000000;
  options.progress = false;
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(model, options);
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(backend.status().message().find("GiB"), std::string::npos) << backend.status();
  EXPECT_NE(backend.status().message().find("free"), std::string::npos) << backend.status();
  options.pool.num_blocks = 0;
  options.gpu_memory_fraction = 1e-9;
  backend = CreateCudaBackend(model, options);
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(BackendFactory, PicksCudaForCudaAndAuto) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::shared_ptr<const Model> model = TestModel(256, 4, 2, 1);
  EXPECT_TRUE(CudaDeviceAvailable());
  BackendOptions options;
  options.pool.num_blocks = 64;
  for (Device device : {Device::kCuda, Device::kAuto}) {
    options.device = device;
    absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend(model, options);
    ASSERT_TRUE(backend.ok()) << backend.status();
    EXPECT_EQ((*backend)->name(), "cuda");
  }
  options.device = Device::kCpu;
  EXPECT_EQ((*CreateBackend(model, options))->name(), "cpu");
}

// The shipped model (models/arith-small) through the engine on both backends: 200 arithmetic
// prompts of its two levels, greedy to EOS, half SELF_SELECTED and half DENSE. A trained model
// has clear winners, so every output must be the same, and right.
// Like the training data (arith-l1): one-digit operands, every value in [0, 100), the operator
// tree as deep as the operators are many (the model saw depth 3 at most).
std::string ArithPrompt(std::mt19937& rng, int ops) {
  int value = static_cast<int>(rng() % 10);
  std::string expr = std::to_string(value);
  for (int i = 0; i < ops;) {
    const int operand = static_cast<int>(rng() % 10);
    const char op = "+-*"[rng() % 3];
    const bool left = rng() % 2;
    const int a = left ? value : operand, b = left ? operand : value;
    const int result = op == '+' ? a + b : op == '-' ? a - b : a * b;
    if (result < 0 || result >= 100) continue;
    const std::string lhs = left ? expr : std::to_string(operand);
    const std::string rhs = left ? std::to_string(operand) : expr;
    expr = "(" + lhs + std::string(1, op) + rhs + ")";
    value = result;
    ++i;
  }
  return expr.substr(1, expr.size() - 2) + "=";
}

TEST(CudaBackend, ShippedModelGivesTheCpuEnginesOutputs) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  const std::string dir = std::string(SPANSERVE_SOURCE_DIR) + "/models/arith-small";
  absl::StatusOr<std::unique_ptr<Model>> loaded = LoadModel(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  std::shared_ptr<const Model> model = std::move(*loaded);
  std::mt19937 rng(11);
  std::vector<std::string> prompts;
  for (int i = 0; i < 200; ++i) prompts.push_back(ArithPrompt(rng, 2 + i % 2));  // depth <= 3
  auto run = [&](std::unique_ptr<Backend> backend) {
    EngineConfig config;
    config.max_running = 64;
    absl::StatusOr<std::unique_ptr<Engine>> engine = CreateEngine(model, std::move(backend), config);
    EXPECT_TRUE(engine.ok()) << engine.status();
    std::mutex mu;
    std::condition_variable cv;
    int done = 0;
    std::vector<std::string> outputs(200);
    for (int i = 0; i < 200; ++i) {
      GenerateRequest request;
      request.prompt = prompts[i];
      request.max_tokens = 400;
      request.span_mode = i % 2 ? SpanMode::kSelfSelected : SpanMode::kDense;
      auto submitted = (*engine)->Submit(request, [&, i](GenerationEvent&& e) {
        std::lock_guard<std::mutex> lock(mu);
        outputs[i] += e.text;
        if (e.finished) {
          EXPECT_EQ(e.finish_reason, FinishReason::kEos) << prompts[i] << " " << e.error;
          ++done;
          cv.notify_all();
        }
      });
      EXPECT_TRUE(submitted.ok());
    }
    std::unique_lock<std::mutex> lock(mu);
    EXPECT_TRUE(cv.wait_for(lock, std::chrono::minutes(5), [&] { return done == 200; }));
    return outputs;
  };
  const std::vector<std::string> want = run(MakeCpu(model, 16, 4096));
  const std::vector<std::string> got = run(MakeCuda(model, 16, 4096, true));
  int identical = 0;
  for (int i = 0; i < 200; ++i) {
    identical += got[i] == want[i];
    EXPECT_EQ(got[i], want[i]) << prompts[i];
  }
  std::printf("engine: shipped model, %d of 200 greedy outputs identical to the CPU engine's; "
              "e.g. %s%s\n", identical, prompts[0].c_str(), want[0].c_str());
}

}  // namespace
}  // namespace spanserve::testing
