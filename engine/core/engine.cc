#include "engine/core/engine.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "engine/core/attention_plan.h"
#include "engine/core/kv_block_manager.h"
#include "engine/core/scheduler.h"
#include "engine/core/sequence.h"
#include "engine/core/span_rules.h"

namespace spanserve {
namespace {

double SecondsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

class EngineImpl : public Engine {
 public:
  EngineImpl(std::shared_ptr<const Model> model, std::unique_ptr<Backend> backend,
             EngineConfig config, EngineObserver* observer)
      : model_(std::move(model)),
        backend_(std::move(backend)),
        config_(config),
        observer_(observer ? observer : &null_observer_),
        vocab_(SpanVocab::FromModel(*model_)),
        blocks_(backend_->num_kv_blocks(), backend_->block_size()),
        scheduler_({config.max_running, config.max_batched_tokens,
                    backend_->num_kv_blocks() / 100, config.prefix_caching},
                   &blocks_) {
    thread_ = std::thread([this] { Loop(); });
  }

  ~EngineImpl() override { Shutdown(0); }

  absl::StatusOr<RequestId> Submit(GenerateRequest request, EventSink sink) override;
  void Cancel(RequestId id) override;
  void Shutdown(double grace_seconds) override;
  EngineStats Stats() const override;
  void DropPrefixCache() override;
  const Model& model() const override { return *model_; }
  const EngineConfig& config() const override { return config_; }

 private:
  absl::Status Validate(const GenerateRequest& request) const;
  // Fills what the client left out from the model's files; refuses spans a plain model lacks.
  absl::Status ApplyModelDefaults(GenerateRequest* request) const;
  std::vector<const std::string*> ReservedSpanTokens() const;
  absl::StatusOr<std::vector<int32_t>> EncodeRequestPrompt(const GenerateRequest& request) const;
  absl::Status CheckLengths(const GenerateRequest& request, int32_t prompt_len) const;

  void Loop();
  bool TakeInbox(std::unique_lock<std::mutex>& lock);
  void BuildBatch(const Schedule& schedule, StepStats* stats);
  void ApplyStep(const Schedule& schedule);
  void AppendToken(Sequence* seq, int32_t token);
  void Finish(Sequence* seq, FinishReason reason, GenerationEvent event = {},
              std::string error = "");
  std::vector<SegmentReport> SegmentReports(const Sequence& seq) const;
  bool IsEos(int32_t token) const;
  void PublishCounts();

  std::shared_ptr<const Model> model_;
  std::unique_ptr<Backend> backend_;
  const EngineConfig config_;
  EngineObserver null_observer_;
  EngineObserver* observer_;
  const SpanVocab vocab_;

  // Engine thread only.
  KvBlockManager blocks_;
  Scheduler scheduler_;
  std::unordered_map<RequestId, std::unique_ptr<Sequence>> sequences_;
  StepBatch batch_;
  StepOutput output_;
  std::vector<TokenRange> ranges_;

  // Shared with callers, under mu_.
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::vector<std::unique_ptr<Sequence>> inbox_;
  std::vector<RequestId> cancels_;
  bool draining_ = false;
  int64_t drops_asked_ = 0;   // DropPrefixCache calls, and those the engine thread served
  int64_t drops_done_ = 0;
  bool loop_stopped_ = false;
  std::condition_variable dropped_;
  Clock::time_point drain_deadline_;
  RequestId next_id_ = 1;

