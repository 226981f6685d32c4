// LoadModel: config.json, the weights (memory-mapped safetensors, or deterministic random ones in
// dummy mode), tokenizer.model and spanserve.json, each checked against the others.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/model.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"

namespace spanserve {
namespace {

std::string PathIn(const std::string& dir, const std::string& name) {
  return (std::filesystem::path(dir) / name).string();
}

// The tokenizer file's pieces with the config's BOS and EOS ids (config.json is the authority).
class ConfigIdsTokenizer : public Tokenizer {
 public:
  ConfigIdsTokenizer(std::unique_ptr<Tokenizer> inner, int32_t bos, int32_t eos)
      : inner_(std::move(inner)), bos_(bos), eos_(eos) {}
  std::vector<int32_t> Encode(const std::string& text) const override {
    return inner_->Encode(text);
  }
  std::vector<int32_t> EncodeWithSpecialTokens(const std::string& text) const override {
    return inner_->EncodeWithSpecialTokens(text);
  }
  std::string Decode(const std::vector<int32_t>& ids) const override { return inner_->Decode(ids); }
  std::string IdToPiece(int32_t id) const override { return inner_->IdToPiece(id); }
  int32_t PieceToId(const std::string& piece) const override { return inner_->PieceToId(piece); }
  int32_t vocab_size() const override { return inner_->vocab_size(); }
  int32_t bos_id() const override { return bos_; }
  int32_t eos_id() const override { return eos_; }

 private:
  std::unique_ptr<Tokenizer> inner_;
  int32_t bos_, eos_;
};

// tokenizer.json when the directory has one, else tokenizer.model (tokenizer_loader.cc).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& dir,
                                                         const ModelConfig& config) {
  std::string error, path;
  std::unique_ptr<Tokenizer> tokenizer = spanserve::LoadTokenizer(dir, &error, &path);
  if (path.empty()) {
    return absl::NotFoundError(
        absl::StrCat(PathIn(dir, "tokenizer.model"), ": file not found (nor tokenizer.json)"));
  }
  if (tokenizer == nullptr) return absl::InvalidArgumentError(error);
  if (tokenizer->vocab_size() > config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", tokenizer->vocab_size(),
                                                   " pieces, more than config.json's vocab_size ",
                                                   config.vocab_size));
  }
  return std::make_unique<ConfigIdsTokenizer>(std::move(tokenizer), config.bos_token_id,
                                              config.eos_token_ids.front());
}

absl::StatusOr<SpanConfig> LoadSpanConfig(const std::string& path, const Tokenizer& tokenizer) {
  absl::StatusOr<SpanConfig> span = ParseSpanConfig(path);
  if (!span.ok()) return span.status();
  for (auto [key, piece, id] :
       {std::tuple("anchor_token", span->anchor_token, &span->anchor_id),
        std::tuple("header_end_token", span->header_end_token, &span->header_end_id)}) {
    *id = tokenizer.PieceToId(piece);
    if (*id < 0) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": key '", key, "': \"", piece,
                                                     "\" is not a piece of tokenizer.model"));
    }
  }
  return span;
}

// generation_config.json, where present: the default sampling, and EOS ids beside config.json's
// (Hugging Face stops generation at the file's ids; LLaMA-3 lists two there).
absl::Status ApplyGenerationConfig(const std::string& path, Model* model) {
  absl::StatusOr<GenerationConfig> generation = ParseGenerationConfig(path);
  if (absl::IsNotFound(generation.status())) return absl::OkStatus();
  if (!generation.ok()) return generation.status();
  model->generation = generation->defaults;
  std::vector<int32_t>& eos = model->config.eos_token_ids;
  for (int32_t id : generation->eos_token_ids) {
    if (id >= model->config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": key 'eos_token_id' (", id,
                                                     ") is not below config.json's vocab_size (",
                                                     model->config.vocab_size, ")"));
    }
    if (std::find(eos.begin(), eos.end(), id) == eos.end()) eos.push_back(id);
  }
  return absl::OkStatus();
}

// One weight the config asks for: its Hugging Face name, shape, and where its view goes.
struct WeightSlot {
  std::string name;
  std::vector<int64_t> shape;
  TensorView* view;
  bool is_norm;
};

