// Kernel benchmark of the block-sparse paged decode attention (decode kernel and split merge,
// with the metadata the backend builds), dense and sparse, for LLaMA-7B attention shapes (32
// heads of 128) and LLaMA-3-8B shapes (32 query heads over 8 KV heads): batch 1, 16 and 64,
// context 2k, 8k and 32k, attended fraction 1, 0.5, 0.25 and 0.125, KV block size 16, 64 and
// 128, over a pool where each row's blocks come in runs of KvBlockManager::kRunTokens tokens
// at random places, as the block manager hands them out on a server that has run a while
// (--pool-order shuffled: single blocks at random places, as it hands them out when no run is
// whole, and as all blocks were before it kept runs; address: each row's blocks in address
// order; interleaved: the rows' single blocks dealt out in turn). A sparse row
// attends a sink, referenced ranges with edges inside blocks, and its own tail, like a span
// row. Time is the median of groups of launches that rotate over disjoint block sets (so no
// configuration runs from L2), in one stream as the backend launches them (--early-launch 0:
// each after the one before has ended); bandwidth counts the K and V bytes of the attended
// tokens, against the measured device copy bandwidth.
//
// Run: cuda_attention_bench --csv attention.csv   (one CSV row per configuration, summary last)
//      cuda_attention_bench --serve                 (configurations from stdin, times to stdout)
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/cuda/bench_util.h"
#include "engine/backends/backend.h"
#include "engine/backends/cuda_step_plan.h"
#include "engine/core/attention_plan.h"
#include "engine/core/kv_block_manager.h"
#include "kernels/kernels.h"
#include "kernels/launch_plan.h"

namespace spanserve::bench {
namespace {

struct Shape {
  std::string name;
  int32_t heads, kv_heads, head_dim;
};

struct Config {
  Shape shape;
  int32_t batch, context, block_size;
  double fraction;
  int32_t splits = 0;  // 0: the backend's choice (gpu::SplitsFor)
  gpu::DecodeKernel kernel = gpu::DecodeKernel::kAuto;
  bool fused_merge = true;  // splits merged by the last CTA (the backend's way), or a second kernel

  // The kernel as run, and the merge: "tensor_cores/fused".
  std::string Variant() const {
    const gpu::DecodeKernel k = gpu::ResolveDecodeKernel(kernel, shape.heads / shape.kv_heads);
    return std::string(k == gpu::DecodeKernel::kTensorCores ? "tensor_cores" : "cuda_cores") +
           (fused_merge ? "/fused" : "/merge_kernel");
  }
  // Whether this is what the backend runs (kAuto's kernel, fused merge).
  bool IsBackendChoice() const {
    const int32_t group = shape.heads / shape.kv_heads;
    return fused_merge && gpu::ResolveDecodeKernel(kernel, group) ==
                              gpu::ResolveDecodeKernel(gpu::DecodeKernel::kAuto, group);
  }
};

struct Result {
  Config config;
  int32_t splits = 0, min_split_tokens = 0;
  int64_t attended_tokens = 0, blocks_read = 0, dense_blocks = 0;
  double us = 0, gbps = 0;
};

bool Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::fprintf(stderr, "cuda error in %s: %s\n", what, cudaGetErrorString(e));
  return false;
}

template <typename T>
cudaError_t Alloc(T** ptr, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(ptr), bytes);
}

