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
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model.h"

namespace spanserve {

// Reads and parses a JSON file: NotFound when it is absent, InvalidArgument when unreadable.
absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);
// The same from the file's text; `name` (the file's path) names it in errors. The top level must
// be an object.
absl::StatusOr<nlohmann::json> ParseJsonObject(std::string_view text, const std::string& name);

// config.json. Fields other than the ones ModelConfig holds are ignored, except those that
// would change the model's math (rope_scaling, biases, activation, model_type): they are checked.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& path);
absl::StatusOr<ModelConfig> ParseModelConfigJson(std::string_view text, const std::string& name);

// spanserve.json. Unknown keys are errors. anchor_id and header_end_id stay -1: the loader
// resolves them through the tokenizer.
absl::StatusOr<SpanConfig> ParseSpanConfig(const std::string& path);
absl::StatusOr<SpanConfig> ParseSpanConfigJson(std::string_view text, const std::string& name);

// RoPE's inverse frequencies theta^(-2i/head_dim), i < head_dim/2, scaled as rope_scaling says
// (Hugging Face's rope init functions), in double: the CPU backend and the CUDA kernel both take
// this table.
std::vector<double> RopeInverseFrequencies(const ModelConfig& config);

// generation_config.json: the sampling defaults and EOS ids a checkpoint ships for generation.
// Keys other than these are ignored (max_length, repetition_penalty, ...: not applied).
struct GenerationConfig {
  GenerationDefaults defaults;
  std::vector<int32_t> eos_token_ids;  // empty when the file gives none
};
absl::StatusOr<GenerationConfig> ParseGenerationConfig(const std::string& path);
absl::StatusOr<GenerationConfig> ParseGenerationConfigJson(std::string_view text,
                                                           const std::string& name);

}  // namespace spanserve