  std::atomic<int32_t> num_running_{0};
  std::atomic<int32_t> num_waiting_{0};
  std::atomic<int64_t> preemptions_{0};
  std::atomic<int64_t> steps_{0};
  std::thread thread_;
};

// ---- Submission (caller threads) ----

absl::Status EngineImpl::Validate(const GenerateRequest& r) const {
  const bool has_ids = !r.prompt_token_ids.empty();
  if (r.prompt.empty() && r.segments.empty() && !has_ids) {
    return absl::InvalidArgumentError("prompt: must not be empty");
  }
  if (!r.prompt.empty() + !r.segments.empty() + has_ids > 1) {
    return absl::InvalidArgumentError("prompt: give one of prompt, segments or token ids");
  }
  for (size_t i = 0; i < r.segments.size(); ++i) {
    if (r.segments[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("segments[", i, "]: must not be empty"));
    }
  }
  for (const std::string* reserved : ReservedSpanTokens()) {
    bool found = r.prompt.find(*reserved) != std::string::npos;
    for (const std::string& s : r.segments) found |= s.find(*reserved) != std::string::npos;
    if (found) {
      return absl::InvalidArgumentError(
          absl::StrCat(r.segments.empty() ? "prompt" : "segments",
                       ": contains the reserved span token ", *reserved));
    }
  }
  const int32_t vocab = model_->config.vocab_size;
  auto out_of_vocab = [vocab](int32_t id) { return id < 0 || id >= vocab; };
  if (std::any_of(r.prompt_token_ids.begin(), r.prompt_token_ids.end(), out_of_vocab)) {
    return absl::InvalidArgumentError("prompt_token_ids: token id outside the vocabulary");
  }
  if (std::any_of(r.forced_output.begin(), r.forced_output.end(), out_of_vocab)) {
    return absl::InvalidArgumentError("forced_output: token id outside the vocabulary");
  }
  if (r.max_tokens < 1 || r.max_tokens > config_.max_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens: must be between 1 and ",
                                                   config_.max_tokens_limit, ", not ",
                                                   r.max_tokens));
  }
  const SamplingParams& s = r.sampling;
  if (!std::isfinite(s.temperature) || s.temperature < 0) {
    return absl::InvalidArgumentError("temperature: must be a finite number >= 0");
  }
  if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) {
    return absl::InvalidArgumentError("top_p: must be in (0, 1]");
  }
  if (s.top_k < 0) return absl::InvalidArgumentError("top_k: must be >= 0 (0 means no limit)");
  if (static_cast<int32_t>(r.stop.size()) > config_.max_stop_sequences) {
    return absl::InvalidArgumentError(
        absl::StrCat("stop: at most ", config_.max_stop_sequences, " sequences"));
  }
  for (size_t i = 0; i < r.stop.size(); ++i) {
    if (r.stop[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("stop[", i, "]: must not be empty"));
    }
    if (static_cast<int32_t>(r.stop[i].size()) > config_.max_stop_length) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stop[", i, "]: longer than ", config_.max_stop_length, " bytes"));
    }
  }
  if (r.span_mode != SpanMode::kSelfSelected && r.span_mode != SpanMode::kDense) {
    return absl::InvalidArgumentError("span_mode: unknown span mode");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> EngineImpl::EncodeRequestPrompt(
    const GenerateRequest& r) const {
  if (!r.prompt_token_ids.empty()) return r.prompt_token_ids;
  std::vector<std::string> texts = r.segments;
  if (texts.empty()) {
    const Segmentation rule = model_->span.prompt_segmentation == Segmentation::kClient
                                  ? Segmentation::kWhole
                                  : model_->span.prompt_segmentation;
    texts = SegmentPromptText(r.prompt, rule);
    if (texts.empty()) return absl::InvalidArgumentError("prompt: has no text");
  }
  return EncodePrompt(*model_->tokenizer, model_->span.anchor_id, texts);
}

absl::Status EngineImpl::CheckLengths(const GenerateRequest& r, int32_t prompt_len) const {
  const int32_t context = model_->config.max_position_embeddings;
  if (prompt_len >= context) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", prompt_len,
                                                   " tokens, longer than the model's context of ",
                                                   context));
  }
  // A prompt that alone leaves no room in the whole pool: named as such, whatever max_tokens
  // (a default one is cut to that room, which is then none).
  const int64_t capacity = int64_t{blocks_.num_total()} * blocks_.block_size();
  if (prompt_len >= capacity) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt: ", prompt_len, " tokens leave no room to generate in the KV cache of ", capacity,
        " tokens (", blocks_.num_total(), " blocks of ", blocks_.block_size(), ")"));
  }
  if (prompt_len + r.max_tokens > context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens: the prompt (", prompt_len, " tokens) plus max_tokens (", r.max_tokens,
        ") exceed the model's context of ", context));
  }
  if (prompt_len + r.max_tokens > capacity) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens: the prompt (", prompt_len, " tokens) plus max_tokens (", r.max_tokens,
        ") exceed the KV cache of ", capacity, " tokens"));
  }
  return absl::OkStatus();
}

