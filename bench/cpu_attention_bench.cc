// The CPU attention alone (cpu_math): one decode row per sequence, batch 8, context 4096,
// 8 heads of 64 (MHA), KV block size 16, over shuffled physical blocks. Dense (every token
// through the block table) against a span chunk list of 25% density: the sink, four referenced
// ranges that start and end inside blocks, and the row's own segment.
// Run: build/bench/cpu_attention_bench --benchmark_counters_tabular=true
// items/s = decode rows per second; kv_bytes = K and V bytes read per row (all heads).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "engine/backends/cpu_math.h"
#include "engine/core/attention_plan.h"

namespace spanserve {
namespace {

constexpr int32_t kBatch = 8, kContext = 4096, kHeads = 8, kHeadDim = 64, kBlockSize = 16;
constexpr int32_t kBlocksPerSeq = kContext / kBlockSize;

struct Setup {
  KvLayout layout{kHeads, kBlockSize, kHeadDim};
  std::vector<float> k, v, q, out;
  std::vector<std::vector<int32_t>> tables;  // per sequence

  Setup() {
    const int64_t elems = int64_t{kBatch} * kBlocksPerSeq * layout.block_elems();
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> dist(-1, 1);
    k.resize(elems);
    v.resize(elems);
    for (float& x : k) x = dist(rng);
    for (float& x : v) x = dist(rng);
    q.resize(kBatch * kHeads * kHeadDim);
    for (float& x : q) x = dist(rng);
    out.resize(q.size());
    std::vector<int32_t> blocks(kBatch * kBlocksPerSeq);
    std::iota(blocks.begin(), blocks.end(), 0);
    std::shuffle(blocks.begin(), blocks.end(), rng);
    for (int32_t s = 0; s < kBatch; ++s) {
      tables.emplace_back(blocks.begin() + s * kBlocksPerSeq,
                          blocks.begin() + (s + 1) * kBlocksPerSeq);
    }
  }
};

Setup& GetSetup() {
  static Setup setup;
  return setup;
}

// 4 + 4 * 180 + 300 = 1024 of 4096 tokens.
std::vector<TokenRange> SpanRanges() {
  return {{0, 4}, {37, 217}, {1001, 1181}, {2050, 2230}, {3333, 3513}, {kContext - 300, kContext}};
}

void Report(benchmark::State& state, int64_t tokens_per_row, int64_t blocks_per_row) {
  state.SetItemsProcessed(state.iterations() * kBatch);
  const int64_t kv_bytes = tokens_per_row * kHeads * kHeadDim * 2 * int64_t{sizeof(float)};
  state.SetBytesProcessed(state.iterations() * kBatch * kv_bytes);
  state.counters["kv_bytes"] = static_cast<double>(kv_bytes);
  state.counters["kv_blocks"] = static_cast<double>(blocks_per_row);
  state.counters["tokens"] = static_cast<double>(tokens_per_row);
}

// Runs attend(q, out, row, head) over every (row, head) in parallel, as the backend does.
template <typename Attend>
void AttendBatch(Setup& s, Attend attend) {
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int32_t r = 0; r < kBatch; ++r) {
    for (int32_t h = 0; h < kHeads; ++h) {
      const int64_t offset = (int64_t{r} * kHeads + h) * kHeadDim;
      attend(&s.q[offset], &s.out[offset], r, h);
    }
  }
  benchmark::DoNotOptimize(s.out.data());
}

constexpr float kScale = 0.125f;  // 1 / sqrt(kHeadDim)

void BM_AttentionDense(benchmark::State& state) {
  Setup& s = GetSetup();
  for (auto _ : state) {
    AttendBatch(s, [&](const float* q, float* out, int32_t r, int32_t h) {
      AttendCausal(q, s.k.data(), s.v.data(), s.layout, h, s.tables[r], kContext - 1, kScale, out);
    });
  }
  Report(state, kContext, kBlocksPerSeq);
}

void BM_AttentionSpan25(benchmark::State& state) {
  Setup& s = GetSetup();
  const std::vector<TokenRange> ranges = SpanRanges();
  std::vector<std::vector<KvChunk>> chunks(kBatch);
  for (int32_t r = 0; r < kBatch; ++r) {
    AppendRangeChunks(ranges, s.tables[r], kBlockSize, &chunks[r]);
  }
  int64_t tokens = 0;
  for (const TokenRange& range : ranges) tokens += range.end - range.begin;
  for (auto _ : state) {
    AttendBatch(s, [&](const float* q, float* out, int32_t r, int32_t h) {
      AttendChunks(q, s.k.data(), s.v.data(), s.layout, h, chunks[r], kScale, out);
    });
  }
  Report(state, tokens, CountDistinctBlocks(chunks[0]));
}

BENCHMARK(BM_AttentionDense)->UseRealTime();
BENCHMARK(BM_AttentionSpan25)->UseRealTime();

}  // namespace
}  // namespace spanserve

BENCHMARK_MAIN();
