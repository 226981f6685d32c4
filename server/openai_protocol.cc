#include "server/openai_protocol.h"

#include <algorithm>
#include <cctype>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace spanserve::openai {
namespace {

using nlohmann::json;

// Text the model made may be cut inside a UTF-8 sequence: dump it with U+FFFD, never throw.
std::string Dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Debian's Abseil has its own string_view: these take std::string.
absl::Status FieldError(const std::string& path, const std::string& problem) {
  return absl::InvalidArgumentError(path + ": " + problem);
}

// A value for an error message: its type, and scalars themselves (short).
std::string Describe(const json& value) {
  if (value.is_string()) {
    std::string text = value.get<std::string>();
    if (text.size() > 40) text = text.substr(0, 40) + "...";
    return absl::StrCat("the string ", Dump(json(text)));
  }
  if (value.is_boolean() || value.is_number()) return Dump(value);
  if (value.is_array()) return "an array";
  if (value.is_object()) return "an object";
  return "null";
}

absl::Status TypeError(const std::string& path, const std::string& expected,
                       const json& value) {
  return FieldError(path, "expected " + expected + ", got " + Describe(value));
}

int32_t ClampToInt32(const json& value) {
  if (value.is_number_unsigned()) {
    return static_cast<int32_t>(std::min<uint64_t>(value.get<uint64_t>(),
                                                   std::numeric_limits<int32_t>::max()));
  }
  return static_cast<int32_t>(std::clamp<int64_t>(value.get<int64_t>(),
                                                  std::numeric_limits<int32_t>::min(),
                                                  std::numeric_limits<int32_t>::max()));
}

// A double past float's range becomes its infinity: a plain cast is undefined there.
float ToFloat(double value) {
  constexpr double kMax = std::numeric_limits<float>::max();
  if (value > kMax) return std::numeric_limits<float>::infinity();
  if (value < -kMax) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(value);
}

// Reads the fields of one JSON object; absent and null fields are "not given". The first error
// sticks and later reads do nothing.
class Reader {
 public:
  explicit Reader(const json& object) : object_(object) {}

  const absl::Status& status() const { return status_; }
  void Fail(absl::Status status) {
    if (status_.ok()) status_ = std::move(status);
  }
  // The given value of `key`, or nullptr (also after an error).
  const json* Get(const char* key) const {
    if (!status_.ok()) return nullptr;
    auto it = object_.find(key);
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }

  void Bool(const char* key, bool* out) {
    const json* value = Get(key);
    if (!value) return;
    if (!value->is_boolean()) return Fail(TypeError(key, "true or false", *value));
    *out = value->get<bool>();
  }
  // An integer, clamped to int32 (the engine then refuses what is out of its range).
  template <typename Setter>
  void Int(const char* key, Setter set) {
    const json* value = Get(key);
    if (!value) return;
    if (!value->is_number_integer()) return Fail(TypeError(key, "an integer", *value));
    set(ClampToInt32(*value));
  }
  template <typename Setter>
  void Number(const char* key, Setter set) {
    const json* value = Get(key);
    if (!value) return;
    if (!value->is_number()) return Fail(TypeError(key, "a number", *value));
    set(ToFloat(value->get<double>()));
  }
  void String(const char* key, std::string* out) {
    const json* value = Get(key);
    if (!value) return;
    if (!value->is_string()) return Fail(TypeError(key, "a string", *value));
    *out = value->get<std::string>();
  }

