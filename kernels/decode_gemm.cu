// The decode GEMM: y[rows, out] (fp32) = x[rows, in] . w[out, in]^T, bf16 inputs, fp32
// accumulation, at decode row counts (at most 64), where reading the weight once is the whole
// cost (cuBLAS reached 46-73% of the read roof at LLaMA-7B shapes, 64 rows:
// bench/results/cuda/2026-12-06).
//
// A CTA of 4 warps takes a tile of 128 weight rows (output columns) over one split of `in`, and
// all rows of x, padded in registers to MT tiles of 16. Stages of 64 k: the weight tile (16 KiB)
// and x's (2 KiB a 16 rows) go global -> shared by cp.async, kStages - 1 stages ahead (48 KiB of
// weight in flight a CTA, two CTAs a SM), swizzled so that ldmatrix reads are free of bank
// conflicts (decode_gemm_layout.h). Each warp owns 32 output columns: per k16 step two
// ldmatrix.x4 of w (B operands of 4 n8 tiles), one of x per row tile (the A operand), and MT x 4
// mma.sync m16n8k16. The CUDA-core variant computes the same accumulators with FMAs from the
// same tiles, so a wrong fragment layout shows as a difference between the two.
//
// Split-K (launch_plan.h's DecodeGemmPlanFor) with a merge of fixed order: every split writes
// its fp32 partial to the workspace; the last CTA of the tile to count itself in sums the
// partials in split order (its own from registers) and writes y. The result does not depend on
// which CTA finished last, so two launches give the same bits.
#include <algorithm>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/decode_attention_common.cuh"  // cp.async, CurrentSmLimits
#include "kernels/decode_gemm_layout.h"
#include "kernels/kernels.h"

