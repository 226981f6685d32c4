// engine/model/tokenizer_hf.cc against Hugging Face `tokenizers` 0.23.2: for each kind under
// tests/data/tokenizers (training/tools/make_tokenizer_references.mjs made them), every text's
// ids (special tokens as plain text, and matched), the post-processor's ids and the decoded
// text equal the library's.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/model/tokenizer_hf.h"

namespace spanserve {
namespace {

const std::string kDataDir = SPANSERVE_SOURCE_DIR "/tests/data/tokenizers/";
const char* const kKinds[] = {"gpt2", "llama3", "qwen2", "sp_prepend", "sp_metaspace"};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class ReferenceTest : public ::testing::TestWithParam<const char*> {};

TEST_P(ReferenceTest, EncodeAndDecodeMatchTheLibrary) {
  const std::string dir = kDataDir + GetParam();
  std::string error;
  std::unique_ptr<HfTokenizer> tok = LoadHfTokenizer(dir + "/tokenizer.json", &error);
  ASSERT_NE(tok, nullptr) << error;
  const nlohmann::json expected = nlohmann::json::parse(ReadFile(dir + "/expected.json"));
  ASSERT_GT(expected.at("cases").size(), 20u);
  for (const nlohmann::json& c : expected.at("cases")) {
    const std::string text = c.at("text");
    SCOPED_TRACE("text: \"" + text + "\" tokens: " + c.at("tokens").dump());
    const std::vector<int32_t> ids = c.at("ids"), matched = c.at("ids_special_matched"),
                               with_template = c.at("ids_template");
    EXPECT_EQ(tok->Encode(text), ids);
    EXPECT_EQ(tok->EncodeWithSpecialTokens(text), matched);
    EXPECT_EQ(tok->AddTemplateTokens(tok->EncodeWithSpecialTokens(text)), with_template);
    EXPECT_EQ(tok->Decode(ids), c.at("decoded").get<std::string>());
    EXPECT_EQ(tok->Decode(matched), c.at("decoded_special_matched").get<std::string>());
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, ReferenceTest, ::testing::ValuesIn(kKinds));

// The rule of docs/tokenizers.md: a prompt that types a span marker or <s> gets text ids, never
// the control token; EncodeWithSpecialTokens reads them as the tokens.
TEST(HfTokenizer, TypedSpecialTokensAreText) {
  for (const char* kind : kKinds) {
    SCOPED_TRACE(kind);
    std::string error;
    std::unique_ptr<HfTokenizer> tok =
        LoadHfTokenizer(kDataDir + kind + "/tokenizer.json", &error);
    ASSERT_NE(tok, nullptr) << error;
    const int32_t anchor = tok->PieceToId("<a>"), header_end = tok->PieceToId("</a>");
    ASSERT_GE(anchor, 0);
    ASSERT_GE(header_end, 0);
    const std::vector<int32_t> plain = tok->Encode("x <a>0</a> y");
    EXPECT_EQ(std::count(plain.begin(), plain.end(), anchor), 0);
    EXPECT_EQ(std::count(plain.begin(), plain.end(), header_end), 0);
    EXPECT_EQ(tok->Decode(plain), "x <a>0</a> y");
    const std::vector<int32_t> matched = tok->EncodeWithSpecialTokens("x <a>0</a> y");
    EXPECT_EQ(std::count(matched.begin(), matched.end(), anchor), 1);
    EXPECT_EQ(std::count(matched.begin(), matched.end(), header_end), 1);
  }
}

TEST(HfTokenizer, PiecesAndIds) {
  std::string error;
  std::unique_ptr<HfTokenizer> tok = LoadHfTokenizer(kDataDir + "llama3/tokenizer.json", &error);
  ASSERT_NE(tok, nullptr) << error;
  const int32_t bos = tok->PieceToId("<|begin_of_text|>");
  EXPECT_GE(bos, 0);
  EXPECT_EQ(tok->bos_id(), bos);
  EXPECT_EQ(tok->IdToPiece(bos), "<|begin_of_text|>");
  EXPECT_EQ(tok->PieceToId("no such piece"), -1);
  EXPECT_EQ(tok->IdToPiece(-1), "");
  EXPECT_EQ(tok->IdToPiece(tok->vocab_size()), "");
  EXPECT_EQ(tok->IdToPiece(tok->PieceToId("\u0120QUICK")), "\u0120QUICK");
  // Ids past the vocabulary (a padded model) decode to nothing.
  EXPECT_EQ(tok->Decode({tok->vocab_size() + 5}), "");
  std::unique_ptr<HfTokenizer> qwen = LoadHfTokenizer(kDataDir + "qwen2/tokenizer.json", &error);
  ASSERT_NE(qwen, nullptr) << error;
  EXPECT_EQ(qwen->bos_id(), -1);  // no template: Qwen2 adds no BOS
}

TEST(HfTokenizer, InvalidUtf8IsReplacedNotACrash) {
  std::string error;
  std::unique_ptr<HfTokenizer> tok = LoadHfTokenizer(kDataDir + "gpt2/tokenizer.json", &error);
  ASSERT_NE(tok, nullptr) << error;
  EXPECT_EQ(tok->Decode(tok->Encode("a\xff" "b\xe6\x97")), "a\uFFFDb\uFFFD");
}

// Edits one field of a real file; the load must fail with a message naming what is wrong.
void ExpectError(const std::string& kind, const std::function<void(nlohmann::json&)>& edit,
                 const std::string& needle) {
  nlohmann::json j = nlohmann::json::parse(ReadFile(kDataDir + kind + "/tokenizer.json"));
  edit(j);
  std::string error;
  EXPECT_EQ(ParseHfTokenizer(j.dump(), &error), nullptr) << needle;
  EXPECT_NE(error.find(needle), std::string::npos) << needle << " error: " << error;
}

TEST(HfTokenizer, MalformedFilesAreErrors) {
  using J = nlohmann::json;
  ExpectError("gpt2", [](J& j) { j["model"]["type"] = "Unigram"; }, "\"Unigram\"");
  ExpectError("gpt2", [](J& j) { j["pre_tokenizer"]["type"] = "Whitespace"; }, "\"Whitespace\"");
  ExpectError("sp_prepend", [](J& j) { j["normalizer"]["normalizers"][0]["type"] = "Nmt"; },
              "\"Nmt\"");
  ExpectError("gpt2", [](J& j) { j["decoder"]["type"] = "WordPiece"; }, "\"WordPiece\"");
  ExpectError("gpt2", [](J& j) { j["post_processor"]["type"] = "BertProcessing"; },
              "\"BertProcessing\"");
  ExpectError("llama3", [](J& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(["}}; },
              "bad regex");
  ExpectError("llama3", [](J& j) { j["model"]["merges"][0] = J::array({"x", "nope"}); },
              "not in the vocab");
  ExpectError("gpt2", [](J& j) { j["model"]["merges"][0] = "nospace"; }, "is not \"a b\"");
  ExpectError("gpt2", [](J& j) { j["model"]["merges"][0] = J::array({"h"}); }, "is not [a, b]");
  ExpectError("gpt2", [](J& j) { j["model"]["vocab"] = 7; }, "vocab must be an object");
  ExpectError("gpt2", [](J& j) { j["model"]["vocab"]["x"] = "seven"; }, "not a valid tokenizer.json");
  ExpectError("gpt2", [](J& j) { j.erase("model"); }, "no \"model\"");
  ExpectError("gpt2", [](J& j) { j["model"]["dropout"] = 0.1; }, "dropout");
  ExpectError("sp_prepend", [](J& j) { j["model"]["unk_token"] = "<nope>"; }, "unk_token");
  ExpectError("gpt2", [](J& j) { j["added_tokens"][0]["id"] = -4; }, "out of range");
  ExpectError("gpt2", [](J& j) { j["decoder"].erase("type"); }, "without a \"type\"");

  std::string error;
  for (const std::string text : {"", "{", "[1,2]", "null", "{\"model\": 3}", "\xff\xfe"}) {
    error.clear();
    EXPECT_EQ(ParseHfTokenizer(text, &error), nullptr) << text;
    EXPECT_FALSE(error.empty()) << text;
  }
  EXPECT_EQ(LoadHfTokenizer("/nonexistent/tokenizer.json", &error), nullptr);
  EXPECT_EQ(error, "cannot read the file");
}

// Files before tokenizers 0.20 write each merge as one "a b" string: the same tokenizer.
TEST(HfTokenizer, MergesAsStrings) {
  nlohmann::json j = nlohmann::json::parse(ReadFile(kDataDir + "gpt2/tokenizer.json"));
  for (nlohmann::json& m : j["model"]["merges"])
    m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  std::string error;
  std::unique_ptr<HfTokenizer> strings = ParseHfTokenizer(j.dump(), &error);
  ASSERT_NE(strings, nullptr) << error;
  std::unique_ptr<HfTokenizer> arrays = LoadHfTokenizer(kDataDir + "gpt2/tokenizer.json", &error);
  ASSERT_NE(arrays, nullptr) << error;
  const std::string text = "Hello world, the cat sat on the mat. def main(): return 0";
  EXPECT_EQ(strings->Encode(text), arrays->Encode(text));
  EXPECT_LT(arrays->Encode(text).size(), text.size() / 2);  // the merges took effect
}

// Truncations of a real file at every 997th byte: each an error, never a crash.
TEST(HfTokenizer, TruncatedFilesAreErrors) {
  const std::string text = ReadFile(kDataDir + "sp_metaspace/tokenizer.json");
  for (size_t n = 0; n + 1 < text.size(); n += 997) {
    std::string error;
    EXPECT_EQ(ParseHfTokenizer(text.substr(0, n), &error), nullptr) << n;
    EXPECT_FALSE(error.empty());
  }
}

TEST(LoadTokenizer, PrefersTokenizerJson) {
  const std::string dir = testing::TempDir() + "/tok_dir";
  std::filesystem::create_directories(dir);
  std::string error, path;
  EXPECT_EQ(LoadTokenizer(dir, &error, &path), nullptr);
  EXPECT_NE(error.find("no tokenizer.json or tokenizer.model"), std::string::npos) << error;
  std::filesystem::copy_file(SPANSERVE_SOURCE_DIR "/tests/data/tokenizer/tokenizer.model",
                             dir + "/tokenizer.model",
                             std::filesystem::copy_options::overwrite_existing);
  std::unique_ptr<Tokenizer> sp = LoadTokenizer(dir, &error, &path);
  ASSERT_NE(sp, nullptr) << error;
  EXPECT_EQ(path, dir + "/tokenizer.model");
  std::filesystem::copy_file(kDataDir + "llama3/tokenizer.json", dir + "/tokenizer.json",
                             std::filesystem::copy_options::overwrite_existing);
  std::unique_ptr<Tokenizer> hf = LoadTokenizer(dir, &error, &path);
  ASSERT_NE(hf, nullptr) << error;
  EXPECT_EQ(path, dir + "/tokenizer.json");
  EXPECT_EQ(hf->PieceToId("<|begin_of_text|>"), hf->bos_id());
  std::ofstream(dir + "/tokenizer.json") << "{\"model\": {\"type\": \"WordPiece\"}}";
  EXPECT_EQ(LoadTokenizer(dir, &error, &path), nullptr);
  EXPECT_NE(error.find(dir + "/tokenizer.json: "), std::string::npos) << error;
  EXPECT_NE(error.find("WordPiece"), std::string::npos) << error;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace spanserve
