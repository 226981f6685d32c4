// Causal attention of prompt rows over the paged KV cache (CUDA cores, shared-memory tiles).
//
// A CTA takes one job (up to 64 / G consecutive rows of one sequence) and one KV head: its 64
// items are (row, query head of the group) pairs, 8 per warp, their Q kept in shared memory.
// It walks the sequence's tokens [0, max position of the job] in tiles of 32 through the block
// table; each tile of K and V is loaded once (16-byte loads) and used by all 64 items. Lane j
// scores token j of the tile, the warp keeps each item's online softmax (fp32, log2 domain), and
// lane j owns head_dim / 32 output dimensions in the P.V product.
#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace spanserve::gpu {
namespace {

constexpr int kPrefillThreads = 256;
constexpr int kPrefillWarps = kPrefillThreads / 32;
constexpr int kItems = 64;      // (row, head) pairs per CTA
constexpr int kTileTokens = 32;  // one token per lane
constexpr float kLog2e = 1.4426950408889634f;

template <int HD, int G>
__global__ void __launch_bounds__(kPrefillThreads) PrefillAttentionKernel(const PrefillAttentionArgs a) {
  constexpr int IPW = kItems / kPrefillWarps;  // items per warp
  constexpr int DPL = HD / 32;                 // output dims per lane
  constexpr int PIECES = HD / 8;               // 16-byte pieces per row
  constexpr int KROW = HD + 8;                 // padded K rows: conflict-free 16-byte reads
  __shared__ __align__(16) uint16_t sq[kItems][HD];
  __shared__ __align__(16) uint16_t sk[kTileTokens][KROW];
  __shared__ __align__(16) uint16_t sv[kTileTokens][HD];

  const PrefillJob job = a.jobs[blockIdx.x];
  const int kv_head = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int B = a.block_size;

  // Item i is (row i / G of the job, query head kv_head * G + i % G).
  for (int i = threadIdx.x; i < kItems * PIECES; i += kPrefillThreads) {
    const int item = i / PIECES, piece = i % PIECES, r = item / G;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (r < job.num_rows) {
      const int64_t head = int64_t{job.row_begin + r} * a.num_heads + kv_head * G + item % G;
      value = *reinterpret_cast<const uint4*>(a.q + head * HD + piece * 8);
    }
    *reinterpret_cast<uint4*>(&sq[item][piece * 8]) = value;
  }
  int pos[IPW];
  float m[IPW], l[IPW], acc[IPW][DPL];
#pragma unroll
  for (int k = 0; k < IPW; ++k) {
    const int r = (warp * IPW + k) / G;
    pos[k] = r < job.num_rows ? a.positions[job.row_begin + r] : -1;  // -1: no row, no token
    m[k] = kNegInf;
    l[k] = 0.0f;
#pragma unroll
    for (int e = 0; e < DPL; ++e) acc[k][e] = 0.0f;
  }
  const float q_scale = a.scale * kLog2e;
  const int64_t block_stride = int64_t{a.num_kv_heads} * B * HD;
  const int64_t head_offset = int64_t{kv_head} * B * HD;
  const int32_t* table = a.block_tables + job.table_begin;

  for (int t0 = 0; t0 <= job.max_position; t0 += kTileTokens) {
    __syncthreads();  // the previous tile is consumed
    for (int i = threadIdx.x; i < kTileTokens * PIECES; i += kPrefillThreads) {
      const int j = i / PIECES, piece = i % PIECES, t = t0 + j;
      uint4 k_raw = make_uint4(0, 0, 0, 0), v_raw = k_raw;
      if (t <= job.max_position) {
        const int64_t offset =
            table[t / B] * block_stride + head_offset + int64_t{t % B} * HD + piece * 8;
        k_raw = LoadStreaming(a.k_cache + offset);
        v_raw = LoadStreaming(a.v_cache + offset);
      }
      *reinterpret_cast<uint4*>(&sk[j][piece * 8]) = k_raw;
      *reinterpret_cast<uint4*>(&sv[j][piece * 8]) = v_raw;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < IPW; ++k) {
      if (t0 > pos[k]) continue;  // the whole tile is after this row (warp-uniform)
      const int item = warp * IPW + k;
      float dot = 0.0f;
#pragma unroll
      for (int d = 0; d < HD; d += 8) {
        float qf[8], kf[8];
        Bf16x8ToFloat(*reinterpret_cast<const uint4*>(&sq[item][d]), qf);
        Bf16x8ToFloat(*reinterpret_cast<const uint4*>(&sk[lane][d]), kf);
#pragma unroll
        for (int e = 0; e < 8; ++e) dot = fmaf(qf[e], kf[e], dot);
      }
      const float s = t0 + lane <= pos[k] ? dot * q_scale : kNegInf;
      const float mx = fmaxf(m[k], WarpMax(s));  // finite: token t0 <= pos[k] is in the tile
      const float correction = exp2f(m[k] - mx);
      const float p = exp2f(s - mx);
      l[k] = l[k] * correction + WarpSum<32>(p);
#pragma unroll
      for (int e = 0; e < DPL; ++e) acc[k][e] *= correction;
#pragma unroll 8
      for (int j = 0; j < kTileTokens; ++j) {
        const float pj = __shfl_sync(0xffffffffu, p, j);
        const uint32_t* words = reinterpret_cast<const uint32_t*>(&sv[j][lane * DPL]);
#pragma unroll
        for (int e = 0; e < DPL / 2; ++e) {
          const uint32_t w = words[e];
          acc[k][2 * e] = fmaf(pj, __uint_as_float(w << 16), acc[k][2 * e]);
          acc[k][2 * e + 1] = fmaf(pj, __uint_as_float(w & 0xffff0000u), acc[k][2 * e + 1]);
        }
      }
      m[k] = mx;
    }
  }

#pragma unroll
  for (int k = 0; k < IPW; ++k) {
    const int item = warp * IPW + k, r = item / G;
    if (r >= job.num_rows) continue;
    const float inv = 1.0f / l[k];
    const int64_t head = int64_t{job.row_begin + r} * a.num_heads + kv_head * G + item % G;
#pragma unroll
    for (int e = 0; e < DPL; ++e) a.out[head * HD + lane * DPL + e] = FloatToBf16Bits(acc[k][e] * inv);
  }
}

template <int HD>
cudaError_t LaunchForHeadDim(const PrefillAttentionArgs& a, cudaStream_t stream) {
  const dim3 grid(a.num_jobs, a.num_kv_heads);
  switch (a.num_heads / a.num_kv_heads) {
    case 1: PrefillAttentionKernel<HD, 1><<<grid, kPrefillThreads, 0, stream>>>(a); break;
    case 2: PrefillAttentionKernel<HD, 2><<<grid, kPrefillThreads, 0, stream>>>(a); break;
    case 4: PrefillAttentionKernel<HD, 4><<<grid, kPrefillThreads, 0, stream>>>(a); break;
    case 8: PrefillAttentionKernel<HD, 8><<<grid, kPrefillThreads, 0, stream>>>(a); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

int32_t PrefillTileRows(int32_t group_size) { return kItems / group_size; }

cudaError_t LaunchPrefillAttention(const PrefillAttentionArgs& a, cudaStream_t stream) {
  if (a.num_jobs == 0) return cudaSuccess;
  if (a.num_kv_heads <= 0 || a.num_heads % a.num_kv_heads != 0 ||
      !AttentionSupports(a.head_dim, a.num_heads / a.num_kv_heads) || a.block_size < 1) {
    return cudaErrorInvalidValue;
  }
  return a.head_dim == 64 ? LaunchForHeadDim<64>(a, stream) : LaunchForHeadDim<128>(a, stream);
}

}  // namespace spanserve::gpu
