// Test support: tiny random LLaMA model directories on disk, loadable by LoadModel.
// Write failures throw std::runtime_error (GoogleTest reports them as test failures).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/model/model.h"

namespace spanserve {

struct TinyModelSpec {
  int hidden = 64, intermediate = 128, layers = 2, heads = 4, kv_heads = 2, vocab = 320,
      max_positions = 1024;
  bool tied = false;
  DType dtype = DType::kF32;
  uint64_t seed = 1;
  std::string segmentation = "whole";
  int max_header_tokens = 32;
  int shards = 1;
  // Standard deviation of the matrices. 0.1 gives tiny models large gains per layer (0.1 *
  // sqrt(hidden) > 1), which amplify rounding; 1/sqrt(hidden) is closer to a trained model.
  float weight_std = 0.1f;
};

// Writes config.json, model.safetensors (or `shards` shard files and
// model.safetensors.index.json), tokenizer.model (the test tokenizer) and spanserve.json.
// Weights come from std::mt19937_64(seed): normal(0, weight_std) for matrices, 1 + normal(0, 0.1)
// for norms. Returns dir.
std::string WriteTinyModelDir(const TinyModelSpec& spec, const std::string& dir);

// A new empty directory under the system's temporary directory.
std::string MakeTempDir(const std::string& prefix);

// One tensor of a safetensors file: its dtype name as the file spells it ("F32", "I32", ...) and
// its raw little-endian bytes.
struct RawTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// The tensors WriteTinyModelDir writes for the spec, in order (embedding, layers, norm, lm_head).
std::vector<RawTensor> TinyModelTensors(const TinyModelSpec& spec);

// Writes a safetensors file holding the tensors, in order, with an 8-byte-aligned header.
void WriteSafetensors(const std::string& path, const std::vector<RawTensor>& tensors);

}  // namespace spanserve
