// The Prometheus text exposition of server/metrics: HELP and TYPE lines, label escaping,
// cumulative histogram buckets with +Inf, _sum and _count, and collect hooks.
#include "server/metrics.h"

#include <thread>

#include "gtest/gtest.h"

namespace spanserve::metrics {
namespace {

TEST(Metrics, CounterAndGaugeExposition) {
  Registry registry;
  Counter& tokens = registry.AddCounter("demo_tokens_total", "Tokens made.").Get({});
  Gauge& running = registry.AddGauge("demo_running", "Running now.").Get({});
  tokens.Inc(3);
  tokens.Inc();
  running.Set(2.5);
  EXPECT_EQ(registry.Serialize(),
            "# HELP demo_tokens_total Tokens made.\n"
            "# TYPE demo_tokens_total counter\n"
            "demo_tokens_total 4\n"
            "# HELP demo_running Running now.\n"
            "# TYPE demo_running gauge\n"
            "demo_running 2.5\n");
}

TEST(Metrics, LabelsAreSortedAndEscaped) {
  Registry registry;
  Family<Counter>& requests = registry.AddCounter("demo_requests_total", "By code.", {"rpc", "code"});
  requests.Get({"Generate", "OK"}).Inc(2);
  requests.Get({"A\"b\\c\nd", "INTERNAL"}).Inc();
  EXPECT_EQ(registry.Serialize(),
            "# HELP demo_requests_total By code.\n"
            "# TYPE demo_requests_total counter\n"
            "demo_requests_total{rpc=\"A\\\"b\\\\c\\nd\",code=\"INTERNAL\"} 1\n"
            "demo_requests_total{rpc=\"Generate\",code=\"OK\"} 2\n");
}

TEST(Metrics, LabeledFamilyWithoutMetricsIsLeftOut) {
  Registry registry;
  registry.AddCounter("demo_requests_total", "By code.", {"code"});
  EXPECT_EQ(registry.Serialize(), "");
}

TEST(Metrics, HistogramBucketsAreCumulative) {
  Registry registry;
  Histogram& latency =
      registry.AddHistogram("demo_latency_seconds", "Latency.", {0.125, 0.5, 2}).Get({});
  for (double v : {0.0625, 0.125, 0.25, 1.0, 5.0}) latency.Observe(v);
  EXPECT_EQ(registry.Serialize(),
            "# HELP demo_latency_seconds Latency.\n"
            "# TYPE demo_latency_seconds histogram\n"
            "demo_latency_seconds_bucket{le=\"0.125\"} 2\n"
            "demo_latency_seconds_bucket{le=\"0.5\"} 3\n"
            "demo_latency_seconds_bucket{le=\"2\"} 4\n"
            "demo_latency_seconds_bucket{le=\"+Inf\"} 5\n"
            "demo_latency_seconds_sum 6.4375\n"
            "demo_latency_seconds_count 5\n");
}

TEST(Metrics, LabeledHistogramPutsLeLast) {
  Registry registry;
  registry.AddHistogram("demo_step_seconds", "Step.", {1}, {"kind"}).Get({"decode"}).Observe(3);
  const std::string text = registry.Serialize();
  EXPECT_NE(text.find("demo_step_seconds_bucket{kind=\"decode\",le=\"1\"} 0\n"), std::string::npos);
  EXPECT_NE(text.find("demo_step_seconds_bucket{kind=\"decode\",le=\"+Inf\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("demo_step_seconds_sum{kind=\"decode\"} 3\n"), std::string::npos);
}

TEST(Metrics, HelpIsEscaped) {
  Registry registry;
  registry.AddGauge("demo_g", "Back\\slash\nnewline.");
  EXPECT_EQ(registry.Serialize().substr(0, 35), "# HELP demo_g Back\\\\slash\\nnewline.");
}

TEST(Metrics, CollectHookRunsAtScrape) {
  Registry registry;
  Gauge& used = registry.AddGauge("demo_used", "Used.").Get({});
  int scrapes = 0;
  registry.AddCollectHook([&] { used.Set(++scrapes * 10); });
  EXPECT_NE(registry.Serialize().find("demo_used 10\n"), std::string::npos);
  EXPECT_NE(registry.Serialize().find("demo_used 20\n"), std::string::npos);
}

TEST(Metrics, FormatValue) {
  EXPECT_EQ(FormatValue(0), "0");
  EXPECT_EQ(FormatValue(-3), "-3");
  EXPECT_EQ(FormatValue(0.25), "0.25");
  EXPECT_EQ(FormatValue(1e20), "1e+20");
  EXPECT_EQ(FormatValue(1.0 / 0.0), "+Inf");
  EXPECT_EQ(FormatValue(-1.0 / 0.0), "-Inf");
  EXPECT_EQ(FormatValue(0.0 / 0.0), "NaN");
}

TEST(Metrics, BadDefinitionsThrow) {
  Registry registry;
  registry.AddCounter("demo_total", "x");
  EXPECT_THROW(registry.AddCounter("demo_total", "again"), std::invalid_argument);
  EXPECT_THROW(registry.AddHistogram("demo_h", "x", {1, 1}), std::invalid_argument);
  Family<Counter>& labeled = registry.AddCounter("demo_l_total", "x", {"a"});
  EXPECT_THROW(labeled.Get({}), std::invalid_argument);
}

TEST(Metrics, ConcurrentUpdatesAreNotLost) {
  Registry registry;
  Counter& counter = registry.AddCounter("demo_total", "x").Get({});
  Histogram& histogram = registry.AddHistogram("demo_h", "x", {0.5}).Get({});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        counter.Inc();
        histogram.Observe(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(counter.Value(), 40000);
  EXPECT_EQ(histogram.Read().count, 40000u);
  EXPECT_EQ(histogram.Read().sum, 40000);
}

}  // namespace
}  // namespace spanserve::metrics
