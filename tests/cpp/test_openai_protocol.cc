// The OpenAI-compatible API's protocol: every field of both request bodies into the gRPC request,
// every refusal naming its field, the error mapping, the JSON of responses and stream chunks,
// and bytes that are not a request never throwing.
#include "server/openai_protocol.h"

#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "gtest/gtest.h"

namespace spanserve::openai {
namespace {

using nlohmann::json;

ParsedRequest ParseOk(const std::string& body) {
  absl::StatusOr<ParsedRequest> parsed = ParseCompletionRequest(body);
  EXPECT_TRUE(parsed.ok()) << body << ": " << parsed.status();
  return parsed.ok() ? *parsed : ParsedRequest{};
}

ParsedRequest ParseChatOk(const std::string& body, ChatFormat format = ChatFormat::kPlain) {
  absl::StatusOr<ParsedRequest> parsed = ParseChatRequest(body, format);
  EXPECT_TRUE(parsed.ok()) << body << ": " << parsed.status();
  return parsed.ok() ? *parsed : ParsedRequest{};
}

TEST(OpenAiCompletionRequest, EveryField) {
  const ParsedRequest parsed = ParseOk(R"({
    "model": "arith-small", "prompt": "1+2=", "max_tokens": 12, "temperature": 0.5,
    "top_p": 0.9, "top_k": 40, "seed": 18446744073709551615, "stop": ["\n", "<end>"],
    "n": 1, "best_of": 1, "echo": false, "suffix": "", "logprobs": null, "user": "u-1",
    "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {},
    "stream": true, "stream_options": {"include_usage": true},
    "span_mode": "dense", "return_spans": true, "include_span_markup": true,
    "ignore_eos": true})");
  const v1::GenerateRequest& p = parsed.proto;
  EXPECT_EQ(parsed.endpoint, Endpoint::kCompletions);
  EXPECT_EQ(parsed.model, "arith-small");
  EXPECT_TRUE(parsed.stream);
  EXPECT_TRUE(parsed.include_usage);
  EXPECT_EQ(parsed.max_tokens_field, "max_tokens");
  EXPECT_EQ(p.prompt(), "1+2=");
  EXPECT_EQ(p.max_tokens(), 12);
  EXPECT_FLOAT_EQ(p.temperature(), 0.5f);
  EXPECT_FLOAT_EQ(p.top_p(), 0.9f);
  EXPECT_EQ(p.top_k(), 40);
  EXPECT_EQ(p.seed(), std::numeric_limits<uint64_t>::max());
  ASSERT_EQ(p.stop_size(), 2);
  EXPECT_EQ(p.stop(0), "\n");
  EXPECT_EQ(p.stop(1), "<end>");
  EXPECT_EQ(p.span_mode(), v1::SPAN_MODE_DENSE);
  EXPECT_TRUE(p.return_spans());
  EXPECT_TRUE(p.include_span_markup());
  EXPECT_TRUE(p.ignore_eos());
}

TEST(OpenAiCompletionRequest, UnsetFieldsStayUnset) {
  // Unset and null alike: ToEngineRequest then applies the server's defaults, as for gRPC.
  for (const std::string body : {R"({"prompt": "x"})",
                                 R"({"prompt": "x", "max_tokens": null, "temperature": null,
                                     "top_p": null, "top_k": null, "seed": null, "stop": null,
                                     "span_mode": null, "stream": null, "model": null})"}) {
    const ParsedRequest parsed = ParseOk(body);
    const v1::GenerateRequest& p = parsed.proto;
    EXPECT_FALSE(p.has_max_tokens());
    EXPECT_FALSE(p.has_temperature());
    EXPECT_FALSE(p.has_top_p());
    EXPECT_FALSE(p.has_top_k());
    EXPECT_FALSE(p.has_seed());
    EXPECT_EQ(p.stop_size(), 0);
    EXPECT_EQ(p.span_mode(), v1::SPAN_MODE_UNSPECIFIED);
    EXPECT_FALSE(p.return_spans());
    EXPECT_FALSE(parsed.stream);
    EXPECT_TRUE(parsed.model.empty());
  }
}

