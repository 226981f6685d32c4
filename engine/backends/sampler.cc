#include "engine/backends/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/sample_uniform.h"

namespace spanserve {

double SampleUniform(uint64_t seed, uint64_t index) { return CounterUniform(seed, index); }

namespace {

int32_t Argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (int32_t i = 1; i < static_cast<int32_t>(logits.size()); ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

}  // namespace

int32_t Sampler::Sample(std::span<const float> logits, const SamplingParams& params,
                        uint64_t index) {
  if (params.temperature <= 0.0f || params.top_k == 1) return Argmax(logits);
  const int32_t vocab = static_cast<int32_t>(logits.size());
  // Candidates in order of logit (ties: lower id first), cut to top_k.
  order_.resize(vocab);
  std::iota(order_.begin(), order_.end(), 0);
  const int32_t k = params.top_k > 0 ? std::min(params.top_k, vocab) : vocab;
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), by_logit);
  order_.resize(k);

  // Softmax at the temperature, in double for a stable cut.
  const double max_logit = logits[order_[0]];
  probs_.resize(k);
  double total = 0;
  for (int32_t i = 0; i < k; ++i) {
    probs_[i] = static_cast<float>(std::exp((logits[order_[i]] - max_logit) / params.temperature));
    total += probs_[i];
  }
  // Top-p: the smallest prefix whose mass reaches top_p (at least one token).
  int32_t keep = k;
  if (params.top_p < 1.0f) {
    double mass = 0;
    for (int32_t i = 0; i < k; ++i) {
      mass += probs_[i];
      if (mass >= params.top_p * total) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept_total = 0;
  for (int32_t i = 0; i < keep; ++i) kept_total += probs_[i];
  const double target = SampleUniform(params.seed, index) * kept_total;
  double cumulative = 0;
  for (int32_t i = 0; i < keep; ++i) {
    cumulative += probs_[i];
    if (target < cumulative) return order_[i];
  }
  return order_[keep - 1];
}

}  // namespace spanserve
