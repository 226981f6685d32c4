#include "server/http_api.h"

#include <httplib.h>
#include <netdb.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <filesystem>
#include <mutex>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "server/log.h"
#include "server/openai_protocol.h"

namespace spanserve {
namespace {

using openai::ApiError;
using openai::Endpoint;

constexpr size_t kMaxBodyBytes = size_t{8} << 20;
// How often a waiting handler looks whether its client is still there.
constexpr auto kPollInterval = std::chrono::milliseconds(50);
// The metric code of a request whose client went away before the answer.
constexpr int kClientGone = 499;

// The events of one generation, from the engine thread (Push: a short lock, never a wait) to the
// HTTP thread that answers the request (Take).
class EventQueue {
 public:
  void Push(GenerationEvent&& event) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back(std::move(event));
    }
    ready_.notify_one();
  }
  // Every event that came, waiting up to `timeout` for the first; empty if none came.
  std::deque<GenerationEvent> Take(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    ready_.wait_for(lock, timeout, [this] { return !events_.empty(); });
    return std::exchange(events_, {});
  }

 private:
  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<GenerationEvent> events_;
};

// "host port" of one end of a socket; "" when fd is not a socket.
std::string SocketEnd(int fd, bool peer) {
  sockaddr_storage addr = {};
  socklen_t len = sizeof(addr);
  auto* a = reinterpret_cast<sockaddr*>(&addr);
  if ((peer ? getpeername(fd, a, &len) : getsockname(fd, a, &len)) != 0) return "";
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (getnameinfo(a, len, host, sizeof(host), port, sizeof(port),
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "";
  }
  return absl::StrCat(host, " ", port);
}

// The socket `req` came on, to see whether its client is still there: SSL's, or the socket whose
// two ends are the request's addresses (this cpp-httplib, 0.11, hands handlers no socket).
// -1 if none matches.
int ConnectionSocket(const httplib::Request& req) {
  if (req.ssl) return SSL_get_fd(req.ssl);
  const std::string local = absl::StrCat(req.local_addr, " ", req.local_port);
  const std::string remote = absl::StrCat(req.remote_addr, " ", req.remote_port);
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    const int fd = std::atoi(entry.path().filename().c_str());
    if (SocketEnd(fd, true) == remote && SocketEnd(fd, false) == local) return fd;
  }
  return -1;
}

// True once the client closed its end (or the connection broke).
bool ClientClosed(int fd) {
  if (fd < 0) return false;
  pollfd p = {fd, POLLRDHUP, 0};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

std::string ResponseId(Endpoint endpoint) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  const std::string prefix = endpoint == Endpoint::kChatCompletions ? "chatcmpl-" : "cmpl-";
  return absl::StrCat(prefix, absl::Hex(rng(), absl::kZeroPad16), absl::Hex(rng() >> 32,
                                                                            absl::kZeroPad8));
}

int64_t UnixSeconds() { return static_cast<int64_t>(std::time(nullptr)); }

const char* RpcName(Endpoint endpoint) {
  return endpoint == Endpoint::kChatCompletions ? "http_chat_completions" : "http_completions";
}

// The metric name of a route, nullptr for routes not counted (/health, unknown paths).
const char* RpcOfPath(const std::string& path) {
  if (path == "/v1/completions") return RpcName(Endpoint::kCompletions);
  if (path == "/v1/chat/completions") return RpcName(Endpoint::kChatCompletions);
  if (path == "/v1/models" || path.starts_with("/v1/models/")) return "http_models";
  return nullptr;
}

void SetJson(httplib::Response& res, int status, const std::string& body) {
  res.status = status;
  res.set_content(body, "application/json");
}

}  // namespace

class HttpApi::Routes {
 public:
  Routes(SpanServeService* service, HttpApiOptions options)
      : service_(service), options_(std::move(options)), started_(UnixSeconds()) {}

