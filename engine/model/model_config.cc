#include "engine/model/model_config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace spanserve {

using nlohmann::json;

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
  }
  return "?";
}

size_t DTypeSize(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

absl::StatusOr<json> ReadJsonFile(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": file not found"));
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) return absl::InvalidArgumentError(absl::StrCat(path, ": cannot read the file"));
  return ParseJsonObject(text.str(), path);
}

absl::StatusOr<json> ParseJsonObject(std::string_view text, const std::string& name) {
  json parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": not valid JSON"));
  }
  if (!parsed.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": the top level is not a JSON object"));
  }
  return parsed;
}

namespace {

// Reads typed keys of one JSON object. The first error (naming the file and the key) is kept and
// later reads do nothing, so a parse is a list of reads followed by one status check.
class Fields {
 public:
  Fields(const json& object, const std::string& path) : object_(object), path_(path) {}

  const absl::Status& status() const { return status_; }

  // Absent keys and null values are "not given".
  bool Has(const char* key) const {
    auto it = object_.find(key);
    return it != object_.end() && !it->is_null();
  }

  absl::Status Error(const char* key, const std::string& problem) const {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": key '", key, "' ", problem));
  }
  void Fail(absl::Status status) {
    if (status_.ok()) status_ = std::move(status);
  }

  // An integer in [min, int32 max]; an absent key leaves *out as it is unless required.
  void Int(const char* key, bool required, int32_t min, int32_t* out) {
    if (!Given(key, required)) return;
    const json& value = object_.at(key);
    if (!value.is_number_integer() || !InRange(value, min)) {
      return Fail(Error(key, absl::StrCat("must be an integer >= ", min, ", got ", value.dump())));
    }
    *out = value.get<int32_t>();
  }

  void PositiveFloat(const char* key, bool required, float* out) {
    if (!Given(key, required)) return;
    const json& value = object_.at(key);
    if (!value.is_number() || !(value.get<double>() > 0)) {
      return Fail(Error(key, absl::StrCat("must be a positive number, got ", value.dump())));
    }
    // The model math runs in float: 1e-55 would become 0 and 1e300 infinity.
    const float as_float = static_cast<float>(value.get<double>());
    if (!(as_float > 0) || !std::isfinite(as_float)) {
      return Fail(Error(key, absl::StrCat("must be a positive number a float holds (about 1.2e-38 "
                                          "to 3.4e38), got ", value.dump())));
    }
    *out = as_float;
  }

  // A number in [lo, hi] (lo excluded when lo_open).
  void FloatIn(const char* key, double lo, double hi, bool lo_open, std::optional<float>* out) {
    if (!Given(key, false)) return;
    const json& value = object_.at(key);
    const bool in_range = value.is_number() && (lo_open ? value.get<double>() > lo
                                                       : value.get<double>() >= lo) &&
                          value.get<double>() <= hi;
    if (!in_range) {
      return Fail(Error(key, absl::StrCat("must be a number in ", lo_open ? "(" : "[", lo, ", ",
                                          hi, "], got ", value.dump())));
    }
    *out = value.get<float>();
  }

  void Bool(const char* key, bool* out) {
    if (!Given(key, false)) return;
    const json& value = object_.at(key);
    if (!value.is_boolean()) {
      return Fail(Error(key, absl::StrCat("must be true or false, got ", value.dump())));
    }
    *out = value.get<bool>();
  }

  void String(const char* key, std::string* out) {
    if (!Given(key, false)) return;
    const json& value = object_.at(key);
    if (!value.is_string() || value.get<std::string>().empty()) {
      return Fail(Error(key, absl::StrCat("must be a non-empty string, got ", value.dump())));
    }
    *out = value.get<std::string>();
  }

  // One integer or a non-empty list of them (eos_token_id).
  void IntList(const char* key, int32_t min, std::vector<int32_t>* out) {
    if (!Given(key, true)) return;
    const json& value = object_.at(key);
    const json list = value.is_array() ? value : json::array({value});
    out->clear();
    for (const json& item : list) {
      if (!item.is_number_integer() || !InRange(item, min)) {
        return Fail(Error(key, absl::StrCat("must be an integer >= ", min,
                                            " or a list of them, got ", value.dump())));
      }
      out->push_back(item.get<int32_t>());
    }
    if (out->empty()) Fail(Error(key, "is an empty list"));
  }

  // A key that must be absent, null or equal to `want` (a plain LLaMA's value).
  void Only(const char* key, const json& want) {
    if (!Given(key, false) || object_.at(key) == want) return;
    Fail(Unsupported(key, object_.at(key).dump()));
  }
  absl::Status Unsupported(const char* key, const std::string& value) const {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": key '", key, "' is ", value, ": not supported"));
  }

 private:
  // True when the key has a value and no error is kept yet; a missing required key is an error.
  bool Given(const char* key, bool required) {
    if (!status_.ok()) return false;
    if (Has(key)) return true;
    if (required) Fail(Error(key, "is missing"));
    return false;
  }

  static bool InRange(const json& value, int32_t min) {
    if (value.is_number_unsigned()) {
      return value.get<uint64_t>() <= uint64_t{std::numeric_limits<int32_t>::max()} &&
             static_cast<int64_t>(value.get<uint64_t>()) >= min;
    }
    const int64_t v = value.get<int64_t>();
    return v >= min && v <= std::numeric_limits<int32_t>::max();
  }

  const json& object_;
  const std::string& path_;
  absl::Status status_;
};

