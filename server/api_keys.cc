#include "server/api_keys.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <fstream>
#include <iterator>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace spanserve {
namespace {

// Debian's Abseil has a string_view of its own, so these few helpers take std's.
bool IsSpace(char c) { return absl::ascii_isspace(static_cast<unsigned char>(c)); }

bool HasWhitespace(std::string_view text) {
  for (char c : text) {
    if (IsSpace(c)) return true;
  }
  return false;
}

std::string_view Trim(std::string_view text) {
  while (!text.empty() && IsSpace(text.front())) text.remove_prefix(1);
  while (!text.empty() && IsSpace(text.back())) text.remove_suffix(1);
  return text;
}

bool IsBearer(std::string_view scheme) {
  constexpr std::string_view kBearer = "bearer";
  if (scheme.size() != kBearer.size()) return false;
  for (size_t i = 0; i < scheme.size(); ++i) {
    if (absl::ascii_tolower(static_cast<unsigned char>(scheme[i])) != kBearer[i]) return false;
  }
  return true;
}

ApiKeys::Digest Sha256(std::string_view text) {
  ApiKeys::Digest digest{};
  unsigned int size = 0;
  EVP_Digest(text.data(), text.size(), digest.data(), &size, EVP_sha256(), nullptr);
  return digest;
}

// A line without its comment: `#` at the start or after whitespace begins one.
std::string_view WithoutComment(std::string_view line) {
  for (size_t i = 0; i < line.size(); ++i) {
    if (line[i] == '#' && (i == 0 || IsSpace(line[i - 1]))) {
      return line.substr(0, i);
    }
  }
  return line;
}

}  // namespace

absl::StatusOr<std::vector<ApiKeys::Digest>> ParseApiKeys(std::string_view text,
                                                          const std::string& path) {
  std::vector<ApiKeys::Digest> digests;
  int line_number = 0;
  while (!text.empty()) {
    const size_t end = std::min(text.find('\n'), text.size());
    const std::string_view line = text.substr(0, end);
    text.remove_prefix(std::min(end + 1, text.size()));
    ++line_number;
    const std::string_view key = Trim(WithoutComment(line));
    if (key.empty()) continue;
    if (HasWhitespace(key)) {
      return absl::InvalidArgumentError(absl::StrCat("api key file ", path, ": line ",
                                                     line_number,
                                                     ": a key must not contain whitespace"));
    }
    digests.push_back(Sha256(key));
  }
  if (digests.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("api key file ", path, ": holds no key"));
  }
  return digests;
}

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::Load(const std::string& path) {
  std::unique_ptr<ApiKeys> keys(new ApiKeys(path));
  if (absl::Status status = keys->Reload(); !status.ok()) return status;
  return keys;
}

absl::Status ApiKeys::Reload() {
  std::ifstream file(path_, std::ios::binary);
  const std::string text(std::istreambuf_iterator<char>(file), {});
  if (!file.is_open() || file.bad()) {
    return absl::NotFoundError(absl::StrCat("api key file ", path_, ": cannot be read"));
  }
  absl::StatusOr<std::vector<Digest>> digests = ParseApiKeys(text, path_);
  if (!digests.ok()) return digests.status();
  auto fresh = std::make_shared<const std::vector<Digest>>(std::move(*digests));
  std::lock_guard<std::mutex> lock(mu_);
  digests_ = std::move(fresh);
  return absl::OkStatus();
}

size_t ApiKeys::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return digests_ ? digests_->size() : 0;
}

bool ApiKeys::Allows(std::string_view header) const {
  header = Trim(header);
  const size_t space = header.find_first_of(" \t");
  if (space == std::string_view::npos || !IsBearer(header.substr(0, space))) return false;
  const std::string_view key = Trim(header.substr(space));
  if (key.empty() || HasWhitespace(key)) return false;

  std::shared_ptr<const std::vector<Digest>> digests;
  {
    std::lock_guard<std::mutex> lock(mu_);
    digests = digests_;
  }
  if (!digests) return false;
  // Equal-size digests, every one compared in full: no early exit on a match or a mismatch.
  const Digest candidate = Sha256(key);
  int found = 0;
  for (const Digest& digest : *digests) {
    found |= CRYPTO_memcmp(digest.data(), candidate.data(), candidate.size()) == 0;
  }
  return found != 0;
}

}  // namespace spanserve
