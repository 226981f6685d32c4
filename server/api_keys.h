// API keys: the set of bearer keys a client must present (`authorization: Bearer <key>`), read
// from a file of one key a line (blank lines and `#` comments ignored). Only SHA-256 digests of
// the keys are kept, and every check compares against every digest in constant time, so neither
// a key's length nor its first differing byte shows in the time a refusal takes. No message
// this code returns ever holds a key or any other line of the file.
#pragma once

#include <array>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace spanserve {

class ApiKeys {
 public:
  using Digest = std::array<unsigned char, 32>;

  // Reads the file; an unreadable file, a file with no key, or a key with whitespace inside is
  // an error naming the file (and the line), never its contents.
  static absl::StatusOr<std::unique_ptr<ApiKeys>> Load(const std::string& path);

  // True when the header is `Bearer <key>` (the scheme in any case) for one of the keys.
  bool Allows(std::string_view authorization_header) const;

  // Reads the file again. On error the old keys stay in force and the error is returned.
  // Safe while other threads call Allows.
  absl::Status Reload();

  size_t size() const;
  const std::string& path() const { return path_; }

 private:
  explicit ApiKeys(std::string path) : path_(std::move(path)) {}

  const std::string path_;
  mutable std::mutex mu_;
  std::shared_ptr<const std::vector<Digest>> digests_;  // replaced whole on reload
};

// The digests of the keys in a key file's text; `path` only names the file in errors.
absl::StatusOr<std::vector<ApiKeys::Digest>> ParseApiKeys(std::string_view text,
                                                          const std::string& path);

}  // namespace spanserve