std::vector<const std::string*> EngineImpl::ReservedSpanTokens() const {
  if (!model_->has_span_config) return {};  // a plain model's text has no span markup
  return {&model_->span.anchor_token, &model_->span.header_end_token};
}

absl::Status EngineImpl::ApplyModelDefaults(GenerateRequest* r) const {
  const GenerationDefaults& g = model_->generation;
  if (r->temperature_is_default && g.temperature) r->sampling.temperature = *g.temperature;
  if (r->top_p_is_default && g.top_p) r->sampling.top_p = *g.top_p;
  if (r->top_k_is_default && g.top_k) r->sampling.top_k = *g.top_k;
  if (model_->has_span_config) return absl::OkStatus();
  if (r->span_mode == SpanMode::kSelfSelected && !r->span_mode_is_default) {
    return absl::FailedPreconditionError(absl::StrCat(
        "span_mode: SELF_SELECTED needs the model's span config (spanserve.json), which ",
        model_->dir, " has not: ask for DENSE or leave span_mode unset"));
  }
  r->span_mode = SpanMode::kDense;
  return absl::OkStatus();
}

absl::StatusOr<Engine::RequestId> EngineImpl::Submit(GenerateRequest request, EventSink sink) {
  if (absl::Status status = ApplyModelDefaults(&request); !status.ok()) return status;
  if (absl::Status status = Validate(request); !status.ok()) return status;
  absl::StatusOr<std::vector<int32_t>> prompt = EncodeRequestPrompt(request);
  if (!prompt.ok()) return prompt.status();
  if (request.max_tokens_is_default) {
    // The room the prompt leaves in the context and in the whole KV pool.
    const int64_t capacity = int64_t{blocks_.num_total()} * blocks_.block_size();
    const int64_t limit = std::min<int64_t>(model_->config.max_position_embeddings, capacity);
    const int64_t room = limit - static_cast<int64_t>(prompt->size());
    request.max_tokens = static_cast<int32_t>(std::max<int64_t>(1, std::min<int64_t>(request.max_tokens, room)));
  }
  if (absl::Status status = CheckLengths(request, prompt->size()); !status.ok()) return status;

  std::unique_lock<std::mutex> lock(mu_);
  if (draining_) return absl::UnavailableError("the server is shutting down");
  if (num_waiting_.load() + static_cast<int32_t>(inbox_.size()) >= config_.max_waiting) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the waiting queue is full (", config_.max_waiting, " requests)"));
  }
  const RequestId id = next_id_++;
  inbox_.push_back(std::make_unique<Sequence>(id, std::move(request), std::move(sink),
                                              std::move(*prompt), &vocab_,
                                              model_->tokenizer.get()));
  lock.unlock();
  wake_.notify_one();
  return id;
}

void EngineImpl::Cancel(RequestId id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancels_.push_back(id);
  }
  wake_.notify_one();
}

void EngineImpl::Shutdown(double grace_seconds) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!draining_) {
      draining_ = true;
      drain_deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(grace_seconds));
    }
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

EngineStats EngineImpl::Stats() const {
  EngineStats stats;
  stats.running = num_running_.load();
  stats.waiting = num_waiting_.load();
  stats.kv_blocks_total = blocks_.num_total();
  stats.kv_blocks_used = blocks_.num_used();
  stats.preemptions = preemptions_.load();
  stats.steps = steps_.load();
  stats.kv_blocks_cached = blocks_.num_evictable();
  return stats;
}

