#include "engine/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <new>
#include <span>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/cpu_math.h"
#include "engine/model_config.h"
#include "engine/sampler.h"

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

// Gives every weight as fp32: F32 tensors in place (the mapping), F16/BF16 converted once into
// owned buffers. A tensor seen twice (a tied lm_head) is converted once.
class WeightConverter {
 public:
  absl::StatusOr<const float*> Get(const TensorView& tensor, std::vector<int64_t> shape) {
    if (tensor.shape != shape || tensor.data == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("weight '", tensor.name, "' has shape [", absl::StrJoin(tensor.shape, ","),
                       "], the config needs [", absl::StrJoin(shape, ","), "]"));
    }
    if (tensor.dtype == DType::kF32) return static_cast<const float*>(tensor.data);
    auto found = converted_.find(tensor.data);
    if (found != converted_.end()) return found->second.data();
    int64_t numel = 1;
    for (int64_t dim : shape) numel *= dim;
    std::vector<float>& buffer = converted_[tensor.data];
    buffer.resize(numel);
    const uint16_t* bits = static_cast<const uint16_t*>(tensor.data);
    const bool half = tensor.dtype == DType::kF16;
    for (int64_t i = 0; i < numel; ++i) {
      buffer[i] = half ? HalfToFloat(bits[i]) : Bf16ToFloat(bits[i]);
    }
    return buffer.data();
  }

  std::map<const void*, std::vector<float>> TakeBuffers() { return std::move(converted_); }

 private:
  std::map<const void*, std::vector<float>> converted_;
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

class CpuBackend : public Backend {
 public:
  CpuBackend(std::shared_ptr<const Model> model, const CpuFaultOptions& faults)
      : model_(std::move(model)),
        config_(model_->config),
        rope_inv_freq_(RopeInverseFrequencies(config_)),
        fail_steps_(faults.fail_steps) {}

  absl::Status Init(const KvPoolOptions& pool);

  std::string name() const override { return "cpu"; }
  absl::Status Step(const StepBatch& batch, StepOutput* out) override;
  int32_t num_kv_blocks() const override { return num_blocks_; }
  int32_t block_size() const override { return layout_.block_size; }
  int32_t vocab_size() const override { return config_.vocab_size; }

 private:
  absl::Status ConvertWeights();
  absl::Status AllocatePool(const KvPoolOptions& pool);
  void Resize(int32_t rows);
  void Embed(const StepBatch& batch);
  void NormRows(const float* x, const float* weight, int32_t rows, float* out);
  void AddRows(float* x, const float* y, int32_t rows);
  void RopeAndWriteKv(int32_t layer, const StepBatch& batch);
  void Attention(int32_t layer, const StepBatch& batch);
  void RunLayer(int32_t layer, const StepBatch& batch);
  void Logits(const StepBatch& batch, StepOutput* out);

  std::shared_ptr<const Model> model_;
  const ModelConfig& config_;
  const std::vector<double> rope_inv_freq_;  // RopeInverseFrequencies(config_)
  std::map<const void*, std::vector<float>> converted_;
  const float* embed_ = nullptr;
  const float* final_norm_ = nullptr;
  const float* lm_head_ = nullptr;
  std::vector<LayerF32> layers_;

  KvLayout layout_;
  int32_t num_blocks_ = 0;
  std::vector<std::vector<float>> k_cache_, v_cache_;  // per layer

  // Scratch, per row of the step.
  std::vector<float> x_, xn_, q_, k_, v_, attn_, proj_, gate_, up_, rope_cos_, rope_sin_;
  std::vector<int32_t> logit_rows_;   // the rows whose logits are computed
  std::vector<int32_t> seq_logits_;   // per seq: its row in the logits, -1 if none
  std::vector<float> logits_scratch_; // logits when the step returns none
  Sampler sampler_;

  std::vector<int64_t> fail_steps_;   // fault injection (test builds)
  int64_t num_steps_ = 0;             // calls of Step
};

absl::Status CpuBackend::Init(const KvPoolOptions& pool) {
  if (absl::Status s = CheckConfig(config_, model_->weights.layers.size()); !s.ok()) return s;
  if (absl::Status s = ConvertWeights(); !s.ok()) return s;
  return AllocatePool(pool);
}

