// One request's state inside the engine: its tokens, KV block table, span tracker and text.
// Owned and touched by the engine thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/core/detokenizer.h"
#include "engine/core/engine.h"
#include "engine/core/span_rules.h"

namespace spanserve {

using Clock = std::chrono::steady_clock;

struct Sequence {
  Sequence(uint64_t id, GenerateRequest request, EventSink sink, std::vector<int32_t> prompt,
           const SpanVocab* vocab, const Tokenizer* tokenizer)
      : id(id),
        request(std::move(request)),
        sink(std::move(sink)),
        tokens(std::move(prompt)),
        prompt_len(static_cast<int32_t>(tokens.size())),
        tracker(vocab, this->request.span_mode, tokens),
        text(tokenizer, this->request.stop) {}

  int32_t num_tokens() const { return static_cast<int32_t>(tokens.size()); }
  int32_t num_output() const { return num_tokens() - prompt_len; }
  int32_t num_pending() const { return num_tokens() - num_computed; }

  const uint64_t id;
  const GenerateRequest request;
  const EventSink sink;
  std::vector<int32_t> tokens;  // prompt, then output
  const int32_t prompt_len;
  int32_t num_computed = 0;     // tokens whose K and V are in the cache
  std::vector<int32_t> block_table;
  // Prefix caching: chain hashes of the prompt's full blocks (set on arrival), and how many
  // leading blocks of the table are cached or were tried (registration goes on from there).
  std::vector<uint64_t> prompt_block_hashes;
  int32_t num_cached_blocks = 0;
  SpanTracker tracker;
  TextStream text;

  bool cancelled = false;
  Clock::time_point arrival = Clock::now();
  Clock::time_point last_token_time;
  double time_to_first_token = -1;
  int64_t kv_blocks_read = 0;
  int64_t kv_blocks_dense = 0;
  int64_t attended_tokens = 0;
  int64_t context_tokens = 0;
};

}  // namespace spanserve
