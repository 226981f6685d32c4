// Megatron-style tensor parallelism: which part of each weight and of the KV cache a rank holds.
// A pure plan (no compute, no communication), shared by the CPU simulation (cpu_backend.cc with
// tensor_parallel_size > 1) and a multi-GPU backend.
//
// Per layer, rank r of N holds
//   attention: query heads [head_begin, head_begin + num_heads) and their KV heads; the rows of
//     wq, wk, wv (and their biases) for those heads (column-parallel) and the same columns of wo
//     (row-parallel): its wo product is a partial sum of the hidden state, summed over ranks;
//   MLP: intermediate features [inter_begin, inter_begin + inter_size): those rows of w_gate and
//     w_up (column-parallel) and columns of w_down (row-parallel), again a partial sum.
// Norms, the embedding and lm_head are replicated. Two all-reduces a layer, none elsewhere.
//
// KV heads: with N <= num_kv_heads each rank owns num_kv_heads / N of them (num_kv_heads % N ==
// 0). With N > num_kv_heads (N % num_kv_heads == 0) each KV head is replicated on
// N / num_kv_heads ranks, one KV head a rank (as vLLM does): a rank's query heads always belong
// to the KV heads it holds, so attention never crosses ranks.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model.h"

namespace spanserve {

// A half-open range of rows or columns.
struct IndexRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};

struct RankShard {
  int32_t rank = 0;
  int32_t head_begin = 0, num_heads = 0;        // query heads
  int32_t kv_head_begin = 0, num_kv_heads = 0;  // the KV heads those query heads read
  int32_t inter_begin = 0, inter_size = 0;      // MLP intermediate features
  int32_t head_dim = 0;

  // Rows of wq and bq; the same range is the columns of wo.
  IndexRange q_features() const { return Heads(head_begin, num_heads); }
  // Rows of wk, wv, bk and bv.
  IndexRange kv_features() const { return Heads(kv_head_begin, num_kv_heads); }
  // Rows of w_gate and w_up; columns of w_down.
  IndexRange inter_features() const { return {inter_begin, int64_t{inter_begin} + inter_size}; }
  // The rank's KV head (0-based, within its own) that its query head `local_head` reads.
  int32_t LocalKvHead(int32_t local_head, int32_t group) const {
    return (head_begin + local_head) / group - kv_head_begin;
  }

 private:
  IndexRange Heads(int32_t first, int32_t count) const {
    return {int64_t{first} * head_dim, (int64_t{first} + count) * head_dim};
  }
};

struct TensorParallelPlan {
  int32_t size = 1;
  int32_t kv_replicas = 1;  // ranks holding each KV head: N / num_kv_heads when N > num_kv_heads
  int32_t group = 1;        // query heads per KV head (GQA)
  std::vector<RankShard> ranks;
};

// INVALID_ARGUMENT naming the values when the model cannot be split N ways.
absl::StatusOr<TensorParallelPlan> PlanTensorParallel(const ModelConfig& config, int32_t size);

// A weight shard that owns its bytes: `view.data` is `storage`, the shard's bytes alone (or,
// for a shard that is the whole tensor, the original tensor's, and storage is null).
struct OwnedTensor {
  TensorView view;
  std::shared_ptr<const void> storage;
};

// Rows [rows.begin, rows.end) of a tensor (a matrix or a vector): a view into the same bytes, no
// copy. INVALID_ARGUMENT when the range is outside the tensor.
absl::StatusOr<TensorView> RowShard(const TensorView& tensor, IndexRange rows);

// Columns [cols.begin, cols.end) of a 2-D tensor, copied into a buffer of just the shard in the
// tensor's dtype (the whole width returns the tensor itself, uncopied).
absl::StatusOr<OwnedTensor> ColumnShard(const TensorView& tensor, IndexRange cols);

// The all-reduce of the simulated ranks: afterwards every buffer (one per rank, n floats each)
// holds their sum, added in rank order. One buffer: nothing to do. A multi-GPU backend puts
// ncclAllReduce (ncclSum, in place) here.
void AllReduceSum(std::span<float* const> buffers, int64_t n);

}  // namespace spanserve
