// The OpenAI-compatible HTTP API's protocol, without sockets or an HTTP library: the bodies of
// POST /v1/completions and /v1/chat/completions parsed into the gRPC request (ToEngineRequest
// then gives both APIs the same defaults, limits and validation), and the JSON of responses,
// stream chunks and errors built from the engine's events. No function here throws, whatever
// the bytes it is given.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/core/engine.h"
#include "spanserve/v1/spanserve.pb.h"

namespace spanserve::openai {

enum class Endpoint { kCompletions, kChatCompletions };

// A request body, parsed: the generation itself and what only HTTP has.
struct ParsedRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  v1::GenerateRequest proto;
  std::string model;              // "" when the body names none
  bool stream = false;
  bool include_usage = false;     // stream_options.include_usage
  // The body's name for proto.max_tokens (chat: max_completion_tokens when that was given), so
  // that the engine's "max_tokens: ..." errors name the field the client sent.
  std::string max_tokens_field = "max_tokens";
};

// INVALID_ARGUMENT for a body that is not a JSON object, an unknown field, a field of the wrong
// type, or a feature this server does not have (n > 1, logprobs, tools, ...); the message
// starts with the field's path ("temperature: ...", "messages[1].content: ..."). Value ranges
// (max_tokens, temperature, top_p, stop) are left to the engine, as for gRPC.
absl::StatusOr<ParsedRequest> ParseCompletionRequest(std::string_view body);
absl::StatusOr<ParsedRequest> ParseChatRequest(std::string_view body, ChatFormat format);

// One chat message: its role (system, developer, user, assistant) and its text.
struct ChatMessage {
  std::string role;
  std::string content;
};
// The prompt for `messages` in `format`, ending where the assistant's reply begins.
std::string RenderChat(const std::vector<ChatMessage>& messages, ChatFormat format);

// An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int http_status = 500;
  std::string message;
  std::string type;
  std::string param;  // "" is null
  std::string code;   // "" is null
};
// The HTTP error for a status: INVALID_ARGUMENT and FAILED_PRECONDITION 400 (param: the field the
// message starts with), NOT_FOUND 404, UNAUTHENTICATED 401, RESOURCE_EXHAUSTED 429 (the queue is
// full), UNAVAILABLE 503, anything else 500. With `request`, the status is ToEngineRequest's or
// Engine::Submit's for it, whose gRPC field names become the body's ("prompt" is "messages" in
// chat, "max_tokens" may be "max_completion_tokens").
ApiError ErrorFor(const absl::Status& status, const ParsedRequest* request = nullptr);
std::string ErrorBody(const ApiError& error);

// What every response and stream chunk of one request carries.
struct ResponseMeta {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string id;       // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
  SpanMode span_mode = SpanMode::kSelfSelected;
  uint64_t seed = 0;
  bool return_spans = false;
};

// The whole response of a generation that finished normally (`finish` is its last event).
std::string ResponseBody(const ResponseMeta& meta, std::string_view text,
                         const GenerationEvent& finish);
// Stream chunks (JSON, one per SSE event). Chat's first chunk carries the role, no text.
std::string RoleChunk(const ResponseMeta& meta);
std::string TextChunk(const ResponseMeta& meta, std::string_view text);
// finish_reason and the spanserve object.
std::string FinishChunk(const ResponseMeta& meta, const GenerationEvent& finish);
// stream_options.include_usage: no choices, the usage.
std::string UsageChunk(const ResponseMeta& meta, const GenerationEvent& finish);
// One server-sent event: "data: <json>\n\n".
std::string SseEvent(std::string_view json);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

// GET /v1/models: the list of the one model served; GET /v1/models/{model}: that model.
std::string ModelsBody(std::string_view model, int64_t created);
std::string ModelBody(std::string_view model, int64_t created);

// The length of the longest prefix of `text` that does not end inside a UTF-8 sequence (a
// stream holds the rest back until the next token completes it).
size_t CompleteUtf8Prefix(std::string_view text);

}  // namespace spanserve::openai
