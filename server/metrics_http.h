// The HTTP endpoint that serves GET /metrics (Prometheus text format) on its own port.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "absl/status/statusor.h"
#include "server/metrics.h"

namespace httplib {
class Server;
}

namespace spanserve {

class MetricsHttpServer {
 public:
  ~MetricsHttpServer();
  // Checks a request's Authorization header (empty, as it arrived); false answers 401.
  using Authorize = std::function<bool(std::string_view authorization_header)>;

  // Binds address:port (port 0: any free port) and serves on a thread of its own. Without
  // `authorize` anyone may scrape.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const metrics::Registry* registry, const std::string& address, int port,
      Authorize authorize = nullptr);
  int port() const { return port_; }
  void Stop();

 private:
  MetricsHttpServer() = default;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace spanserve
