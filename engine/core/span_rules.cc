#include "engine/core/span_rules.h"

#include <algorithm>
#include <cctype>

namespace spanserve {

SpanVocab::SpanVocab(int32_t anchor_id, int32_t header_end_id, int32_t max_header_tokens,
                     std::vector<std::string> pieces)
    : anchor_id_(anchor_id),
      header_end_id_(header_end_id),
      max_header_tokens_(max_header_tokens),
      pieces_(std::move(pieces)) {}

SpanVocab SpanVocab::FromModel(const Model& model) {
  std::vector<std::string> pieces(model.tokenizer->vocab_size());
  for (int32_t id = 0; id < static_cast<int32_t>(pieces.size()); ++id) {
    pieces[id] = model.tokenizer->IdToPiece(id);
  }
  return SpanVocab(model.span.anchor_id, model.span.header_end_id, model.span.max_header_tokens,
                   std::move(pieces));
}

const std::string& SpanVocab::piece(int32_t id) const {
  // Ids past the tokenizer (a model vocabulary may be padded) have no text.
  if (id < 0 || id >= static_cast<int32_t>(pieces_.size())) return empty_;
  return pieces_[id];
}

namespace {

// Parses a closed header's text. Returns false when malformed; sets *star for `*`.
bool ParseHeader(const std::string& text, int32_t segment, bool* star,
                 std::vector<int32_t>* refs) {
  *star = false;
  refs->clear();
  if (text == "*") {
    *star = true;
    return true;
  }
  if (text.empty()) return true;
  size_t i = 0;
  while (true) {
    size_t digits = 0;
    int64_t value = 0;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
      if (++digits > 9) return false;
      value = value * 10 + (text[i] - '0');
      ++i;
    }
    if (digits == 0 || value >= segment) return false;
    if (std::find(refs->begin(), refs->end(), value) != refs->end()) return false;
    refs->push_back(static_cast<int32_t>(value));
    if (i == text.size()) return true;
    if (text[i] != ',') return false;
    ++i;
  }
}

}  // namespace

SpanTracker::SpanTracker(const SpanVocab* vocab, SpanMode mode, std::span<const int32_t> prompt)
    : vocab_(vocab), mode_(mode), prompt_len_(static_cast<int32_t>(prompt.size())) {
  roles_.reserve(prompt.size());
  for (int32_t token : prompt) AppendAt(token, /*in_prompt=*/true);
}

AppendResult SpanTracker::Append(int32_t token) { return AppendAt(token, /*in_prompt=*/false); }

bool SpanTracker::MarkMalformed(SegmentInfo* seg) {
  seg->malformed = true;
  seg->restricted = false;
  seg->refs.clear();
  ++malformed_count_;
  return true;
}

AppendResult SpanTracker::AppendAt(int32_t token, bool in_prompt) {
  AppendResult result;
  const int32_t position = size();
  if (token == vocab_->anchor_id()) {
    if (header_open_) result.found_malformed = MarkMalformed(&segments_.back());  // never closed
    SegmentInfo seg;
    seg.start = position;
    seg.in_prompt = in_prompt;
    segments_.push_back(seg);
    header_open_ = !in_prompt;
    result.role = TokenRole::kAnchor;
  } else if (header_open_) {
    SegmentInfo& seg = segments_.back();
    if (token == vocab_->header_end_id()) {
      header_open_ = false;
      seg.header_end = position;
      CloseHeader(&seg, static_cast<int32_t>(segments_.size()) - 1);
      result.found_malformed = seg.malformed;
      result.role = TokenRole::kHeaderEnd;
    } else if (seg.header_tokens == vocab_->max_header_tokens()) {
      header_open_ = false;  // overflow: the rest of the segment is dense content
      result.found_malformed = MarkMalformed(&seg);
      result.role = TokenRole::kContent;
    } else {
      ++seg.header_tokens;
      seg.header_text += vocab_->piece(token);
      result.role = TokenRole::kHeader;
    }
  } else {
    result.role = segments_.empty() ? TokenRole::kSink : TokenRole::kContent;
  }
  roles_.push_back(result.role);
  return result;
}