TEST(OpenAiCompletionRequest, PromptAndStopForms) {
  EXPECT_EQ(ParseOk(R"({"prompt": ["one prompt"]})").proto.prompt(), "one prompt");
  const ParsedRequest one_stop = ParseOk(R"({"prompt": "x", "stop": "END"})");
  ASSERT_EQ(one_stop.proto.stop_size(), 1);
  EXPECT_EQ(one_stop.proto.stop(0), "END");
  EXPECT_EQ(ParseOk(R"({"prompt": "x", "stop": []})").proto.stop_size(), 0);
  EXPECT_EQ(ParseOk(R"({"prompt": "x", "span_mode": "self_selected"})").proto.span_mode(),
            v1::SPAN_MODE_SELF_SELECTED);
  EXPECT_FLOAT_EQ(ParseOk(R"({"prompt": "x", "temperature": 1})").proto.temperature(), 1.0f);
}

TEST(OpenAiCompletionRequest, IntegersOutsideInt32AreClampedForTheEngineToRefuse) {
  EXPECT_EQ(ParseOk(R"({"prompt": "x", "max_tokens": 1000000000000})").proto.max_tokens(),
            std::numeric_limits<int32_t>::max());
  EXPECT_EQ(ParseOk(R"({"prompt": "x", "max_tokens": -1000000000000})").proto.max_tokens(),
            std::numeric_limits<int32_t>::min());
  EXPECT_EQ(ParseOk(R"({"prompt": "x", "max_tokens": 0})").proto.max_tokens(), 0);
  EXPECT_EQ(ParseOk(R"({"prompt": "x", "top_k": -3})").proto.top_k(), -3);
}

TEST(OpenAiCompletionRequest, NumbersPastFloatBecomeInfinityForTheEngineToRefuse) {
  // A plain double-to-float cast is undefined out of float's range (UBSan's
  // float-cast-overflow); the engine refuses the infinity as not finite.
  constexpr float kInf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(ParseOk(R"({"prompt": "x", "temperature": 1e300})").proto.temperature(), kInf);
  EXPECT_EQ(ParseOk(R"({"prompt": "x", "temperature": -1e300})").proto.temperature(), -kInf);
  EXPECT_EQ(ParseOk(R"({"prompt": "x", "top_p": 3.5e38})").proto.top_p(), kInf);
  EXPECT_FLOAT_EQ(ParseOk(R"({"prompt": "x", "top_p": 3.4e38})").proto.top_p(), 3.4e38f);
}

TEST(OpenAiChatRequest, PlainFormatRendersRolePrefixedLines) {
  const ParsedRequest parsed = ParseChatOk(R"({"messages": [
      {"role": "system", "content": "Be terse."},
      {"role": "user", "content": "1+2="},
      {"role": "assistant", "content": "3", "name": "bot"},
      {"role": "developer", "content": "Answer with digits."},
      {"role": "user", "content": [{"type": "text", "text": "2+2"}, {"type": "text", "text": "="}]}
    ], "max_tokens": 7})");
  EXPECT_EQ(parsed.endpoint, Endpoint::kChatCompletions);
  EXPECT_EQ(parsed.proto.prompt(),
            "System: Be terse.\nUser: 1+2=\nAssistant: 3\nSystem: Answer with digits.\n"
            "User: 2+2\n=\nAssistant:");
  EXPECT_EQ(parsed.proto.max_tokens(), 7);
  EXPECT_EQ(parsed.max_tokens_field, "max_tokens");
}

