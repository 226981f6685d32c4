// Sampling: greedy, temperature, top-k, top-p, and the counter-based seed.
#include <cmath>
#include <map>

#include "engine/backends/sampler.h"
#include "gtest/gtest.h"

namespace spanserve {
namespace {

TEST(SampleUniform, DeterministicInRangeAndSpread) {
  double sum = 0;
  for (uint64_t i = 0; i < 10000; ++i) {
    const double u = SampleUniform(42, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / 10000, 0.5, 0.02);
  EXPECT_EQ(SampleUniform(7, 3), SampleUniform(7, 3));
  EXPECT_NE(SampleUniform(7, 3), SampleUniform(8, 3));
  EXPECT_NE(SampleUniform(7, 3), SampleUniform(7, 4));
}

TEST(Sampler, GreedyTakesArgmaxAndLowestIdOnTies) {
  Sampler sampler;
  EXPECT_EQ(sampler.Sample(std::vector<float>{0.1f, 2.0f, -1.0f, 2.0f}, {}, 0), 1);
  SamplingParams top1{.temperature = 1.0f, .top_k = 1};
  EXPECT_EQ(sampler.Sample(std::vector<float>{0.1f, 0.5f, 3.0f}, top1, 5), 2);
}

std::map<int32_t, int> Histogram(const std::vector<float>& logits, SamplingParams params,
                                 int draws) {
  Sampler sampler;
  std::map<int32_t, int> counts;
  for (int i = 0; i < draws; ++i) ++counts[sampler.Sample(logits, params, i)];
  return counts;
}

TEST(Sampler, TemperatureFollowsTheSoftmax) {
  const std::vector<float> logits = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  auto counts = Histogram(logits, {.temperature = 1.0f, .seed = 3}, 20000);
  for (int id = 0; id < 4; ++id) {
    EXPECT_NEAR(counts[id] / 20000.0, (id + 1) / 10.0, 0.015) << id;
  }
  // A high temperature flattens it.
  auto flat = Histogram(logits, {.temperature = 100.0f, .seed = 3}, 20000);
  EXPECT_NEAR(flat[0] / 20000.0, 0.25, 0.02);
}

TEST(Sampler, TopKAndTopPCutTheTail) {
  const std::vector<float> logits = {std::log(0.1f), std::log(0.2f), std::log(0.3f),
                                     std::log(0.4f)};
  auto top2 = Histogram(logits, {.temperature = 1.0f, .top_k = 2, .seed = 1}, 5000);
  EXPECT_EQ(top2.count(0) + top2.count(1), 0u);
  EXPECT_NEAR(top2[3] / 5000.0, 0.4 / 0.7, 0.03);
  // top_p 0.65: 0.4 + 0.3 reaches it, so ids 3 and 2 only.
  auto nucleus = Histogram(logits, {.temperature = 1.0f, .top_p = 0.65f, .seed = 1}, 5000);
  EXPECT_EQ(nucleus.count(0) + nucleus.count(1), 0u);
  EXPECT_GT(nucleus[2], 0);
  // A tiny top_p keeps only the most likely token.
  auto tiny = Histogram(logits, {.temperature = 1.0f, .top_p = 0.01f, .seed = 1}, 200);
  EXPECT_EQ(tiny[3], 200);
}

TEST(Sampler, SameSeedSameDrawsOtherSeedOtherDraws) {
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[i] = std::sin(i * 1.3f);
  Sampler a, b;
  std::vector<int32_t> first, again, other;
  for (uint64_t i = 0; i < 64; ++i) {
    first.push_back(a.Sample(logits, {.temperature = 0.8f, .seed = 11}, i));
    again.push_back(b.Sample(logits, {.temperature = 0.8f, .seed = 11}, i));
    other.push_back(b.Sample(logits, {.temperature = 0.8f, .seed = 12}, i));
  }
  EXPECT_EQ(first, again);
  EXPECT_NE(first, other);
}

}  // namespace
}  // namespace spanserve
