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
  virtual std::vector<int32_t> Encode(const std::string& text) const = 0;
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;
  // The piece text of an id, SentencePiece's space marker (U+2581) kept.
  virtual std::string IdToPiece(int32_t id) const = 0;
  // -1 when the piece is not in the vocabulary.
  virtual int32_t PieceToId(const std::string& piece) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
};

// Loads a SentencePiece model file. On failure returns null and sets *error.
std::unique_ptr<Tokenizer> LoadSentencePieceTokenizer(const std::string& path,
                                                      std::string* error);

}  // namespace spanserve
