// From attended token ranges to the KV chunks a backend reads. Both backends get the same lists.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/backends/backend.h"
#include "engine/core/span_rules.h"
#include "engine/core/types.h"

namespace spanserve {

// Appends the chunks of `ranges` (sorted, disjoint) over a sequence's block table.
void AppendRangeChunks(std::span<const TokenRange> ranges, std::span<const int32_t> block_table,
                       int32_t block_size, std::vector<KvChunk>* out);

// Drops the tokens of `ranges` (sorted, disjoint) below `first`: a sliding window's start.
void ClipRangesBelow(int32_t first, std::vector<TokenRange>* ranges);

// What query position `pos` of a step attends, into `row`: rows of a multi-row (prefill) step
// that attend densely take the causal path; every other row gets the chunks of its tracker's
// ranges (a decode row's dense list is all its blocks), cut to the last `sliding_window`
// positions where the model has one (0: none). `ranges` is scratch.
void PlanAttentionRow(const SpanTracker& tracker, int32_t pos, bool multi_row,
                      int32_t sliding_window, std::span<const int32_t> block_table,
                      int32_t block_size, std::vector<TokenRange>* ranges,
                      std::vector<KvChunk>* chunks, AttentionRow* row);

// Distinct blocks among chunks that were appended in order for one query.
int32_t CountDistinctBlocks(std::span<const KvChunk> chunks);

inline int32_t DenseBlocks(int32_t position, int32_t block_size) {
  return (position + block_size) / block_size;  // ceil((position + 1) / block_size)
}

}  // namespace spanserve
