#include "engine/backends/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/backends/cpu_math.h"
#include "engine/backends/cuda_step_plan.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"
#include "kernels/kernels.h"
#include "kernels/launch_plan.h"

namespace spanserve {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr size_t kBlasWorkspaceBytes = size_t{32} << 20;
constexpr int64_t kPoolAlignBytes = int64_t{2} << 20;
constexpr size_t kStagingBytes = size_t{32} << 20;  // each of the two pinned upload buffers

absl::Status CudaError(cudaError_t e, const char* what) {
  return absl::InternalError(absl::StrCat("cuda: ", what, ": ", cudaGetErrorString(e)));
}

std::string MemoryLine() {
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) return "free GPU memory unknown";
  return absl::StrFormat("%.2f GiB of the GPU's %.2f GiB are free", free / kGiB, total / kGiB);
}

absl::Status OutOfMemory(const char* what, size_t bytes) {
  cudaGetLastError();  // clear the allocation error
  return absl::ResourceExhaustedError(absl::StrFormat(
      "cuda: cannot allocate %.2f GiB for %s: %s", bytes / kGiB, what, MemoryLine()));
}

// First failure of a sequence of launches, named by what was launched.
class LaunchErrors {
 public:
  void operator()(cudaError_t e, const char* what) {
    if (e != cudaSuccess && status_.ok()) status_ = CudaError(e, what);
  }
  void operator()(cublasStatus_t s, const char* what) {
    if (s != CUBLAS_STATUS_SUCCESS && status_.ok()) {
      status_ = absl::InternalError(
          absl::StrCat("cublas: ", what, ": ", cublasGetStatusString(s)));
    }
  }
  const absl::Status& status() const { return status_; }

 private:
  absl::Status status_;
};

// A device (or pinned host) allocation, freed with its owner.
template <bool kPinned>
class CudaBuffer {
 public:
  CudaBuffer() = default;
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;
  ~CudaBuffer() { Free(); }

  absl::Status Allocate(size_t bytes, const char* what) {
    Free();
    const size_t asked = std::max<size_t>(bytes, 16);
    if ((kPinned ? cudaMallocHost(&ptr_, asked) : cudaMalloc(&ptr_, asked)) != cudaSuccess) {
      ptr_ = nullptr;
      return OutOfMemory(kPinned ? absl::StrCat(what, " (pinned host memory)").c_str() : what,
                         bytes);
    }
    bytes_ = bytes;
    return absl::OkStatus();
  }
  void Free() {
    if (ptr_ != nullptr) kPinned ? cudaFreeHost(ptr_) : cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};
using DeviceBuffer = CudaBuffer<false>;
using PinnedBuffer = CudaBuffer<true>;

// One weight tensor's place in the device weight buffer, as bf16 or (norms) fp32.
struct WeightUpload {
  const TensorView* tensor;
  size_t offset;
  bool to_f32;
};

// CUDA events recorded after each launch of a profiled step, named by phase; read after the
// step's synchronisation as GPU time per phase (a phase's launches in all layers summed).
class PhaseEvents {
 public:
  ~PhaseEvents() {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  void Begin(cudaStream_t stream) {
    used_ = 0;
    names_.clear();
    Record(nullptr, stream);
  }
  void Record(const char* phase, cudaStream_t stream) {
    if (used_ == events_.size()) {
      cudaEvent_t e = nullptr;
      if (cudaEventCreate(&e) != cudaSuccess) return;
      events_.push_back(e);
    }
    cudaEventRecord(events_[used_++], stream);
    names_.push_back(phase);
  }
  // After the stream is synchronised.
  std::vector<std::pair<std::string, double>> Sums() const {
    std::vector<std::pair<std::string, double>> sums;
    for (size_t i = 1; i < used_; ++i) {
      float ms = 0;
      cudaEventElapsedTime(&ms, events_[i - 1], events_[i]);
      auto it = std::find_if(sums.begin(), sums.end(),
                             [&](const auto& p) { return p.first == names_[i]; });
      if (it == sums.end()) it = sums.insert(sums.end(), {names_[i], 0.0});
      it->second += ms;
    }
    return sums;
  }

 private:
  std::vector<cudaEvent_t> events_;
  std::vector<const char*> names_;
  size_t used_ = 0;
};

struct LayerWeightsGpu {
  const float* attn_norm;
  const float* ffn_norm;
  const uint16_t* wqkv;      // [q_dim + 2 kv_dim][hidden]: wq, wk, wv stacked
  const float* bqkv = nullptr;  // [q_dim + 2 kv_dim]: bq, bk, bv stacked (Qwen2); else null
  const uint16_t* wo;        // [hidden][q_dim]
  const uint16_t* w_gate_up; // [2 inter][hidden]: w_gate, w_up stacked
  const uint16_t* w_down;    // [hidden][inter]
};

// Launch shape of one forward pass: eager counts, or a graph bucket's.
struct ForwardShape {
  int32_t rows = 0;
  int32_t decode_rows = 0;
  int32_t num_splits = 1;
  bool split_major = false;  // a lead layout (launch_plan.h's SplitLayoutFor)
  int32_t prefill_jobs = 0;
  int32_t logit_rows = 0;
};

class CudaBackend : public Backend {
 public:
  CudaBackend(std::shared_ptr<const Model> model, const CudaBackendOptions& options)
      : model_(std::move(model)), c_(model_->config), options_(options) {}
  ~CudaBackend() override;

  absl::Status Init();

  std::string name() const override { return "cuda"; }
  absl::Status Step(const StepBatch& batch, StepOutput* out) override;
  int32_t num_kv_blocks() const override { return num_blocks_; }
  int32_t block_size() const override { return block_size_; }
  int32_t vocab_size() const override { return c_.vocab_size; }

  const CudaBackendStats& stats() const { return stats_; }

 private:
  int32_t q_dim() const { return c_.num_heads * c_.head_dim; }
  int32_t kv_dim() const { return c_.num_kv_heads * c_.head_dim; }
  int32_t group() const { return c_.num_heads / c_.num_kv_heads; }