  void Install(httplib::Server& http) {
    http.Post("/v1/completions", Generation(Endpoint::kCompletions));
    http.Post("/v1/chat/completions", Generation(Endpoint::kChatCompletions));
    http.Get("/v1/models", Guarded([this](const httplib::Request& req, httplib::Response& res) {
      Models(req, res);
    }));
    http.Get("/v1/models/(.+)", Guarded([this](const httplib::Request& req,
                                               httplib::Response& res) { Models(req, res); }));
    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) { Health(res); });
    http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (res.body.empty()) LibraryError(req, res);
    });
    http.set_exception_handler(
        [this](const httplib::Request& req, httplib::Response& res, std::exception_ptr) {
          Fail(req, res, {500, "internal error", "server_error", "", ""});
        });
  }

 private:
  bool Authorized(const httplib::Request& req) const {
    return !options_.authorize || options_.authorize(req.get_header_value("Authorization"));
  }

  // A handler behind the authentication hook.
  httplib::Server::Handler Guarded(httplib::Server::Handler handler) {
    return [this, handler = std::move(handler)](const httplib::Request& req,
                                                httplib::Response& res) {
      if (!Authorized(req)) return Fail(req, res, Unauthorized());
      handler(req, res);
    };
  }

  // A generation route: reads the body itself (ReadBody), then goes the way of Guarded.
  httplib::Server::HandlerWithContentReader Generation(Endpoint endpoint) {
    return [this, endpoint](const httplib::Request& req, httplib::Response& res,
                            const httplib::ContentReader& content) {
      std::string body;
      if (std::optional<ApiError> error = ReadBody(req, res, content, &body)) {
        return Fail(req, res, *error);
      }
      if (!Authorized(req)) return Fail(req, res, Unauthorized());
      Generate(req, body, res, endpoint);
    };
  }

  // The request body, at most kMaxBodyBytes. cpp-httplib 0.11 holds a body to its limit only by
  // the Content-Length: a chunked body, or a gzip one once inflated, would grow without end.
  // Past the limit the rest is read and dropped, so that the connection stays in step.
  static std::optional<ApiError> ReadBody(const httplib::Request& req,
                                          const httplib::Response& res,
                                          const httplib::ContentReader& content,
                                          std::string* body) {
    // Neither header: the body is empty (RFC 9112 6.3), where cpp-httplib would read until
    // the client closes or its read times out.
    if (!req.has_header("Content-Length") && !req.has_header("Transfer-Encoding")) {
      return std::nullopt;
    }
    bool too_large = false;
    const bool read = content([&](const char* data, size_t size) {
      if (!too_large && body->size() + size > kMaxBodyBytes) {
        too_large = true;
        std::string().swap(*body);
      }
      if (!too_large) body->append(data, size);
      return true;
    });
    if (too_large || res.status == 413) return BodyTooLarge();
    if (!read) {
      return ApiError{res.status >= 400 ? res.status : 400, "the request body could not be read",
                      "invalid_request_error", "", ""};
    }
    return std::nullopt;
  }

  static ApiError BodyTooLarge() {
    return {413, absl::StrCat("the request body is larger than ", kMaxBodyBytes, " bytes"),
            "invalid_request_error", "", "request_too_large"};
  }

  static ApiError Unauthorized() {
    return openai::ErrorFor(absl::UnauthenticatedError("missing or invalid API key"));
  }

  void Count(const char* rpc, int status) const {
    if (rpc) service_->metrics()->CountRequest(rpc, std::to_string(status));
  }

  // Answers `error`, counts and logs it.
  void Fail(const httplib::Request& req, httplib::Response& res, const ApiError& error) const {
    SetJson(res, error.http_status, openai::ErrorBody(error));
    Count(RpcOfPath(req.path), error.http_status);
    LogFailure(RpcOfPath(req.path), error);
  }

  static void LogFailure(const char* rpc, const ApiError& error) {
    LogWarn("request_failed", {{"rpc", rpc ? rpc : "http"}, {"code", error.http_status},
                               {"message", error.message}});
  }

  // What cpp-httplib answers itself: unknown routes (401 first when a key is needed), a body
  // over the limit, a request it cannot parse.
  void LibraryError(const httplib::Request& req, httplib::Response& res) const {
    if (res.status == 404 || res.status == 405) {
      if (!Authorized(req)) return Fail(req, res, Unauthorized());
      return Fail(req, res, openai::ErrorFor(absl::NotFoundError(
                                absl::StrCat("no route ", req.method, " ", req.path))));
    }
    if (res.status == 413) return Fail(req, res, BodyTooLarge());
    Fail(req, res, {res.status, "the HTTP request could not be read", "invalid_request_error",
                    "", ""});
  }

  void Health(httplib::Response& res) const {
    const bool serving = service_->Availability().ok();
    const char* state = serving ? "serving" : service_->engine() ? "draining" : "loading";
    SetJson(res, serving ? 200 : 503, absl::StrCat("{\"status\": \"", state, "\"}"));
  }

  void Models(const httplib::Request& req, httplib::Response& res) const {
    if (grpc::Status status = service_->Availability(); !status.ok()) {
      return Fail(req, res, openai::ErrorFor(absl::UnavailableError(status.error_message())));
    }
    const std::string name = ModelName(service_->engine()->model());
    if (req.matches.size() > 1 && req.matches[1] != name) {
      return Fail(req, res, openai::ErrorFor(absl::NotFoundError(
                                absl::StrCat("model: '", req.matches[1].str(),
                                             "' is not served here; this server serves '",
                                             name, "'"))));
    }
    SetJson(res, 200, req.matches.size() > 1 ? openai::ModelBody(name, started_)
                                             : openai::ModelsBody(name, started_));
    Count("http_models", 200);
  }

  void Generate(const httplib::Request& req, const std::string& body, httplib::Response& res,
                Endpoint endpoint);

  SpanServeService* const service_;
  const HttpApiOptions options_;
  const int64_t started_;
};

