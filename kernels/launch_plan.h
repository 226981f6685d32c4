// What the kernels read of a step's launch metadata (chunk entries, split heads, prefill tiles,
// sampling parameters) and the launch-shape choices made from the device and the batch's size
// (graph buckets, splits, lead layouts, shared memory placement), as plain C++ so that they are
// tested without a GPU. Knows nothing of the engine: engine/backends/cuda_step_plan.h turns a
// StepBatch into these arrays.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

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

// Rows a decode step of `rows` rows is padded to: its CUDA graph bucket (powers of two to 8,
// then steps of 8, 16 and 32).
int32_t GraphBucket(int32_t rows);

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

// The blocks a step's rows write their K and V into (kv_block of its rows), as a bitmap by block
// id: FillSplitHeads asks it up to kSplitHeadEntries times a split head, a bit test each.
class WrittenBlockSet {
 public:
  explicit WrittenBlockSet(std::span<const int32_t> kv_block);
  bool contains(int32_t block) const {
    const uint32_t b = static_cast<uint32_t>(block);
    return b / 64 < bits_.size() && (bits_[b / 64] >> (b % 64) & 1u);
  }

 private:
  std::vector<uint64_t> bits_;
};

// The heads of one row's num_splits splits, from the num_splits + 1 bounds SplitChunks wrote and
// the step's chunk entries (those of the row already in place): the splits that hold chunks
// first, in order, then the empty ones. written: the blocks that kernels of the step write,
// which end each head's early entries.
void FillSplitHeads(const int32_t* bounds, int32_t num_splits, const ChunkEntry* chunks,
                    int32_t q_row, const WrittenBlockSet& written, SplitHead* heads);


// The decode GEMM (decode_gemm.cu): y[rows, out] (fp32) = x[rows, in] . w[out, in]^T (bf16),
// for decode row counts, where the weight's one read is the whole cost. A CTA takes a tile of
// kDecodeGemmTileCols output columns over a slice of `in` (split-K), all rows at once.
inline constexpr int32_t kDecodeGemmMaxRows = 64;
inline constexpr int32_t kDecodeGemmTileCols = 128;   // output columns (weight rows) of a CTA
inline constexpr int32_t kDecodeGemmTileK = 64;       // `in` of one pipeline stage
inline constexpr int32_t kDecodeGemmMaxSplits = 8;  // a cluster's CTAs (the portable most)
inline constexpr int32_t kDecodeGemmMinSplitBlocks = 4;  // stages of the shortest split
inline constexpr int32_t kDecodeGemmCtasPerSm = 2;    // 72-96 KiB of shared memory each
// Shapes the decode GEMM takes: 1 to 64 rows, `in` a multiple of 8 (16-byte copies). The
// caller falls back to cuBLAS for the rest.
bool DecodeGemmTakes(int32_t rows, int32_t out, int32_t in);

struct DecodeGemmPlan {
  int32_t tiles = 0;     // ceil(out / kDecodeGemmTileCols)
  int32_t k_blocks = 0;  // ceil(in / kDecodeGemmTileK)
  int32_t splits = 1;    // slices of `in`, each of k_blocks / splits stages (or one more)
};
// Splits: as many as keep tiles x splits CTAs within half the SMs (one CTA each), each of at
// least kDecodeGemmMinSplitBlocks stages. Measured, not modelled: on the H100 at 16-64 rows
// every LLaMA-7B product was fastest so (qkv 96 tiles x 1, o 32 x 2, gate_up 172 x 1, down
// 32 x 2, lm_head 250 x 1), and filling a wave of 2 CTAs a SM instead (o, down 8 splits) was
// 30-40% slower at 64 rows (bench/results/cuda/2026-12-07/early_launch). `splits` > 0 forces
// a count (benchmarks, the backend's measured choice), capped by the stages there are.
DecodeGemmPlan DecodeGemmPlanFor(int32_t out, int32_t in, int32_t num_sms, int32_t splits = 0);

}  // namespace spanserve::gpu
