// Incremental detokenization with stop strings. Text is released as tokens arrive, but a tail
// that could still grow into a stop string is held back; a completed stop string ends the text
// just before it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/model/tokenizer.h"

namespace spanserve {

class TextStream {
 public:
  TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop);

  // Adds a visible token. Returns the newly released text; sets *stopped when a stop string
  // completed (the text then ends before it, and later tokens must not be added).
  std::string Add(int32_t token, bool* stopped);
  // Releases the held-back tail, at the end of generation.
  std::string Flush();

  const std::string& text() const { return text_; }  // includes the held-back tail

 private:
  std::string DecodeDelta();
  std::string Release(size_t upto);

  const Tokenizer* tokenizer_;
  std::vector<std::string> stop_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;  // ids_[prefix_offset_, read_offset_) is the decoding context
  size_t read_offset_ = 0;
  std::string text_;
  size_t released_ = 0;
};

}  // namespace spanserve