  absl::Status CheckModel() const;
  std::vector<WeightUpload> LayoutWeights(size_t* total) const;
  void PointWeights(uint8_t* base);
  absl::Status UploadWeights(const std::vector<WeightUpload>& uploads, size_t total);
  // The model's products (out, in): per shape its weight in each layer (lm_head: one), and
  // the step buffers it reads and writes.
  struct ProductShape {
    int32_t out, in;
    std::vector<const uint16_t*> weights;
    const char* name;
    const uint16_t* x;
    float* y;
  };
  std::vector<ProductShape> ProductShapes() const;
  void ChooseDecodeGemms();
  static constexpr int32_t kCublas = -1;
  float TimeProduct(const ProductShape& shape, int32_t rows, int32_t splits);
  int32_t DecodeGemmSplits(int32_t rows, int32_t out, int32_t in) const;
  size_t StepBufferBytes(const gpu::PlanCapacity& cap) const;
  absl::Status AllocateStepBuffers(const gpu::PlanCapacity& cap);
  absl::Status EnsureCapacity(const gpu::PlanCapacity& need);
  void DropGraphs();
  absl::Status UploadPlan(const gpu::StepPlan& plan);
  void Gemm(LaunchErrors& check, const uint16_t* x, int32_t rows, int32_t in, const uint16_t* w,
            int32_t out, float* y);
  absl::Status Forward(const ForwardShape& shape);
  absl::Status RunGraph(const ForwardShape& shape);
  absl::Status AllRowLogits(int32_t rows, StepOutput* out);
  void RecordStepTimes(std::chrono::steady_clock::time_point start,
                       std::chrono::steady_clock::time_point launch);
  void CopySampledLogits(const StepBatch& batch, const gpu::StepPlan& plan, StepOutput* out);

  template <typename T>
  T* Plan(size_t offset) const { return reinterpret_cast<T*>(plan_dev_.as<uint8_t>() + offset); }
  uint16_t* KCache(int32_t layer) const { return kv_.as<uint16_t>() + 2 * layer * layer_elems_; }
  uint16_t* VCache(int32_t layer) const { return KCache(layer) + layer_elems_; }

  std::shared_ptr<const Model> model_;
  const ModelConfig& c_;
  CudaBackendOptions options_;
  int device_ = 0;
  int32_t num_sms_ = 132;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  DeviceBuffer blas_workspace_;
  // (out, in) -> for 1..4 row tiles of 16: the decode GEMM's split count, or kCublas.
  std::map<std::pair<int32_t, int32_t>, std::array<int32_t, 4>> decode_gemm_splits_;

  DeviceBuffer weights_;
  DeviceBuffer rope_inv_freq_;  // RopeInverseFrequencies, [head_dim / 2] doubles
  const uint16_t* embed_ = nullptr;
  const uint16_t* lm_head_ = nullptr;
  const float* final_norm_ = nullptr;
  std::vector<LayerWeightsGpu> layers_;

  int32_t block_size_ = 16;
  int32_t num_blocks_ = 0;      // the engine's; block num_blocks_ is the padding rows' scratch
  int64_t layer_elems_ = 0;     // elements of one layer's K (or V) pool
  DeviceBuffer kv_;

  // Step buffers, sized by cap_.
  gpu::PlanCapacity cap_;
  gpu::PlanLayout layout_;
  DeviceBuffer x_, delta_, xn_, qkv_, q_, attn_, gate_up_, act_, logits_, probs_, tokens_,
      partial_o_, partial_lse_, split_counters_, row_index_, plan_dev_;
  PinnedBuffer plan_host_, tokens_host_;

