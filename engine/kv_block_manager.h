// Paged KV cache bookkeeping: a fixed pool of blocks, per-sequence block tables. The backend
// owns the memory; this only hands out block ids. Used by the engine thread alone; the
// occupancy counters are atomics so metrics can read them from any thread.
//
// Blocks are handed out in runs: the pool is cut into aligned runs of RunBlocks(block_size)
// blocks, and a table grows into the block after its last one while that block is free and in
// the same run, else into the first block of a run that is wholly free, else (the pool nearly
// full) into the lowest free block. A sequence owns whole runs then, and returns them whole,
// so runs survive churn. A run is kRunTokens tokens: at 8 KV heads of 128, 2 MiB of a layer's
// pool, the GPU's large page (the CUDA backend aligns its pools to it). Dense decode attention
// at LLaMA-3-8B batch 16 took 1.1-2.8% less time over 1024-token runs at random places than
// over 128-token ones, and was within 0.7% of each row's blocks in address order (H100,
// bench/results/cuda/2026-11-24/session9).
#pragma once

#include <atomic>
#include <cstdint>
#include <set>
#include <vector>

namespace spanserve {

class KvBlockManager {
 public:
  static constexpr int32_t kRunTokens = 1024;
  // Blocks of a run of run_tokens tokens (at least one).
  static constexpr int32_t RunBlocks(int32_t block_size, int32_t run_tokens = kRunTokens) {
    return block_size >= run_tokens ? 1 : run_tokens / block_size;
  }

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
  int32_t RunSize(int32_t run) const;
  // The block a table whose last block is `last` (-1: none) grows into; taken from the pool.
  int32_t Take(int32_t last);

  int32_t block_size_;
  int32_t num_total_;
  int32_t run_blocks_;
  std::set<int32_t> free_blocks_;
  std::set<int32_t> free_runs_;    // runs whose blocks are all free
  std::vector<int32_t> run_free_;  // free blocks of each run
  std::atomic<int32_t> num_free_;
};

}  // namespace spanserve
