// Causal attention of prompt rows over the paged KV cache, two kernels over the same jobs.
//
// Both: a CTA takes one job (up to 64 / G consecutive rows of one sequence) and one KV head: its
// 64 items are (row, query head of the group) pairs, item i = (row i / G, head kv_head * G +
// i % G). It walks the sequence's tokens [0, max position of the job] in tiles through the
// block table, each tile of K and V loaded once into shared memory and used by all 64 items,
// with an online softmax per item (fp32, log2 domain).
//
// Tensor cores (the default, PrefillAttentionTcKernel), FlashAttention-2 style: 4 warps, warp w
// owns items 16w..16w+15 (the MMA's M) with its Q fragments in registers; per tile of 64
// tokens, S = Q K^T and O += P V through mma.sync m16n8k16 (bf16 in, fp32 accumulate), P kept
// in registers (the accumulator layout of S is the A operand layout of P V). K and V come in by
// cp.async, double-buffered (the next tile lands while this one is computed), in rows whose
// 16-byte pieces are XOR-swizzled (TileOffset) so that ldmatrix is conflict-free.
//
// CUDA cores (PrefillAttentionKernel, tensor_cores = false; the check of the MMA path): 8 warps,
// 8 items each, their Q kept in shared memory; tiles of 32 tokens (16-byte loads). Lane j scores
// token j of the tile, the warp keeps each item's online softmax, and lane j owns head_dim / 32
// output dimensions in the P.V product.
#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace spanserve::gpu {
namespace {

constexpr int kPrefillThreads = 256;
constexpr int kPrefillWarps = kPrefillThreads / 32;
constexpr int kItems = 64;      // (row, head) pairs per CTA
constexpr int kTileTokens = 32;  // one token per lane

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

// The tensor-core kernel (see the top of the file).
constexpr int kTcThreads = 128;
constexpr int kTcWarps = kTcThreads / 32;
constexpr int kTcTileTokens = 64;  // tokens of a K or V tile: 8 MMA n tiles of S, 4 k steps of P V
static_assert(kItems == kTcWarps * 16, "a warp's items are the MMA's 16 rows");

// Q [64][HD], then 2 stages of K [64][HD] and V [64][HD], all bf16: 80 KB at HD 128.
template <int HD>
constexpr int TcSmemBytes() {
  return (kItems + 2 * 2 * kTcTileTokens) * HD * int{sizeof(uint16_t)};
}

template <int HD, int G>
__global__ void __launch_bounds__(kTcThreads) PrefillAttentionTcKernel(const PrefillAttentionArgs a) {
  constexpr int PIECES = HD / 8;   // 16-byte pieces per row
  constexpr int KSTEPS = HD / 16;  // MMA k steps of Q K^T over the head dim
  constexpr int DTILES = HD / 8;   // MMA n tiles of P V over the head dim
  constexpr int NTILES = kTcTileTokens / 8;  // MMA n tiles of S over the tile's tokens
  constexpr int TILE = kTcTileTokens * HD;   // elements of one K or V tile
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* const sq = smem;
  uint16_t* const skv = smem + kItems * HD;  // stage s: K at skv + 2 s TILE, V after it

  const PrefillJob job = a.jobs[blockIdx.x];
  const int kv_head = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int quad = lane / 4, pair = lane % 4;  // the lane's C rows (quad, quad + 8), columns
  const int B = a.block_size;
  const int64_t block_stride = int64_t{a.num_kv_heads} * B * HD;
  const int64_t head_offset = int64_t{kv_head} * B * HD;
  const int32_t* table = a.block_tables + job.table_begin;

  // Tokens past the job's last position are zero-filled, not skipped: their scores are masked,
  // and 0 * (zero V) stays 0 where stale shared memory could hold NaN bit patterns.
  auto issue_kv = [&](int t0, int stage) {
    uint16_t* const sk = skv + 2 * stage * TILE;
    uint16_t* const sv = sk + TILE;
#pragma unroll
    for (int i = threadIdx.x; i < kTcTileTokens * PIECES; i += kTcThreads) {
      const int j = i / PIECES, piece = i % PIECES, t = t0 + j;
      const bool valid = t <= job.max_position;
      const int64_t offset =
          valid ? table[t / B] * block_stride + head_offset + int64_t{t % B} * HD + piece * 8 : 0;
      const int dst = TileOffset<HD>(j, piece);
      CopyAsync16(sk + dst, a.k_cache + offset, valid);
      CopyAsync16(sv + dst, a.v_cache + offset, valid);
    }
  };

  // Prologue: Q (zeros for items past the job's rows) and KV tile 0, one commit group.
#pragma unroll
  for (int i = threadIdx.x; i < kItems * PIECES; i += kTcThreads) {
    const int item = i / PIECES, piece = i % PIECES, r = item / G;
    const bool valid = r < job.num_rows;
    const int64_t head =
        valid ? int64_t{job.row_begin + r} * a.num_heads + kv_head * G + item % G : 0;
    CopyAsync16(sq + TileOffset<HD>(item, piece), a.q + head * HD + piece * 8, valid);
  }
  issue_kv(0, 0);
  CopyAsyncCommit();

  // The lane's two items (rows quad and quad + 8 of the warp's 16); -1: no row, no token.
  const int item_lo = 16 * warp + quad, item_hi = item_lo + 8;
  const int r_lo = item_lo / G, r_hi = item_hi / G;
  const int pos_lo = r_lo < job.num_rows ? a.positions[job.row_begin + r_lo] : -1;
  const int pos_hi = r_hi < job.num_rows ? a.positions[job.row_begin + r_hi] : -1;
  // The warp's largest position (tiles after it are skipped) and smallest (tiles before it
  // need no mask): warp-uniform.
  int warp_max = max(pos_lo, pos_hi), warp_min = min(pos_lo, pos_hi);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    warp_max = max(warp_max, __shfl_xor_sync(0xffffffffu, warp_max, offset));
    warp_min = min(warp_min, __shfl_xor_sync(0xffffffffu, warp_min, offset));
  }

