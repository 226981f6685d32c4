// Host-side launch metadata of one CUDA backend step, as plain C++ so that it is tested without
// a GPU: the rows, where each row writes its K and V, the block tables, the decode kernel's
// chunk lists cut into splits, the prefill kernel's row tiles and the sampling parameters, all
// packed into one blob whose arrays sit at offsets fixed by capacities. A decode step captured in
// a CUDA graph therefore reads the next step's metadata from the same addresses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "engine/backend.h"

namespace spanserve::gpu {

inline constexpr int32_t kMaxSplits = 64;
// The shortest split within one wave of decode CTAs, and over several (MinSplitTokensFor).
inline constexpr int32_t kMinSplitTokens = 128;
inline constexpr int32_t kMinWaveSplitTokens = 4096;
// Per-chunk overhead, in tokens, when splits are balanced: a chunk costs a descriptor read and a
// partly idle pass.
inline constexpr int32_t kChunkCost = 4;

// One chunk as the decode kernel reads it: tokens [range & 0xffff, range >> 16) of `block`.
struct ChunkEntry {
  int32_t block;
  int32_t range;
};

// Where one split of a decode row starts: its chunk range and its first chunk entries, at an
// address the CTA knows from its grid position, so that it issues its first copies one memory
// latency after it starts (reading a bound, then the entries at it, took two).
// A row's splits that hold chunks come first, and row_splits counts them: a CTA of a later
// split leaves at once, and a row of one split writes its output without a merge.
// early_entries: how many of the first entries lie in blocks that no kernel of the step
// writes (entries past the end count): a CTA launched early may copy those before it waits
// for the kernel ahead (the RoPE and KV write), so that its first copies land while that
// kernel, or the launch before, finishes.
inline constexpr int32_t kSplitHeadEntries = 8;
struct SplitHead {
  int32_t chunk_begin, chunk_end;       // [chunk_begin, chunk_end) of the step's chunks
  int32_t row_splits;                   // the row's splits that hold chunks (0 to num_splits)
  int32_t q_row;                        // the row of q and out this decode row reads and writes
  int32_t early_entries;                // leading entries of `first` safe before the wait
  ChunkEntry first[kSplitHeadEntries];  // chunks chunk_begin + i; {0, 0} (empty) past the end
};

// A tile of consecutive causal rows of one sequence, for the prefill kernel.
struct PrefillJob {
  int32_t row_begin;
  int32_t num_rows;
  int32_t table_begin;   // the sequence's block table in the step's block_tables
  int32_t max_position;  // the last token any row of the tile attends
};

// Sampling parameters of one logits row.
struct SampleEntry {
  float temperature;
  int32_t top_k;
  float top_p;
  int32_t active;  // 0: no token wanted (padding, forced token)
  uint64_t seed;
  uint64_t index;
};

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

// Rows a decode step of `rows` rows is padded to: its CUDA graph bucket (powers of two to 8,
// then steps of 8, 16 and 32).
int32_t GraphBucket(int32_t rows);

// Rows of the decode kernel: the non-causal rows, or all padded rows.
int32_t DecodeRows(const StepBatch& batch, int32_t pad_rows);

// The decode attention kernels (decode_attention.cu). CUDA cores: each thread holds 16 bytes of
// a K or V row and the group's queries, so a group of G costs G dot products, shuffles and exp2
// per token. Tensor cores: a warp takes 16-token tiles through mma.sync with the group padded
// to 8 heads, so the loop costs the same for any group. kAuto takes tensor cores for groups of
// 4 and more (the CUDA-core loop reached 95% of copy bandwidth at a group of 4, 100% at 1).
enum class DecodeKernel : int32_t { kAuto, kCudaCores, kTensorCores };
constexpr DecodeKernel ResolveDecodeKernel(DecodeKernel kernel, int32_t group_size) {
  if (kernel != DecodeKernel::kAuto) return kernel;
  return group_size >= 4 ? DecodeKernel::kTensorCores : DecodeKernel::kCudaCores;
}

// CTAs of a decode kernel resident on one SM. CUDA cores: 48 KiB of shared memory each, and
// registers capped for 4 up to 4 query heads per KV head; 8 heads hold 128 registers of Q and
// accumulators alone, so 2. Tensor cores: 3 stages x 4 warps x 16 tokens of K and V, 96 KiB at
// head dim 128 (2 a SM), 48 KiB at 64.
constexpr int32_t DecodeCtasPerSm(DecodeKernel kernel, int32_t head_dim, int32_t group_size) {
  if (ResolveDecodeKernel(kernel, group_size) == DecodeKernel::kTensorCores) {
    return head_dim <= 64 ? 4 : 2;
  }
  return group_size <= 4 ? 4 : 2;
}

// CTAs a SM that split rows aim for: enough stages in flight to keep the SM's share of the
// memory bandwidth busy, about 96 KiB of copies: one tensor-core CTA at head dim 128, two of
// 48 KiB. More (all CTA slots, as before) only adds splits to merge and CTA starts: LLaMA-3-8B
// batch 16, 8k: 1 split 178 us, 2: 180, 4: 185; batch 1: 16 splits 19.8 us, 33: 21.1 (H100,
// kernels/NOTES.md, fifth run).
constexpr int32_t DecodeCtasToFill(DecodeKernel kernel, int32_t head_dim, int32_t group_size) {
  return ResolveDecodeKernel(kernel, group_size) == DecodeKernel::kTensorCores && head_dim > 64 ? 1
                                                                                                : 2;
}

// Splits per decode row. Where rows x kv heads CTAs fit in one wave of resident CTAs: the most
// with which rows x kv heads x splits stay within DecodeCtasToFill a SM. A second wave only
// partly filled runs CTAs as long as the first with the GPU mostly idle: 5 splits took 1.27x the
// time of 4 at batch 16, LLaMA-3-8B. Where they take several waves: the fewest of 1, 2, 4, 8
// whose last wave is at least 90% full (LLaMA-3-8B batch 40, 1.2 waves: 4 splits 7-10% faster at
// 8k-32k; batch 64, 1.94 waves: 1 split best), from 4 for the CUDA-core kernel at 2.5 waves or
// more (kernels/NOTES.md, sixth run).
int32_t SplitsFor(int32_t decode_rows, int32_t num_kv_heads, int32_t group_size, int32_t head_dim,
                  int32_t num_sms, DecodeKernel kernel = DecodeKernel::kAuto);

// The shortest split SplitChunks makes (PlanOptions::min_split_tokens) for the launch SplitsFor
// sizes: 128 tokens within one wave; 4096 over several, where splits only even out the last
// wave, so that rows of a few thousand tokens (short, or sparse) keep one split and write their
// output without a merge (at 2k tokens, 2 splits cost LLaMA-3-8B batch 48 4-26%).
int32_t MinSplitTokensFor(int32_t decode_rows, int32_t num_kv_heads, int32_t group_size,
                          int32_t head_dim, int32_t num_sms, DecodeKernel kernel = DecodeKernel::kAuto);

// How a decode launch splits its rows (PlanOptions' num_splits, min_split_tokens and
// lead_percent).
struct SplitLayout {
  int32_t splits = 1, min_split_tokens = kMinSplitTokens, lead_percent = 0;
};

// A lead layout: each row's split 0 takes `percent` of its cost and the rest is cut into up to
// `grains` splits of at least min_grain_tokens, launched split-major with no more CTAs a SM than
// the split 0s need: the grains go to the CTAs that finish first. multi_wave: also where the
// rows take several waves (an experiment, off in the backend: LLaMA-7B batch 32-64 at 8k-32k
// 0.4-1.7% faster, but batch 24 at 32k 5% slower, where the split 0s alone take 1.45 waves,
// and batch 64 at 2k 0.1-0.7% slower; kernels/NOTES.md, eighth run).
struct LeadOptions {
  int32_t percent = 85, grains = 4, min_grain_tokens = 512;
  bool multi_wave = false;
};

// The backend's layout. SplitsFor's even splits (MinSplitTokensFor's shortest), but a lead
// layout for the CUDA-core kernel where SplitsFor gives one wave of one split a row: such a
// launch ends with its slowest CTA, 5-8% after the median one (kernels/NOTES.md, seventh run);
// with the lead layout LLaMA-7B batch 16 took 0.6-2.5% less time at 8k-32k (eighth run; rows
// under 3.4k tokens keep one split, as shorter grains cost up to 2% at 2k). Not for the
// tensor-core kernel: at one CTA a SM each grain pays its own start and merge (LLaMA-3-8B batch
// 16 2k +21-35% with 128-token grains; 8k-32k within -0.2..+0.7% with 1k-2k-token ones).
SplitLayout SplitLayoutFor(int32_t decode_rows, int32_t num_kv_heads, int32_t group_size,
                           int32_t head_dim, int32_t num_sms,
                           DecodeKernel kernel = DecodeKernel::kAuto, const LeadOptions& lead = {});

// The most row x split slots SplitLayoutFor asks for at up to max_rows decode rows: what the
// partial results of split-KV are allocated for.
int64_t MaxRowSplits(int32_t max_rows, int32_t num_kv_heads, int32_t group_size, int32_t head_dim,
                     int32_t num_sms, DecodeKernel kernel = DecodeKernel::kAuto);

// What the shared memory of a decode launch is sized by, for one device.
struct SmLimits {
  int32_t sms = 0;
  int32_t smem_per_sm = 0, reserved_smem_per_cta = 0, max_smem_per_cta = 0;  // bytes
};

// Dynamic shared memory for a launch whose first `ctas` CTAs of a kernel that needs
// `kernel_smem` should be placed evenly: that, or more, so that no SM can hold more than
// ceil(ctas / SMs) of them. An early launch's CTAs are placed while the kernel before it still
// runs, on SMs as they free up, and the first SMs to free took two each where two fitted (34
// of 128 SMs at LLaMA-3-8B batch 16 2k, +4-8% time), where a plain launch places one a SM. A
// lead layout's grains must wait for a CTA to finish, not share an SM with the lead splits.
int32_t EvenPlacementSmem(int32_t kernel_smem, int64_t ctas, const SmLimits& limits);

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

// The heads of one row's num_splits splits, from the num_splits + 1 bounds SplitChunks wrote and
// the step's chunk entries (those of the row already in place): the splits that hold chunks
// first, in order, then the empty ones. written_blocks (sorted): the blocks that kernels of the
// step write, which end each head's early entries.
void FillSplitHeads(const int32_t* bounds, int32_t num_splits, const ChunkEntry* chunks,
                    int32_t q_row, std::span<const int32_t> written_blocks, SplitHead* heads);

// The blocks a step's rows write their K and V into (kv_block of its rows), sorted, once each.
std::vector<int32_t> WrittenBlocks(std::span<const int32_t> kv_block);

// The capacity a batch needs under these options.
PlanCapacity NeededCapacity(const StepBatch& batch, const PlanOptions& options);

// Fills `blob` (laid out by `layout`, for a capacity that covers NeededCapacity) from a batch
// that passed ValidateStepBatch.
StepPlan BuildStepPlan(const StepBatch& batch, const PlanOptions& options,
                       const PlanLayout& layout, uint8_t* blob);

}  // namespace spanserve::gpu
