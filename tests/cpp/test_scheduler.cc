// The KV block manager and the continuous-batching scheduler, on their own.
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "engine/core/kv_block_manager.h"
#include "engine/core/scheduler.h"
#include "gtest/gtest.h"

namespace spanserve {
namespace {

TEST(KvBlockManager, GrowIsAllOrNothingAndFreeReturnsEverything) {
  KvBlockManager blocks(5, 4);
  std::vector<int32_t> a, b;
  EXPECT_TRUE(blocks.Grow(&a, 9));  // 3 blocks
  EXPECT_EQ(a.size(), 3u);
  EXPECT_EQ(blocks.BlocksNeeded(a, 12), 0);
  EXPECT_EQ(blocks.BlocksNeeded(a, 13), 1);
  EXPECT_FALSE(blocks.Grow(&b, 12));  // needs 3, 2 free
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(blocks.num_free(), 2);
  EXPECT_TRUE(blocks.Grow(&b, 8));
  EXPECT_EQ(blocks.num_used(), 5);
  blocks.Free(&a);
  blocks.Free(&b);
  EXPECT_EQ(blocks.num_free(), 5);
  EXPECT_TRUE(a.empty());
}

// Every table made of whole aligned runs, in order (its last run may be partly filled).
void ExpectAlignedRuns(const std::vector<int32_t>& table, int32_t run) {
  for (size_t i = 0; i < table.size(); ++i) {
    if (i % run == 0) {
      EXPECT_EQ(table[i] % run, 0) << "block " << i << " starts no run";
    } else {
      EXPECT_EQ(table[i], table[i - 1] + 1) << "block " << i << " leaves its run";
    }
  }
}

TEST(KvBlockManager, TablesGrowInAlignedRunsThroughChurn) {
  const int32_t block_size = 128, run = KvBlockManager::RunBlocks(block_size);
  ASSERT_EQ(run, 8);
  KvBlockManager blocks(1024, block_size);
  std::mt19937 rng(5);
  std::vector<std::vector<int32_t>> tables(24);
  std::vector<int32_t> tokens(tables.size(), 0);
  // Decode-like growth, a few tokens a step for every sequence, with sequences finishing at
  // random and others starting with a prompt: at most 24 runs held (8 blocks), of 128.
  for (int step = 0; step < 3000; ++step) {
    for (size_t s = 0; s < tables.size(); ++s) {
      if (tokens[s] > 0 && rng() % 200 == 0) {
        ExpectAlignedRuns(tables[s], run);
        blocks.Free(&tables[s]);
        tokens[s] = 0;
      }
      const int32_t grow = tokens[s] == 0 ? 1 + static_cast<int32_t>(rng() % 300) : 1 + rng() % 8;
      if (tokens[s] + grow > 1000) continue;
      ASSERT_TRUE(blocks.Grow(&tables[s], tokens[s] + grow));
      tokens[s] += grow;
    }
  }
  for (auto& table : tables) {
    ExpectAlignedRuns(table, run);
    blocks.Free(&table);
  }
  EXPECT_EQ(blocks.num_free(), 1024);
  // Every run is whole again: 128 tables of one block each start 128 different runs.
  std::vector<std::vector<int32_t>> one(128);
  for (auto& table : one) ASSERT_TRUE(blocks.Grow(&table, 1));
  std::set<int32_t> runs;
  for (const auto& table : one) runs.insert(table[0] / run);
  EXPECT_EQ(runs.size(), 128u);
}

TEST(KvBlockManager, FullPoolIsUsableWhenNoRunIsWhole) {
  KvBlockManager blocks(16, 128);  // two runs of 8
  std::vector<int32_t> a, b, c;
  ASSERT_TRUE(blocks.Grow(&a, 1));
  ASSERT_TRUE(blocks.Grow(&b, 1));
  EXPECT_EQ(a, std::vector<int32_t>{0});
  EXPECT_EQ(b, std::vector<int32_t>{8});
  ASSERT_TRUE(blocks.Grow(&c, 14 * 128));  // the other 14 blocks, from both runs
  EXPECT_EQ(blocks.num_free(), 0);
  std::set<int32_t> all(a.begin(), a.end());
  all.insert(b.begin(), b.end());
  all.insert(c.begin(), c.end());
  EXPECT_EQ(all.size(), 16u);
  EXPECT_FALSE(blocks.Grow(&a, 129));
  blocks.Free(&c);
  ASSERT_TRUE(blocks.Grow(&a, 129));  // a's next block follows its first
  EXPECT_EQ(a, (std::vector<int32_t>{0, 1}));
}

class SchedulerTest : public ::testing::Test {
 protected:
  SchedulerTest() : vocab_(3, 4, 8, std::vector<std::string>(16, "x")) {}

