// Block-sparse paged decode attention with split-KV (flash-decoding), on CUDA cores; the launch
// of both decode kernels (the tensor-core one is in decode_attention_tc.cu).
//
// A CTA takes one (row, KV head, split): all query heads of the KV head (the GQA group, so each
// KV byte is read once per step), and the chunks of its split, cut into pieces of at most
// PieceTokens(block_size) tokens (decode_geometry.h). Its 128 threads form token
// groups of head_dim / 8 threads; a thread holds 8 dimensions (one 16-byte piece) of a K or V
// row. A pass covers T = NG * U token slots over one chunk, or over T / block_size chunks when
// blocks are small (decode_geometry.h); slots outside a chunk's [begin, end) are neither read
// nor counted. Each thread copies its slots' K and V pieces into shared memory with cp.async,
// kStages - 1 passes ahead of the one it computes, and reads back only what it copied itself:
// the loop needs no CTA barrier, and the bytes in flight do not depend on registers. Each
// group keeps its own online softmax (fp32, log2 domain); the groups merge through shared
// memory at the end (FinishDecodeCta).
#include <map>
#include <mutex>

#include "kernels/decode_attention_common.cuh"
#include "kernels/decode_geometry.h"

namespace spanserve::gpu {
namespace {

constexpr int kMergeWarps = 4;
constexpr int kStages = 3;   // passes in shared memory: one computed, two in flight
constexpr int kUnroll = 4;   // token slots per token group and pass

// Shared memory of a decode CTA: kStages x (K, V) x T x head_dim bf16, where T x head_dim =
// threads x 8 x kUnroll for every head dim: 48 KiB, reused by the final merge of the groups.
constexpr int kDecodeSmemBytes = kStages * 2 * kDecodeThreads * 8 * kUnroll * sizeof(uint16_t);
static_assert(kDecodeSmemBytes == 48 * 1024);

template <int HD, int G>
__global__ void __launch_bounds__(kDecodeThreads, DecodeCtasPerSm(DecodeKernel::kCudaCores, HD, G))
    DecodeAttentionKernel(const DecodeAttentionArgs a) {
  constexpr int U = kUnroll;
  constexpr int LANES = HD / 8;               // threads per token row, 16 bytes each
  constexpr int NG = kDecodeThreads / LANES;  // token groups
  constexpr int T = NG * U;                   // token slots per pass
  constexpr int STAGE = T * HD;               // bf16 elements of K (or V) in one stage
  extern __shared__ __align__(16) uint16_t smem[];  // [kStages][K, V][T][HD]

  const auto [row, kv_head, split] = DecodeItemOf(a);
  const int lane = threadIdx.x % LANES, group = threadIdx.x / LANES;
  const SplitHead* head = a.split_heads + int64_t{row} * a.num_splits + split;
  const int c_begin = head->chunk_begin, c_end = head->chunk_end, row_splits = head->row_splits;
  const int early_entries = head->early_entries;
  const int64_t q_row = head->q_row;
  if (split >= max(row_splits, 1)) return;  // empty: the row's tokens are in its other splits

  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = kNegInf;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
  }

  // Where each of this thread's slots (j = u * NG + group) falls in a pass.
  const int B = a.block_size;
  const PassGeometry geometry = PassGeometry::For(PieceTokens(B), T);
  const int L = geometry.slots_per_chunk;
  int slot_chunk[U], slot_token[U];
  bool slot_used[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int j = u * NG + group;
    slot_chunk[u] = geometry.SlotChunk(j);
    slot_token[u] = geometry.SlotToken(j);
    slot_used[u] = geometry.SlotUsed(j);
  }
  const int64_t head_offset = int64_t{kv_head} * B * HD + lane * 8;
  const int64_t block_stride = int64_t{a.num_kv_heads} * B * HD;
  auto sub_passes = [&](int c) {
    const ChunkEntry e = a.chunks[c];
    return geometry.SubPasses(ChunkBegin(e), ChunkEnd(e));
  };

  // Blocks of 16 tokens or more: pass p reads chunk entries c_begin + p * P + slot chunk (P =
  // chunks_per_pass divides 32), prefetched (smaller blocks read theirs in the pass).
  const bool whole_pieces = L == kMaxPieceTokens;
  ChunkPrefetch prefetch(a.chunks, head, c_begin, c_end, 0, 1, whole_pieces);

