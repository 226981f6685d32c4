#include "kernels/launch_plan.h"

#include <algorithm>

namespace spanserve::gpu {

int32_t GraphBucket(int32_t rows) {
  if (rows <= 8) {
    int32_t bucket = 1;
    while (bucket < rows) bucket *= 2;
    return bucket;
  }
  const int32_t step = rows <= 64 ? 8 : (rows <= 128 ? 16 : 32);
  return (rows + step - 1) / step * step;
}

namespace {

// Resident CTA slots of the decode kernel on the whole GPU.
int64_t DecodeSlots(int32_t group_size, int32_t head_dim, int32_t num_sms, DecodeKernel kernel) {
  return int64_t{DecodeCtasPerSm(kernel, head_dim, group_size)} * std::max(num_sms, 1);
}

// CTAs of a decode launch with one split a row.
int64_t RowCtas(int32_t decode_rows, int32_t num_kv_heads) {
  return int64_t{std::max(decode_rows, 1)} * std::max(num_kv_heads, 1);
}

// Whether one split a row fits in one wave of resident CTAs.
bool OneWave(int32_t decode_rows, int32_t num_kv_heads, int32_t group_size, int32_t head_dim,
             int32_t num_sms, DecodeKernel kernel) {
  return RowCtas(decode_rows, num_kv_heads) <= DecodeSlots(group_size, head_dim, num_sms, kernel);
}

}  // namespace

int32_t SplitsFor(int32_t decode_rows, int32_t num_kv_heads, int32_t group_size, int32_t head_dim,
                  int32_t num_sms, DecodeKernel kernel) {
  const int64_t ctas = RowCtas(decode_rows, num_kv_heads);
  const int64_t slots = DecodeSlots(group_size, head_dim, num_sms, kernel);
  if (ctas <= slots) {  // one wave
    const int64_t target =
        int64_t{DecodeCtasToFill(kernel, head_dim, group_size)} * std::max(num_sms, 1);
    return static_cast<int32_t>(std::clamp<int64_t>(target / ctas, 1, kMaxSplits));
  }
  constexpr int32_t kWaveSplits[] = {1, 2, 4, 8};
  // CUDA cores from 2.5 waves: at least 4 (measured, not modelled: LLaMA-7B batch 64 1.3-1.7%
  // faster at 8k-32k, batch 48 1.5% at 32k; the tensor-core kernel at LLaMA-3-8B batch 96 and
  // 128 gains nothing, up to 1.5% slower).
  const bool cuda_cores =
      ResolveDecodeKernel(kernel, group_size) == DecodeKernel::kCudaCores;
  const int32_t fewest = cuda_cores && 2 * ctas >= 5 * slots ? 4 : 1;
  for (const int32_t s : kWaveSplits) {
    if (s < fewest) continue;
    const int64_t waves = (ctas * s + slots - 1) / slots;
    if (10 * ctas * s >= 9 * waves * slots) return s;  // the last wave at least 90% full
  }
  return kWaveSplits[std::size(kWaveSplits) - 1];
}

int32_t MinSplitTokensFor(int32_t decode_rows, int32_t num_kv_heads, int32_t group_size,
                          int32_t head_dim, int32_t num_sms, DecodeKernel kernel) {
  return OneWave(decode_rows, num_kv_heads, group_size, head_dim, num_sms, kernel)
             ? kMinSplitTokens
             : kMinWaveSplitTokens;
}

SplitLayout SplitLayoutFor(int32_t decode_rows, int32_t num_kv_heads, int32_t group_size,
                           int32_t head_dim, int32_t num_sms, DecodeKernel kernel,
                           const LeadOptions& lead) {
  const SplitLayout even{
      SplitsFor(decode_rows, num_kv_heads, group_size, head_dim, num_sms, kernel),
      MinSplitTokensFor(decode_rows, num_kv_heads, group_size, head_dim, num_sms, kernel), 0};
  const bool one_wave = OneWave(decode_rows, num_kv_heads, group_size, head_dim, num_sms, kernel);
  const bool cuda_cores = ResolveDecodeKernel(kernel, group_size) == DecodeKernel::kCudaCores;
  const bool wanted = one_wave ? even.splits == 1 : lead.multi_wave;
  if (lead.percent <= 0 || lead.grains <= 0 || !cuda_cores || !wanted) return even;
  return {std::min(1 + lead.grains, kMaxSplits), lead.min_grain_tokens, lead.percent};
}

int64_t MaxRowSplits(int32_t max_rows, int32_t num_kv_heads, int32_t group_size, int32_t head_dim,
                     int32_t num_sms, DecodeKernel kernel) {
  int64_t most = 0;
  for (int32_t rows = 1; rows <= std::max(max_rows, 1); ++rows) {
    const SplitLayout layout =
        SplitLayoutFor(rows, num_kv_heads, group_size, head_dim, num_sms, kernel);
    most = std::max<int64_t>(most, int64_t{rows} * layout.splits);
  }
  return most;
}

int32_t EvenPlacementSmem(int32_t kernel_smem, int64_t ctas, const SmLimits& limits) {
  if (limits.sms <= 0 || ctas <= 0) return kernel_smem;
  const int64_t per_sm = (ctas + limits.sms - 1) / limits.sms;  // what an even placement needs
  const int64_t room = limits.smem_per_sm / (int64_t{kernel_smem} + limits.reserved_smem_per_cta);
  if (per_sm >= room) return kernel_smem;
  // Just over the share of per_sm + 1 CTAs, in 128-byte steps: per_sm fit, one more does not.
  const int64_t share = limits.smem_per_sm / (per_sm + 1) - limits.reserved_smem_per_cta;
  const int64_t smem = (share / 128 + 1) * 128;
  return smem <= limits.max_smem_per_cta ? static_cast<int32_t>(std::max<int64_t>(smem, kernel_smem))
                                         : kernel_smem;
}

void FillSplitHeads(const int32_t* bounds, int32_t num_splits, const ChunkEntry* chunks,
                    int32_t q_row, const WrittenBlockSet& written, SplitHead* heads) {
  int32_t used = 0;
  for (int32_t s = 0; s < num_splits; ++s) {
    if (bounds[s] < bounds[s + 1]) heads[used++] = {bounds[s], bounds[s + 1], 0, q_row, 0, {}};
  }
  for (int32_t s = used; s < num_splits; ++s) {
    heads[s] = {bounds[num_splits], bounds[num_splits], 0, q_row, 0, {}};
  }
  for (int32_t s = 0; s < num_splits; ++s) {
    SplitHead& head = heads[s];
    head.row_splits = used;
    head.early_entries = kSplitHeadEntries;
    for (int32_t i = 0; i < kSplitHeadEntries; ++i) {
      const int32_t c = head.chunk_begin + i;
      head.first[i] = c < head.chunk_end ? chunks[c] : ChunkEntry{0, 0};
      if (c < head.chunk_end && written.contains(chunks[c].block)) {
        head.early_entries = std::min(head.early_entries, i);
      }
    }
  }
}

WrittenBlockSet::WrittenBlockSet(std::span<const int32_t> kv_block) {
  int32_t max_block = -1;
  for (int32_t b : kv_block) max_block = std::max(max_block, b);
  bits_.assign(static_cast<size_t>(max_block + 1 + 63) / 64, 0);
  for (int32_t b : kv_block) {
    if (b >= 0) bits_[b / 64] |= uint64_t{1} << (b % 64);
  }
}

bool DecodeGemmTakes(int32_t rows, int32_t out, int32_t in) {
  return rows >= 1 && rows <= kDecodeGemmMaxRows && in >= 8 && in % 8 == 0 && out >= 1;
}

DecodeGemmPlan DecodeGemmPlanFor(int32_t out, int32_t in, int32_t num_sms, int32_t splits) {
  DecodeGemmPlan plan;
  plan.tiles = (out + kDecodeGemmTileCols - 1) / kDecodeGemmTileCols;
  plan.k_blocks = (in + kDecodeGemmTileK - 1) / kDecodeGemmTileK;
  if (plan.tiles < 1 || plan.k_blocks < 1) return plan;
  if (splits <= 0) {
    splits = std::max(1, std::max(num_sms, 1) / (2 * plan.tiles));
    splits = std::min(splits, std::max(1, plan.k_blocks / kDecodeGemmMinSplitBlocks));
  }
  plan.splits = std::clamp(splits, 1, std::min(kDecodeGemmMaxSplits, plan.k_blocks));
  return plan;
}

}  // namespace spanserve::gpu
