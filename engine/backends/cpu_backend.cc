#include "engine/backends/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <new>
#include <span>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/backends/cpu_math.h"
#include "engine/backends/sampler.h"
#include "engine/model/model_config.h"
#include "engine/model/tensor_parallel.h"

namespace spanserve {

int64_t KvBlockBytes(const ModelConfig& config, int32_t block_size, int32_t element_bytes) {
  return int64_t{2} * config.num_layers * config.num_kv_heads * block_size * config.head_dim *
         element_bytes;
}

namespace {

struct LayerF32 {
  const float* attn_norm;
  const float *wq, *wk, *wv, *wo;
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr;  // Qwen2's q/k/v biases
  const float* ffn_norm;
  const float *w_gate, *w_up, *w_down;
};

absl::Status CheckShape(const TensorView& tensor, const std::vector<int64_t>& shape) {
  if (tensor.shape != shape || tensor.data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight '", tensor.name, "' has shape [", absl::StrJoin(tensor.shape, ","),
                     "], the config needs [", absl::StrJoin(shape, ","), "]"));
  }
  return absl::OkStatus();
}

// Gives every weight as fp32: F32 tensors in place (the mapping), F16/BF16 converted once into
// owned buffers. A tensor seen twice (a tied lm_head, a KV shard replicated on two ranks) is
// converted once.
class WeightConverter {
 public:
  absl::StatusOr<const float*> Get(const TensorView& tensor, std::vector<int64_t> shape) {
    if (absl::Status s = CheckShape(tensor, shape); !s.ok()) return s;
    if (tensor.dtype == DType::kF32) return static_cast<const float*>(tensor.data);
    int64_t numel = 1;
    for (int64_t dim : shape) numel *= dim;
    // Keyed by size too: rank 0's row shard starts where its whole tensor does.
    const std::pair<const void*, int64_t> key(tensor.data, numel);
    auto found = converted_.find(key);
    if (found != converted_.end()) return found->second.data();
    std::vector<float>& buffer = converted_[key];
    buffer.resize(numel);
    const uint16_t* bits = static_cast<const uint16_t*>(tensor.data);
    const bool half = tensor.dtype == DType::kF16;
    for (int64_t i = 0; i < numel; ++i) {
      buffer[i] = half ? HalfToFloat(bits[i]) : Bf16ToFloat(bits[i]);
    }
    return buffer.data();
  }

  absl::Status Into(const TensorView& tensor, std::vector<int64_t> shape, const float** dst) {
    absl::StatusOr<const float*> data = Get(tensor, std::move(shape));
    if (data.ok()) *dst = *data;
    return data.status();
  }

  using Buffers = std::map<std::pair<const void*, int64_t>, std::vector<float>>;
  Buffers TakeBuffers() { return std::move(converted_); }

 private:
  Buffers converted_;
};

absl::Status CheckConfig(const ModelConfig& c, size_t num_layer_weights) {
  if (c.hidden_size <= 0 || c.intermediate_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 ||
      c.num_kv_heads <= 0 || c.head_dim <= 0 || c.vocab_size <= 0) {
    return absl::InvalidArgumentError("model config has a size that is not positive");
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_heads ", c.num_heads,
                                                   " is not a multiple of num_kv_heads ",
                                                   c.num_kv_heads));
  }
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("head_dim ", c.head_dim, " is odd (RoPE)"));
  }
  if (num_layer_weights != static_cast<size_t>(c.num_layers)) {
    return absl::InvalidArgumentError(absl::StrCat("model has weights for ", num_layer_weights,
                                                   " layers, config says ", c.num_layers));
  }
  return absl::OkStatus();
}

// One simulated tensor-parallel rank, or the whole model when there is one: its weight shards,
// its KV pool (its KV heads of every block) and its scratch. The hidden state x_ is kept once:
// after each all-reduce every rank would hold the same copy.
struct Rank {
  RankShard shard;
  std::vector<LayerF32> layers;
  KvLayout layout;
  std::vector<std::vector<float>> k_cache, v_cache;  // per layer
  std::vector<float> q, k, v, attn, gate, up;        // per row of the step
  std::vector<float> partial;  // its wo or w_down product: a partial sum of the hidden state
};