namespace spanserve::gpu {
namespace {

using namespace decode_gemm;  // NOLINT: the tile geometry

constexpr int kStages = 4;  // one computed, three in flight

template <int MT>
constexpr int StageElems() {
  return (kTileCols + 16 * MT) * kTileK;  // w tile, then x tile
}
template <int MT>
constexpr int SmemBytes() {
  return kStages * StageElems<MT>() * int{sizeof(uint16_t)};  // 72-96 KiB
}

struct GemmParams {
  const uint16_t* x;
  const uint16_t* w;
  float* y;
  int rows, out, in, k_blocks, splits;
  int32_t* counters;  // [tiles]
  float* partials;    // [splits][rows][out]
};


// Stage `kb` of `in` into a stage buffer: 8 weight pieces and MT x pieces a thread, zeros past
// `out`, `rows` and `in` (nothing is read there).
template <int MT>
__device__ __forceinline__ void IssueStage(const GemmParams& p, int n0, int kb, uint16_t* stage) {
  uint16_t* w_tile = stage;
  uint16_t* x_tile = stage + kTileCols * kTileK;
  const int piece = CopyPiece(threadIdx.x);
  const int k = kb * kTileK + piece * 8;
  const bool k_valid = k < p.in;
#pragma unroll
  for (int i = 0; i < kTileCols * kRowPieces / kThreads; ++i) {
    const int row = CopyRow(i, threadIdx.x), n = n0 + row;
    const bool valid = k_valid && n < p.out;
    const uint16_t* src = valid ? p.w + int64_t{n} * p.in + k : p.w;
    CopyAsync16(w_tile + Swizzled(row, piece), src, valid);
  }
#pragma unroll
  for (int i = 0; i < 16 * MT * kRowPieces / kThreads; ++i) {
    const int row = CopyRow(i, threadIdx.x);
    const bool valid = k_valid && row < p.rows;
    const uint16_t* src = valid ? p.x + int64_t{row} * p.in + k : p.x;
    CopyAsync16(x_tile + Swizzled(row, piece), src, valid);
  }
}

// acc[mt][nt] += the stage's x rows of tile mt times w columns of the warp's n8 tile nt.
template <int MT>
__device__ __forceinline__ void MmaStage(const uint16_t* stage, float (&acc)[MT][kColTiles][4]) {
  const uint16_t* w_tile = stage;
  const uint16_t* x_tile = stage + kTileCols * kTileK;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b_row = warp * kWarpCols + BRow(lane), b_piece = BPiece(lane);
  const int a_row = ARow(lane), a_piece = APiece(lane);
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks) {
    uint32_t b[kColTiles][2];
#pragma unroll
    for (int np = 0; np < kColTiles / 2; ++np) {
      uint32_t r[4];
      LoadMatrixX4(r, w_tile + Swizzled(b_row + 16 * np, 2 * ks + b_piece));
      b[2 * np][0] = r[0];
      b[2 * np][1] = r[1];
      b[2 * np + 1][0] = r[2];
      b[2 * np + 1][1] = r[3];
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      uint32_t a[4];
      LoadMatrixX4(a, x_tile + Swizzled(16 * mt + a_row, 2 * ks + a_piece));
#pragma unroll
      for (int nt = 0; nt < kColTiles; ++nt) Mma16816(acc[mt][nt], a, b[nt][0], b[nt][1]);
    }
  }
}

// The same accumulators as MmaStage, with fp32 FMAs (a 16-byte piece of each operand at a time).
template <int MT>
__device__ __forceinline__ void FmaStage(const uint16_t* stage, float (&acc)[MT][kColTiles][4]) {
  const uint16_t* w_tile = stage;
  const uint16_t* x_tile = stage + kTileCols * kTileK;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll 1
  for (int piece = 0; piece < kRowPieces; ++piece) {
    float wf[kColTiles][2][8];
#pragma unroll
    for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int row = warp * kWarpCols + nt * 8 + AccCol(lane, j);
        Bf16x8ToFloat(*reinterpret_cast<const uint4*>(w_tile + Swizzled(row, piece)), wf[nt][j]);
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float xf[8];
        const int row = 16 * mt + AccRow(lane, 2 * h);
        Bf16x8ToFloat(*reinterpret_cast<const uint4*>(x_tile + Swizzled(row, piece)), xf);
#pragma unroll
        for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            float sum = acc[mt][nt][2 * h + j];
#pragma unroll
            for (int e = 0; e < 8; ++e) sum = fmaf(xf[e], wf[nt][j][e], sum);
            acc[mt][nt][2 * h + j] = sum;
          }
        }
      }
    }
  }
}

// One output pair (columns col, col + 1 of a row) of a [rows][out] fp32 array: one 8-byte
// access where both columns exist and out is even (so that the pair is 8-byte aligned).
struct Pair {
  int64_t index;
  bool first, second;
  __device__ __forceinline__ Pair(int row, int col, const GemmParams& p)
      : index(int64_t{row} * p.out + col),
        first(row < p.rows && col < p.out),
        second(row < p.rows && col + 1 < p.out) {}
  __device__ __forceinline__ bool vector(int out) const { return second && out % 2 == 0; }
};
__device__ __forceinline__ void StoreFloat(float* dst, float v, bool to_l2) {
  if (to_l2) {
    __stcg(dst, v);
  } else {
    *dst = v;
  }
}
// to_l2: a partial, which another SM reads next (no L1 allocation).
__device__ __forceinline__ void StorePair(float* base, const Pair& at, int out, float a, float b,
                                          bool to_l2) {
  if (at.vector(out)) {
    float2* dst = reinterpret_cast<float2*>(base + at.index);
    if (to_l2) {
      __stcg(dst, make_float2(a, b));
    } else {
      *dst = make_float2(a, b);
    }
    return;
  }
  if (at.first) StoreFloat(base + at.index, a, to_l2);
  if (at.second) StoreFloat(base + at.index + 1, b, to_l2);
}
// Another CTA's partial, from L2 (it was written by another SM).
__device__ __forceinline__ float2 LoadPair(const float* base, const Pair& at, int out) {
  if (at.vector(out)) return __ldcg(reinterpret_cast<const float2*>(base + at.index));
  return make_float2(at.first ? __ldcg(base + at.index) : 0.0f,
                     at.second ? __ldcg(base + at.index + 1) : 0.0f);
}

