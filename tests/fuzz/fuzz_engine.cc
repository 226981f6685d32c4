#include "tests/fuzz/fuzz_engine.h"

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>

#include "tests/cpp/tiny_model.h"

namespace spanserve::fuzz {
namespace {

constexpr int32_t kNumBlocks = 24, kBlockSize = 16;

uint64_t Mix(uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

class NullBackend : public Backend {
 public:
  explicit NullBackend(const Model& model) : vocab_size_(model.config.vocab_size) {
    markup_ = {model.span.anchor_id, model.span.header_end_id, model.config.eos_token_ids[0]};
    for (const char* piece : {"0", "1", "2", ",", "*"}) {
      if (int32_t id = model.tokenizer->PieceToId(piece); id >= 0) markup_.push_back(id);
    }
  }
  std::string name() const override { return "null"; }
  int32_t num_kv_blocks() const override { return kNumBlocks; }
  int32_t block_size() const override { return kBlockSize; }
  int32_t vocab_size() const override { return vocab_size_; }

  absl::Status Step(const StepBatch& batch, StepOutput* out) override {
    const absl::Status valid = ValidateStepBatch(batch, kNumBlocks, kBlockSize, vocab_size_);
    if (!valid.ok()) std::fprintf(stderr, "%s\n", std::string(valid.message()).c_str());
    Check(valid.ok(), "the engine built an invalid step batch");
    out->tokens.assign(batch.seqs.size(), -1);
    for (size_t i = 0; i < batch.seqs.size(); ++i) {
      const StepSequence& seq = batch.seqs[i];
      if (!seq.sample) continue;
      const uint64_t h = Mix(seq.sampling.seed ^ Mix(seq.sample_index + 1));
      out->tokens[i] = seq.forced_token >= 0 ? seq.forced_token
                       : h & 1              ? markup_[(h >> 1) % markup_.size()]
                                            : static_cast<int32_t>((h >> 1) % vocab_size_);
    }
    return absl::OkStatus();
  }

 private:
  int32_t vocab_size_;
  std::vector<int32_t> markup_;  // half the answers: headers, references and EOS turn up
};

FuzzEngine* MakeEngine() {
  TinyModelSpec spec;
  spec.max_positions = 512;
  spec.segmentation = "sentences";
  spec.max_header_tokens = 4;
  const std::string dir = WriteTinyModelDir(spec, MakeTempDir("fuzz_engine"));
  absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(dir);
  std::filesystem::remove_all(dir);  // the weights stay mapped
  if (!model.ok()) std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
  Check(model.ok(), "the tiny model does not load");
  auto* fuzz = new FuzzEngine;
  fuzz->config.max_tokens_limit = 64;
  std::shared_ptr<const Model> shared = std::move(*model);
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      CreateEngine(shared, std::make_unique<NullBackend>(*shared), ToEngineConfig(fuzz->config));
  Check(engine.ok(), "no engine");
  fuzz->engine = std::move(*engine);
  return fuzz;
}

}  // namespace

FuzzEngine& SharedEngine() {
  static FuzzEngine* fuzz = MakeEngine();
  return *fuzz;
}

Generation Run(GenerateRequest request, bool cancel) {
  Generation out;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  EventSink sink = [&](GenerationEvent&& event) {
    std::lock_guard<std::mutex> lock(mu);
    out.text += event.text;
    if (!event.finished) return;
    out.finish = std::move(event);
    done = true;
    cv.notify_all();
  };
  Engine& engine = *SharedEngine().engine;
  absl::StatusOr<Engine::RequestId> id = engine.Submit(std::move(request), std::move(sink));
  if (!id.ok()) {
    Check(id.status().code() == absl::StatusCode::kInvalidArgument,
          "a refusal other than a field's fault");
    out.refused = id.status();
    return out;
  }
  out.submitted = true;
  if (cancel) engine.Cancel(*id);
  std::unique_lock<std::mutex> lock(mu);
  Check(cv.wait_for(lock, std::chrono::seconds(20), [&] { return done; }),
        "a request that never finished");
  return out;
}

}  // namespace spanserve::fuzz