// A span row's attended ranges at `fraction` of the context: a 4-token sink, referenced ranges
// of about 300 tokens at random unaligned places, and the row's own tail segment.
std::vector<TokenRange> SpanRanges(std::mt19937& rng, int32_t context, double fraction) {
  if (fraction >= 1.0) return {{0, context}};
  const int32_t target = std::max<int32_t>(16, static_cast<int32_t>(std::lround(fraction * context)));
  const int32_t sink = 4;
  const int32_t tail = std::min<int32_t>(target / 2, 400 + static_cast<int32_t>(rng() % 200));
  const int32_t middle = target - tail - sink;
  std::vector<TokenRange> ranges{{0, sink}};
  const int32_t lo = sink + 1, hi = context - tail - 1;  // gaps keep ranges apart
  const int32_t pieces = std::max(1, (middle + 299) / 300);
  const double stretch = static_cast<double>(hi - lo) / pieces;
  int32_t placed = 0;
  for (int32_t i = 0; i < pieces; ++i) {
    const int32_t len = (middle - placed) / (pieces - i);
    const int32_t s0 = lo + static_cast<int32_t>(i * stretch);
    const int32_t s1 = lo + static_cast<int32_t>((i + 1) * stretch);
    const int32_t room = s1 - s0 - len - 1;
    if (len <= 0 || room < 0) continue;
    const int32_t start = s0 + static_cast<int32_t>(rng() % (room + 1));
    ranges.push_back({start, start + len});
    placed += len;
  }
  ranges.push_back({context - tail, context});
  return ranges;
}

// Median over groups of launches in `stream` of the mean time of one launch, in microseconds.
double MedianLaunchUs(const std::function<void(int)>& launch, int sets, cudaStream_t stream) {
  for (int i = 0; i < 3; ++i) launch(i % sets);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  auto time_group = [&](int iterations) {
    cudaEventRecord(start, stream);
    for (int j = 0; j < iterations; ++j) launch(j % sets);
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    return 1e3 * ms / iterations;
  };
  const double one = time_group(1);
  const int iterations = static_cast<int>(std::clamp(3000.0 / std::max(one, 1.0), 5.0, 2000.0));
  std::vector<double> groups;
  for (int g = 0; g < 7; ++g) groups.push_back(time_group(iterations));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(groups.begin(), groups.end());
  return groups[groups.size() / 2];
}

// Disjoint block sets a configuration rotates over: about 1 GB together, so that nothing runs
// from L2 (at most 64).
int RotationSets(double dense_bytes) {
  return static_cast<int>(std::clamp(std::ceil(1e9 / dense_bytes), 1.0, 64.0));
}

