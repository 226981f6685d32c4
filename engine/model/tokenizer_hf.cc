// tokenizer.json, read as the Hugging Face `tokenizers` library (0.23) runs it: added tokens cut
// out of the raw text (leftmost longest), the normalizer on the pieces between them (then the
// normalized added tokens cut out), the pre-tokenizer, the BPE model per word; decoding joins
// the pieces through the decoder chain. Regexes are PCRE2 (UTF, UCP: \p{L}, lookahead), Unicode
// normalization is ICU.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "engine/model/tokenizer_hf.h"

#include <pcre2.h>
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

namespace spanserve {
namespace {

using json = nlohmann::json;

// Every load error is thrown as this and caught once, in ParseHfTokenizer.
struct LoadError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- UTF-8 ----

void AppendUtf8(uint32_t c, std::string* out) {
  if (c < 0x80) {
    *out += static_cast<char>(c);
  } else if (c < 0x800) {
    *out += static_cast<char>(0xC0 | (c >> 6));
    *out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    *out += static_cast<char>(0xE0 | (c >> 12));
    *out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    *out += static_cast<char>(0xF0 | (c >> 18));
    *out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    *out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// Decodes one code point at s[*i]; false (and *i past the maximal invalid subpart) when the bytes
// there are not UTF-8, as Rust's from_utf8_lossy cuts them.
bool NextCodePoint(const std::string& s, size_t* i, uint32_t* c) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t b0 = byte(*i);
  if (b0 < 0x80) {
    *c = b0;
    ++*i;
    return true;
  }
  int length = 0;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) length = 2;
  else if (b0 == 0xE0) length = 3, lo = 0xA0;
  else if (b0 == 0xED) length = 3, hi = 0x9F;
  else if (b0 >= 0xE1 && b0 <= 0xEF) length = 3;
  else if (b0 == 0xF0) length = 4, lo = 0x90;
  else if (b0 == 0xF4) length = 4, hi = 0x8F;
  else if (b0 >= 0xF1 && b0 <= 0xF3) length = 4;
  if (length == 0) {
    ++*i;
    return false;
  }
  uint32_t value = b0 & (0xFF >> (length + 1));
  size_t k = *i + 1;
  for (int n = 1; n < length; ++n, ++k) {
    const bool ok = k < s.size() && byte(k) >= (n == 1 ? lo : 0x80) && byte(k) <= (n == 1 ? hi : 0xBF);
    if (!ok) {
      *i = k;
      return false;
    }
    value = (value << 6) | (byte(k) & 0x3F);
  }
  *i = k;
  *c = value;
  return true;
}

std::string Utf8Lossy(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    uint32_t c;
    AppendUtf8(NextCodePoint(s, &i, &c) ? c : 0xFFFD, &out);
  }
  return out;
}

std::vector<uint32_t> CodePoints(const std::string& s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    uint32_t c;
    out.push_back(NextCodePoint(s, &i, &c) ? c : 0xFFFD);
  }
  return out;
}

std::string ReplaceAll(const std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t start = 0;
  for (size_t at; (at = s.find(from, start)) != std::string::npos; start = at + from.size())
    out.append(s, start, at - start).append(to);
  return out.append(s, start);
}

// GPT-2's byte <-> printable character table.
struct ByteTable {
  uint32_t char_of[256];
  std::unordered_map<uint32_t, uint8_t> byte_of;
  ByteTable() {
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      char_of[b] = printable ? b : 256 + extra++;
      byte_of[char_of[b]] = static_cast<uint8_t>(b);
    }
  }
};
const ByteTable& Bytes() {
  static const ByteTable table;
  return table;
}

// ---- regex (PCRE2) ----

