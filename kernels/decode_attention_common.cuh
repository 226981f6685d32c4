// What the two decode attention kernels (decode_attention.cu: CUDA cores; decode_attention_tc.cu:
// tensor cores) share: the chunk entries, and the end of a CTA, which
// combines its partial softmaxes and writes the output, or the split's partials and, for the
// last split of a (row, KV head) to finish, the merge of all splits.
#pragma once

#include <algorithm>

#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace spanserve::gpu {

constexpr int kDecodeThreads = 128;
constexpr int kDecodeWarps = kDecodeThreads / 32;
// Splits merged with this many loads in flight: a load behind a branch on the split's weight
// would wait for the one before it (64 splits cost 64 memory latencies, measured).
constexpr int kMergeBatch = 16;
static_assert(kMaxSplits <= 64, "a warp reads the splits' lse two a lane");

__device__ __forceinline__ int ChunkBegin(const ChunkEntry& e) { return e.range & 0xffff; }
__device__ __forceinline__ int ChunkEnd(const ChunkEntry& e) { return e.range >> 16; }

// A warp's chunk entries c_begin + offset + stride * i, i = 0, 1, ..., of one split, read 32
// at a time (one a lane) a batch ahead of their use: a pass that read its own entries waited a
// full memory latency before it could issue its copies (ncu, tensor cores at LLaMA-3-8B batch
// 16: 60% of the loop's stall samples). The first ones come from the split's head, which the
// CTA reads at its start with c_begin and c_end: the first copies wait one latency, not two.
// Get(i) is called by every lane of the warp, with i / 32 the same across the warp and never
// decreasing; entries at or past c_end read as empty. Not `enabled`: nothing is read.
class ChunkPrefetch {
 public:
  __device__ ChunkPrefetch(const ChunkEntry* chunks, const SplitHead* head, int c_begin, int c_end,
                           int offset, int stride, bool enabled)
      : chunks_(chunks), first_(c_begin + offset), stride_(stride), end_(enabled ? c_end : 0),
        head_count_(enabled ? HeadCount(offset, stride) : 0),
        head_(Lane() < head_count_ ? head->first[offset + stride * Lane()] : ChunkEntry{0, 0}),
        current_(Load(0)), next_(Load(1)) {}

  __device__ __forceinline__ ChunkEntry Get(int i) {
    if (i < head_count_) return Shuffle(head_, i);
    while (i / 32 > batch_) {
      current_ = next_;
      ++batch_;
      next_ = Load(batch_ + 1);
    }
    return Shuffle(current_, i % 32);
  }

 private:
  // Leading entries i that the head holds (offset + stride * i < kSplitHeadEntries).
  static __device__ __forceinline__ int HeadCount(int offset, int stride) {
    return offset < kSplitHeadEntries ? min(32, (kSplitHeadEntries - offset + stride - 1) / stride) : 0;
  }
  static __device__ __forceinline__ int Lane() { return static_cast<int>(threadIdx.x % 32); }
  static __device__ __forceinline__ ChunkEntry Shuffle(const ChunkEntry& e, int lane) {
    return {__shfl_sync(0xffffffffu, e.block, lane), __shfl_sync(0xffffffffu, e.range, lane)};
  }
  __device__ __forceinline__ ChunkEntry Load(int batch) const {
    const int c = first_ + stride_ * (32 * batch + Lane());
    return c < end_ ? chunks_[c] : ChunkEntry{0, 0};
  }

  const ChunkEntry* chunks_;
  int first_, stride_, end_, head_count_, batch_ = 0;
  ChunkEntry head_, current_, next_;
};


// The start of a CTA's copy pipeline: its first kPending passes issued (issue(stage), one
// commit group each; in_flight[s] gets what issue returns) and the wait for the kernel ahead,
// after which load_q runs: q and the cache are that kernel's output (RoPE and the KV write), the
// partials and counters a previous launch's. The copies go out before the wait where the split's
// first passes read no block the step writes (SplitHead::early_entries), so that they land
// while the kernel ahead finishes (batch 1 up to 10% faster, LLaMA-3-8B batch 16 8k 0.9%).
template <int kPending, typename Issue, typename LoadQ>
__device__ __forceinline__ void StartPipeline(int early_entries, int chunks_per_pass, Issue& issue,
                                              LoadQ load_q, uint32_t (&in_flight)[kPending]) {
  const bool copies_before_wait = kPending * chunks_per_pass <= early_entries;
  if (copies_before_wait) {
#pragma unroll
    for (int s = 0; s < kPending; ++s) in_flight[s] = issue(s);
  }
  WaitForPreviousGrid();
  load_q();
  if (!copies_before_wait) {
#pragma unroll
    for (int s = 0; s < kPending; ++s) in_flight[s] = issue(s);
  }
}

