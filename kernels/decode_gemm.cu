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
// Split-K (launch_plan.h's DecodeGemmPlanFor) merged in a thread block cluster: the splits of a
// tile are one cluster (at most 8 CTAs, which the GPU places together); each CTA puts its fp32
// partial in its own shared memory, and after a cluster barrier each sums a slice of the tile
// over all the splits' shared memories (distributed shared memory), in split order, and writes
// y. No workspace and no counters; the result does not depend on which CTA finished first, so
// two launches give the same bits.
#include <algorithm>
#include <cstdint>

#include <cooperative_groups.h>

#include "kernels/common.cuh"
#include "kernels/decode_attention_common.cuh"  // CurrentSmLimits
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
};

// A split's partial tile in shared memory: fp32 [16 MT rows][kTileCols], rows padded by 4 floats
// so that a warp's stores of its accumulators spread over the banks.
constexpr int kPartialStride = kTileCols + 4;
template <int MT>
constexpr int PartialBytes() {
  return 16 * MT * kPartialStride * int{sizeof(float)};
}
static_assert(PartialBytes<4>() <= SmemBytes<1>(), "a partial fits where the stages were");


// Stage `kb` of `in` into a stage buffer: 8 weight pieces and MT x pieces a thread, zeros past
// `out`, `rows` and `in` (nothing is read there). The weight's half and x's apart, so that an
// early launch can copy weight stages before its wait for the kernel that writes x.
__device__ __forceinline__ void IssueWeightStage(const GemmParams& p, int n0, int kb,
                                                 uint16_t* stage) {
  uint16_t* w_tile = stage;
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
}
template <int MT>
__device__ __forceinline__ void IssueXStage(const GemmParams& p, int kb, uint16_t* stage) {
  uint16_t* x_tile = stage + kTileCols * kTileK;
  const int piece = CopyPiece(threadIdx.x);
  const int k = kb * kTileK + piece * 8;
  const bool k_valid = k < p.in;
#pragma unroll
  for (int i = 0; i < 16 * MT * kRowPieces / kThreads; ++i) {
    const int row = CopyRow(i, threadIdx.x);
    const bool valid = k_valid && row < p.rows;
    const uint16_t* src = valid ? p.x + int64_t{row} * p.in + k : p.x;
    CopyAsync16(x_tile + Swizzled(row, piece), src, valid);
  }
}
template <int MT>
__device__ __forceinline__ void IssueStage(const GemmParams& p, int n0, int kb, uint16_t* stage) {
  IssueWeightStage(p, n0, kb, stage);
  IssueXStage<MT>(p, kb, stage);
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

// Columns col, col + 1 of row `row` of y: one 8-byte store where both exist and out is even
// (so that the pair is 8-byte aligned).
__device__ __forceinline__ void StorePair(const GemmParams& p, int row, int col, float a, float b) {
  if (row >= p.rows || col >= p.out) return;
  float* dst = p.y + int64_t{row} * p.out + col;
  if (col + 1 < p.out && p.out % 2 == 0) {
    *reinterpret_cast<float2*>(dst) = make_float2(a, b);
    return;
  }
  dst[0] = a;
  if (col + 1 < p.out) dst[1] = b;
}

// Accumulator pair acc[mt][nt][2h], [2h + 1]: tile row 16 mt + AccRow, tile column of its first.
__device__ __forceinline__ int PairRow(int mt, int h) { return 16 * mt + AccRow(threadIdx.x % 32, 2 * h); }
__device__ __forceinline__ int PairCol(int nt) {
  return (threadIdx.x / 32) * kWarpCols + nt * 8 + AccCol(threadIdx.x % 32, 0);
}

// store(tile row, tile column, a, b) for each of this thread's accumulator pairs.
template <int MT, typename Store>
__device__ __forceinline__ void ForEachPair(const float (&acc)[MT][kColTiles][4], Store&& store) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kColTiles; ++nt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        store(PairRow(mt, h), PairCol(nt), acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
      }
    }
  }
}

// Several splits, one cluster: each CTA's partial into its shared memory; then CTA r of the
// cluster sums float4 column groups r, r + splits, ... of every row over the splits' partials
// in split order and writes them to y.
template <int MT>
__device__ __forceinline__ void MergeInCluster(const GemmParams& p, int n0, float* partial,
                                               const float (&acc)[MT][kColTiles][4]) {
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  ForEachPair<MT>(acc, [&](int row, int col, float a, float b) {
    *reinterpret_cast<float2*>(partial + row * kPartialStride + col) = make_float2(a, b);
  });
  cluster.sync();  // every split's partial is in place
  const int rank = static_cast<int>(cluster.block_rank());
  const int rows = min(16 * MT, p.rows);
  constexpr int kGroups = kTileCols / 4;  // float4 column groups of a row
  for (int g = rank + p.splits * static_cast<int>(threadIdx.x); g < rows * kGroups;
       g += p.splits * kThreads) {
    const int row = g / kGroups, col = (g % kGroups) * 4;
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int s = 0; s < p.splits; ++s) {
      const float4 v = *reinterpret_cast<const float4*>(
          cluster.map_shared_rank(partial + row * kPartialStride + col, s));
      sum.x += v.x;
      sum.y += v.y;
      sum.z += v.z;
      sum.w += v.w;
    }
    StorePair(p, row, n0 + col, sum.x, sum.y);
    StorePair(p, row, n0 + col + 2, sum.z, sum.w);
  }
  cluster.sync();  // no CTA leaves while another still reads its shared memory
}

