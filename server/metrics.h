// A small Prometheus client in the style of prometheus-cpp: a Registry of metric Families
// (counters, gauges, histograms), each holding one metric per label set, serialized in the text
// exposition format 0.0.4. Thread-safe: metrics may be updated from any thread during a scrape.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace spanserve::metrics {

class Counter {
 public:
  void Inc(double amount = 1) { value_.fetch_add(amount, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Inc(double amount = 1) { value_.fetch_add(amount, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  // Upper bounds, strictly increasing; the +Inf bucket is implicit.
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // per bound, then +Inf (== count)
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot Read() const;

 private:
  const std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; last is +Inf
  double sum_ = 0;
};

// Bucket bounds: start, start*factor, ... (count of them).
std::vector<double> ExponentialBuckets(double start, double factor, int count);
// Bucket bounds: start, start+width, ... (count of them).
std::vector<double> LinearBuckets(double start, double width, int count);

enum class Type { kCounter, kGauge, kHistogram };

class FamilyBase {
 public:
  FamilyBase(std::string name, std::string help, std::vector<std::string> label_names, Type type)
      : name_(std::move(name)), help_(std::move(help)), label_names_(std::move(label_names)),
        type_(type) {}
  virtual ~FamilyBase() = default;
  // Appends this family's HELP, TYPE and samples (nothing while it has no metric).
  virtual void Serialize(std::string* out) const = 0;

  const std::string& name() const { return name_; }

 protected:
  std::string LabelText(const std::vector<std::string>& values, const std::string& extra_name = "",
                        const std::string& extra_value = "") const;
  void AppendHeader(std::string* out) const;

  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
  const Type type_;
};

// All metrics of one name, one per label set. Get() creates a metric on first use; the
// reference stays valid for the registry's life.
template <typename Metric>
class Family : public FamilyBase {
 public:
  Family(std::string name, std::string help, std::vector<std::string> label_names, Type type,
         std::function<std::unique_ptr<Metric>()> make)
      : FamilyBase(std::move(name), std::move(help), std::move(label_names), type),
        make_(std::move(make)) {}

  // label_values line up with the family's label names.
  Metric& Get(const std::vector<std::string>& label_values);
  void Serialize(std::string* out) const override;

 private:
  const std::function<std::unique_ptr<Metric>()> make_;
  mutable std::mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<Metric>> metrics_;
};

class Registry {
 public:
  Family<Counter>& AddCounter(std::string name, std::string help,
                              std::vector<std::string> label_names = {});
  Family<Gauge>& AddGauge(std::string name, std::string help,
                          std::vector<std::string> label_names = {});
  Family<Histogram>& AddHistogram(std::string name, std::string help, std::vector<double> bounds,
                                  std::vector<std::string> label_names = {});
  // Runs before each Serialize: sets gauges whose values are read at scrape time.
  void AddCollectHook(std::function<void()> hook);

  // The text exposition format 0.0.4.
  std::string Serialize() const;

 private:
  template <typename Metric>
  Family<Metric>& Add(std::unique_ptr<Family<Metric>> family, bool unlabeled);

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<FamilyBase>> families_;
  std::vector<std::function<void()>> hooks_;
};

// Escapes a label value: backslash, double quote and newline.
std::string EscapeLabelValue(const std::string& value);
// Formats a sample value: integers without a fraction, +Inf, -Inf, NaN, else shortest form.
std::string FormatValue(double value);

inline constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace spanserve::metrics