class Regex {
 public:
  Regex(const std::string& pattern, bool literal) {
    int code = 0;
    PCRE2_SIZE offset = 0;
    re_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                        literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP, &code, &offset,
                        nullptr);
    if (!re_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(code, message, sizeof(message));
      throw LoadError("bad regex \"" + pattern + "\" at " + std::to_string(offset) + ": " +
                      reinterpret_cast<char*>(message));
    }
    data_ = pcre2_match_data_create_from_pattern(re_, nullptr);
  }
  Regex(const Regex&) = delete;
  ~Regex() {
    pcre2_match_data_free(data_);
    pcre2_code_free(re_);
  }
  // Non-overlapping matches, [begin, end) byte ranges, left to right.
  std::vector<std::pair<size_t, size_t>> FindAll(const std::string& s) const {
    std::vector<std::pair<size_t, size_t>> out;
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t at = 0; at <= s.size();) {
      const int rc = pcre2_match(re_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), at, 0,
                                 data_, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* v = pcre2_get_ovector_pointer(data_);
      if (v[1] == v[0]) {  // an empty match: step over one character
        size_t next = v[0] + 1;
        while (next < s.size() && (static_cast<uint8_t>(s[next]) & 0xC0) == 0x80) ++next;
        at = next;
        continue;
      }
      out.emplace_back(v[0], v[1]);
      at = v[1];
    }
    return out;
  }

 private:
  pcre2_code* re_ = nullptr;
  pcre2_match_data* data_ = nullptr;
  mutable std::mutex mutex_;
};

constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// {"String": s} or {"Regex": r}, as Split and Replace write their pattern.
std::shared_ptr<Regex> ParsePattern(const json& j) {
  if (j.contains("String")) return std::make_shared<Regex>(j.at("String").get<std::string>(), true);
  if (j.contains("Regex")) return std::make_shared<Regex>(j.at("Regex").get<std::string>(), false);
  throw LoadError("a pattern must be {\"String\": ...} or {\"Regex\": ...}");
}

std::string RegexReplace(const Regex& re, const std::string& s, const std::string& content) {
  std::string out;
  size_t start = 0;
  for (auto [b, e] : re.FindAll(s)) {
    out.append(s, start, b - start).append(content);
    start = e;
  }
  return out.append(s, start);
}

std::string TypeOf(const json& j, const char* what) {
  if (!j.is_object() || !j.contains("type") || !j.at("type").is_string())
    throw LoadError(std::string(what) + " without a \"type\"");
  return j.at("type").get<std::string>();
}

// ---- normalizers ----

using Normalizer = std::function<std::string(const std::string&)>;

Normalizer IcuNormalizer(const std::string& type) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = type == "NFC"    ? icu::Normalizer2::getNFCInstance(status)
                              : type == "NFD"  ? icu::Normalizer2::getNFDInstance(status)
                              : type == "NFKC" ? icu::Normalizer2::getNFKCInstance(status)
                                               : icu::Normalizer2::getNFKDInstance(status);
  if (U_FAILURE(status)) throw LoadError("ICU has no " + type + " normalizer");
  return [n](const std::string& s) {
    UErrorCode error = U_ZERO_ERROR;
    icu::UnicodeString out = n->normalize(icu::UnicodeString::fromUTF8(s), error);
    std::string text;
    return U_FAILURE(error) ? s : out.toUTF8String(text);
  };
}

Normalizer ParseNormalizer(const json& j) {
  if (j.is_null()) return nullptr;
  const std::string type = TypeOf(j, "normalizer");
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") return IcuNormalizer(type);
  if (type == "Lowercase") {
    return [](const std::string& s) {
      std::string text;
      return icu::UnicodeString::fromUTF8(s).toLower(icu::Locale::getRoot()).toUTF8String(text);
    };
  }
  if (type == "Prepend") {
    const std::string prepend = j.at("prepend");
    return [prepend](const std::string& s) { return s.empty() ? s : prepend + s; };
  }
  if (type == "Replace") {
    std::shared_ptr<Regex> re = ParsePattern(j.at("pattern"));
    const std::string content = j.at("content");
    return [re, content](const std::string& s) { return RegexReplace(*re, s, content); };
  }
  if (type == "Sequence") {
    std::vector<Normalizer> steps;
    for (const json& n : j.at("normalizers"))
      if (Normalizer step = ParseNormalizer(n)) steps.push_back(step);
    return [steps](const std::string& s) {
      std::string out = s;
      for (const Normalizer& step : steps) out = step(out);
      return out;
    };
  }
  throw LoadError("unsupported normalizer type \"" + type + "\"");
}

// ---- pre-tokenizers ----

