// Small value types shared by the engine, the backends and the server.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace spanserve {

// Half-open range of token positions [begin, end).
struct TokenRange {
  int32_t begin = 0;
  int32_t end = 0;
  bool operator==(const TokenRange&) const = default;
};

// A piece of one KV block that a query reads: tokens [begin, end) of physical block `block`.
// Full blocks have begin == 0 and end == block_size; partly attended blocks carry their edges.
struct KvChunk {
  int32_t block = 0;
  int32_t begin = 0;
  int32_t end = 0;
  bool operator==(const KvChunk&) const = default;
};

enum class SpanMode { kSelfSelected, kDense };

enum class FinishReason { kNone, kLength, kEos, kStop, kCancelled, kError };

const char* FinishReasonName(FinishReason reason);

struct SamplingParams {
  float temperature = 0.0f;  // 0 means greedy
  int32_t top_k = 0;         // 0 means no limit
  float top_p = 1.0f;        // in (0, 1]
  uint64_t seed = 0;
};

}  // namespace spanserve
