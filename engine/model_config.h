// Parsing of the JSON files beside the weights: config.json (Hugging Face LLaMA) and
// spanserve.json. Errors name the file and the key.
//
// Status codes used by the model loading code:
//   NotFound            a file or a tensor is absent;
//   InvalidArgument     a file is malformed or disagrees with another;
//   FailedPrecondition  a file is well formed but asks for something spanserve does not support.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model.h"

namespace spanserve {

// Reads and parses a JSON file: NotFound when it is absent, InvalidArgument when unreadable.
absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);

// config.json. Fields other than the ones ModelConfig holds are ignored, except those that
// would change the model's math (rope_scaling, biases, activation, model_type): they are checked.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& path);

// spanserve.json. Unknown keys are errors. anchor_id and header_end_id stay -1: the loader
// resolves them through the tokenizer.
absl::StatusOr<SpanConfig> ParseSpanConfig(const std::string& path);

}  // namespace spanserve