  std::map<int32_t, cudaGraphExec_t> graphs_;  // by bucket; nullptr: capture failed, run eagerly
  CudaBackendStats stats_;
  cudaEvent_t forward_begin_ = nullptr, forward_end_ = nullptr;
  std::unique_ptr<PhaseEvents> phases_;  // with options_.profile_phases
  void Mark(const char* phase) {
    if (phases_ != nullptr) phases_->Record(phase, stream_);
  }
};

CudaBackend::~CudaBackend() {
  DropGraphs();
  phases_.reset();
  if (forward_begin_ != nullptr) cudaEventDestroy(forward_begin_);
  if (forward_end_ != nullptr) cudaEventDestroy(forward_end_);
  if (blas_ != nullptr) cublasDestroy(blas_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status CudaBackend::CheckModel() const {
  if (c_.hidden_size <= 0 || c_.intermediate_size <= 0 || c_.num_layers <= 0 ||
      c_.num_heads <= 0 || c_.num_kv_heads <= 0 || c_.head_dim <= 0 || c_.vocab_size <= 0) {
    return absl::InvalidArgumentError("model config has a size that is not positive");
  }
  if (c_.num_heads % c_.num_kv_heads != 0 || !gpu::AttentionSupports(c_.head_dim, group())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda: the attention kernels take head_dim 64 or 128 and 1, 2, 4 or 8 query heads per "
        "KV head; the model has head_dim ", c_.head_dim, ", ", c_.num_heads, " heads and ",
        c_.num_kv_heads, " KV heads"));
  }
  if (options_.pool.block_size < 1 || options_.pool.block_size > kMaxBlockSize) {
    return absl::InvalidArgumentError(absl::StrCat("KV block size ", options_.pool.block_size,
                                                   " is outside 1..", kMaxBlockSize));
  }
  if (model_->weights.layers.size() != static_cast<size_t>(c_.num_layers)) {
    return absl::InvalidArgumentError(absl::StrCat("model has weights for ",
                                                   model_->weights.layers.size(),
                                                   " layers, config says ", c_.num_layers));
  }
  // Every tensor present with the shape the config gives.
  const int64_t hidden = c_.hidden_size, inter = c_.intermediate_size;
  auto check = [](const TensorView& t, std::vector<int64_t> shape) {
    if (t.shape == shape && t.data != nullptr) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("weight '", t.name, "' has shape [", absl::StrJoin(t.shape, ","),
                     "], the config needs [", absl::StrJoin(shape, ","), "]"));
  };
  const ModelWeights& w = model_->weights;
  absl::Status s = check(w.embed, {c_.vocab_size, hidden});
  if (s.ok()) s = check(w.final_norm, {hidden});
  if (s.ok()) s = check(w.lm_head, {c_.vocab_size, hidden});
  for (const LayerWeights& lw : w.layers) {
    if (s.ok()) s = check(lw.attn_norm, {hidden});
    if (s.ok()) s = check(lw.wq, {q_dim(), hidden});
    if (s.ok()) s = check(lw.wk, {kv_dim(), hidden});
    if (s.ok()) s = check(lw.wv, {kv_dim(), hidden});
    if (s.ok() && c_.qkv_bias) s = check(lw.bq, {q_dim()});
    if (s.ok() && c_.qkv_bias) s = check(lw.bk, {kv_dim()});
    if (s.ok() && c_.qkv_bias) s = check(lw.bv, {kv_dim()});
    if (s.ok()) s = check(lw.wo, {hidden, q_dim()});
    if (s.ok()) s = check(lw.ffn_norm, {hidden});
    if (s.ok()) s = check(lw.w_gate, {inter, hidden});
    if (s.ok()) s = check(lw.w_up, {inter, hidden});
    if (s.ok()) s = check(lw.w_down, {hidden, inter});
  }
  return s;
}

// Offsets of every tensor in one device buffer; Q/K/V and gate/up stacked so each is one GEMM.
// A tied lm_head shares the embedding's bytes.
std::vector<WeightUpload> CudaBackend::LayoutWeights(size_t* total) const {
  std::vector<WeightUpload> uploads;
  size_t offset = 0;
  auto add = [&](const TensorView& t, bool to_f32) {
    uploads.push_back({&t, offset, to_f32});
    offset += t.numel() * (to_f32 ? sizeof(float) : sizeof(uint16_t));
  };
  auto align = [&] { offset = (offset + 255) / 256 * 256; };
  const ModelWeights& w = model_->weights;
  add(w.embed, false);
  align();
  if (w.lm_head.data != w.embed.data) add(w.lm_head, false);
  align();
  add(w.final_norm, true);
  align();
  for (const LayerWeights& lw : w.layers) {
    add(lw.attn_norm, true);
    align();
    add(lw.ffn_norm, true);
    align();
    add(lw.wq, false);
    add(lw.wk, false);
    add(lw.wv, false);
    align();
    if (c_.qkv_bias) {
      add(lw.bq, true);
      add(lw.bk, true);
      add(lw.bv, true);
      align();
    }
    add(lw.wo, false);
    align();
    add(lw.w_gate, false);
    add(lw.w_up, false);
    align();
    add(lw.w_down, false);
    align();
  }
  *total = offset;
  return uploads;
}

// The pointers, in the order LayoutWeights placed the tensors.
void CudaBackend::PointWeights(uint8_t* base) {
  size_t total = 0;
  const std::vector<WeightUpload> uploads = LayoutWeights(&total);
  size_t i = 0;
  auto next = [&]() { return base + uploads[i++].offset; };
  const ModelWeights& w = model_->weights;
  embed_ = reinterpret_cast<const uint16_t*>(next());
  lm_head_ = w.lm_head.data != w.embed.data ? reinterpret_cast<const uint16_t*>(next()) : embed_;
  final_norm_ = reinterpret_cast<const float*>(next());
  layers_.resize(c_.num_layers);
  for (LayerWeightsGpu& lw : layers_) {
    lw.attn_norm = reinterpret_cast<const float*>(next());
    lw.ffn_norm = reinterpret_cast<const float*>(next());
    lw.wqkv = reinterpret_cast<const uint16_t*>(next());
    i += 2;  // wk, wv follow wq
    if (c_.qkv_bias) {
      lw.bqkv = reinterpret_cast<const float*>(next());
      i += 2;  // bk, bv follow bq
    }
    lw.wo = reinterpret_cast<const uint16_t*>(next());
    lw.w_gate_up = reinterpret_cast<const uint16_t*>(next());
    i += 1;  // w_up follows w_gate
    lw.w_down = reinterpret_cast<const uint16_t*>(next());
  }
}

// Converts each tensor on the host (to bf16, norms to fp32) into one of two pinned staging
// buffers while the other one's copy runs.
absl::Status CudaBackend::UploadWeights(const std::vector<WeightUpload>& uploads, size_t total) {
  PinnedBuffer staging[2];
  cudaEvent_t done[2] = {nullptr, nullptr};
  for (int i = 0; i < 2; ++i) {
    if (absl::Status s = staging[i].Allocate(kStagingBytes, "weight staging"); !s.ok()) return s;
    if (cudaError_t e = cudaEventCreateWithFlags(&done[i], cudaEventDisableTiming); e != cudaSuccess) {
      return CudaError(e, "event");
    }
  }
  LaunchErrors check;
  size_t copied = 0, reported = 0;
  int turn = 0;
  for (const WeightUpload& up : uploads) {
    const TensorView& t = *up.tensor;
    const size_t out_elem = up.to_f32 ? sizeof(float) : sizeof(uint16_t);
    const int64_t per_piece = static_cast<int64_t>(kStagingBytes / out_elem);
    for (int64_t begin = 0; begin < t.numel(); begin += per_piece) {
      const int64_t n = std::min(per_piece, t.numel() - begin);
      check(cudaEventSynchronize(done[turn]), "weight upload");
      void* dst = staging[turn].as<void>();
      for (int64_t i = 0; i < n; ++i) {
        const int64_t k = begin + i;
        float value = 0;
        switch (t.dtype) {
          case DType::kF32: value = static_cast<const float*>(t.data)[k]; break;
          case DType::kF16: value = HalfToFloat(static_cast<const uint16_t*>(t.data)[k]); break;
          case DType::kBF16:
            if (!up.to_f32) {  // already bf16: copied as is
              static_cast<uint16_t*>(dst)[i] = static_cast<const uint16_t*>(t.data)[k];
              continue;
            }
            value = Bf16ToFloat(static_cast<const uint16_t*>(t.data)[k]);
            break;
        }
        if (up.to_f32) {
          static_cast<float*>(dst)[i] = value;
        } else {
          static_cast<uint16_t*>(dst)[i] = FloatToBf16(value);
        }
      }
      check(cudaMemcpyAsync(weights_.as<uint8_t>() + up.offset + begin * out_elem, dst,
                            n * out_elem, cudaMemcpyHostToDevice, stream_),
            "weight upload");
      check(cudaEventRecord(done[turn], stream_), "weight upload");
      turn ^= 1;
      copied += n * out_elem;
      if (options_.progress && (copied - reported > (size_t{1} << 30) || copied == total)) {
        std::fprintf(stderr, "\rcuda: weights to GPU %.2f / %.2f GiB", copied / kGiB, total / kGiB);
        reported = copied;
      }
    }
  }
  check(cudaStreamSynchronize(stream_), "weight upload");
  if (options_.progress) std::fprintf(stderr, "\rcuda: weights to GPU %.2f / %.2f GiB, done\n",
                                      total / kGiB, total / kGiB);
  for (cudaEvent_t e : done) cudaEventDestroy(e);
  return check.status();
}

std::vector<CudaBackend::ProductShape> CudaBackend::ProductShapes() const {
  const int32_t H = c_.hidden_size, I = c_.intermediate_size;
  std::vector<ProductShape> shapes = {
      {q_dim() + 2 * kv_dim(), H, {}, "qkv", xn_.as<uint16_t>(), qkv_.as<float>()},
      {H, q_dim(), {}, "o", attn_.as<uint16_t>(), delta_.as<float>()},
      {2 * I, H, {}, "gate_up", xn_.as<uint16_t>(), gate_up_.as<float>()},
      {H, I, {}, "down", act_.as<uint16_t>(), delta_.as<float>()},
      {c_.vocab_size, H, {lm_head_}, "lm_head", xn_.as<uint16_t>(), logits_.as<float>()}};
  for (const LayerWeightsGpu& w : layers_) {
    shapes[0].weights.push_back(w.wqkv);
    shapes[1].weights.push_back(w.wo);
    shapes[2].weights.push_back(w.w_gate_up);
    shapes[3].weights.push_back(w.w_down);
  }
  return shapes;
}

// The decode GEMM's split count for this product, or kCublas: cuBLAS runs it.
int32_t CudaBackend::DecodeGemmSplits(int32_t rows, int32_t out, int32_t in) const {
  if (!gpu::DecodeGemmTakes(rows, out, in)) return kCublas;
  const auto found = decode_gemm_splits_.find({out, in});
  return found != decode_gemm_splits_.end() ? found->second[(rows - 1) / 16] : kCublas;
}

// GPU time (ms) of one launch of the product at `rows` rows by the decode GEMM at `splits`
// (kCublas: by cuBLAS): the best of two rounds of 8 launches back to back, each on the next
// layer's weight (as a step reads them: from memory, not from L2), from and into the step
// buffers (zeros in, which the next step overwrites).
float CudaBackend::TimeProduct(const ProductShape& shape, int32_t rows, int32_t splits) {
  constexpr int kLaunches = 8;
  decode_gemm_splits_[{shape.out, shape.in}].fill(splits);
  LaunchErrors check;
  float best = std::numeric_limits<float>::infinity();
  for (int round = 0; round < 3; ++round) {  // round 0 warms up
    check(cudaEventRecord(forward_begin_, stream_), "gemm timing");
    for (int i = 0; i < kLaunches; ++i) {
      const uint16_t* w = shape.weights[(round * kLaunches + i) % shape.weights.size()];
      Gemm(check, shape.x, rows, shape.in, w, shape.out, shape.y);
    }
    check(cudaEventRecord(forward_end_, stream_), "gemm timing");
    check(cudaEventSynchronize(forward_end_), "gemm timing");
    float ms = 0;
    cudaEventElapsedTime(&ms, forward_begin_, forward_end_);
    if (round > 0) best = std::min(best, ms / kLaunches);
  }
  return check.status().ok() ? best : std::numeric_limits<float>::infinity();
}

// Which kernel runs each product the decode GEMM takes, at each row tile count: as the option
// says, or the fastest measured on this GPU of cuBLAS and the decode GEMM at each split count
// it can take there (its plan's, and 1, 2, 4, 8).
void CudaBackend::ChooseDecodeGemms() {
  using Mode = CudaBackendOptions::DecodeGemm;
  if (options_.decode_gemm == Mode::kOff) return;
  for (const ProductShape& shape : ProductShapes()) {
    std::array<int32_t, 4> chosen;
    chosen.fill(kCublas);
    std::array<std::string, 4> lines;
    for (int32_t tiles = 1; tiles <= 4; ++tiles) {
      const int32_t rows = 16 * tiles;
      if (!gpu::DecodeGemmTakes(rows, shape.out, shape.in)) continue;
      const int32_t planned = gpu::DecodeGemmPlanFor(shape.out, shape.in, num_sms_).splits;
      chosen[tiles - 1] = planned;
      lines[tiles - 1] = absl::StrFormat("%s %dx%d rows %d: decode GEMM, %d splits", shape.name,
                                         shape.out, shape.in, rows, planned);
      if (options_.decode_gemm != Mode::kMeasured) continue;
      const float cublas = TimeProduct(shape, rows, kCublas);
      float best = cublas;
      chosen[tiles - 1] = kCublas;  // unless a split count beats it
      std::string times;
      for (const int32_t asked : {planned, 1, 2, 4, 8}) {
        const int32_t splits = gpu::DecodeGemmPlanFor(shape.out, shape.in, num_sms_, asked).splits;
        if (splits != asked || (asked != planned && splits == planned)) continue;  // capped, or done
        const float ms = TimeProduct(shape, rows, splits);
        absl::StrAppendFormat(&times, ", %d splits %.1f us", splits, 1e3 * ms);
        if (ms < best) {
          best = ms;
          chosen[tiles - 1] = splits;
        }
      }
      lines[tiles - 1] = absl::StrFormat(
          "%s %dx%d rows %d: %s (cuBLAS %.1f us%s)", shape.name, shape.out, shape.in, rows,
          chosen[tiles - 1] == kCublas ? std::string("cuBLAS")
                                       : absl::StrFormat("decode GEMM, %d splits", chosen[tiles - 1]),
          1e3 * cublas, times);
    }
    decode_gemm_splits_[{shape.out, shape.in}] = chosen;
    for (std::string& line : lines) {
      if (!line.empty()) stats_.gemm_choices.push_back(std::move(line));
    }
  }
}

size_t CudaBackend::StepBufferBytes(const gpu::PlanCapacity& cap) const {
  const size_t rows = cap.rows, logit_rows = cap.logit_rows;
  const size_t H = c_.hidden_size, I = c_.intermediate_size, V = c_.vocab_size;
  return rows * (2 * H * 4 + (q_dim() + 2 * kv_dim()) * 4 + 2 * q_dim() * 2 + 2 * I * 4 + I * 2) +
         std::max(rows, logit_rows) * (H * 2 + 4) + logit_rows * (2 * V * 4 + 4) +
         size_t(cap.row_splits) * c_.num_heads * (c_.head_dim + 1) * 4 +
         rows * c_.num_kv_heads * 4 +
         2 * gpu::PlanLayout::For(cap).total;
}

absl::Status CudaBackend::AllocateStepBuffers(const gpu::PlanCapacity& cap) {
  const size_t rows = cap.rows, logit_rows = cap.logit_rows;
  const size_t H = c_.hidden_size, I = c_.intermediate_size, V = c_.vocab_size;
  const size_t norm_rows = std::max(rows, logit_rows);
  cap_ = cap;
  layout_ = gpu::PlanLayout::For(cap);
  const std::pair<DeviceBuffer*, size_t> buffers[] = {
      {&x_, rows * H * 4},
      {&delta_, rows * H * 4},
      {&xn_, norm_rows * H * 2},
      {&qkv_, rows * (q_dim() + 2 * kv_dim()) * 4},
      {&q_, rows * q_dim() * 2},
      {&attn_, rows * q_dim() * 2},
      {&gate_up_, rows * 2 * I * 4},
      {&act_, rows * I * 2},
      {&logits_, logit_rows * V * 4},
      {&probs_, logit_rows * V * 4},
      {&tokens_, logit_rows * 4},
      {&partial_o_, size_t(cap.row_splits) * q_dim() * 4},
      {&partial_lse_, size_t(cap.row_splits) * c_.num_heads * 4},
      {&split_counters_, rows * c_.num_kv_heads * 4},
      {&row_index_, norm_rows * 4},
      {&plan_dev_, layout_.total},
  };
  for (const auto& [buffer, bytes] : buffers) {
    if (absl::Status s = buffer->Allocate(bytes, "step buffers"); !s.ok()) return s;
  }
  if (absl::Status s = plan_host_.Allocate(layout_.total, "step metadata"); !s.ok()) return s;
  if (absl::Status s = tokens_host_.Allocate(logit_rows * 4, "sampled tokens"); !s.ok()) return s;
  // The decode kernel's split counters start at zero; its merging CTAs leave them at zero.
  if (cudaError_t e = cudaMemset(split_counters_.as<int32_t>(), 0, split_counters_.bytes());
      e != cudaSuccess) {
    return CudaError(e, "split counters");
  }
  // row_index_ = 0, 1, 2, ...: the row map for logits of all rows, a slice at a time.
  std::vector<int32_t> iota(norm_rows);
  for (size_t i = 0; i < norm_rows; ++i) iota[i] = static_cast<int32_t>(i);
  if (cudaError_t e = cudaMemcpy(row_index_.as<int32_t>(), iota.data(), norm_rows * 4,
                                 cudaMemcpyHostToDevice);
      e != cudaSuccess) {
    return CudaError(e, "row index");
  }
  return absl::OkStatus();
}

// Grows the step buffers to cover `need` (with room to spare); graphs hold the old addresses.
absl::Status CudaBackend::EnsureCapacity(const gpu::PlanCapacity& need) {
  if (cap_.Covers(need)) return absl::OkStatus();
  if (cudaError_t e = cudaStreamSynchronize(stream_); e != cudaSuccess) {
    return CudaError(e, "synchronize before growing the step buffers");
  }
  DropGraphs();
  gpu::PlanCapacity grown = need;
  auto room = [](int32_t have, int32_t want) { return want > have ? std::max(want, have + have / 2) : have; };
  grown.rows = room(cap_.rows, need.rows);
  grown.logit_rows = room(cap_.logit_rows, need.logit_rows);
  grown.table_entries = room(cap_.table_entries, need.table_entries);
  grown.chunks = room(cap_.chunks, need.chunks);
  grown.row_splits = room(cap_.row_splits, need.row_splits);
  grown.prefill_jobs = room(cap_.prefill_jobs, need.prefill_jobs);
  return AllocateStepBuffers(grown);
}

void CudaBackend::DropGraphs() {
  for (auto& [bucket, exec] : graphs_) {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
  }
  graphs_.clear();
}

absl::Status CudaBackend::Init() {
  if (absl::Status s = CheckModel(); !s.ok()) return s;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    return absl::FailedPreconditionError("cuda: no GPU is visible");
  }
  LaunchErrors check;
  check(cudaSetDevice(device_), "set device");
  cudaDeviceProp props{};
  check(cudaGetDeviceProperties(&props, device_), "device properties");
  num_sms_ = props.multiProcessorCount;
  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream");
  if (!check.status().ok()) return check.status();
  check(cublasCreate(&blas_), "create handle");
  check(cudaEventCreate(&forward_begin_), "create event");
  check(cudaEventCreate(&forward_end_), "create event");
  if (options_.profile_phases) phases_ = std::make_unique<PhaseEvents>();
  check(cublasSetStream(blas_, stream_), "set stream");
  if (!check.status().ok()) return check.status();