class CpuBackend : public Backend {
 public:
  CpuBackend(std::shared_ptr<const Model> model, const CpuFaultOptions& faults)
      : model_(std::move(model)),
        config_(model_->config),
        rope_inv_freq_(RopeInverseFrequencies(config_)),
        fail_steps_(faults.fail_steps) {}

  absl::Status Init(const KvPoolOptions& pool, int32_t tensor_parallel_size);

  std::string name() const override {
    return ranks_.size() == 1 ? "cpu" : absl::StrCat("cpu-tp", ranks_.size());
  }
  absl::Status Step(const StepBatch& batch, StepOutput* out) override;
  int32_t num_kv_blocks() const override { return num_blocks_; }
  int32_t block_size() const override { return block_size_; }
  int32_t vocab_size() const override { return config_.vocab_size; }

 private:
  absl::Status ConvertWeights();
  absl::Status ConvertRankWeights(WeightConverter& convert, Rank* rank);
  absl::Status AllocatePool(const KvPoolOptions& pool);
  void Resize(int32_t rows);
  void Embed(const StepBatch& batch);
  void NormRows(const float* x, const float* weight, int32_t rows, float* out);
  void AddRows(float* x, const float* y, int32_t rows);
  void RopeAndWriteKv(Rank& rank, int32_t layer, const StepBatch& batch);
  void Attention(Rank& rank, int32_t layer, const StepBatch& batch);
  void RankAttention(Rank& rank, int32_t layer, const StepBatch& batch);
  void RankMlp(Rank& rank, int32_t layer, int32_t rows);
  const float* AllReducePartials(int32_t rows);
  void RunLayer(int32_t layer, const StepBatch& batch);
  void Logits(const StepBatch& batch, StepOutput* out);

  std::shared_ptr<const Model> model_;
  const ModelConfig& config_;
  const std::vector<double> rope_inv_freq_;  // RopeInverseFrequencies(config_)
  WeightConverter::Buffers converted_;
  std::vector<std::shared_ptr<const void>> shard_storage_;  // column shards (wo, w_down)
  const float* embed_ = nullptr;
  const float* final_norm_ = nullptr;
  const float* lm_head_ = nullptr;
  int32_t group_ = 1;  // query heads per KV head
  std::vector<Rank> ranks_;
  std::vector<float*> partials_;  // each rank's partial, for the all-reduce

  int32_t block_size_ = 0;
  int32_t num_blocks_ = 0;

  // Scratch, per row of the step.
  std::vector<float> x_, xn_, rope_cos_, rope_sin_;
  std::vector<int32_t> logit_rows_;   // the rows whose logits are computed
  std::vector<int32_t> seq_logits_;   // per seq: its row in the logits, -1 if none
  std::vector<float> logits_scratch_; // logits when the step returns none
  Sampler sampler_;

  std::vector<int64_t> fail_steps_;   // fault injection (test builds)
  int64_t num_steps_ = 0;             // calls of Step
};

absl::Status CpuBackend::Init(const KvPoolOptions& pool, int32_t tensor_parallel_size) {
  if (absl::Status s = CheckConfig(config_, model_->weights.layers.size()); !s.ok()) return s;
  absl::StatusOr<TensorParallelPlan> plan = PlanTensorParallel(config_, tensor_parallel_size);
  if (!plan.ok()) return plan.status();
  group_ = plan->group;
  ranks_.resize(plan->size);
  for (int32_t r = 0; r < plan->size; ++r) ranks_[r].shard = plan->ranks[r];
  if (absl::Status s = ConvertWeights(); !s.ok()) return s;
  return AllocatePool(pool);
}

absl::Status CpuBackend::ConvertWeights() {
  const ModelConfig& c = config_;
  const ModelWeights& w = model_->weights;
  WeightConverter convert;
  absl::Status s = convert.Into(w.embed, {c.vocab_size, c.hidden_size}, &embed_);
  if (s.ok()) s = convert.Into(w.final_norm, {c.hidden_size}, &final_norm_);
  if (s.ok()) s = convert.Into(w.lm_head, {c.vocab_size, c.hidden_size}, &lm_head_);
  for (Rank& rank : ranks_) {
    if (s.ok()) s = ConvertRankWeights(convert, &rank);
  }
  converted_ = convert.TakeBuffers();
  return s;
}

