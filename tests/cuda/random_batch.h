// Random step batches for the CUDA backend's tests: sequences with shuffled block tables,
// prefill chunks (causal rows, and rows with chunk lists as after a preemption) and decode rows
// whose chunk lists come from random attended ranges with edges inside blocks.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "engine/backends/backend.h"
#include "engine/core/attention_plan.h"

namespace spanserve::testing {

// Sorted, disjoint ranges inside [0, len) that always hold the last token: dense a third of
// the time, else a sink, a few random ranges and a tail.
inline std::vector<TokenRange> RandomRanges(std::mt19937& rng, int32_t len) {
  if (rng() % 3 == 0) return {{0, len}};
  std::vector<int32_t> points;
  const int32_t cuts = 2 * static_cast<int32_t>(rng() % 5);
  for (int32_t i = 0; i < cuts; ++i) points.push_back(static_cast<int32_t>(rng() % len));
  std::sort(points.begin(), points.end());
  points.erase(std::unique(points.begin(), points.end()), points.end());
  std::vector<TokenRange> ranges;
  for (size_t i = 0; i + 1 < points.size(); i += 2) ranges.push_back({points[i], points[i + 1]});
  const int32_t tail = len - 1 - static_cast<int32_t>(rng() % std::min(len, 40));
  while (!ranges.empty() && ranges.back().end >= tail) {
    const int32_t begin = std::min(ranges.back().begin, tail);
    ranges.pop_back();
    if (ranges.empty() || ranges.back().end < begin) {
      ranges.push_back({begin, len});
      return ranges;
    }
  }
  ranges.push_back({tail, len});
  return ranges;
}

struct RandomBatchSpec {
  int32_t block_size = 16;
  int32_t num_blocks = 4096;  // the pool the tables draw from
  int32_t vocab = 320;
  int32_t max_seqs = 6;
  int32_t max_prefill_rows = 40;
  int32_t max_start = 100;     // first position of a sequence's rows
  bool decode_only = false;    // one non-causal row per sequence
};

inline StepBatch RandomBatch(std::mt19937& rng, const RandomBatchSpec& spec) {
  StepBatch batch;
  std::vector<int32_t> pool(spec.num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  size_t next_block = 0;
  const int32_t num_seqs = 1 + static_cast<int32_t>(rng() % spec.max_seqs);
  for (int32_t s = 0; s < num_seqs; ++s) {
    const bool prefill = !spec.decode_only && rng() % 2 == 0;
    const int32_t rows = prefill ? 1 + static_cast<int32_t>(rng() % spec.max_prefill_rows) : 1;
    const int32_t first = static_cast<int32_t>(rng() % (spec.max_start + 1));
    const int32_t end = first + rows;
    StepSequence seq;
    seq.row_begin = batch.num_rows();
    seq.num_rows = rows;
    seq.table_begin = static_cast<int32_t>(batch.block_tables.size());
    seq.num_blocks = (end + spec.block_size - 1) / spec.block_size;
    for (int32_t b = 0; b < seq.num_blocks; ++b) batch.block_tables.push_back(pool[next_block++]);
    seq.sample = rng() % 4 != 0;
    seq.sampling.temperature = rng() % 2 ? 0.0f : 0.8f;
    seq.sampling.top_k = static_cast<int32_t>(rng() % 50);
    seq.sampling.top_p = rng() % 2 ? 1.0f : 0.9f;
    seq.sampling.seed = rng();
    seq.sample_index = rng() % 1000;
    seq.forced_token = rng() % 3 == 0 ? static_cast<int32_t>(rng() % spec.vocab) : -1;
    const std::span<const int32_t> table(batch.block_tables.data() + seq.table_begin,
                                         seq.num_blocks);
    for (int32_t pos = first; pos < end; ++pos) {
      AttentionRow row;
      row.seq = s;
      row.causal = prefill && rng() % 3 != 0;
      if (!row.causal) {
        row.chunk_begin = static_cast<int32_t>(batch.chunks.size());
        AppendRangeChunks(RandomRanges(rng, pos + 1), table, spec.block_size, &batch.chunks);
        row.chunk_end = static_cast<int32_t>(batch.chunks.size());
      }
      batch.rows.push_back(row);
      batch.token_ids.push_back(static_cast<int32_t>(rng() % spec.vocab));
      batch.positions.push_back(pos);
    }
    batch.seqs.push_back(seq);
  }
  return batch;
}

}  // namespace spanserve::testing
