// LoadModel over tiny model directories: good ones (dtypes, shards, tied, GQA) round-trip exactly,
// dummy mode is deterministic, and every malformed directory gives one error naming the file.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"
#include "gtest/gtest.h"
#include "tests/cpp/tiny_model.h"

namespace spanserve {
namespace {

using nlohmann::json;

// The directories this test writes, removed at exit.
struct TempDirs {
  ~TempDirs() {
    for (const std::string& dir : dirs) std::filesystem::remove_all(dir);
  }
  std::vector<std::string> dirs;
} temp_dirs;

std::string NewDir(const TinyModelSpec& spec = {}) {
  temp_dirs.dirs.push_back(MakeTempDir("loader_test"));
  return WriteTinyModelDir(spec, temp_dirs.dirs.back());
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void EditJson(const std::string& path, const std::function<void(json&)>& edit) {
  std::ifstream in(path);
  json value = json::parse(in);
  edit(value);
  WriteText(path, value.dump(2));
}

// Every distinct view of the weights by name (a tied lm_head is the embedding's view).
std::map<std::string, const TensorView*> ViewsByName(const ModelWeights& w) {
  std::map<std::string, const TensorView*> views;
  for (const TensorView* v : {&w.embed, &w.final_norm, &w.lm_head}) views[v->name] = v;
  for (const LayerWeights& l : w.layers) {
    for (const TensorView* v :
         {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      views[v->name] = v;
    }
  }
  return views;
}

void ExpectLoadError(const std::string& dir, absl::StatusCode code,
                     const std::vector<std::string>& needles, const LoadOptions& options = {}) {
  absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(dir, options);
  ASSERT_FALSE(model.ok()) << "loaded " << dir;
  EXPECT_EQ(model.status().code(), code) << model.status();
  for (const std::string& needle : needles) {
    EXPECT_TRUE(absl::StrContains(model.status().message(), needle))
        << "'" << needle << "' not in: " << model.status().message();
  }
}

// ---- good directories ----

class GoodModelTest : public ::testing::TestWithParam<TinyModelSpec> {};

TEST_P(GoodModelTest, LoadsConfigShapesAndExactWeights) {
  const TinyModelSpec spec = GetParam();
  const std::string dir = NewDir(spec);
  absl::StatusOr<std::unique_ptr<Model>> loaded = LoadModel(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Model& model = **loaded;

  const ModelConfig& c = model.config;
  EXPECT_EQ(c.hidden_size, spec.hidden);
  EXPECT_EQ(c.intermediate_size, spec.intermediate);
  EXPECT_EQ(c.num_layers, spec.layers);
  EXPECT_EQ(c.num_heads, spec.heads);
  EXPECT_EQ(c.num_kv_heads, spec.kv_heads);
  EXPECT_EQ(c.head_dim, spec.hidden / spec.heads);
  EXPECT_EQ(c.vocab_size, spec.vocab);
  EXPECT_EQ(c.max_position_embeddings, spec.max_positions);
  EXPECT_EQ(c.tie_word_embeddings, spec.tied);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>{2});

  EXPECT_EQ(model.tokenizer->vocab_size(), 320);
  EXPECT_EQ(model.tokenizer->bos_id(), 1);
  EXPECT_EQ(model.tokenizer->eos_id(), 2);
  EXPECT_EQ(model.span.anchor_id, 3);
  EXPECT_EQ(model.span.header_end_id, 4);
  EXPECT_EQ(model.span.max_header_tokens, spec.max_header_tokens);

  const ModelWeights& w = model.weights;
  const int64_t D = spec.hidden, hd = spec.hidden / spec.heads;
  ASSERT_EQ(w.layers.size(), static_cast<size_t>(spec.layers));
  EXPECT_EQ(w.embed.shape, (std::vector<int64_t>{spec.vocab, D}));
  EXPECT_EQ(w.lm_head.shape, (std::vector<int64_t>{spec.vocab, D}));
  EXPECT_EQ(w.final_norm.shape, (std::vector<int64_t>{D}));
  for (const LayerWeights& l : w.layers) {
    EXPECT_EQ(l.attn_norm.shape, (std::vector<int64_t>{D}));
    EXPECT_EQ(l.wq.shape, (std::vector<int64_t>{spec.heads * hd, D}));
    EXPECT_EQ(l.wk.shape, (std::vector<int64_t>{spec.kv_heads * hd, D}));
    EXPECT_EQ(l.wv.shape, (std::vector<int64_t>{spec.kv_heads * hd, D}));
    EXPECT_EQ(l.wo.shape, (std::vector<int64_t>{D, spec.heads * hd}));
    EXPECT_EQ(l.w_gate.shape, (std::vector<int64_t>{spec.intermediate, D}));
    EXPECT_EQ(l.w_up.shape, (std::vector<int64_t>{spec.intermediate, D}));
    EXPECT_EQ(l.w_down.shape, (std::vector<int64_t>{D, spec.intermediate}));
  }
  EXPECT_EQ(w.lm_head.data == w.embed.data, spec.tied);

  // Every tensor written is loaded under its name with the same bytes.
  const std::map<std::string, const TensorView*> views = ViewsByName(w);
  const std::vector<RawTensor> written = TinyModelTensors(spec);
  EXPECT_EQ(views.size(), written.size());
  for (const RawTensor& t : written) {
    auto it = views.find(t.name);
    ASSERT_NE(it, views.end()) << t.name;
    const TensorView& view = *it->second;
    EXPECT_EQ(view.dtype, spec.dtype) << t.name;
    EXPECT_EQ(view.shape, t.shape) << t.name;
    ASSERT_EQ(view.numel() * DTypeSize(view.dtype), t.bytes.size()) << t.name;
    EXPECT_EQ(std::memcmp(view.data, t.bytes.data(), t.bytes.size()), 0) << t.name;
  }
}

TinyModelSpec Spec(std::function<void(TinyModelSpec&)> edit) {
  TinyModelSpec spec;
  edit(spec);
  return spec;
}

INSTANTIATE_TEST_SUITE_P(Dirs, GoodModelTest,
                         ::testing::Values(Spec([](TinyModelSpec&) {}),  // F32, GQA 4/2
                                           Spec([](TinyModelSpec& s) { s.dtype = DType::kF16; }),
                                           Spec([](TinyModelSpec& s) {
                                             s.dtype = DType::kBF16;
                                             s.seed = 9;
                                           }),
                                           Spec([](TinyModelSpec& s) { s.shards = 3; }),
                                           Spec([](TinyModelSpec& s) {
                                             s.shards = 2;
                                             s.dtype = DType::kBF16;
                                           }),
                                           Spec([](TinyModelSpec& s) { s.tied = true; }),
                                           Spec([](TinyModelSpec& s) {
                                             s.kv_heads = 4;
                                             s.layers = 3;
                                           }),  // MHA
                                           Spec([](TinyModelSpec& s) {
                                             s.kv_heads = 1;
                                             s.max_header_tokens = 8;
                                           })));

TEST(ModelLoaderTest, WeightsOutliveTheDirectory) {
  const std::string dir = NewDir();
  absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  std::filesystem::remove_all(dir);  // the mapping keeps the bytes
  const std::vector<RawTensor> written = TinyModelTensors({});
  const TensorView& embed = (*model)->weights.embed;
  EXPECT_EQ(std::memcmp(embed.data, written[0].bytes.data(), written[0].bytes.size()), 0);
}

TEST(ModelLoaderTest, ExtraTensorsAreIgnoredAndTiedLmHeadInTheFileIsTheEmbedding) {
  TinyModelSpec spec;
  spec.tied = true;
  const std::string dir = NewDir(spec);
  std::vector<RawTensor> tensors = TinyModelTensors(spec);
  tensors.push_back(
      {"model.layers.0.self_attn.rotary_emb.inv_freq", "F32", {8}, std::string(32, '\0')});
  RawTensor lm_head = tensors[0];
  lm_head.name = "lm_head.weight";
  tensors.push_back(lm_head);
  WriteSafetensors(dir + "/model.safetensors", tensors);
  absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->weights.lm_head.data, (*model)->weights.embed.data);
}

TEST(ModelLoaderTest, ProgressReachesTheTotal) {
  const std::string dir = NewDir();
  std::vector<std::pair<int64_t, int64_t>> calls;
  LoadOptions options;
  options.progress = [&](int64_t done, int64_t total) { calls.emplace_back(done, total); };
  ASSERT_TRUE(LoadModel(dir, options).ok());
  ASSERT_FALSE(calls.empty());
  int64_t expected_total = 0;
  for (const RawTensor& t : TinyModelTensors({})) expected_total += t.bytes.size();
  EXPECT_EQ(calls.back(), std::make_pair(expected_total, expected_total));
  for (size_t i = 1; i < calls.size(); ++i) EXPECT_GE(calls[i].first, calls[i - 1].first);
}

// ---- config.json and spanserve.json parsing ----

TEST(ModelConfigTest, DefaultsAndOptionalFields) {
  const std::string dir = NewDir();
  const std::string path = dir + "/config.json";
  EditJson(path, [](json& c) {
    for (const char* key :
         {"num_key_value_heads", "rope_theta", "tie_word_embeddings", "model_type", "hidden_act"}) {
      c.erase(key);
    }
    c["rope_scaling"] = nullptr;
    c["attention_bias"] = false;
  });
  absl::StatusOr<ModelConfig> config = ParseModelConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_kv_heads, config->num_heads);
  EXPECT_EQ(config->head_dim, 16);
  EXPECT_FLOAT_EQ(config->rope_theta, 10000.0f);
  EXPECT_FALSE(config->tie_word_embeddings);

  EditJson(path, [](json& c) {
    c["head_dim"] = 32;
    c["eos_token_id"] = {2, 7};
    c["rope_theta"] = 500000.0;
  });
  config = ParseModelConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 32);
  EXPECT_EQ(config->eos_token_ids, (std::vector<int32_t>{2, 7}));
  EXPECT_FLOAT_EQ(config->rope_theta, 500000.0f);
}

// transformers 5 nests rope_theta in rope_parameters; rope types other than default, linear and
// llama3 are refused.
TEST(ModelConfigTest, RopeParametersOfTransformers5) {
  const std::string dir = NewDir();
  const std::string path = dir + "/config.json";
  EditJson(path, [](json& c) {
    c.erase("rope_theta");
    c["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}};
  });
  absl::StatusOr<ModelConfig> config = ParseModelConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FLOAT_EQ(config->rope_theta, 500000.0f);
  EditJson(path, [](json& c) { c["rope_parameters"]["rope_type"] = "yarn"; });
  config = ParseModelConfig(path);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(config.status().message(), "rope_parameters"));
  EXPECT_TRUE(absl::StrContains(config.status().message(), "yarn")) << config.status();
}

TEST(ModelConfigTest, FamiliesLlama3RopeQwen2BiasesMistralWindow) {
  const std::string dir = NewDir();
  const std::string path = dir + "/config.json";
  EditJson(path, [](json& c) {
    c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  });
  absl::StatusOr<ModelConfig> llama3 = ParseModelConfig(path);
  ASSERT_TRUE(llama3.ok()) << llama3.status();
  EXPECT_EQ(llama3->rope_scaling.type, RopeType::kLlama3);
  EXPECT_FLOAT_EQ(llama3->rope_scaling.factor, 8.0f);
  EXPECT_EQ(llama3->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_FALSE(llama3->qkv_bias);

  EditJson(path, [](json& c) {
    c.erase("rope_scaling");
    c.erase("attention_bias");
    c["model_type"] = "qwen2";
    c["use_sliding_window"] = false;
    c["sliding_window"] = 32;
  });
  absl::StatusOr<ModelConfig> qwen2 = ParseModelConfig(path);
  ASSERT_TRUE(qwen2.ok()) << qwen2.status();
  EXPECT_TRUE(qwen2->qkv_bias);
  EXPECT_EQ(qwen2->sliding_window, 0);  // use_sliding_window false: not in use

  EditJson(path, [](json& c) { c["use_sliding_window"] = true; });
  EXPECT_EQ(ParseModelConfig(path).status().code(), absl::StatusCode::kFailedPrecondition);

  EditJson(path, [](json& c) {
    c["model_type"] = "mistral";
    c.erase("use_sliding_window");
  });
  absl::StatusOr<ModelConfig> mistral = ParseModelConfig(path);
  ASSERT_TRUE(mistral.ok()) << mistral.status();
  EXPECT_EQ(mistral->sliding_window, 32);
  EXPECT_FALSE(mistral->qkv_bias);
  EditJson(path, [](json& c) { c["sliding_window"] = nullptr; });
  EXPECT_EQ(ParseModelConfig(path)->sliding_window, 0);
  EditJson(path, [](json& c) { c["sliding_window"] = 0; });
  EXPECT_EQ(ParseModelConfig(path).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelConfigTest, Llama3RopeStretchesLowFrequenciesKeepsHighOnesBlendsBetween) {
  ModelConfig c;
  c.head_dim = 128;
  c.rope_theta = 500000.0f;
  const std::vector<double> plain = RopeInverseFrequencies(c);
  c.rope_scaling = {RopeType::kLlama3, 8.0f, 1.0f, 4.0f, 8192};
  const std::vector<double> scaled = RopeInverseFrequencies(c);
  ASSERT_EQ(scaled.size(), 64u);
  int high = 0, low = 0, medium = 0;
  for (size_t i = 0; i < scaled.size(); ++i) {
    const double wavelength = 2 * M_PI / plain[i];
    if (wavelength < 8192.0 / 4) {
      EXPECT_DOUBLE_EQ(scaled[i], plain[i]) << i;
      ++high;
    } else if (wavelength > 8192.0 / 1) {
      EXPECT_DOUBLE_EQ(scaled[i], plain[i] / 8) << i;
      ++low;
    } else {
      EXPECT_LT(scaled[i], plain[i]) << i;
      EXPECT_GT(scaled[i], plain[i] / 8) << i;
      ++medium;
    }
    if (i > 0) EXPECT_LT(scaled[i], scaled[i - 1]) << i;  // still one frequency per pair
  }
  EXPECT_GT(high, 0);
  EXPECT_GT(low, 0);
  EXPECT_GT(medium, 0);
  c.rope_scaling = {RopeType::kLinear, 2.0f};
  EXPECT_DOUBLE_EQ(RopeInverseFrequencies(c)[5], plain[5] / 2);
}

TEST(ModelConfigTest, EosListGivesTheTokenizerTheFirst) {
  const std::string dir = NewDir();
  EditJson(dir + "/config.json", [](json& c) { c["eos_token_id"] = {4, 2}; });
  absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->config.eos_token_ids, (std::vector<int32_t>{4, 2}));
  EXPECT_EQ((*model)->tokenizer->eos_id(), 4);
}

TEST(ModelConfigTest, BadValuesNameTheKey) {
  const std::string dir = NewDir();
  const std::string path = dir + "/config.json";
  const std::vector<std::pair<std::function<void(json&)>, std::string>> cases = {
      {[](json& c) { c["hidden_size"] = "64"; }, "hidden_size"},
      {[](json& c) { c["num_hidden_layers"] = 0; }, "num_hidden_layers"},
      {[](json& c) { c["num_key_value_heads"] = 3; }, "num_key_value_heads"},
      {[](json& c) { c["rms_norm_eps"] = -1; }, "rms_norm_eps"},
      // Positive doubles that a float holds as 0 or infinity (found by fuzz_model_config).
      {[](json& c) { c["rms_norm_eps"] = 1e-55; }, "rms_norm_eps"},
      {[](json& c) { c["rope_theta"] = 1e300; }, "rope_theta"},
      {[](json& c) { c["eos_token_id"] = json::array(); }, "eos_token_id"},
      {[](json& c) { c["bos_token_id"] = 320; }, "bos_token_id"},
      {[](json& c) { c["vocab_size"] = 1ll << 40; }, "vocab_size"},
  };
  for (const auto& [edit, key] : cases) {
    const std::string good = ReadText(path);
    EditJson(path, edit);
    absl::StatusOr<ModelConfig> config = ParseModelConfig(path);
    WriteText(path, good);
    ASSERT_FALSE(config.ok()) << key;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << config.status();
    EXPECT_TRUE(absl::StrContains(config.status().message(), key)) << config.status();
    EXPECT_TRUE(absl::StrContains(config.status().message(), path)) << config.status();
  }
}

TEST(SpanConfigTest, ParsesEveryField) {
  const std::string dir = NewDir();
  const std::string path = dir + "/spanserve.json";
  for (const auto& [name, value] :
       std::vector<std::pair<std::string, Segmentation>>{{"whole", Segmentation::kWhole},
                                                         {"sentences", Segmentation::kSentences},
                                                         {"paragraphs", Segmentation::kParagraphs},
                                                         {"client", Segmentation::kClient}}) {
    EditJson(path, [&name = name](json& s) {  // clang 14 captures no structured bindings
      s["prompt_segmentation"] = name;
      s["max_header_tokens"] = 17;
    });
    absl::StatusOr<SpanConfig> span = ParseSpanConfig(path);
    ASSERT_TRUE(span.ok()) << span.status();
    EXPECT_EQ(span->prompt_segmentation, value) << name;
    EXPECT_EQ(span->max_header_tokens, 17);
    EXPECT_EQ(span->anchor_token, "<a>");
    EXPECT_EQ(span->header_end_token, "</a>");
    EXPECT_EQ(span->chat_format, ChatFormat::kPlain);  // the default
  }
  for (const auto& [name, value] : std::vector<std::pair<std::string, ChatFormat>>{
           {"plain", ChatFormat::kPlain}, {"chatml", ChatFormat::kChatML}}) {
    // clang 14 cannot capture a structured binding: an init-capture copies it.
    EditJson(path, [&, name = name](json& s) { s["chat_format"] = name; });
    absl::StatusOr<SpanConfig> span = ParseSpanConfig(path);
    ASSERT_TRUE(span.ok()) << span.status();
    EXPECT_EQ(span->chat_format, value) << name;
  }
}

// The from-bytes parsers (the fuzzers' entry points) agree with the file ones and name the
// given name in errors.
TEST(ParseFromBytesTest, ConfigsAndSafetensorsFromTheirText) {
  const std::string dir = NewDir();
  const std::string config_text = ReadText(dir + "/config.json");
  absl::StatusOr<ModelConfig> config = ParseModelConfigJson(config_text, "mem:config");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->hidden_size, ParseModelConfig(dir + "/config.json")->hidden_size);
  config = ParseModelConfigJson("[1]", "mem:config");
  EXPECT_EQ(config.status().message(), "mem:config: the top level is not a JSON object");

  absl::StatusOr<SpanConfig> span = ParseSpanConfigJson(ReadText(dir + "/spanserve.json"), "s");
  ASSERT_TRUE(span.ok()) << span.status();
  EXPECT_EQ(span->anchor_token, "<a>");
  span = ParseSpanConfigJson(R"({"span_protocol": 1, "colour": 2})", "mem:span");
  EXPECT_EQ(span.status().message(), "mem:span: unknown key 'colour'");

  const std::string bytes = ReadText(dir + "/model.safetensors");
  absl::StatusOr<SafetensorsFile> file = ParseSafetensors(bytes, "mem:weights");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->tensors.size(), TinyModelTensors({}).size());
  EXPECT_EQ(file->mapping, nullptr);
  for (const auto& [name, tensor] : file->tensors) {
    const char* begin = static_cast<const char*>(tensor.data);
    EXPECT_GE(begin, bytes.data() + 8) << name;
    EXPECT_LE(begin + tensor.numel() * DTypeSize(tensor.dtype), bytes.data() + bytes.size());
  }
  file = ParseSafetensors(std::string_view(bytes).substr(0, 5), "mem:weights");
  EXPECT_EQ(file.status().message(),
            "mem:weights: truncated: 5 bytes, less than the 8-byte header length");
}