  // Copies the pass at the issue cursor into `stage` and moves the cursor on; one commit group
  // per call (empty past the end). Returns the pass's valid slots as bits.
  int issue_c0 = c_begin, issue_sub = -1, passes = 0;
  geometry.NextPass(c_end, sub_passes, &issue_c0, &issue_sub);
  auto issue = [&](int stage) {
    uint32_t valid_bits = 0;
    if (issue_c0 < c_end) {
      uint16_t* k_stage = smem + stage * 2 * STAGE;
      // Every slot's chunk entry is read before the first copy is issued: a copy is a compiler
      // memory barrier, so reads between copies would each wait a full latency.
      int64_t offset[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int c = issue_c0 + slot_chunk[u];
        const ChunkEntry e = whole_pieces ? prefetch.Get(c - c_begin)
                             : slot_used[u] && c < c_end ? a.chunks[c]
                                                         : ChunkEntry{0, 0};
        const int t = ChunkBegin(e) + issue_sub * L + slot_token[u];
        offset[u] = slot_used[u] && c < c_end && t < ChunkEnd(e)
                        ? e.block * block_stride + head_offset + int64_t{t} * HD
                        : -1;
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const bool valid = offset[u] >= 0;
        const int64_t src = valid ? offset[u] : 0;
        const int slot = (u * NG + group) * HD + lane * 8;
        CopyAsync16(k_stage + slot, a.k_cache + src, valid);
        CopyAsync16(k_stage + STAGE + slot, a.v_cache + src, valid);
        valid_bits |= uint32_t{valid} << u;
      }
      ++passes;
      geometry.NextPass(c_end, sub_passes, &issue_c0, &issue_sub);
    }
    CopyAsyncCommit();
    return valid_bits;
  };

  // Everything above read the step's plan only.
  float q[G][8];
  const float q_scale = a.scale * kLog2e;  // scores in the log2 domain, for exp2f
  auto load_q = [&] {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int64_t offset = (q_row * a.num_heads + kv_head * G + g) * HD + lane * 8;
      Bf16x8ToFloat(*reinterpret_cast<const uint4*>(a.q + offset), q[g]);
#pragma unroll
      for (int e = 0; e < 8; ++e) q[g][e] *= q_scale;
    }
  };
  uint32_t in_flight[kStages - 1];
  StartPipeline(early_entries, geometry.chunks_per_pass, issue, load_q, in_flight);
  for (int p = 0; p < passes; ++p) {
    const uint32_t valid_bits = in_flight[0];
#pragma unroll
    for (int s = 0; s + 1 < kStages - 1; ++s) in_flight[s] = in_flight[s + 1];
    in_flight[kStages - 2] = issue((p + kStages - 1) % kStages);  // the stage computed last pass
    CopyAsyncWait<kStages - 1>();                                 // pass p has landed
    const uint16_t* k_stage = smem + (p % kStages) * 2 * STAGE;
    const uint16_t* v_stage = k_stage + STAGE;

    float s[U][G];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float k[8];
      Bf16x8ToFloat(*reinterpret_cast<const uint4*>(k_stage + (u * NG + group) * HD + lane * 8), k);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) dot = fmaf(q[g][e], k[e], dot);
        dot = WarpSum<LANES>(dot);
        s[u][g] = (valid_bits >> u) & 1 ? dot : kNegInf;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = fmaxf(mx, s[u][g]);
      if (mx == kNegInf) continue;  // no token yet
      const float correction = exp2f(m[g] - mx);
      l[g] *= correction;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] *= correction;
      m[g] = mx;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (!((valid_bits >> u) & 1)) continue;  // zero-filled: nothing to add
      float v[8];
      Bf16x8ToFloat(*reinterpret_cast<const uint4*>(v_stage + (u * NG + group) * HD + lane * 8), v);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float p = exp2f(s[u][g] - m[g]);
        l[g] += p;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(p, v[e], acc[g][e]);
      }
    }
  }
  CopyAsyncWait<0>();
  // The next kernel may launch once every CTA is here. Not at the start: then a launch's CTAs,
  // waiting beside running ones, let the one after them launch too, and they pile up (+8% at
  // LLaMA-3-8B batch 16 2k, launched back to back).
  AllowDependentLaunch();

  // Merge the token groups, in the shared memory the stages used.
  __syncthreads();
  float* sm_acc = reinterpret_cast<float*>(smem);  // [NG][G][HD]
  float* sm_m = sm_acc + NG * G * HD;              // [NG][G]
  float* sm_l = sm_m + NG * G;                     // [NG][G]
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane == 0) {
      sm_m[group * G + g] = m[g];
      sm_l[group * G + g] = l[g];
    }
    float4* dst = reinterpret_cast<float4*>(&sm_acc[(group * G + g) * HD + lane * 8]);
    dst[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
    dst[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
  }
  __syncthreads();
  FinishDecodeCta<HD, G, NG>(a, sm_acc, row, kv_head, split, row_splits, q_row);
}

