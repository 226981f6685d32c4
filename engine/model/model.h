// A loaded model: its config, weights (memory-mapped or dummy), tokenizer and span config.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/tokenizer.h"

namespace spanserve {

// How RoPE's frequencies are scaled (config.json's rope_scaling or rope_parameters).
enum class RopeType { kDefault, kLinear, kLlama3 };
struct RopeScaling {
  RopeType type = RopeType::kDefault;
  float factor = 1.0f;                     // linear and llama3
  float low_freq_factor = 1.0f;            // llama3
  float high_freq_factor = 4.0f;           // llama3
  int32_t original_max_position_embeddings = 8192;  // llama3
};

// Hugging Face config.json of the LLaMA family (llama, mistral, qwen2), the fields the engine
// uses.
struct ModelConfig {
  std::string model_type = "llama";
  int32_t hidden_size = 0;
  int32_t intermediate_size = 0;
  int32_t num_layers = 0;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;  // hidden_size / num_heads unless config.json says otherwise
  int32_t vocab_size = 0;
  int32_t max_position_embeddings = 0;
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  bool qkv_bias = false;       // Qwen2: q, k and v projections have biases
  int32_t sliding_window = 0;  // Mistral: a query attends its last sliding_window keys; 0: all
  bool tie_word_embeddings = false;
  int32_t bos_token_id = 1;
  std::vector<int32_t> eos_token_ids;  // config.json may give one id or a list
};

enum class DType { kF32, kF16, kBF16 };
const char* DTypeName(DType dtype);
size_t DTypeSize(DType dtype);

// A read-only view of one tensor; the bytes belong to ModelWeights::storage.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  int64_t numel() const;
};

struct LayerWeights {
  TensorView attn_norm;                 // [hidden]
  TensorView wq, wk, wv, wo;            // [heads*hd, hidden], [kv*hd, hidden] x2, [hidden, heads*hd]
  TensorView bq, bk, bv;                // [heads*hd], [kv*hd] x2; only with qkv_bias
  TensorView ffn_norm;                  // [hidden]
  TensorView w_gate, w_up, w_down;      // [inter, hidden] x2, [hidden, inter]
};

struct ModelWeights {
  TensorView embed;       // [vocab, hidden]
  TensorView final_norm;  // [hidden]
  TensorView lm_head;     // [vocab, hidden]; the embedding's view when tied
  std::vector<LayerWeights> layers;
  std::vector<std::shared_ptr<const void>> storage;  // mmaps and buffers that own the bytes
};

enum class Segmentation { kWhole, kSentences, kParagraphs, kClient };

// How the HTTP API's /v1/chat/completions turns messages into a prompt (server/openai_protocol.cc
// renders them): "plain" role-prefixed lines, or "chatml" (<|im_start|>role ... <|im_end|>).
enum class ChatFormat { kPlain, kChatML };

// spanserve.json beside the weights.
struct SpanConfig {
  std::string anchor_token = "<a>";
  std::string header_end_token = "</a>";
  Segmentation prompt_segmentation = Segmentation::kWhole;
  int32_t max_header_tokens = 32;
  ChatFormat chat_format = ChatFormat::kPlain;
  int32_t anchor_id = -1;      // resolved through the tokenizer
  int32_t header_end_id = -1;
};

// generation_config.json's sampling, for requests that leave a field out; a field the file does
// not give falls back to the server's default. `do_sample: false` reads as temperature 0.
struct GenerationDefaults {
  std::optional<float> temperature;
  std::optional<float> top_p;
  std::optional<int32_t> top_k;
};

struct Model {
  std::string dir;
  ModelConfig config;
  ModelWeights weights;
  std::unique_ptr<Tokenizer> tokenizer;
  SpanConfig span;
  // False for a plain checkpoint (no spanserve.json): served DENSE only, its prompt without
  // anchors, and `span` left at its defaults with unresolved ids.
  bool has_span_config = true;
  GenerationDefaults generation;
};

struct LoadOptions {
  bool dummy = false;              // random weights from config.json alone
  DType dummy_dtype = DType::kF32;
  uint64_t dummy_seed = 0;
  // Called now and then while tensors load: (bytes done, bytes total).
  std::function<void(int64_t, int64_t)> progress;
};

// Loads a Hugging Face LLaMA directory: config.json, model.safetensors or
// model.safetensors.index.json with its shards, tokenizer.model, and where present
// spanserve.json (without it: a plain checkpoint) and generation_config.json (default sampling,
// more EOS ids).
// Every failure is one clear error naming the file (and the tensor, where there is one).
absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& dir,
                                                 const LoadOptions& options = {});

}  // namespace spanserve