// A piece of text on its way to the model; at_origin: it starts where the input text starts
// (Metaspace's prepend_scheme "first" asks).
struct Split {
  std::string text;
  bool at_origin;
};
using PreTokenizer = std::function<std::vector<Split>(std::vector<Split>)>;

enum class Behavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior ParseBehavior(const std::string& name) {
  static const std::map<std::string, Behavior> names = {
      {"Isolated", Behavior::kIsolated}, {"Removed", Behavior::kRemoved},
      {"MergedWithPrevious", Behavior::kMergedWithPrevious},
      {"MergedWithNext", Behavior::kMergedWithNext}, {"Contiguous", Behavior::kContiguous}};
  auto it = names.find(name);
  if (it == names.end()) throw LoadError("unsupported split behavior \"" + name + "\"");
  return it->second;
}

// Cuts one split at the regex's matches (or, inverted, at what lies between them).
void SplitBy(const Split& split, const Regex& re, Behavior behavior, bool invert,
             std::vector<Split>* out) {
  struct Part {
    size_t begin, end;
    bool delimiter;
  };
  std::vector<Part> parts;
  size_t at = 0;
  for (auto [b, e] : re.FindAll(split.text)) {
    if (b > at) parts.push_back({at, b, invert});
    parts.push_back({b, e, !invert});
    at = e;
  }
  if (at < split.text.size()) parts.push_back({at, split.text.size(), invert});
  std::vector<Part> merged;
  bool carry_to_next = false;
  for (const Part& p : parts) {
    const bool join_previous =
        !merged.empty() && ((p.delimiter && behavior == Behavior::kMergedWithPrevious) ||
                            carry_to_next ||
                            (p.delimiter && merged.back().delimiter &&
                             behavior == Behavior::kContiguous));
    carry_to_next = p.delimiter && behavior == Behavior::kMergedWithNext;
    if (p.delimiter && behavior == Behavior::kRemoved) continue;
    if (join_previous) merged.back().end = p.end, merged.back().delimiter = p.delimiter;
    else merged.push_back(p);
  }
  for (const Part& p : merged)
    out->push_back({split.text.substr(p.begin, p.end - p.begin), split.at_origin && p.begin == 0});
}

PreTokenizer ByteLevelPreTokenizer(const json& j) {
  const bool add_prefix_space = j.value("add_prefix_space", true);
  std::shared_ptr<Regex> re =
      j.value("use_regex", true) ? std::make_shared<Regex>(kGpt2Pattern, false) : nullptr;
  return [add_prefix_space, re](std::vector<Split> in) {
    std::vector<Split> cut;
    for (Split& s : in) {
      if (add_prefix_space && s.text.rfind(' ', 0) != 0) s.text = " " + s.text;
      if (re) SplitBy(s, *re, Behavior::kIsolated, false, &cut);
      else cut.push_back(s);
    }
    for (Split& s : cut) {
      std::string mapped;
      for (unsigned char b : s.text) AppendUtf8(Bytes().char_of[b], &mapped);
      s.text = std::move(mapped);
    }
    return cut;
  };
}

PreTokenizer MetaspacePreTokenizer(const json& j) {
  std::string replacement = j.value("replacement", std::string("\u2581"));
  // Files before tokenizers 0.19 say add_prefix_space instead of prepend_scheme.
  const std::string scheme = j.contains("prepend_scheme")
                                 ? j.at("prepend_scheme").get<std::string>()
                                 : (j.value("add_prefix_space", true) ? "always" : "never");
  if (scheme != "always" && scheme != "first" && scheme != "never")
    throw LoadError("unsupported Metaspace prepend_scheme \"" + scheme + "\"");
  std::shared_ptr<Regex> splitter =
      j.value("split", true) ? std::make_shared<Regex>(replacement, true) : nullptr;
  return [replacement, scheme, splitter](std::vector<Split> in) {
    std::vector<Split> out;
    for (Split& s : in) {
      s.text = ReplaceAll(s.text, " ", replacement);
      const bool prepend = scheme == "always" || (scheme == "first" && s.at_origin);
      if (prepend && s.text.rfind(replacement, 0) != 0) s.text = replacement + s.text;
      if (splitter) SplitBy(s, *splitter, Behavior::kMergedWithNext, false, &out);
      else out.push_back(s);
    }
    return out;
  };
}

