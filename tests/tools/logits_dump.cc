// Dumps the logits of every position of a token sequence as the CPU backend computes them when
// the span rule decides each row's attention, for the Python golden tests:
//   logits_dump --model DIR --tokens 1,3,5,... --prompt-len P --mode self_selected|dense
//               --phase prefill|decode|chunked --block-size N --out FILE
// FILE gets raw little-endian float32 [len(tokens), vocab_size]. Errors: stderr, exit code 1.
#include <bit>
#include <fstream>
#include <iostream>
#include <span>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/backends/cpu_backend.h"
#include "engine/core/attention_plan.h"
#include "engine/core/span_rules.h"
#include "engine/model/model.h"

namespace spanserve {
namespace {

static_assert(std::endian::native == std::endian::little, "the dump is written as it lies in memory");

struct Args {
  std::string model_dir;
  std::string tokens;
  int32_t prompt_len = 0;
  std::string mode;
  std::string phase;
  int32_t block_size = 16;
  std::string out;
};

absl::StatusOr<std::vector<int32_t>> ParseTokens(const std::string& text) {
  std::vector<int32_t> tokens;
  for (absl::string_view piece : absl::StrSplit(text, ',')) {
    int32_t id;
    if (!absl::SimpleAtoi(piece, &id)) {
      return absl::InvalidArgumentError(absl::StrCat("--tokens: '", piece, "' is not a token id"));
    }
    tokens.push_back(id);
  }
  return tokens;
}

// prefill: everything in one step; decode: the prompt, then one row per step; chunked: 5 rows.
std::vector<int32_t> StepSizes(const std::string& phase, int32_t len, int32_t prompt_len) {
  const int32_t first = phase == "prefill" ? len : phase == "decode" ? prompt_len : 5;
  const int32_t each = phase == "decode" ? 1 : 5;
  std::vector<int32_t> sizes = {std::min(first, len)};
  for (int32_t done = sizes[0]; done < len; done += each) sizes.push_back(std::min(each, len - done));
  return sizes;
}

// One step of rows [begin, end), each row planned as the engine plans it (PlanAttentionRow).
StepBatch MakeStep(const std::vector<int32_t>& tokens, const SpanTracker& tracker,
                   const std::vector<int32_t>& table, int32_t block_size, int32_t sliding_window,
                   int32_t begin, int32_t end) {
  StepBatch batch;
  batch.logits_mode = LogitsMode::kAllRows;
  std::vector<TokenRange> ranges;
  for (int32_t q = begin; q < end; ++q) {
    AttentionRow row;
    PlanAttentionRow(tracker, q, end - begin > 1, sliding_window, table, block_size, &ranges,
                     &batch.chunks, &row);
    batch.rows.push_back(row);
    batch.token_ids.push_back(tokens[q]);
    batch.positions.push_back(q);
  }
  batch.seqs.push_back(
      {.row_begin = 0, .num_rows = end - begin, .num_blocks = static_cast<int32_t>(table.size())});
  batch.block_tables = table;
  return batch;
}

absl::Status Run(const Args& args) {
  absl::StatusOr<std::vector<int32_t>> parsed = ParseTokens(args.tokens);
  if (!parsed.ok()) return parsed.status();
  const std::vector<int32_t>& tokens = *parsed;
  const int32_t len = static_cast<int32_t>(tokens.size());
  if (args.prompt_len < 1 || args.prompt_len > len) {
    return absl::InvalidArgumentError(
        absl::StrCat("--prompt-len ", args.prompt_len, " is outside 1..", len));
  }
  absl::StatusOr<std::unique_ptr<Model>> loaded = LoadModel(args.model_dir);
  if (!loaded.ok()) return loaded.status();
  std::shared_ptr<const Model> model = std::move(*loaded);
  if (model->tokenizer == nullptr) return absl::InvalidArgumentError("the model has no tokenizer");

  const SpanVocab vocab = SpanVocab::FromModel(*model);
  const SpanMode mode = args.mode == "dense" ? SpanMode::kDense : SpanMode::kSelfSelected;
  SpanTracker tracker(&vocab, mode, std::span(tokens).first(args.prompt_len));
  for (int32_t q = args.prompt_len; q < len; ++q) tracker.Append(tokens[q]);

  // Blocks for the whole sequence, in reverse so that logical and physical ids differ.
  const int32_t num_blocks = DenseBlocks(len - 1, std::max(args.block_size, 1));
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      CreateCpuBackend(model, {.block_size = args.block_size, .num_blocks = num_blocks});
  if (!backend.ok()) return backend.status();
  std::vector<int32_t> table(num_blocks);
  for (int32_t i = 0; i < num_blocks; ++i) table[i] = num_blocks - 1 - i;

  std::vector<float> logits;
  int32_t begin = 0;
  for (int32_t size : StepSizes(args.phase, len, args.prompt_len)) {
    StepOutput out;
    const StepBatch batch = MakeStep(tokens, tracker, table, args.block_size,
                                     model->config.sliding_window, begin, begin + size);
    if (absl::Status s = (*backend)->Step(batch, &out); !s.ok()) return s;
    logits.insert(logits.end(), out.logits.begin(), out.logits.end());
    begin += size;
  }

  std::ofstream file(args.out, std::ios::binary);
  file.write(reinterpret_cast<const char*>(logits.data()),
             static_cast<std::streamsize>(logits.size() * sizeof(float)));
  if (!file) return absl::UnavailableError(absl::StrCat("cannot write ", args.out));
  return absl::OkStatus();
}

}  // namespace
}  // namespace spanserve

int main(int argc, char** argv) {
  spanserve::Args args;
  CLI::App app{"Dumps the CPU backend's logits of every position of a token sequence"};
  app.add_option("--model", args.model_dir, "model directory")->required();
  app.add_option("--tokens", args.tokens, "token ids, comma-separated")->required();
  app.add_option("--prompt-len", args.prompt_len, "how many tokens are the prompt")->required();
  app.add_option("--mode", args.mode)->required()->check(CLI::IsMember({"self_selected", "dense"}));
  app.add_option("--phase", args.phase)
      ->required()
      ->check(CLI::IsMember({"prefill", "decode", "chunked"}));
  app.add_option("--block-size", args.block_size, "KV block size")->required();
  app.add_option("--out", args.out, "output file")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "logits_dump: " << e.what() << "\n";
    return 1;
  }
  if (absl::Status status = spanserve::Run(args); !status.ok()) {
    std::cerr << "logits_dump: " << status.message() << "\n";
    return 1;
  }
  return 0;
}