class Bench {
 public:
  // Where a row's blocks lie in the pool: kRuns, runs of KvBlockManager::RunBlocks at random
  // places, as a server that has run a while hands them out; kShuffled, single blocks at
  // random places (its pool with no whole run left); kAddress, one run a row, as a fresh
  // server's prompts get; kInterleaved, the rows' single blocks dealt out in turn.
  enum class PoolOrder { kRuns, kShuffled, kAddress, kInterleaved };
  // How the launches are laid out where a configuration leaves it to the backend's choice.
  struct Launch {
    int32_t min_split_tokens = 0;  // SplitChunks' shortest split; 0: the backend's choice
    bool early_launch = true;
    int32_t run_tokens = 0;  // kRuns: tokens a run; 0: KvBlockManager's
    // false: every split head's early entries zeroed, so that no copy goes out before the
    // kernel waits for the one ahead (as before SplitHead::early_entries).
    bool early_copies = true;
    gpu::LeadOptions lead;
  };
  Bench(int32_t max_batch, int32_t max_context, PoolOrder pool_order, const Launch& launch)
      : max_batch_(max_batch), max_context_(max_context), pool_order_(pool_order),
        launch_(launch) {}
  ~Bench() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    for (void* p : {static_cast<void*>(k_), static_cast<void*>(v_), static_cast<void*>(q_),
                    static_cast<void*>(out_), static_cast<void*>(partial_o_),
                    static_cast<void*>(partial_lse_), static_cast<void*>(counters_)}) {
      cudaFree(p);
    }
  }
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;

  bool Init(const std::vector<Shape>& shapes) {
    cudaDeviceProp props{};
    if (!Check(cudaGetDeviceProperties(&props, 0), "properties")) return false;
    num_sms_ = props.multiProcessorCount;
    int64_t max_kv = 0, max_q = 0;
    for (const Shape& s : shapes) {
      max_kv = std::max<int64_t>(max_kv, int64_t{max_batch_} * max_context_ * s.kv_heads * s.head_dim);
      max_q = std::max<int64_t>(max_q, int64_t{max_batch_} * s.heads * s.head_dim);
    }
    pool_elems_ = max_kv;
    bool ok = Check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream") &&
              Check(Alloc(&k_, pool_elems_ * 2), "K pool") &&
              Check(Alloc(&v_, pool_elems_ * 2), "V pool") &&
              Check(Alloc(&q_, max_q * 2), "q") && Check(Alloc(&out_, max_q * 2), "out") &&
              Check(Alloc(&partial_o_, max_q * 4 * gpu::kMaxSplits), "partials") &&
              Check(Alloc(&partial_lse_, max_q / 64 * 4 * gpu::kMaxSplits + 4096), "lse") &&
              Check(Alloc(&counters_, max_q / 64 * 4 + 4096), "split counters") &&
              Check(cudaMemset(counters_, 0, max_q / 64 * 4 + 4096), "split counters");
    ok = ok && Check(FillRandomBf16(k_, pool_elems_, 1, nullptr), "fill") &&
         Check(FillRandomBf16(v_, pool_elems_, 2, nullptr), "fill") &&
         Check(FillRandomBf16(q_, max_q, 3, nullptr), "fill") && Check(cudaDeviceSynchronize(), "fill");
    return ok;
  }

  // One configuration: `sets` disjoint block sets, each a step of `batch` decode rows.
  bool Run(const Config& c, Result* result) {
    const Shape& s = c.shape;
    const int32_t B = c.block_size, per_row = c.context / B;
    const int64_t pool_blocks = pool_elems_ / (int64_t{s.kv_heads} * B * s.head_dim);
    const int64_t per_set = int64_t{c.batch} * per_row;
    const double dense_bytes = 4.0 * c.batch * c.context * s.kv_heads * s.head_dim;
    const int sets = static_cast<int>(
        std::min<int64_t>(RotationSets(dense_bytes), std::max<int64_t>(pool_blocks / per_set, 1)));
    std::vector<int32_t>& order = BlockOrder(B, pool_blocks, c.batch, per_row);
    std::mt19937 rng(static_cast<uint32_t>(c.batch * 131 + c.context + B * 7));
    gpu::PlanOptions options;
    options.block_size = B;
    const gpu::SplitLayout layout = gpu::SplitLayoutFor(
        c.batch, s.kv_heads, s.heads / s.kv_heads, s.head_dim, num_sms_, c.kernel, launch_.lead);
    // Splits given: even ones.
    options.num_splits = c.splits > 0 ? c.splits : layout.splits;
    options.lead_percent = c.splits > 0 ? 0 : layout.lead_percent;
    options.min_split_tokens =
        launch_.min_split_tokens > 0 ? launch_.min_split_tokens : layout.min_split_tokens;
    result->min_split_tokens = options.min_split_tokens;
    result->config = c;
    result->splits = options.num_splits;
    std::vector<void*> blobs(sets, nullptr);
    std::vector<gpu::DecodeAttentionArgs> args(sets);
    bool ok = true;
    for (int set = 0; set < sets && ok; ++set) {
      StepBatch batch;
      for (int32_t r = 0; r < c.batch; ++r) {
        StepSequence seq;
        seq.row_begin = r;
        seq.num_rows = 1;
        seq.table_begin = static_cast<int32_t>(batch.block_tables.size());
        seq.num_blocks = per_row;
        const auto first = order.begin() + set * per_set + int64_t{r} * per_row;
        batch.block_tables.insert(batch.block_tables.end(), first, first + per_row);
        AttentionRow row;
        row.seq = r;
        row.chunk_begin = static_cast<int32_t>(batch.chunks.size());
        AppendRangeChunks(SpanRanges(rng, c.context, c.fraction),
                          {batch.block_tables.data() + seq.table_begin, size_t(per_row)}, B,
                          &batch.chunks);
        row.chunk_end = static_cast<int32_t>(batch.chunks.size());
        if (set == 0) {
          const std::span<const KvChunk> chunks(batch.chunks.data() + row.chunk_begin,
                                                row.chunk_end - row.chunk_begin);
          for (const KvChunk& k : chunks) result->attended_tokens += k.end - k.begin;
          result->blocks_read += CountDistinctBlocks(chunks);
          result->dense_blocks += per_row;
        }
        batch.rows.push_back(row);
        batch.token_ids.push_back(0);
        batch.positions.push_back(c.context - 1);
        batch.seqs.push_back(seq);
      }
      const gpu::PlanLayout layout = gpu::PlanLayout::For(gpu::NeededCapacity(batch, options));
      std::vector<uint8_t> blob(layout.total);
      const gpu::StepPlan plan = gpu::BuildStepPlan(batch, options, layout, blob.data());
      if (!launch_.early_copies) {
        auto* heads = reinterpret_cast<gpu::SplitHead*>(blob.data() + layout.split_heads);
        for (int64_t i = 0; i < int64_t{plan.decode_rows} * plan.num_splits; ++i) heads[i].early_entries = 0;
      }
      ok = Check(cudaMalloc(&blobs[set], layout.total), "metadata") &&
           Check(cudaMemcpy(blobs[set], blob.data(), layout.total, cudaMemcpyHostToDevice), "metadata");
      auto at = [&](size_t offset) { return static_cast<uint8_t*>(blobs[set]) + offset; };
      args[set] = {q_, k_, v_, reinterpret_cast<const gpu::SplitHead*>(at(layout.split_heads)),
                   reinterpret_cast<const gpu::ChunkEntry*>(at(layout.chunks)), plan.decode_rows,
                   plan.num_splits, s.heads, s.kv_heads, s.head_dim, B,
                   1.0f / std::sqrt(static_cast<float>(s.head_dim)), partial_o_, partial_lse_, out_,
                   c.fused_merge ? counters_ : nullptr, c.kernel, launch_.early_launch,
                   plan.split_major};
    }
    if (ok) {
      result->us = MedianLaunchUs(
          [&](int set) { gpu::LaunchDecodeAttention(args[set], stream_); }, sets, stream_);
      ok = Check(cudaGetLastError(), "attention") && Check(cudaDeviceSynchronize(), "attention");
      // K and V, 2 bytes each, of every attended token of every row, for every KV head.
      result->gbps = 4.0 * s.kv_heads * s.head_dim * result->attended_tokens / (result->us * 1e3);
    }
    for (void* blob : blobs) cudaFree(blob);
    return ok;
  }

  int32_t num_sms() const { return num_sms_; }

 private:
  // Row r of set s takes order[s * batch * per_row + r * per_row + j], j < per_row.
  std::vector<int32_t>& BlockOrder(int32_t block_size, int64_t pool_blocks, int32_t batch,
                                   int32_t per_row) {
    const bool interleaved = pool_order_ == PoolOrder::kInterleaved;
    std::vector<int32_t>& order =
        orders_[{block_size, pool_blocks, interleaved ? batch : 0, interleaved ? per_row : 0}];
    if (order.empty()) {
      order.resize(pool_blocks);
      std::iota(order.begin(), order.end(), 0);
      if (pool_order_ == PoolOrder::kShuffled) {
        std::shuffle(order.begin(), order.end(), std::mt19937(block_size));
      } else if (pool_order_ == PoolOrder::kRuns) {
        const int64_t run = KvBlockManager::RunBlocks(
            block_size, launch_.run_tokens > 0 ? launch_.run_tokens : KvBlockManager::kRunTokens);
        const int64_t runs = pool_blocks / run;
        std::vector<int64_t> placed(runs);
        std::iota(placed.begin(), placed.end(), 0);
        std::shuffle(placed.begin(), placed.end(), std::mt19937(block_size));
        for (int64_t i = 0; i < runs * run; ++i) {
          order[i] = static_cast<int32_t>(placed[i / run] * run + i % run);
        }
      } else if (interleaved) {
        const int64_t per_set = int64_t{batch} * per_row;
        for (int64_t i = 0; i < pool_blocks / per_set * per_set; ++i) {
          const int64_t set = i / per_set, r = i % per_set / per_row, j = i % per_row;
          order[i] = static_cast<int32_t>(set * per_set + j * batch + r);
        }
      }
    }
    return order;
  }

  int32_t max_batch_, max_context_;
  PoolOrder pool_order_;
  Launch launch_;
  cudaStream_t stream_ = nullptr;
  int32_t num_sms_ = 0;
  int64_t pool_elems_ = 0;
  uint16_t *k_ = nullptr, *v_ = nullptr, *q_ = nullptr, *out_ = nullptr;
  float *partial_o_ = nullptr, *partial_lse_ = nullptr;
  int32_t* counters_ = nullptr;
  std::map<std::tuple<int32_t, int64_t, int32_t, int32_t>, std::vector<int32_t>> orders_;
};

