// Sampling on the GPU, one CTA of 1024 threads per logits row, so that only token ids go back
// to the host. Greedy is one argmax. Otherwise the kept set is the CPU sampler's: the top_k
// largest logits (ties by lower id), then the smallest prefix of them, in order of logit, whose
// softmax mass reaches top_p. Both cuts are found without sorting: a bitwise search for the
// threshold on an order-preserving integer key of the logit (by count for top-k, by mass for
// top-p), then the ties at the threshold taken in id order through a prefix scan. The draw
// walks the kept tokens in id order with CounterUniform(seed, index). All sums run in a fixed
// order, so a seed gives the same token on every run.
#include <cfloat>
#include <climits>

#include "kernels/common.cuh"
#include "kernels/kernels.h"
#include "kernels/sample_uniform.h"

namespace spanserve::gpu {
namespace {

constexpr int kSampleThreads = 1024;
constexpr int kWarps = kSampleThreads / 32;
constexpr unsigned kFull = 0xffffffffu;

// Monotone in the float's value: a < b as floats iff OrderKey(a) < OrderKey(b) (NaN aside).
__device__ __forceinline__ uint32_t OrderKey(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct Plus {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};

// The reduction over the CTA, returned to every thread, in a fixed order.
template <typename T, typename Op>
__device__ T BlockAllReduce(T v, T identity, Op op) {
  __shared__ T warp_vals[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = op(v, __shfl_xor_sync(kFull, v, o));
  __syncthreads();  // warp_vals may still be read by a previous call
  if (lane == 0) warp_vals[warp] = v;
  __syncthreads();
  v = lane < kWarps ? warp_vals[lane] : identity;
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = op(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// Exclusive prefix sum in thread order. A thread's exclusive sum equals its predecessor's
// *inclusive bit for bit, and *total equals the last thread's *inclusive, so a running offset
// carried across tiles stays consistent.
template <typename T>
__device__ T BlockExclusiveSum(T v, T* inclusive, T* total) {
  __shared__ T warp_sums[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  T incl = v;
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const T n = __shfl_up_sync(kFull, incl, o);
    if (lane >= o) incl += n;
  }
  const T before_in_warp = __shfl_up_sync(kFull, incl, 1);
  __syncthreads();
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  T prefix = 0;
  for (int w = 0; w < warp; ++w) prefix += warp_sums[w];
  T sum = prefix;
  for (int w = warp; w < kWarps; ++w) sum += warp_sums[w];
  *inclusive = prefix + incl;
  *total = sum;
  return lane == 0 ? prefix : prefix + before_in_warp;
}

struct Candidate {
  float value;
  int32_t index;
};

// The first maximum (ties to the lower id), like the CPU sampler's Argmax.
__device__ Candidate BlockArgMax(Candidate c) {
  __shared__ Candidate warp_best[kWarps];
  auto better = [](Candidate a, Candidate b) {
    return (b.value > a.value || (b.value == a.value && b.index < a.index)) ? b : a;
  };
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    c = better(c, {__shfl_xor_sync(kFull, c.value, o), __shfl_xor_sync(kFull, c.index, o)});
  }
  if (lane == 0) warp_best[warp] = c;
  __syncthreads();
  c = warp_best[lane];
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    c = better(c, {__shfl_xor_sync(kFull, c.value, o), __shfl_xor_sync(kFull, c.index, o)});
  }
  return c;
}

// The largest key c with measure(tokens whose key >= c) >= target, measure(c) being the sum
// over this thread's ids of weight(id) for key(id) >= c (monotone in c).
template <typename T, typename Weight>
__device__ uint32_t ThresholdKey(const float* x, int32_t vocab, T target, Weight weight) {
  uint32_t prefix = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t candidate = prefix | (1u << bit);
    T measure = 0;
    for (int id = threadIdx.x; id < vocab; id += kSampleThreads) {
      if (OrderKey(x[id]) >= candidate) measure += weight(id);
    }
    if (BlockAllReduce(measure, T(0), Plus()) >= target) prefix = candidate;
  }
  return prefix;
}

__global__ void __launch_bounds__(kSampleThreads)
    SampleKernel(const float* logits, int32_t vocab, const SampleEntry* params, float* probs,
                 int32_t* tokens) {
  WaitThenAllowDependents();
  const int64_t row = blockIdx.x;
  const SampleEntry p = params[row];
  if (!p.active) {
    if (threadIdx.x == 0) tokens[row] = -1;
    return;
  }
  const float* x = logits + row * vocab;
  float* prob = probs + row * vocab;
  Candidate best{kNegInf, INT32_MAX};
  for (int id = threadIdx.x; id < vocab; id += kSampleThreads) {
    if (x[id] > best.value || best.index == INT32_MAX) best = {x[id], id};
  }
  best = BlockArgMax(best);
  if (p.temperature <= 0.0f || p.top_k == 1) {
    if (threadIdx.x == 0) tokens[row] = best.index;
    return;
  }

  // Top-k: keep keys above the k-th largest, and the first (by id) of the ties at it.
  const bool top_k = p.top_k > 0 && p.top_k < vocab;
  uint32_t k_cut = 0;
  int32_t k_ties = 0;
  if (top_k) {
    k_cut = ThresholdKey(x, vocab, p.top_k, [](int) { return 1; });
    int32_t above = 0;
    for (int id = threadIdx.x; id < vocab; id += kSampleThreads) above += OrderKey(x[id]) > k_cut;
    k_ties = p.top_k - BlockAllReduce(above, 0, Plus());
  }
  // Probabilities at the temperature of the kept tokens (0 for the others), in id tiles.
  const double max_logit = best.value;
  int32_t ties_before = 0;
  for (int base = 0; base < vocab; base += kSampleThreads) {
    const int id = base + threadIdx.x;
    const bool in = id < vocab;
    const float v = in ? x[id] : 0.0f;
    bool kept = in;
    if (top_k) {
      const uint32_t key = OrderKey(v);
      int32_t incl, tile_ties;
      const int32_t excl = BlockExclusiveSum<int32_t>(in && key == k_cut, &incl, &tile_ties);
      kept = in && (key > k_cut || (key == k_cut && ties_before + excl < k_ties));
      ties_before += tile_ties;
    }
    if (in) prob[id] = kept ? static_cast<float>(exp((v - max_logit) / p.temperature)) : 0.0f;
  }

  // Top-p: the smallest prefix (by logit, ties by id) whose mass reaches top_p of the total.
  if (p.top_p < 1.0f) {
    double mine = 0;
    for (int id = threadIdx.x; id < vocab; id += kSampleThreads) mine += prob[id];
    const double total = BlockAllReduce(mine, 0.0, Plus());
    const double target = fmax(static_cast<double>(p.top_p) * total, DBL_MIN);
    const uint32_t p_cut = ThresholdKey(x, vocab, target, [&](int id) { return double{prob[id]}; });
    double above = 0;
    for (int id = threadIdx.x; id < vocab; id += kSampleThreads) {
      if (OrderKey(x[id]) > p_cut) above += prob[id];
    }
    const double mass_above = BlockAllReduce(above, 0.0, Plus());
    double ties_mass_before = 0;
    for (int base = 0; base < vocab; base += kSampleThreads) {
      const int id = base + threadIdx.x;
      const bool in = id < vocab;
      const float pr = in ? prob[id] : 0.0f;
      const uint32_t key = in ? OrderKey(x[id]) : 0;
      const bool tie = key == p_cut && pr > 0.0f;
      double incl, tile_mass;
      const double excl = BlockExclusiveSum<double>(tie ? pr : 0.0, &incl, &tile_mass);
      const bool keep = key > p_cut || (tie && mass_above + (ties_mass_before + excl) < target);
      if (in && !keep) prob[id] = 0.0f;
      ties_mass_before += tile_mass;
    }
  }

  // The draw: the first kept token (in id order) whose cumulative mass passes u * kept mass.
  __shared__ int32_t chosen;
  double mine = 0;
  int32_t last_kept = -1;
  for (int id = threadIdx.x; id < vocab; id += kSampleThreads) {
    mine += prob[id];
    if (prob[id] > 0.0f) last_kept = id;
  }
  const double kept_total = BlockAllReduce(mine, 0.0, Plus());
  last_kept = BlockAllReduce(last_kept, -1, Max());
  const double target = CounterUniform(p.seed, p.index) * kept_total;
  if (threadIdx.x == 0) chosen = -1;
  double before = 0;
  for (int base = 0; base < vocab; base += kSampleThreads) {
    const int id = base + threadIdx.x;
    const float pr = id < vocab ? prob[id] : 0.0f;
    double incl, tile_total;
    const double excl = BlockExclusiveSum<double>(pr, &incl, &tile_total);  // syncs the CTA
    if (pr > 0.0f && before + excl <= target && target < before + incl) chosen = id;
    before += tile_total;
  }
  __syncthreads();
  if (threadIdx.x == 0) tokens[row] = chosen >= 0 ? chosen : last_kept;
}

}  // namespace

cudaError_t LaunchSample(const float* logits, int32_t rows, int32_t vocab,
                         const SampleEntry* params, float* probs, int32_t* tokens,
                         cudaStream_t stream, bool early_launch) {
  if (rows == 0) return cudaSuccess;
  return LaunchMaybeEarly(early_launch, SampleKernel, rows, kSampleThreads, 0, stream, logits,
                          vocab, params, probs, tokens);
}

}  // namespace spanserve::gpu