namespace {

// One generation answering one HTTP request, from Submit to its last event. When dropped before
// the generation finished (the client went away, or the answer was never written), it cancels
// it: the engine frees the sequence's KV blocks at once.
class HttpGeneration {
 public:
  HttpGeneration(Engine* engine, ServerMetrics* metrics, openai::ResponseMeta meta,
                 bool include_usage, int socket)
      : engine_(engine), metrics_(metrics), meta_(std::move(meta)),
        include_usage_(include_usage), socket_(socket) {}
  ~HttpGeneration() {
    if (!finished_) engine_->Cancel(id_);
    if (!counted_) Count(kClientGone);
  }

  absl::Status Submit(GenerateRequest request) {
    absl::StatusOr<Engine::RequestId> id = engine_->Submit(
        std::move(request),
        [events = events_](GenerationEvent&& event) { events->Push(std::move(event)); });
    if (!id.ok()) {
      finished_ = counted_ = true;  // the caller answers the error
      return id.status();
    }
    id_ = *id;
    return absl::OkStatus();
  }

  // Non-streaming: the whole answer once the generation finished.
  void Respond(httplib::Response& res) {
    std::string text;
    std::optional<GenerationEvent> finish;
    while (!finish) {
      for (GenerationEvent& event : events_->Take(kPollInterval)) {
        text += event.text;
        if (event.finished) finish = std::move(event);
      }
      if (!finish && ClientClosed(socket_)) {
        ClientGone();  // its answer goes nowhere
        return;
      }
    }
    finished_ = true;
    if (std::optional<ApiError> error = ErrorOf(*finish)) {
      SetJson(res, error->http_status, openai::ErrorBody(*error));
      return Finish(error->http_status, &*error);
    }
    SetJson(res, 200, openai::ResponseBody(meta_, text, *finish));
    Finish(200, nullptr);
  }

  // Streaming: writes the events as they come (each batch of tokens one chunk), until the
  // generation finished or the client is gone. False when the client is gone.
  bool Stream(httplib::DataSink& sink) {
    auto write = [&sink](const std::string& event) {
      return sink.write(event.data(), event.size());
    };
    if (meta_.endpoint == Endpoint::kChatCompletions &&
        !write(openai::SseEvent(openai::RoleChunk(meta_)))) {
      return ClientGone();
    }
    std::string pending;  // text not sent yet: the tail of a UTF-8 sequence still coming
    while (true) {
      std::optional<GenerationEvent> finish;
      for (GenerationEvent& event : events_->Take(kPollInterval)) {
        pending += event.text;
        if (event.finished) finish = std::move(event);
      }
      const size_t ready = finish ? pending.size() : openai::CompleteUtf8Prefix(pending);
      if (ready > 0) {
        if (!write(openai::SseEvent(openai::TextChunk(meta_, pending.substr(0, ready))))) {
          return ClientGone();
        }
        pending.erase(0, ready);
      }
      if (finish) {
        finished_ = true;
        std::optional<ApiError> error = ErrorOf(*finish);
        // The status line went out as 200: an error comes as an event, as OpenAI's does.
        const bool written =
            error ? write(openai::SseEvent(openai::ErrorBody(*error)))
                  : write(openai::SseEvent(openai::FinishChunk(meta_, *finish))) &&
                        (!include_usage_ ||
                         write(openai::SseEvent(openai::UsageChunk(meta_, *finish))));
        if (!written || !write(std::string(openai::kSseDone))) return ClientGone();
        // Counted before the stream's last bytes go: a client that reads the count next sees it.
        Finish(error ? error->http_status : 200, error ? &*error : nullptr);
        sink.done();
        return true;
      }
      if (ClientClosed(socket_)) return ClientGone();
    }
  }

 private:
  // The error of a generation that did not end normally.
  std::optional<ApiError> ErrorOf(const GenerationEvent& finish) const {
    if (finish.finish_reason == FinishReason::kError) {
      return openai::ErrorFor(absl::InternalError("generation failed: " + finish.error));
    }
    if (finish.finish_reason == FinishReason::kCancelled) {  // not by the client: by the drain
      return openai::ErrorFor(
          absl::UnavailableError("the server shut down before the generation finished"));
    }
    return std::nullopt;
  }

  bool ClientGone() {
    if (!finished_) engine_->Cancel(id_);
    finished_ = true;
    Finish(kClientGone, nullptr);
    return false;
  }

  void Finish(int status, const ApiError* error) {
    Count(status);
    if (error) LogWarn("request_failed", {{"rpc", RpcName(meta_.endpoint)},
                                          {"code", status}, {"message", error->message}});
  }

