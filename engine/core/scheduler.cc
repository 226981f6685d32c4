#include "engine/core/scheduler.h"

#include <algorithm>

namespace spanserve {

Scheduler::Scheduler(SchedulerLimits limits, KvBlockManager* blocks)
    : limits_(limits), blocks_(blocks) {}

void Scheduler::AddWaiting(Sequence* seq) {
  if (limits_.prefix_caching) {
    seq->prompt_block_hashes =
        PrefixBlockHashes(seq->tokens, seq->prompt_len / blocks_->block_size(), blocks_->block_size());
  }
  waiting_.push_back(seq);
}

void Scheduler::Preempt(Sequence* seq) {
  blocks_->Free(&seq->block_table);
  seq->num_computed = 0;
  seq->num_cached_blocks = 0;
  running_.erase(std::find(running_.begin(), running_.end(), seq));
  waiting_.push_front(seq);
}

Schedule Scheduler::Next() {
  Schedule schedule;
  int32_t budget = limits_.max_batched_tokens;

  // Running sequences, oldest first. Growing one may preempt newer ones (from the back, so
  // none of them is in this step's work yet), or itself when it is the newest.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* seq = running_[i];
    const int32_t rows = std::min(seq->num_pending(), budget);
    bool preempted_self = false;
    while (!preempted_self && !blocks_->Grow(&seq->block_table, seq->num_computed + rows)) {
      Sequence* victim = running_.back();
      preempted_self = victim == seq;
      Preempt(victim);
      ++schedule.num_preempted;
    }
    if (preempted_self) break;
    schedule.work.push_back({seq, rows});
    budget -= rows;
    ++i;
  }

  // Admit waiting sequences in order, unless this step had to preempt.
  while (schedule.num_preempted == 0 && !waiting_.empty() && budget > 0 &&
         num_running() < limits_.max_running) {
    Sequence* seq = waiting_.front();
    // A waiting sequence holds no blocks (new, or preempted and freed).
    PrefixHit hit;
    if (limits_.prefix_caching) {
      const int32_t max_blocks = (seq->num_tokens() - 1) / blocks_->block_size();
      hit = blocks_->FindCached(seq->prompt_block_hashes, seq->tokens, max_blocks);
    }
    const int32_t hit_tokens = static_cast<int32_t>(hit.blocks.size()) * blocks_->block_size();
    const int32_t rows = std::min(seq->num_tokens() - hit_tokens, budget);
    const int32_t needed =
        hit.num_evictable + (hit_tokens + rows + blocks_->block_size() - 1) / blocks_->block_size() -
        static_cast<int32_t>(hit.blocks.size());
    if (blocks_->num_free() - needed < limits_.watermark_blocks && !running_.empty()) break;
    if (needed > blocks_->num_free()) break;
    blocks_->TakeCached(hit, &seq->block_table);
    seq->num_computed = hit_tokens;
    seq->num_cached_blocks = static_cast<int32_t>(hit.blocks.size());
    blocks_->Grow(&seq->block_table, hit_tokens + rows);  // covered by the check above
    if (limits_.prefix_caching) {
      schedule.prefix_query_tokens += seq->num_tokens();
      schedule.prefix_hit_tokens += hit_tokens;
    }
    waiting_.pop_front();
    running_.push_back(seq);
    schedule.work.push_back({seq, rows});
    budget -= rows;
  }
  return schedule;
}

void Scheduler::CacheComputedBlocks(Sequence* seq) {
  const int32_t block_size = blocks_->block_size();
  const int32_t full = std::min<int32_t>(seq->num_computed / block_size,
                                         static_cast<int32_t>(seq->prompt_block_hashes.size()));
  for (int32_t& i = seq->num_cached_blocks; i < full; ++i) {
    const std::span<const int32_t> tokens(seq->tokens.data() + int64_t{i} * block_size, block_size);
    const int32_t parent = i > 0 ? seq->block_table[i - 1] : -1;
    if (!blocks_->CacheBlock(seq->prompt_block_hashes[i], tokens, seq->block_table[i], parent)) {
      // Another block holds this prefix: the chain stops here for this sequence.
      i = static_cast<int32_t>(seq->prompt_block_hashes.size());
      break;
    }
  }
}

void Scheduler::Remove(Sequence* seq) {
  blocks_->Free(&seq->block_table);
  if (auto it = std::find(running_.begin(), running_.end(), seq); it != running_.end()) {
    running_.erase(it);
  } else if (auto w = std::find(waiting_.begin(), waiting_.end(), seq); w != waiting_.end()) {
    waiting_.erase(w);
  }
}

}  // namespace spanserve