// An empty file cannot be mapped; it is reported like any other too-short file.
TEST(MalformedModelTest, EmptySafetensors) {
  const std::string dir = NewDir();
  const std::string path = dir + "/model.safetensors";
  std::filesystem::resize_file(path, 0);
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, {path, "truncated: 0 bytes"});
}

TEST(DTypeTest, NamesSizesAndRounding) {
  EXPECT_STREQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(0.1f), 0x2e66);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);               // ties to even: infinity
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -26)), 0x0000);
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);  // tie to even, down
  EXPECT_EQ(FloatToBf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);  // tie to even, up
  EXPECT_EQ(FloatToBf16(std::bit_cast<float>(0x3f808001u)), 0x3f81);
  TensorView scalar;
  EXPECT_EQ(scalar.numel(), 1);
  scalar.shape = {3, 0, 2};
  EXPECT_EQ(scalar.numel(), 0);
}

TEST(TokenizerTest, SentencePieceTokenizer) {
  std::string error;
  std::unique_ptr<Tokenizer> tokenizer = LoadSentencePieceTokenizer(
      SPANSERVE_SOURCE_DIR "/tests/data/tokenizer/tokenizer.model", &error);
  ASSERT_NE(tokenizer, nullptr) << error;
  EXPECT_EQ(tokenizer->vocab_size(), 320);
  EXPECT_EQ(tokenizer->bos_id(), 1);
  EXPECT_EQ(tokenizer->eos_id(), 2);
  EXPECT_EQ(tokenizer->PieceToId("<unk>"), 0);
  EXPECT_EQ(tokenizer->PieceToId("<a>"), 3);
  EXPECT_EQ(tokenizer->PieceToId("</a>"), 4);
  EXPECT_EQ(tokenizer->PieceToId("<no such piece>"), -1);
  EXPECT_EQ(tokenizer->IdToPiece(3), "<a>");
  EXPECT_EQ(tokenizer->IdToPiece(-1), "");
  EXPECT_EQ(tokenizer->IdToPiece(320), "");
  const std::vector<int32_t> ids = tokenizer->Encode("12+34 is 46");
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(tokenizer->Decode(ids), "12+34 is 46");
  std::vector<int32_t> padded = ids;
  padded.insert(padded.begin() + 1, 400);  // past the tokenizer: a padded model vocabulary
  EXPECT_EQ(tokenizer->Decode(padded), "12+34 is 46");

  EXPECT_EQ(LoadSentencePieceTokenizer("/nonexistent/tokenizer.model", &error), nullptr);
  EXPECT_FALSE(error.empty());
}

