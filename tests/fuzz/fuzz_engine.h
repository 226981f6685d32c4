// What the request fuzzers share: a real engine on a tiny random model (tests/cpp/tiny_model.h)
// whose backend computes nothing. The backend checks every batch the engine builds
// (ValidateStepBatch: a bad one aborts) and answers tokens picked from the request's seed, span
// markup, digits and EOS among them, so generations run the span rule, the detokenizer and stop
// strings. Limits are small (max_tokens 64, a 384-token KV pool under a 512-token context), so
// each input stays cheap and reaches the length checks.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/core/engine.h"
#include "server/config.h"
#include "tests/fuzz/fuzz_check.h"

namespace spanserve::fuzz {

struct FuzzEngine {
  ServerConfig config;  // the server's defaults but max_tokens_limit = 64
  std::unique_ptr<Engine> engine;
};

// Built on the first call, kept for the whole run.
FuzzEngine& SharedEngine();

struct Generation {
  bool submitted = false;
  absl::Status refused;     // Submit's error when !submitted
  std::string text;         // every event's text, in order
  GenerationEvent finish;   // the last event
};

// Submits the request and waits for its finish (aborting after 20 s); cancels it at once when
// `cancel`. A refusal must be INVALID_ARGUMENT (a field's fault).
Generation Run(GenerateRequest request, bool cancel);

}  // namespace spanserve::fuzz