// Every weight of the model, layers in order; lm_head only when it is not tied.
std::vector<WeightSlot> WeightSlots(const ModelConfig& c, ModelWeights* w) {
  const int64_t D = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int64_t q = int64_t{c.num_heads} * c.head_dim, kv = int64_t{c.num_kv_heads} * c.head_dim;
  std::vector<WeightSlot> slots = {{"model.embed_tokens.weight", {V, D}, &w->embed, false}};
  w->layers.resize(c.num_layers);
  for (int32_t i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    LayerWeights& l = w->layers[i];
    slots.push_back({p + "input_layernorm.weight", {D}, &l.attn_norm, true});
    slots.push_back({p + "self_attn.q_proj.weight", {q, D}, &l.wq, false});
    slots.push_back({p + "self_attn.k_proj.weight", {kv, D}, &l.wk, false});
    slots.push_back({p + "self_attn.v_proj.weight", {kv, D}, &l.wv, false});
    if (c.qkv_bias) {
      slots.push_back({p + "self_attn.q_proj.bias", {q}, &l.bq, false});
      slots.push_back({p + "self_attn.k_proj.bias", {kv}, &l.bk, false});
      slots.push_back({p + "self_attn.v_proj.bias", {kv}, &l.bv, false});
    }
    slots.push_back({p + "self_attn.o_proj.weight", {D, q}, &l.wo, false});
    slots.push_back({p + "post_attention_layernorm.weight", {D}, &l.ffn_norm, true});
    slots.push_back({p + "mlp.gate_proj.weight", {I, D}, &l.w_gate, false});
    slots.push_back({p + "mlp.up_proj.weight", {I, D}, &l.w_up, false});
    slots.push_back({p + "mlp.down_proj.weight", {D, I}, &l.w_down, false});
  }
  slots.push_back({"model.norm.weight", {D}, &w->final_norm, true});
  if (!c.tie_word_embeddings) slots.push_back({"lm_head.weight", {V, D}, &w->lm_head, false});
  return slots;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// The checkpoint's files: model.safetensors alone, or the shards of model.safetensors.index.json.
class Checkpoint {
 public:
  absl::Status Open(const std::string& dir) {
    const std::string single = PathIn(dir, "model.safetensors");
    index_path_ = PathIn(dir, "model.safetensors.index.json");
    std::error_code ec;
    if (std::filesystem::exists(index_path_, ec) && !std::filesystem::exists(single, ec)) {
      return OpenShards(dir);
    }
    absl::StatusOr<SafetensorsFile> file = OpenSafetensors(single);
    if (absl::IsNotFound(file.status())) {
      return absl::NotFoundError(absl::StrCat(single, ": file not found (nor ", index_path_, ")"));
    }
    if (!file.ok()) return file.status();
    index_path_.clear();
    files_.push_back(*std::move(file));
    return absl::OkStatus();
  }

  // Finds a tensor and checks its shape; errors name the file that holds (or should hold) it.
  absl::StatusOr<TensorView> Get(const std::string& name, const std::vector<int64_t>& shape) const {
    const SafetensorsFile* file = &files_[0];
    if (!index_path_.empty()) {
      auto it = shard_of_.find(name);
      if (it == shard_of_.end()) {
        return absl::NotFoundError(
            absl::StrCat(index_path_, ": tensor '", name, "' is missing from weight_map"));
      }
      file = &files_[it->second];
    }
    auto it = file->tensors.find(name);
    if (it == file->tensors.end()) {
      return absl::NotFoundError(absl::StrCat(file->path, ": tensor '", name, "' is missing"));
    }
    if (it->second.shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(file->path, ": tensor '", name, "' has shape ",
                                                     ShapeText(it->second.shape),
                                                     ", config.json expects ", ShapeText(shape)));
    }
    return it->second;
  }

  void KeepMappings(ModelWeights* weights) const {
    for (const SafetensorsFile& file : files_) weights->storage.push_back(file.mapping);
  }

 private:
  // Opens each shard the index names, once.
  absl::Status OpenShards(const std::string& dir) {
    absl::StatusOr<nlohmann::json> index = ReadJsonFile(index_path_);
    if (!index.ok()) return index.status();
    auto map = index->find("weight_map");
    if (map == index->end() || !map->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path_, ": no weight_map object"));
    }
    std::map<std::string, size_t> file_index;
    for (const auto& item : map->items()) {
      const nlohmann::json& shard = item.value();
      if (!shard.is_string() || shard.get<std::string>().empty() ||
          shard.get<std::string>().find('/') != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(
            index_path_, ": weight_map entry for '", item.key(), "' is not a file name in ", dir));
      }
      auto [it, added] = file_index.emplace(shard.get<std::string>(), files_.size());
      if (added) {
        absl::StatusOr<SafetensorsFile> file = OpenSafetensors(PathIn(dir, it->first));
        if (!file.ok()) {
          return absl::Status(
              file.status().code(),
              absl::StrCat(file.status().message(), " (a shard named by ", index_path_, ")"));
        }
        files_.push_back(*std::move(file));
      }
      shard_of_[item.key()] = it->second;
    }
    if (files_.empty())
      return absl::InvalidArgumentError(absl::StrCat(index_path_, ": empty weight_map"));
    return absl::OkStatus();
  }

  std::string index_path_;  // empty for a single file
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> shard_of_;  // tensor -> files_ index
};

