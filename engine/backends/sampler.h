// Token sampling: greedy, temperature, top-k, top-p. Randomness is counter-based, so a token's
// draw depends only on (seed, index of the output token): the same seed gives the same output,
// also after preemption and recompute, and on every backend.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/core/types.h"

namespace spanserve {

// Uniform in [0, 1) from (seed, index): splitmix64 of a Weyl step, 53 bits.
double SampleUniform(uint64_t seed, uint64_t index);

class Sampler {
 public:
  // Greedy when temperature == 0 or top_k == 1 (ties go to the lowest id).
  int32_t Sample(std::span<const float> logits, const SamplingParams& params, uint64_t index);

 private:
  std::vector<int32_t> order_;
  std::vector<float> probs_;
};

}  // namespace spanserve