// The rank's rows of wq, wk, wv, w_gate and w_up (views) and columns of wo and w_down (copies
// of just the shard), checked against the full shapes first so errors name the model's tensor.
// With one rank every shard is the whole tensor, uncopied.
absl::Status CpuBackend::ConvertRankWeights(WeightConverter& convert, Rank* rank) {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size, q_dim = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim, inter = c.intermediate_size;
  const IndexRange q_rows = rank->shard.q_features(), kv_rows = rank->shard.kv_features();
  const IndexRange inter_rows = rank->shard.inter_features();
  auto rows = [&](const TensorView& t, std::vector<int64_t> shape, IndexRange range,
                  const float** dst) {
    if (absl::Status s = CheckShape(t, shape); !s.ok()) return s;
    absl::StatusOr<TensorView> shard = RowShard(t, range);
    if (!shard.ok()) return shard.status();
    shape[0] = range.size();
    return convert.Into(*shard, std::move(shape), dst);
  };
  auto cols = [&](const TensorView& t, std::vector<int64_t> shape, IndexRange range,
                  const float** dst) {
    if (absl::Status s = CheckShape(t, shape); !s.ok()) return s;
    absl::StatusOr<OwnedTensor> shard = ColumnShard(t, range);
    if (!shard.ok()) return shard.status();
    if (shard->storage != nullptr) shard_storage_.push_back(shard->storage);
    shape[1] = range.size();
    return convert.Into(shard->view, std::move(shape), dst);
  };
  const ModelWeights& w = model_->weights;
  rank->layers.resize(c.num_layers);
  absl::Status s;
  for (int32_t l = 0; l < c.num_layers && s.ok(); ++l) {
    const LayerWeights& lw = w.layers[l];
    LayerF32& out = rank->layers[l];
    s = convert.Into(lw.attn_norm, {hidden}, &out.attn_norm);
    if (s.ok()) s = rows(lw.wq, {q_dim, hidden}, q_rows, &out.wq);
    if (s.ok()) s = rows(lw.wk, {kv_dim, hidden}, kv_rows, &out.wk);
    if (s.ok()) s = rows(lw.wv, {kv_dim, hidden}, kv_rows, &out.wv);
    if (s.ok() && c.qkv_bias) s = rows(lw.bq, {q_dim}, q_rows, &out.bq);
    if (s.ok() && c.qkv_bias) s = rows(lw.bk, {kv_dim}, kv_rows, &out.bk);
    if (s.ok() && c.qkv_bias) s = rows(lw.bv, {kv_dim}, kv_rows, &out.bv);
    if (s.ok()) s = cols(lw.wo, {hidden, q_dim}, q_rows, &out.wo);
    if (s.ok()) s = convert.Into(lw.ffn_norm, {hidden}, &out.ffn_norm);
    if (s.ok()) s = rows(lw.w_gate, {inter, hidden}, inter_rows, &out.w_gate);
    if (s.ok()) s = rows(lw.w_up, {inter, hidden}, inter_rows, &out.w_up);
    if (s.ok()) s = cols(lw.w_down, {hidden, inter}, inter_rows, &out.w_down);
  }
  return s;
}

absl::Status CpuBackend::AllocatePool(const KvPoolOptions& pool) {
  if (pool.block_size < 1 || pool.block_size > kMaxBlockSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV block size ", pool.block_size, " is outside 1..", kMaxBlockSize));
  }
  block_size_ = pool.block_size;
  const int64_t block_bytes = KvBlockBytes(config_, pool.block_size, sizeof(float));
  const int64_t blocks = pool.num_blocks > 0 ? pool.num_blocks : pool.memory_bytes / block_bytes;
  if (blocks < 1 || blocks > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV pool of ", pool.memory_bytes, " bytes holds ", blocks, " blocks of ", block_bytes,
        " bytes (block size ", pool.block_size, "); it needs at least one"));
  }
  num_blocks_ = static_cast<int32_t>(blocks);
  try {
    for (Rank& rank : ranks_) {
      rank.layout = {rank.shard.num_kv_heads, pool.block_size, config_.head_dim};
      rank.k_cache.resize(config_.num_layers);
      rank.v_cache.resize(config_.num_layers);
      for (int32_t l = 0; l < config_.num_layers; ++l) {
        rank.k_cache[l].resize(blocks * rank.layout.block_elems());
        rank.v_cache[l].resize(blocks * rank.layout.block_elems());
      }
    }
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot allocate a KV pool of ", blocks * block_bytes, " bytes (", ranks_.size(),
        " rank(s))"));
  }
  return absl::OkStatus();
}