  // What must fit: the weights, the step buffers at their first size, the BLAS workspace; the
  // KV pool takes the rest of the memory share (or what pool.num_blocks asks).
  size_t weight_bytes = 0;
  const std::vector<WeightUpload> uploads = LayoutWeights(&weight_bytes);
  gpu::PlanCapacity cap;
  cap.rows = std::max(options_.max_step_rows, options_.max_graph_rows);
  cap.logit_rows = std::max(options_.max_graph_rows, 256);
  cap.table_entries = 1 << 16;
  cap.chunks = 1 << 17;
  cap.row_splits = static_cast<int32_t>(
      gpu::MaxRowSplits(cap.rows, c_.num_kv_heads, group(), c_.head_dim, num_sms_));
  cap.prefill_jobs = cap.rows;
  const size_t fixed = weight_bytes + StepBufferBytes(cap) + kBlasWorkspaceBytes;
  size_t free = 0, total = 0;
  check(cudaMemGetInfo(&free, &total), "memory info");
  if (!check.status().ok()) return check.status();
  block_size_ = options_.pool.block_size;
  const int64_t block_bytes = KvBlockBytes(c_, block_size_, sizeof(uint16_t));
  // Each layer's K and V pools start at a 2 MiB boundary, the GPU's large page, so that
  // KvBlockManager's runs (2 MiB of a pool at 8 KV heads of 128) each sit in pages of their
  // own: a run that straddles pages reads like runs of half the length.
  const int64_t pools = int64_t{2} * c_.num_layers, pool_block_bytes = block_bytes / pools;
  int64_t blocks = options_.pool.num_blocks;
  if (blocks <= 0) {
    const double budget = options_.gpu_memory_fraction * static_cast<double>(free) - fixed -
                          static_cast<double>(pools * kPoolAlignBytes);
    blocks = budget > 0 ? static_cast<int64_t>(budget / block_bytes) - 1 : 0;
  }
  const int64_t unaligned_pool = (std::max<int64_t>(blocks, 0) + 1) * pool_block_bytes;
  const int64_t pool_bytes = (unaligned_pool + kPoolAlignBytes - 1) / kPoolAlignBytes * kPoolAlignBytes;
  const size_t kv_bytes = static_cast<size_t>(pools * pool_bytes);
  if (blocks < 1 || blocks > INT32_MAX || fixed + kv_bytes > free) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "cuda: the weights (%.2f GiB), step buffers (%.2f GiB) and a KV pool of %d blocks of "
        "%.2f MiB (block size %d) ask %.2f GiB; %s (gpu_memory_fraction %.2f)",
        weight_bytes / kGiB, (fixed - weight_bytes) / kGiB, static_cast<int>(std::max<int64_t>(blocks, 1)),
        block_bytes / 1048576.0, block_size_, (fixed + kv_bytes) / kGiB,
        MemoryLine(), options_.gpu_memory_fraction));
  }
  num_blocks_ = static_cast<int32_t>(blocks);
  layer_elems_ = pool_bytes / int64_t{sizeof(uint16_t)};
  stats_.weight_bytes = static_cast<int64_t>(weight_bytes);
  stats_.kv_pool_bytes = static_cast<int64_t>(kv_bytes);

  if (absl::Status s = blas_workspace_.Allocate(kBlasWorkspaceBytes, "the cuBLAS workspace"); !s.ok()) return s;
  check(cublasSetWorkspace(blas_, blas_workspace_.as<void>(), kBlasWorkspaceBytes), "workspace");
  if (absl::Status s = weights_.Allocate(weight_bytes, "the weights"); !s.ok()) return s;
  if (absl::Status s = kv_.Allocate(kv_bytes, "the KV cache"); !s.ok()) return s;
  const std::vector<double> inv_freq = RopeInverseFrequencies(c_);
  if (absl::Status s = rope_inv_freq_.Allocate(inv_freq.size() * sizeof(double), "RoPE table");
      !s.ok()) {
    return s;
  }
  check(cudaMemcpy(rope_inv_freq_.as<double>(), inv_freq.data(), inv_freq.size() * sizeof(double),
                   cudaMemcpyHostToDevice),
        "RoPE table");
  if (absl::Status s = AllocateStepBuffers(cap); !s.ok()) return s;
  PointWeights(weights_.as<uint8_t>());
  if (absl::Status s = UploadWeights(uploads, weight_bytes); !s.ok()) return s;
  for (const DeviceBuffer* x : {&xn_, &attn_, &act_}) {
    check(cudaMemsetAsync(x->as<void>(), 0, x->bytes(), stream_), "clear the step inputs");
  }
  ChooseDecodeGemms();
  // A cache that was never written holds no NaN: padding rows and the tests read it.
  check(cudaMemsetAsync(kv_.as<void>(), 0, kv_bytes, stream_), "clear the KV cache");
  check(cudaStreamSynchronize(stream_), "init");
  return check.status();
}

