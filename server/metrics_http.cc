#include "server/metrics_http.h"

#include <httplib.h>

#include "absl/strings/str_cat.h"

namespace spanserve {

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const metrics::Registry* registry, const std::string& address, int port,
    Authorize authorize) {
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  server->http_ = std::make_unique<httplib::Server>();
  server->http_->new_task_queue = [] { return new httplib::ThreadPool(2); };
  server->http_->Get("/metrics", [registry, authorize = std::move(authorize)](
                                     const httplib::Request& req, httplib::Response& res) {
    if (authorize && !authorize(req.get_header_value("Authorization"))) {
      res.status = 401;
      res.set_header("WWW-Authenticate", "Bearer");
      res.set_content("missing or invalid API key\n", "text/plain");
      return;
    }
    res.set_content(registry->Serialize(), metrics::kContentType);
  });
  server->port_ = port == 0 ? server->http_->bind_to_any_port(address)
                            : (server->http_->bind_to_port(address, port) ? port : -1);
  if (server->port_ < 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics endpoint: cannot listen on ", address, ":", port));
  }
  server->thread_ = std::thread([http = server->http_.get()] { http->listen_after_bind(); });
  return server;
}

void MetricsHttpServer::Stop() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

}  // namespace spanserve