  void Count(int status) {
    counted_ = true;
    metrics_->CountRequest(RpcName(meta_.endpoint), std::to_string(status));
  }

  Engine* const engine_;
  ServerMetrics* const metrics_;
  const openai::ResponseMeta meta_;
  const bool include_usage_;
  const int socket_;
  const std::shared_ptr<EventQueue> events_ = std::make_shared<EventQueue>();
  Engine::RequestId id_ = 0;
  bool finished_ = false;
  bool counted_ = false;
};

}  // namespace

void HttpApi::Routes::Generate(const httplib::Request& req, const std::string& body,
                               httplib::Response& res, Endpoint endpoint) {
  if (grpc::Status status = service_->Availability(); !status.ok()) {
    return Fail(req, res, openai::ErrorFor(absl::UnavailableError(status.error_message())));
  }
  Engine* engine = service_->engine();
  absl::StatusOr<openai::ParsedRequest> parsed =
      endpoint == Endpoint::kChatCompletions
          ? openai::ParseChatRequest(body, engine->model().span.chat_format)
          : openai::ParseCompletionRequest(body);
  if (!parsed.ok()) return Fail(req, res, openai::ErrorFor(parsed.status()));
  openai::ResponseMeta meta;
  meta.endpoint = endpoint;
  meta.model = ModelName(engine->model());
  if (!parsed->model.empty() && parsed->model != meta.model) {
    return Fail(req, res, openai::ErrorFor(absl::NotFoundError(
                              absl::StrCat("model: '", parsed->model, "' is not served here; ",
                                           "this server serves '", meta.model, "'"))));
  }
  absl::StatusOr<GenerateRequest> request =
      ToEngineRequest(parsed->proto, service_->config(), &meta.seed);
  if (!request.ok()) return Fail(req, res, openai::ErrorFor(request.status(), &*parsed));
  meta.id = ResponseId(endpoint);
  meta.created = UnixSeconds();
  meta.span_mode = request->span_mode;
  meta.return_spans = parsed->proto.return_spans();

  auto generation = std::make_shared<HttpGeneration>(
      engine, service_->metrics(), meta, parsed->include_usage, ConnectionSocket(req));
  if (absl::Status status = generation->Submit(*std::move(request)); !status.ok()) {
    return Fail(req, res, openai::ErrorFor(status, &*parsed));
  }
  if (!parsed->stream) return generation->Respond(res);
  res.set_header("Cache-Control", "no-cache");
  // cpp-httplib calls the provider once the headers are out, on this thread; if they cannot be
  // written it never does, and dropping `generation` cancels.
  res.set_chunked_content_provider(
      "text/event-stream",
      [generation](size_t, httplib::DataSink& sink) { return generation->Stream(sink); });
}

absl::StatusOr<std::unique_ptr<HttpApi>> HttpApi::Start(SpanServeService* service,
                                                        HttpApiOptions options) {
  const ServerConfig& config = service->config();
  // A client that goes away mid-write must not kill the server (OpenSSL writes with write(2)).
  signal(SIGPIPE, SIG_IGN);
  std::unique_ptr<HttpApi> api(new HttpApi());
  if (config.tls_cert_file.empty()) {
    api->http_ = std::make_unique<httplib::Server>();
  } else {
    auto https = std::make_unique<httplib::SSLServer>(
        config.tls_cert_file.c_str(), config.tls_key_file.c_str(),
        config.tls_client_ca_file.empty() ? nullptr : config.tls_client_ca_file.c_str());
    if (!https->is_valid()) {
      return absl::InvalidArgumentError(
          "HTTP API: cannot load tls.cert_file, tls.key_file or tls.client_ca_file");
    }
    api->http_ = std::move(https);
  }
  const int threads = std::max(16, config.max_running + 8);
  api->http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  api->http_->set_payload_max_length(kMaxBodyBytes);
  api->routes_ = std::make_unique<Routes>(service, std::move(options));
  api->routes_->Install(*api->http_);

  const std::string& address = config.bind_address;
  api->port_ = config.http_port == 0
                   ? api->http_->bind_to_any_port(address)
                   : (api->http_->bind_to_port(address, config.http_port) ? config.http_port
                                                                           : -1);
  if (api->port_ < 0) {
    return absl::UnavailableError(
        absl::StrCat("HTTP API: cannot listen on ", address, ":", config.http_port));
  }
  api->thread_ = std::thread([http = api->http_.get()] { http->listen_after_bind(); });
  // stop() does nothing before the loop runs: wait for it, so that Stop always ends it.
  for (int ms = 0; ms < 5000 && !api->http_->is_running(); ++ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return api;
}

void HttpApi::Stop() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

HttpApi::~HttpApi() { Stop(); }

}  // namespace spanserve