// sum_s weight(s) * o[s * stride .. + 4) over s < S, kMergeBatch loads in flight; splits of
// weight 0 (empty ones) are not read. weight(s) is called by every lane of the warp for the
// same s (it may shuffle).
template <typename WeightOf>
__device__ __forceinline__ float4 SumSplits(const float* o, int64_t stride, int S, bool has_dims,
                                            WeightOf weight) {
  float4 sum = make_float4(0, 0, 0, 0);
  for (int s0 = 0; s0 < S; s0 += kMergeBatch) {
    float w[kMergeBatch];
    float4 p[kMergeBatch];
#pragma unroll
    for (int i = 0; i < kMergeBatch; ++i) {
      const int s = s0 + i;
      w[i] = weight(s < S ? s : 0);
      if (s < S && w[i] != 0.0f && has_dims) {
        p[i] = __ldcg(reinterpret_cast<const float4*>(o + s * stride));
      } else {
        w[i] = 0.0f;
        p[i] = make_float4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int i = 0; i < kMergeBatch; ++i) {
      sum.x = fmaf(w[i], p[i].x, sum.x);
      sum.y = fmaf(w[i], p[i].y, sum.y);
      sum.z = fmaf(w[i], p[i].z, sum.z);
      sum.w = fmaf(w[i], p[i].w, sum.w);
    }
  }
  return sum;
}

// Four dims of one head, scaled by inv, as bf16 at `out`.
__device__ __forceinline__ void StoreBf16x4(uint16_t* out, float4 o, float inv) {
  const uint32_t lo = FloatToBf16Bits(o.x * inv) | uint32_t{FloatToBf16Bits(o.y * inv)} << 16;
  const uint32_t hi = FloatToBf16Bits(o.z * inv) | uint32_t{FloatToBf16Bits(o.w * inv)} << 16;
  *reinterpret_cast<uint2*>(out) = make_uint2(lo, hi);
}

// The splits' weights 2^(lse_s - max) of one head, a warp's work: lanes read two lse each.
// Returns the weight of split `lane` (lo) and `lane + 32` (hi); *sum is the warp's total.
__device__ __forceinline__ void SplitWeights(const float* lse, int64_t stride, int S, int lane,
                                             float* w_lo, float* w_hi, float* sum) {
  const float lse_lo = lane < S ? __ldcg(lse + lane * stride) : kNegInf;
  const float lse_hi = lane + 32 < S ? __ldcg(lse + (lane + 32) * stride) : kNegInf;
  const float mx = WarpMax(fmaxf(lse_lo, lse_hi));
  // An empty split (lse -inf) weighs 0.
  *w_lo = lse_lo == kNegInf ? 0.0f : exp2f(lse_lo - mx);
  *w_hi = lse_hi == kNegInf ? 0.0f : exp2f(lse_hi - mx);
  *sum = WarpSum<32>(*w_lo + *w_hi);
}

// The merge of all splits of the G heads of one (row, KV head), by the CTA that finished last.
// smem: at least G x (kMaxSplits + 1) floats.
template <int HD, int G>
__device__ void MergeSplitsInCta(const DecodeAttentionArgs& a, float* smem, int row, int kv_head,
                                 int row_splits, int64_t q_row) {
  const int S = a.num_splits, H = a.num_heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* sm_w = smem;                       // [G][kMaxSplits]
  float* sm_inv = smem + G * kMaxSplits;    // [G]
  for (int g = warp; g < G; g += kDecodeWarps) {
    float w_lo, w_hi, sum;
    SplitWeights(a.partial_lse + int64_t{row} * S * H + kv_head * G + g, H, row_splits, lane,
                 &w_lo, &w_hi, &sum);
    sm_w[g * kMaxSplits + lane] = w_lo;
    sm_w[g * kMaxSplits + lane + 32] = w_hi;
    if (lane == 0) sm_inv[g] = sum > 0.0f ? 1.0f / sum : 0.0f;  // no token: zeros
  }
  __syncthreads();
  constexpr int kQuads = HD / 4;
  for (int i = threadIdx.x; i < G * kQuads; i += kDecodeThreads) {
    const int g = i / kQuads, d = (i % kQuads) * 4, head = kv_head * G + g;
    const float* o = a.partial_o + (int64_t{row} * S * H + head) * HD + d;
    const float4 sum = SumSplits(o, int64_t{H} * HD, row_splits, true,
                                 [&](int s) { return sm_w[g * kMaxSplits + s]; });
    StoreBf16x4(a.out + (q_row * H + head) * HD + d, sum, sm_inv[g]);
  }
}

// The end of a decode CTA: NG partial softmaxes of its G heads, in shared memory as
// sm_acc [NG][G][HD], sm_m [NG][G], sm_l [NG][G] (log2 domain), combined into the CTA's result.
// A row of one split (row_splits <= 1): written to `out`. Several: written as the split's
// partials; with counters, the last of the row_splits CTAs of the (row, KV head) to finish
// merges them.
template <int HD, int G, int NG>
__device__ void FinishDecodeCta(const DecodeAttentionArgs& a, float* smem, int row, int kv_head,
                                int split, int row_splits, int64_t q_row) {
  const float* sm_acc = smem;
  const float* sm_m = sm_acc + NG * G * HD;
  const float* sm_l = sm_m + NG * G;
  for (int i = threadIdx.x; i < G * HD; i += kDecodeThreads) {
    const int g = i / HD, d = i % HD;
    float mx = kNegInf;
#pragma unroll
    for (int grp = 0; grp < NG; ++grp) mx = fmaxf(mx, sm_m[grp * G + g]);
    float sum = 0.0f, o = 0.0f;
    if (mx != kNegInf) {
#pragma unroll
      for (int grp = 0; grp < NG; ++grp) {
        const float w = exp2f(sm_m[grp * G + g] - mx);
        sum = fmaf(sm_l[grp * G + g], w, sum);
        o = fmaf(sm_acc[(grp * G + g) * HD + d], w, o);
      }
    }
    const float value = sum > 0.0f ? o / sum : 0.0f;  // no token: zeros, like the CPU backend
    const int head = kv_head * G + g;
    if (row_splits <= 1) {
      a.out[(q_row * a.num_heads + head) * HD + d] = FloatToBf16Bits(value);
    } else {
      const int64_t part = (int64_t{row} * a.num_splits + split) * a.num_heads + head;
      a.partial_o[part * HD + d] = value;
      if (d == 0) a.partial_lse[part] = sum > 0.0f ? mx + log2f(sum) : kNegInf;
    }
  }
  if (row_splits <= 1 || a.split_counters == nullptr) return;
  // Count this split in; the partials are visible device-wide before the count is. The flag
  // sits past what MergeSplitsInCta uses of the dynamic shared memory (a static __shared__
  // would add to the 48 KiB the CUDA-core kernel takes, over the default limit).
  int* is_last = reinterpret_cast<int*>(smem + G * (kMaxSplits + 1));
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t* counter = a.split_counters + int64_t{row} * a.num_kv_heads + kv_head;
    *is_last = atomicAdd(counter, 1) == row_splits - 1;
    if (*is_last) *counter = 0;  // every split has counted: ready for the next launch
  }
  __syncthreads();
  if (!*is_last) return;
  __threadfence();
  MergeSplitsInCta<HD, G>(a, smem, row, kv_head, row_splits, q_row);
}

