// The interface between the engine and a compute backend (CPU now, CUDA next): one call per
// engine step. The engine decides what each query row attends; backends only read what they
// are told.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/core/types.h"

namespace spanserve {

// One query token of the step.
struct AttentionRow {
  int32_t seq = 0;           // index into StepBatch::seqs
  bool causal = false;       // attends all of [0, position]; chunks unused
  int32_t chunk_begin = 0;   // else attends StepBatch::chunks[chunk_begin, chunk_end)
  int32_t chunk_end = 0;
};

struct StepSequence {
  int32_t row_begin = 0;     // rows [row_begin, row_begin + num_rows) belong to it, in order
  int32_t num_rows = 0;
  int32_t table_begin = 0;   // StepBatch::block_tables[table_begin, table_begin + num_blocks)
  int32_t num_blocks = 0;    // covers every position written so far and in this step
  bool sample = false;       // sample a token from the last row's logits
  SamplingParams sampling;
  uint64_t sample_index = 0; // index of the output token being sampled (the RNG counter)
  int32_t forced_token = -1; // forced decoding: computed as usual, this token returned
};

enum class LogitsMode { kNone, kSampled, kAllRows };

struct StepBatch {
  std::vector<int32_t> token_ids;      // per row
  std::vector<int32_t> positions;      // per row
  std::vector<AttentionRow> rows;
  std::vector<KvChunk> chunks;         // physical block ids
  std::vector<StepSequence> seqs;
  std::vector<int32_t> block_tables;   // physical block ids, logical order
  LogitsMode logits_mode = LogitsMode::kNone;

  int32_t num_rows() const { return static_cast<int32_t>(rows.size()); }
  void Clear();
};

struct StepOutput {
  std::vector<int32_t> tokens;   // per seq: the sampled (or forced) token, -1 where !sample
  std::vector<float> logits;     // row-major [n, vocab] per logits_mode (sampled seqs or all rows)
};

// Checks a batch against a backend's pool and vocabulary, cheaply: every index in range, rows
// and sequences consistent. Backends call it first, so a bad batch is an error, never a crash.
absl::Status ValidateStepBatch(const StepBatch& batch, int32_t num_blocks, int32_t block_size,
                               int32_t vocab_size);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Writes K and V of every row into the cache, then attends, then samples.
  virtual absl::Status Step(const StepBatch& batch, StepOutput* out) = 0;
  virtual int32_t num_kv_blocks() const = 0;
  virtual int32_t block_size() const = 0;
  virtual int32_t vocab_size() const = 0;
};

}  // namespace spanserve
