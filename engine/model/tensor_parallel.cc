#include "engine/model/tensor_parallel.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace spanserve {

absl::StatusOr<TensorParallelPlan> PlanTensorParallel(const ModelConfig& c, int32_t size) {
  if (size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor_parallel_size ", size, " must be at least 1"));
  }
  if (c.num_heads <= 0 || c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_heads ", c.num_heads,
                                                   " is not a positive multiple of num_kv_heads ",
                                                   c.num_kv_heads));
  }
  if (c.num_heads % size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor_parallel_size ", size,
                                                   " does not divide num_heads ", c.num_heads));
  }
  if (size <= c.num_kv_heads ? c.num_kv_heads % size != 0 : size % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor_parallel_size ", size, " and num_kv_heads ", c.num_kv_heads,
        ": one must divide the other (KV heads split, or replicated when there are fewer)"));
  }
  if (c.intermediate_size <= 0 || c.intermediate_size % size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor_parallel_size ", size, " does not divide intermediate_size ", c.intermediate_size));
  }
  TensorParallelPlan plan;
  plan.size = size;
  plan.kv_replicas = size > c.num_kv_heads ? size / c.num_kv_heads : 1;
  plan.group = c.num_heads / c.num_kv_heads;
  const int32_t heads = c.num_heads / size, inter = c.intermediate_size / size;
  const int32_t kv_heads = size > c.num_kv_heads ? 1 : c.num_kv_heads / size;
  for (int32_t r = 0; r < size; ++r) {
    plan.ranks.push_back({.rank = r,
                          .head_begin = r * heads,
                          .num_heads = heads,
                          .kv_head_begin = r / plan.kv_replicas * kv_heads,
                          .num_kv_heads = kv_heads,
                          .inter_begin = r * inter,
                          .inter_size = inter,
                          .head_dim = c.head_dim});
  }
  return plan;
}

namespace {

absl::Status CheckRange(const TensorView& tensor, int64_t extent, IndexRange range,
                        const char* what) {
  if (tensor.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("weight '", tensor.name, "' has no data"));
  }
  if (range.begin < 0 || range.begin > range.end || range.end > extent) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " [", range.begin, ", ", range.end, ") are outside weight '", tensor.name,
        "' of shape [", absl::StrJoin(tensor.shape, ","), "]"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TensorView> RowShard(const TensorView& tensor, IndexRange rows) {
  if (tensor.shape.empty() || tensor.shape.size() > 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight '", tensor.name, "' is not a vector or a matrix"));
  }
  if (absl::Status s = CheckRange(tensor, tensor.shape[0], rows, "rows"); !s.ok()) return s;
  const int64_t row_bytes = tensor.numel() / tensor.shape[0] * DTypeSize(tensor.dtype);
  TensorView shard = tensor;
  shard.shape[0] = rows.size();
  shard.data = static_cast<const char*>(tensor.data) + rows.begin * row_bytes;
  return shard;
}

absl::StatusOr<OwnedTensor> ColumnShard(const TensorView& tensor, IndexRange cols) {
  if (tensor.shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("weight '", tensor.name, "' is not a matrix"));
  }
  if (absl::Status s = CheckRange(tensor, tensor.shape[1], cols, "columns"); !s.ok()) return s;
  if (cols.begin == 0 && cols.end == tensor.shape[1]) return OwnedTensor{tensor, nullptr};
  const int64_t rows = tensor.shape[0], elem = DTypeSize(tensor.dtype);
  const int64_t src_stride = tensor.shape[1] * elem, dst_stride = cols.size() * elem;
  std::shared_ptr<char[]> bytes(new char[rows * dst_stride]);
  const char* src = static_cast<const char*>(tensor.data) + cols.begin * elem;
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(bytes.get() + r * dst_stride, src + r * src_stride, dst_stride);
  }
  OwnedTensor shard{tensor, bytes};
  shard.view.shape[1] = cols.size();
  shard.view.data = bytes.get();
  return shard;
}

void AllReduceSum(std::span<float* const> buffers, int64_t n) {
  if (buffers.size() < 2) return;
  float* sum = buffers[0];
  for (size_t r = 1; r < buffers.size(); ++r) {
    for (int64_t i = 0; i < n; ++i) sum[i] += buffers[r][i];
  }
  for (size_t r = 1; r < buffers.size(); ++r) std::memcpy(buffers[r], sum, sizeof(float) * n);
}

}  // namespace spanserve