// Short decodes come from piece tables (the engine decodes one or two tokens a step); they
// must give the processor's text for every mix of pieces: words, spaces, digits, bytes,
// control and span tokens, ids past the vocabulary, at the start and after it.
TEST(TokenizerTest, SentencePieceDecodeTablesGiveTheProcessorsText) {
  for (const char* file : {"/tests/data/tokenizer/tokenizer.model",
                           "/models/summ-long/tokenizer.model"}) {
    const std::string path = std::string(SPANSERVE_SOURCE_DIR) + file;
    std::string error;
    std::unique_ptr<Tokenizer> fast = LoadSentencePieceTokenizer(path, &error);
    std::unique_ptr<Tokenizer> reference = LoadSentencePieceTokenizer(path, &error, false);
    ASSERT_NE(fast, nullptr) << error;
    ASSERT_NE(reference, nullptr) << error;
    std::mt19937 rng(7);
    const int32_t n = fast->vocab_size();
    std::uniform_int_distribution<int32_t> any(-2, n + 3), low(0, 12), length(0, 8);
    for (int trial = 0; trial < 20000; ++trial) {
      std::vector<int32_t> ids(length(rng));
      for (int32_t& id : ids) id = trial % 3 == 0 ? low(rng) : any(rng);  // low: control, <a>
      ASSERT_EQ(fast->Decode(ids), reference->Decode(ids)) << file << " trial " << trial;
    }
    const std::string text = "On 3 May, Otto Gallo delivered 51 parcels. <a>2,5</a> Ünïcode!";
    EXPECT_EQ(fast->Decode(fast->Encode(text)), reference->Decode(reference->Encode(text)));
  }
}