void CpuBackend::Resize(int32_t rows) {
  const int64_t n = rows, hd = config_.head_dim;
  x_.resize(n * config_.hidden_size);
  xn_.resize(n * config_.hidden_size);
  rope_cos_.resize(n * hd / 2);
  rope_sin_.resize(n * hd / 2);
  partials_.clear();
  for (Rank& rank : ranks_) {
    const RankShard& shard = rank.shard;
    rank.q.resize(n * shard.num_heads * hd);
    rank.attn.resize(n * shard.num_heads * hd);
    rank.k.resize(n * shard.num_kv_heads * hd);
    rank.v.resize(n * shard.num_kv_heads * hd);
    rank.gate.resize(n * shard.inter_size);
    rank.up.resize(n * shard.inter_size);
    rank.partial.resize(n * config_.hidden_size);
    partials_.push_back(rank.partial.data());
  }
}

void CpuBackend::Embed(const StepBatch& batch) {
  const int32_t hidden = config_.hidden_size, half = config_.head_dim / 2;
#pragma omp parallel for
  for (int32_t r = 0; r < batch.num_rows(); ++r) {
    std::memcpy(&x_[int64_t{r} * hidden], embed_ + int64_t{batch.token_ids[r]} * hidden,
                sizeof(float) * hidden);
    RopeCosSin(batch.positions[r], rope_inv_freq_.data(), half, &rope_cos_[r * half],
               &rope_sin_[r * half]);
  }
}

void CpuBackend::NormRows(const float* x, const float* weight, int32_t rows, float* out) {
  const int32_t hidden = config_.hidden_size;
#pragma omp parallel for
  for (int32_t r = 0; r < rows; ++r) {
    RmsNorm(x + int64_t{r} * hidden, weight, hidden, config_.rms_norm_eps, out + int64_t{r} * hidden);
  }
}

void CpuBackend::AddRows(float* x, const float* y, int32_t rows) {
  const int32_t hidden = config_.hidden_size;
#pragma omp parallel for
  for (int32_t r = 0; r < rows; ++r) {
    AddInPlace(x + int64_t{r} * hidden, y + int64_t{r} * hidden, hidden);
  }
}

// Rotates Q and K, then stores K and V of every row before any row attends.
void CpuBackend::RopeAndWriteKv(Rank& rank, int32_t layer, const StepBatch& batch) {
  const int32_t hd = config_.head_dim, half = hd / 2, B = rank.layout.block_size;
  const int32_t heads = rank.shard.num_heads, kv_heads = rank.shard.num_kv_heads;
  const int64_t q_dim = int64_t{heads} * hd, kv_dim = int64_t{kv_heads} * hd;
#pragma omp parallel for
  for (int32_t r = 0; r < batch.num_rows(); ++r) {
    const float* cos = &rope_cos_[r * half];
    const float* sin = &rope_sin_[r * half];
    ApplyRope(&rank.q[r * q_dim], heads, hd, cos, sin);
    ApplyRope(&rank.k[r * kv_dim], kv_heads, hd, cos, sin);
    const StepSequence& seq = batch.seqs[batch.rows[r].seq];
    const int32_t pos = batch.positions[r];
    const int32_t block = batch.block_tables[seq.table_begin + pos / B];
    WriteKv(&rank.k[r * kv_dim], &rank.v[r * kv_dim], rank.layout, block, pos % B,
            rank.k_cache[layer].data(), rank.v_cache[layer].data());
  }
}

