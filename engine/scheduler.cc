#include "engine/scheduler.h"

#include <algorithm>

namespace spanserve {

Scheduler::Scheduler(SchedulerLimits limits, KvBlockManager* blocks)
    : limits_(limits), blocks_(blocks) {}

void Scheduler::AddWaiting(Sequence* seq) { waiting_.push_back(seq); }

void Scheduler::Preempt(Sequence* seq) {
  blocks_->Free(&seq->block_table);
  seq->num_computed = 0;
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
    const int32_t rows = std::min(seq->num_pending(), budget);
    const int32_t needed = blocks_->BlocksNeeded(seq->block_table, seq->num_computed + rows);
    if (blocks_->num_free() - needed < limits_.watermark_blocks && !running_.empty()) break;
    if (!blocks_->Grow(&seq->block_table, seq->num_computed + rows)) break;
    waiting_.pop_front();
    running_.push_back(seq);
    schedule.work.push_back({seq, rows});
    budget -= rows;
  }
  return schedule;
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
