// Host-side launch metadata of one CUDA backend step, built from the engine's StepBatch: the
// rows, where each row writes its K and V, the block tables, the decode kernel's chunk lists cut
// into splits (kernels/launch_plan.h's entries), the prefill kernel's row tiles and the sampling
// parameters, all packed into one blob whose arrays sit at offsets fixed by capacities. A decode
// step captured in a CUDA graph therefore reads the next step's metadata from the same
// addresses. Plain C++: tested without a GPU (tests/cuda/test_launch_plan.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "engine/backends/backend.h"
#include "kernels/launch_plan.h"

namespace spanserve::gpu {

// Sizes the blob's arrays and the backend's buffers are allocated for.
struct PlanCapacity {
  int32_t rows = 0;           // rows of a step, padding included
  int32_t logit_rows = 0;
  int32_t table_entries = 0;
  int32_t chunks = 0;         // decode rows' chunks, cut into pieces
  int32_t row_splits = 0;     // decode rows x splits: partial results of split-KV
  int32_t prefill_jobs = 0;

  bool Covers(const PlanCapacity& need) const;
  PlanCapacity Max(const PlanCapacity& other) const;
};

// Byte offsets of the arrays in the blob; the host and device copies share one layout.
struct PlanLayout {
  size_t token_ids = 0, positions = 0, kv_block = 0, kv_offset = 0;  // int32 [rows]
  size_t split_heads = 0;    // SplitHead [decode rows][splits]
  size_t prefill_jobs = 0;   // PrefillJob [prefill_jobs]
  size_t logit_rows = 0;     // int32 [logit_rows]: the row whose logits each logits row holds
  size_t samples = 0;        // SampleEntry [logit_rows]
  size_t block_tables = 0;   // int32 [table_entries]
  size_t chunks = 0;         // ChunkEntry [chunks]
  size_t total = 0;

  static PlanLayout For(const PlanCapacity& capacity);
};

struct PlanOptions {
  int32_t block_size = 16;
  int32_t pad_rows = 0;           // a CUDA graph bucket: pad a decode step to this many rows
  int32_t num_splits = 1;         // decode kernel splits per row (its grid's x)
  int32_t min_split_tokens = kMinSplitTokens;  // a row uses at most ceil(its tokens / this) splits
  int32_t lead_percent = 0;       // > 0: a lead layout (SplitLayoutFor)
  int32_t prefill_tile_rows = 16; // rows per prefill job
  // Prefill jobs longest first (by max_position), so that a step's long tail of short jobs
  // fills the SMs the long ones leave, not the other way round (LPT scheduling); false: row order.
  bool prefill_longest_first = true;
  int32_t scratch_block = 0;      // the block padding rows write their K and V into
};

// Counts of a built step, for the launches, and each sequence's logits row.
struct StepPlan {
  int32_t rows = 0;          // rows computed, padding included
  int32_t decode_rows = 0;
  int32_t num_splits = 1;
  bool split_major = false;  // a lead layout: launch the decode kernel split-major
  int32_t prefill_jobs = 0;
  int32_t logit_rows = 0;
  int32_t table_entries = 0;
  int32_t chunks = 0;
  std::vector<int32_t> seq_logit_row;  // per seq: its logits row, -1 where it does not sample
};

// A step that can replay a CUDA graph: one non-causal row per sequence, row s for sequence s.
bool IsDecodeStep(const StepBatch& batch);

// Rows of the decode kernel: the non-causal rows, or all padded rows.
int32_t DecodeRows(const StepBatch& batch, int32_t pad_rows);

// Appends `chunks` to `pieces`, each cut into pieces of at most PieceTokens(block_size) tokens,
// in order: the chunk list the decode kernel takes.
void CutIntoPieces(std::span<const KvChunk> chunks, int32_t block_size,
                   std::vector<KvChunk>* pieces);

// Cuts one row's chunks into max_splits splits balanced by cost (tokens + kChunkCost per chunk),
// using at most ceil(cost / min_split_tokens) of them; the rest are empty. Writes the
// max_splits + 1 bounds, offset by `base` (the row's first chunk in the blob). With
// lead_percent > 0, split 0 takes that share of the cost and the others share the rest as
// above, where the rest is at least min_split_tokens (else split 0 takes all).
void SplitChunks(std::span<const KvChunk> chunks, int32_t max_splits, int32_t min_split_tokens,
                 int32_t base, int32_t* bounds, int32_t lead_percent = 0);

// The capacity a batch needs under these options.
PlanCapacity NeededCapacity(const StepBatch& batch, const PlanOptions& options);

// Fills `blob` (laid out by `layout`, for a capacity that covers NeededCapacity) from a batch
// that passed ValidateStepBatch.
StepPlan BuildStepPlan(const StepBatch& batch, const PlanOptions& options,
                       const PlanLayout& layout, uint8_t* blob);

}  // namespace spanserve::gpu
