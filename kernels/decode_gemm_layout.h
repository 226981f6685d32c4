// Where the decode GEMM (decode_gemm.cu) puts and finds things: the shared-memory tiles'
// swizzle, which 16-byte piece each thread copies, the row addresses its ldmatrix lanes give,
// and the output element each accumulator register holds. Host and device share these
// functions so that a CPU test (test_launch_plan) can replay a tile through the PTX ISA's
// ldmatrix and mma.m16n8k16 fragment layouts and check the products.
#pragma once

#include "kernels/host_device.h"
#include "kernels/launch_plan.h"

namespace spanserve::gpu::decode_gemm {

inline constexpr int kThreads = 128;
inline constexpr int kWarps = kThreads / 32;
inline constexpr int kTileCols = kDecodeGemmTileCols;   // weight rows of a tile (BN)
inline constexpr int kTileK = kDecodeGemmTileK;         // bf16 of a tile row (BK)
inline constexpr int kRowPieces = kTileK / 8;           // 16-byte pieces of a tile row
inline constexpr int kWarpCols = kTileCols / kWarps;    // output columns of a warp
inline constexpr int kColTiles = kWarpCols / 8;         // the MMA's n8 tiles a warp takes
inline constexpr int kKSteps = kTileK / 16;             // the MMA's k16 steps a stage
static_assert(kRowPieces == 8, "the swizzle spreads a tile row's 8 pieces over 8 bank groups");

// Element offset of piece `piece` of row `row` in a [rows][kTileK] bf16 tile. A row is 128
// bytes, all 32 banks; its pieces are XOR-swizzled by the row's low 3 bits, so the 8 rows an
// ldmatrix phase reads at one piece column sit in 8 different bank groups.
SPANSERVE_HOST_DEVICE inline int Swizzled(int row, int piece) {
  return row * kTileK + ((piece ^ (row & 7)) * 8);
}

// Copy i of thread t: tile row i * (kThreads / kRowPieces) + t / kRowPieces, piece t %
// kRowPieces; 8 consecutive threads fill one row.
SPANSERVE_HOST_DEVICE inline int CopyRow(int i, int thread) {
  return i * (kThreads / kRowPieces) + thread / kRowPieces;
}
SPANSERVE_HOST_DEVICE inline int CopyPiece(int thread) { return thread % kRowPieces; }

// ldmatrix.x4 row addresses. x as the A operand of a 16-row tile (row-major, 16 x 16):
// matrices 0-3 are (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15,
// k 8-15), i.e. registers a0-a3 of the MMA; lane 8i + r gives row r of matrix i.
SPANSERVE_HOST_DEVICE inline int ARow(int lane) { return lane & 15; }
SPANSERVE_HOST_DEVICE inline int APiece(int lane) { return lane >> 4; }
// w as the B operand ("col": B[k][n] = w[n][k], so w's rows are the 8x8 matrices' rows) of two
// n8 tiles: matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15), i.e.
// b0, b1 of n tile 0 and b0, b1 of n tile 1.
SPANSERVE_HOST_DEVICE inline int BRow(int lane) { return (lane & 7) + ((lane >> 4) << 3); }
SPANSERVE_HOST_DEVICE inline int BPiece(int lane) { return (lane >> 3) & 1; }

// Accumulator c[e] (e = 0..3) of an m16n8 tile in lane `lane`: row lane / 4 (+ 8 for e >= 2),
// column 2 (lane % 4) + e % 2.
SPANSERVE_HOST_DEVICE inline int AccRow(int lane, int e) { return lane / 4 + 8 * (e / 2); }
SPANSERVE_HOST_DEVICE inline int AccCol(int lane, int e) { return 2 * (lane % 4) + e % 2; }

// Stages [begin, end) of split `split` of `splits` over k_blocks stages.
SPANSERVE_HOST_DEVICE inline int SplitBegin(int split, int splits, int k_blocks) {
  return static_cast<int>(static_cast<long long>(split) * k_blocks / splits);
}

}  // namespace spanserve::gpu::decode_gemm