absl::Status CpuBackend::ConvertWeights() {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size, q_dim = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim, inter = c.intermediate_size;
  const ModelWeights& w = model_->weights;
  WeightConverter convert;
  auto get = [&](const TensorView& t, std::vector<int64_t> shape, const float** dst) {
    absl::StatusOr<const float*> data = convert.Get(t, std::move(shape));
    if (data.ok()) *dst = *data;
    return data.status();
  };
  absl::Status s = get(w.embed, {c.vocab_size, hidden}, &embed_);
  if (s.ok()) s = get(w.final_norm, {hidden}, &final_norm_);
  if (s.ok()) s = get(w.lm_head, {c.vocab_size, hidden}, &lm_head_);
  layers_.resize(c.num_layers);
  for (int32_t l = 0; l < c.num_layers && s.ok(); ++l) {
    const LayerWeights& lw = w.layers[l];
    LayerF32& out = layers_[l];
    s = get(lw.attn_norm, {hidden}, &out.attn_norm);
    if (s.ok()) s = get(lw.wq, {q_dim, hidden}, &out.wq);
    if (s.ok()) s = get(lw.wk, {kv_dim, hidden}, &out.wk);
    if (s.ok()) s = get(lw.wv, {kv_dim, hidden}, &out.wv);
    if (s.ok() && c.qkv_bias) s = get(lw.bq, {q_dim}, &out.bq);
    if (s.ok() && c.qkv_bias) s = get(lw.bk, {kv_dim}, &out.bk);
    if (s.ok() && c.qkv_bias) s = get(lw.bv, {kv_dim}, &out.bv);
    if (s.ok()) s = get(lw.wo, {hidden, q_dim}, &out.wo);
    if (s.ok()) s = get(lw.ffn_norm, {hidden}, &out.ffn_norm);
    if (s.ok()) s = get(lw.w_gate, {inter, hidden}, &out.w_gate);
    if (s.ok()) s = get(lw.w_up, {inter, hidden}, &out.w_up);
    if (s.ok()) s = get(lw.w_down, {hidden, inter}, &out.w_down);
  }
  converted_ = convert.TakeBuffers();
  return s;
}

absl::Status CpuBackend::AllocatePool(const KvPoolOptions& pool) {
  if (pool.block_size < 1 || pool.block_size > kMaxBlockSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV block size ", pool.block_size, " is outside 1..", kMaxBlockSize));
  }
  layout_ = {config_.num_kv_heads, pool.block_size, config_.head_dim};
  const int64_t block_bytes = KvBlockBytes(config_, pool.block_size, sizeof(float));
  const int64_t blocks = pool.num_blocks > 0 ? pool.num_blocks : pool.memory_bytes / block_bytes;
  if (blocks < 1 || blocks > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV pool of ", pool.memory_bytes, " bytes holds ", blocks, " blocks of ", block_bytes,
        " bytes (block size ", pool.block_size, "); it needs at least one"));
  }
  num_blocks_ = static_cast<int32_t>(blocks);
  try {
    k_cache_.resize(config_.num_layers);
    v_cache_.resize(config_.num_layers);
    for (int32_t l = 0; l < config_.num_layers; ++l) {
      k_cache_[l].resize(blocks * layout_.block_elems());
      v_cache_[l].resize(blocks * layout_.block_elems());
    }
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate a KV pool of ", blocks * block_bytes, " bytes"));
  }
  return absl::OkStatus();
}


