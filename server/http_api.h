// The OpenAI-compatible HTTP API on its own port (server.http_port): POST /v1/completions and
// POST /v1/chat/completions (stream: true as server-sent events), GET /v1/models,
// GET /v1/models/{model}, GET /health. A request takes the gRPC service's path: its
// availability (503 while loading or draining), ToEngineRequest's defaults and checks, the same
// engine; server/openai_protocol.h turns bodies and events into JSON.
//
// cpp-httplib serves each connection on a thread of a fixed pool, and a generation holds its
// thread until it ends: the pool has max(16, scheduler.max_running + 8) threads. That many
// requests (and idle keep-alive connections, for up to 5 s) are served at once; further
// connections wait for a free thread before the engine sees them.
#pragma once

#include <functional>
#include <memory>
#include <string_view>
#include <thread>

#include "absl/status/statusor.h"
#include "server/service.h"

namespace httplib {
class Server;
}

namespace spanserve {

struct HttpApiOptions {
  // Authentication: called with the request's Authorization header ("" when absent) on every
  // route but /health, from several HTTP threads at once (it must be thread-safe). false
  // answers 401 {"error": {"type": "authentication_error", "code": "invalid_api_key"}}. Unset:
  // every request is let in.
  std::function<bool(std::string_view authorization_header)> authorize;
};

class HttpApi {
 public:
  // Binds the config's bind_address:http_port (http_port 0: any free port; main does not start
  // the API when the config says 0), as HTTPS when tls.cert_file is set (client certificates
  // required when tls.client_ca_file is), and serves on threads of its own.
  static absl::StatusOr<std::unique_ptr<HttpApi>> Start(SpanServeService* service,
                                                        HttpApiOptions options = {});
  ~HttpApi();
  int port() const { return port_; }
  // Stops listening and waits for the requests in flight: call it once the engine has shut
  // down (every generation has finished), before the engine goes away.
  void Stop();

  class Routes;  // the handlers (http_api.cc)

 private:
  HttpApi() = default;
  std::unique_ptr<Routes> routes_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace spanserve
