#include "engine/kv_block_manager.h"

namespace spanserve {

KvBlockManager::KvBlockManager(int32_t num_blocks, int32_t block_size)
    : block_size_(block_size), num_total_(num_blocks), num_free_(num_blocks) {
  // Hand out low ids first: a LIFO stack with block 0 on top.
  free_list_.reserve(num_blocks);
  for (int32_t id = num_blocks - 1; id >= 0; --id) free_list_.push_back(id);
}

int32_t KvBlockManager::BlocksNeeded(const std::vector<int32_t>& table,
                                     int32_t num_tokens) const {
  const int32_t want = (num_tokens + block_size_ - 1) / block_size_;
  const int32_t have = static_cast<int32_t>(table.size());
  return want > have ? want - have : 0;
}

bool KvBlockManager::Grow(std::vector<int32_t>* table, int32_t num_tokens) {
  const int32_t needed = BlocksNeeded(*table, num_tokens);
  if (needed > static_cast<int32_t>(free_list_.size())) return false;
  for (int32_t i = 0; i < needed; ++i) {
    table->push_back(free_list_.back());
    free_list_.pop_back();
  }
  num_free_.store(static_cast<int32_t>(free_list_.size()), std::memory_order_relaxed);
  return true;
}

void KvBlockManager::Free(std::vector<int32_t>* table) {
  free_list_.insert(free_list_.end(), table->rbegin(), table->rend());
  table->clear();
  num_free_.store(static_cast<int32_t>(free_list_.size()), std::memory_order_relaxed);
}

}  // namespace spanserve