// The rank's query heads over its own KV pool; chunks and block tables are the same on every
// rank (block ids name the same tokens in each rank's pool).
void CpuBackend::Attention(Rank& rank, int32_t layer, const StepBatch& batch) {
  const int32_t heads = rank.shard.num_heads, hd = config_.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float* k_cache = rank.k_cache[layer].data();
  const float* v_cache = rank.v_cache[layer].data();
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int32_t r = 0; r < batch.num_rows(); ++r) {
    for (int32_t h = 0; h < heads; ++h) {
      const AttentionRow& row = batch.rows[r];
      const int64_t offset = (int64_t{r} * heads + h) * hd;
      const int32_t kv_head = rank.shard.LocalKvHead(h, group_);
      if (row.causal) {
        const StepSequence& seq = batch.seqs[row.seq];
        std::span<const int32_t> table(batch.block_tables.data() + seq.table_begin,
                                       seq.num_blocks);
        AttendCausal(&rank.q[offset], k_cache, v_cache, rank.layout, kv_head, table,
                     batch.positions[r], scale, &rank.attn[offset]);
      } else {
        std::span<const KvChunk> chunks(batch.chunks.data() + row.chunk_begin,
                                        row.chunk_end - row.chunk_begin);
        AttendChunks(&rank.q[offset], k_cache, v_cache, rank.layout, kv_head, chunks, scale,
                     &rank.attn[offset]);
      }
    }
  }
}

// Column-parallel q, k, v; attention; row-parallel wo into the rank's partial.
void CpuBackend::RankAttention(Rank& rank, int32_t layer, const StepBatch& batch) {
  const LayerF32& w = rank.layers[layer];
  const int32_t n = batch.num_rows(), hidden = config_.hidden_size;
  const int32_t q_dim = rank.shard.num_heads * config_.head_dim;
  const int32_t kv_dim = rank.shard.num_kv_heads * config_.head_dim;
  Linear(xn_.data(), n, hidden, w.wq, q_dim, rank.q.data());
  Linear(xn_.data(), n, hidden, w.wk, kv_dim, rank.k.data());
  Linear(xn_.data(), n, hidden, w.wv, kv_dim, rank.v.data());
  if (w.bq != nullptr) {
    AddBias(rank.q.data(), n, q_dim, w.bq);
    AddBias(rank.k.data(), n, kv_dim, w.bk);
    AddBias(rank.v.data(), n, kv_dim, w.bv);
  }
  RopeAndWriteKv(rank, layer, batch);
  Attention(rank, layer, batch);
  Linear(rank.attn.data(), n, q_dim, w.wo, hidden, rank.partial.data());
}

// Column-parallel gate and up, SiLU, row-parallel w_down into the rank's partial.
void CpuBackend::RankMlp(Rank& rank, int32_t layer, int32_t n) {
  const LayerF32& w = rank.layers[layer];
  const int32_t hidden = config_.hidden_size, inter = rank.shard.inter_size;
  Linear(xn_.data(), n, hidden, w.w_gate, inter, rank.gate.data());
  Linear(xn_.data(), n, hidden, w.w_up, inter, rank.up.data());
#pragma omp parallel for
  for (int32_t r = 0; r < n; ++r) {
    float* gate = &rank.gate[int64_t{r} * inter];
    SiluMul(gate, &rank.up[int64_t{r} * inter], inter, gate);
  }
  Linear(rank.gate.data(), n, inter, w.w_down, hidden, rank.partial.data());
}

// The ranks' partial outputs summed (nothing to do with one rank); rank 0's copy of the sum.
const float* CpuBackend::AllReducePartials(int32_t rows) {
  AllReduceSum(partials_, int64_t{rows} * config_.hidden_size);
  return ranks_[0].partial.data();
}

void CpuBackend::RunLayer(int32_t layer, const StepBatch& batch) {
  const int32_t n = batch.num_rows();
  const LayerF32& norms = ranks_[0].layers[layer];  // replicated on every rank
  NormRows(x_.data(), norms.attn_norm, n, xn_.data());
  for (Rank& rank : ranks_) RankAttention(rank, layer, batch);
  AddRows(x_.data(), AllReducePartials(n), n);

  NormRows(x_.data(), norms.ffn_norm, n, xn_.data());
  for (Rank& rank : ranks_) RankMlp(rank, layer, n);
  AddRows(x_.data(), AllReducePartials(n), n);
}