// The (row, KV head, split) of this CTA: grid (splits, KV heads, rows), or split-major
// (KV heads, rows, splits).
struct DecodeItem {
  int row, kv_head, split;
};
__device__ __forceinline__ DecodeItem DecodeItemOf(const DecodeAttentionArgs& a) {
  const int x = static_cast<int>(blockIdx.x), y = static_cast<int>(blockIdx.y),
            z = static_cast<int>(blockIdx.z);
  return a.split_major ? DecodeItem{y, x, z} : DecodeItem{z, y, x};
}

// The current device's SmLimits (launch_plan.h), queried once a device.
const SmLimits& CurrentSmLimits();

// Launches kKernel on grid (splits, KV heads, rows), or split-major (KV heads, rows, splits).
// With a.early_launch, as a programmatic dependent launch: its CTAs start, read the step's
// plan and issue their early copies while the kernel before it finishes, and wait for it
// before anything else (StartPipeline).
template <auto kKernel>
cudaError_t LaunchDecodeKernel(int kernel_smem, const DecodeAttentionArgs& a, cudaStream_t stream) {
  static const cudaError_t configured = [&] {
    cudaError_t e = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         std::max(kernel_smem, CurrentSmLimits().max_smem_per_cta));
    if (e == cudaSuccess) {
      e = cudaFuncSetAttribute(kKernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                               cudaSharedmemCarveoutMaxShared);
    }
    return e;
  }();
  if (configured != cudaSuccess) return configured;
  const dim3 grid = a.split_major ? dim3(a.num_kv_heads, a.num_rows, a.num_splits)
                                  : dim3(a.num_splits, a.num_kv_heads, a.num_rows);
  // The CTAs placed at once: all of an early launch's; a split-major launch's split 0.
  const int64_t placed = int64_t{a.split_major ? 1 : a.num_splits} * a.num_kv_heads * a.num_rows;
  const int smem = a.early_launch || a.split_major
                       ? EvenPlacementSmem(kernel_smem, placed, CurrentSmLimits())
                       : kernel_smem;
  return LaunchMaybeEarly(a.early_launch, kKernel, grid, dim3(kDecodeThreads), smem, stream, a);
}

// The tensor-core kernel's launcher (decode_attention_tc.cu), for groups of 1 to 8.
cudaError_t LaunchDecodeAttentionTc(const DecodeAttentionArgs& a, cudaStream_t stream);

}  // namespace spanserve::gpu