// Checks that need the parsed sizes together.
absl::Status CheckSizes(ModelConfig& c, const Fields& fields) {
  if (c.head_dim == 0) {
    if (c.hidden_size % c.num_heads != 0) {
      return fields.Error(
          "hidden_size",
          absl::StrCat("(", c.hidden_size, ") is not a multiple of num_attention_heads (",
                       c.num_heads, ") and head_dim is not given"));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) {
    return fields.Error("head_dim",
                        absl::StrCat("must be even for rotary embeddings, got ", c.head_dim));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return fields.Error("num_key_value_heads",
                        absl::StrCat("(", c.num_kv_heads, ") does not divide num_attention_heads (",
                                     c.num_heads, ")"));
  }
  std::vector<std::pair<const char*, int32_t>> ids = {{"bos_token_id", c.bos_token_id}};
  for (int32_t eos : c.eos_token_ids) ids.emplace_back("eos_token_id", eos);
  for (const auto& [key, id] : ids) {
    if (id >= c.vocab_size) {
      return fields.Error(key,
                          absl::StrCat("(", id, ") is not below vocab_size (", c.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

// RoPE's parameters: older configs have a top-level rope_theta and a rope_scaling object
// ({"type" or "rope_type": ..., "factor": ...}); transformers 5 writes both into one
// rope_parameters object. Served: default, linear, and llama3 (LLaMA-3.1's long context).
absl::Status ParseRope(const json& object, const char* key, ModelConfig* c) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("key '", key, "' must be an object"));
  }
  const std::string name = key;
  Fields fields(*it, name);
  std::string type = "default";
  fields.String(it->contains("rope_type") ? "rope_type" : "type", &type);
  fields.PositiveFloat("rope_theta", false, &c->rope_theta);
  RopeScaling& r = c->rope_scaling;
  if (type == "linear" || type == "llama3") {
    r.type = type == "linear" ? RopeType::kLinear : RopeType::kLlama3;
    fields.PositiveFloat("factor", true, &r.factor);
  }
  if (type == "llama3") {
    fields.PositiveFloat("low_freq_factor", true, &r.low_freq_factor);
    fields.PositiveFloat("high_freq_factor", true, &r.high_freq_factor);
    fields.Int("original_max_position_embeddings", true, 1, &r.original_max_position_embeddings);
    if (fields.status().ok() && !(r.high_freq_factor > r.low_freq_factor)) {
      return fields.Error("high_freq_factor", "must be above low_freq_factor");
    }
  }
  if (!fields.status().ok()) return fields.status();
  if (type != "default" && type != "linear" && type != "llama3") {
    return absl::FailedPreconditionError(
        absl::StrCat("key '", key, "': rope type \"", type,
                     "\" is not supported (default, linear, llama3)"));
  }
  return absl::OkStatus();
}

// model_type and what it changes: qwen2's q/k/v biases, mistral's sliding window. Anything that
// would change the math in a way not served is refused, naming the key.
void ParseArchitecture(Fields& fields, ModelConfig* c) {
  fields.String("model_type", &c->model_type);
  if (!fields.status().ok()) return;
  if (c->model_type != "llama" && c->model_type != "mistral" && c->model_type != "qwen2") {
    return fields.Fail(fields.Unsupported(
        "model_type", absl::StrCat("\"", c->model_type, "\" (served: llama, mistral, qwen2)")));
  }
  fields.Only("hidden_act", "silu");
  fields.Only("mlp_bias", false);
  if (c->model_type == "qwen2") {
    c->qkv_bias = true;  // Qwen2Attention: q, k, v with bias, o without
    fields.Only("use_sliding_window", false);
  } else {
    fields.Only("attention_bias", false);
  }
  if (c->model_type == "mistral") fields.Int("sliding_window", false, 1, &c->sliding_window);
}

absl::StatusOr<ModelConfig> ModelConfigFromJson(const json& object, const std::string& path) {
  Fields fields(object, path);
  ModelConfig c;
  ParseArchitecture(fields, &c);
  fields.Int("hidden_size", true, 1, &c.hidden_size);
  fields.Int("intermediate_size", true, 1, &c.intermediate_size);
  fields.Int("num_hidden_layers", true, 1, &c.num_layers);
  fields.Int("num_attention_heads", true, 1, &c.num_heads);
  c.num_kv_heads = c.num_heads;
  fields.Int("num_key_value_heads", false, 1, &c.num_kv_heads);
  fields.Int("head_dim", false, 1, &c.head_dim);
  fields.Int("vocab_size", true, 1, &c.vocab_size);
  fields.Int("max_position_embeddings", true, 1, &c.max_position_embeddings);
  fields.PositiveFloat("rms_norm_eps", true, &c.rms_norm_eps);
  fields.PositiveFloat("rope_theta", false, &c.rope_theta);
  fields.Bool("tie_word_embeddings", &c.tie_word_embeddings);
  fields.Int("bos_token_id", true, 0, &c.bos_token_id);
  fields.IntList("eos_token_id", 0, &c.eos_token_ids);
  if (!fields.status().ok()) return fields.status();
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    absl::Status status = ParseRope(object, key, &c);
    if (!status.ok()) return absl::Status(status.code(), absl::StrCat(path, ": ", status.message()));
  }
  if (absl::Status status = CheckSizes(c, fields); !status.ok()) return status;
  return c;
}

absl::StatusOr<SpanConfig> SpanConfigFromJson(const json& object, const std::string& path) {
  static const std::set<std::string> kKeys = {"span_protocol", "anchor_token", "header_end_token",
                                              "prompt_segmentation", "max_header_tokens",
                                              "chat_format"};
  for (const auto& item : object.items()) {
    if (!kKeys.count(item.key())) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": unknown key '", item.key(), "'"));
    }
  }
  Fields fields(object, path);
  int32_t protocol = 0;
  SpanConfig span;
  std::string segmentation = "whole";
  std::string chat_format = "plain";
  fields.Int("span_protocol", true, 0, &protocol);
  fields.String("anchor_token", &span.anchor_token);
  fields.String("header_end_token", &span.header_end_token);
  fields.Int("max_header_tokens", false, 1, &span.max_header_tokens);
  fields.String("prompt_segmentation", &segmentation);
  fields.String("chat_format", &chat_format);
  if (!fields.status().ok()) return fields.status();

  if (protocol != 1)
    return fields.Error("span_protocol", absl::StrCat("must be 1, got ", protocol));
  if (span.anchor_token == span.header_end_token) {
    return fields.Error("header_end_token", "must differ from anchor_token");
  }
  if (chat_format != "plain" && chat_format != "chatml") {
    return fields.Error("chat_format",
                        absl::StrCat("must be \"plain\" or \"chatml\", got \"", chat_format, "\""));
  }
  span.chat_format = chat_format == "chatml" ? ChatFormat::kChatML : ChatFormat::kPlain;
  static const std::pair<const char*, Segmentation> kSegmentations[] = {
      {"whole", Segmentation::kWhole},
      {"sentences", Segmentation::kSentences},
      {"paragraphs", Segmentation::kParagraphs},
      {"client", Segmentation::kClient}};
  for (const auto& [name, value] : kSegmentations) {
    if (segmentation == name) {
      span.prompt_segmentation = value;
      return span;
    }
  }
  return fields.Error("prompt_segmentation",
                      absl::StrCat("must be \"whole\", \"sentences\", \"paragraphs\" or "
                                   "\"client\", got \"",
                                   segmentation, "\""));
}