void EngineImpl::DropPrefixCache() {
  std::unique_lock<std::mutex> lock(mu_);
  const int64_t ticket = ++drops_asked_;
  wake_.notify_one();
  dropped_.wait(lock, [&] { return drops_done_ >= ticket || loop_stopped_; });
  if (drops_done_ < ticket) blocks_.DropCache();  // the loop has ended: no other user
}

// ---- The engine loop ----

// Moves new requests to the scheduler and applies cancels. Returns false when the loop
// should end (drained). Waits while there is nothing to do.
bool EngineImpl::TakeInbox(std::unique_lock<std::mutex>& lock) {
  while (true) {
    std::vector<std::unique_ptr<Sequence>> arrived = std::move(inbox_);
    std::vector<RequestId> cancels = std::move(cancels_);
    inbox_.clear();
    cancels_.clear();
    const bool draining = draining_;
    const int64_t drops = drops_asked_;
    const bool past_deadline = draining && Clock::now() >= drain_deadline_;
    lock.unlock();

    for (auto& seq : arrived) {
      scheduler_.AddWaiting(seq.get());
      sequences_[seq->id] = std::move(seq);
    }
    for (RequestId id : cancels) {
      if (auto it = sequences_.find(id); it != sequences_.end()) {
        Finish(it->second.get(), FinishReason::kCancelled);
      }
    }
    if (past_deadline) {
      while (!sequences_.empty()) Finish(sequences_.begin()->second.get(), FinishReason::kCancelled);
    }
    PublishCounts();
    if (drops > drops_done_) blocks_.DropCache();

    lock.lock();
    if (drops > drops_done_) {
      drops_done_ = drops;
      dropped_.notify_all();
    }
    if (!scheduler_.idle()) return true;
    if (draining_ && inbox_.empty()) return false;
    if (inbox_.empty() && cancels_.empty() && drops_asked_ == drops_done_) {
      if (draining_) {
        wake_.wait_until(lock, drain_deadline_);
      } else {
        wake_.wait(lock);
      }
    }
  }
}

void EngineImpl::Loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!TakeInbox(lock)) break;
    }
    const Clock::time_point schedule_start = Clock::now();
    const Schedule schedule = scheduler_.Next();
    const Clock::time_point build_start = Clock::now();
    if (schedule.num_preempted > 0) {
      preemptions_ += schedule.num_preempted;
      for (int i = 0; i < schedule.num_preempted; ++i) observer_->OnPreemption();
    }
    if (schedule.prefix_query_tokens > 0) {
      observer_->OnPrefixCacheQuery(schedule.prefix_query_tokens, schedule.prefix_hit_tokens);
    }
    if (schedule.empty()) continue;

    StepStats stats;
    stats.schedule_seconds = SecondsBetween(schedule_start, build_start);
    BuildBatch(schedule, &stats);
    const Clock::time_point start = Clock::now();
    stats.build_seconds = SecondsBetween(build_start, start);
    const absl::Status status = backend_->Step(batch_, &output_);
    const Clock::time_point stepped = Clock::now();
    stats.seconds = SecondsBetween(start, stepped);
    ++steps_;
    if (status.ok()) {
      ApplyStep(schedule);
    } else {
      for (const ScheduledWork& work : schedule.work) {
        Finish(work.seq, FinishReason::kError, {}, std::string(status.message()));
      }
    }
    stats.emit_seconds = SecondsBetween(stepped, Clock::now());
    observer_->OnStep(stats);
    PublishCounts();
  }
  PublishCounts();
  std::lock_guard<std::mutex> lock(mu_);
  loop_stopped_ = true;
  dropped_.notify_all();
}

void EngineImpl::PublishCounts() {
  num_running_ = scheduler_.num_running();
  num_waiting_ = scheduler_.num_waiting();
}

