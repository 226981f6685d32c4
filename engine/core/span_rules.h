// The span protocol (../shared/SPAN_PROTOCOL.md, pinned down in docs/span_rule.md): segments,
// the header state machine and the attended token ranges of every query position. This is the
// only place the rule lives; prompt anchors are inserted here too.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/types.h"
#include "engine/model/model.h"

namespace spanserve {

// The per-model facts the rule needs: special ids and each token's piece text.
class SpanVocab {
 public:
  SpanVocab(int32_t anchor_id, int32_t header_end_id, int32_t max_header_tokens,
            std::vector<std::string> pieces);
  static SpanVocab FromModel(const Model& model);

  int32_t anchor_id() const { return anchor_id_; }
  int32_t header_end_id() const { return header_end_id_; }
  int32_t max_header_tokens() const { return max_header_tokens_; }
  const std::string& piece(int32_t id) const;

 private:
  int32_t anchor_id_;
  int32_t header_end_id_;
  int32_t max_header_tokens_;
  std::vector<std::string> pieces_;
  std::string empty_;
};

struct SegmentInfo {
  int32_t start = 0;         // position of the anchor
  int32_t header_end = -1;   // position of </a>; -1 while open, or for prompt segments
  bool in_prompt = false;
  bool malformed = false;    // fell back to dense
  bool star = false;         // header `*`: dense by request
  bool restricted = false;   // content attends only sink, references and itself
  int32_t header_tokens = 0;
  std::string header_text;
  std::vector<int32_t> refs;
};

// What a token is, for the visible text: span markup or content.
enum class TokenRole { kSink, kAnchor, kHeader, kHeaderEnd, kContent };

struct AppendResult {
  TokenRole role = TokenRole::kContent;
  bool found_malformed = false;  // this token made a segment malformed
};

// Span state of one sequence. Tokens are appended in order; ranges can be asked of any
// position already appended (recompute after preemption asks again for old positions).
class SpanTracker {
 public:
  SpanTracker(const SpanVocab* vocab, SpanMode mode, std::span<const int32_t> prompt);

  AppendResult Append(int32_t token);

  // Sorted, disjoint, merged ranges that position q attends. q < size().
  void AttendedRanges(int32_t q, std::vector<TokenRange>* out) const;
  // True when q attends all of [0, q].
  bool IsDense(int32_t q) const;
  // The role of the token at position q.
  TokenRole RoleAt(int32_t q) const { return roles_[q]; }

  int32_t size() const { return static_cast<int32_t>(roles_.size()); }
  int32_t prompt_len() const { return prompt_len_; }
  int32_t sink_end() const;
  SpanMode mode() const { return mode_; }
  const std::vector<SegmentInfo>& segments() const { return segments_; }
  int32_t malformed_count() const { return malformed_count_; }

 private:
  AppendResult AppendAt(int32_t token, bool in_prompt);
  void CloseHeader(SegmentInfo* seg, int32_t index);
  int32_t SegmentOf(int32_t q) const;  // -1 for the sink
  int32_t SegmentEnd(int32_t index) const;
  bool MarkMalformed(SegmentInfo* seg);

  const SpanVocab* vocab_;
  SpanMode mode_;
  int32_t prompt_len_ = 0;
  std::vector<TokenRole> roles_;
  std::vector<SegmentInfo> segments_;
  bool header_open_ = false;
  int32_t malformed_count_ = 0;
};

// Cuts a prompt into segment texts by a segmentation rule (kClient is the caller's job).
std::vector<std::string> SegmentPromptText(const std::string& prompt, Segmentation rule);

// [BOS] + concat([anchor] + encode(text)) over the segment texts; no anchors when anchor_id is
// -1 (a plain model).
std::vector<int32_t> EncodePrompt(const Tokenizer& tokenizer, int32_t anchor_id,
                                  const std::vector<std::string>& segment_texts);

}  // namespace spanserve