absl::StatusOr<GenerationConfig> GenerationConfigFromJson(const json& object,
                                                         const std::string& path) {
  Fields fields(object, path);
  GenerationConfig g;
  fields.FloatIn("temperature", 0.0, 100.0, false, &g.defaults.temperature);
  fields.FloatIn("top_p", 0.0, 1.0, true, &g.defaults.top_p);
  int32_t top_k = -1;
  fields.Int("top_k", false, 0, &top_k);
  if (top_k >= 0) g.defaults.top_k = top_k;
  bool do_sample = true;
  fields.Bool("do_sample", &do_sample);
  if (fields.Has("eos_token_id")) fields.IntList("eos_token_id", 0, &g.eos_token_ids);
  if (!fields.status().ok()) return fields.status();
  if (!do_sample) g.defaults.temperature = 0.0f;  // Hugging Face: greedy, whatever temperature
  return g;
}

}  // namespace

std::vector<double> RopeInverseFrequencies(const ModelConfig& c) {
  const int32_t half = c.head_dim / 2;
  const RopeScaling& r = c.rope_scaling;
  std::vector<double> inv_freq(half);
  for (int32_t i = 0; i < half; ++i) {
    double f = std::pow(double{c.rope_theta}, -2.0 * i / c.head_dim);
    if (r.type == RopeType::kLinear) f /= r.factor;
    if (r.type == RopeType::kLlama3) {
      // Wavelengths longer than the original context / low_freq_factor are stretched by
      // `factor`, shorter than it / high_freq_factor kept, and the band between blended.
      const double original = r.original_max_position_embeddings;
      const double wavelength = 2 * M_PI / f;
      if (wavelength > original / r.low_freq_factor) {
        f /= r.factor;
      } else if (wavelength >= original / r.high_freq_factor) {
        const double smooth = (original / wavelength - r.low_freq_factor) /
                              (r.high_freq_factor - r.low_freq_factor);
        f = (1 - smooth) * f / r.factor + smooth * f;
      }
    }
    inv_freq[i] = f;
  }
  return inv_freq;
}