PreTokenizer ParsePreTokenizer(const json& j) {
  if (j.is_null()) return nullptr;
  const std::string type = TypeOf(j, "pre_tokenizer");
  if (type == "ByteLevel") return ByteLevelPreTokenizer(j);
  if (type == "Metaspace") return MetaspacePreTokenizer(j);
  if (type == "Split") {
    std::shared_ptr<Regex> re = ParsePattern(j.at("pattern"));
    const Behavior behavior = ParseBehavior(j.at("behavior"));
    const bool invert = j.value("invert", false);
    return [re, behavior, invert](std::vector<Split> in) {
      std::vector<Split> out;
      for (const Split& s : in) SplitBy(s, *re, behavior, invert, &out);
      return out;
    };
  }
  if (type == "Sequence") {
    std::vector<PreTokenizer> steps;
    for (const json& p : j.at("pretokenizers"))
      if (PreTokenizer step = ParsePreTokenizer(p)) steps.push_back(step);
    return [steps](std::vector<Split> in) {
      for (const PreTokenizer& step : steps) in = step(std::move(in));
      return in;
    };
  }
  throw LoadError("unsupported pre_tokenizer type \"" + type + "\"");
}

// ---- decoders ----

using Decoder = std::function<std::vector<std::string>(std::vector<std::string>)>;

Decoder ParseDecoder(const json& j);

Decoder ByteFallbackDecoder() {
  return [](std::vector<std::string> tokens) {
    std::vector<std::string> out;
    std::string bytes;
    const auto flush = [&] {
      if (bytes.empty()) return;
      if (Utf8Lossy(bytes) == bytes) out.push_back(bytes);
      else for (size_t i = 0; i < bytes.size(); ++i) out.push_back("\uFFFD");
      bytes.clear();
    };
    for (std::string& t : tokens) {
      const bool is_byte = t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>' &&
                           std::isxdigit(static_cast<unsigned char>(t[3])) &&
                           std::isxdigit(static_cast<unsigned char>(t[4]));
      if (is_byte) {
        bytes += static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16));
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    return out;
  };
}

Decoder StripDecoder(const json& j) {
  const std::vector<uint32_t> content = CodePoints(j.at("content").get<std::string>());
  if (content.size() != 1) throw LoadError("a Strip decoder's content must be one character");
  const uint32_t c = content[0];
  const size_t start = j.at("start"), stop = j.at("stop");
  return [c, start, stop](std::vector<std::string> tokens) {
    for (std::string& t : tokens) {
      std::vector<uint32_t> chars = CodePoints(t);
      size_t begin = 0, end = chars.size();
      while (begin < std::min(start, chars.size()) && chars[begin] == c) ++begin;
      for (size_t i = 0; i < stop && end > begin && chars[end - 1] == c; ++i) --end;
      t.clear();
      for (size_t i = begin; i < end; ++i) AppendUtf8(chars[i], &t);
    }
    return tokens;
  };
}

Decoder MetaspaceDecoder(const json& j) {
  const std::string replacement = j.value("replacement", std::string("\u2581"));
  const std::string scheme = j.contains("prepend_scheme")
                                 ? j.at("prepend_scheme").get<std::string>()
                                 : (j.value("add_prefix_space", true) ? "always" : "never");
  return [replacement, scheme](std::vector<std::string> tokens) {
    for (size_t i = 0; i < tokens.size(); ++i)
      tokens[i] = ReplaceAll(tokens[i], replacement, i == 0 && scheme != "never" ? "" : " ");
    return tokens;
  };
}