TEST(OpenAiChatRequest, ChatMLFormat) {
  const ParsedRequest parsed = ParseChatOk(
      R"({"messages": [{"role": "developer", "content": "S"}, {"role": "user", "content": "U"}]})",
      ChatFormat::kChatML);
  EXPECT_EQ(parsed.proto.prompt(),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(OpenAiChatRequest, MaxCompletionTokensWins) {
  const ParsedRequest parsed = ParseChatOk(
      R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
          "max_completion_tokens": 9, "logprobs": false, "tools": [], "tool_choice": "none",
          "response_format": {"type": "text"}, "parallel_tool_calls": true})");
  EXPECT_EQ(parsed.proto.max_tokens(), 9);
  EXPECT_EQ(parsed.max_tokens_field, "max_completion_tokens");
}

struct BadRow {
  const char* name;
  bool chat;
  std::string body;
  std::string param;    // "" for null
  std::string message;  // a part of the message
};

const BadRow kBadRows[] = {
    {"not JSON", false, "{bad", "", "not valid JSON"},
    {"empty body", false, "", "", "not valid JSON"},
    {"not an object", false, "[1, 2]", "", "expected a JSON object"},
    {"unknown field", false, R"({"prompt": "x", "max_token": 3})", "max_token", "unknown field"},
    {"chat field in completions", false, R"({"prompt": "x", "messages": []})", "messages",
     "unknown field"},
    {"prompt missing", false, R"({"max_tokens": 3})", "prompt", "required"},
    {"prompt a number", false, R"({"prompt": 5})", "prompt", "expected a string"},
    {"prompt of two", false, R"({"prompt": ["a", "b"]})", "prompt", "one prompt per request"},
    {"prompt of token ids", false, R"({"prompt": [1, 2, 3]})", "prompt", "token-id"},
    {"prompt an empty array", false, R"({"prompt": []})", "prompt", "empty array"},
    {"model a number", false, R"({"prompt": "x", "model": 3})", "model", "expected a string"},
    {"max_tokens a string", false, R"({"prompt": "x", "max_tokens": "8"})", "max_tokens",
     "expected an integer, got the string \"8\""},
    {"max_tokens a float", false, R"({"prompt": "x", "max_tokens": 8.5})", "max_tokens",
     "expected an integer"},
    {"temperature a string", false, R"({"prompt": "x", "temperature": "hot"})", "temperature",
     "expected a number"},
    {"temperature true", false, R"({"prompt": "x", "temperature": true})", "temperature",
     "expected a number, got true"},
    {"temperature too big", false, R"({"prompt": "x", "temperature": 1e400})", "",
     "not valid JSON"},
    {"top_p an array", false, R"({"prompt": "x", "top_p": [1]})", "top_p", "expected a number"},
    {"top_k a float", false, R"({"prompt": "x", "top_k": 1.5})", "top_k", "expected an integer"},
    {"stop a number", false, R"({"prompt": "x", "stop": 3})", "stop", "expected a string or"},
    {"stop with a number", false, R"({"prompt": "x", "stop": ["a", 3]})", "stop[1]",
     "expected a string"},
    {"seed negative", false, R"({"prompt": "x", "seed": -1})", "seed", "between 0 and"},
    {"seed a float", false, R"({"prompt": "x", "seed": 1.5})", "seed", "expected an integer"},
    {"seed a string", false, R"({"prompt": "x", "seed": "7"})", "seed", "expected an integer"},
    {"stream a string", false, R"({"prompt": "x", "stream": "yes"})", "stream",
     "expected true or false"},
    {"stream_options without stream", false,
     R"({"prompt": "x", "stream_options": {"include_usage": true}})", "stream_options",
     "only allowed with stream: true"},
    {"stream_options not an object", false,
     R"({"prompt": "x", "stream": true, "stream_options": true})", "stream_options",
     "expected an object"},
    {"stream_options unknown key", false,
     R"({"prompt": "x", "stream": true, "stream_options": {"usage": true}})",
     "stream_options.usage", "unknown field"},
    {"include_usage a number", false,
     R"({"prompt": "x", "stream": true, "stream_options": {"include_usage": 1}})",
     "stream_options.include_usage", "expected true or false"},
    {"span_mode unknown", false, R"({"prompt": "x", "span_mode": "sparse"})", "span_mode",
     "must be \"self_selected\" or \"dense\""},
    {"span_mode empty", false, R"({"prompt": "x", "span_mode": ""})", "span_mode",
     "must be \"self_selected\" or \"dense\""},
    {"span_mode a number", false, R"({"prompt": "x", "span_mode": 2})", "span_mode",
     "expected a string"},
    {"return_spans a string", false, R"({"prompt": "x", "return_spans": "yes"})",
     "return_spans", "expected true or false"},
    {"ignore_eos a number", false, R"({"prompt": "x", "ignore_eos": 1})", "ignore_eos",
     "expected true or false"},
    {"include_span_markup null-ish", false, R"({"prompt": "x", "include_span_markup": []})",
     "include_span_markup", "expected true or false"},
    {"user a number", false, R"({"prompt": "x", "user": 5})", "user", "expected a string"},
    {"n of 2", false, R"({"prompt": "x", "n": 2})", "n", "only n=1"},
    {"n a string", false, R"({"prompt": "x", "n": "1"})", "n", "expected an integer"},
    {"best_of of 3", false, R"({"prompt": "x", "best_of": 3})", "best_of", "only best_of=1"},
    {"echo", false, R"({"prompt": "x", "echo": true})", "echo", "not supported"},
    {"suffix", false, R"({"prompt": "x", "suffix": "end"})", "suffix", "not supported"},
    {"logit_bias", false, R"({"prompt": "x", "logit_bias": {"5": 1}})", "logit_bias",
     "not supported"},
    {"presence_penalty", false, R"({"prompt": "x", "presence_penalty": 0.5})",
     "presence_penalty", "not supported"},
    {"frequency_penalty", false, R"({"prompt": "x", "frequency_penalty": -1})",
     "frequency_penalty", "not supported"},
    {"logprobs", false, R"({"prompt": "x", "logprobs": 2})", "logprobs", "not supported"},
    {"logprobs of 0", false, R"({"prompt": "x", "logprobs": 0})", "logprobs", "not supported"},
    {"messages missing", true, R"({"max_tokens": 3})", "messages", "required"},
    {"prompt in chat", true, R"({"messages": [{"role": "user", "content": "x"}],
     "prompt": "x"})", "prompt", "unknown field"},
    {"messages empty", true, R"({"messages": []})", "messages", "must not be empty"},
    {"messages an object", true, R"({"messages": {"role": "user"}})", "messages",
     "expected an array"},
    {"message a string", true, R"({"messages": ["hi"]})", "messages[0]", "expected an object"},
    {"role missing", true, R"({"messages": [{"content": "x"}]})", "messages[0].role",
     "required"},
    {"role a number", true, R"({"messages": [{"role": 1, "content": "x"}]})",
     "messages[0].role", "expected a string"},
    {"role tool", true,
     R"({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "x"}]})",
     "messages[1].role", "tool messages are not supported"},
    {"role unknown", true, R"({"messages": [{"role": "robot", "content": "x"}]})",
     "messages[0].role", "must be system, developer, user or assistant"},
    {"content missing", true, R"({"messages": [{"role": "user"}]})", "messages[0].content",
     "required"},
    {"content a number", true, R"({"messages": [{"role": "user", "content": 5}]})",
     "messages[0].content", "expected a string or an array of text parts"},
    {"content part an image", true,
     R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
        {"type": "image_url", "image_url": {"url": "x"}}]}]})",
     "messages[0].content[1].type", "only text parts"},
    {"content part without text", true,
     R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})",
     "messages[0].content[0].text", "expected a string"},
    {"content part not an object", true,
     R"({"messages": [{"role": "user", "content": ["a"]}]})", "messages[0].content[0]",
     "expected an object"},
    {"name a number", true, R"({"messages": [{"role": "user", "content": "x", "name": 1}]})",
     "messages[0].name", "expected a string"},
    {"tool_calls in a message", true,
     R"({"messages": [{"role": "assistant", "content": "x", "tool_calls": [{}]}]})",
     "messages[0].tool_calls", "not supported"},
    {"max_completion_tokens a string", true,
     R"({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": "5"})",
     "max_completion_tokens", "expected an integer"},
    {"chat logprobs", true,
     R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true})", "logprobs",
     "not supported"},
    {"top_logprobs", true,
     R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", "top_logprobs",
     "not supported"},
    {"tools", true,
     R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})",
     "tools", "tool calls are not supported"},
    {"tool_choice auto", true,
     R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"})",
     "tool_choice", "not supported"},
    {"response_format json", true,
     R"({"messages": [{"role": "user", "content": "x"}],
         "response_format": {"type": "json_object"}})", "response_format", "only {\"type\""},
    {"chat n of 3", true, R"({"messages": [{"role": "user", "content": "x"}], "n": 3})", "n",
     "only n=1"},
    {"parallel_tool_calls a string", true,
     R"({"messages": [{"role": "user", "content": "x"}], "parallel_tool_calls": "no"})",
     "parallel_tool_calls", "expected true or false"},
};