// This thread's accumulators as pairs: acc[mt][nt][2h], [2h + 1] are one pair.
template <int MT>
__device__ __forceinline__ Pair PairOf(const GemmParams& p, int n0, int mt, int nt, int h) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  return Pair(16 * mt + AccRow(lane, 2 * h), n0 + warp * kWarpCols + nt * 8 + AccCol(lane, 0), p);
}

template <int MT>
__device__ __forceinline__ void StoreTile(const GemmParams& p, int n0, float* base, bool to_l2,
                                          const float (&acc)[MT][kColTiles][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        StorePair(base, PairOf<MT>(p, n0, mt, nt, h), p.out, acc[mt][nt][2 * h],
                  acc[mt][nt][2 * h + 1], to_l2);
      }
    }
  }
}

// The last CTA of a tile: y = the splits' partials summed in split order, this split's own
// from registers. Loads go out kBatch splits at a time (a load behind the add before it
// would wait a latency a split).
template <int MT>
__device__ __forceinline__ void MergeSplits(const GemmParams& p, int n0, int split,
                                            const float (&acc)[MT][kColTiles][4]) {
  constexpr int kBatch = 4;
  const int64_t split_stride = int64_t{p.rows} * p.out;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    if (16 * mt >= p.rows) break;
    float2 sum[kColTiles][2];
#pragma unroll
    for (int nt = 0; nt < kColTiles; ++nt) sum[nt][0] = sum[nt][1] = make_float2(0.0f, 0.0f);
    for (int s0 = 0; s0 < p.splits; s0 += kBatch) {
      float2 part[kBatch][kColTiles][2];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int s = s0 + b;
#pragma unroll
        for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            part[b][nt][h] = s < p.splits && s != split
                                 ? LoadPair(p.partials + s * split_stride,
                                            PairOf<MT>(p, n0, mt, nt, h), p.out)
                                 : make_float2(acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
          }
        }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (s0 + b >= p.splits) break;
#pragma unroll
        for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            sum[nt][h].x += part[b][nt][h].x;
            sum[nt][h].y += part[b][nt][h].y;
          }
        }
      }
    }
#pragma unroll
    for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        StorePair(p.y, PairOf<MT>(p, n0, mt, nt, h), p.out, sum[nt][h].x, sum[nt][h].y, false);
      }
    }
  }
}

// Grid (tiles, splits).
template <int MT, bool kTensorCores>
__global__ void __launch_bounds__(kThreads, kDecodeGemmCtasPerSm)
    DecodeGemmTileKernel(const GemmParams p) {
  extern __shared__ __align__(128) uint16_t smem[];  // [kStages][w 128 rows, x 16 MT rows][64]
  __shared__ int is_last;
  const int tile = blockIdx.x, split = blockIdx.y, n0 = tile * kTileCols;
  const int kb_begin = SplitBegin(split, p.splits, p.k_blocks);
  const int blocks = SplitBegin(split + 1, p.splits, p.k_blocks) - kb_begin;

  float acc[MT][kColTiles][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kColTiles; ++nt) {
      acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;
    }
  }
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < blocks) IssueStage<MT>(p, n0, kb_begin + s, smem + s * StageElems<MT>());
    CopyAsyncCommit();
  }
  for (int i = 0, stage = 0; i < blocks; ++i, stage = stage + 1 < kStages ? stage + 1 : 0) {
    CopyAsyncWait<kStages - 2>();  // this thread's copies of stage i have landed
    __syncthreads();               // everyone's; and everyone is done with stage i - 1
    const int next = i + kStages - 1, next_stage = stage > 0 ? stage - 1 : kStages - 1;
    if (next < blocks) IssueStage<MT>(p, n0, kb_begin + next, smem + next_stage * StageElems<MT>());
    CopyAsyncCommit();
    const uint16_t* current = smem + stage * StageElems<MT>();
    if constexpr (kTensorCores) {
      MmaStage<MT>(current, acc);
    } else {
      FmaStage<MT>(current, acc);
    }
  }
  CopyAsyncWait<0>();  // only empty groups are left; nothing may land after the CTA leaves

  if (p.splits == 1) {
    StoreTile<MT>(p, n0, p.y, false, acc);
    return;
  }
  StoreTile<MT>(p, n0, p.partials + split * (int64_t{p.rows} * p.out), true, acc);
  // Count this split in; its partial is visible device-wide before the count is.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    is_last = atomicAdd(p.counters + tile, 1) == p.splits - 1;
    if (is_last) p.counters[tile] = 0;  // every split has counted: ready for the next launch
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  MergeSplits<MT>(p, n0, split, acc);
}