void EngineImpl::BuildBatch(const Schedule& schedule, StepStats* stats) {
  batch_.Clear();
  const int32_t block_size = blocks_.block_size();
  for (const ScheduledWork& work : schedule.work) {
    Sequence* seq = work.seq;
    StepSequence step_seq;
    step_seq.row_begin = batch_.num_rows();
    step_seq.num_rows = work.num_rows;
    step_seq.table_begin = static_cast<int32_t>(batch_.block_tables.size());
    step_seq.num_blocks = static_cast<int32_t>(seq->block_table.size());
    batch_.block_tables.insert(batch_.block_tables.end(), seq->block_table.begin(),
                               seq->block_table.end());
    const int32_t end = seq->num_computed + work.num_rows;
    step_seq.sample = end == seq->num_tokens();
    step_seq.sampling = seq->request.sampling;
    step_seq.sample_index = seq->num_output();
    if (seq->num_output() < static_cast<int32_t>(seq->request.forced_output.size())) {
      step_seq.forced_token = seq->request.forced_output[seq->num_output()];
    }
    for (int32_t pos = seq->num_computed; pos < end; ++pos) {
      AttentionRow row;
      row.seq = static_cast<int32_t>(batch_.seqs.size());
      PlanAttentionRow(seq->tracker, pos, work.num_rows > 1, model_->config.sliding_window,
                       seq->block_table, block_size, &ranges_, &batch_.chunks, &row);
      batch_.token_ids.push_back(seq->tokens[pos]);
      batch_.positions.push_back(pos);
      batch_.rows.push_back(row);
    }
    if (step_seq.sample) {
      // The row that produces a new token: count what it reads against dense attention.
      const int32_t pos = end - 1;
      const AttentionRow& row = batch_.rows.back();
      const int32_t dense = DenseBlocks(pos, block_size);
      int32_t read = dense;
      double attended = pos + 1;
      if (!row.causal) {
        std::span<const KvChunk> chunks(batch_.chunks.data() + row.chunk_begin,
                                        row.chunk_end - row.chunk_begin);
        read = CountDistinctBlocks(chunks);
        attended = 0;
        for (const KvChunk& c : chunks) attended += c.end - c.begin;
      }
      seq->kv_blocks_read += read;
      seq->kv_blocks_dense += dense;
      seq->attended_tokens += static_cast<int64_t>(attended);
      seq->context_tokens += pos + 1;
      stats->kv_blocks_read += read;
      stats->kv_blocks_dense += dense;
      stats->densities.push_back(attended / (pos + 1));
    }
    batch_.seqs.push_back(step_seq);
  }
  batch_.logits_mode = LogitsMode::kNone;
  stats->num_seqs = static_cast<int32_t>(batch_.seqs.size());
  stats->num_rows = batch_.num_rows();
}

void EngineImpl::ApplyStep(const Schedule& schedule) {
  for (size_t i = 0; i < schedule.work.size(); ++i) {
    Sequence* seq = schedule.work[i].seq;
    seq->num_computed += schedule.work[i].num_rows;
    scheduler_.CacheComputedBlocks(seq);
    if (batch_.seqs[i].sample) AppendToken(seq, output_.tokens[i]);
  }
}

bool EngineImpl::IsEos(int32_t token) const {
  const std::vector<int32_t>& eos = model_->config.eos_token_ids;
  return std::find(eos.begin(), eos.end(), token) != eos.end();
}

void EngineImpl::AppendToken(Sequence* seq, int32_t token) {
  const Clock::time_point now = Clock::now();
  if (seq->time_to_first_token < 0) {
    seq->time_to_first_token = SecondsBetween(seq->arrival, now);
  } else {
    observer_->OnInterTokenLatency(SecondsBetween(seq->last_token_time, now));
  }
  seq->last_token_time = now;
  seq->tokens.push_back(token);
  const AppendResult appended = seq->tracker.Append(token);
  if (appended.found_malformed) observer_->OnHeaderFallback();

  GenerationEvent event;
  event.token = token;
  event.segment = static_cast<int32_t>(seq->tracker.segments().size()) - 1;
  event.segment_opened = appended.role == TokenRole::kAnchor;
  const bool eos = !seq->request.ignore_eos && IsEos(token);
  const bool visible = !eos && (seq->request.include_span_markup ||
                                appended.role == TokenRole::kContent ||
                                appended.role == TokenRole::kSink);
  bool stopped = false;
  if (visible) event.text = seq->text.Add(token, &stopped);

  FinishReason reason = FinishReason::kNone;
  const int32_t forced = static_cast<int32_t>(seq->request.forced_output.size());
  if (eos) {
    reason = FinishReason::kEos;
  } else if (stopped) {
    reason = FinishReason::kStop;
  } else if (seq->num_output() >= seq->request.max_tokens ||
             (forced > 0 && seq->num_output() >= forced)) {
    reason = FinishReason::kLength;
  }
  if (reason == FinishReason::kNone) {
    seq->sink(std::move(event));
  } else {
    Finish(seq, reason, std::move(event));
  }
}