Decoder ParseDecoder(const json& j) {
  if (j.is_null()) return nullptr;
  const std::string type = TypeOf(j, "decoder");
  if (type == "ByteLevel") {
    return [](std::vector<std::string> tokens) {
      std::string bytes;
      for (const std::string& t : tokens) {
        std::string mapped;
        bool all_mapped = true;
        for (uint32_t c : CodePoints(t)) {
          auto it = Bytes().byte_of.find(c);
          if (it == Bytes().byte_of.end()) { all_mapped = false; break; }
          mapped += static_cast<char>(it->second);
        }
        bytes += all_mapped ? mapped : t;
      }
      return std::vector<std::string>{Utf8Lossy(bytes)};
    };
  }
  if (type == "ByteFallback") return ByteFallbackDecoder();
  if (type == "Fuse") {
    return [](std::vector<std::string> tokens) {
      std::string all;
      for (const std::string& t : tokens) all += t;
      return std::vector<std::string>{all};
    };
  }
  if (type == "Strip") return StripDecoder(j);
  if (type == "Replace") {
    std::shared_ptr<Regex> re = ParsePattern(j.at("pattern"));
    const std::string content = j.at("content");
    return [re, content](std::vector<std::string> tokens) {
      for (std::string& t : tokens) t = RegexReplace(*re, t, content);
      return tokens;
    };
  }
  if (type == "Metaspace") return MetaspaceDecoder(j);
  if (type == "Sequence") {
    std::vector<Decoder> steps;
    for (const json& d : j.at("decoders"))
      if (Decoder step = ParseDecoder(d)) steps.push_back(step);
    return [steps](std::vector<std::string> tokens) {
      for (const Decoder& step : steps) tokens = step(std::move(tokens));
      return tokens;
    };
  }
  throw LoadError("unsupported decoder type \"" + type + "\"");
}

// ---- BPE ----

struct Bpe {
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> pieces;  // by id; "" for holes
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (left, right) -> rank, id
  int32_t unk_id = -1;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;

  static uint64_t Key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  int32_t Find(const std::string& piece) const {
    auto it = vocab.find(piece);
    return it == vocab.end() ? -1 : it->second;
  }

  void Tokenize(const std::string& word, std::vector<int32_t>* out) const {
    if (word.empty()) return;
    if (ignore_merges) {
      if (int32_t id = Find(word); id >= 0) return out->push_back(id);
    }
    std::vector<int32_t> symbols;
    int32_t pending_unk = -1;  // an unknown run waiting to be added (fuse_unk)
    for (size_t i = 0; i < word.size();) {
      size_t next = i + 1;
      while (next < word.size() && (static_cast<uint8_t>(word[next]) & 0xC0) == 0x80) ++next;
      const std::string ch = word.substr(i, next - i);
      i = next;
      if (int32_t id = Find(ch); id >= 0) {
        if (pending_unk >= 0) symbols.push_back(pending_unk), pending_unk = -1;
        symbols.push_back(id);
        continue;
      }
      if (byte_fallback) {
        std::vector<int32_t> bytes;
        for (unsigned char b : ch) {
          char name[8];
          std::snprintf(name, sizeof(name), "<0x%02X>", b);
          if (int32_t id = Find(name); id >= 0) bytes.push_back(id);
        }
        if (bytes.size() == ch.size()) {
          symbols.insert(symbols.end(), bytes.begin(), bytes.end());
          continue;
        }
      }
      if (unk_id >= 0) {
        if (pending_unk >= 0 && !fuse_unk) symbols.push_back(pending_unk);
        pending_unk = unk_id;
      }
    }
    if (pending_unk >= 0) symbols.push_back(pending_unk);
    // Merge the lowest-ranked adjacent pair, leftmost first, until none is left.
    while (symbols.size() > 1) {
      size_t best = 0;
      std::pair<int32_t, int32_t> best_merge = {-1, -1};
      for (size_t k = 0; k + 1 < symbols.size(); ++k) {
        auto it = merges.find(Key(symbols[k], symbols[k + 1]));
        if (it != merges.end() && (best_merge.first < 0 || it->second.first < best_merge.first))
          best = k, best_merge = it->second;
      }
      if (best_merge.first < 0) break;
      symbols[best] = best_merge.second;
      symbols.erase(symbols.begin() + best + 1);
    }
    out->insert(out->end(), symbols.begin(), symbols.end());
  }
};

void AddPiece(Bpe* bpe, const std::string& piece, int64_t id) {
  if (id < 0 || id > (1 << 24)) throw LoadError("vocabulary id " + std::to_string(id) + " of \"" + piece + "\" out of range");
  if (bpe->pieces.size() <= static_cast<size_t>(id)) bpe->pieces.resize(id + 1);
  bpe->pieces[id] = piece;
}