// ---- dummy mode ----

LoadOptions Dummy(uint64_t seed, DType dtype) {
  LoadOptions options;
  options.dummy = true;
  options.dummy_seed = seed;
  options.dummy_dtype = dtype;
  return options;
}

TEST(DummyModelTest, ShapesDtypeAndDeterminism) {
  TinyModelSpec spec;
  spec.layers = 3;
  const std::string dir = NewDir(spec);
  std::filesystem::remove(dir + "/model.safetensors");  // dummy mode needs no weights
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    auto a = LoadModel(dir, Dummy(5, dtype));
    auto b = LoadModel(dir, Dummy(5, dtype));
    auto c = LoadModel(dir, Dummy(6, dtype));
    ASSERT_TRUE(a.ok() && b.ok() && c.ok()) << a.status() << b.status() << c.status();
    const auto views_a = ViewsByName((*a)->weights);
    const auto views_b = ViewsByName((*b)->weights);
    const auto views_c = ViewsByName((*c)->weights);
    const std::vector<RawTensor> expected = TinyModelTensors(spec);
    ASSERT_EQ(views_a.size(), expected.size());
    for (const RawTensor& t : expected) {
      const TensorView& va = *views_a.at(t.name);
      const TensorView& vb = *views_b.at(t.name);
      const TensorView& vc = *views_c.at(t.name);
      EXPECT_EQ(va.shape, t.shape) << t.name;
      EXPECT_EQ(va.dtype, dtype) << t.name;
      const size_t bytes = va.numel() * DTypeSize(dtype);
      EXPECT_EQ(std::memcmp(va.data, vb.data, bytes), 0) << t.name;
      const bool norm = t.shape.size() == 1;
      EXPECT_EQ(std::memcmp(va.data, vc.data, bytes) == 0, norm) << t.name;
    }
  }
}

