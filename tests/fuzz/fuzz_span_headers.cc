// libFuzzer: the span rule (engine/core/span_rules.h) on token sequences over a small vocabulary of
// digits, ',', '*', a multi-digit piece, content, <a>, </a> and an id past the pieces; then the
// same bytes as prompt text through SegmentPromptText. Checks what the engine relies on: every
// position's attended ranges are sorted, disjoint, causal and end at the position itself; the
// segments and their references are well formed; the malformed count matches the segments.
//
// Input: byte 0 picks max_header_tokens (1..16), byte 1 the mode (bit 0) and the prompt length
// (the other bits); every later byte is one token.
#include <algorithm>
#include <cctype>
#include <span>

#include "engine/core/span_rules.h"
#include "tests/fuzz/fuzz_check.h"

namespace spanserve {
namespace {

// Ids: 0-9 digits, 10 ',', 11 '*', 12 "12", 13 'x', 14 <a>, 15 </a>, 16 <s>, 17 past the pieces.
constexpr int32_t kAnchor = 14, kHeaderEnd = 15, kNumIds = 18;

std::vector<std::string> Pieces() {
  std::vector<std::string> pieces;
  for (int d = 0; d < 10; ++d) pieces.push_back(std::to_string(d));
  for (const char* p : {",", "*", "12", "x", "<a>", "</a>", "<s>"}) pieces.push_back(p);
  return pieces;
}

using fuzz::Check;

void CheckTracker(const SpanTracker& tracker, const std::vector<int32_t>& tokens) {
  Check(tracker.size() == static_cast<int32_t>(tokens.size()), "size");
  const std::vector<SegmentInfo>& segments = tracker.segments();
  int32_t malformed = 0;
  for (size_t s = 0; s < segments.size(); ++s) {
    const SegmentInfo& seg = segments[s];
    Check(tokens[seg.start] == kAnchor, "a segment that does not start at an anchor");
    Check(s == 0 || seg.start > segments[s - 1].start, "segment starts out of order");
    Check(seg.header_end == -1 || seg.header_end > seg.start, "header end before its anchor");
    Check(!(seg.restricted && (seg.malformed || seg.star)), "restricted and dense at once");
    Check(!seg.restricted || tracker.mode() == SpanMode::kSelfSelected, "restricted in dense");
    Check(!seg.malformed || seg.refs.empty(), "a malformed segment with references");
    for (size_t i = 0; i < seg.refs.size(); ++i) {
      Check(seg.refs[i] >= 0 && seg.refs[i] < static_cast<int32_t>(s), "a forward reference");
      Check(std::count(seg.refs.begin(), seg.refs.end(), seg.refs[i]) == 1, "a repeated ref");
    }
    malformed += seg.malformed;
  }
  Check(malformed == tracker.malformed_count(), "malformed_count disagrees with the segments");

  std::vector<TokenRange> ranges;
  for (int32_t q = 0; q < tracker.size(); ++q) {
    tracker.AttendedRanges(q, &ranges);
    Check(!ranges.empty() && ranges.back().end == q + 1, "ranges that do not end at q");
    for (size_t i = 0; i < ranges.size(); ++i) {
      Check(ranges[i].begin >= 0 && ranges[i].begin < ranges[i].end, "an empty range");
      Check(i == 0 || ranges[i].begin > ranges[i - 1].end, "ranges unsorted or unmerged");
    }
    if (tracker.IsDense(q)) Check(ranges.size() == 1 && ranges[0].begin == 0, "dense not whole");
    const TokenRole role = tracker.RoleAt(q);
    Check((role == TokenRole::kAnchor) == (tokens[q] == kAnchor), "anchor role");
  }
}

// Pieces are non-empty and trimmed; with whitespace removed they add up to the prompt.
void CheckSegmentation(const std::string& prompt, Segmentation rule) {
  const std::vector<std::string> pieces = SegmentPromptText(prompt, rule);
  auto squeeze = [](std::string text) {
    std::erase_if(text, [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; });
    return text;
  };
  if (rule == Segmentation::kWhole || rule == Segmentation::kClient) {
    Check(pieces.size() == 1 && pieces[0] == prompt, "whole prompt cut");
    return;
  }
  std::string joined;
  for (const std::string& piece : pieces) {
    Check(!piece.empty() && !std::isspace(static_cast<unsigned char>(piece.front())) &&
              !std::isspace(static_cast<unsigned char>(piece.back())),
          "an empty or untrimmed segment");
    joined += piece;
  }
  Check(squeeze(joined) == squeeze(prompt), "segments lose or add text");
}

}  // namespace
}  // namespace spanserve

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace spanserve;
  if (size < 2) return 0;
  static const std::vector<std::string> pieces = Pieces();
  const int32_t max_header_tokens = 1 + data[0] % 16;
  const SpanMode mode = data[1] & 1 ? SpanMode::kDense : SpanMode::kSelfSelected;
  std::vector<int32_t> tokens;
  for (size_t i = 2; i < size; ++i) tokens.push_back(data[i] % kNumIds);
  const size_t prompt_len = std::min<size_t>(data[1] >> 1, tokens.size());

  const SpanVocab vocab(kAnchor, kHeaderEnd, max_header_tokens, pieces);
  SpanTracker tracker(&vocab, mode, std::span<const int32_t>(tokens.data(), prompt_len));
  for (size_t i = prompt_len; i < tokens.size(); ++i) {
    const AppendResult appended = tracker.Append(tokens[i]);
    Check(!appended.found_malformed || tracker.malformed_count() > 0, "found_malformed");
  }
  CheckTracker(tracker, tokens);

  const std::string text(reinterpret_cast<const char*>(data), size);
  for (Segmentation rule : {Segmentation::kWhole, Segmentation::kSentences,
                            Segmentation::kParagraphs, Segmentation::kClient}) {
    CheckSegmentation(text, rule);
  }
  return 0;
}
