#include "engine/core/attention_plan.h"

#include <algorithm>

namespace spanserve {

void AppendRangeChunks(std::span<const TokenRange> ranges, std::span<const int32_t> block_table,
                       int32_t block_size, std::vector<KvChunk>* out) {
  for (const TokenRange& range : ranges) {
    for (int32_t pos = range.begin; pos < range.end;) {
      const int32_t logical = pos / block_size;
      const int32_t block_start = logical * block_size;
      const int32_t end = std::min(range.end, block_start + block_size);
      out->push_back({block_table[logical], pos - block_start, end - block_start});
      pos = end;
    }
  }
}

void ClipRangesBelow(int32_t first, std::vector<TokenRange>* ranges) {
  std::vector<TokenRange> kept;
  for (TokenRange range : *ranges) {
    range.begin = std::max(range.begin, first);
    if (range.begin < range.end) kept.push_back(range);
  }
  *ranges = std::move(kept);
}

void PlanAttentionRow(const SpanTracker& tracker, int32_t pos, bool multi_row,
                      int32_t sliding_window, std::span<const int32_t> block_table,
                      int32_t block_size, std::vector<TokenRange>* ranges,
                      std::vector<KvChunk>* chunks, AttentionRow* row) {
  const bool windowed = sliding_window > 0 && pos >= sliding_window;
  if (multi_row && !windowed && tracker.IsDense(pos)) {
    row->causal = true;
    return;
  }
  tracker.AttendedRanges(pos, ranges);
  if (windowed) ClipRangesBelow(pos - sliding_window + 1, ranges);
  row->chunk_begin = static_cast<int32_t>(chunks->size());
  AppendRangeChunks(*ranges, block_table, block_size, chunks);
  row->chunk_end = static_cast<int32_t>(chunks->size());
}

int32_t CountDistinctBlocks(std::span<const KvChunk> chunks) {
  // Chunks come in position order, so a block cut twice shows up as neighbours.
  int32_t count = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (i == 0 || chunks[i].block != chunks[i - 1].block) ++count;
  }
  return count;
}

}  // namespace spanserve
