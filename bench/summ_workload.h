// The served summary task (issue 17) as forced benchmark requests, for any tokenizer: documents
// of numbered fact sentences, given as the client's own segments (one a sentence), and a forced
// summary whose sentences each name 1 to 3 of them in their span header. It keeps what sets
// the served cost, without a trained model: prompt lengths, output lengths, and spans over a
// few sentences of a long prompt (headers are decoded densely, per the span protocol).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/core/engine.h"
#include "engine/model/tokenizer.h"

namespace spanserve::bench {

struct SummWorkloadOptions {
  int32_t requests = 256;
  // Each prompt's tokens (with the tokenizer given, one anchor a sentence included), drawn
  // uniformly from this range.
  int32_t min_prompt_tokens = 1024, max_prompt_tokens = 4096;
  // Summary sentences are added until the output has at least this many tokens.
  int32_t output_tokens = 160;
  uint32_t seed = 17;
};

// Deterministic in (tokenizer, options, mode).
std::vector<GenerateRequest> SummRequests(const Tokenizer& tokenizer,
                                          const SummWorkloadOptions& options, SpanMode mode);

}  // namespace spanserve::bench
