#include "engine/core/detokenizer.h"

#include <algorithm>

namespace spanserve {

TextStream::TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop)
    : tokenizer_(tokenizer), stop_(std::move(stop)) {}

namespace {

// True when s ends inside a UTF-8 sequence (byte-fallback tokens arrive one byte at a time)
// or with the replacement character a decoder gives for such bytes.
bool EndsIncomplete(const std::string& s) {
  if (s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0) return true;
  for (size_t back = 1; back <= std::min<size_t>(3, s.size()); ++back) {
    const unsigned char c = s[s.size() - back];
    if ((c & 0xC0) == 0x80) continue;           // continuation byte: look further back
    if (c < 0x80) return false;                 // ASCII
    const size_t len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
    return back < len;
  }
  return false;
}

}  // namespace

// Decodes the new tokens against a short window of earlier ones, so that pieces whose text
// depends on their neighbours (leading spaces, multi-byte characters) come out right.
std::string TextStream::DecodeDelta() {
  const std::vector<int32_t> window(ids_.begin() + prefix_offset_, ids_.end());
  const std::vector<int32_t> context(ids_.begin() + prefix_offset_, ids_.begin() + read_offset_);
  const std::string full = tokenizer_->Decode(window);
  const std::string before = tokenizer_->Decode(context);
  if (full.size() <= before.size() || EndsIncomplete(full)) return "";
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return full.substr(before.size());
}

std::string TextStream::Release(size_t upto) {
  if (upto <= released_) return "";
  std::string out = text_.substr(released_, upto - released_);
  released_ = upto;
  return out;
}

std::string TextStream::Add(int32_t token, bool* stopped) {
  *stopped = false;
  ids_.push_back(token);
  text_ += DecodeDelta();
  // A stop string can only begin at or after what was released (the tail was held back).
  size_t first_stop = std::string::npos;
  for (const std::string& stop : stop_) {
    const size_t from = released_ > stop.size() ? released_ - stop.size() : 0;
    const size_t at = text_.find(stop, from);
    if (at != std::string::npos) first_stop = std::min(first_stop, at);
  }
  if (first_stop != std::string::npos) {
    text_.resize(std::max(first_stop, released_));
    *stopped = true;
    return Release(text_.size());
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& stop : stop_) {
    for (size_t len = std::min(stop.size() - 1, text_.size()); len > hold; --len) {
      if (text_.compare(text_.size() - len, len, stop, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  return Release(text_.size() - hold);
}

std::string TextStream::Flush() { return Release(text_.size()); }

}  // namespace spanserve
