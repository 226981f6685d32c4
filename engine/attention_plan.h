// From attended token ranges to the KV chunks a backend reads. Both backends get the same lists.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/types.h"

namespace spanserve {

// Appends the chunks of `ranges` (sorted, disjoint) over a sequence's block table.
void AppendRangeChunks(std::span<const TokenRange> ranges, std::span<const int32_t> block_table,
                       int32_t block_size, std::vector<KvChunk>* out);

// Distinct blocks among chunks that were appended in order for one query.
int32_t CountDistinctBlocks(std::span<const KvChunk> chunks);

inline int32_t DenseBlocks(int32_t position, int32_t block_size) {
  return (position + block_size) / block_size;  // ceil((position + 1) / block_size)
}

}  // namespace spanserve