class OpenAiBadRequest : public ::testing::TestWithParam<BadRow> {};

TEST_P(OpenAiBadRequest, IsA400NamingTheField) {
  const BadRow& row = GetParam();
  absl::StatusOr<ParsedRequest> parsed = row.chat ? ParseChatRequest(row.body, ChatFormat::kPlain)
                                                  : ParseCompletionRequest(row.body);
  ASSERT_FALSE(parsed.ok()) << row.name;
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  const ApiError error = ErrorFor(parsed.status());
  EXPECT_EQ(error.http_status, 400);
  EXPECT_EQ(error.type, "invalid_request_error");
  EXPECT_EQ(error.param, row.param) << error.message;
  EXPECT_NE(error.message.find(row.message), std::string::npos) << error.message;
  if (!row.param.empty()) EXPECT_TRUE(error.message.starts_with(row.param + ": "));
}

INSTANTIATE_TEST_SUITE_P(Rows, OpenAiBadRequest, ::testing::ValuesIn(kBadRows),
                         [](const ::testing::TestParamInfo<BadRow>& info) {
                           std::string name = info.param.name;
                           for (char& c : name) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

TEST(OpenAiErrors, StatusCodesMapToHttp) {
  struct Case {
    absl::Status status;
    int http;
    std::string type, code;
  };
  const Case cases[] = {
      {absl::InvalidArgumentError("top_p: must be in (0, 1]"), 400, "invalid_request_error", ""},
      {absl::FailedPreconditionError("x: no"), 400, "invalid_request_error", ""},
      {absl::NotFoundError("model: 'gpt-4' is not served here"), 404, "invalid_request_error",
       "model_not_found"},
      {absl::NotFoundError("no route GET /x"), 404, "invalid_request_error", "not_found"},
      {absl::UnauthenticatedError("bad key"), 401, "authentication_error", "invalid_api_key"},
      {absl::ResourceExhaustedError("the waiting queue is full"), 429, "rate_limit_error",
       "queue_full"},
      {absl::UnavailableError("the model is still loading"), 503, "server_error", "unavailable"},
      {absl::InternalError("generation failed: boom"), 500, "server_error", ""},
  };
  for (const Case& c : cases) {
    const ApiError error = ErrorFor(c.status);
    EXPECT_EQ(error.http_status, c.http) << c.status;
    EXPECT_EQ(error.type, c.type) << c.status;
    EXPECT_EQ(error.code, c.code) << c.status;
    EXPECT_EQ(error.message, c.status.message());
  }
  EXPECT_EQ(ErrorFor(absl::InvalidArgumentError("top_p: must be in (0, 1]")).param, "top_p");
  EXPECT_EQ(ErrorFor(absl::NotFoundError("model: 'x' is not served here")).param, "model");
  EXPECT_EQ(ErrorFor(absl::InvalidArgumentError("the waiting: queue")).param, "");
}

TEST(OpenAiErrors, EngineFieldNamesBecomeTheBodysNames) {
  ParsedRequest chat;
  chat.endpoint = Endpoint::kChatCompletions;
  chat.max_tokens_field = "max_completion_tokens";
  const ApiError long_prompt =
      ErrorFor(absl::InvalidArgumentError("prompt: 2000 tokens do not fit"), &chat);
  EXPECT_EQ(long_prompt.param, "messages");
  EXPECT_EQ(long_prompt.message, "messages: 2000 tokens do not fit");
  const ApiError max_tokens =
      ErrorFor(absl::InvalidArgumentError("max_tokens: must be between 1 and 512"), &chat);
  EXPECT_EQ(max_tokens.param, "max_completion_tokens");
  EXPECT_EQ(max_tokens.message, "max_completion_tokens: must be between 1 and 512");
  ParsedRequest completion;
  EXPECT_EQ(ErrorFor(absl::InvalidArgumentError("prompt: must not be empty"), &completion).param,
            "prompt");
  EXPECT_EQ(ErrorFor(absl::InvalidArgumentError("max_tokens: 0"), &completion).param,
            "max_tokens");
  // Without a request (a parse error), names stay as they are.
  EXPECT_EQ(ErrorFor(absl::InvalidArgumentError("prompt: unknown field")).param, "prompt");
}

TEST(OpenAiErrors, BodyIsOpenAisShape) {
  const json body = json::parse(ErrorBody(ErrorFor(absl::InvalidArgumentError("n: only n=1"))));
  ASSERT_TRUE(body.contains("error"));
  EXPECT_EQ(body["error"]["message"], "n: only n=1");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["param"], "n");
  EXPECT_TRUE(body["error"]["code"].is_null());
  const json unavailable = json::parse(ErrorBody(ErrorFor(absl::UnavailableError("loading"))));
  EXPECT_TRUE(unavailable["error"]["param"].is_null());
  EXPECT_EQ(unavailable["error"]["code"], "unavailable");
}

GenerationEvent Finish(FinishReason reason) {
  GenerationEvent event;
  event.finished = true;
  event.finish_reason = reason;
  event.prompt_tokens = 14;
  event.generated_tokens = 34;
  event.kv_blocks_read = 77;
  event.kv_blocks_dense = 80;
  event.attended_tokens = 900;
  event.context_tokens = 1000;
  event.segments = {{0, {}, "((3+4)*(5-2))+6=", true, false}, {1, {0}, "(7*(5-2))+6", false, false},
                    {2, {1}, "x", false, true}};
  return event;
}

ResponseMeta Meta(Endpoint endpoint, bool return_spans) {
  ResponseMeta meta;
  meta.endpoint = endpoint;
  meta.id = endpoint == Endpoint::kCompletions ? "cmpl-1" : "chatcmpl-1";
  meta.created = 1700000000;
  meta.model = "arith-small";
  meta.span_mode = SpanMode::kSelfSelected;
  meta.seed = 11966428603885653355ull;
  meta.return_spans = return_spans;
  return meta;
}

void ExpectSpanserve(const json& spanserve, bool with_segments) {
  EXPECT_EQ(spanserve["span_mode"], "self_selected");
  EXPECT_EQ(spanserve["seed"].get<uint64_t>(), 11966428603885653355ull);
  const json& attention = spanserve["attention"];
  EXPECT_EQ(attention["kv_blocks_read"], 77);
  EXPECT_EQ(attention["kv_blocks_dense"], 80);
  EXPECT_EQ(attention["attended_tokens"], 900);
  EXPECT_EQ(attention["context_tokens"], 1000);
  EXPECT_DOUBLE_EQ(attention["saved_fraction"].get<double>(), 1.0 - 77.0 / 80.0);
  ASSERT_EQ(spanserve.contains("segments"), with_segments);
  if (!with_segments) return;
  const json& segments = spanserve["segments"];
  ASSERT_EQ(segments.size(), 3u);
  EXPECT_EQ(segments[0], json::parse(R"({"id": 0, "referenced_ids": [],
                                         "text": "((3+4)*(5-2))+6=", "in_prompt": true,
                                         "dense_fallback": false})"));
  EXPECT_EQ(segments[1]["referenced_ids"], json::array({0}));
  EXPECT_EQ(segments[2]["dense_fallback"], true);
}

TEST(OpenAiResponse, Completion) {
  const json body = json::parse(
      ResponseBody(Meta(Endpoint::kCompletions, true), "27", Finish(FinishReason::kEos)));
  EXPECT_EQ(body["id"], "cmpl-1");
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["created"], 1700000000);
  EXPECT_EQ(body["model"], "arith-small");
  ASSERT_EQ(body["choices"].size(), 1u);
  EXPECT_EQ(body["choices"][0]["text"], "27");
  EXPECT_EQ(body["choices"][0]["index"], 0);
  EXPECT_TRUE(body["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["usage"], json::parse(R"({"prompt_tokens": 14, "completion_tokens": 34,
                                           "total_tokens": 48})"));
  ExpectSpanserve(body["spanserve"], true);
}

TEST(OpenAiResponse, ChatAndFinishReasons) {
  for (auto [reason, text] : {std::pair{FinishReason::kEos, "stop"}, {FinishReason::kStop, "stop"},
                              {FinishReason::kLength, "length"}}) {
    const json body = json::parse(
        ResponseBody(Meta(Endpoint::kChatCompletions, false), "hi", Finish(reason)));
    EXPECT_EQ(body["object"], "chat.completion");
    EXPECT_EQ(body["choices"][0]["message"],
              json::parse(R"({"role": "assistant", "content": "hi"})"));
    EXPECT_EQ(body["choices"][0]["finish_reason"], text);
    ExpectSpanserve(body["spanserve"], false);
  }
}

TEST(OpenAiResponse, StreamChunks) {
  const ResponseMeta chat = Meta(Endpoint::kChatCompletions, true);
  const json role = json::parse(RoleChunk(chat));
  EXPECT_EQ(role["object"], "chat.completion.chunk");
  EXPECT_EQ(role["choices"][0]["delta"], json::parse(R"({"role": "assistant", "content": ""})"));
  EXPECT_TRUE(role["choices"][0]["finish_reason"].is_null());
  const json text = json::parse(TextChunk(chat, "(7*"));
  EXPECT_EQ(text["id"], "chatcmpl-1");
  EXPECT_EQ(text["choices"][0]["delta"], json::parse(R"({"content": "(7*"})"));
  EXPECT_FALSE(text.contains("spanserve"));
  const json finish = json::parse(FinishChunk(chat, Finish(FinishReason::kLength)));
  EXPECT_EQ(finish["choices"][0]["delta"], json::object());
  EXPECT_EQ(finish["choices"][0]["finish_reason"], "length");
  EXPECT_FALSE(finish.contains("usage"));
  ExpectSpanserve(finish["spanserve"], true);
  const json usage = json::parse(UsageChunk(chat, Finish(FinishReason::kLength)));
  EXPECT_EQ(usage["choices"], json::array());
  EXPECT_EQ(usage["usage"]["total_tokens"], 48);

  const ResponseMeta completion = Meta(Endpoint::kCompletions, false);
  const json piece = json::parse(TextChunk(completion, "27"));
  EXPECT_EQ(piece["object"], "text_completion");
  EXPECT_EQ(piece["choices"][0]["text"], "27");
  EXPECT_FALSE(piece["choices"][0].contains("delta"));
  const json last = json::parse(FinishChunk(completion, Finish(FinishReason::kStop)));
  EXPECT_EQ(last["choices"][0]["text"], "");
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  ExpectSpanserve(last["spanserve"], false);

  EXPECT_EQ(SseEvent("{\"a\":1}"), "data: {\"a\":1}\n\n");
  EXPECT_EQ(kSseDone, "data: [DONE]\n\n");
}

TEST(OpenAiResponse, TextCutInsideUtf8IsReplacedNotThrown) {
  std::string text = "ok \xe2\x82";  // the first two bytes of the euro sign
  const json piece = json::parse(TextChunk(Meta(Endpoint::kCompletions, false), text));
  EXPECT_EQ(piece["choices"][0]["text"], "ok \xef\xbf\xbd");
  const json body = json::parse(
      ResponseBody(Meta(Endpoint::kCompletions, false), "\xff", Finish(FinishReason::kEos)));
  EXPECT_EQ(body["choices"][0]["text"], "\xef\xbf\xbd");
}

TEST(OpenAiResponse, CompleteUtf8Prefix) {
  EXPECT_EQ(CompleteUtf8Prefix(""), 0u);
  EXPECT_EQ(CompleteUtf8Prefix("abc"), 3u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xe2\x82\xac"), 4u);  // a whole euro sign
  EXPECT_EQ(CompleteUtf8Prefix("a\xe2\x82"), 1u);      // two of its three bytes
  EXPECT_EQ(CompleteUtf8Prefix("a\xe2"), 1u);
  EXPECT_EQ(CompleteUtf8Prefix("\xf0\x9f\x98"), 0u);   // three of an emoji's four
  EXPECT_EQ(CompleteUtf8Prefix("\xf0\x9f\x98\x80"), 4u);
  EXPECT_EQ(CompleteUtf8Prefix("\xc3\xa9"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("x\xc3"), 1u);
  // Not UTF-8 at all: nothing to wait for.
  EXPECT_EQ(CompleteUtf8Prefix("\x80\x80\x80\x80\x80"), 5u);
  EXPECT_EQ(CompleteUtf8Prefix("\xe2" "a"), 2u);
}

TEST(OpenAiResponse, Models) {
  const json list = json::parse(ModelsBody("arith-small", 5));
  EXPECT_EQ(list["object"], "list");
  ASSERT_EQ(list["data"].size(), 1u);
  EXPECT_EQ(list["data"][0], json::parse(R"({"id": "arith-small", "object": "model",
                                             "created": 5, "owned_by": "spanserve"})"));
  EXPECT_EQ(json::parse(ModelBody("arith-small", 5)), list["data"][0]);
}

// What the fuzzer does, in small: bytes that are not a request give an error, never a throw or
// a crash.
TEST(OpenAiRobustness, ArbitraryBytesNeverThrow) {
  const std::string valid =
      R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
          "prompt": ["a"], "max_tokens": 3, "stop": ["x"], "seed": 5, "stream": true,
          "stream_options": {"include_usage": true}, "span_mode": "dense", "n": 1})";
  std::mt19937 rng(7);
  for (int i = 0; i < 4000; ++i) {
    std::string body = valid.substr(0, rng() % (valid.size() + 1));
    for (int flips = rng() % 4; flips > 0 && !body.empty(); --flips) {
      body[rng() % body.size()] = static_cast<char>(rng() % 256);
    }
    for (bool chat : {false, true}) {
      absl::StatusOr<ParsedRequest> parsed =
          chat ? ParseChatRequest(body, ChatFormat::kChatML) : ParseCompletionRequest(body);
      if (!parsed.ok()) {
        EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << body;
        ErrorBody(ErrorFor(parsed.status()));  // error messages quote the bytes: no throw
      }
    }
  }
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_FALSE(ParseCompletionRequest(deep).ok());
  EXPECT_FALSE(ParseCompletionRequest(R"({"prompt": "x", "stop": [)" + deep + "]}").ok());
  EXPECT_FALSE(ParseCompletionRequest(std::string("{\"prompt\": \"\xff\"}")).ok());
  EXPECT_FALSE(ParseCompletionRequest(std::string("{\"prompt\": \"a\0b\"}", 17)).ok());
}

}  // namespace
}  // namespace spanserve::openai
