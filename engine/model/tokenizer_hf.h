// The Hugging Face tokenizer.json format (BPE models: GPT-2, LLaMA-3, Qwen2 byte-level, and the
// SentencePiece-style LLaMA-2/Mistral files with byte fallback), matching the `tokenizers`
// library (tests/data/tokenizers holds its reference ids). docs/tokenizers.md lists the
// components read; any other component type is a load error naming it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/model/tokenizer.h"

namespace spanserve {

class HfTokenizer : public Tokenizer {
 public:
  struct Impl;
  explicit HfTokenizer(std::unique_ptr<Impl> impl);
  ~HfTokenizer() override;

  // Special added tokens typed in `text` are plain text (see tokenizer.h).
  std::vector<int32_t> Encode(const std::string& text) const override;
  std::vector<int32_t> EncodeWithSpecialTokens(const std::string& text) const override;
  // Skips no token: special tokens decode to their text, as span markup needs.
  std::string Decode(const std::vector<int32_t>& ids) const override;
  std::string IdToPiece(int32_t id) const override;
  int32_t PieceToId(const std::string& piece) const override;
  int32_t vocab_size() const override;
  // The post-processor's token before the text (TemplateProcessing), -1 without one.
  int32_t bos_id() const override;
  // -1: tokenizer.json does not say which token ends a sequence (config.json does).
  int32_t eos_id() const override;

  // The ids the post-processor puts around one sequence (add_special_tokens=True).
  std::vector<int32_t> AddTemplateTokens(const std::vector<int32_t>& ids) const;
  std::vector<int32_t> Encode(const std::string& text, bool match_special) const;

 private:
  std::unique_ptr<Impl> impl_;
};

// From the text of a tokenizer.json; null with *error set when it is not one this reads.
std::unique_ptr<HfTokenizer> ParseHfTokenizer(const std::string& json_text, std::string* error);
std::unique_ptr<HfTokenizer> LoadHfTokenizer(const std::string& path, std::string* error);

}  // namespace spanserve