absl::StatusOr<GenerationConfig> ParseGenerationConfig(const std::string& path) {
  absl::StatusOr<json> object = ReadJsonFile(path);
  if (!object.ok()) return object.status();
  return GenerationConfigFromJson(*object, path);
}

absl::StatusOr<GenerationConfig> ParseGenerationConfigJson(std::string_view text,
                                                           const std::string& name) {
  absl::StatusOr<json> object = ParseJsonObject(text, name);
  if (!object.ok()) return object.status();
  return GenerationConfigFromJson(*object, name);
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& path) {
  absl::StatusOr<json> object = ReadJsonFile(path);
  if (!object.ok()) return object.status();
  return ModelConfigFromJson(*object, path);
}

absl::StatusOr<ModelConfig> ParseModelConfigJson(std::string_view text, const std::string& name) {
  absl::StatusOr<json> object = ParseJsonObject(text, name);
  if (!object.ok()) return object.status();
  return ModelConfigFromJson(*object, name);
}

absl::StatusOr<SpanConfig> ParseSpanConfig(const std::string& path) {
  absl::StatusOr<json> object = ReadJsonFile(path);
  if (!object.ok()) return object.status();
  return SpanConfigFromJson(*object, path);
}

absl::StatusOr<SpanConfig> ParseSpanConfigJson(std::string_view text, const std::string& name) {
  absl::StatusOr<json> object = ParseJsonObject(text, name);
  if (!object.ok()) return object.status();
  return SpanConfigFromJson(*object, name);
}

}  // namespace spanserve