void SpanTracker::CloseHeader(SegmentInfo* seg, int32_t index) {
  if (!ParseHeader(seg->header_text, index, &seg->star, &seg->refs)) {
    MarkMalformed(seg);
    return;
  }
  seg->restricted = !seg->star && mode_ == SpanMode::kSelfSelected;
}

int32_t SpanTracker::sink_end() const { return segments_.empty() ? size() : segments_[0].start; }

int32_t SpanTracker::SegmentOf(int32_t q) const {
  auto it = std::upper_bound(segments_.begin(), segments_.end(), q,
                             [](int32_t pos, const SegmentInfo& s) { return pos < s.start; });
  return static_cast<int32_t>(it - segments_.begin()) - 1;
}

int32_t SpanTracker::SegmentEnd(int32_t index) const {
  return index + 1 < static_cast<int32_t>(segments_.size()) ? segments_[index + 1].start : size();
}

bool SpanTracker::IsDense(int32_t q) const {
  const int32_t s = SegmentOf(q);
  if (s < 0) return true;
  const SegmentInfo& seg = segments_[s];
  return !seg.restricted || q < seg.header_end;
}

void SpanTracker::AttendedRanges(int32_t q, std::vector<TokenRange>* out) const {
  out->clear();
  if (IsDense(q)) {
    out->push_back({0, q + 1});
    return;
  }
  const int32_t s = SegmentOf(q);
  auto add = [out](int32_t begin, int32_t end) {
    if (begin >= end) return;
    if (!out->empty() && out->back().end >= begin) {
      out->back().end = std::max(out->back().end, end);
    } else {
      out->push_back({begin, end});
    }
  };
  std::vector<int32_t> refs = segments_[s].refs;
  std::sort(refs.begin(), refs.end());
  add(0, sink_end());
  for (int32_t r : refs) add(segments_[r].start, SegmentEnd(r));
  add(segments_[s].start, q + 1);
}

std::vector<std::string> SegmentPromptText(const std::string& prompt, Segmentation rule) {
  auto is_space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  auto strip = [&](std::string_view s) {
    while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
    while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
    return std::string(s);
  };
  std::vector<std::string> out;
  if (rule == Segmentation::kWhole || rule == Segmentation::kClient) {
    out.push_back(prompt);
    return out;
  }
  auto emit = [&](size_t begin, size_t end) {
    std::string piece = strip(std::string_view(prompt).substr(begin, end - begin));
    if (!piece.empty()) out.push_back(std::move(piece));
  };
  size_t begin = 0;
  size_t i = 0;
  while (i < prompt.size()) {
    size_t cut = std::string::npos;  // where the current piece ends
    size_t next = i + 1;             // where scanning resumes
    if (rule == Segmentation::kSentences && (prompt[i] == '.' || prompt[i] == '!' ||
                                             prompt[i] == '?')) {
      size_t j = i;
      while (j < prompt.size() && (prompt[j] == '.' || prompt[j] == '!' || prompt[j] == '?')) ++j;
      while (j < prompt.size() && (prompt[j] == '"' || prompt[j] == '\'' || prompt[j] == ')' ||
                                   prompt[j] == ']')) {
        ++j;
      }
      if (j < prompt.size() && is_space(prompt[j])) cut = j;
      next = j;
    } else if (rule == Segmentation::kParagraphs && prompt[i] == '\n') {
      size_t j = i + 1;
      while (j < prompt.size() && prompt[j] != '\n' && is_space(prompt[j])) ++j;
      if (j < prompt.size() && prompt[j] == '\n') {
        cut = i;
        next = j + 1;
      }
    }
    if (cut != std::string::npos) {
      emit(begin, cut);
      begin = cut;
    }
    i = next;
  }
  emit(begin, prompt.size());
  return out;
}

std::vector<int32_t> EncodePrompt(const Tokenizer& tokenizer, int32_t anchor_id,
                                  const std::vector<std::string>& segment_texts) {
  std::vector<int32_t> ids = {tokenizer.bos_id()};
  for (const std::string& text : segment_texts) {
    if (anchor_id >= 0) ids.push_back(anchor_id);  // -1: a plain model, no anchors
    std::vector<int32_t> piece = tokenizer.Encode(text);
    ids.insert(ids.end(), piece.begin(), piece.end());
  }
  return ids;
}

}  // namespace spanserve