const std::vector<Shape>& KnownShapes() {
  static const std::vector<Shape> shapes = {Shape{"llama7b", 32, 32, 128},
                                            Shape{"llama3_8b", 32, 8, 128},
                                            // Not in the default grid: a LLaMA-3-8B group on
                                            // 4 KV heads, so that a launch's one-split CTAs
                                            // come in any multiple of 4 (batch 32: 128, 33: 132).
                                            Shape{"group4_kv4", 16, 4, 128}};
  return shapes;
}

// --serve: one configuration a line on stdin, "shape batch context block fraction splits"
// (splits 0: the backend's choice), answered on stdout with "time_us gbps splits" or
// "error ...". Each request allocates its own pools and frees them, so that another process
// (torch_attention_bench.py --interleave) can time its own kernels between requests.
int Serve(Bench::PoolOrder pool_order, const Bench::Launch& launch) {
  char name[64];
  int32_t batch, context, block, splits;
  double fraction;
  while (std::scanf("%63s %d %d %d %lf %d", name, &batch, &context, &block, &fraction, &splits) == 6) {
    const auto& shapes = KnownShapes();
    const auto shape = std::find_if(shapes.begin(), shapes.end(),
                                    [&](const Shape& s) { return s.name == name; });
    Result r;
    bool ok = false;
    if (shape != shapes.end() && batch > 0 && context >= block && block > 0) {
      // Room for the block sets Run rotates over, as in the grid.
      const int sets =
          RotationSets(4.0 * batch * context * shape->kv_heads * shape->head_dim);
      Bench bench(batch, context * sets, pool_order, launch);
      ok = bench.Init({*shape}) &&
           bench.Run(Config{*shape, batch, context, block, fraction, splits}, &r);
    }
    if (ok) {
      std::printf("%.3f %.1f %d\n", r.us, r.gbps, r.splits);
    } else {
      std::printf("error %s %d %d %d\n", name, batch, context, block);
    }
    std::fflush(stdout);
  }
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app{"Block-sparse paged decode attention benchmark"};
  std::string csv_path = "attention.csv";
  std::vector<int32_t> batches = {1, 16, 64}, contexts = {2048, 8192, 32768}, blocks = {16, 64, 128};
  std::vector<double> fractions = {1.0, 0.5, 0.25, 0.125};
  std::vector<int32_t> splits = {0};
  std::vector<std::string> shape_names = {"llama7b", "llama3_8b"};
  std::vector<std::string> kernel_names = {"auto"}, merge_names = {"fused"};
  Bench::Launch launch;
  app.add_option("--csv", csv_path, "where the results go");
  app.add_option("--batches", batches);
  app.add_option("--contexts", contexts);
  app.add_option("--blocks", blocks);
  app.add_option("--fractions", fractions);
  app.add_option("--min-split-tokens", launch.min_split_tokens,
                 "SplitChunks' shortest split (0: the backend's choice)");
  app.add_option("--splits", splits, "split counts to time (0: the backend's choice)");
  app.add_option("--shapes", shape_names,
                 "llama7b (32 heads of 128), llama3_8b (8 KV heads), group4_kv4 (16 over 4)");
  app.add_option("--kernels", kernel_names, "auto (the backend's choice), cuda_cores, tensor_cores")
      ->check(CLI::IsMember({"auto", "cuda_cores", "tensor_cores"}));
  app.add_option("--merges", merge_names, "fused (the last CTA merges the splits), kernel")
      ->check(CLI::IsMember({"fused", "kernel"}));
  bool serve = false;
  app.add_flag("--serve", serve, "time configurations read from stdin, one a line (see Serve)");
  std::string pool_order = "runs";
  app.add_option("--pool-order", pool_order, "the order rows take the pool's blocks in")
      ->check(CLI::IsMember({"runs", "shuffled", "address", "interleaved"}));
  app.add_option("--early-launch", launch.early_launch,
                 "launch as the backend does: each launch's CTAs start while the one before "
                 "finishes (programmatic dependent launch); 0: after it")
      ->default_val(true);
  app.add_option("--run-tokens", launch.run_tokens,
                 "--pool-order runs: tokens a run (0: what KvBlockManager hands out)");
  app.add_option("--early-copies", launch.early_copies,
                 "an early launch copies the blocks no kernel of the step writes before it waits "
                 "(SplitHead::early_entries); 0: after")
      ->default_val(true);
  gpu::LeadOptions& lead = launch.lead;
  app.add_option("--lead-percent", lead.percent,
                 "lead layouts (gpu::SplitLayoutFor): split 0's share of a row (0: even splits)");
  app.add_option("--lead-grains", lead.grains, "the splits the rest is cut into, at most");
  app.add_option("--lead-min-tokens", lead.min_grain_tokens, "their shortest");
  app.add_option("--lead-multi-wave", lead.multi_wave, "lead layouts over several waves too");
  CLI11_PARSE(app, argc, argv);
  const Bench::PoolOrder order = pool_order == "address"       ? Bench::PoolOrder::kAddress
                                 : pool_order == "shuffled"    ? Bench::PoolOrder::kShuffled
                                 : pool_order == "interleaved" ? Bench::PoolOrder::kInterleaved
                                                               : Bench::PoolOrder::kRuns;
  if (serve) return Serve(order, launch);

  std::vector<Shape> shapes;
  for (const Shape& s : KnownShapes()) {
    if (std::find(shape_names.begin(), shape_names.end(), s.name) != shape_names.end()) {
      shapes.push_back(s);
    }
  }
  if (shapes.empty()) {
    std::fprintf(stderr, "--shapes: none of llama7b, llama3_8b, group4_kv4\n");
    return 2;
  }
  Bench bench(*std::max_element(batches.begin(), batches.end()),
              *std::max_element(contexts.begin(), contexts.end()), order, launch);
  if (!bench.Init(shapes)) return 1;
  const double copy_gbps = CopyBandwidthGBps(size_t{2} << 30, 10);
  std::printf("device copy bandwidth %.0f GB/s (read + write), %d SMs\n", copy_gbps, bench.num_sms());
  std::FILE* csv = std::fopen(csv_path.c_str(), "w");
  if (csv == nullptr) return 1;
  std::fprintf(csv, "shape,heads,kv_heads,head_dim,batch,context,fraction,block_size,variant,backend_choice,splits,"
                    "min_split_tokens,attended_tokens,blocks_read,dense_blocks,time_us,gbps,copy_gbps,pct_copy,"
                    "dense_time_us,time_over_dense_x_fraction\n");
  std::vector<Result> results;
  using Key = std::tuple<std::string, int32_t, int32_t, int32_t, int32_t, std::string>;
  std::map<Key, double> dense_us;
  // Dense (fraction 1) first within each (shape, block, batch, context, splits), so each sparse
  // row has its dense time to compare with.
  std::vector<Config> configs;
  for (const Shape& shape : shapes)
    for (int32_t B : blocks)
      for (int32_t batch : batches)
        for (int32_t context : contexts)
          for (int32_t split_count : splits)
            for (const std::string& kernel : kernel_names)
              for (const std::string& merge : merge_names)
                for (double fraction : fractions)
                  configs.push_back({shape, batch, context, B, fraction, split_count,
                                     kernel == "cuda_cores"     ? gpu::DecodeKernel::kCudaCores
                                     : kernel == "tensor_cores" ? gpu::DecodeKernel::kTensorCores
                                                                : gpu::DecodeKernel::kAuto,
                                     merge == "fused"});
  for (const Config& c : configs) {
    Result r;
    if (!bench.Run(c, &r)) return 1;
    const Key key{c.shape.name, c.block_size, c.batch, c.context, c.splits, c.Variant()};
    if (c.fraction >= 1.0) dense_us[key] = r.us;
    const double dense = dense_us.count(key) ? dense_us[key] : 0;
    const double ratio = dense > 0 ? r.us / (dense * c.fraction) : 0;
    std::fprintf(csv, "%s,%d,%d,%d,%d,%d,%.4f,%d,%s,%d,%d,%d,%lld,%lld,%lld,%.2f,%.1f,%.1f,%.1f,%.2f,%.3f\n",
                 c.shape.name.c_str(), c.shape.heads, c.shape.kv_heads, c.shape.head_dim, c.batch,
                 c.context, c.fraction, c.block_size, c.Variant().c_str(), int{c.IsBackendChoice()}, r.splits, r.min_split_tokens,
                 static_cast<long long>(r.attended_tokens), static_cast<long long>(r.blocks_read),
                 static_cast<long long>(r.dense_blocks), r.us, r.gbps, copy_gbps,
                 100 * r.gbps / copy_gbps, dense, ratio);
    std::fflush(csv);
    std::printf("%-9s %-34s B%-3d batch %-2d ctx %-5d splits %-2d f %.3f: %9.1f us %7.0f GB/s "
                "%5.1f%% of copy%s\n",
                c.shape.name.c_str(), c.Variant().c_str(), c.block_size, c.batch, c.context,
                r.splits, c.fraction, r.us,
                r.gbps, 100 * r.gbps / copy_gbps,
                c.fraction < 1 ? (" sparse/(dense*f) " + std::to_string(ratio)).c_str() : "");
    results.push_back(r);
  }
  std::fclose(csv);

  // The targets: at batch 64 and context 8k, >= 80% of copy bandwidth; sparse within 20% of
  // dense time x fraction.
  std::printf("\nsummary at batch 64, context 8192 (targets: >= 80%% of copy bandwidth, "
              "sparse time <= 1.2 x dense time x fraction)\n");
  std::printf("%-10s %-34s %5s %6s %6s %10s %8s %7s %8s\n", "shape", "variant", "block", "splits",
              "frac", "time_us", "GB/s", "%copy", "ratio");
  for (const Result& r : results) {
    const Config& c = r.config;
    if (c.batch != 64 || c.context != 8192) continue;
    const double dense =
        dense_us[Key{c.shape.name, c.block_size, c.batch, c.context, c.splits, c.Variant()}];
    std::printf("%-10s %-34s %5d %6d %6.3f %10.1f %8.0f %6.1f%% %8.3f\n", c.shape.name.c_str(),
                c.Variant().c_str(), c.block_size, r.splits, c.fraction, r.us, r.gbps, 100 * r.gbps / copy_gbps,
                r.us / (dense * c.fraction));
  }
  return 0;
}

}  // namespace
}  // namespace spanserve::bench

int main(int argc, char** argv) { return spanserve::bench::Main(argc, argv); }
