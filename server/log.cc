#include "server/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

namespace spanserve {
namespace {

bool g_json = false;

// key=value; values with spaces, quotes or '=' are quoted with escapes.
std::string TextValue(const std::string& value) {
  const bool plain = !value.empty() && value.find_first_of(" \"=\\\n\t") == std::string::npos;
  if (plain) return value;
  std::string out = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string Format(std::string_view event, std::initializer_list<LogField> fields) {
  std::string line;
  if (g_json) {
    line = "\"event\":" + nlohmann::json(std::string(event)).dump();
    for (const LogField& f : fields) {
      line += "," + nlohmann::json(f.key).dump() + ":" +
              (f.quoted ? nlohmann::json(f.value).dump() : f.value);
    }
  } else {
    line = "event=" + std::string(event);
    for (const LogField& f : fields) line += " " + f.key + "=" + TextValue(f.value);
  }
  return line;
}

void Log(spdlog::level::level_enum level, std::string_view event,
         std::initializer_list<LogField> fields) {
  if (!spdlog::should_log(level)) return;
  spdlog::log(level, "{}", Format(event, fields));
}

}  // namespace

void InitLogging(const std::string& level, const std::string& format) {
  g_json = format == "json";
  auto logger = spdlog::stderr_logger_mt("spanserve");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(level));
  spdlog::set_pattern(g_json ? R"({"ts":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l",%v})"
                             : "ts=%Y-%m-%dT%H:%M:%S.%e%z level=%l %v");
  spdlog::flush_on(spdlog::level::trace);
}

void LogDebug(std::string_view event, std::initializer_list<LogField> fields) {
  Log(spdlog::level::debug, event, fields);
}
void LogInfo(std::string_view event, std::initializer_list<LogField> fields) {
  Log(spdlog::level::info, event, fields);
}
void LogWarn(std::string_view event, std::initializer_list<LogField> fields) {
  Log(spdlog::level::warn, event, fields);
}
void LogError(std::string_view event, std::initializer_list<LogField> fields) {
  Log(spdlog::level::err, event, fields);
}

}  // namespace spanserve
