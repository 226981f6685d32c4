// spanserve-cli: streams a generation from a spanserve server to the terminal. The text goes to
// stdout as it arrives, one output segment a line (--joined: as the response's text has them);
// the summary (and with --show-spans the segments and what the spans saved) goes to stderr.
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <utility>

#include "server/segment_lines.h"
#include "spanserve/v1/spanserve.grpc.pb.h"

namespace {

namespace v1 = spanserve::v1;

struct Options {
  std::string address = "localhost:50051";
  std::string prompt;
  std::vector<std::string> segments;
  int max_tokens = 0;
  float temperature = 0;
  int top_k = 0;
  float top_p = 1;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  std::string span_mode;
  bool show_spans = false;
  bool joined = false;
  bool unary = false;
  bool ignore_eos = false;
  bool info = false;
  double timeout = 0;
  std::string api_key;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
};

const char* FinishName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_EOS: return "eos";
    case v1::FINISH_REASON_STOP: return "stop";
    default: return "unspecified";
  }
}

// The summary after the text: finish, usage, seed; with --show-spans segments and saving.
template <typename Response>
void PrintSummary(const Response& r, bool show_spans) {
  std::cerr << "\n[finish: " << FinishName(r.finish_reason())
            << ", prompt tokens: " << r.usage().prompt_tokens()
            << ", generated tokens: " << r.usage().generated_tokens() << ", seed: " << r.seed()
            << "]\n";
  if (!show_spans) return;
  std::cerr << "segments:\n";
  for (const v1::Segment& s : r.segments()) {
    std::cerr << "  " << s.id() << (s.in_prompt() ? " prompt" : " output");
    if (!s.in_prompt()) {
      std::cerr << " refs [";
      for (int i = 0; i < s.referenced_ids_size(); ++i) {
        std::cerr << (i ? "," : "") << s.referenced_ids(i);
      }
      std::cerr << "]" << (s.dense_fallback() ? " (malformed header: dense)" : "");
    }
    std::cerr << ": " << s.text() << "\n";
  }
  const v1::AttentionSaving& a = r.attention();
  std::cerr << "attention: read " << a.kv_blocks_read() << " of " << a.kv_blocks_dense()
            << " KV blocks dense attention would read (" << 100.0 * a.saved_fraction()
            << "% saved)\n";
}

void PrintInfo(const v1::ModelInfo& info) {
  std::cout << "model: " << info.name() << " (" << info.path() << ") on " << info.backend()
            << "\nlayers " << info.num_layers() << ", hidden " << info.hidden_size()
            << ", heads " << info.num_heads() << "/" << info.num_kv_heads() << ", vocab "
            << info.vocab_size() << ", context " << info.max_context()
            << "\nspan tokens " << info.anchor_token() << " " << info.header_end_token()
            << ", prompt segmentation " << info.prompt_segmentation()
            << "\nKV cache " << info.kv_blocks_total() << " blocks of " << info.kv_block_size()
            << " tokens; max_tokens limit " << info.max_tokens_limit() << "\n";
}

int Fail(const grpc::Status& status) {
  std::cerr << "\nspanserve-cli: " << status.error_code() << ": " << status.error_message()
            << "\n";
  return 1;
}

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream file(path);
  if (!file) return std::nullopt;
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

