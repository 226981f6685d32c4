#include "server/metrics.h"

#include <charconv>
#include <cmath>
#include <stdexcept>

namespace spanserve::metrics {

// ---- Histogram ----

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {
  for (size_t i = 1; i < bounds_.size(); ++i) {
    if (!(bounds_[i - 1] < bounds_[i])) {
      throw std::invalid_argument("histogram bounds must increase strictly");
    }
  }
}

void Histogram::Observe(double value) {
  size_t bucket = 0;
  while (bucket < bounds_.size() && value > bounds_[bucket]) ++bucket;
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[bucket];
  sum_ += value;
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snapshot;
  snapshot.bounds = bounds_;
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t total = 0;
  for (uint64_t c : counts_) {
    total += c;
    snapshot.cumulative.push_back(total);
  }
  snapshot.sum = sum_;
  snapshot.count = total;
  return snapshot;
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> bounds;
  for (int i = 0; i < count; ++i, start *= factor) bounds.push_back(start);
  return bounds;
}

std::vector<double> LinearBuckets(double start, double width, int count) {
  std::vector<double> bounds;
  for (int i = 0; i < count; ++i) bounds.push_back(start + i * width);
  return bounds;
}

// ---- Text format ----

std::string EscapeLabelValue(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// HELP text escapes only backslash and newline.
static std::string EscapeHelp(const std::string& help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buf[64];
  std::to_chars_result result;
  if (value == std::trunc(value) && std::fabs(value) < 1e15) {
    result = std::to_chars(buf, buf + sizeof(buf), static_cast<int64_t>(value));
  } else {
    result = std::to_chars(buf, buf + sizeof(buf), value);
  }
  return std::string(buf, result.ptr);
}

static const char* TypeName(Type type) {
  switch (type) {
    case Type::kCounter: return "counter";
    case Type::kGauge: return "gauge";
    case Type::kHistogram: return "histogram";
  }
  return "untyped";
}

std::string FamilyBase::LabelText(const std::vector<std::string>& values,
                                  const std::string& extra_name,
                                  const std::string& extra_value) const {
  std::string out;
  for (size_t i = 0; i < label_names_.size(); ++i) {
    out += out.empty() ? "{" : ",";
    out += label_names_[i] + "=\"" + EscapeLabelValue(values[i]) + "\"";
  }
  if (!extra_name.empty()) {
    out += out.empty() ? "{" : ",";
    out += extra_name + "=\"" + EscapeLabelValue(extra_value) + "\"";
  }
  if (!out.empty()) out += "}";
  return out;
}

void FamilyBase::AppendHeader(std::string* out) const {
  *out += "# HELP " + name_ + " " + EscapeHelp(help_) + "\n";
  *out += "# TYPE " + name_ + " " + TypeName(type_) + "\n";
}

// ---- Families ----

template <typename Metric>
Metric& Family<Metric>::Get(const std::vector<std::string>& label_values) {
  if (label_values.size() != label_names_.size()) {
    throw std::invalid_argument(name_ + ": wrong number of label values");
  }
  std::lock_guard<std::mutex> lock(mu_);
  std::unique_ptr<Metric>& metric = metrics_[label_values];
  if (!metric) metric = make_();
  return *metric;
}

template <typename Metric>
void Family<Metric>::Serialize(std::string* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (metrics_.empty()) return;
  AppendHeader(out);
  for (const auto& [labels, metric] : metrics_) {
    if constexpr (std::is_same_v<Metric, Histogram>) {
      const Histogram::Snapshot s = metric->Read();
      for (size_t i = 0; i <= s.bounds.size(); ++i) {
        const std::string le = i < s.bounds.size() ? FormatValue(s.bounds[i]) : "+Inf";
        *out += name_ + "_bucket" + LabelText(labels, "le", le) + " " +
                FormatValue(static_cast<double>(s.cumulative[i])) + "\n";
      }
      *out += name_ + "_sum" + LabelText(labels) + " " + FormatValue(s.sum) + "\n";
      *out += name_ + "_count" + LabelText(labels) + " " +
              FormatValue(static_cast<double>(s.count)) + "\n";
    } else {
      *out += name_ + LabelText(labels) + " " + FormatValue(metric->Value()) + "\n";
    }
  }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

// ---- Registry ----

template <typename Metric>
Family<Metric>& Registry::Add(std::unique_ptr<Family<Metric>> family, bool unlabeled) {
  Family<Metric>& ref = *family;
  // A family without labels has exactly one metric: show it (as 0) from the start.
  if (unlabeled) ref.Get({});
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& f : families_) {
    if (f->name() == ref.name()) throw std::invalid_argument("duplicate metric " + ref.name());
  }
  families_.push_back(std::move(family));
  return ref;
}

Family<Counter>& Registry::AddCounter(std::string name, std::string help,
                                      std::vector<std::string> label_names) {
  const bool unlabeled = label_names.empty();
  return Add(std::make_unique<Family<Counter>>(std::move(name), std::move(help),
                                               std::move(label_names), Type::kCounter,
                                               [] { return std::make_unique<Counter>(); }),
             unlabeled);
}

Family<Gauge>& Registry::AddGauge(std::string name, std::string help,
                                  std::vector<std::string> label_names) {
  const bool unlabeled = label_names.empty();
  return Add(std::make_unique<Family<Gauge>>(std::move(name), std::move(help),
                                             std::move(label_names), Type::kGauge,
                                             [] { return std::make_unique<Gauge>(); }),
             unlabeled);
}

Family<Histogram>& Registry::AddHistogram(std::string name, std::string help,
                                          std::vector<double> bounds,
                                          std::vector<std::string> label_names) {
  const bool unlabeled = label_names.empty();
  Histogram check(bounds);  // throws on bad bounds now rather than on first use
  return Add(std::make_unique<Family<Histogram>>(
                 std::move(name), std::move(help), std::move(label_names), Type::kHistogram,
                 [bounds] { return std::make_unique<Histogram>(bounds); }),
             unlabeled);
}

void Registry::AddCollectHook(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(mu_);
  hooks_.push_back(std::move(hook));
}

std::string Registry::Serialize() const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& hook : hooks_) hook();
  std::string out;
  for (const auto& family : families_) family->Serialize(&out);
  return out;
}

}  // namespace spanserve::metrics
