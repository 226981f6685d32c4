// The API key store: the file format (comments, blank lines, whitespace), the bearer header,
// reloads that keep the old keys when the new file is bad, and errors that never show a key.
#include "server/api_keys.h"

#include <atomic>
#include <cstdio>
#include <fstream>
#include <thread>

#include "gtest/gtest.h"

namespace spanserve {
namespace {

class ApiKeysTest : public ::testing::Test {
 protected:
  std::string path_ = ::testing::TempDir() + "/api_keys_" +
                      ::testing::UnitTest::GetInstance()->current_test_info()->name();

  void Write(const std::string& text) { std::ofstream(path_, std::ios::trunc) << text; }

  std::unique_ptr<ApiKeys> Load(const std::string& text) {
    Write(text);
    absl::StatusOr<std::unique_ptr<ApiKeys>> keys = ApiKeys::Load(path_);
    EXPECT_TRUE(keys.ok()) << keys.status();
    return keys.ok() ? std::move(*keys) : nullptr;
  }

  std::string ErrorOf(const std::string& text) {
    Write(text);
    absl::StatusOr<std::unique_ptr<ApiKeys>> keys = ApiKeys::Load(path_);
    EXPECT_FALSE(keys.ok()) << text;
    return keys.ok() ? "" : std::string(keys.status().message());
  }
};

TEST_F(ApiKeysTest, CommentsBlankLinesAndWhitespace) {
  std::unique_ptr<ApiKeys> keys = Load(
      "# team keys\n"
      "\n"
      "  alpha-key-1  \n"
      "\tbeta#2\t# the # inside a key is kept\r\n"
      "   # an indented comment\n"
      "gamma");  // no newline at the end
  ASSERT_NE(keys, nullptr);
  EXPECT_EQ(keys->size(), 3u);
  EXPECT_TRUE(keys->Allows("Bearer alpha-key-1"));
  EXPECT_TRUE(keys->Allows("Bearer beta#2"));
  EXPECT_TRUE(keys->Allows("Bearer gamma"));
  EXPECT_FALSE(keys->Allows("Bearer beta"));
  EXPECT_FALSE(keys->Allows("Bearer # team keys"));
  EXPECT_FALSE(keys->Allows("Bearer #"));
  EXPECT_FALSE(keys->Allows("Bearer team"));
}

TEST_F(ApiKeysTest, BearerHeader) {
  std::unique_ptr<ApiKeys> keys = Load("s3cret\n");
  ASSERT_NE(keys, nullptr);
  EXPECT_TRUE(keys->Allows("Bearer s3cret"));
  EXPECT_TRUE(keys->Allows("bearer s3cret"));  // the scheme in any case
  EXPECT_TRUE(keys->Allows("BEARER   s3cret "));
  EXPECT_FALSE(keys->Allows(""));
  EXPECT_FALSE(keys->Allows("s3cret"));          // no scheme
  EXPECT_FALSE(keys->Allows("Bearer"));
  EXPECT_FALSE(keys->Allows("Bearer "));
  EXPECT_FALSE(keys->Allows("Basic s3cret"));    // another scheme
  EXPECT_FALSE(keys->Allows("Bearers3cret"));
  EXPECT_FALSE(keys->Allows("Token s3cret"));
  EXPECT_FALSE(keys->Allows("Bearer S3CRET"));   // the key is case-sensitive
  EXPECT_FALSE(keys->Allows("Bearer s3cre"));    // a prefix
  EXPECT_FALSE(keys->Allows("Bearer s3cret2"));  // longer
  EXPECT_FALSE(keys->Allows("Bearer s3cret s3cret"));
  EXPECT_FALSE(keys->Allows(std::string_view("Bearer s3cret\0x", 15)));
}

TEST_F(ApiKeysTest, BadFilesAreErrorsNamingTheFileNotItsContents) {
  const std::string secret = "do-not-print-me-7f3a";
  std::string message = ErrorOf("");
  EXPECT_EQ(message, "api key file " + path_ + ": holds no key");
  message = ErrorOf("# " + secret + "\n\n   \n");
  EXPECT_EQ(message, "api key file " + path_ + ": holds no key");
  message = ErrorOf("good-key\n" + secret + " with-space\n");
  EXPECT_EQ(message, "api key file " + path_ + ": line 2: a key must not contain whitespace");
  EXPECT_EQ(message.find(secret), std::string::npos);
  EXPECT_EQ(message.find("good-key"), std::string::npos);

  absl::StatusOr<std::unique_ptr<ApiKeys>> missing = ApiKeys::Load("/nonexistent/keys.txt");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().message(), "api key file /nonexistent/keys.txt: cannot be read");
}

TEST_F(ApiKeysTest, ReloadReplacesTheKeys) {
  std::unique_ptr<ApiKeys> keys = Load("old-key\n");
  ASSERT_NE(keys, nullptr);
  Write("new-key-1\nnew-key-2\n");
  ASSERT_TRUE(keys->Reload().ok());
  EXPECT_EQ(keys->size(), 2u);
  EXPECT_TRUE(keys->Allows("Bearer new-key-1"));
  EXPECT_TRUE(keys->Allows("Bearer new-key-2"));
  EXPECT_FALSE(keys->Allows("Bearer old-key"));
}

TEST_F(ApiKeysTest, ReloadKeepsTheOldKeysOnError) {
  std::unique_ptr<ApiKeys> keys = Load("old-key\n");
  ASSERT_NE(keys, nullptr);
  Write("# emptied by mistake\n");
  absl::Status status = keys->Reload();
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.message(), "api key file " + path_ + ": holds no key");
  EXPECT_TRUE(keys->Allows("Bearer old-key"));

  Write("new-key\nbroken key\n");
  status = keys->Reload();
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.message().find("new-key"), std::string::npos);
  EXPECT_TRUE(keys->Allows("Bearer old-key"));
  EXPECT_FALSE(keys->Allows("Bearer new-key"));

  std::remove(path_.c_str());
  status = keys->Reload();
  EXPECT_EQ(status.message(), "api key file " + path_ + ": cannot be read");
  EXPECT_TRUE(keys->Allows("Bearer old-key"));
  EXPECT_EQ(keys->size(), 1u);
}

// Checks on other threads during reloads see either key set, never a torn one.
TEST_F(ApiKeysTest, ReloadWhileChecking) {
  std::unique_ptr<ApiKeys> keys = Load("key-a\nkey-both\n");
  ASSERT_NE(keys, nullptr);
  std::atomic<bool> stop{false};
  std::atomic<int> refused{0};
  std::thread checker([&] {
    while (!stop) refused += !keys->Allows("Bearer key-both");
  });
  for (int i = 0; i < 50; ++i) {
    Write(i % 2 ? "key-a\nkey-both\n" : "key-b\nkey-both\n");
    ASSERT_TRUE(keys->Reload().ok());
  }
  stop = true;
  checker.join();
  EXPECT_EQ(refused, 0);
}

}  // namespace
}  // namespace spanserve