// Plaintext without --tls-ca; TLS with it, and a client certificate with --tls-cert/--tls-key.
std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials(const Options& o) {
  if (o.tls_ca.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  const std::pair<const std::string*, std::string*> files[] = {
      {&o.tls_ca, &options.pem_root_certs},
      {&o.tls_cert, &options.pem_cert_chain},
      {&o.tls_key, &options.pem_private_key}};
  for (const auto& [path, pem] : files) {
    if (path->empty()) continue;
    std::optional<std::string> text = ReadFile(*path);
    if (!text) {
      std::cerr << "spanserve-cli: cannot read " << *path << "\n";
      return nullptr;
    }
    *pem = std::move(*text);
  }
  return grpc::SslCredentials(options);
}

// Every call carries the API key, when there is one.
void Authorize(const Options& o, grpc::ClientContext* context) {
  if (!o.api_key.empty()) context->AddMetadata("authorization", "Bearer " + o.api_key);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"spanserve-cli: stream a generation from a spanserve server"};
  app.add_option("prompt", o.prompt, "the prompt");
  app.add_option("--address", o.address, "server host:port")->capture_default_str();
  app.add_option("--segment", o.segments, "a prompt segment of your own (repeat; no prompt)");
  CLI::Option* max_tokens = app.add_option("--max-tokens", o.max_tokens, "tokens to generate");
  CLI::Option* temperature = app.add_option("--temperature", o.temperature, "0: greedy");
  CLI::Option* top_k = app.add_option("--top-k", o.top_k, "0: no limit");
  CLI::Option* top_p = app.add_option("--top-p", o.top_p, "nucleus sampling, (0, 1]");
  CLI::Option* seed = app.add_option("--seed", o.seed, "sampler seed");
  app.add_option("--stop", o.stop, "stop sequence (repeat)");
  app.add_option("--span-mode", o.span_mode, "self_selected or dense")
      ->check(CLI::IsMember({"self_selected", "dense"}));
  app.add_flag("--show-spans", o.show_spans, "show span markup, the segments and the saving");
  app.add_flag("--joined", o.joined, "print the text as the response has it (no line a segment)");
  app.add_flag("--unary", o.unary, "one Generate call instead of a stream");
  app.add_flag("--ignore-eos", o.ignore_eos, "generate up to max tokens");
  app.add_flag("--info", o.info, "print the model's description and exit");
  app.add_option("--timeout", o.timeout, "deadline in seconds (0: none)");
  app.add_option("--api-key", o.api_key, "API key (sent as authorization: Bearer <key>)")
      ->envname("SPANSERVE_API_KEY");
  CLI::Option* tls_ca = app.add_option("--tls-ca", o.tls_ca, "CA certificate: connect with TLS");
  app.add_option("--tls-cert", o.tls_cert, "client certificate (mutual TLS)")
      ->needs(tls_ca);
  app.add_option("--tls-key", o.tls_key, "client certificate's key (mutual TLS)")
      ->needs(tls_ca);
  CLI11_PARSE(app, argc, argv);
  if (o.tls_cert.empty() != o.tls_key.empty()) {
    std::cerr << "spanserve-cli: --tls-cert and --tls-key go together\n";
    return 2;
  }

  std::shared_ptr<grpc::ChannelCredentials> credentials = ChannelCredentials(o);
  if (!credentials) return 2;
  auto channel = grpc::CreateChannel(o.address, credentials);
  auto stub = v1::SpanServe::NewStub(channel);
  grpc::ClientContext context;
  Authorize(o, &context);
  if (o.timeout > 0) {
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(static_cast<int64_t>(o.timeout * 1000)));
  }

  if (o.info) {
    v1::ModelInfo info;
    grpc::Status status = stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
    if (!status.ok()) return Fail(status);
    PrintInfo(info);
    return 0;
  }

  v1::GenerateRequest request;
  request.set_prompt(o.prompt);
  for (const std::string& s : o.segments) request.add_segments(s);
  if (max_tokens->count()) request.set_max_tokens(o.max_tokens);
  if (temperature->count()) request.set_temperature(o.temperature);
  if (top_k->count()) request.set_top_k(o.top_k);
  if (top_p->count()) request.set_top_p(o.top_p);
  if (seed->count()) request.set_seed(o.seed);
  for (const std::string& s : o.stop) request.add_stop(s);
  if (o.span_mode == "self_selected") request.set_span_mode(v1::SPAN_MODE_SELF_SELECTED);
  if (o.span_mode == "dense") request.set_span_mode(v1::SPAN_MODE_DENSE);
  request.set_return_spans(o.show_spans);
  request.set_ignore_eos(o.ignore_eos);
  // One segment a line: ask for the markup and turn each header into a line break.
  std::optional<spanserve::SegmentLines> lines;
  if (!o.show_spans && !o.joined) {
    grpc::ClientContext info_context;
    Authorize(o, &info_context);
    v1::ModelInfo info;
    grpc::Status status = stub->GetModelInfo(&info_context, v1::GetModelInfoRequest(), &info);
    if (!status.ok()) return Fail(status);
    lines.emplace(info.anchor_token(), info.header_end_token());
  }
  request.set_include_span_markup(o.show_spans || lines.has_value());
  auto print = [&](const std::string& text) {
    std::cout << (lines ? lines->Feed(text) : text) << std::flush;
  };

  if (o.unary) {
    v1::GenerateResponse response;
    grpc::Status status = stub->Generate(&context, request, &response);
    if (!status.ok()) return Fail(status);
    print(response.text());
    if (lines) std::cout << lines->Flush();
    PrintSummary(response, o.show_spans);
    return 0;
  }
  auto reader = stub->GenerateStream(&context, request);
  v1::GenerateStreamResponse message;
  v1::GenerateStreamResponse last;
  while (reader->Read(&message)) {
    print(message.text());
    if (message.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) last = message;
  }
  if (lines) std::cout << lines->Flush();
  grpc::Status status = reader->Finish();
  if (!status.ok()) return Fail(status);
  PrintSummary(last, o.show_spans);
  return 0;
}
