#include "engine/backend.h"

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

}  // namespace spanserve