int64_t NumBytes(const TensorView& view) { return view.numel() * DTypeSize(view.dtype); }

// Points every slot into the mapped checkpoint. Pages are only asked for (readahead), so the
// progress is the share of tensors requested.
absl::Status MapWeights(const std::string& dir, const std::vector<WeightSlot>& slots,
                        const LoadOptions& options, ModelWeights* weights) {
  Checkpoint checkpoint;
  if (absl::Status status = checkpoint.Open(dir); !status.ok()) return status;
  int64_t total = 0;
  for (const WeightSlot& slot : slots) {
    absl::StatusOr<TensorView> view = checkpoint.Get(slot.name, slot.shape);
    if (absl::IsNotFound(view.status()) && slot.view == &weights->lm_head) {
      return absl::NotFoundError(
          absl::StrCat(view.status().message(), " (config.json has tie_word_embeddings false)"));
    }
    if (!view.ok()) return view.status();
    *slot.view = *std::move(view);
    total += NumBytes(*slot.view);
  }
  checkpoint.KeepMappings(weights);
  const uintptr_t page = sysconf(_SC_PAGESIZE);
  int64_t done = 0;
  for (const WeightSlot& slot : slots) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(slot.view->data) & ~(page - 1);
    const uintptr_t end = reinterpret_cast<uintptr_t>(slot.view->data) + NumBytes(*slot.view);
    madvise(reinterpret_cast<void*>(begin), end - begin, MADV_WILLNEED);
    done += NumBytes(*slot.view);
    if (options.progress) options.progress(done, total);
  }
  return absl::OkStatus();
}

// splitmix64's finalizer: a counter-based generator, so any thread can make any element.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Elements [begin, end) of one dummy tensor, stored through `convert`: offset + bound * u with u
// uniform in [-1, 1) from the counter (key + i), so element i depends only on (seed, slot, i).
template <typename T, typename Convert>
void FillAs(void* data, uint64_t key, float offset, float bound, int64_t begin, int64_t end,
            Convert convert) {
  T* out = static_cast<T*>(data);
  for (int64_t i = begin; i < end; ++i) {
    const float unit =
        static_cast<float>(static_cast<int32_t>(Mix(key + i) >> 40)) * (2.0f / 16777216.0f) - 1.0f;
    out[i] = convert(offset + unit * bound);
  }
}

// Norms are 1; matrices are uniform with standard deviation 1/sqrt(fan_in).
void FillDummy(const WeightSlot& slot, uint64_t key, int64_t begin, int64_t end) {
  const float offset = slot.is_norm ? 1.0f : 0.0f;
  const float bound = slot.is_norm ? 0.0f : std::sqrt(3.0f / static_cast<float>(slot.shape.back()));
  void* data = const_cast<void*>(slot.view->data);
  switch (slot.view->dtype) {
    case DType::kF32:
      return FillAs<float>(data, key, offset, bound, begin, end, [](float v) { return v; });
    case DType::kF16:
      return FillAs<uint16_t>(data, key, offset, bound, begin, end,
                              [](float v) { return FloatToHalf(v); });
    case DType::kBF16:
      return FillAs<uint16_t>(data, key, offset, bound, begin, end,
                              [](float v) { return FloatToBf16(v); });
  }
}

struct DummyChunk {
  size_t slot;
  int64_t begin, end;
};