Bpe ParseBpe(const json& j) {
  const std::string type = j.contains("type") ? j.at("type").get<std::string>() : "BPE";
  if (type != "BPE") throw LoadError("unsupported model type \"" + type + "\" (only BPE is read)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (j.contains(key) && !j.at(key).is_null() && !j.at(key).get<std::string>().empty())
      throw LoadError(std::string("BPE ") + key + " is not supported");
  if (j.contains("dropout") && !j.at("dropout").is_null() && j.at("dropout").get<double>() > 0)
    throw LoadError("BPE dropout is not supported (it makes encoding random)");
  Bpe bpe;
  bpe.fuse_unk = j.value("fuse_unk", false);
  bpe.byte_fallback = j.value("byte_fallback", false);
  bpe.ignore_merges = j.value("ignore_merges", false);
  if (!j.at("vocab").is_object()) throw LoadError("model.vocab must be an object");
  if (!j.at("merges").is_array()) throw LoadError("model.merges must be an array");
  for (const auto& [piece, id] : j.at("vocab").items()) {
    bpe.vocab[piece] = id.get<int32_t>();
    AddPiece(&bpe, piece, id.get<int64_t>());
  }
  int32_t rank = 0;
  for (const json& m : j.at("merges")) {
    std::string left, right;
    if (m.is_string()) {  // "a b", as files before tokenizers 0.20 write them
      const std::string s = m;
      const size_t space = s.find(' ', 1);
      if (space == std::string::npos) throw LoadError("merge \"" + s + "\" is not \"a b\"");
      left = s.substr(0, space), right = s.substr(space + 1);
    } else {
      if (!m.is_array() || m.size() != 2) throw LoadError("merge " + m.dump() + " is not [a, b]");
      left = m[0], right = m[1];
    }
    const int32_t a = bpe.Find(left), b = bpe.Find(right), merged = bpe.Find(left + right);
    if (a < 0 || b < 0 || merged < 0)
      throw LoadError("merge \"" + left + "\" \"" + right + "\" uses a piece not in the vocab");
    bpe.merges.emplace(Bpe::Key(a, b), std::make_pair(rank++, merged));
  }
  if (j.contains("unk_token") && !j.at("unk_token").is_null()) {
    bpe.unk_id = bpe.Find(j.at("unk_token"));
    if (bpe.unk_id < 0) throw LoadError("unk_token is not in the vocab");
  }
  return bpe;
}

// ---- added tokens ----

struct AddedToken {
  std::string content;
  std::string pattern;  // content, normalized when `normalized`
  int32_t id;
  bool special, normalized, lstrip, rstrip, single_word;
};

// A piece of the input: an added token's id, or text (id -1) for the pipeline.
struct Piece {
  std::string text;
  int32_t id;
  bool at_origin;
};

bool IsWordChar(uint32_t c) {
  return c == '_' || u_isalnum(c) || u_charType(c) == U_NON_SPACING_MARK ||
         u_charType(c) == U_COMBINING_SPACING_MARK || u_charType(c) == U_CONNECTOR_PUNCTUATION;
}

uint32_t LastCodePoint(const std::string& s) {
  size_t i = s.size();
  while (i > 0 && (static_cast<uint8_t>(s[i - 1]) & 0xC0) == 0x80) --i;
  if (i > 0) --i;
  uint32_t c = 0;
  return NextCodePoint(s, &i, &c) ? c : 0xFFFD;
}

size_t SpacesBefore(const std::string& s, size_t end, size_t floor) {
  while (end > floor && std::isspace(static_cast<unsigned char>(s[end - 1]))) --end;
  return end;
}

// Cuts the added tokens of `indices` out of one text piece, leftmost longest, as the library's
// Aho-Corasick matcher does; a special token is skipped unless match_special.
void CutAdded(const Piece& in, const std::vector<AddedToken>& tokens,
              const std::vector<size_t>& indices, bool match_special, std::vector<Piece>* out) {
  const std::string& s = in.text;
  size_t cursor = 0, emitted = 0;
  while (cursor < s.size()) {
    size_t start = std::string::npos;
    const AddedToken* hit = nullptr;
    for (size_t at = cursor; at < s.size() && !hit; ++at) {
      for (size_t i : indices) {
        const AddedToken& t = tokens[i];
        if (!t.pattern.empty() && s.compare(at, t.pattern.size(), t.pattern) == 0 &&
            (!hit || t.pattern.size() > hit->pattern.size()))
          hit = &t, start = at;
      }
    }
    if (!hit) break;
    size_t stop = start + hit->pattern.size();
    cursor = stop;
    if (hit->special && !match_special) continue;
    if (hit->single_word) {
      const bool word_before = start > 0 && IsWordChar(LastCodePoint(s.substr(0, start)));
      size_t after = stop;
      uint32_t c = 0;
      const bool word_after = stop < s.size() && NextCodePoint(s, &after, &c) && IsWordChar(c);
      if (word_before || word_after) continue;
    }
    if (hit->lstrip) start = SpacesBefore(s, start, emitted);
    if (hit->rstrip)
      while (stop < s.size() && std::isspace(static_cast<unsigned char>(s[stop]))) ++stop;
    cursor = stop;
    if (start > emitted)
      out->push_back({s.substr(emitted, start - emitted), -1, in.at_origin && emitted == 0});
    out->push_back({s.substr(start, stop - start), hit->id, in.at_origin && start == 0});
    emitted = stop;
  }
  if (emitted < s.size())
    out->push_back({s.substr(emitted), -1, in.at_origin && emitted == 0});
}

// ---- post-processor ----

struct Template {
  std::vector<int32_t> before, after;
};

void ParsePostProcessor(const json& j, Template* t) {
  if (j.is_null()) return;
  const std::string type = TypeOf(j, "post_processor");
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence") {
    for (const json& p : j.at("processors")) ParsePostProcessor(p, t);
    return;
  }
  if (type != "TemplateProcessing")
    throw LoadError("unsupported post_processor type \"" + type + "\"");
  const json& specials = j.at("special_tokens");
  bool seen_sequence = false;
  for (const json& item : j.at("single")) {
    if (item.contains("Sequence")) {
      seen_sequence = true;
      continue;
    }
    const std::string name = item.at("SpecialToken").at("id");
    if (!specials.contains(name)) throw LoadError("template token \"" + name + "\" has no ids");
    for (const json& id : specials.at(name).at("ids"))
      (seen_sequence ? t->after : t->before).push_back(id.get<int32_t>());
  }
}

}  // namespace

