// Structured logs on stderr: one line per event, either key=value pairs
//   ts=2026-01-01T12:00:00.000+0000 level=info event=model_loaded path=models/x seconds=0.41
// or one JSON object per line. Set up once by InitLogging.
#pragma once

#include <initializer_list>
#include <type_traits>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace spanserve {

struct LogField {
  template <typename T>
  LogField(std::string_view key, const T& value) : key(key), value(absl::StrCat(value)),
        quoted(!std::is_arithmetic_v<T>) {}
  LogField(std::string_view key, const std::string& value) : key(key), value(value) {}
  LogField(std::string_view key, const char* value) : key(key), value(value) {}
  LogField(std::string_view key, std::string_view value) : key(key), value(value) {}
  LogField(std::string_view key, bool value) : key(key), value(value ? "true" : "false"),
        quoted(false) {}

  std::string key;
  std::string value;
  bool quoted = true;  // false for numbers and booleans (bare in JSON)
};

// level: trace | debug | info | warn | error | off; format: text | json.
void InitLogging(const std::string& level, const std::string& format);

void LogDebug(std::string_view event, std::initializer_list<LogField> fields = {});
void LogInfo(std::string_view event, std::initializer_list<LogField> fields = {});
void LogWarn(std::string_view event, std::initializer_list<LogField> fields = {});
void LogError(std::string_view event, std::initializer_list<LogField> fields = {});

}  // namespace spanserve
