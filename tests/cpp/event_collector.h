// Test support: collects one engine request's events and waits for its finish.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "engine/core/engine.h"

namespace spanserve {

class Collector {
 public:
  EventSink Sink() {
    return [this](GenerationEvent&& event) {
      std::lock_guard<std::mutex> lock(mu_);
      if (event.token >= 0) tokens_.push_back(event.token);
      text_ += event.text;
      if (event.finished) {
        done_ = true;
        final_ = std::move(event);
        cv_.notify_all();
      }
    };
  }
  bool Wait(double seconds = 120) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return done_; });
  }
  std::vector<int32_t> tokens() const { std::lock_guard<std::mutex> l(mu_); return tokens_; }
  std::string text() const { std::lock_guard<std::mutex> l(mu_); return text_; }
  size_t num_tokens() const { std::lock_guard<std::mutex> l(mu_); return tokens_.size(); }
  // Read after Wait() returned true.
  const GenerationEvent& final_event() const { return final_; }
  FinishReason reason() const { std::lock_guard<std::mutex> l(mu_); return final_.finish_reason; }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int32_t> tokens_;
  std::string text_;
  bool done_ = false;
  GenerationEvent final_;
};

}  // namespace spanserve
