// Prefix caching in the KV block manager and the scheduler: hash chains, sharing by reference
// count, the LRU order of eviction, exact matching, and the pool all free once the cache drops.
#include <numeric>
#include <random>
#include <vector>

#include "engine/core/kv_block_manager.h"
#include "engine/core/scheduler.h"
#include "gtest/gtest.h"

namespace spanserve {
namespace {

constexpr int32_t kBlock = 4;

std::vector<int32_t> Tokens(int32_t n, int32_t first) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

// Grows a table for tokens and caches all its full blocks, as the scheduler does after a step.
std::vector<int32_t> ComputeAndCache(KvBlockManager* blocks, const std::vector<int32_t>& tokens) {
  std::vector<int32_t> table;
  EXPECT_TRUE(blocks->Grow(&table, static_cast<int32_t>(tokens.size())));
  const std::vector<uint64_t> hashes =
      PrefixBlockHashes(tokens, static_cast<int32_t>(tokens.size()) / kBlock, kBlock);
  for (size_t i = 0; i < hashes.size(); ++i) {
    std::span<const int32_t> block(tokens.data() + i * kBlock, kBlock);
    EXPECT_TRUE(blocks->CacheBlock(hashes[i], block, table[i], i ? table[i - 1] : -1));
  }
  return table;
}

PrefixHit Find(const KvBlockManager& blocks, const std::vector<int32_t>& tokens) {
  const int32_t n = static_cast<int32_t>(tokens.size()) / kBlock;
  return blocks.FindCached(PrefixBlockHashes(tokens, n, kBlock), tokens, n);
}

TEST(PrefixBlockHashes, NameTheWholePrefix) {
  const std::vector<int32_t> a = Tokens(12, 1);
  std::vector<int32_t> b = a;
  b[1] = 99;  // differs in block 0 only
  const std::vector<uint64_t> ha = PrefixBlockHashes(a, 3, kBlock);
  const std::vector<uint64_t> hb = PrefixBlockHashes(b, 3, kBlock);
  ASSERT_EQ(ha.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_NE(ha[i], hb[i]) << "block " << i;
  EXPECT_EQ(PrefixBlockHashes(a, 2, kBlock), std::vector<uint64_t>(ha.begin(), ha.begin() + 2));
}

TEST(PrefixCache, SharedBlocksAreCountedOnceAndKeptAfterRelease) {
  KvBlockManager blocks(8, kBlock);
  const std::vector<int32_t> prompt = Tokens(10, 1);  // 2 full blocks and a partial one
  std::vector<int32_t> first;
  ASSERT_TRUE(blocks.Grow(&first, 10));
  const std::vector<uint64_t> hashes = PrefixBlockHashes(prompt, 2, kBlock);
  ASSERT_TRUE(blocks.CacheBlock(hashes[0], {prompt.data(), 4}, first[0], -1));
  ASSERT_TRUE(blocks.CacheBlock(hashes[1], {prompt.data() + 4, 4}, first[1], first[0]));
  EXPECT_EQ(blocks.num_cached(), 2);

  // A second sequence with the same prompt shares both full blocks: no free room used.
  PrefixHit hit = blocks.FindCached(hashes, prompt, 2);
  ASSERT_EQ(hit.blocks, std::vector<int32_t>(first.begin(), first.begin() + 2));
  EXPECT_EQ(hit.num_evictable, 0);
  std::vector<int32_t> second;
  blocks.TakeCached(hit, &second);
  EXPECT_EQ(blocks.num_used(), 3);
  ASSERT_TRUE(blocks.Grow(&second, 10));
  EXPECT_EQ(blocks.num_used(), 4);

  // Both released: the cached blocks are evictable, counted free, still found.
  blocks.Free(&first);
  EXPECT_EQ(blocks.num_used(), 3);
  blocks.Free(&second);
  EXPECT_EQ(blocks.num_free(), 8);
  EXPECT_EQ(blocks.num_evictable(), 2);
  hit = blocks.FindCached(hashes, prompt, 2);
  EXPECT_EQ(hit.blocks.size(), 2u);
  EXPECT_EQ(hit.num_evictable, 2);
  // max_blocks caps the hit (the scheduler keeps a token to compute).
  EXPECT_EQ(blocks.FindCached(hashes, prompt, 1).blocks.size(), 1u);

  blocks.DropCache();
  EXPECT_EQ(blocks.num_cached(), 0);
  EXPECT_EQ(blocks.num_evictable(), 0);
  EXPECT_EQ(blocks.num_free(), 8);
  EXPECT_TRUE(blocks.FindCached(hashes, prompt, 2).blocks.empty());
}

TEST(PrefixCache, MatchIsExactDespiteEqualHashes) {
  KvBlockManager blocks(8, kBlock);
  const std::vector<int32_t> a = Tokens(8, 1);
  std::vector<int32_t> table = ComputeAndCache(&blocks, a);
  // Other tokens presented under a's hashes (a forged collision): a miss from that block on.
  std::vector<int32_t> b = a;
  b[6] = 77;
  const PrefixHit hit = blocks.FindCached(PrefixBlockHashes(a, 2, kBlock), b, 2);
  EXPECT_EQ(hit.blocks, std::vector<int32_t>{table[0]});
  // A second block of the same prefix is not cached twice; a child of an uncached parent never.
  std::vector<int32_t> dup;
  ASSERT_TRUE(blocks.Grow(&dup, 8));
  const std::vector<uint64_t> h = PrefixBlockHashes(a, 2, kBlock);
  EXPECT_FALSE(blocks.CacheBlock(h[0], {a.data(), 4}, dup[0], -1));
  EXPECT_FALSE(blocks.CacheBlock(h[1] ^ 1, {a.data() + 4, 4}, dup[1], dup[0]));
  blocks.Free(&dup);
  blocks.Free(&table);
  EXPECT_EQ(blocks.num_evictable(), 2);
  EXPECT_EQ(blocks.num_free(), 8);
}

TEST(PrefixCache, EvictsLeastRecentlyReleasedAndTailsFirst) {
  KvBlockManager blocks(6, kBlock);
  const std::vector<int32_t> a = Tokens(8, 1), b = Tokens(8, 100), c = Tokens(8, 200);
  std::vector<int32_t> ta = ComputeAndCache(&blocks, a);
  std::vector<int32_t> tb = ComputeAndCache(&blocks, b);
  std::vector<int32_t> tc = ComputeAndCache(&blocks, c);
  blocks.Free(&tb);  // released first: b goes first
  blocks.Free(&ta);
  blocks.Free(&tc);
  EXPECT_EQ(blocks.num_free(), 6);
  EXPECT_EQ(blocks.num_evictable(), 6);

  // A hit on a refreshes it: released again, it becomes the most recent.
  std::vector<int32_t> again;
  PrefixHit hit = Find(blocks, a);
  ASSERT_EQ(hit.blocks.size(), 2u);
  blocks.TakeCached(hit, &again);
  blocks.Free(&again);

  // One fresh block: b's tail goes (its last block), b's first block stays cached.
  std::vector<int32_t> fresh;
  ASSERT_TRUE(blocks.Grow(&fresh, 4));
  EXPECT_EQ(Find(blocks, b).blocks.size(), 1u);
  EXPECT_EQ(Find(blocks, a).blocks.size(), 2u);
  EXPECT_EQ(Find(blocks, c).blocks.size(), 2u);
  // Three more: b's head, then c (released before a's refresh), tail first.
  ASSERT_TRUE(blocks.Grow(&fresh, 8));
  EXPECT_TRUE(Find(blocks, b).blocks.empty());
  EXPECT_EQ(Find(blocks, c).blocks.size(), 2u);
  ASSERT_TRUE(blocks.Grow(&fresh, 12));
  EXPECT_EQ(Find(blocks, c).blocks.size(), 1u);
  EXPECT_EQ(Find(blocks, a).blocks.size(), 2u);
  ASSERT_TRUE(blocks.Grow(&fresh, 16));
  EXPECT_TRUE(Find(blocks, c).blocks.empty());
  EXPECT_EQ(Find(blocks, a).blocks.size(), 2u);
  EXPECT_EQ(blocks.num_free(), 2);
  EXPECT_FALSE(blocks.Grow(&fresh, 28));  // needs 3: no room, nothing evicted
  EXPECT_EQ(Find(blocks, a).blocks.size(), 2u);
  blocks.Free(&fresh);
  blocks.DropCache();
  EXPECT_EQ(blocks.num_free(), 6);
  EXPECT_EQ(blocks.num_cached(), 0);
}

TEST(PrefixCache, UncachedTablesStillGrowInAlignedRuns) {
  const int32_t block_size = 128, run = KvBlockManager::RunBlocks(block_size);
  KvBlockManager blocks(4 * run, block_size);
  // A cached prefix in the first run, released: fresh tables take whole free runs.
  const std::vector<int32_t> prompt = Tokens(2 * block_size, 1);
  std::vector<int32_t> cached;
  ASSERT_TRUE(blocks.Grow(&cached, 2 * block_size));
  const std::vector<uint64_t> h = PrefixBlockHashes(prompt, 2, block_size);
  ASSERT_TRUE(blocks.CacheBlock(h[0], {prompt.data(), 128}, cached[0], -1));
  ASSERT_TRUE(blocks.CacheBlock(h[1], {prompt.data() + 128, 128}, cached[1], cached[0]));
  blocks.Free(&cached);
  std::vector<int32_t> fresh;
  ASSERT_TRUE(blocks.Grow(&fresh, (run + 2) * block_size));
  for (int32_t i = 0; i < run + 2; ++i) {
    EXPECT_EQ(fresh[i], run + i) << "block " << i;  // runs 1 and 2, in order
  }
  EXPECT_EQ(blocks.num_evictable(), 2);
}

// The scheduler starts an admitted sequence past its cached prefix, keeps a token to compute,
// caches what a step computed, and through random churn (preemption, cancellation) leaves the
// pool all free once the cache drops.
std::unique_ptr<Sequence> NewSequence(uint64_t id, std::vector<int32_t> prompt) {
  static const SpanVocab vocab(3, 4, 8, std::vector<std::string>(2000, "x"));
  return std::make_unique<Sequence>(id, GenerateRequest{}, EventSink{}, std::move(prompt),
                                    &vocab, nullptr);
}

void RunStep(Scheduler* scheduler, const Schedule& schedule) {
  for (const ScheduledWork& work : schedule.work) {
    work.seq->num_computed += work.num_rows;
    if (work.seq->num_computed == work.seq->num_tokens()) work.seq->tokens.push_back(5);
    scheduler->CacheComputedBlocks(work.seq);
  }
}

TEST(PrefixCacheScheduler, SecondSequenceStartsAfterTheCachedPrefix) {
  KvBlockManager blocks(16, kBlock);
  Scheduler scheduler({8, 64, 0, true}, &blocks);
  auto a = NewSequence(1, Tokens(12, 1));  // 3 full blocks
  scheduler.AddWaiting(a.get());
  Schedule s = scheduler.Next();
  ASSERT_EQ(s.work.size(), 1u);
  EXPECT_EQ(s.prefix_query_tokens, 12);
  EXPECT_EQ(s.prefix_hit_tokens, 0);
  RunStep(&scheduler, s);
  EXPECT_EQ(blocks.num_cached(), 3);

  // Same 12 tokens: only 2 blocks are used (one token must be computed); 14 tokens: all 3.
  auto b = NewSequence(2, Tokens(12, 1));
  std::vector<int32_t> longer = Tokens(12, 1);
  longer.push_back(50);
  longer.push_back(51);
  auto c = NewSequence(3, longer);
  scheduler.AddWaiting(b.get());
  scheduler.AddWaiting(c.get());
  s = scheduler.Next();
  ASSERT_EQ(s.work.size(), 3u);
  EXPECT_EQ(s.work[1].seq, b.get());
  EXPECT_EQ(b->num_computed, 8);
  EXPECT_EQ(s.work[1].num_rows, 4);
  EXPECT_EQ(c->num_computed, 12);
  EXPECT_EQ(s.work[2].num_rows, 2);
  EXPECT_EQ(s.prefix_query_tokens, 26);
  EXPECT_EQ(s.prefix_hit_tokens, 20);
  EXPECT_EQ(std::vector<int32_t>(c->block_table.begin(), c->block_table.begin() + 3),
            std::vector<int32_t>(a->block_table.begin(), a->block_table.begin() + 3));
  scheduler.Remove(a.get());
  scheduler.Remove(b.get());
  scheduler.Remove(c.get());
  EXPECT_EQ(blocks.num_free(), 16);
  blocks.DropCache();
  EXPECT_EQ(blocks.num_evictable(), 0);
}

TEST(PrefixCacheScheduler, RandomChurnReturnsThePoolAllFree) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    KvBlockManager blocks(12, kBlock);
    Scheduler scheduler({4, 16, 0, true}, &blocks);
    std::vector<std::unique_ptr<Sequence>> seqs;
    int64_t hits = 0;
    for (int step = 0; step < 60; ++step) {
      if (rng() % 3 == 0 && seqs.size() < 8) {
        // Prompts share a prefix of 0-3 blocks of one of two systems.
        std::vector<int32_t> prompt = Tokens(4 * (rng() % 4), 1 + 1000 * (rng() % 2));
        const int32_t own = 1 + rng() % 6;
        for (int32_t i = 0; i < own; ++i) prompt.push_back(500 + rng() % 50);
        seqs.push_back(NewSequence(seqs.size() + 1, prompt));
        scheduler.AddWaiting(seqs.back().get());
      }
      const Schedule s = scheduler.Next();
      hits += s.prefix_hit_tokens;
      RunStep(&scheduler, s);
      for (auto& seq : seqs) {  // finish long ones, cancel some at random
        if (seq && (seq->num_output() >= 6 || rng() % 17 == 0)) {
          scheduler.Remove(seq.get());
          seq.reset();
        }
      }
      EXPECT_LE(blocks.num_used(), blocks.num_total());
    }
    for (auto& seq : seqs) {
      if (seq) scheduler.Remove(seq.get());
    }
    EXPECT_EQ(blocks.num_free(), 12) << "trial " << trial;
    blocks.DropCache();
    EXPECT_EQ(blocks.num_evictable(), 0);
    EXPECT_EQ(blocks.num_cached(), 0);
    // Every block is plain free again: a table can take the whole pool without evicting.
    std::vector<int32_t> all;
    EXPECT_TRUE(blocks.Grow(&all, 12 * kBlock));
    EXPECT_EQ(blocks.num_cached(), 0);
    if (trial == 0) EXPECT_GT(hits, 0);
  }
}

}  // namespace
}  // namespace spanserve