absl::Status CudaBackend::UploadPlan(const gpu::StepPlan& plan) {
  const size_t rows = plan.rows * sizeof(int32_t);
  const std::pair<size_t, size_t> sections[] = {
      {layout_.token_ids, rows},
      {layout_.positions, rows},
      {layout_.kv_block, rows},
      {layout_.kv_offset, rows},
      {layout_.split_heads, size_t(plan.decode_rows) * plan.num_splits * sizeof(gpu::SplitHead)},
      {layout_.prefill_jobs, plan.prefill_jobs * sizeof(gpu::PrefillJob)},
      {layout_.logit_rows, plan.logit_rows * sizeof(int32_t)},
      {layout_.samples, plan.logit_rows * sizeof(gpu::SampleEntry)},
      {layout_.block_tables, plan.table_entries * sizeof(int32_t)},
      {layout_.chunks, plan.chunks * sizeof(gpu::ChunkEntry)},
  };
  LaunchErrors check;
  for (const auto& [offset, bytes] : sections) {
    if (bytes == 0) continue;
    check(cudaMemcpyAsync(plan_dev_.as<uint8_t>() + offset, plan_host_.as<uint8_t>() + offset,
                          bytes, cudaMemcpyHostToDevice, stream_),
          "step metadata upload");
  }
  return check.status();
}