TEST(DummyModelTest, ValuesAreScaledByFanInAndNormsAreOne) {
  TinyModelSpec spec;
  const std::string dir = NewDir(spec);
  auto model = LoadModel(dir, Dummy(3, DType::kF32));
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelWeights& w = (*model)->weights;
  for (const TensorView* view : {&w.layers[1].w_down, &w.layers[0].wq, &w.lm_head}) {
    const float* x = static_cast<const float*>(view->data);
    const double fan_in = view->shape[1], bound = std::sqrt(3.0 / fan_in);
    double sum2 = 0;
    for (int64_t i = 0; i < view->numel(); ++i) {
      ASSERT_LE(std::abs(x[i]), bound) << view->name;
      sum2 += double{x[i]} * x[i];
    }
    const double std_dev = std::sqrt(sum2 / view->numel());
    EXPECT_NEAR(std_dev * std::sqrt(fan_in), 1.0, 0.05) << view->name;
  }
  const float* norm = static_cast<const float*>(w.final_norm.data);
  for (int i = 0; i < spec.hidden; ++i) EXPECT_EQ(norm[i], 1.0f);
}

TEST(DummyModelTest, ProgressReachesTheTotal) {
  const std::string dir = NewDir();
  LoadOptions options = Dummy(1, DType::kBF16);
  int64_t last_done = -1, last_total = -2;
  options.progress = [&](int64_t done, int64_t total) { last_done = done, last_total = total; };
  ASSERT_TRUE(LoadModel(dir, options).ok());
  EXPECT_EQ(last_done, last_total);
  EXPECT_GT(last_total, 0);
}

