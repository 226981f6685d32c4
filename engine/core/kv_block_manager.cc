#include "engine/core/kv_block_manager.h"

#include <algorithm>

namespace spanserve {
namespace {

// splitmix64's finaliser: every input bit reaches every output bit.
uint64_t Mix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

std::vector<uint64_t> PrefixBlockHashes(std::span<const int32_t> tokens, int32_t num_blocks,
                                        int32_t block_size) {
  std::vector<uint64_t> hashes;
  uint64_t hash = 0x9e3779b97f4a7c15ULL;
  for (int32_t b = 0; b < num_blocks; ++b) {
    for (int32_t i = 0; i < block_size; ++i) {
      hash = Mix(hash + static_cast<uint32_t>(tokens[int64_t{b} * block_size + i]));
    }
    hashes.push_back(hash);
  }
  return hashes;
}

KvBlockManager::KvBlockManager(int32_t num_blocks, int32_t block_size)
    : block_size_(block_size),
      num_total_(num_blocks),
      run_blocks_(RunBlocks(block_size)),
      refs_(num_blocks, 0),
      entries_(num_blocks),
      evictable_pos_(num_blocks),
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

void KvBlockManager::PublishCounts() {
  const int32_t evictable = static_cast<int32_t>(evictable_.size());
  num_free_.store(static_cast<int32_t>(free_blocks_.size()) + evictable, std::memory_order_relaxed);
  num_evictable_.store(evictable, std::memory_order_relaxed);
}

int32_t KvBlockManager::BlocksNeeded(const std::vector<int32_t>& table,
                                     int32_t num_tokens) const {
  const int32_t want = (num_tokens + block_size_ - 1) / block_size_;
  const int32_t have = static_cast<int32_t>(table.size());
  return want > have ? want - have : 0;
}

void KvBlockManager::Uncache(int32_t block) {
  cache_.erase(entries_[block].hash);
  entries_[block] = Entry{};
}

void KvBlockManager::ReturnFree(int32_t block) {
  free_blocks_.insert(block);
  const int32_t run = block / run_blocks_;
  if (++run_free_[run] == RunSize(run)) free_runs_.insert(run);
}

int32_t KvBlockManager::Take(int32_t last) {
  const int32_t next = last + 1;
  int32_t block;
  if (free_blocks_.empty()) {
    // Only evictable cached blocks are left: the least recently released goes.
    block = evictable_.front();
    evictable_.pop_front();
    Uncache(block);
    refs_[block] = 1;
    return block;
  }
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
  refs_[block] = 1;
  return block;
}

bool KvBlockManager::Grow(std::vector<int32_t>* table, int32_t num_tokens) {
  const int32_t needed = BlocksNeeded(*table, num_tokens);
  if (needed > num_free()) return false;
  for (int32_t i = 0; i < needed; ++i) table->push_back(Take(table->empty() ? -1 : table->back()));
  PublishCounts();
  return true;
}

void KvBlockManager::Free(std::vector<int32_t>* table) {
  // From the back, so a sequence's last blocks are evicted before the prefix they extend.
  for (auto it = table->rbegin(); it != table->rend(); ++it) {
    const int32_t block = *it;
    if (--refs_[block] > 0) continue;
    if (entries_[block].serial != 0) {
      evictable_pos_[block] = evictable_.insert(evictable_.end(), block);
    } else {
      ReturnFree(block);
    }
  }
  table->clear();
  PublishCounts();
}

PrefixHit KvBlockManager::FindCached(std::span<const uint64_t> hashes,
                                     std::span<const int32_t> tokens, int32_t max_blocks) const {
  PrefixHit hit;
  uint64_t parent_serial = 0;
  const int32_t limit = std::min<int32_t>(max_blocks, static_cast<int32_t>(hashes.size()));
  for (int32_t i = 0; i < limit; ++i) {
    const auto found = cache_.find(hashes[i]);
    if (found == cache_.end()) break;
    const Entry& entry = entries_[found->second];
    std::span<const int32_t> block_tokens = tokens.subspan(int64_t{i} * block_size_, block_size_);
    if (entry.parent_serial != parent_serial ||
        !std::equal(block_tokens.begin(), block_tokens.end(), entry.tokens.begin(),
                    entry.tokens.end())) {
      break;  // a collision or a stale entry: a miss
    }
    hit.blocks.push_back(found->second);
    hit.num_evictable += refs_[found->second] == 0;
    parent_serial = entry.serial;
  }
  return hit;
}

void KvBlockManager::TakeCached(const PrefixHit& hit, std::vector<int32_t>* table) {
  for (const int32_t block : hit.blocks) {
    if (refs_[block]++ == 0) evictable_.erase(evictable_pos_[block]);
    table->push_back(block);
  }
  PublishCounts();
}

bool KvBlockManager::CacheBlock(uint64_t hash, std::span<const int32_t> block_tokens,
                                int32_t block, int32_t parent) {
  uint64_t parent_serial = 0;
  if (parent >= 0) {
    parent_serial = entries_[parent].serial;
    if (parent_serial == 0) return false;
  }
  if (entries_[block].serial != 0 || !cache_.emplace(hash, block).second) return false;
  entries_[block] = {hash, next_serial_++, parent_serial,
                     std::vector<int32_t>(block_tokens.begin(), block_tokens.end())};
  return true;
}

void KvBlockManager::DropCache() {
  for (const int32_t block : evictable_) ReturnFree(block);
  evictable_.clear();
  for (const auto& [hash, block] : cache_) entries_[block] = Entry{};
  cache_.clear();
  PublishCounts();
}

}  // namespace spanserve