 private:
  const json& object_;
  absl::Status status_;
};

// A field this server does not implement: accepted only at its neutral value.
struct Unsupported {
  const char* key;
  bool (*type_ok)(const json&);
  const char* expected;
  bool (*neutral)(const json&);
  const char* problem;
};

bool IsBool(const json& v) { return v.is_boolean(); }
bool IsInt(const json& v) { return v.is_number_integer(); }
bool IsNumber(const json& v) { return v.is_number(); }
bool IsString(const json& v) { return v.is_string(); }
bool IsArray(const json& v) { return v.is_array(); }
bool IsObject(const json& v) { return v.is_object(); }
bool IsAny(const json&) { return true; }
bool IsOne(const json& v) { return v.get<int64_t>() == 1; }
bool IsFalse(const json& v) { return !v.get<bool>(); }
bool IsZero(const json& v) { return v.get<double>() == 0; }
bool IsEmpty(const json& v) { return v.empty(); }  // arrays and objects
bool IsEmptyString(const json& v) { return v.get<std::string>().empty(); }
bool IsNone(const json& v) { return v.is_string() && v.get<std::string>() == "none"; }
bool IsFalseBool(const json& v) { return v.is_boolean() && !v.get<bool>(); }
bool IsBoolOrInt(const json& v) { return v.is_boolean() || v.is_number_integer(); }
bool IsTextFormat(const json& v) {
  return v.size() == 1 && v.contains("type") && v["type"].is_string() &&
         v["type"].get<std::string>() == "text";
}
bool IsNever(const json&) { return false; }

const Unsupported kUnsupportedCommon[] = {
    {"n", IsInt, "an integer", IsOne, "only n=1 is supported"},
    {"presence_penalty", IsNumber, "a number", IsZero, "not supported (only 0)"},
    {"frequency_penalty", IsNumber, "a number", IsZero, "not supported (only 0)"},
    {"logit_bias", IsObject, "an object", IsEmpty, "not supported"},
};
const Unsupported kUnsupportedCompletions[] = {
    {"best_of", IsInt, "an integer", IsOne, "only best_of=1 is supported"},
    {"echo", IsBool, "true or false", IsFalse, "not supported"},
    {"suffix", IsString, "a string", IsEmptyString, "not supported"},
    {"logprobs", IsBoolOrInt, "an integer", IsFalseBool, "not supported by this server"},
};
const Unsupported kUnsupportedChat[] = {
    {"logprobs", IsBool, "true or false", IsFalse, "not supported by this server"},
    {"top_logprobs", IsInt, "an integer", IsNever, "not supported by this server"},
    {"tools", IsArray, "an array", IsEmpty, "tool calls are not supported"},
    {"functions", IsArray, "an array", IsEmpty, "function calls are not supported"},
    {"tool_choice", IsAny, "\"none\"", IsNone, "tool calls are not supported"},
    {"function_call", IsAny, "\"none\"", IsNone, "function calls are not supported"},
    {"response_format", IsObject, "an object", IsTextFormat,
     "only {\"type\": \"text\"} is supported"},
};

template <size_t N>
void CheckUnsupported(Reader& r, const Unsupported (&fields)[N]) {
  for (const Unsupported& field : fields) {
    const json* value = r.Get(field.key);
    if (!value) continue;
    if (!field.type_ok(*value)) return r.Fail(TypeError(field.key, field.expected, *value));
    if (!field.neutral(*value)) return r.Fail(FieldError(field.key, field.problem));
  }
}

const std::set<std::string, std::less<>> kCommonFields = {
    "model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop",
    "seed", "presence_penalty", "frequency_penalty", "logit_bias", "user", "logprobs",
    // spanserve's extensions (the gRPC request's fields)
    "span_mode", "return_spans", "include_span_markup", "ignore_eos", "top_k"};
const std::set<std::string, std::less<>> kCompletionFields = {"prompt", "best_of", "echo",
                                                              "suffix"};
const std::set<std::string, std::less<>> kChatFields = {
    "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "functions",
    "function_call", "response_format", "parallel_tool_calls"};

absl::StatusOr<json> ParseObject(std::string_view body,
                                 const std::set<std::string, std::less<>>& own_fields) {
  json object;
  try {
    object = json::parse(body);
  } catch (const json::exception& e) {
    return FieldError("body", absl::StrCat("not valid JSON: ", e.what()));
  }
  if (!object.is_object()) return TypeError("body", "a JSON object", object);
  for (const auto& item : object.items()) {
    if (!kCommonFields.contains(item.key()) && !own_fields.contains(item.key())) {
      return FieldError(item.key(), "unknown field");
    }
  }
  return object;
}

void ReadStop(Reader& r, v1::GenerateRequest* proto) {
  const json* stop = r.Get("stop");
  if (!stop) return;
  if (stop->is_string()) {
    proto->add_stop(stop->get<std::string>());
    return;
  }
  if (!stop->is_array()) return r.Fail(TypeError("stop", "a string or an array of strings", *stop));
  for (size_t i = 0; i < stop->size(); ++i) {
    const json& item = (*stop)[i];
    if (!item.is_string()) return r.Fail(TypeError(absl::StrCat("stop[", i, "]"), "a string", item));
    proto->add_stop(item.get<std::string>());
  }
}

void ReadSeed(Reader& r, v1::GenerateRequest* proto) {
  const json* seed = r.Get("seed");
  if (!seed) return;
  if (seed->is_number_unsigned()) return proto->set_seed(seed->get<uint64_t>());
  if (seed->is_number_integer()) {
    return r.Fail(FieldError("seed", "must be between 0 and 18446744073709551615"));
  }
  r.Fail(TypeError("seed", "an integer", *seed));
}

void ReadSpanMode(Reader& r, v1::GenerateRequest* proto) {
  if (!r.Get("span_mode")) return;
  std::string mode;
  r.String("span_mode", &mode);
  if (!r.status().ok()) return;
  if (mode == "self_selected") return proto->set_span_mode(v1::SPAN_MODE_SELF_SELECTED);
  if (mode == "dense") return proto->set_span_mode(v1::SPAN_MODE_DENSE);
  r.Fail(FieldError("span_mode", absl::StrCat("must be \"self_selected\" or \"dense\", got ",
                                              Describe(json(mode)))));
}

void ReadStreamOptions(Reader& r, ParsedRequest* out) {
  r.Bool("stream", &out->stream);
  const json* options = r.Get("stream_options");
  if (!options) return;
  if (!options->is_object()) return r.Fail(TypeError("stream_options", "an object", *options));
  if (!out->stream) return r.Fail(FieldError("stream_options", "only allowed with stream: true"));
  for (const auto& item : options->items()) {
    if (item.key() != "include_usage") {
      return r.Fail(FieldError(absl::StrCat("stream_options.", item.key()), "unknown field"));
    }
    if (item.value().is_null()) continue;
    if (!item.value().is_boolean()) {
      return r.Fail(TypeError("stream_options.include_usage", "true or false", item.value()));
    }
    out->include_usage = item.value().get<bool>();
  }
}

// The fields both endpoints have.
void ReadCommon(Reader& r, ParsedRequest* out) {
  v1::GenerateRequest* proto = &out->proto;
  r.String("model", &out->model);
  r.Int("max_tokens", [&](int32_t v) { proto->set_max_tokens(v); });
  r.Number("temperature", [&](float v) { proto->set_temperature(v); });
  r.Number("top_p", [&](float v) { proto->set_top_p(v); });
  r.Int("top_k", [&](int32_t v) { proto->set_top_k(v); });
  ReadStreamOptions(r, out);
  ReadStop(r, proto);
  ReadSeed(r, proto);
  std::string user;
  r.String("user", &user);  // accepted, not used
  ReadSpanMode(r, proto);
  bool flag = false;
  r.Bool("return_spans", &flag);
  proto->set_return_spans(flag);
  flag = false;
  r.Bool("include_span_markup", &flag);
  proto->set_include_span_markup(flag);
  flag = false;
  r.Bool("ignore_eos", &flag);
  proto->set_ignore_eos(flag);
  CheckUnsupported(r, kUnsupportedCommon);
}

void ReadPrompt(Reader& r, v1::GenerateRequest* proto) {
  const json* prompt = r.Get("prompt");
  if (!prompt) return r.Fail(FieldError("prompt", "required"));
  if (prompt->is_string()) return proto->set_prompt(prompt->get<std::string>());
  if (!prompt->is_array()) return r.Fail(TypeError("prompt", "a string", *prompt));
  if (prompt->empty()) return r.Fail(FieldError("prompt", "must not be an empty array"));
  for (const json& item : *prompt) {
    if (!item.is_string()) {
      return r.Fail(FieldError("prompt", "token-id prompts are not supported; send text"));
    }
  }
  if (prompt->size() > 1) {
    return r.Fail(FieldError("prompt", absl::StrCat("one prompt per request is supported, got ",
                                                    prompt->size())));
  }
  proto->set_prompt((*prompt)[0].get<std::string>());
}

// A message's content: a string, or an array of text parts (joined by newlines).
absl::StatusOr<std::string> ReadContent(const json* content, const std::string& path) {
  if (!content) return FieldError(path, "required");
  if (content->is_string()) return content->get<std::string>();
  if (!content->is_array()) return TypeError(path, "a string or an array of text parts", *content);
  std::vector<std::string> texts;
  for (size_t j = 0; j < content->size(); ++j) {
    const json& part = (*content)[j];
    const std::string part_path = absl::StrCat(path, "[", j, "]");
    if (!part.is_object()) return TypeError(part_path, "an object", part);
    auto type = part.find("type");
    if (type == part.end() || !type->is_string()) {
      return TypeError(part_path + ".type", "a string", type == part.end() ? json() : *type);
    }
    if (type->get<std::string>() != "text") {
      return FieldError(part_path + ".type",
                        absl::StrCat("only text parts are supported, got ", Describe(*type)));
    }
    auto text = part.find("text");
    if (text == part.end() || !text->is_string()) {
      return TypeError(part_path + ".text", "a string", text == part.end() ? json() : *text);
    }
    texts.push_back(text->get<std::string>());
  }
  return absl::StrJoin(texts, "\n");
}

absl::StatusOr<ChatMessage> ReadMessage(const json& message, const std::string& path) {
  if (!message.is_object()) return TypeError(path, "an object", message);
  for (const auto& item : message.items()) {
    if (item.key() != "role" && item.key() != "content" && item.key() != "name") {
      if (item.value().is_null()) continue;
      return FieldError(absl::StrCat(path, ".", item.key()), "not supported");
    }
  }
  Reader r(message);
  ChatMessage out;
  const json* role = r.Get("role");
  if (!role) return FieldError(path + ".role", "required");
  if (!role->is_string()) return TypeError(path + ".role", "a string", *role);
  out.role = role->get<std::string>();
  if (out.role == "tool" || out.role == "function") {
    return FieldError(path + ".role", absl::StrCat(out.role, " messages are not supported"));
  }
  if (out.role != "system" && out.role != "developer" && out.role != "user" &&
      out.role != "assistant") {
    return FieldError(path + ".role", absl::StrCat("must be system, developer, user or assistant, "
                                                   "got ", Describe(*role)));
  }
  const json* name = r.Get("name");  // accepted, not rendered
  if (name && !name->is_string()) return TypeError(path + ".name", "a string", *name);
  absl::StatusOr<std::string> content = ReadContent(r.Get("content"), path + ".content");
  if (!content.ok()) return content.status();
  out.content = *std::move(content);
  return out;
}

void ReadMessages(Reader& r, ChatFormat format, v1::GenerateRequest* proto) {
  const json* messages = r.Get("messages");
  if (!messages) return r.Fail(FieldError("messages", "required"));
  if (!messages->is_array()) return r.Fail(TypeError("messages", "an array", *messages));
  if (messages->empty()) return r.Fail(FieldError("messages", "must not be empty"));
  std::vector<ChatMessage> parsed;
  for (size_t i = 0; i < messages->size(); ++i) {
    absl::StatusOr<ChatMessage> message =
        ReadMessage((*messages)[i], absl::StrCat("messages[", i, "]"));
    if (!message.ok()) return r.Fail(message.status());
    parsed.push_back(*std::move(message));
  }
  proto->set_prompt(RenderChat(parsed, format));
}

// The parse functions' last guard: whatever might still throw becomes a 400.
template <typename Parse>
absl::StatusOr<ParsedRequest> NeverThrow(Parse parse) {
  try {
    return parse();
  } catch (const std::exception& e) {
    return FieldError("body", absl::StrCat("could not be read: ", e.what()));
  }
}

const char* FinishReasonText(FinishReason reason) {
  return reason == FinishReason::kLength ? "length" : "stop";
}

json Usage(const GenerationEvent& finish) {
  return {{"prompt_tokens", finish.prompt_tokens},
          {"completion_tokens", finish.generated_tokens},
          {"total_tokens", finish.prompt_tokens + finish.generated_tokens}};
}

json SpanserveObject(const ResponseMeta& meta, const GenerationEvent& finish) {
  const double saved =
      finish.kv_blocks_dense > 0
          ? 1.0 - static_cast<double>(finish.kv_blocks_read) / finish.kv_blocks_dense
          : 0.0;
  json out = {{"span_mode", meta.span_mode == SpanMode::kDense ? "dense" : "self_selected"},
              {"seed", meta.seed},
              {"attention",
               {{"kv_blocks_read", finish.kv_blocks_read},
                {"kv_blocks_dense", finish.kv_blocks_dense},
                {"attended_tokens", finish.attended_tokens},
                {"context_tokens", finish.context_tokens},
                {"saved_fraction", saved}}}};
  if (!meta.return_spans) return out;
  json segments = json::array();
  for (const SegmentReport& segment : finish.segments) {
    segments.push_back({{"id", segment.id},
                        {"referenced_ids", segment.refs},
                        {"text", segment.text},
                        {"in_prompt", segment.in_prompt},
                        {"dense_fallback", segment.dense_fallback}});
  }
  out["segments"] = std::move(segments);
  return out;
}

json Envelope(const ResponseMeta& meta, bool chunk) {
  const bool chat = meta.endpoint == Endpoint::kChatCompletions;
  const char* object = !chat ? "text_completion" : chunk ? "chat.completion.chunk"
                                                         : "chat.completion";
  return {{"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

// A stream chunk's one choice: `text` (chat: the delta), and the finish reason or null.
json ChunkChoice(const ResponseMeta& meta, json delta, json finish_reason) {
  json choice = {{"index", 0}};
  if (meta.endpoint == Endpoint::kChatCompletions) {
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = delta.value("content", "");
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = std::move(finish_reason);
  return choice;
}

std::string Chunk(const ResponseMeta& meta, json choice) {
  json out = Envelope(meta, true);
  out["choices"] = json::array({std::move(choice)});
  return Dump(out);
}

json ModelObject(std::string_view model, int64_t created) {
  return {{"id", model}, {"object", "model"}, {"created", created}, {"owned_by", "spanserve"}};
}

// The field an error message starts with ("max_tokens: ..."), or "".
std::string ParamOf(std::string_view message) {
  const size_t colon = message.find(": ");
  if (colon == std::string_view::npos || colon == 0) return "";
  for (char c : message.substr(0, colon)) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.' && c != '[' &&
        c != ']') {
      return "";
    }
  }
  return std::string(message.substr(0, colon));
}

}  // namespace

absl::StatusOr<ParsedRequest> ParseCompletionRequest(std::string_view body) {
  return NeverThrow([&]() -> absl::StatusOr<ParsedRequest> {
    absl::StatusOr<json> object = ParseObject(body, kCompletionFields);
    if (!object.ok()) return object.status();
    Reader r(*object);
    ParsedRequest out;
    ReadPrompt(r, &out.proto);
    ReadCommon(r, &out);
    CheckUnsupported(r, kUnsupportedCompletions);
    if (!r.status().ok()) return r.status();
    return out;
  });
}

absl::StatusOr<ParsedRequest> ParseChatRequest(std::string_view body, ChatFormat format) {
  return NeverThrow([&]() -> absl::StatusOr<ParsedRequest> {
    absl::StatusOr<json> object = ParseObject(body, kChatFields);
    if (!object.ok()) return object.status();
    Reader r(*object);
    ParsedRequest out;
    out.endpoint = Endpoint::kChatCompletions;
    ReadMessages(r, format, &out.proto);
    ReadCommon(r, &out);
    // max_completion_tokens replaces max_tokens (deprecated for chat) when both are given.
    if (r.Get("max_completion_tokens")) {
      out.max_tokens_field = "max_completion_tokens";
      r.Int("max_completion_tokens", [&](int32_t v) { out.proto.set_max_tokens(v); });
    }
    bool parallel_tool_calls = false;
    r.Bool("parallel_tool_calls", &parallel_tool_calls);  // meaningless without tools
    CheckUnsupported(r, kUnsupportedChat);
    if (!r.status().ok()) return r.status();
    return out;
  });
}

std::string RenderChat(const std::vector<ChatMessage>& messages, ChatFormat format) {
  std::string prompt;
  for (const ChatMessage& message : messages) {
    const bool system = message.role == "system" || message.role == "developer";
    if (format == ChatFormat::kChatML) {
      absl::StrAppend(&prompt, "<|im_start|>", system ? "system" : message.role, "\n",
                      message.content, "<|im_end|>\n");
    } else {
      const char* label = system ? "System" : message.role == "user" ? "User" : "Assistant";
      absl::StrAppend(&prompt, label, ": ", message.content, "\n");
    }
  }
  prompt += format == ChatFormat::kChatML ? "<|im_start|>assistant\n" : "Assistant:";
  return prompt;
}

ApiError ErrorFor(const absl::Status& status, const ParsedRequest* request) {
  ApiError error;
  error.message = std::string(status.message());
  if (request) {
    // The engine names the gRPC request's fields; say the ones this body sent instead.
    const std::string_view prompt =
        request->endpoint == Endpoint::kChatCompletions ? "messages" : "prompt";
    for (auto [grpc_name, http_name] :
         {std::pair<std::string_view, std::string_view>{"prompt", prompt},
          {"max_tokens", request->max_tokens_field}}) {
      if (error.message.starts_with(std::string(grpc_name) + ":")) {
        error.message = std::string(http_name) + error.message.substr(grpc_name.size());
      }
    }
  }
  const std::string param = ParamOf(error.message);
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      error.http_status = 400;
      error.type = "invalid_request_error";
      error.param = param == "body" ? "" : param;
      break;
    case absl::StatusCode::kNotFound:
      error.http_status = 404;
      error.type = "invalid_request_error";
      error.param = param;
      error.code = param == "model" ? "model_not_found" : "not_found";
      break;
    case absl::StatusCode::kUnauthenticated:
      error.http_status = 401;
      error.type = "authentication_error";
      error.code = "invalid_api_key";
      break;
    case absl::StatusCode::kResourceExhausted:
      error.http_status = 429;
      error.type = "rate_limit_error";
      error.code = "queue_full";
      break;
    case absl::StatusCode::kUnavailable:
      error.http_status = 503;
      error.type = "server_error";
      error.code = "unavailable";
      break;
    default:
      error.http_status = 500;
      error.type = "server_error";
      break;
  }
  return error;
}

std::string ErrorBody(const ApiError& error) {
  auto null_if_empty = [](const std::string& s) { return s.empty() ? json() : json(s); };
  return Dump({{"error",
                {{"message", error.message},
                 {"type", error.type},
                 {"param", null_if_empty(error.param)},
                 {"code", null_if_empty(error.code)}}}});
}

std::string ResponseBody(const ResponseMeta& meta, std::string_view text,
                         const GenerationEvent& finish) {
  json choice = {{"index", 0}};
  if (meta.endpoint == Endpoint::kChatCompletions) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = FinishReasonText(finish.finish_reason);
  json out = Envelope(meta, false);
  out["choices"] = json::array({std::move(choice)});
  out["usage"] = Usage(finish);
  out["spanserve"] = SpanserveObject(meta, finish);
  return Dump(out);
}

std::string RoleChunk(const ResponseMeta& meta) {
  return Chunk(meta, ChunkChoice(meta, {{"role", "assistant"}, {"content", ""}}, nullptr));
}

std::string TextChunk(const ResponseMeta& meta, std::string_view text) {
  return Chunk(meta, ChunkChoice(meta, {{"content", text}}, nullptr));
}

std::string FinishChunk(const ResponseMeta& meta, const GenerationEvent& finish) {
  json out = Envelope(meta, true);
  out["choices"] = json::array(
      {ChunkChoice(meta, json::object(), FinishReasonText(finish.finish_reason))});
  out["spanserve"] = SpanserveObject(meta, finish);
  return Dump(out);
}

std::string UsageChunk(const ResponseMeta& meta, const GenerationEvent& finish) {
  json out = Envelope(meta, true);
  out["choices"] = json::array();
  out["usage"] = Usage(finish);
  return Dump(out);
}

std::string SseEvent(std::string_view json_text) {
  return "data: " + std::string(json_text) + "\n\n";
}

std::string ModelsBody(std::string_view model, int64_t created) {
  return Dump({{"object", "list"}, {"data", json::array({ModelObject(model, created)})}});
}

std::string ModelBody(std::string_view model, int64_t created) {
  return Dump(ModelObject(model, created));
}

size_t CompleteUtf8Prefix(std::string_view text) {
  // Walk back over at most 3 continuation bytes to the last sequence's lead byte.
  size_t lead = text.size();
  for (int back = 0; back < 4 && lead > 0; ++back) {
    const unsigned char c = static_cast<unsigned char>(text[lead - 1]);
    --lead;
    if ((c & 0xC0) != 0x80) {
      const size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3
                                     : (c & 0xF8) == 0xF0   ? 4 : 1;
      return text.size() - lead < need ? lead : text.size();
    }
  }
  return text.size();  // no lead byte where one should be: not ours to repair
}

}  // namespace spanserve::openai
