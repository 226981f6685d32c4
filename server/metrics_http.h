// The HTTP endpoint that serves GET /metrics (Prometheus text format) on its own port.
#pragma once

#include <memory>
#include <string>
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
  // Binds address:port (port 0: any free port) and serves on a thread of its own.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const metrics::Registry* registry, const std::string& address, int port);
  int port() const { return port_; }
  void Stop();

 private:
  MetricsHttpServer() = default;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace spanserve