struct HfTokenizer::Impl {
  Bpe bpe;
  std::vector<AddedToken> added;
  std::vector<size_t> raw_added, normalized_added;  // indices into added
  std::unordered_map<int32_t, size_t> added_by_id;
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  Decoder decoder;
  Template post;
  int32_t vocab_size = 0;
};

HfTokenizer::HfTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HfTokenizer::~HfTokenizer() = default;

std::vector<int32_t> HfTokenizer::Encode(const std::string& text, bool match_special) const {
  const Impl& m = *impl_;
  std::vector<Piece> raw;
  CutAdded({Utf8Lossy(text), -1, true}, m.added, m.raw_added, match_special, &raw);
  std::vector<int32_t> ids;
  for (Piece& piece : raw) {
    if (piece.id >= 0) {
      ids.push_back(piece.id);
      continue;
    }
    if (m.normalizer) piece.text = m.normalizer(piece.text);
    std::vector<Piece> pieces;
    CutAdded(piece, m.added, m.normalized_added, match_special, &pieces);
    for (const Piece& p : pieces) {
      if (p.id >= 0) {
        ids.push_back(p.id);
        continue;
      }
      std::vector<Split> words = {{p.text, p.at_origin}};
      if (m.pre_tokenizer) words = m.pre_tokenizer(std::move(words));
      for (const Split& w : words) m.bpe.Tokenize(w.text, &ids);
    }
  }
  return ids;
}

std::vector<int32_t> HfTokenizer::Encode(const std::string& text) const {
  return Encode(text, false);
}
std::vector<int32_t> HfTokenizer::EncodeWithSpecialTokens(const std::string& text) const {
  return Encode(text, true);
}