// y[rows, out] (fp32) = x[rows, in] (bf16) . w[out, in]^T (bf16), fp32 accumulation: by the
// decode GEMM where it takes the shape (decode steps: the weight read once at the roof), else
// cuBLAS.
void CudaBackend::Gemm(LaunchErrors& check, const uint16_t* x, int32_t rows, int32_t in,
                       const uint16_t* w, int32_t out, float* y) {
  if (rows == 0) return;
  if (const int32_t splits = DecodeGemmSplits(rows, out, in); splits != kCublas) {
    gpu::DecodeGemmArgs args{x, w, y, rows, out, in};
    args.splits = splits;
    args.early_launch = options_.early_launch;
    check(gpu::LaunchDecodeGemm(args, stream_), "decode gemm");
    return;
  }
  const float one = 1.0f, zero = 0.0f;
  check(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &one, w, CUDA_R_16BF, in, x,
                     CUDA_R_16BF, in, &zero, y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT),
        "gemm");
}

absl::Status CudaBackend::Forward(const ForwardShape& s) {
  LaunchErrors check;
  const int32_t H = c_.hidden_size, I = c_.intermediate_size, n = s.rows;
  const float eps = c_.rms_norm_eps;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c_.head_dim));
  const bool early = options_.early_launch;
  check(gpu::LaunchEmbedding(Plan<int32_t>(layout_.token_ids), embed_, n, H, x_.as<float>(), stream_),
        "embedding");
  Mark("embedding");
  for (int32_t l = 0; l < c_.num_layers; ++l) {
    const LayerWeightsGpu& w = layers_[l];
    check(gpu::LaunchAddRmsNorm(x_.as<float>(), l == 0 ? nullptr : delta_.as<float>(), w.attn_norm,
                                nullptr, n, H, eps, true, xn_.as<uint16_t>(), stream_, early),
          "attention norm");
    Mark("norms");
    Gemm(check, xn_.as<uint16_t>(), n, H, w.wqkv, q_dim() + 2 * kv_dim(), qkv_.as<float>());
    Mark("gemm qkv");
    gpu::RopeKvArgs rope{qkv_.as<float>(), Plan<int32_t>(layout_.positions),
                         Plan<int32_t>(layout_.kv_block), Plan<int32_t>(layout_.kv_offset),
                         n, c_.num_heads, c_.num_kv_heads, c_.head_dim, block_size_,
                         rope_inv_freq_.as<double>(), w.bqkv, q_.as<uint16_t>(), KCache(l),
                         VCache(l)};
    check(gpu::LaunchRopeWriteKv(rope, stream_, early), "rope and KV write");
    Mark("rope + kv write");
    gpu::PrefillAttentionArgs prefill{q_.as<uint16_t>(), KCache(l), VCache(l),
                                      Plan<gpu::PrefillJob>(layout_.prefill_jobs),
                                      Plan<int32_t>(layout_.positions),
                                      Plan<int32_t>(layout_.block_tables), s.prefill_jobs,
                                      c_.num_heads, c_.num_kv_heads, c_.head_dim, block_size_,
                                      scale, attn_.as<uint16_t>()};
    check(gpu::LaunchPrefillAttention(prefill, stream_), "prefill attention");
    Mark("prefill attention");
    gpu::DecodeAttentionArgs decode{q_.as<uint16_t>(), KCache(l), VCache(l),
                                    Plan<gpu::SplitHead>(layout_.split_heads),
                                    Plan<gpu::ChunkEntry>(layout_.chunks), s.decode_rows,
                                    s.num_splits, c_.num_heads, c_.num_kv_heads, c_.head_dim,
                                    block_size_, scale, partial_o_.as<float>(),
                                    partial_lse_.as<float>(), attn_.as<uint16_t>(),
                                    split_counters_.as<int32_t>()};
    decode.split_major = s.split_major;
    check(gpu::LaunchDecodeAttention(decode, stream_), "decode attention");
    Mark("decode attention");
    Gemm(check, attn_.as<uint16_t>(), n, q_dim(), w.wo, H, delta_.as<float>());
    Mark("gemm o");
    check(gpu::LaunchAddRmsNorm(x_.as<float>(), delta_.as<float>(), w.ffn_norm, nullptr, n, H, eps,
                                true, xn_.as<uint16_t>(), stream_, early),
          "ffn norm");
    Mark("norms");
    Gemm(check, xn_.as<uint16_t>(), n, H, w.w_gate_up, 2 * I, gate_up_.as<float>());
    Mark("gemm gate_up");
    check(gpu::LaunchSiluMul(gate_up_.as<float>(), n, I, act_.as<uint16_t>(), stream_, early),
          "silu");
    Mark("silu");
    Gemm(check, act_.as<uint16_t>(), n, I, w.w_down, H, delta_.as<float>());
    Mark("gemm down");
  }
  if (s.logit_rows > 0) {
    // The last residual add stays out of x (write_back false), so logits of other rows can
    // still be computed from x and delta.
    check(gpu::LaunchAddRmsNorm(x_.as<float>(), delta_.as<float>(), final_norm_,
                                Plan<int32_t>(layout_.logit_rows), s.logit_rows, H, eps, false,
                                xn_.as<uint16_t>(), stream_, early),
          "final norm");
    Mark("norms");
    Gemm(check, xn_.as<uint16_t>(), s.logit_rows, H, lm_head_, c_.vocab_size, logits_.as<float>());
    Mark("gemm lm_head");
    check(gpu::LaunchSample(logits_.as<float>(), s.logit_rows, c_.vocab_size,
                            Plan<gpu::SampleEntry>(layout_.samples), probs_.as<float>(),
                            tokens_.as<int32_t>(), stream_, early),
          "sampling");
    Mark("sampling");
  }
  return check.status();
}

