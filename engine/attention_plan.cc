#include "engine/attention_plan.h"

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

int32_t CountDistinctBlocks(std::span<const KvChunk> chunks) {
  // Chunks come in position order, so a block cut twice shows up as neighbours.
  int32_t count = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (i == 0 || chunks[i].block != chunks[i - 1].block) ++count;
  }
  return count;
}

}  // namespace spanserve