// ---- malformed directories: one clear error naming the file (and the tensor) ----

TEST(MalformedModelTest, MissingConfig) {
  const std::string dir = NewDir();
  std::filesystem::remove(dir + "/config.json");
  ExpectLoadError(dir, absl::StatusCode::kNotFound, {dir + "/config.json"});
}

TEST(MalformedModelTest, BadJsonInConfig) {
  const std::string dir = NewDir();
  WriteText(dir + "/config.json", "{\"hidden_size\": 64,");
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, {dir + "/config.json", "JSON"});
}

TEST(MalformedModelTest, MissingRequiredField) {
  const std::string dir = NewDir();
  EditJson(dir + "/config.json", [](json& c) { c.erase("intermediate_size"); });
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument,
                  {dir + "/config.json", "intermediate_size", "missing"});
}

TEST(MalformedModelTest, UnsupportedModelType) {
  const std::string dir = NewDir();
  EditJson(dir + "/config.json", [](json& c) { c["model_type"] = "gemma2"; });
  ExpectLoadError(dir, absl::StatusCode::kFailedPrecondition,
                  {dir + "/config.json", "model_type", "gemma2", "not supported"});
}

TEST(MalformedModelTest, UnsupportedRopeScalingBiasAndActivation) {
  const std::vector<std::pair<std::string, json>> cases = {
      {"rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}},
      {"attention_bias", true},
      {"mlp_bias", true},
      {"hidden_act", "gelu"}};
  for (const auto& [key, value] : cases) {
    const std::string dir = NewDir();
    EditJson(dir + "/config.json", [&key = key, &value = value](json& c) { c[key] = value; });
    ExpectLoadError(dir, absl::StatusCode::kFailedPrecondition,
                    {dir + "/config.json", key, "not supported"});
  }
}

TEST(MalformedModelTest, MissingSafetensors) {
  const std::string dir = NewDir();
  std::filesystem::remove(dir + "/model.safetensors");
  ExpectLoadError(dir, absl::StatusCode::kNotFound, {dir + "/model.safetensors"});
}

TEST(MalformedModelTest, TruncatedSafetensors) {
  const std::string dir = NewDir();
  const std::string path = dir + "/model.safetensors";
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 100);
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, {path, "truncated", "lm_head.weight"});
  std::filesystem::resize_file(path, 5);
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, {path, "truncated"});
}

