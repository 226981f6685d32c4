// The SentencePiece tokenizer, built alone into the module libspanserve_sentencepiece.so that
// tokenizer_loader.cc opens. Alone in its file: Debian's sentencepiece_processor.h declares its
// own absl::string_view, so no Abseil header may be included here.
#include <sentencepiece_processor.h>

#include <exception>
#include <random>

#include "engine/model/tokenizer.h"

namespace spanserve {
namespace {

class SentencePieceTokenizer : public Tokenizer {
 public:
  bool Load(const std::string& path, std::string* error, bool decode_tables) {
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
    if (decode_tables) BuildPieceTexts();
    return true;
  }

  std::vector<int32_t> Encode(const std::string& text) const override {
    std::vector<int> ids;
    if (!processor_.Encode(text, &ids).ok()) return {};
    return std::vector<int32_t>(ids.begin(), ids.end());
  }

  // Ids past the tokenizer's pieces (a padded model vocabulary) decode to nothing.
  std::string Decode(const std::vector<int32_t>& ids) const override {
    std::string text;
    if (DecodeFromTables(ids, &text)) return text;
    return DecodeWithProcessor(ids);
  }

  std::string DecodeWithProcessor(const std::vector<int32_t>& ids) const {
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
  // The engine decodes a window of one or two tokens per generated token; the processor
  // costs a few microseconds a call however short the input. Pieces whose text does not
  // depend on their neighbours (all but byte, unknown and control pieces) decode from two
  // tables instead: the text at the start of a decode (where SentencePiece drops the
  // leading space) and anywhere after it. A self-check against the processor at load turns
  // the tables off for a model where that does not hold.
  void BuildPieceTexts() {
    const int32_t n = vocab_size();
    int32_t plain = -1;  // a piece with no space marker, to measure the text after it
    for (int32_t id = 0; id < n && plain < 0; ++id) {
      if (!processor_.IsControl(id) && !processor_.IsByte(id) && !processor_.IsUnknown(id) &&
          !processor_.IsUnused(id) && processor_.IdToPiece(id).rfind("\xE2\x96\x81", 0) != 0 &&
          !DecodeWithProcessor({id}).empty()) {
        plain = id;
      }
    }
    if (plain < 0) return;
    const std::string before = DecodeWithProcessor({plain});
    first_text_.assign(n, std::string());
    next_text_.assign(n, std::string());
    context_free_.assign(n, false);
    for (int32_t id = 0; id < n; ++id) {
      if (processor_.IsControl(id) || processor_.IsByte(id) || processor_.IsUnknown(id)) continue;
      const std::string after = DecodeWithProcessor({plain, id});
      if (after.compare(0, before.size(), before) != 0) continue;
      first_text_[id] = DecodeWithProcessor({id});
      next_text_[id] = after.substr(before.size());
      context_free_[id] = true;
    }
    std::mt19937 rng(17);
    std::uniform_int_distribution<int32_t> pick(0, n - 1);
    for (int trial = 0; trial < 64; ++trial) {
      std::vector<int32_t> ids;
      while (ids.size() < 1 + trial % 6) {
        const int32_t id = pick(rng);
        if (context_free_[id]) ids.push_back(id);
      }
      std::string fast;
      if (!DecodeFromTables(ids, &fast) || fast != DecodeWithProcessor(ids)) {
        context_free_.clear();  // this model's pieces are not context-free: processor only
        return;
      }
    }
  }

  bool DecodeFromTables(const std::vector<int32_t>& ids, std::string* text) const {
    if (context_free_.empty()) return false;
    const int32_t n = vocab_size();
    bool first = true;
    for (int32_t id : ids) {
      if (id < 0 || id >= n) continue;
      if (!context_free_[id]) return false;
      *text += first ? first_text_[id] : next_text_[id];
      first = false;
    }
    return true;
  }

  sentencepiece::SentencePieceProcessor processor_;
  std::vector<std::string> first_text_, next_text_;
  std::vector<bool> context_free_;  // empty: the tables are off
};

}  // namespace
}  // namespace spanserve

// The module's one entry point; the caller owns the result (null on failure, with *error set).
extern "C" __attribute__((visibility("default"))) spanserve::Tokenizer*
spanserve_load_sentencepiece(const char* path, std::string* error, bool decode_tables) {
  auto tokenizer = std::make_unique<spanserve::SentencePieceTokenizer>();
  if (!tokenizer->Load(path, error, decode_tables)) return nullptr;
  return tokenizer.release();
}