// Replays the bucket's graph, capturing it on first use. A bucket whose capture fails runs
// eagerly from then on.
absl::Status CudaBackend::RunGraph(const ForwardShape& shape) {
  auto found = graphs_.find(shape.rows);
  if (found == graphs_.end()) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    cudaError_t e = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
    absl::Status forward = e == cudaSuccess ? Forward(shape) : CudaError(e, "begin capture");
    if (e == cudaSuccess) e = cudaStreamEndCapture(stream_, &graph);
    if (forward.ok() && e == cudaSuccess) e = cudaGraphInstantiate(&exec, graph, 0);
    if (graph != nullptr) cudaGraphDestroy(graph);
    if (!forward.ok() || e != cudaSuccess) {
      cudaGetLastError();
      std::fprintf(stderr, "cuda: capturing the graph of %d rows failed (%s); it runs eagerly\n",
                   shape.rows, forward.ok() ? cudaGetErrorString(e) : forward.ToString().c_str());
      exec = nullptr;
    } else {
      ++stats_.graphs_captured;
    }
    found = graphs_.emplace(shape.rows, exec).first;
  }
  if (found->second == nullptr) {
    ++stats_.eager_steps;
    return Forward(shape);
  }
  ++stats_.graph_steps;
  if (cudaError_t e = cudaGraphLaunch(found->second, stream_); e != cudaSuccess) {
    return CudaError(e, "graph launch");
  }
  return absl::OkStatus();
}

void CudaBackend::RecordStepTimes(std::chrono::steady_clock::time_point start,
                                  std::chrono::steady_clock::time_point launch) {
  using Ms = std::chrono::duration<double, std::milli>;
  stats_.last_step_ms = Ms(std::chrono::steady_clock::now() - start).count();
  stats_.last_host_ms = Ms(launch - start).count();
  float gpu_ms = 0;
  cudaEventElapsedTime(&gpu_ms, forward_begin_, forward_end_);
  stats_.last_gpu_ms = gpu_ms;
  if (phases_ != nullptr) stats_.last_phases = phases_->Sums();
}