  const float q_scale = a.scale * kLog2e;  // scores in the log2 domain, for exp2f
  uint32_t qf[KSTEPS][4];
  float o[DTILES][4];
#pragma unroll
  for (int j = 0; j < DTILES; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m_lo = kNegInf, m_hi = kNegInf;
  float l_lo = 0.0f, l_hi = 0.0f;  // the lane's partial sums, reduced over the quad at the end

  int stage = 0;
  for (int t0 = 0; t0 <= job.max_position; t0 += kTcTileTokens, stage ^= 1) {
    // The next tile into the other stage (freed by the barrier ending the previous iteration);
    // an empty group past the last tile keeps the wait count uniform.
    if (t0 + kTcTileTokens <= job.max_position) issue_kv(t0 + kTcTileTokens, stage ^ 1);
    CopyAsyncCommit();
    CopyAsyncWait<1>();  // everything but the group just committed: Q and this tile
    __syncthreads();
    if (t0 == 0) {
#pragma unroll
      for (int ks = 0; ks < KSTEPS; ++ks) {
        LoadMatrixX4(qf[ks], sq + TileOffset<HD>(16 * warp + lane % 16, 2 * ks + lane / 16));
      }
    }
    if (t0 <= warp_max) {  // else every token of the tile is after all of the warp's items
      const uint16_t* const sk = skv + 2 * stage * TILE;
      const uint16_t* const sv = sk + TILE;

      // S = Q K^T: K rows [token][d] are the col-major B operand as stored.
      float s[NTILES][4];
#pragma unroll
      for (int j = 0; j < NTILES; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < KSTEPS; ++ks) {
#pragma unroll
        for (int j = 0; j < NTILES; j += 2) {
          // Matrices: tokens 8j..+7 at d pieces 2ks, 2ks + 1, then tokens 8j+8..+15 at both.
          uint32_t kf[4];
          LoadMatrixX4(kf, sk + TileOffset<HD>(8 * j + (lane / 16) * 8 + lane % 8,
                                               2 * ks + (lane / 8) % 2));
          Mma16816(s[j], qf[ks], kf[0], kf[1]);
          Mma16816(s[j + 1], qf[ks], kf[2], kf[3]);
        }
      }

      // Scale, and mask tokens after the item's position where the tile crosses one.
      const bool masked = t0 + kTcTileTokens - 1 > warp_min;
#pragma unroll
      for (int j = 0; j < NTILES; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[j][e] *= q_scale;
          const int token = t0 + 8 * j + 2 * pair + (e & 1);
          if (masked && token > (e < 2 ? pos_lo : pos_hi)) s[j][e] = kNegInf;
        }
      }

      // Online softmax: each row's 64 scores are 16 in each lane of its quad.
      float mx_lo = m_lo, mx_hi = m_hi;
#pragma unroll
      for (int j = 0; j < NTILES; ++j) {
        mx_lo = fmaxf(mx_lo, fmaxf(s[j][0], s[j][1]));
        mx_hi = fmaxf(mx_hi, fmaxf(s[j][2], s[j][3]));
      }
#pragma unroll
      for (int offset = 1; offset <= 2; offset *= 2) {
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, offset));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, offset));
      }
      // A row with no token yet (max -inf) takes base 0: p and the correction are 0, not NaN.
      const float base_lo = mx_lo == kNegInf ? 0.0f : mx_lo;
      const float base_hi = mx_hi == kNegInf ? 0.0f : mx_hi;
      const float corr_lo = exp2f(m_lo - base_lo), corr_hi = exp2f(m_hi - base_hi);
      m_lo = mx_lo;
      m_hi = mx_hi;
      float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
      for (int j = 0; j < NTILES; ++j) {
        s[j][0] = exp2f(s[j][0] - base_lo);
        s[j][1] = exp2f(s[j][1] - base_lo);
        s[j][2] = exp2f(s[j][2] - base_hi);
        s[j][3] = exp2f(s[j][3] - base_hi);
        sum_lo += s[j][0] + s[j][1];
        sum_hi += s[j][2] + s[j][3];
      }
      l_lo = l_lo * corr_lo + sum_lo;
      l_hi = l_hi * corr_hi + sum_hi;