// The split merge as a second kernel, for launches without split counters:
// out = sum_s 2^(lse_s - max) o_s / sum_s 2^(lse_s - max). One warp per (row, head), so that a
// step's merge is as wide as its rows x heads; lane i sums dims [4i, 4i + 4) over the splits.
__global__ void __launch_bounds__(kMergeWarps * 32) MergeSplitsKernel(const DecodeAttentionArgs a) {
  const int H = a.num_heads, HD = a.head_dim, S = a.num_splits;
  const int item = blockIdx.x * kMergeWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (item >= a.num_rows * H) return;  // whole warps leave
  const int row = item / H, head = item % H;
  const int used = a.split_heads[int64_t{row} * S].row_splits;
  if (used <= 1) return;  // the decode kernel wrote this row's output
  float w_lo, w_hi, sum;
  SplitWeights(a.partial_lse + int64_t{row} * S * H + head, H, used, lane, &w_lo, &w_hi, &sum);
  const bool has_dims = lane * 4 < HD;
  const float* o_split = a.partial_o + (int64_t{row} * S * H + head) * HD + lane * 4;
  const float4 o = SumSplits(o_split, int64_t{H} * HD, used, has_dims, [&](int s) {
    return __shfl_sync(0xffffffffu, s < 32 ? w_lo : w_hi, s % 32);
  });
  if (!has_dims) return;
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // no token: zeros, like the CPU backend
  const int64_t q_row = a.split_heads[int64_t{row} * S].q_row;
  StoreBf16x4(a.out + (q_row * H + head) * HD + lane * 4, o, inv);
}

template <int HD>
cudaError_t LaunchForHeadDim(const DecodeAttentionArgs& a, cudaStream_t stream) {
  switch (a.num_heads / a.num_kv_heads) {
    case 1: return LaunchDecodeKernel<DecodeAttentionKernel<HD, 1>>(kDecodeSmemBytes, a, stream);
    case 2: return LaunchDecodeKernel<DecodeAttentionKernel<HD, 2>>(kDecodeSmemBytes, a, stream);
    case 4: return LaunchDecodeKernel<DecodeAttentionKernel<HD, 4>>(kDecodeSmemBytes, a, stream);
    case 8: return LaunchDecodeKernel<DecodeAttentionKernel<HD, 8>>(kDecodeSmemBytes, a, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

const SmLimits& CurrentSmLimits() {
  static std::mutex mu;
  static std::map<int, SmLimits> by_device;
  int device = 0;
  cudaGetDevice(&device);
  std::lock_guard<std::mutex> lock(mu);
  auto [it, added] = by_device.try_emplace(device);
  if (added) {
    SmLimits& l = it->second;
    cudaDeviceGetAttribute(&l.sms, cudaDevAttrMultiProcessorCount, device);
    cudaDeviceGetAttribute(&l.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
    cudaDeviceGetAttribute(&l.reserved_smem_per_cta, cudaDevAttrReservedSharedMemoryPerBlock, device);
    cudaDeviceGetAttribute(&l.max_smem_per_cta, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  return it->second;
}

bool AttentionSupports(int32_t head_dim, int32_t group_size) {
  return (head_dim == 64 || head_dim == 128) &&
         (group_size == 1 || group_size == 2 || group_size == 4 || group_size == 8);
}

cudaError_t LaunchDecodeAttention(const DecodeAttentionArgs& a, cudaStream_t stream) {
  if (a.num_rows == 0) return cudaSuccess;
  if (a.num_kv_heads <= 0 || a.num_heads % a.num_kv_heads != 0 ||
      !AttentionSupports(a.head_dim, a.num_heads / a.num_kv_heads) || a.num_splits < 1 ||
      a.num_splits > kMaxSplits || a.block_size < 1 || a.block_size > 256 || a.num_rows > 65535) {
    return cudaErrorInvalidValue;
  }
  const DecodeKernel kernel = ResolveDecodeKernel(a.kernel, a.num_heads / a.num_kv_heads);
  const cudaError_t err = kernel == DecodeKernel::kTensorCores ? LaunchDecodeAttentionTc(a, stream)
                          : a.head_dim == 64                   ? LaunchForHeadDim<64>(a, stream)
                                                               : LaunchForHeadDim<128>(a, stream);
  if (err != cudaSuccess || a.num_splits == 1 || a.split_counters != nullptr) return err;
  const int64_t warps = int64_t{a.num_rows} * a.num_heads;
  MergeSplitsKernel<<<(warps + kMergeWarps - 1) / kMergeWarps, kMergeWarps * 32, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace spanserve::gpu
