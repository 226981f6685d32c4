// server/write_queue.h: the streams' writes, run off the engine thread.
#include "server/write_queue.h"

#include <atomic>
#include <chrono>
#include <future>
#include <set>
#include <thread>

#include "gtest/gtest.h"

namespace spanserve {
namespace {

TEST(WriteQueueTest, EveryTaskRunsOnceOffThePostingThreads) {
  std::atomic<int> runs{0};
  std::mutex mu;
  std::set<std::thread::id> posters, runners;
  {
    WriteQueue queue(2);
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&] {
        {
          std::lock_guard<std::mutex> lock(mu);
          posters.insert(std::this_thread::get_id());
        }
        for (int i = 0; i < 1000; ++i) {
          queue.Post([&] {
            ++runs;
            std::lock_guard<std::mutex> lock(mu);
            runners.insert(std::this_thread::get_id());
          });
        }
      });
    }
    for (std::thread& t : threads) t.join();
  }
  EXPECT_EQ(runs.load(), 8000);
  EXPECT_LE(runners.size(), 2u);
  for (const std::thread::id& id : runners) EXPECT_EQ(posters.count(id), 0u);
}

TEST(WriteQueueTest, DestructorRunsWhatIsStillQueued) {
  std::atomic<int> runs{0};
  {
    WriteQueue queue(1);
    for (int i = 0; i < 50; ++i) {
      queue.Post([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        ++runs;
      });
    }
  }
  EXPECT_EQ(runs.load(), 50);
}

TEST(WriteQueueTest, TwoThreadsRunTwoTasksAtOnce) {
  // Each task waits for the other: one thread alone would never finish the first.
  std::promise<void> a, b;
  std::shared_future<void> a_ran = a.get_future().share(), b_ran = b.get_future().share();
  std::atomic<int> met{0};
  {
    WriteQueue queue(2);
    queue.Post([&] { a.set_value(); met += b_ran.wait_for(std::chrono::seconds(10)) ==
                                          std::future_status::ready; });
    queue.Post([&] { b.set_value(); met += a_ran.wait_for(std::chrono::seconds(10)) ==
                                          std::future_status::ready; });
  }
  EXPECT_EQ(met.load(), 2);
}

TEST(WriteQueueTest, IdleThreadsWakeForLaterPosts) {
  WriteQueue queue(2);
  for (int round = 0; round < 20; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // the threads go idle
    std::promise<void> done;
    std::future<void> ran = done.get_future();
    queue.Post([&] { done.set_value(); });
    ASSERT_EQ(ran.wait_for(std::chrono::seconds(10)), std::future_status::ready) << round;
  }
}

}  // namespace
}  // namespace spanserve
