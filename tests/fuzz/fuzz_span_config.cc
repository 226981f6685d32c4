// libFuzzer: bytes as spanserve.json through ParseSpanConfigJson (engine/model/model_config.h).
// A span config it accepts must name two different, non-empty span tokens and a header limit
// >= 1.
#include "engine/model/model_config.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace spanserve;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<SpanConfig> span = ParseSpanConfigJson(text, "spanserve.json");
  if (!span.ok()) return 0;
  fuzz::Check(!span->anchor_token.empty() && !span->header_end_token.empty() &&
                  span->anchor_token != span->header_end_token && span->max_header_tokens >= 1 &&
                  span->anchor_id == -1 && span->header_end_id == -1,
              "accepted a bad span config");
  return 0;
}