  Sequence* Add(int32_t prompt_len) {
    std::vector<int32_t> prompt(prompt_len, 5);
    GenerateRequest request;
    seqs_.push_back(std::make_unique<Sequence>(seqs_.size(), request, nullptr, prompt, &vocab_,
                                               nullptr));
    return seqs_.back().get();
  }
  // What the engine does after a step: mark rows computed, append a token to sampled ones.
  static void Complete(const Schedule& schedule) {
    for (const ScheduledWork& w : schedule.work) {
      w.seq->num_computed += w.num_rows;
      if (w.seq->num_computed == w.seq->num_tokens()) w.seq->tokens.push_back(6);
    }
  }

  SpanVocab vocab_;
  std::vector<std::unique_ptr<Sequence>> seqs_;
};

TEST_F(SchedulerTest, TokenBudgetChunksPrefillsAndDecodesGoFirst) {
  KvBlockManager blocks(64, 4);
  Scheduler scheduler({.max_running = 8, .max_batched_tokens = 16}, &blocks);
  Sequence* a = Add(10);
  Sequence* b = Add(10);
  Sequence* c = Add(10);
  for (Sequence* s : {a, b, c}) scheduler.AddWaiting(s);
  Schedule first = scheduler.Next();
  ASSERT_EQ(first.work.size(), 2u);
  EXPECT_EQ(first.work[0].num_rows, 10);
  EXPECT_EQ(first.work[1].num_rows, 6);  // chunked prefill
  Complete(first);
  Schedule second = scheduler.Next();
  ASSERT_EQ(second.work.size(), 3u);
  EXPECT_EQ(second.work[0].seq, a);  // a decodes first
  EXPECT_EQ(second.work[0].num_rows, 1);
  EXPECT_EQ(second.work[1].num_rows, 4);   // the rest of b's prompt
  EXPECT_EQ(second.work[2].num_rows, 10);  // all of c, within the 11 left
  EXPECT_EQ(scheduler.num_waiting(), 0);
}

TEST_F(SchedulerTest, MaxRunningLimitsAdmission) {
  KvBlockManager blocks(64, 4);
  Scheduler scheduler({.max_running = 2, .max_batched_tokens = 100}, &blocks);
  for (int i = 0; i < 3; ++i) scheduler.AddWaiting(Add(3));
  Schedule schedule = scheduler.Next();
  EXPECT_EQ(schedule.work.size(), 2u);
  EXPECT_EQ(scheduler.num_running(), 2);
  EXPECT_EQ(scheduler.num_waiting(), 1);
}

TEST_F(SchedulerTest, PreemptsNewestByRecomputeWhenBlocksRunOut) {
  KvBlockManager blocks(4, 4);  // 16 tokens in all
  Scheduler scheduler({.max_running = 8, .max_batched_tokens = 100}, &blocks);
  Sequence* old_seq = Add(8);
  Sequence* new_seq = Add(8);
  scheduler.AddWaiting(old_seq);
  scheduler.AddWaiting(new_seq);
  Schedule first = scheduler.Next();
  ASSERT_EQ(first.work.size(), 2u);
  EXPECT_EQ(blocks.num_free(), 0);
  Complete(first);  // both now hold 9 tokens: each needs a third block
  Schedule second = scheduler.Next();
  EXPECT_EQ(second.num_preempted, 1);
  ASSERT_EQ(second.work.size(), 1u);
  EXPECT_EQ(second.work[0].seq, old_seq);
  EXPECT_EQ(new_seq->num_computed, 0);   // recompute from scratch later
  EXPECT_EQ(new_seq->num_tokens(), 9);   // its output so far is kept
  EXPECT_TRUE(new_seq->block_table.empty());
  EXPECT_EQ(scheduler.num_waiting(), 1);
  scheduler.Remove(old_seq);
  EXPECT_EQ(blocks.num_free(), 4);
  Schedule third = scheduler.Next();  // the preempted one comes back, all 9 tokens at once
  ASSERT_EQ(third.work.size(), 1u);
  EXPECT_EQ(third.work[0].seq, new_seq);
  EXPECT_EQ(third.work[0].num_rows, 9);
}

TEST_F(SchedulerTest, OnlySequencePreemptsItselfWhenThePoolIsTooSmall) {
  KvBlockManager blocks(2, 4);
  Scheduler scheduler({.max_running = 8, .max_batched_tokens = 100}, &blocks);
  Sequence* only = Add(8);
  scheduler.AddWaiting(only);
  Complete(scheduler.Next());  // 9 tokens, 2 blocks: cannot grow to a third
  Schedule next = scheduler.Next();
  EXPECT_EQ(next.num_preempted, 1);  // the newest is itself
  EXPECT_TRUE(next.work.empty());
  EXPECT_EQ(scheduler.num_waiting(), 1);
  EXPECT_EQ(blocks.num_free(), 2);
}

}  // namespace
}  // namespace spanserve
