// A model directory made from a config.json string, the test tokenizer and a default span
// config, loaded with dummy weights: benchmarks at real model shapes without weight files.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/model.h"

namespace spanserve {

// Writes <tmp>/<name>/{config.json, spanserve.json, tokenizer.model} and loads it (dummy mode).
// The source tree (for the tokenizer) is $SPANSERVE_SOURCE_DIR, else the one built from.
// prompt_segmentation: the span config's ("whole", "lines" or "sentences").
absl::StatusOr<std::shared_ptr<const Model>> LoadDummyModel(
    const std::string& name, const std::string& config_json, DType dtype,
    const std::string& prompt_segmentation = "whole");

}  // namespace spanserve
