#include "engine/kv_block_manager.h"

#include <algorithm>

namespace spanserve {

KvBlockManager::KvBlockManager(int32_t num_blocks, int32_t block_size)
    : block_size_(block_size),
      num_total_(num_blocks),
      run_blocks_(RunBlocks(block_size)),
      num_free_(num_blocks) {
  for (int32_t id = 0; id < num_blocks; ++id) free_blocks_.insert(free_blocks_.end(), id);
  const int32_t runs = (num_blocks + run_blocks_ - 1) / run_blocks_;
  run_free_.resize(runs);
  for (int32_t r = 0; r < runs; ++r) {
    run_free_[r] = RunSize(r);
    free_runs_.insert(free_runs_.end(), r);
  }
}

int32_t KvBlockManager::RunSize(int32_t run) const {
  return std::min(run_blocks_, num_total_ - run * run_blocks_);
}

int32_t KvBlockManager::BlocksNeeded(const std::vector<int32_t>& table,
                                     int32_t num_tokens) const {
  const int32_t want = (num_tokens + block_size_ - 1) / block_size_;
  const int32_t have = static_cast<int32_t>(table.size());
  return want > have ? want - have : 0;
}

int32_t KvBlockManager::Take(int32_t last) {
  const int32_t next = last + 1;
  int32_t block;
  if (last >= 0 && next % run_blocks_ != 0 && next < num_total_ && free_blocks_.count(next)) {
    block = next;
  } else if (!free_runs_.empty()) {
    block = *free_runs_.begin() * run_blocks_;
  } else {
    block = *free_blocks_.begin();
  }
  free_blocks_.erase(block);
  const int32_t run = block / run_blocks_;
  if (run_free_[run]-- == RunSize(run)) free_runs_.erase(run);
  return block;
}

bool KvBlockManager::Grow(std::vector<int32_t>* table, int32_t num_tokens) {
  const int32_t needed = BlocksNeeded(*table, num_tokens);
  if (needed > static_cast<int32_t>(free_blocks_.size())) return false;
  for (int32_t i = 0; i < needed; ++i) table->push_back(Take(table->empty() ? -1 : table->back()));
  num_free_.store(static_cast<int32_t>(free_blocks_.size()), std::memory_order_relaxed);
  return true;
}

void KvBlockManager::Free(std::vector<int32_t>* table) {
  for (const int32_t block : *table) {
    free_blocks_.insert(block);
    const int32_t run = block / run_blocks_;
    if (++run_free_[run] == RunSize(run)) free_runs_.insert(run);
  }
  table->clear();
  num_free_.store(static_cast<int32_t>(free_blocks_.size()), std::memory_order_relaxed);
}

}  // namespace spanserve