#pragma unroll
      for (int j = 0; j < DTILES; ++j) {
        o[j][0] *= corr_lo;
        o[j][1] *= corr_lo;
        o[j][2] *= corr_hi;
        o[j][3] *= corr_hi;
      }

      // O += P V: S's accumulators of n tiles 2kk, 2kk + 1 are P's A fragment for tokens
      // 16kk..16kk+15; V rows [token][d] give the B operand through ldmatrix.trans.
#pragma unroll
      for (int kk = 0; kk < kTcTileTokens / 16; ++kk) {
        const uint32_t pa[4] = {PackBf16x2(s[2 * kk][0], s[2 * kk][1]),
                                PackBf16x2(s[2 * kk][2], s[2 * kk][3]),
                                PackBf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                PackBf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int p = 0; p < DTILES; p += 2) {
          // Matrices: tokens 0-7, 8-15 of the k step at d piece p, then both at piece p + 1.
          uint32_t vf[4];
          LoadMatrixX4Trans(vf, sv + TileOffset<HD>(16 * kk + lane % 8 + ((lane / 8) % 2) * 8,
                                                    p + lane / 16));
          Mma16816(o[p], pa, vf[0], vf[1]);
          Mma16816(o[p + 1], pa, vf[2], vf[3]);
        }
      }
    }
    __syncthreads();  // this stage is consumed: the next iteration's copies may overwrite it
  }

#pragma unroll
  for (int offset = 1; offset <= 2; offset *= 2) {
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, offset);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, offset);
  }
  // o[j][0..1]: item_lo, dims 8j + 2 pair + {0, 1}; o[j][2..3]: item_hi.
  auto store = [&](int item, int r, float l, int half) {
    if (r >= job.num_rows) return;
    const float inv = 1.0f / l;
    const int64_t head = int64_t{job.row_begin + r} * a.num_heads + kv_head * G + item % G;
    uint16_t* const dst = a.out + head * HD + 2 * pair;
#pragma unroll
    for (int j = 0; j < DTILES; ++j) {
      *reinterpret_cast<uint32_t*>(dst + 8 * j) =
          PackBf16x2(o[j][2 * half] * inv, o[j][2 * half + 1] * inv);
    }
  };
  store(item_lo, r_lo, l_lo, 0);
  store(item_hi, r_hi, l_hi, 1);
}

template <int HD, int G>
cudaError_t LaunchKernel(const PrefillAttentionArgs& a, cudaStream_t stream) {
  const dim3 grid(a.num_jobs, a.num_kv_heads);
  if (!a.tensor_cores) {
    PrefillAttentionKernel<HD, G><<<grid, kPrefillThreads, 0, stream>>>(a);
    return cudaGetLastError();
  }
  constexpr int kSmem = TcSmemBytes<HD>();
  // Over 48 KB of dynamic shared memory needs the opt-in, once per instantiation.
  static const cudaError_t configured = cudaFuncSetAttribute(
      PrefillAttentionTcKernel<HD, G>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (configured != cudaSuccess) return configured;
  PrefillAttentionTcKernel<HD, G><<<grid, kTcThreads, kSmem, stream>>>(a);
  return cudaGetLastError();
}

template <int HD>
cudaError_t LaunchForHeadDim(const PrefillAttentionArgs& a, cudaStream_t stream) {
  switch (a.num_heads / a.num_kv_heads) {
    case 1: return LaunchKernel<HD, 1>(a, stream);
    case 2: return LaunchKernel<HD, 2>(a, stream);
    case 4: return LaunchKernel<HD, 4>(a, stream);
    case 8: return LaunchKernel<HD, 8>(a, stream);
    default: return cudaErrorInvalidValue;
  }
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
