// Continuous batching in the shape of vLLM's scheduler: every sequence has tokens and a count
// of computed ones, and each step gives each running sequence the rows it still needs (a
// decode is one row, a prefill chunk many) under a token budget. Running sequences go first;
// when blocks run out the newest running sequence is preempted by recompute (its blocks freed,
// its tokens kept, sent back to the front of the queue). Waiting ones are admitted in order
// while blocks, the running limit and the budget allow. With prefix caching an admitted
// sequence starts from the cached blocks of its prompt's longest cached prefix, computed
// already, keeping at least one token to compute (its logits give the next token).
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "engine/core/kv_block_manager.h"
#include "engine/core/sequence.h"

namespace spanserve {

struct SchedulerLimits {
  int32_t max_running = 64;
  int32_t max_batched_tokens = 2048;
  int32_t watermark_blocks = 0;  // admissions leave at least this many blocks free
  bool prefix_caching = false;   // reuse cached prompt blocks (docs/prefix_caching.md)
};

struct ScheduledWork {
  Sequence* seq = nullptr;
  int32_t num_rows = 0;  // rows [seq->num_computed, seq->num_computed + num_rows)
};

struct Schedule {
  std::vector<ScheduledWork> work;
  int32_t num_preempted = 0;
  // Prefix caching, over this step's admissions: tokens looked up and tokens found cached.
  int64_t prefix_query_tokens = 0;
  int64_t prefix_hit_tokens = 0;
  bool empty() const { return work.empty(); }
};

class Scheduler {
 public:
  Scheduler(SchedulerLimits limits, KvBlockManager* blocks);

  void AddWaiting(Sequence* seq);
  Schedule Next();
  // Takes a sequence out of the queues and frees its blocks.
  void Remove(Sequence* seq);
  // After a step: caches the sequence's full prompt blocks whose KV is now computed.
  void CacheComputedBlocks(Sequence* seq);

  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  bool idle() const { return running_.empty() && waiting_.empty(); }

 private:
  void Preempt(Sequence* seq);

  SchedulerLimits limits_;
  KvBlockManager* blocks_;
  std::vector<Sequence*> running_;  // admission order: the back is the newest
  std::deque<Sequence*> waiting_;
};

}  // namespace spanserve