std::vector<int32_t> HfTokenizer::AddTemplateTokens(const std::vector<int32_t>& ids) const {
  std::vector<int32_t> out = impl_->post.before;
  out.insert(out.end(), ids.begin(), ids.end());
  out.insert(out.end(), impl_->post.after.begin(), impl_->post.after.end());
  return out;
}

std::string HfTokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::vector<std::string> tokens;
  for (int32_t id : ids) {
    std::string piece = IdToPiece(id);
    if (!piece.empty()) tokens.push_back(std::move(piece));
  }
  if (impl_->decoder) tokens = impl_->decoder(std::move(tokens));
  std::string text;
  for (size_t i = 0; i < tokens.size(); ++i) text += (i && !impl_->decoder ? " " : "") + tokens[i];
  return text;
}

std::string HfTokenizer::IdToPiece(int32_t id) const {
  if (auto it = impl_->added_by_id.find(id); it != impl_->added_by_id.end())
    return impl_->added[it->second].pattern;  // the library's piece: the normalized content
  if (id < 0 || static_cast<size_t>(id) >= impl_->bpe.pieces.size()) return {};
  return impl_->bpe.pieces[id];
}

int32_t HfTokenizer::PieceToId(const std::string& piece) const {
  for (const AddedToken& t : impl_->added)
    if (t.content == piece || t.pattern == piece) return t.id;
  return impl_->bpe.Find(piece);
}

int32_t HfTokenizer::vocab_size() const { return impl_->vocab_size; }
int32_t HfTokenizer::bos_id() const {
  return impl_->post.before.empty() ? -1 : impl_->post.before.front();
}
int32_t HfTokenizer::eos_id() const { return -1; }

std::unique_ptr<HfTokenizer> ParseHfTokenizer(const std::string& json_text, std::string* error) {
  try {
    const json j = json::parse(json_text);
    if (!j.is_object() || !j.contains("model")) throw LoadError("no \"model\" object");
    auto m = std::make_unique<HfTokenizer::Impl>();
    m->bpe = ParseBpe(j.at("model"));
    m->normalizer = ParseNormalizer(j.value("normalizer", json()));
    m->pre_tokenizer = ParsePreTokenizer(j.value("pre_tokenizer", json()));
    m->decoder = ParseDecoder(j.value("decoder", json()));
    ParsePostProcessor(j.value("post_processor", json()), &m->post);
    int64_t max_id = static_cast<int64_t>(m->bpe.pieces.size()) - 1;
    for (const json& t : j.value("added_tokens", json::array())) {
      AddedToken a{t.at("content"), "", t.at("id"), t.value("special", false),
                   t.value("normalized", !t.value("special", false)), t.value("lstrip", false),
                   t.value("rstrip", false), t.value("single_word", false)};
      if (a.id < 0 || a.id > (1 << 24)) throw LoadError("added token id out of range");
      a.pattern = a.normalized && m->normalizer ? m->normalizer(a.content) : a.content;
      (a.normalized ? m->normalized_added : m->raw_added).push_back(m->added.size());
      m->added_by_id[a.id] = m->added.size();
      max_id = std::max<int64_t>(max_id, a.id);
      m->added.push_back(std::move(a));
    }
    for (int32_t id : m->post.before)
      if (id < 0 || id > max_id) throw LoadError("post_processor id " + std::to_string(id) + " is not a token");
    m->vocab_size = static_cast<int32_t>(max_id + 1);
    if (m->vocab_size <= 0) throw LoadError("the vocabulary is empty");
    return std::make_unique<HfTokenizer>(std::move(m));
  } catch (const LoadError& e) {
    *error = e.what();
  } catch (const json::exception& e) {
    *error = std::string("not a valid tokenizer.json: ") + e.what();
  } catch (const std::exception& e) {
    *error = e.what();
  }
  return nullptr;
}

std::unique_ptr<HfTokenizer> LoadHfTokenizer(const std::string& path, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = "cannot read the file";
    return nullptr;
  }
  std::stringstream text;
  text << in.rdbuf();
  return ParseHfTokenizer(text.str(), error);
}

}  // namespace spanserve