// Logits of every row, a slice of cap_.logit_rows rows at a time, after the step.
absl::Status CudaBackend::AllRowLogits(int32_t rows, StepOutput* out) {
  LaunchErrors check;
  const int64_t V = c_.vocab_size;
  out->logits.resize(int64_t{rows} * V);
  for (int32_t begin = 0; begin < rows && check.status().ok(); begin += cap_.logit_rows) {
    const int32_t n = std::min(cap_.logit_rows, rows - begin);
    check(gpu::LaunchAddRmsNorm(x_.as<float>(), delta_.as<float>(), final_norm_,
                                row_index_.as<int32_t>() + begin, n, c_.hidden_size,
                                c_.rms_norm_eps, false, xn_.as<uint16_t>(), stream_),
          "final norm");
    Gemm(check, xn_.as<uint16_t>(), n, c_.hidden_size, lm_head_, c_.vocab_size, logits_.as<float>());
    check(cudaMemcpyAsync(out->logits.data() + begin * V, logits_.as<float>(), n * V * sizeof(float),
                          cudaMemcpyDeviceToHost, stream_),
          "logits copy");
    check(cudaStreamSynchronize(stream_), "logits copy");
  }
  return check.status();
}

// The sampled sequences' logits rows, in sequence order, as runs of consecutive rows.
void CudaBackend::CopySampledLogits(const StepBatch& batch, const gpu::StepPlan& plan,
                                    StepOutput* out) {
  const int64_t V = c_.vocab_size;
  std::vector<int32_t> rows;
  for (size_t s = 0; s < batch.seqs.size(); ++s) {
    if (plan.seq_logit_row[s] >= 0) rows.push_back(plan.seq_logit_row[s]);
  }
  out->logits.resize(rows.size() * V);
  for (size_t i = 0; i < rows.size();) {
    size_t j = i + 1;
    while (j < rows.size() && rows[j] == rows[j - 1] + 1) ++j;
    cudaMemcpyAsync(out->logits.data() + i * V, logits_.as<float>() + rows[i] * V,
                    (j - i) * V * sizeof(float), cudaMemcpyDeviceToHost, stream_);
    i = j;
  }
}

absl::Status CudaBackend::Step(const StepBatch& batch, StepOutput* out) {
  if (absl::Status s = ValidateStepBatch(batch, num_blocks_, block_size_, c_.vocab_size);
      !s.ok()) {
    return s;
  }
  const auto step_start = std::chrono::steady_clock::now();
  if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) return CudaError(e, "set device");
  const int32_t n = batch.num_rows();
  const bool graph = options_.cuda_graphs && !options_.profile_phases && n > 0 &&
                     n <= options_.max_graph_rows && gpu::IsDecodeStep(batch);
  gpu::PlanOptions plan_options;
  plan_options.block_size = block_size_;
  plan_options.pad_rows = graph ? gpu::GraphBucket(n) : 0;
  const int32_t decode_rows = gpu::DecodeRows(batch, plan_options.pad_rows);
  // A function of decode_rows alone, so that a graph bucket's launch shape is fixed.
  const gpu::SplitLayout split_layout =
      gpu::SplitLayoutFor(decode_rows, c_.num_kv_heads, group(), c_.head_dim, num_sms_);
  plan_options.num_splits = split_layout.splits;
  plan_options.min_split_tokens = split_layout.min_split_tokens;
  plan_options.lead_percent = split_layout.lead_percent;
  plan_options.prefill_tile_rows = gpu::PrefillTileRows(group());
  plan_options.scratch_block = num_blocks_;
  if (absl::Status s = EnsureCapacity(gpu::NeededCapacity(batch, plan_options)); !s.ok()) return s;
  const gpu::StepPlan plan = gpu::BuildStepPlan(batch, plan_options, layout_, plan_host_.as<uint8_t>());
  if (absl::Status s = UploadPlan(plan); !s.ok()) return s;

  const ForwardShape shape{plan.rows, plan.decode_rows, plan.num_splits, plan.split_major,
                           plan.prefill_jobs, plan.logit_rows};
  const auto launch = std::chrono::steady_clock::now();
  LaunchErrors check;
  check(cudaEventRecord(forward_begin_, stream_), "step event");
  if (phases_ != nullptr) phases_->Begin(stream_);
  absl::Status run = graph ? RunGraph(shape) : Forward(shape);
  if (!graph) ++stats_.eager_steps;
  if (!run.ok()) return run;
  check(cudaEventRecord(forward_end_, stream_), "step event");
  if (plan.logit_rows > 0) {
    check(cudaMemcpyAsync(tokens_host_.as<int32_t>(), tokens_.as<int32_t>(),
                          plan.logit_rows * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_),
          "token copy");
  }
  if (batch.logits_mode == LogitsMode::kSampled) CopySampledLogits(batch, plan, out);
  check(cudaStreamSynchronize(stream_), "step");
  if (check.status().ok()) RecordStepTimes(step_start, launch);
  if (check.status().ok() && batch.logits_mode == LogitsMode::kAllRows) {
    if (absl::Status s = AllRowLogits(n, out); !s.ok()) return s;
  }
  if (batch.logits_mode == LogitsMode::kNone) out->logits.clear();
  if (!check.status().ok()) return check.status();

  out->tokens.assign(batch.seqs.size(), -1);
  for (size_t s = 0; s < batch.seqs.size(); ++s) {
    const StepSequence& seq = batch.seqs[s];
    if (!seq.sample) continue;
    out->tokens[s] = seq.forced_token >= 0 ? seq.forced_token
                                           : tokens_host_.as<int32_t>()[plan.seq_logit_row[s]];
  }
  return absl::OkStatus();
}

}  // namespace

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(std::shared_ptr<const Model> model,
                                                          const CudaBackendOptions& options) {
  if (model == nullptr) return absl::InvalidArgumentError("CreateCudaBackend: no model");
  auto backend = std::make_unique<CudaBackend>(std::move(model), options);
  if (absl::Status s = backend->Init(); !s.ok()) return s;
  return backend;
}

CudaBackendStats GetCudaBackendStats(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  return cuda != nullptr ? cuda->stats() : CudaBackendStats{};
}

}  // namespace spanserve