std::vector<SegmentReport> EngineImpl::SegmentReports(const Sequence& seq) const {
  std::vector<SegmentReport> reports;
  const std::vector<SegmentInfo>& segments = seq.tracker.segments();
  for (size_t s = 0; s < segments.size(); ++s) {
    const int32_t end = s + 1 < segments.size() ? segments[s + 1].start : seq.num_tokens();
    std::vector<int32_t> content;
    for (int32_t pos = segments[s].start; pos < end; ++pos) {
      if (seq.tracker.RoleAt(pos) == TokenRole::kContent && !IsEos(seq.tokens[pos])) {
        content.push_back(seq.tokens[pos]);
      }
    }
    SegmentReport report;
    report.id = static_cast<int32_t>(s);
    report.refs = segments[s].refs;
    report.text = model_->tokenizer->Decode(content);
    report.in_prompt = segments[s].in_prompt;
    report.dense_fallback = segments[s].malformed;
    reports.push_back(std::move(report));
  }
  return reports;
}

// Sends the last event of a request and forgets it. `event` may carry its last token.
void EngineImpl::Finish(Sequence* seq, FinishReason reason, GenerationEvent event,
                        std::string error) {
  if (reason != FinishReason::kStop) event.text += seq->text.Flush();
  event.finished = true;
  event.finish_reason = reason;
  event.error = std::move(error);
  event.prompt_tokens = seq->prompt_len;
  event.generated_tokens = seq->num_output();
  event.kv_blocks_read = seq->kv_blocks_read;
  event.kv_blocks_dense = seq->kv_blocks_dense;
  event.attended_tokens = seq->attended_tokens;
  event.context_tokens = seq->context_tokens;
  if (seq->request.return_spans) event.segments = SegmentReports(*seq);

  RequestStats stats;
  stats.finish_reason = reason;
  stats.prompt_tokens = seq->prompt_len;
  stats.generated_tokens = seq->num_output();
  stats.time_to_first_token = seq->time_to_first_token;
  stats.end_to_end = SecondsBetween(seq->arrival, Clock::now());

  // Free the blocks and count the queues before the caller hears of the finish, so that
  // what it reads next (metrics, stats) already shows the request gone.
  scheduler_.Remove(seq);
  PublishCounts();
  observer_->OnRequestFinished(stats);
  seq->sink(std::move(event));
  sequences_.erase(seq->id);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> CreateEngine(std::shared_ptr<const Model> model,
                                                     std::unique_ptr<Backend> backend,
                                                     EngineConfig config,
                                                     EngineObserver* observer) {
  if (!model || !backend) return absl::InvalidArgumentError("engine: model and backend needed");
  if (model->has_span_config && (model->span.anchor_id < 0 || model->span.header_end_id < 0)) {
    return absl::FailedPreconditionError("engine: the model's span tokens are not resolved");
  }
  if (backend->num_kv_blocks() < 1) {
    return absl::FailedPreconditionError("engine: the KV cache has no blocks");
  }
  if (config.max_running < 1 || config.max_batched_tokens < 1 || config.max_waiting < 1) {
    return absl::InvalidArgumentError(
        "engine: max_running, max_batched_tokens and max_waiting must be >= 1");
  }
  return std::unique_ptr<Engine>(
      new EngineImpl(std::move(model), std::move(backend), config, observer));
}

}  // namespace spanserve
