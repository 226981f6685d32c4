// The SentencePiece tokenizer, built alone into the module libspanserve_sentencepiece.so that
// tokenizer_loader.cc opens. Alone in its file: Debian's sentencepiece_processor.h declares its
// own absl::string_view, so no Abseil header may be included here.
#include <sentencepiece_processor.h>

#include <exception>

#include "engine/model/tokenizer.h"

namespace spanserve {
namespace {

class SentencePieceTokenizer : public Tokenizer {
 public:
  bool Load(const std::string& path, std::string* error) {
    try {
      const sentencepiece::util::Status status = processor_.Load(path);
      if (!status.ok()) {
        *error = status.ToString();
        return false;
      }
    } catch (const std::exception& e) {
      *error = e.what();
      return false;
    }
    if (processor_.GetPieceSize() <= 0) {
      *error = "the model has no pieces";
      return false;
    }
    return true;
  }

  std::vector<int32_t> Encode(const std::string& text) const override {
    std::vector<int> ids;
    if (!processor_.Encode(text, &ids).ok()) return {};
    return std::vector<int32_t>(ids.begin(), ids.end());
  }

  // Ids past the tokenizer's pieces (a padded model vocabulary) decode to nothing.
  std::string Decode(const std::vector<int32_t>& ids) const override {
    std::vector<int> known;
    known.reserve(ids.size());
    for (int32_t id : ids) {
      if (id >= 0 && id < vocab_size()) known.push_back(id);
    }
    std::string text;
    if (!processor_.Decode(known, &text).ok()) return {};
    return text;
  }

  std::string IdToPiece(int32_t id) const override {
    if (id < 0 || id >= vocab_size()) return {};
    return processor_.IdToPiece(id);
  }

  // SentencePiece answers unknown pieces with the <unk> id; this interface says -1.
  int32_t PieceToId(const std::string& piece) const override {
    const int id = processor_.PieceToId(piece);
    if (id < 0 || id >= vocab_size()) return -1;
    if (processor_.IdToPiece(id) != piece) return -1;
    return id;
  }

  int32_t vocab_size() const override { return processor_.GetPieceSize(); }
  int32_t bos_id() const override { return processor_.bos_id(); }
  int32_t eos_id() const override { return processor_.eos_id(); }

 private:
  sentencepiece::SentencePieceProcessor processor_;
};

}  // namespace
}  // namespace spanserve

// The module's one entry point; the caller owns the result (null on failure, with *error set).
extern "C" __attribute__((visibility("default"))) spanserve::Tokenizer*
spanserve_load_sentencepiece(const char* path, std::string* error) {
  auto tokenizer = std::make_unique<spanserve::SentencePieceTokenizer>();
  if (!tokenizer->Load(path, error)) return nullptr;
  return tokenizer.release();
}