// Grid (tiles, splits).
template <int MT, bool kTensorCores>
__global__ void __launch_bounds__(kThreads, kDecodeGemmCtasPerSm)
    DecodeGemmTileKernel(const GemmParams p) {
  extern __shared__ __align__(128) uint16_t smem[];  // [kStages][w 128 rows, x 16 MT rows][64]
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
  // The weight's first stages go out before the wait for the kernel ahead (it writes x, and
  // reads or writes y); the first group holds them all.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < blocks) IssueWeightStage(p, n0, kb_begin + s, smem + s * StageElems<MT>());
  }
  WaitForPreviousGrid();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < blocks) IssueXStage<MT>(p, kb_begin + s, smem + s * StageElems<MT>());
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
  AllowDependentLaunch();  // the kernel behind may start while the tiles are merged and stored

  if (p.splits == 1) {  // the accumulators straight to y
    ForEachPair<MT>(acc, [&](int row, int col, float a, float b) {
      StorePair(p, row, n0 + col, a, b);
    });
    return;
  }
  __syncthreads();  // every warp is done with the stages: the partial takes their place
  MergeInCluster<MT>(p, n0, reinterpret_cast<float*>(smem), acc);
}

template <int MT, bool kTensorCores>
cudaError_t LaunchTiles(const GemmParams& p, dim3 grid, bool early, cudaStream_t stream) {
  constexpr auto kKernel = DecodeGemmTileKernel<MT, kTensorCores>;
  // Dynamic shared memory up to what the SM gives a CTA beside the kernel's static shared
  // memory (their sum past the opt-in limit is an invalid launch).
  static int max_smem = 0;
  static const cudaError_t configured = [] {
    cudaFuncAttributes attributes{};
    cudaError_t e = cudaFuncGetAttributes(&attributes, kKernel);
    max_smem = CurrentSmLimits().max_smem_per_cta - static_cast<int>(attributes.sharedSizeBytes);
    if (e == cudaSuccess) {
      e = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               std::max(SmemBytes<MT>(), max_smem));
    }
    if (e == cudaSuccess) {
      e = cudaFuncSetAttribute(kKernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                               cudaSharedmemCarveoutMaxShared);
    }
    return e;
  }();
  if (configured != cudaSuccess) return configured;
  // An early launch's CTAs are placed as SMs free up: padded so that no SM takes more than
  // an even share (a plain launch places them breadth-first).
  const int smem = early ? std::max(SmemBytes<MT>(),
                                    std::min(max_smem, EvenPlacementSmem(SmemBytes<MT>(),
                                                                         int64_t{grid.x} * grid.y,
                                                                         CurrentSmLimits())))
                         : SmemBytes<MT>();
  // The splits of a tile are one cluster (MergeInCluster); early: a programmatic dependent launch.
  return LaunchClustered(early, dim3(1, grid.y, 1), kKernel, grid, dim3(kThreads), smem, stream, p);
}

template <bool kTensorCores>
cudaError_t LaunchForRows(const GemmParams& p, dim3 grid, bool early, cudaStream_t stream) {
  switch ((p.rows + 15) / 16) {
    case 1: return LaunchTiles<1, kTensorCores>(p, grid, early, stream);
    case 2: return LaunchTiles<2, kTensorCores>(p, grid, early, stream);
    case 3: return LaunchTiles<3, kTensorCores>(p, grid, early, stream);
    case 4: return LaunchTiles<4, kTensorCores>(p, grid, early, stream);
    default: return cudaErrorInvalidValue;
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

cudaError_t LaunchDecodeGemm(const DecodeGemmArgs& a, cudaStream_t stream) {
  if (!DecodeGemmTakes(a.rows, a.out, a.in) || !Aligned16(a.x) || !Aligned16(a.w) ||
      !Aligned16(a.y)) {
    return cudaErrorInvalidValue;
  }
  const DecodeGemmPlan plan = DecodeGemmPlanFor(a.out, a.in, CurrentSmLimits().sms, a.splits);
  const GemmParams p{a.x, a.w, a.y, a.rows, a.out, a.in, plan.k_blocks, plan.splits};
  const dim3 grid(plan.tiles, plan.splits);
  return a.kernel == DecodeGemmKernel::kTensorCores
             ? LaunchForRows<true>(p, grid, a.early_launch, stream)
             : LaunchForRows<false>(p, grid, a.early_launch, stream);
}

}  // namespace spanserve::gpu
