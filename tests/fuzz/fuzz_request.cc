// libFuzzer: bytes as a protocol GenerateRequest (proto/spanserve/v1/spanserve.proto) through
// ToEngineRequest (server/service.cc) and Engine::Submit on a real engine (fuzz_engine.h): the
// engine's validation, prompt segmentation and encoding, length checks and, for requests it
// takes, the whole generation, which must finish. Odd-length prompts are cancelled at once.
#include "engine/core/span_rules.h"
#include "server/service.h"
#include "tests/fuzz/fuzz_engine.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace spanserve;
  fuzz::FuzzEngine& fuzz = fuzz::SharedEngine();
  v1::GenerateRequest proto;
  if (!proto.ParseFromArray(data, static_cast<int>(size))) return 0;
  uint64_t seed = 0;
  absl::StatusOr<GenerateRequest> request = ToEngineRequest(proto, fuzz.config, &seed);
  if (!request.ok()) return 0;
  fuzz::Check(request->sampling.seed == seed, "the seed used is not the seed reported");
  // The prompt's segments: the client's, or the model's rule (sentences) applied to the text.
  // The prompt's text must never add more (an anchor id of its own would).
  const size_t prompt_segments =
      !request->segments.empty()
          ? request->segments.size()
          : SegmentPromptText(request->prompt, fuzz.engine->model().span.prompt_segmentation).size();
  const bool cancel = request->prompt.size() % 2 == 1;
  const fuzz::Generation run = fuzz::Run(*std::move(request), cancel);
  if (!run.submitted) return 0;
  fuzz::Check(run.finish.generated_tokens <= fuzz.config.max_tokens_limit, "past max_tokens");
  // Segment reports come only when asked for (return_spans); then the prompt's count must hold.
  if (!proto.return_spans()) {
    fuzz::Check(run.finish.segments.empty(), "segments reported without return_spans");
    return 0;
  }
  size_t in_prompt = 0;
  for (const SegmentReport& segment : run.finish.segments) in_prompt += segment.in_prompt;
  fuzz::Check(in_prompt == prompt_segments, "the prompt's text made segments of its own");
  return 0;
}