TEST(MalformedModelTest, HeaderLengthLargerThanFile) {
  const std::string dir = NewDir();
  const std::string path = dir + "/model.safetensors";
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  const uint64_t length = std::filesystem::file_size(path);  // 8 more than what follows
  file.write(reinterpret_cast<const char*>(&length), 8);
  file.close();
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, {path, "header length"});
}

TEST(MalformedModelTest, HeaderNotJson) {
  const std::string dir = NewDir();
  const std::string path = dir + "/model.safetensors";
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  file.seekp(8);
  file.write("!!", 2);
  file.close();
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, {path, "header"});
}

TEST(MalformedModelTest, WrongTensorShape) {
  const std::string dir = NewDir();
  std::vector<RawTensor> tensors = TinyModelTensors({});
  for (RawTensor& t : tensors) {
    if (t.name == "model.layers.1.self_attn.q_proj.weight") t.shape = {32, 128};  // same size
  }
  WriteSafetensors(dir + "/model.safetensors", tensors);
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument,
                  {dir + "/model.safetensors", "model.layers.1.self_attn.q_proj.weight",
                   "[32, 128]", "[64, 64]"});
}

TEST(MalformedModelTest, SizeDisagreesWithShape) {
  const std::string dir = NewDir();
  std::vector<RawTensor> tensors = TinyModelTensors({});
  tensors[3].bytes.resize(tensors[3].bytes.size() - 4);
  WriteSafetensors(dir + "/model.safetensors", tensors);
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument,
                  {dir + "/model.safetensors", tensors[3].name, "bytes"});
}

TEST(MalformedModelTest, MissingTensor) {
  const std::string dir = NewDir();
  std::vector<RawTensor> tensors = TinyModelTensors({});
  std::erase_if(tensors,
                [](const RawTensor& t) { return t.name == "model.layers.1.mlp.up_proj.weight"; });
  WriteSafetensors(dir + "/model.safetensors", tensors);
  ExpectLoadError(dir, absl::StatusCode::kNotFound,
                  {dir + "/model.safetensors", "model.layers.1.mlp.up_proj.weight", "missing"});
}

TEST(MalformedModelTest, UnsupportedDtype) {
  const std::string dir = NewDir();
  std::vector<RawTensor> tensors = TinyModelTensors({});
  tensors[2].dtype = "I32";  // same byte size as F32
  WriteSafetensors(dir + "/model.safetensors", tensors);
  ExpectLoadError(dir, absl::StatusCode::kFailedPrecondition,
                  {dir + "/model.safetensors", tensors[2].name, "I32"});
}

TEST(MalformedModelTest, MissingTokenizer) {
  const std::string dir = NewDir();
  std::filesystem::remove(dir + "/tokenizer.model");
  ExpectLoadError(dir, absl::StatusCode::kNotFound, {dir + "/tokenizer.model"});
}

TEST(MalformedModelTest, CorruptTokenizer) {
  const std::string dir = NewDir();
  const std::string path = dir + "/tokenizer.model";
  WriteText(path, std::string(200, '\xff') + "not a sentencepiece model");
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, {path});
  std::filesystem::resize_file(path, 0);
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, {path});
}

TEST(MalformedModelTest, TokenizerLargerThanConfigVocab) {
  const std::string dir = NewDir();
  EditJson(dir + "/config.json", [](json& c) { c["vocab_size"] = 300; });
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument,
                  {dir + "/tokenizer.model", "320", "vocab_size 300"});
}

TEST(PlainCheckpointTest, LoadsWithoutSpanConfig) {
  const std::string dir = NewDir();
  std::filesystem::remove(dir + "/spanserve.json");
  absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_FALSE((*model)->has_span_config);
  EXPECT_EQ((*model)->span.anchor_id, -1);
  EXPECT_EQ((*model)->span.header_end_id, -1);

  absl::StatusOr<std::unique_ptr<Model>> with_spans = LoadModel(NewDir());
  ASSERT_TRUE(with_spans.ok()) << with_spans.status();
  EXPECT_TRUE((*with_spans)->has_span_config);
  EXPECT_GE((*with_spans)->span.anchor_id, 0);
}

TEST(GenerationConfigTest, SamplingDefaultsAndEosIdsJoinConfigJsons) {
  const std::string dir = NewDir();
  WriteText(dir + "/generation_config.json",
            R"({"do_sample": true, "temperature": 0.6, "top_p": 0.9, "eos_token_id": [5, 2, 7],
                "max_length": 4096, "transformers_version": "4.44.0"})");
  absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  const GenerationDefaults& g = (*model)->generation;
  EXPECT_FLOAT_EQ(g.temperature.value_or(-1), 0.6f);
  EXPECT_FLOAT_EQ(g.top_p.value_or(-1), 0.9f);
  EXPECT_FALSE(g.top_k.has_value());
  // config.json's eos (2) first, then the file's others in their order.
  EXPECT_EQ((*model)->config.eos_token_ids, (std::vector<int32_t>{2, 5, 7}));
  EXPECT_EQ((*model)->tokenizer->eos_id(), 2);
}