// Final norm and lm_head for the rows that need logits, then the tokens.
void CpuBackend::Logits(const StepBatch& batch, StepOutput* out) {
  const int32_t num_seqs = static_cast<int32_t>(batch.seqs.size());
  logit_rows_.clear();
  seq_logits_.assign(num_seqs, -1);
  if (batch.logits_mode == LogitsMode::kAllRows) {
    for (int32_t r = 0; r < batch.num_rows(); ++r) logit_rows_.push_back(r);
  }
  for (int32_t s = 0; s < num_seqs; ++s) {
    const StepSequence& seq = batch.seqs[s];
    if (!seq.sample) continue;
    const int32_t last = seq.row_begin + seq.num_rows - 1;
    if (batch.logits_mode == LogitsMode::kAllRows) {
      seq_logits_[s] = last;
    } else {
      seq_logits_[s] = static_cast<int32_t>(logit_rows_.size());
      logit_rows_.push_back(last);
    }
  }
  const int32_t m = static_cast<int32_t>(logit_rows_.size());
  const int32_t hidden = config_.hidden_size, vocab = config_.vocab_size;
#pragma omp parallel for
  for (int32_t i = 0; i < m; ++i) {
    RmsNorm(&x_[int64_t{logit_rows_[i]} * hidden], final_norm_, hidden, config_.rms_norm_eps,
            &xn_[int64_t{i} * hidden]);
  }
  std::vector<float>& logits =
      batch.logits_mode == LogitsMode::kNone ? logits_scratch_ : out->logits;
  logits.resize(int64_t{m} * vocab);
  Linear(xn_.data(), m, hidden, lm_head_, vocab, logits.data());
  if (batch.logits_mode == LogitsMode::kNone) out->logits.clear();

  out->tokens.assign(num_seqs, -1);
  for (int32_t s = 0; s < num_seqs; ++s) {
    const StepSequence& seq = batch.seqs[s];
    if (!seq.sample) continue;
    if (seq.forced_token >= 0) {
      out->tokens[s] = seq.forced_token;
      continue;
    }
    std::span<const float> row(logits.data() + int64_t{seq_logits_[s]} * vocab, vocab);
    out->tokens[s] = sampler_.Sample(row, seq.sampling, seq.sample_index);
  }
}

absl::Status CpuBackend::Step(const StepBatch& batch, StepOutput* out) {
  ++num_steps_;
  if (absl::Status s = ValidateStepBatch(batch, num_blocks_, block_size_, config_.vocab_size);
      !s.ok()) {
    return s;
  }
  Resize(batch.num_rows());
  Embed(batch);
  for (int32_t l = 0; l < config_.num_layers; ++l) {
    RunLayer(l, batch);
#ifdef SPANSERVE_FAULT_INJECTION
    if (l == 0 &&
        std::find(fail_steps_.begin(), fail_steps_.end(), num_steps_) != fail_steps_.end()) {
      return absl::InternalError(absl::StrCat("injected fault at step ", num_steps_));
    }
#endif
  }
  Logits(batch, out);
  return absl::OkStatus();
}

}  // namespace

#ifdef SPANSERVE_FAULT_INJECTION
bool CpuFaultInjectionBuilt() { return true; }
#else
bool CpuFaultInjectionBuilt() { return false; }
#endif

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(std::shared_ptr<const Model> model,
                                                         const KvPoolOptions& pool,
                                                         const CpuFaultOptions& faults,
                                                         const CpuBackendOptions& options) {
  if (model == nullptr) return absl::InvalidArgumentError("CreateCpuBackend: no model");
  if (!faults.fail_steps.empty() && !CpuFaultInjectionBuilt()) {
    return absl::FailedPreconditionError(
        "fail steps: this build has no fault injection (CMake SPANSERVE_FAULT_INJECTION is OFF)");
  }
  auto backend = std::make_unique<CpuBackend>(std::move(model), faults);
  if (absl::Status s = backend->Init(pool, options.tensor_parallel_size); !s.ok()) return s;
  return backend;
}

}  // namespace spanserve
