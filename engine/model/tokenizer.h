// Tokenizer interface. The SentencePiece implementation lives alone in tokenizer_sp.cc, because
// Debian's sentencepiece_processor.h declares its own absl::string_view, which clashes with
// Abseil's: this header must not include Abseil either.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace spanserve {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Control (special) tokens typed in `text`, such as `<s>` or a span marker, are encoded as
  // plain text: a prompt cannot forge one (docs/tokenizers.md).
  virtual std::vector<int32_t> Encode(const std::string& text) const = 0;
  // Encode with the special tokens typed in `text` read as those tokens, for callers whose
  // model config allows it. Tokenizers without the distinction encode as Encode does.
  virtual std::vector<int32_t> EncodeWithSpecialTokens(const std::string& text) const {
    return Encode(text);
  }
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;
  // The piece text of an id, SentencePiece's space marker (U+2581) kept.
  virtual std::string IdToPiece(int32_t id) const = 0;
  // -1 when the piece is not in the vocabulary.
  virtual int32_t PieceToId(const std::string& piece) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
};

// Loads a SentencePiece model file. On failure returns null and sets *error. decode_tables:
// short decodes of context-free pieces from tables (false: every decode by the processor, the
// reference the tables are tested against).
std::unique_ptr<Tokenizer> LoadSentencePieceTokenizer(const std::string& path,
                                                      std::string* error,
                                                      bool decode_tables = true);

// The tokenizer of a model directory: tokenizer.json (Hugging Face) when present, else
// tokenizer.model (SentencePiece). Null with *error (naming the file) on failure; *path, when
// given, is set to the file chosen (empty when neither exists).
std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& model_dir, std::string* error,
                                         std::string* path = nullptr);

}  // namespace spanserve