TEST(GenerationConfigTest, DoSampleFalseIsGreedyAndAbsentFileChangesNothing) {
  absl::StatusOr<GenerationConfig> greedy = ParseGenerationConfigJson(
      R"({"do_sample": false, "temperature": 0.7, "top_k": 20, "eos_token_id": 3})", "g");
  ASSERT_TRUE(greedy.ok()) << greedy.status();
  EXPECT_FLOAT_EQ(greedy->defaults.temperature.value_or(-1), 0.0f);
  EXPECT_EQ(greedy->defaults.top_k.value_or(-1), 20);
  EXPECT_EQ(greedy->eos_token_ids, (std::vector<int32_t>{3}));

  absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(NewDir());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_FALSE((*model)->generation.temperature.has_value());
  EXPECT_FALSE((*model)->generation.top_p.has_value());
  EXPECT_FALSE((*model)->generation.top_k.has_value());
}

TEST(GenerationConfigTest, BadValuesNameTheFileAndKey) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"temperature": -1})", "temperature"}, {R"({"temperature": "hot"})", "temperature"},
      {R"({"top_p": 0})", "top_p"},              {R"({"top_p": 1.5})", "top_p"},
      {R"({"top_k": -3})", "top_k"},             {R"({"do_sample": 1})", "do_sample"},
      {R"({"eos_token_id": []})", "eos_token_id"}, {R"({"eos_token_id": [1, "x"]})", "eos_token_id"},
      {R"({"eos_token_id": 999})", "eos_token_id"}, {"[1, 2]", "top level"},
      {"{not json", "not valid JSON"}};
  for (const auto& [text, needle] : cases) {
    const std::string dir = NewDir();
    WriteText(dir + "/generation_config.json", text);
    ExpectLoadError(dir, absl::StatusCode::kInvalidArgument,
                    {dir + "/generation_config.json", needle});
  }
}

TEST(MalformedModelTest, BadSpanConfigValue) {
  const std::vector<std::pair<std::string, json>> cases = {{"prompt_segmentation", "words"},
                                                           {"max_header_tokens", 0},
                                                           {"span_protocol", 2},
                                                           {"anchor_token", ""},
                                                           {"header_end_token", "<a>"},
                                                           {"chat_format", "llama3"},
                                                           {"chat_format", 7}};
  for (const auto& [key, value] : cases) {
    const std::string dir = NewDir();
    EditJson(dir + "/spanserve.json", [&key = key, &value = value](json& s) { s[key] = value; });
    ExpectLoadError(dir, absl::StatusCode::kInvalidArgument, {dir + "/spanserve.json", key});
  }
}

TEST(MalformedModelTest, UnknownSpanConfigKey) {
  const std::string dir = NewDir();
  EditJson(dir + "/spanserve.json", [](json& s) { s["segmentation"] = "whole"; });
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument,
                  {dir + "/spanserve.json", "unknown key 'segmentation'"});
}

TEST(MalformedModelTest, AnchorTokenNotInVocabulary) {
  const std::string dir = NewDir();
  EditJson(dir + "/spanserve.json", [](json& s) { s["anchor_token"] = "<span>"; });
  ExpectLoadError(dir, absl::StatusCode::kInvalidArgument,
                  {dir + "/spanserve.json", "anchor_token", "<span>"});
}

TEST(MalformedModelTest, IndexNamesMissingShard) {
  TinyModelSpec spec;
  spec.shards = 3;
  const std::string dir = NewDir(spec);
  std::filesystem::remove(dir + "/model-00002-of-00003.safetensors");
  ExpectLoadError(dir, absl::StatusCode::kNotFound,
                  {dir + "/model-00002-of-00003.safetensors", "model.safetensors.index.json"});
}

TEST(MalformedModelTest, IndexMissingTensor) {
  TinyModelSpec spec;
  spec.shards = 2;
  const std::string dir = NewDir(spec);
  EditJson(dir + "/model.safetensors.index.json",
           [](json& index) { index["weight_map"].erase("model.norm.weight"); });
  ExpectLoadError(dir, absl::StatusCode::kNotFound,
                  {dir + "/model.safetensors.index.json", "model.norm.weight"});
}

TEST(MalformedModelTest, UntiedWithoutLmHead) {
  const std::string dir = NewDir();
  std::vector<RawTensor> tensors = TinyModelTensors({});
  ASSERT_EQ(tensors.back().name, "lm_head.weight");
  tensors.pop_back();
  WriteSafetensors(dir + "/model.safetensors", tensors);
  ExpectLoadError(dir, absl::StatusCode::kNotFound, {dir + "/model.safetensors", "lm_head.weight"});
}

}  // namespace
}  // namespace spanserve
