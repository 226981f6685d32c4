#include "tests/cpp/tiny_model.h"

#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <stdexcept>

#include "engine/model/safetensors.h"

namespace spanserve {
namespace {

using nlohmann::json;

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), contents.size());
  if (!out) throw std::runtime_error("cannot write " + path);
}

// n values drawn from `draw`, stored in the dtype's bytes.
template <typename Draw>
std::string Values(int64_t n, DType dtype, Draw draw) {
  std::string bytes(n * DTypeSize(dtype), '\0');
  for (int64_t i = 0; i < n; ++i) {
    const float value = draw();
    if (dtype == DType::kF32) {
      std::memcpy(&bytes[i * 4], &value, 4);
    } else {
      const uint16_t bits = dtype == DType::kF16 ? FloatToHalf(value) : FloatToBf16(value);
      std::memcpy(&bytes[i * 2], &bits, 2);
    }
  }
  return bytes;
}

json ConfigJson(const TinyModelSpec& spec) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_act", "silu"},
          {"hidden_size", spec.hidden},
          {"intermediate_size", spec.intermediate},
          {"num_hidden_layers", spec.layers},
          {"num_attention_heads", spec.heads},
          {"num_key_value_heads", spec.kv_heads},
          {"vocab_size", spec.vocab},
          {"max_position_embeddings", spec.max_positions},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},
          {"tie_word_embeddings", spec.tied},
          {"bos_token_id", 1},
          {"eos_token_id", 2},
          {"torch_dtype", "float32"}};
}

json SpanJson(const TinyModelSpec& spec) {
  return {{"span_protocol", 1},
          {"anchor_token", "<a>"},
          {"header_end_token", "</a>"},
          {"prompt_segmentation", spec.segmentation},
          {"max_header_tokens", spec.max_header_tokens}};
}

// Writes the tensors as shards model-0000i-of-0000n.safetensors and their index.
void WriteShards(const std::string& dir, const std::vector<RawTensor>& tensors, int shards) {
  json weight_map = json::object();
  for (int s = 0; s < shards; ++s) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", s + 1, shards);
    const size_t begin = tensors.size() * s / shards, end = tensors.size() * (s + 1) / shards;
    const std::vector<RawTensor> part(tensors.begin() + begin, tensors.begin() + end);
    WriteSafetensors(dir + "/" + name, part);
    for (const RawTensor& t : part) weight_map[t.name] = name;
  }
  WriteFile(dir + "/model.safetensors.index.json",
            json{{"metadata", json::object()}, {"weight_map", weight_map}}.dump(2));
}

}  // namespace

std::vector<RawTensor> TinyModelTensors(const TinyModelSpec& spec) {
  std::mt19937_64 rng(spec.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t D = spec.hidden, I = spec.intermediate, V = spec.vocab;
  const int64_t hd = spec.hidden / spec.heads, q = spec.heads * hd, kv = spec.kv_heads * hd;
  const std::string dtype = DTypeName(spec.dtype);
  std::vector<RawTensor> tensors;
  const auto add = [&](const std::string& name, std::vector<int64_t> shape, bool norm) {
    int64_t n = 1;
    for (int64_t dim : shape) n *= dim;
    std::string bytes = Values(n, spec.dtype, [&] {
      return norm ? 1.0f + 0.1f * normal(rng) : spec.weight_std * normal(rng);
    });
    tensors.push_back({name, dtype, std::move(shape), std::move(bytes)});
  };
  add("model.embed_tokens.weight", {V, D}, false);
  for (int i = 0; i < spec.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", {D}, true);
    add(p + "self_attn.q_proj.weight", {q, D}, false);
    add(p + "self_attn.k_proj.weight", {kv, D}, false);
    add(p + "self_attn.v_proj.weight", {kv, D}, false);
    add(p + "self_attn.o_proj.weight", {D, q}, false);
    add(p + "post_attention_layernorm.weight", {D}, true);
    add(p + "mlp.gate_proj.weight", {I, D}, false);
    add(p + "mlp.up_proj.weight", {I, D}, false);
    add(p + "mlp.down_proj.weight", {D, I}, false);
  }
  add("model.norm.weight", {D}, true);
  if (!spec.tied) add("lm_head.weight", {V, D}, false);
  return tensors;
}

void WriteSafetensors(const std::string& path, const std::vector<RawTensor>& tensors) {
  json header = {{"__metadata__", {{"format", "pt"}}}};
  std::string data;
  for (const RawTensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');  // the data starts 8-byte aligned
  const uint64_t length = text.size();
  std::string file(reinterpret_cast<const char*>(&length), 8);
  WriteFile(path, file + text + data);
}

std::string WriteTinyModelDir(const TinyModelSpec& spec, const std::string& dir) {
  std::filesystem::create_directories(dir);
  WriteFile(dir + "/config.json", ConfigJson(spec).dump(2));
  WriteFile(dir + "/spanserve.json", SpanJson(spec).dump(2));
  std::filesystem::copy_file(SPANSERVE_SOURCE_DIR "/tests/data/tokenizer/tokenizer.model",
                             dir + "/tokenizer.model",
                             std::filesystem::copy_options::overwrite_existing);
  const std::vector<RawTensor> tensors = TinyModelTensors(spec);
  if (spec.shards <= 1) {
    WriteSafetensors(dir + "/model.safetensors", tensors);
  } else {
    WriteShards(dir, tensors, spec.shards);
  }
  return dir;
}

std::string MakeTempDir(const std::string& prefix) {
  std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "_XXXXXX")).string();
  if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
  return pattern;
}

}  // namespace spanserve