void CpuBackend::Resize(int32_t rows) {
  const int64_t n = rows, hd = config_.head_dim;
  x_.resize(n * config_.hidden_size);
  xn_.resize(n * config_.hidden_size);
  proj_.resize(n * config_.hidden_size);
  q_.resize(n * config_.num_heads * hd);
  attn_.resize(n * config_.num_heads * hd);
  k_.resize(n * config_.num_kv_heads * hd);
  v_.resize(n * config_.num_kv_heads * hd);
  gate_.resize(n * config_.intermediate_size);
  up_.resize(n * config_.intermediate_size);
  rope_cos_.resize(n * hd / 2);
  rope_sin_.resize(n * hd / 2);
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
void CpuBackend::RopeAndWriteKv(int32_t layer, const StepBatch& batch) {
  const int32_t hd = config_.head_dim, half = hd / 2, B = layout_.block_size;
  const int64_t q_dim = int64_t{config_.num_heads} * hd, kv_dim = int64_t{config_.num_kv_heads} * hd;
#pragma omp parallel for
  for (int32_t r = 0; r < batch.num_rows(); ++r) {
    const float* cos = &rope_cos_[r * half];
    const float* sin = &rope_sin_[r * half];
    ApplyRope(&q_[r * q_dim], config_.num_heads, hd, cos, sin);
    ApplyRope(&k_[r * kv_dim], config_.num_kv_heads, hd, cos, sin);
    const StepSequence& seq = batch.seqs[batch.rows[r].seq];
    const int32_t pos = batch.positions[r];
    const int32_t block = batch.block_tables[seq.table_begin + pos / B];
    WriteKv(&k_[r * kv_dim], &v_[r * kv_dim], layout_, block, pos % B, k_cache_[layer].data(),
            v_cache_[layer].data());
  }
}

void CpuBackend::Attention(int32_t layer, const StepBatch& batch) {
  const int32_t heads = config_.num_heads, hd = config_.head_dim;
  const int32_t group = heads / config_.num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float* k_cache = k_cache_[layer].data();
  const float* v_cache = v_cache_[layer].data();
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int32_t r = 0; r < batch.num_rows(); ++r) {
    for (int32_t h = 0; h < heads; ++h) {
      const AttentionRow& row = batch.rows[r];
      const int64_t offset = (int64_t{r} * heads + h) * hd;
      if (row.causal) {
        const StepSequence& seq = batch.seqs[row.seq];
        std::span<const int32_t> table(batch.block_tables.data() + seq.table_begin,
                                       seq.num_blocks);
        AttendCausal(&q_[offset], k_cache, v_cache, layout_, h / group, table, batch.positions[r],
                     scale, &attn_[offset]);
      } else {
        std::span<const KvChunk> chunks(batch.chunks.data() + row.chunk_begin,
                                        row.chunk_end - row.chunk_begin);
        AttendChunks(&q_[offset], k_cache, v_cache, layout_, h / group, chunks, scale,
                     &attn_[offset]);
      }
    }
  }
}

void CpuBackend::RunLayer(int32_t layer, const StepBatch& batch) {
  const LayerF32& w = layers_[layer];
  const int32_t n = batch.num_rows(), hidden = config_.hidden_size, inter = config_.intermediate_size;
  const int32_t q_dim = config_.num_heads * config_.head_dim;
  const int32_t kv_dim = config_.num_kv_heads * config_.head_dim;
  NormRows(x_.data(), w.attn_norm, n, xn_.data());
  Linear(xn_.data(), n, hidden, w.wq, q_dim, q_.data());
  Linear(xn_.data(), n, hidden, w.wk, kv_dim, k_.data());
  Linear(xn_.data(), n, hidden, w.wv, kv_dim, v_.data());
  if (w.bq != nullptr) {
    AddBias(q_.data(), n, q_dim, w.bq);
    AddBias(k_.data(), n, kv_dim, w.bk);
    AddBias(v_.data(), n, kv_dim, w.bv);
  }
  RopeAndWriteKv(layer, batch);
  Attention(layer, batch);
  Linear(attn_.data(), n, q_dim, w.wo, hidden, proj_.data());
  AddRows(x_.data(), proj_.data(), n);

  NormRows(x_.data(), w.ffn_norm, n, xn_.data());
  Linear(xn_.data(), n, hidden, w.w_gate, inter, gate_.data());
  Linear(xn_.data(), n, hidden, w.w_up, inter, up_.data());
#pragma omp parallel for
  for (int32_t r = 0; r < n; ++r) {
    SiluMul(&gate_[int64_t{r} * inter], &up_[int64_t{r} * inter], inter, &gate_[int64_t{r} * inter]);
  }
  Linear(gate_.data(), n, inter, w.w_down, hidden, proj_.data());
  AddRows(x_.data(), proj_.data(), n);
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
  if (absl::Status s = ValidateStepBatch(batch, num_blocks_, layout_.block_size,
                                         config_.vocab_size);
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
                                                         const CpuFaultOptions& faults) {
  if (model == nullptr) return absl::InvalidArgumentError("CreateCpuBackend: no model");
  if (!faults.fail_steps.empty() && !CpuFaultInjectionBuilt()) {
    return absl::FailedPreconditionError(
        "fail steps: this build has no fault injection (CMake SPANSERVE_FAULT_INJECTION is OFF)");
  }
  auto backend = std::make_unique<CpuBackend>(std::move(model), faults);
  if (absl::Status s = backend->Init(pool); !s.ok()) return s;
  return backend;
}

}  // namespace spanserve
