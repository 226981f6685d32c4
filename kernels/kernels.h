// Launchers of the CUDA kernels: plain C++ declarations, so that the backend and the tests are
// compiled by the host compiler. bf16 arrays are passed as uint16_t bit patterns. Every launcher
// returns the launch's error (cudaGetLastError), never synchronizes, and has fixed shapes given
// by its arguments, so it can be captured in a CUDA graph. `early_launch` (sm_90's programmatic
// dependent launch): the kernel's CTAs may start while the kernel ahead in the stream still
// runs, read only what no kernel writes (weights, the step's plan), and wait for it before
// anything else; graphs keep such launches as programmatic edges.
//
// KV cache of one layer, for K and for V alike: bf16 [num_blocks][num_kv_heads][block_size][head_dim].
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/launch_plan.h"

namespace spanserve::gpu {

// Head dims and query heads per KV head the attention kernels are built for.
bool AttentionSupports(int32_t head_dim, int32_t group_size);

// x[r] = embedding[tokens[r]] as fp32. table: bf16 [vocab][hidden].
cudaError_t LaunchEmbedding(const int32_t* tokens, const uint16_t* table, int32_t rows,
                            int32_t hidden, float* x, cudaStream_t stream);

// For each output row i, its input row r = (row_map ? row_map[i] : i):
//   y = x[r] + (delta ? delta[r] : 0);  if write_back: x[r] = y;
//   out[i] = bf16(y / sqrt(mean(y^2) + eps) * weight).
cudaError_t LaunchAddRmsNorm(float* x, const float* delta, const float* weight,
                             const int32_t* row_map, int32_t rows, int32_t hidden, float eps,
                             bool write_back, uint16_t* out, cudaStream_t stream,
                             bool early_launch = false);

// qkv: fp32 [rows][(heads + 2 kv_heads) * head_dim] (Q, K, V per row), plus qkv_bias (the
// same width, one for all rows) where it is not null. Rotates Q and K by the row's position
// (rotate_half; angle = position * inv_freq[i], i < head_dim/2, in double as the CPU backend
// computes it), writes Q as bf16 [rows][heads][head_dim], and K and V as bf16 into slot
// kv_offset[r] of block kv_block[r].
struct RopeKvArgs {
  const float* qkv;
  const int32_t* positions;
  const int32_t* kv_block;
  const int32_t* kv_offset;
  int32_t rows, num_heads, num_kv_heads, head_dim, block_size;
  const double* inv_freq;  // [head_dim / 2]
  const float* qkv_bias;   // null: no bias
  uint16_t* q_out;
  uint16_t* k_cache;
  uint16_t* v_cache;
};
cudaError_t LaunchRopeWriteKv(const RopeKvArgs& args, cudaStream_t stream,
                              bool early_launch = false);

// gate_up: fp32 [rows][2 * inter] (gate then up); out = bf16(silu(gate) * up) [rows][inter].
cudaError_t LaunchSiluMul(const float* gate_up, int32_t rows, int32_t inter, uint16_t* out,
                          cudaStream_t stream, bool early_launch = false);

// Block-sparse paged decode attention, split-KV. Grid (num_splits, num_kv_heads, num_rows), or
// with split_major (num_kv_heads, num_rows, num_splits), so that every row's split 0 is
// dispatched before any split 1 (a lead layout, launch_plan.h's SplitLayoutFor). A CTA takes
// the group of query heads of one KV head for one row and the chunks of
// split_heads[row][split] (launch_plan.h's SplitHead), each at most PieceTokens(block_size)
// tokens long (engine/backends/cuda_step_plan.h's CutIntoPieces). CTAs of the row's empty
// splits (past its row_splits) leave at once. A row of one split writes `out` directly;
// otherwise each CTA writes its (o, lse) partials, and the splits are merged into `out`: by
// the last CTA of each (row, KV head) to finish, counted in split_counters, or, without
// counters, by a second kernel.
// The counters start at zero and the merging CTA zeroes them again, so that a captured graph
// replays; launches sharing counters must be ordered (one stream: an early launch touches
// them only after its wait for the kernel ahead).
struct DecodeAttentionArgs {
  const uint16_t* q;          // bf16 [*][num_heads][head_dim], indexed by q_row
  const uint16_t* k_cache;
  const uint16_t* v_cache;
  const SplitHead* split_heads;  // [num_rows][num_splits]
  const ChunkEntry* chunks;
  int32_t num_rows, num_splits, num_heads, num_kv_heads, head_dim, block_size;
  float scale;                // softmax scale (1 / sqrt(head_dim))
  float* partial_o;           // fp32 [num_rows][num_splits][num_heads][head_dim]
  float* partial_lse;         // fp32 [num_rows][num_splits][num_heads], log2 domain
  uint16_t* out;              // bf16 [*][num_heads][head_dim], indexed by q_row
  int32_t* split_counters = nullptr;  // [num_rows][num_kv_heads], zeros; null: a merge kernel
  DecodeKernel kernel = DecodeKernel::kAuto;
  // Programmatic dependent launch (sm_90): the CTAs may start, read the plan and copy their
  // splits' early entries (SplitHead::early_entries: blocks no kernel of the step writes)
  // while the previous kernel in the stream finishes; they wait for it before anything else.
  bool early_launch = true;
  // Splits dispatched in split order (see above), and the shared memory padded so that the SMs
  // hold no more CTAs than the rows' split 0 need (EvenPlacementSmem): the later splits go to
  // CTAs as they finish.
  bool split_major = false;
};
cudaError_t LaunchDecodeAttention(const DecodeAttentionArgs& args, cudaStream_t stream);

// Causal attention of prompt rows over the paged cache: each job is a tile of consecutive rows
// of one sequence, each row attending tokens [0, position] through the block table.
struct PrefillAttentionArgs {
  const uint16_t* q;          // bf16 [rows][num_heads][head_dim]
  const uint16_t* k_cache;
  const uint16_t* v_cache;
  const PrefillJob* jobs;
  const int32_t* positions;   // [rows]
  const int32_t* block_tables;
  int32_t num_jobs, num_heads, num_kv_heads, head_dim, block_size;
  float scale;
  uint16_t* out;              // bf16 [rows][num_heads][head_dim]
  // mma.sync m16n8k16 (bf16 in, fp32 accumulate); false: the CUDA-core kernel, kept as the
  // check of the tensor-core path and for comparison.
  bool tensor_cores = true;
};
// Rows per prefill job for a group size (the plan's prefill_tile_rows).
int32_t PrefillTileRows(int32_t group_size);
cudaError_t LaunchPrefillAttention(const PrefillAttentionArgs& args, cudaStream_t stream);

// One token per logits row (fp32 [rows][vocab]): -1 where !active; greedy (first maximum) when
// temperature <= 0 or top_k == 1; else softmax at the temperature over the top_k largest logits,
// cut to the smallest prefix (by logit, ties by id) whose mass reaches top_p, and drawn with
// CounterUniform(seed, index) walking the kept tokens in id order. probs: fp32 [rows][vocab]
// workspace.
cudaError_t LaunchSample(const float* logits, int32_t rows, int32_t vocab,
                         const SampleEntry* params, float* probs, int32_t* tokens,
                         cudaStream_t stream, bool early_launch = false);


// y[rows, out] (fp32) = x[rows, in] . w[out, in]^T, bf16 inputs, fp32 accumulation, for the
// shapes DecodeGemmTakes (launch_plan.h) takes; x, w and y 16-byte aligned. Rows of x and y
// past `rows` are neither read nor written. Split-K (DecodeGemmPlanFor, at the device's SM
// count unless `splits` > 0) with a deterministic merge: a tile's splits are one thread block
// cluster and sum their partials in shared memory in split order. No workspace: launches of
// any shapes may share a stream or run side by side.
enum class DecodeGemmKernel : int32_t {
  kTensorCores,  // mma.sync m16n8k16
  kCudaCores,    // the same tiles and pipeline with fp32 FMAs: the check of the MMA path
};
struct DecodeGemmArgs {
  const uint16_t* x;  // bf16 [rows][in]
  const uint16_t* w;  // bf16 [out][in]
  float* y;           // fp32 [rows][out]
  int32_t rows, out, in;
  int32_t splits = 0;  // 0: DecodeGemmPlanFor's choice
  DecodeGemmKernel kernel = DecodeGemmKernel::kTensorCores;
  // The first stages of w are in flight before the wait for the kernel ahead (only w: x is
  // that kernel's output); the shared memory is padded for an even placement (one wave).
  bool early_launch = false;
};
cudaError_t LaunchDecodeGemm(const DecodeGemmArgs& args, cudaStream_t stream);

}  // namespace spanserve::gpu
