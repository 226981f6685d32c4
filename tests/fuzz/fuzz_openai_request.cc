// libFuzzer: bytes as an HTTP JSON body of the OpenAI-compatible API (server/openai_protocol.h)
// through ParseCompletionRequest or ParseChatRequest, then ToEngineRequest (server/service.cc)
// for a body it takes. Nothing may throw; a refusal is INVALID_ARGUMENT and becomes a 400 whose
// body is JSON; the stream chunk of any text (the body's bytes as the text) is JSON too.
//
// Input: byte 0 picks the endpoint (bit 0) and the chat format (bit 1); the rest is the body.
#include <nlohmann/json.hpp>

#include "server/openai_protocol.h"
#include "server/service.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using spanserve::fuzz::Check;

void CheckError(const absl::Status& status, const spanserve::openai::ParsedRequest* request) {
  Check(status.code() == absl::StatusCode::kInvalidArgument, "a refusal other than 400's");
  const spanserve::openai::ApiError error = spanserve::openai::ErrorFor(status, request);
  Check(error.http_status == 400, "a field's fault not 400");
  Check(nlohmann::json::accept(spanserve::openai::ErrorBody(error)), "an error body not JSON");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace spanserve;
  if (size < 1) return 0;
  static const ServerConfig config;
  const bool chat = data[0] & 1;
  const ChatFormat format = data[0] & 2 ? ChatFormat::kChatML : ChatFormat::kPlain;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);

  const absl::StatusOr<openai::ParsedRequest> parsed =
      chat ? openai::ParseChatRequest(body, format) : openai::ParseCompletionRequest(body);
  openai::ResponseMeta meta;
  meta.endpoint = chat ? openai::Endpoint::kChatCompletions : openai::Endpoint::kCompletions;
  Check(nlohmann::json::accept(openai::TextChunk(meta, body)), "a text chunk not JSON");
  Check(openai::CompleteUtf8Prefix(body) <= body.size(), "a prefix past the text");
  if (!parsed.ok()) {
    CheckError(parsed.status(), nullptr);
    return 0;
  }
  Check(parsed->endpoint == meta.endpoint, "the endpoint parsed is not the one posted");
  uint64_t seed = 0;
  const absl::StatusOr<GenerateRequest> request = ToEngineRequest(parsed->proto, config, &seed);
  if (!request.ok()) CheckError(request.status(), &*parsed);
  return 0;
}