template <int MT, bool kTensorCores>
cudaError_t LaunchTiles(const GemmParams& p, dim3 grid, cudaStream_t stream) {
  constexpr auto kKernel = DecodeGemmTileKernel<MT, kTensorCores>;
  static const cudaError_t configured = [] {
    cudaError_t e = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         SmemBytes<MT>());
    if (e == cudaSuccess) {
      e = cudaFuncSetAttribute(kKernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                               cudaSharedmemCarveoutMaxShared);
    }
    return e;
  }();
  if (configured != cudaSuccess) return configured;
  kKernel<<<grid, kThreads, SmemBytes<MT>(), stream>>>(p);
  return cudaGetLastError();
}

template <bool kTensorCores>
cudaError_t LaunchForRows(const GemmParams& p, dim3 grid, cudaStream_t stream) {
  switch ((p.rows + 15) / 16) {
    case 1: return LaunchTiles<1, kTensorCores>(p, grid, stream);
    case 2: return LaunchTiles<2, kTensorCores>(p, grid, stream);
    case 3: return LaunchTiles<3, kTensorCores>(p, grid, stream);
    case 4: return LaunchTiles<4, kTensorCores>(p, grid, stream);
    default: return cudaErrorInvalidValue;
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

size_t DecodeGemmWorkspaceBytes(int32_t max_rows, int32_t out, int32_t in) {
  const DecodeGemmPlan plan = DecodeGemmPlanFor(out, in, CurrentSmLimits().sms);
  return static_cast<size_t>(DecodeGemmWorkspaceBytes(plan, max_rows, out));
}

cudaError_t LaunchDecodeGemm(const DecodeGemmArgs& a, cudaStream_t stream) {
  if (!DecodeGemmTakes(a.rows, a.out, a.in) || !Aligned16(a.x) || !Aligned16(a.w) ||
      !Aligned16(a.y) || !Aligned16(a.workspace) || a.workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  const DecodeGemmPlan plan = DecodeGemmPlanFor(a.out, a.in, CurrentSmLimits().sms, a.splits);
  if (a.workspace_bytes < static_cast<size_t>(DecodeGemmWorkspaceBytes(plan, a.rows, a.out))) {
    return cudaErrorInvalidValue;
  }
  uint8_t* workspace = static_cast<uint8_t*>(a.workspace);
  const GemmParams p{a.x, a.w, a.y, a.rows, a.out, a.in, plan.k_blocks, plan.splits,
                     reinterpret_cast<int32_t*>(workspace),
                     reinterpret_cast<float*>(workspace + kDecodeGemmCounterBytes)};
  const dim3 grid(plan.tiles, plan.splits);
  return a.kernel == DecodeGemmKernel::kTensorCores ? LaunchForRows<true>(p, grid, stream)
                                                    : LaunchForRows<false>(p, grid, stream);
}

}  // namespace spanserve::gpu
