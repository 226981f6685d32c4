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
//
// Prefix caching (docs/prefix_caching.md): a full prompt block whose K and V are computed can be
// cached under the hash chain of its tokens (CacheBlock). Blocks are reference counted: tables
// share cached blocks (TakeCached). A cached block no table holds is *evictable*: it keeps its KV
// on an LRU list and counts as free (num_free), and is evicted, least recently released first,
// only when no plain free block is left. Lookups compare tokens and the parent link exactly, so
// a hash collision is a miss, never a wrong hit.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <set>
#include <span>
#include <unordered_map>
#include <vector>

namespace spanserve {

// The cached prefix a sequence can reuse, as FindCached found it.
struct PrefixHit {
  std::vector<int32_t> blocks;  // physical ids of the leading blocks, in order
  int32_t num_evictable = 0;    // of them, those no table holds now (taking them uses free room)
};

// The chain hashes of the first num_blocks full blocks of tokens: block i's hash mixes block
// i-1's hash with block i's token ids, so it names the whole prefix up to the block's end.
std::vector<uint64_t> PrefixBlockHashes(std::span<const int32_t> tokens, int32_t num_blocks,
                                        int32_t block_size);

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
  // Blocks no table holds: plain free ones and evictable cached ones.
  int32_t num_free() const { return num_free_.load(std::memory_order_relaxed); }
  int32_t num_used() const { return num_total_ - num_free(); }
  // Cached blocks no table holds (part of num_free).
  int32_t num_evictable() const { return num_evictable_.load(std::memory_order_relaxed); }
  // Cached blocks, held or evictable.
  int32_t num_cached() const { return static_cast<int32_t>(cache_.size()); }

  // Blocks needed for a table to hold num_tokens, beyond what it has.
  int32_t BlocksNeeded(const std::vector<int32_t>& table, int32_t num_tokens) const;
  // Grows the table to hold num_tokens. All or nothing: false (table unchanged) if short.
  // Evicts cached blocks (least recently released first) only when no plain free block is left.
  bool Grow(std::vector<int32_t>* table, int32_t num_tokens);
  // Releases every block of the table and empties it: a block no other table holds becomes
  // free, or evictable if cached (the table's last blocks first in eviction order).
  void Free(std::vector<int32_t>* table);

  // The longest run of leading blocks cached under `hashes` (block i's chain hash), at most
  // max_blocks; tokens are the sequence's, compared exactly. Changes nothing.
  PrefixHit FindCached(std::span<const uint64_t> hashes, std::span<const int32_t> tokens,
                       int32_t max_blocks) const;
  // Appends the hit's blocks to an empty table, holding them. The caller checked num_free()
  // covers hit.num_evictable; the hit must be fresh from FindCached (nothing changed between).
  void TakeCached(const PrefixHit& hit, std::vector<int32_t>* table);
  // Caches a held block whose KV is computed, under its chain hash and tokens; parent is the
  // block before it in the table (-1 for the first), itself cached. False (nothing changed)
  // when the parent is not cached or the hash is taken (another block holds that prefix).
  bool CacheBlock(uint64_t hash, std::span<const int32_t> block_tokens, int32_t block,
                  int32_t parent);
  // Frees every evictable block and forgets every cache entry (held blocks stay held).
  void DropCache();

 private:
  struct Entry {
    uint64_t hash = 0;
    uint64_t serial = 0;         // unique per caching, never reused
    uint64_t parent_serial = 0;  // 0: the first block of a sequence
    std::vector<int32_t> tokens;
  };

  int32_t RunSize(int32_t run) const;
  // The block a table whose last block is `last` (-1: none) grows into; taken from the pool.
  int32_t Take(int32_t last);
  void ReturnFree(int32_t block);
  void Uncache(int32_t block);
  void PublishCounts();

  int32_t block_size_;
  int32_t num_total_;
  int32_t run_blocks_;
  std::set<int32_t> free_blocks_;  // plain free blocks (not cached, not held)
  std::set<int32_t> free_runs_;    // runs whose blocks are all plain free
  std::vector<int32_t> run_free_;  // plain free blocks of each run
  std::vector<int32_t> refs_;      // tables holding each block

  std::unordered_map<uint64_t, int32_t> cache_;  // chain hash -> block
  std::vector<Entry> entries_;                   // per block; serial 0: not cached
  std::list<int32_t> evictable_;                 // front: released longest ago
  std::vector<std::list<int32_t>::iterator> evictable_pos_;
  uint64_t next_serial_ = 1;

  std::atomic<int32_t> num_free_;
  std::atomic<int32_t> num_evictable_{0};
};

}  // namespace spanserve
