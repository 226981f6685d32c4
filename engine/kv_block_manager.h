// Paged KV cache bookkeeping: a fixed pool of blocks, per-sequence block tables. The backend
// owns the memory; this only hands out block ids. Used by the engine thread alone; the
// occupancy counters are atomics so metrics can read them from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

namespace spanserve {

class KvBlockManager {
 public:
  KvBlockManager(int32_t num_blocks, int32_t block_size);

  int32_t block_size() const { return block_size_; }
  int32_t num_total() const { return num_total_; }
  int32_t num_free() const { return num_free_.load(std::memory_order_relaxed); }
  int32_t num_used() const { return num_total_ - num_free(); }

  // Blocks needed for a table to hold num_tokens, beyond what it has.
  int32_t BlocksNeeded(const std::vector<int32_t>& table, int32_t num_tokens) const;
  // Grows the table to hold num_tokens. All or nothing: false (table unchanged) if short.
  bool Grow(std::vector<int32_t>* table, int32_t num_tokens);
  // Returns every block of the table to the pool and empties it.
  void Free(std::vector<int32_t>* table);

 private:
  int32_t block_size_;
  int32_t num_total_;
  std::vector<int32_t> free_list_;
  std::atomic<int32_t> num_free_;
};

}  // namespace spanserve