// Fills the chunks on all cores; the calling thread reports progress while the workers run.
void FillChunks(const std::vector<WeightSlot>& slots, const std::vector<DummyChunk>& chunks,
                const LoadOptions& options, int64_t total) {
  const int64_t elem = DTypeSize(options.dummy_dtype);
  std::atomic<size_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable finished;
  const int num_threads = static_cast<int>(std::clamp<size_t>(
      std::thread::hardware_concurrency(), 1, std::max<size_t>(chunks.size(), 1)));
  int running = num_threads;
  std::vector<std::thread> threads;
  for (int t = 0; t < num_threads; ++t) {
    threads.emplace_back([&] {
      for (size_t c; (c = next.fetch_add(1)) < chunks.size();) {
        const DummyChunk& chunk = chunks[c];
        FillDummy(slots[chunk.slot], Mix(options.dummy_seed ^ Mix(chunk.slot)), chunk.begin,
                  chunk.end);
        done += (chunk.end - chunk.begin) * elem;
      }
      std::lock_guard<std::mutex> lock(mu);
      if (--running == 0) finished.notify_all();
    });
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    while (!finished.wait_for(lock, std::chrono::milliseconds(200), [&] { return running == 0; })) {
      if (options.progress) options.progress(done.load(), total);
    }
  }
  for (std::thread& thread : threads) thread.join();
  if (options.progress) options.progress(total, total);
}

// Random weights in one owned buffer, in chunks of 1M elements.
absl::Status MakeDummyWeights(const std::vector<WeightSlot>& slots, const LoadOptions& options,
                              ModelWeights* weights) {
  constexpr int64_t kAlign = 64, kChunk = 1 << 20;
  std::vector<int64_t> offsets;
  int64_t total = 0;
  for (const WeightSlot& slot : slots) {
    *slot.view = TensorView{slot.name, options.dummy_dtype, slot.shape, nullptr};
    offsets.push_back(total);
    total += (NumBytes(*slot.view) + kAlign - 1) / kAlign * kAlign;
  }
  // Anonymous memory with huge pages: first-touch page faults would otherwise cost as much as
  // the fill itself.
  void* memory = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("dummy weights: cannot allocate ", total, " bytes"));
  }
  madvise(memory, total, MADV_HUGEPAGE);
  weights->storage.emplace_back(memory,
                                [total](const void* p) { munmap(const_cast<void*>(p), total); });

  std::vector<DummyChunk> chunks;
  for (size_t s = 0; s < slots.size(); ++s) {
    slots[s].view->data = static_cast<uint8_t*>(memory) + offsets[s];
    const int64_t numel = slots[s].view->numel();
    for (int64_t b = 0; b < numel; b += kChunk)
      chunks.push_back({s, b, std::min(numel, b + kChunk)});
  }
  FillChunks(slots, chunks, options, total);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir, const LoadOptions& options) {
  auto model = std::make_unique<Model>();
  model->dir = dir;
  absl::StatusOr<ModelConfig> config = ParseModelConfig(PathIn(dir, "config.json"));
  if (!config.ok()) return config.status();
  model->config = *std::move(config);
  if (absl::Status status = ApplyGenerationConfig(PathIn(dir, "generation_config.json"), model.get());
      !status.ok()) {
    return status;
  }

  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      LoadTokenizer(dir, model->config);
  if (!tokenizer.ok()) return tokenizer.status();
  model->tokenizer = *std::move(tokenizer);

  absl::StatusOr<SpanConfig> span =
      LoadSpanConfig(PathIn(dir, "spanserve.json"), *model->tokenizer);
  if (absl::IsNotFound(span.status())) {
    model->has_span_config = false;  // a plain checkpoint: DENSE only
  } else if (!span.ok()) {
    return span.status();
  } else {
    model->span = *std::move(span);
  }

  ModelWeights& weights = model->weights;
  const std::vector<WeightSlot> slots = WeightSlots(model->config, &weights);
  absl::Status status = options.dummy ? MakeDummyWeights(slots, options, &weights)
                                      : MapWeights(dir, slots, options, &weights);
  if (!status.ok()) return status;
  if (model->config.tie_word_embeddings) weights.lm_head = weights.embed;
  return model;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& dir,
                                                 const LoadOptions& options) {
  try {
    return Load(dir, options);
  } catch (const std::exception& e) {  // a last guard: loading reports, never throws
    return absl::InternalError(absl::StrCat(dir, ": loading failed: ", e.what()));
  }
}

}  // namespace spanserve
