#include "engine/backends/backend.h"

#include "absl/strings/str_cat.h"

namespace spanserve {

void StepBatch::Clear() {
  token_ids.clear();
  positions.clear();
  rows.clear();
  chunks.clear();
  seqs.clear();
  block_tables.clear();
  logits_mode = LogitsMode::kNone;
}

namespace {

absl::Status ValidateSeqs(const StepBatch& batch, int32_t num_blocks, int32_t vocab_size) {
  const int32_t n = batch.num_rows();
  const int64_t tables = static_cast<int64_t>(batch.block_tables.size());
  for (int32_t s = 0; s < static_cast<int32_t>(batch.seqs.size()); ++s) {
    const StepSequence& seq = batch.seqs[s];
    if (seq.row_begin < 0 || seq.num_rows < 0 || int64_t{seq.row_begin} + seq.num_rows > n) {
      return absl::InvalidArgumentError(absl::StrCat("seq ", s, ": rows outside the batch"));
    }
    if (seq.table_begin < 0 || seq.num_blocks < 0 ||
        int64_t{seq.table_begin} + seq.num_blocks > tables) {
      return absl::InvalidArgumentError(absl::StrCat("seq ", s, ": block table outside the batch"));
    }
    if (seq.sample && seq.num_rows == 0) {
      return absl::InvalidArgumentError(absl::StrCat("seq ", s, ": sample without a row"));
    }
    if (seq.forced_token >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("seq ", s, ": forced token ",
                                                     seq.forced_token, " out of vocab"));
    }
    for (int32_t r = seq.row_begin; r < seq.row_begin + seq.num_rows; ++r) {
      if (batch.rows[r].seq != s) {
        return absl::InvalidArgumentError(absl::StrCat("row ", r, " is in seq ", s,
                                                       "'s rows but names seq ", batch.rows[r].seq));
      }
    }
  }
  // One unsigned compare an entry, no branch (this runs every step over every table entry);
  // the entry is found again for the message.
  bool bad = false;
  for (int64_t i = 0; i < tables; ++i) {
    bad |= static_cast<uint32_t>(batch.block_tables[i]) >= static_cast<uint32_t>(num_blocks);
  }
  if (!bad) return absl::OkStatus();
  for (int64_t i = 0; i < tables; ++i) {
    if (batch.block_tables[i] < 0 || batch.block_tables[i] >= num_blocks) {
      return absl::InvalidArgumentError(absl::StrCat("block table entry ", batch.block_tables[i],
                                                     " outside the pool of ", num_blocks));
    }
  }
  return absl::OkStatus();
}

// Every chunk in the pool, 0 <= begin <= end <= block_size: unsigned compares, no branch in
// the loop (a dense row has a chunk a block).
bool ChunksValid(const KvChunk* chunks, int32_t n, int32_t num_blocks, int32_t block_size) {
  bool bad = false;
  for (int32_t c = 0; c < n; ++c) {
    const KvChunk& k = chunks[c];
    bad |= (static_cast<uint32_t>(k.block) >= static_cast<uint32_t>(num_blocks)) |
           (static_cast<uint32_t>(k.begin) > static_cast<uint32_t>(k.end)) |
           (static_cast<uint32_t>(k.end) > static_cast<uint32_t>(block_size));
  }
  return !bad;
}

absl::Status ValidateRows(const StepBatch& batch, int32_t num_blocks, int32_t block_size,
                          int32_t vocab_size) {
  const int32_t n = batch.num_rows();
  if (batch.token_ids.size() != batch.rows.size() || batch.positions.size() != batch.rows.size()) {
    return absl::InvalidArgumentError("token_ids, positions and rows differ in length");
  }
  const int32_t num_chunks = static_cast<int32_t>(batch.chunks.size());
  for (int32_t r = 0; r < n; ++r) {
    const AttentionRow& row = batch.rows[r];
    if (row.seq < 0 || row.seq >= static_cast<int32_t>(batch.seqs.size())) {
      return absl::InvalidArgumentError(absl::StrCat("row ", r, ": seq ", row.seq, " not in batch"));
    }
    const StepSequence& seq = batch.seqs[row.seq];
    if (r < seq.row_begin || r >= int64_t{seq.row_begin} + seq.num_rows) {
      return absl::InvalidArgumentError(absl::StrCat("row ", r, " is outside its seq's rows"));
    }
    if (batch.token_ids[r] < 0 || batch.token_ids[r] >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("row ", r, ": token ", batch.token_ids[r], " out of vocab"));
    }
    const int32_t pos = batch.positions[r];
    if (pos < 0 || pos / block_size >= seq.num_blocks) {
      return absl::InvalidArgumentError(
          absl::StrCat("row ", r, ": position ", pos, " beyond its block table"));
    }
    if (row.causal) continue;
    if (row.chunk_begin < 0 || row.chunk_begin > row.chunk_end || row.chunk_end > num_chunks) {
      return absl::InvalidArgumentError(absl::StrCat("row ", r, ": chunks outside the batch"));
    }
    if (!ChunksValid(batch.chunks.data() + row.chunk_begin, row.chunk_end - row.chunk_begin,
                     num_blocks, block_size)) {
      for (int32_t c = row.chunk_begin; c < row.chunk_end; ++c) {  // find it for the message
        const KvChunk& chunk = batch.chunks[c];
        if (!ChunksValid(&chunk, 1, num_blocks, block_size)) {
          return absl::InvalidArgumentError(absl::StrCat("row ", r, ": bad chunk {", chunk.block,
                                                         ", ", chunk.begin, ", ", chunk.end, "}"));
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateStepBatch(const StepBatch& batch, int32_t num_blocks, int32_t block_size,
                               int32_t vocab_size) {
  if (absl::Status s = ValidateRows(batch, num_blocks, block_size, vocab_size); !s.ok()) return s;
  return ValidateSeqs(batch, num_blocks, vocab_size);
}

}  // namespace spanserve
