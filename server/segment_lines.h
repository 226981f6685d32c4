// SegmentLines: the client-side rendering of spanserve-cli that puts each output segment on its
// own line, from text that carries the span markup.
#pragma once

#include <algorithm>
#include <string>
#include <utility>

namespace spanserve {

// Turns text with span markup into one output segment a line: each header (anchor ... header
// end) becomes a line break, the first one nothing. Text may end inside a header or a marker;
// what could still be one is held back until the next piece.
class SegmentLines {
 public:
  SegmentLines(std::string anchor, std::string header_end)
      : anchor_(std::move(anchor)), header_end_(std::move(header_end)) {}

  std::string Feed(const std::string& piece) {
    pending_ += piece;
    std::string out;
    for (;;) {
      if (in_header_) {
        const size_t end = pending_.find(header_end_);
        if (end == std::string::npos) return out;
        pending_.erase(0, end + header_end_.size());
        in_header_ = false;
        continue;
      }
      const size_t start = pending_.find(anchor_);
      if (start == std::string::npos) {
        const size_t keep = PartialMarker();
        out += pending_.substr(0, pending_.size() - keep);
        printed_ = printed_ || pending_.size() > keep;
        pending_.erase(0, pending_.size() - keep);
        return out;
      }
      out += pending_.substr(0, start);
      if (printed_ || start > 0) out += "\n";
      printed_ = true;
      pending_.erase(0, start + anchor_.size());
      in_header_ = true;
    }
  }

  // What is still held back at the end (an unfinished marker is text after all).
  std::string Flush() { return in_header_ ? std::string() : std::exchange(pending_, {}); }

 private:
  // Length of the longest end of pending_ that begins the anchor.
  size_t PartialMarker() const {
    for (size_t n = std::min(anchor_.size() - 1, pending_.size()); n > 0; --n) {
      if (pending_.compare(pending_.size() - n, n, anchor_, 0, n) == 0) return n;
    }
    return 0;
  }

  std::string anchor_, header_end_, pending_;
  bool in_header_ = false;
  bool printed_ = false;
};

}  // namespace spanserve
