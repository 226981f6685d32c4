// Each CUDA kernel against a double-precision reference on fresh random inputs, outputs
// poisoned (NaN) before each run: decode attention over random block lists with edge masks and
// empty rows, for every head dim, GQA group, block size and split count it takes, launched
// early behind a kernel that writes q and each row's last block late; prefill
// attention and decode rows mixed as in a step; RoPE with the KV write; the fused residual add
// and RMSNorm; embedding; SiluMul; sampling; the decode GEMM (both variants, every row tile
// count, split counts, determinism, graph replay). Skipped where no GPU is visible.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "engine/backends/cuda_step_plan.h"
#include "engine/backends/sampler.h"
#include "engine/core/attention_plan.h"
#include "engine/model/model_config.h"
#include "kernels/kernels.h"
#include "kernels/launch_plan.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/late_writer.h"
#include "tests/cuda/random_batch.h"

namespace spanserve::testing {
namespace {

using gpu::ChunkEntry;

constexpr double kTolerance = 1e-2;  // relative, outputs in bf16

// KV caches of random bf16 values, with the floats they stand for.
struct Caches {
  KvLayout layout;
  std::vector<float> k, v;
  std::vector<uint16_t> k_bits, v_bits;
  DeviceArray<uint16_t> k_dev, v_dev;

  Caches(std::mt19937& rng, const KvLayout& l, int32_t num_blocks)
      : layout(l),
        k_bits(RandomBf16(rng, size_t(num_blocks) * l.block_elems(), 1.0f, &k)),
        v_bits(RandomBf16(rng, size_t(num_blocks) * l.block_elems(), 1.0f, &v)),
        k_dev(k_bits),
        v_dev(v_bits) {}

  // NaN in K and V of every token no chunk names, as a cache's unwritten slots may hold: a
  // kernel that reads them (or lets 0 x NaN into a sum) fails.
  void PoisonUnattended(const std::vector<std::vector<KvChunk>>& row_chunks) {
    const int64_t blocks = static_cast<int64_t>(k_bits.size()) / layout.block_elems();
    std::vector<bool> attended(blocks * layout.block_size, false);
    for (const std::vector<KvChunk>& chunks : row_chunks) {
      for (const KvChunk& c : chunks) {
        for (int32_t t = c.begin; t < c.end; ++t) attended[int64_t{c.block} * layout.block_size + t] = true;
      }
    }
    constexpr uint16_t kNanBits = 0x7fc0;
    for (int64_t b = 0; b < blocks; ++b) {
      for (int32_t t = 0; t < layout.block_size; ++t) {
        if (attended[b * layout.block_size + t]) continue;
        for (int32_t h = 0; h < layout.num_kv_heads; ++h) {
          const int64_t row = layout.TileOffset(static_cast<int32_t>(b), h) + int64_t{t} * layout.head_dim;
          std::fill_n(k_bits.begin() + row, layout.head_dim, kNanBits);
          std::fill_n(v_bits.begin() + row, layout.head_dim, kNanBits);
        }
      }
    }
    k_dev.Upload(k_bits);
    v_dev.Upload(v_bits);
  }
};

struct DecodeCase {
  int32_t head_dim, group, kv_heads, block_size, num_splits, min_split_tokens;
  int32_t lead_percent = 0;  // > 0: a lead layout, launched split-major
};

// Rows with random contexts and chunk lists (one empty row, one dense), q rows scattered over a
// larger buffer whose other rows must stay untouched.
void CheckDecode(std::mt19937& rng, const DecodeCase& c, int32_t rows, int32_t max_context) {
  const int32_t H = c.kv_heads * c.group, hd = c.head_dim, B = c.block_size, S = c.num_splits;
  std::vector<int32_t> contexts(rows);
  int32_t pool = 1;
  for (int32_t& ctx : contexts) {
    ctx = 1 + static_cast<int32_t>(rng() % max_context);
    pool += (ctx + B - 1) / B;
  }
  std::vector<int32_t> blocks(pool);
  std::iota(blocks.begin(), blocks.end(), 0);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  Caches caches(rng, {c.kv_heads, B, hd}, pool);

  const int32_t q_rows = rows + 3;
  std::vector<int32_t> q_row(q_rows);
  std::iota(q_row.begin(), q_row.end(), 0);
  std::shuffle(q_row.begin(), q_row.end(), rng);
  q_row.resize(rows);
  std::vector<float> q;
  DeviceArray<uint16_t> q_dev(RandomBf16(rng, size_t(q_rows) * H * hd, 1.0f, &q));

  std::vector<std::vector<KvChunk>> row_chunks(rows);
  std::vector<ChunkEntry> entries;
  std::vector<int32_t> bounds(size_t(rows) * (S + 1));
  size_t next_block = 0;
  for (int32_t r = 0; r < rows; ++r) {
    const int32_t ctx = contexts[r];
    std::vector<int32_t> table(blocks.begin() + next_block,
                               blocks.begin() + next_block + (ctx + B - 1) / B);
    next_block += table.size();
    if (r != 0) {  // row 0 attends nothing: its output is zeros
      const std::vector<TokenRange> ranges = r == 1 ? std::vector<TokenRange>{{0, ctx}}
                                                    : RandomRanges(rng, ctx);
      AppendRangeChunks(ranges, table, B, &row_chunks[r]);
    }
    std::vector<KvChunk> pieces;
    gpu::CutIntoPieces(row_chunks[r], B, &pieces);
    gpu::SplitChunks(pieces, S, c.min_split_tokens, static_cast<int32_t>(entries.size()),
                     &bounds[size_t(r) * (S + 1)], c.lead_percent);
    for (const KvChunk& k : pieces) entries.push_back({k.block, k.begin | (k.end << 16)});
  }
  // The step writes each row's last block (its newest token, as the KV write does).
  std::vector<int32_t> last_blocks;
  for (size_t b = 0, r = 0; r < size_t(rows); ++r) {
    b += (contexts[r] + B - 1) / B;
    last_blocks.push_back(blocks[b - 1]);
  }
  const gpu::WrittenBlockSet written_set(last_blocks);
  std::vector<int32_t> written = last_blocks;  // sorted, once each
  std::sort(written.begin(), written.end());
  written.erase(std::unique(written.begin(), written.end()), written.end());
  std::vector<gpu::SplitHead> heads(size_t(rows) * S);
  for (int32_t r = 0; r < rows; ++r) {
    gpu::FillSplitHeads(&bounds[size_t(r) * (S + 1)], S, entries.data(), q_row[r], written_set,
                        &heads[size_t(r) * S]);
  }
  caches.PoisonUnattended(row_chunks);
  DeviceArray<gpu::SplitHead> heads_dev(heads);
  DeviceArray<ChunkEntry> chunks_dev(entries);
  DeviceArray<float> partial_o(size_t(rows) * S * H * hd), partial_lse(size_t(rows) * S * H);
  DeviceArray<uint16_t> out(size_t(q_rows) * H * hd);
  DeviceArray<int32_t> counters(std::vector<int32_t>(size_t(rows) * c.kv_heads, 0));
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<std::vector<double>> want(rows);
  for (int32_t r = 0; r < rows; ++r) {
    for (int32_t h = 0; h < H; ++h) {
      const std::span<const float> qh(&q[(size_t(q_row[r]) * H + h) * hd], hd);
      const std::vector<double> ref = RefAttention(qh, caches.k.data(), caches.v.data(),
                                                   caches.layout, h / c.group, row_chunks[r], scale);
      want[r].insert(want[r].end(), ref.begin(), ref.end());
    }
  }
  // The kernel reads q and the written blocks from copies that a kernel before it writes late
  // (after NaN): launched early (programmatic dependent launch), it may copy the other blocks
  // at once (SplitHead::early_entries), and must wait for that kernel before the rest.
  DeviceArray<uint16_t> q_in(q_dev.size()), k_in(caches.k_dev.size()), v_in(caches.v_dev.size());
  const size_t block_elems = caches.layout.block_elems(), block_bytes = block_elems * 2;
  std::vector<LateCopy> late = {{q_dev.get(), q_in.get(), q_in.size() * 2}};
  for (const int32_t b : written) {
    late.push_back({caches.k_dev.get() + b * block_elems, k_in.get() + b * block_elems, block_bytes});
    late.push_back({caches.v_dev.get() + b * block_elems, v_in.get() + b * block_elems, block_bytes});
  }
  ASSERT_LE(late.size(), size_t(kMaxLateCopies));
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  // Both kernels; splits merged by a second kernel and by the last CTA (twice: the counters
  // must be back at zero for the next launch, as a graph replay needs); launched early but
  // for the first merge by the last CTA.
  for (const gpu::DecodeKernel kernel : {gpu::DecodeKernel::kCudaCores, gpu::DecodeKernel::kTensorCores}) {
    for (const int merge : {0, 1, 2}) {
      if (S == 1 && merge > 0) continue;
      partial_o.Poison();
      partial_lse.Poison();
      out.Poison();
      q_in.Poison();
      for (auto [in, from] : {std::pair{&k_in, &caches.k_dev}, std::pair{&v_in, &caches.v_dev}}) {
        ASSERT_EQ(cudaMemcpyAsync(in->get(), from->get(), in->size() * 2, cudaMemcpyDeviceToDevice,
                                  stream), cudaSuccess);
        for (const int32_t b : written) {
          ASSERT_EQ(cudaMemsetAsync(in->get() + b * block_elems, 0xff, block_bytes, stream),
                    cudaSuccess);  // NaN until the late copy
        }
      }
      gpu::DecodeAttentionArgs args{q_in.get(), k_in.get(), v_in.get(),
                                    heads_dev.get(), chunks_dev.get(),
                                    rows, S, H, c.kv_heads, hd, B, scale,
                                    partial_o.get(), partial_lse.get(), out.get(),
                                    merge > 0 ? counters.get() : nullptr, kernel};
      args.early_launch = merge != 1;
      args.split_major = c.lead_percent > 0;
      ASSERT_EQ(LaunchLateCopies(late.data(), static_cast<int>(late.size()), 50, stream), cudaSuccess);
      SyncOk(gpu::LaunchDecodeAttention(args, stream));
      const std::vector<float> got = ToFloats(out.Download());
      const char* name = kernel == gpu::DecodeKernel::kCudaCores ? "cuda cores" : "tensor cores";
      const char* merged = merge == 0 ? "merge kernel" : "merged in the last CTA";
      std::vector<bool> addressed(q_rows, false);
      for (int32_t r = 0; r < rows; ++r) {
        const int32_t qr = q_row[r];
        addressed[qr] = true;
        const std::span<const float> row_out(&got[size_t(qr) * H * hd], size_t(H) * hd);
        EXPECT_LT(MaxRelErr(row_out, want[r]), kTolerance)
            << name << ", " << merged << ": row " << r << " hd " << hd << " G " << c.group
            << " B " << B << " splits " << S << " lead " << c.lead_percent << " chunks "
            << row_chunks[r].size();
      }
      for (int32_t qr = 0; qr < q_rows; ++qr) {
        if (addressed[qr]) continue;
        for (int32_t i = 0; i < H * hd; ++i) {
          ASSERT_TRUE(std::isnan(got[size_t(qr) * H * hd + i]))
              << name << ": q row " << qr << " was written";
        }
      }
      for (const int32_t count : counters.Download()) ASSERT_EQ(count, 0) << name << ", " << merged;
    }
  }
  cudaStreamDestroy(stream);
}

TEST(DecodeAttention, MatchesReferenceForEveryShape) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(11);
  const int32_t splits[] = {1, 2, 5, 33, gpu::kMaxSplits};  // 33: the merge's second lane set
  for (int32_t hd : {64, 128}) {
    for (int32_t group : {1, 2, 4, 8}) {
      for (int32_t B : {16, 64, 128, 256, 1, 8, 24}) {
        const DecodeCase c{hd, group, 2, B, splits[rng() % 5], rng() % 2 ? 1 : 128};
        CheckDecode(rng, c, 2 + static_cast<int32_t>(rng() % 10), 1500);
        if (HasFatalFailure()) return;
      }
    }
  }
}

// LLaMA-shaped heads at longer contexts: 32 heads of 128 (no GQA) and 32 query heads over 8.
TEST(DecodeAttention, MatchesReferenceAtLlamaShapes) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(12);
  for (const auto& [kv_heads, group] : {std::pair{32, 1}, std::pair{8, 4}}) {
    for (int32_t S : {1, 8, gpu::kMaxSplits}) {
      CheckDecode(rng, {128, group, kv_heads, 16, S, 128}, 4, 3000);
      if (HasFatalFailure()) return;
    }
  }
}

// Lead layouts: split 0 of each row takes most of it, the other splits share the rest, and the
// launch is split-major.
TEST(DecodeAttention, MatchesReferenceWithLeadLayouts) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(13);
  for (const auto& [kv_heads, group] : {std::pair{4, 1}, std::pair{2, 4}, std::pair{2, 8}}) {
    for (int32_t B : {16, 128, 8}) {
      for (const auto& [S, lead] : {std::pair{5, 80}, std::pair{2, 95}, std::pair{9, 60}}) {
        CheckDecode(rng, {128, group, kv_heads, B, S, 128, lead}, 3 + static_cast<int32_t>(rng() % 6),
                    2500);
        if (HasFatalFailure()) return;
      }
    }
  }
}

// A step's attention: causal prompt rows through the prefill kernel, rows with chunk lists
// (decode rows, and prefill rows after a preemption) through the decode kernel, from the
// metadata blob the backend builds.
TEST(StepAttention, PrefillAndDecodeRowsMatchReference) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(13);
  for (int trial = 0; trial < 24; ++trial) {
    const int32_t hd = trial % 2 ? 128 : 64, group = 1 << (trial % 4), kvh = 2, H = kvh * group;
    RandomBatchSpec spec;
    spec.block_size = std::vector<int32_t>{16, 32, 64, 128, 256, 8}[trial % 6];
    spec.max_prefill_rows = 150;
    spec.max_start = 600;
    spec.num_blocks = 2048 / spec.block_size * 8 + 64;
    const StepBatch batch = RandomBatch(rng, spec);
    gpu::PlanOptions options;
    options.block_size = spec.block_size;
    options.num_splits = gpu::SplitsFor(gpu::DecodeRows(batch, 0), kvh, group, hd, 132);
    options.prefill_tile_rows = gpu::PrefillTileRows(group);
    const gpu::PlanLayout layout = gpu::PlanLayout::For(gpu::NeededCapacity(batch, options));
    std::vector<uint8_t> blob(layout.total);
    const gpu::StepPlan plan = gpu::BuildStepPlan(batch, options, layout, blob.data());
    DeviceArray<uint8_t> blob_dev(blob);
    auto at = [&](size_t offset) { return blob_dev.get() + offset; };

    Caches caches(rng, {kvh, spec.block_size, hd}, spec.num_blocks);
    const int32_t n = batch.num_rows();
    std::vector<float> q;
    DeviceArray<uint16_t> q_dev(RandomBf16(rng, size_t(n) * H * hd, 1.0f, &q));
    DeviceArray<uint16_t> out(size_t(n) * H * hd);
    DeviceArray<float> partial_o(size_t(plan.decode_rows) * plan.num_splits * H * hd + 1);
    DeviceArray<float> partial_lse(size_t(plan.decode_rows) * plan.num_splits * H + 1);
    DeviceArray<int32_t> counters(std::vector<int32_t>(size_t(plan.decode_rows) * kvh + 1, 0));
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    gpu::PrefillAttentionArgs prefill{
        q_dev.get(), caches.k_dev.get(), caches.v_dev.get(),
        reinterpret_cast<const gpu::PrefillJob*>(at(layout.prefill_jobs)),
        reinterpret_cast<const int32_t*>(at(layout.positions)),
        reinterpret_cast<const int32_t*>(at(layout.block_tables)), plan.prefill_jobs, H, kvh, hd,
        spec.block_size, scale, out.get()};
    const gpu::DecodeAttentionArgs decode{
        q_dev.get(), caches.k_dev.get(), caches.v_dev.get(),
        reinterpret_cast<const gpu::SplitHead*>(at(layout.split_heads)),
        reinterpret_cast<const ChunkEntry*>(at(layout.chunks)), plan.decode_rows,
        plan.num_splits, H, kvh, hd, spec.block_size, scale, partial_o.get(), partial_lse.get(),
        out.get(), counters.get()};
    // Both prefill kernels, each against the reference (the decode counters reset themselves).
    for (const bool tensor_cores : {false, true}) {
      prefill.tensor_cores = tensor_cores;
      out.Poison();
      SyncOk(gpu::LaunchPrefillAttention(prefill, nullptr));
      SyncOk(gpu::LaunchDecodeAttention(decode, nullptr));
      const std::vector<float> got = ToFloats(out.Download());
      for (int32_t r = 0; r < n; ++r) {
        const AttentionRow& row = batch.rows[r];
        const StepSequence& seq = batch.seqs[row.seq];
        const std::vector<KvChunk> chunks =
            row.causal ? CausalChunks({batch.block_tables.data() + seq.table_begin,
                                       size_t(seq.num_blocks)},
                                      spec.block_size, batch.positions[r])
                       : std::vector<KvChunk>(batch.chunks.begin() + row.chunk_begin,
                                              batch.chunks.begin() + row.chunk_end);
        std::vector<double> want;
        for (int32_t h = 0; h < H; ++h) {
          const std::span<const float> qh(&q[(size_t(r) * H + h) * hd], hd);
          const std::vector<double> ref = RefAttention(qh, caches.k.data(), caches.v.data(),
                                                       caches.layout, h / group, chunks, scale);
          want.insert(want.end(), ref.begin(), ref.end());
        }
        ASSERT_LT(MaxRelErr({&got[size_t(r) * H * hd], size_t(H) * hd}, want), kTolerance)
            << "trial " << trial << " row " << r << (row.causal ? " causal" : " chunks")
            << " position " << batch.positions[r] << " B " << spec.block_size << " G " << group
            << " tensor_cores " << tensor_cores;
      }
    }
  }
}

TEST(RopeWriteKv, RotatesQAndKAndWritesTheSlots) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(14);
  for (const auto& [hd, heads, kvh] : {std::tuple{64, 4, 2}, std::tuple{128, 32, 8}}) {
    const int32_t rows = 37, B = 16, pool = 8, width = (heads + 2 * kvh) * hd;
    // The 128 shape as LLaMA-3.1 (llama3 rope scaling) with Qwen2's q/k/v biases.
    ModelConfig config;
    config.head_dim = hd;
    config.rope_theta = hd == 64 ? 10000.0f : 500000.0f;
    if (hd == 128) config.rope_scaling = {RopeType::kLlama3, 8.0f, 1.0f, 4.0f, 8192};
    const std::vector<double> inv_freq = RopeInverseFrequencies(config);
    std::uniform_real_distribution<float> dist(-2, 2);
    std::vector<float> qkv(size_t(rows) * width), bias(hd == 128 ? width : 0);
    for (float& x : qkv) x = dist(rng);
    for (float& x : bias) x = dist(rng);
    std::vector<int32_t> positions(rows), slots(pool * B), kv_block(rows), kv_offset(rows);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    for (int32_t r = 0; r < rows; ++r) {
      positions[r] = static_cast<int32_t>(rng() % 100000);
      kv_block[r] = slots[r] / B;
      kv_offset[r] = slots[r] % B;
    }
    DeviceArray<float> qkv_dev(qkv), bias_dev(bias);
    DeviceArray<double> inv_freq_dev(inv_freq);
    DeviceArray<int32_t> pos_dev(positions), block_dev(kv_block), offset_dev(kv_offset);
    const KvLayout layout{kvh, B, hd};
    DeviceArray<uint16_t> q_out(size_t(rows) * heads * hd), k_cache(pool * layout.block_elems()),
        v_cache(pool * layout.block_elems());
    q_out.Poison();
    k_cache.Poison();
    v_cache.Poison();
    const gpu::RopeKvArgs args{qkv_dev.get(), pos_dev.get(), block_dev.get(), offset_dev.get(),
                               rows, heads, kvh, hd, B, inv_freq_dev.get(),
                               bias.empty() ? nullptr : bias_dev.get(), q_out.get(), k_cache.get(),
                               v_cache.get()};
    SyncOk(gpu::LaunchRopeWriteKv(args, nullptr));
    const std::vector<float> q = ToFloats(q_out.Download());
    const std::vector<uint16_t> k = k_cache.Download(), v = v_cache.Download();
    int64_t written = 0;
    for (int32_t r = 0; r < rows; ++r) {
      std::vector<double> row(width);  // with the bias, as the projection gives it
      for (int32_t j = 0; j < width; ++j) {
        row[j] = qkv[size_t(r) * width + j] + (bias.empty() ? 0.0f : bias[j]);
      }
      for (int32_t h = 0; h < heads + kvh; ++h) {
        const std::vector<double> want =
            RefRope({row.data() + h * hd, size_t(hd)}, positions[r], inv_freq);
        std::vector<float> head(hd);
        for (int32_t d = 0; d < hd; ++d) {
          head[d] = h < heads ? q[(size_t(r) * heads + h) * hd + d]
                              : Bf16ToFloat(k[layout.TileOffset(kv_block[r], h - heads) +
                                              kv_offset[r] * hd + d]);
        }
        EXPECT_LT(MaxRelErr(head, want), kTolerance) << "row " << r << " head " << h;
      }
      for (int32_t h = 0; h < kvh; ++h) {
        for (int32_t d = 0; d < hd; ++d) {
          const int32_t j = (heads + kvh + h) * hd + d;
          ASSERT_EQ(v[layout.TileOffset(kv_block[r], h) + kv_offset[r] * hd + d],
                    ToBf16(qkv[size_t(r) * width + j] + (bias.empty() ? 0.0f : bias[j])));
        }
      }
      written += 2 * kvh * hd;
    }
    int64_t untouched = 0;
    for (size_t i = 0; i < k.size(); ++i) untouched += (k[i] == 0xffff) + (v[i] == 0xffff);
    EXPECT_EQ(untouched, int64_t(2 * k.size()) - written);
  }
}

TEST(AddRmsNorm, AddsTheResidualAndNormalizes) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(15);
  std::uniform_real_distribution<float> dist(-3, 3);
  // 4098: the one-float kernel; 100 and 4096: four-float vectors held in registers; 20000: wider
  // than the registers hold, the rest read twice.
  for (int32_t hidden : {100, 4096, 4098, 20000}) {
    for (int variant = 0; variant < 8; ++variant) {
      const bool with_delta = variant & 1, with_map = variant & 2, write_back = variant & 4;
      const int32_t rows = 9, out_rows = with_map ? 4 : rows;
      std::vector<float> x(size_t(rows) * hidden), delta(x.size()), weight(hidden);
      for (float& v : x) v = dist(rng);
      for (float& v : delta) v = dist(rng);
      for (float& v : weight) v = 1.0f + 0.1f * dist(rng);
      const std::vector<int32_t> map = {7, 2, 8, 0};
      DeviceArray<float> x_dev(x), delta_dev(delta), weight_dev(weight);
      DeviceArray<int32_t> map_dev(map);
      DeviceArray<uint16_t> out(size_t(out_rows) * hidden);
      out.Poison();
      SyncOk(gpu::LaunchAddRmsNorm(x_dev.get(), with_delta ? delta_dev.get() : nullptr,
                                   weight_dev.get(), with_map ? map_dev.get() : nullptr, out_rows,
                                   hidden, 1e-5f, write_back, out.get(), nullptr));
      const std::vector<float> got = ToFloats(out.Download());
      const std::vector<float> x_after = x_dev.Download();
      std::vector<bool> mapped(rows, !with_map);
      for (int32_t i = 0; i < out_rows; ++i) {
        const int32_t r = with_map ? map[i] : i;
        mapped[r] = true;
        std::vector<float> y(hidden);
        for (int32_t j = 0; j < hidden; ++j) {
          y[j] = x[size_t(r) * hidden + j] + (with_delta ? delta[size_t(r) * hidden + j] : 0.0f);
          ASSERT_EQ(x_after[size_t(r) * hidden + j], write_back ? y[j] : x[size_t(r) * hidden + j]);
        }
        EXPECT_LT(MaxRelErr({&got[size_t(i) * hidden], size_t(hidden)}, RefRmsNorm(y, weight, 1e-5)),
                  kTolerance);
      }
      for (int32_t r = 0; r < rows; ++r) {
        if (mapped[r]) continue;
        for (int32_t j = 0; j < hidden; ++j) ASSERT_EQ(x_after[size_t(r) * hidden + j], x[size_t(r) * hidden + j]);
      }
    }
  }
}

TEST(Embedding, GathersRowsExactly) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(16);
  const int32_t vocab = 1000, hidden = 320, rows = 17;
  std::vector<float> table;
  DeviceArray<uint16_t> table_dev(RandomBf16(rng, size_t(vocab) * hidden, 1.0f, &table));
  std::vector<int32_t> tokens(rows);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % vocab);
  DeviceArray<int32_t> tokens_dev(tokens);
  DeviceArray<float> x(size_t(rows) * hidden);
  x.Poison();
  SyncOk(gpu::LaunchEmbedding(tokens_dev.get(), table_dev.get(), rows, hidden, x.get(), nullptr));
  const std::vector<float> got = x.Download();
  for (int32_t r = 0; r < rows; ++r) {
    for (int32_t j = 0; j < hidden; ++j) {
      ASSERT_EQ(got[size_t(r) * hidden + j], table[size_t(tokens[r]) * hidden + j]);
    }
  }
}

TEST(SiluMul, MatchesReference) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> dist(-6, 6);
  for (const int32_t inter : {11008, 1001}) {  // four-float vectors; one float at a time
    const int32_t rows = 5;
    std::vector<float> gate_up(size_t(rows) * 2 * inter);
    for (float& v : gate_up) v = dist(rng);
    DeviceArray<float> gate_up_dev(gate_up);
    DeviceArray<uint16_t> out(size_t(rows) * inter);
    out.Poison();
    SyncOk(gpu::LaunchSiluMul(gate_up_dev.get(), rows, inter, out.get(), nullptr));
    const std::vector<float> got = ToFloats(out.Download());
    for (int32_t r = 0; r < rows; ++r) {
      std::vector<double> want(inter);
      for (int32_t i = 0; i < inter; ++i) {
        const double g = gate_up[size_t(r) * 2 * inter + i], u = gate_up[size_t(r) * 2 * inter + inter + i];
        want[i] = g / (1.0 + std::exp(-g)) * u;
      }
      EXPECT_LT(MaxRelErr({&got[size_t(r) * inter], size_t(inter)}, want), kTolerance) << inter;
    }
  }
}

// The decode GEMM's inputs: w random bf16 [out][in]; x random bf16 [kDecodeGemmMaxRows][in],
// uploaded for a launch of `rows` rows with NaN in the rows past them (which must not be read);
// y with two rows more than the launch's, poisoned, which must stay so.
struct GemmInputs {
  int32_t out, in;
  std::vector<float> x, w;
  std::vector<uint16_t> x_bits;
  DeviceArray<uint16_t> w_dev, x_dev;
  DeviceArray<float> y;

  GemmInputs(std::mt19937& rng, int32_t out, int32_t in)
      : out(out),
        in(in),
        x_bits(RandomBf16(rng, size_t(gpu::kDecodeGemmMaxRows + 2) * in, 1.0f, &x)),
        w_dev(RandomBf16(rng, size_t(out) * in, 1.0f, &w)),
        x_dev(x_bits.size()),
        y(size_t(gpu::kDecodeGemmMaxRows + 2) * out) {}
  // x for a launch of `rows` rows, y poisoned.
  void Prepare(int32_t rows) {
    std::vector<uint16_t> bits = x_bits;
    std::fill(bits.begin() + size_t(rows) * in, bits.end(), uint16_t{0x7fc0});
    x_dev.Upload(bits);
    y.Poison();
  }
  gpu::DecodeGemmArgs Args(int32_t rows, int32_t splits, gpu::DecodeGemmKernel kernel) const {
    gpu::DecodeGemmArgs args{x_dev.get(), w_dev.get(), y.get(), rows, out, in};
    args.splits = splits;
    args.kernel = kernel;
    return args;
  }
};

// The columns a test checks: all of a small `out`; else both edges (partial tiles included)
// and every 37th.
std::vector<int32_t> CheckedColumns(int32_t out) {
  std::vector<int32_t> cols;
  for (int32_t c = 0; c < out; ++c) {
    if (out <= 1200 || c < 130 || c >= out - 130 || c % 37 == 0) cols.push_back(c);
  }
  return cols;
}

// y of the first `rows` rows against the reference (all kDecodeGemmMaxRows rows, `cols`) within
// 16 times a random walk of `in` fp32 roundings of the products' magnitude (a wrong fragment
// is off by about the whole sum, sqrt(in) times that magnitude / in); the two rows after
// still NaN.
void ExpectGemmMatches(const std::vector<float>& got, int32_t rows, int32_t out, int32_t in,
                       const std::vector<int32_t>& cols, const RefGemmResult& ref,
                       const std::string& what) {
  const double walk = 16 * std::sqrt(double(in)) * std::ldexp(1.0, -24);
  int bad = 0;
  for (int32_t r = 0; r < rows; ++r) {
    for (size_t i = 0; i < cols.size(); ++i) {
      const double want = ref.y[size_t(r) * cols.size() + i];
      const double bound = walk * ref.magnitude[size_t(r) * cols.size() + i] + 1e-30;
      const float value = got[size_t(r) * out + cols[i]];
      if (!(std::abs(value - want) <= bound) && ++bad <= 5) {
        ADD_FAILURE() << what << ": y[" << r << "][" << cols[i] << "] = " << value << ", want "
                      << want << " +- " << bound;
      }
    }
  }
  EXPECT_EQ(bad, 0) << what;
  for (size_t i = size_t(rows) * out; i < size_t(rows + 2) * out; ++i) {
    ASSERT_TRUE(std::isnan(got[i])) << what << ": y[" << i / out << "] past the rows was written";
  }
}

std::string GemmName(gpu::DecodeGemmKernel kernel, int32_t rows, int32_t out, int32_t in,
                     int32_t splits) {
  return std::string(kernel == gpu::DecodeGemmKernel::kTensorCores ? "tensor cores" : "cuda cores") +
         ", rows " + std::to_string(rows) + ", " + std::to_string(out) + "x" + std::to_string(in) +
         ", splits " + (splits > 0 ? std::to_string(splits) : "auto");
}

constexpr gpu::DecodeGemmKernel kGemmKernels[] = {gpu::DecodeGemmKernel::kTensorCores,
                                                  gpu::DecodeGemmKernel::kCudaCores};

// Every row tile count (1, 7: one tile; 16; 33: three; 64: four), LLaMA-7B's linear layers,
// odd and small shapes (partial tiles, partial stages, a stage of one piece), both variants, the
// splits DecodeGemmPlanFor chooses.
TEST(DecodeGemm, MatchesReferenceAtEveryRowCountAndShape) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(21);
  const std::pair<int32_t, int32_t> shapes[] = {
      {12288, 4096}, {4096, 4096}, {22016, 4096}, {4096, 11008}, {32000, 4096},  // LLaMA-7B
      {1001, 4096}, {4098, 4096}, {128, 64}, {1001, 200}, {257, 136}, {3, 8}, {130, 1032}};
  for (const auto& [out, in] : shapes) {
    GemmInputs g(rng, out, in);
    const std::vector<int32_t> cols = CheckedColumns(out);
    const RefGemmResult ref = RefGemm(g.x, g.w, gpu::kDecodeGemmMaxRows, in, cols);
    for (const int32_t rows : {1, 7, 16, 33, 64}) {
      for (const gpu::DecodeGemmKernel kernel : kGemmKernels) {
        g.Prepare(rows);
        SyncOk(gpu::LaunchDecodeGemm(g.Args(rows, 0, kernel), nullptr));
        ExpectGemmMatches(g.y.Download(), rows, out, in, cols, ref,
                          GemmName(kernel, rows, out, in, 0));
        if (HasFatalFailure()) return;
      }
    }
  }
}

// Split counts forced: one (no merge), uneven stage shares, clusters of odd and even sizes, the
// most a cluster holds (8; more are capped there).
TEST(DecodeGemm, MergesEverySplitCount) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(22);
  for (const auto& [out, in] : {std::pair{4096, 4096}, std::pair{1001, 1096}}) {
    GemmInputs g(rng, out, in);
    const std::vector<int32_t> cols = CheckedColumns(out);
    const RefGemmResult ref = RefGemm(g.x, g.w, gpu::kDecodeGemmMaxRows, in, cols);
    for (const int32_t rows : {1, 33, 64}) {
      for (const int32_t splits : {1, 2, 3, 5, 8, 16}) {
        for (const gpu::DecodeGemmKernel kernel : kGemmKernels) {
          g.Prepare(rows);
          SyncOk(gpu::LaunchDecodeGemm(g.Args(rows, splits, kernel), nullptr));
          ExpectGemmMatches(g.y.Download(), rows, out, in, cols, ref,
                            GemmName(kernel, rows, out, in, splits));
            if (HasFatalFailure()) return;
        }
      }
    }
  }
}

// Two launches give the same bits, whatever order the splits finish in; a launch with new x is
// right again (nothing of an earlier launch is kept); a captured graph replays to the same bits.
TEST(DecodeGemm, DeterministicAndReplayable) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(23);
  const int32_t out = 4096, in = 11008, rows = 64;
  GemmInputs g(rng, out, in);
  for (const int32_t splits : {0, 8}) {
    for (const gpu::DecodeGemmKernel kernel : kGemmKernels) {
      const std::string what = GemmName(kernel, rows, out, in, splits);
      g.Prepare(rows);
      SyncOk(gpu::LaunchDecodeGemm(g.Args(rows, splits, kernel), nullptr));
      const std::vector<float> first = g.y.Download();
      for (int i = 0; i < 3; ++i) {
        g.y.Poison();
        SyncOk(gpu::LaunchDecodeGemm(g.Args(rows, splits, kernel), nullptr));
        ASSERT_EQ(std::memcmp(g.y.Download().data(), first.data(), first.size() * 4), 0)
            << what << ": launch " << i + 2 << " differs from the first";
      }
      cudaStream_t stream = nullptr;
      ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
      cudaGraph_t graph = nullptr;
      cudaGraphExec_t exec = nullptr;
      ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
      ASSERT_EQ(gpu::LaunchDecodeGemm(g.Args(rows, splits, kernel), stream), cudaSuccess);
      ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
      ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
      for (int i = 0; i < 3; ++i) {
        g.y.Poison();
        SyncOk(cudaGraphLaunch(exec, stream));
        ASSERT_EQ(std::memcmp(g.y.Download().data(), first.data(), first.size() * 4), 0)
            << what << ": graph replay " << i + 1 << " differs from the eager launch";
      }
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
      cudaStreamDestroy(stream);
    }
  }
  // New x after those launches: right again.
  std::vector<float> x;
  g.x_bits = RandomBf16(rng, g.x_bits.size(), 1.0f, &x);
  g.x = x;
  const std::vector<int32_t> cols = CheckedColumns(out);
  const RefGemmResult ref = RefGemm(g.x, g.w, gpu::kDecodeGemmMaxRows, in, cols);
  for (const gpu::DecodeGemmKernel kernel : kGemmKernels) {
    g.Prepare(rows);
    SyncOk(gpu::LaunchDecodeGemm(g.Args(rows, 0, kernel), nullptr));
    ExpectGemmMatches(g.y.Download(), rows, out, in, cols, ref,
                      GemmName(kernel, rows, out, in, 0) + ", new x");
  }
}

// Launched early behind a kernel that writes x 50 us after it let them launch, the decode GEMM
// (its weight stages copied before its wait), AddRmsNorm and SiluMul compute what they compute
// from x launched plainly: each waits for the kernel ahead before it reads x.
TEST(EarlyLaunch, KernelsWaitForTheKernelAheadsOutput) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(24);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  // x arrives late from `ready` into `input` (NaN until then).
  auto late_input = [&](const void* ready, void* input, size_t bytes) {
    ASSERT_EQ(cudaMemsetAsync(input, 0xff, bytes, stream), cudaSuccess);
    const testing::LateCopy copy{ready, input, bytes};
    ASSERT_EQ(testing::LaunchLateCopies(&copy, 1, 50, stream), cudaSuccess);
  };
  for (const int32_t rows : {1, 64}) {
    for (const int32_t splits : {0, 1}) {
      GemmInputs g(rng, 4096, 4096);
      g.Prepare(rows);
      SyncOk(gpu::LaunchDecodeGemm(g.Args(rows, splits, gpu::DecodeGemmKernel::kTensorCores), stream));
      const std::vector<float> plain = g.y.Download();
      DeviceArray<uint16_t> ready(g.x_bits.size());
      ASSERT_EQ(cudaMemcpy(ready.get(), g.x_dev.get(), ready.size() * 2, cudaMemcpyDeviceToDevice),
                cudaSuccess);
      g.y.Poison();
      late_input(ready.get(), g.x_dev.get(), ready.size() * 2);
      gpu::DecodeGemmArgs args = g.Args(rows, splits, gpu::DecodeGemmKernel::kTensorCores);
      args.early_launch = true;
      SyncOk(gpu::LaunchDecodeGemm(args, stream));
      ASSERT_EQ(std::memcmp(g.y.Download().data(), plain.data(), plain.size() * 4), 0)
          << "decode GEMM, rows " << rows << ", splits " << splits;
    }
  }
  const int32_t rows = 64, hidden = 4096, inter = 11008;
  std::uniform_real_distribution<float> dist(-3, 3);
  std::vector<float> x(size_t(rows) * hidden), weight(hidden), gate_up(size_t(rows) * 2 * inter);
  for (std::vector<float>* v : {&x, &weight, &gate_up}) {
    for (float& e : *v) e = dist(rng);
  }
  DeviceArray<float> x_ready(x), x_in(x.size()), weight_dev(weight), gate_up_ready(gate_up),
      gate_up_in(gate_up.size());
  DeviceArray<uint16_t> normed(x.size()), act(size_t(rows) * inter);
  SyncOk(gpu::LaunchAddRmsNorm(x_ready.get(), nullptr, weight_dev.get(), nullptr, rows, hidden,
                               1e-5f, false, normed.get(), stream));
  SyncOk(gpu::LaunchSiluMul(gate_up_ready.get(), rows, inter, act.get(), stream));
  const std::vector<uint16_t> normed_plain = normed.Download(), act_plain = act.Download();
  normed.Poison();
  act.Poison();
  late_input(x_ready.get(), x_in.get(), x.size() * 4);
  SyncOk(gpu::LaunchAddRmsNorm(x_in.get(), nullptr, weight_dev.get(), nullptr, rows, hidden, 1e-5f,
                               false, normed.get(), stream, true));
  late_input(gate_up_ready.get(), gate_up_in.get(), gate_up.size() * 4);
  SyncOk(gpu::LaunchSiluMul(gate_up_in.get(), rows, inter, act.get(), stream, true));
  EXPECT_EQ(normed.Download(), normed_plain) << "AddRmsNorm";
  EXPECT_EQ(act.Download(), act_plain) << "SiluMul";
  cudaStreamDestroy(stream);
}

TEST(DecodeGemm, RefusesWhatItDoesNotTake) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(24);
  GemmInputs g(rng, 256, 1024);
  g.Prepare(16);
  gpu::DecodeGemmArgs args = g.Args(65, 0, gpu::DecodeGemmKernel::kTensorCores);
  EXPECT_EQ(gpu::LaunchDecodeGemm(args, nullptr), cudaErrorInvalidValue);  // too many rows
  args = g.Args(16, 0, gpu::DecodeGemmKernel::kTensorCores);
  args.in = 60;  // not whole 16-byte pieces
  EXPECT_EQ(gpu::LaunchDecodeGemm(args, nullptr), cudaErrorInvalidValue);
  args = g.Args(16, 0, gpu::DecodeGemmKernel::kTensorCores);
  args.x = g.x_dev.get() + 1;  // not 16-byte aligned
  EXPECT_EQ(gpu::LaunchDecodeGemm(args, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// Runs the sampling kernel on rows of logits with their parameters; returns the tokens.
std::vector<int32_t> SampleOnGpu(const std::vector<float>& logits, int32_t vocab,
                                 const std::vector<gpu::SampleEntry>& params) {
  const int32_t rows = static_cast<int32_t>(params.size());
  DeviceArray<float> logits_dev(logits), probs(logits.size());
  DeviceArray<gpu::SampleEntry> params_dev(params);
  DeviceArray<int32_t> tokens(rows);
  tokens.Poison();
  SyncOk(gpu::LaunchSample(logits_dev.get(), rows, vocab, params_dev.get(), probs.get(),
                           tokens.get(), nullptr));
  return tokens.Download();
}

gpu::SampleEntry Entry(const SamplingParams& p, uint64_t index, bool active = true) {
  return {p.temperature, p.top_k, p.top_p, active, p.seed, index};
}

// Random logits, or logits on a few levels so that ties fall on the top-k and top-p cuts.
std::vector<float> RandomLogits(std::mt19937& rng, int32_t vocab, bool tied) {
  std::normal_distribution<float> dist(0, 3);
  std::vector<float> logits(vocab);
  for (float& x : logits) x = tied ? std::round(dist(rng)) : dist(rng);
  return logits;
}

TEST(Sample, GreedyIsTheCpuArgmaxWithTiesToTheLowestId) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(18);
  for (int32_t vocab : {320, 32000, 128256}) {
    const int32_t rows = 16;
    std::vector<float> logits;
    std::vector<gpu::SampleEntry> params;
    for (int32_t r = 0; r < rows; ++r) {
      std::vector<float> row = RandomLogits(rng, vocab, r % 2 == 1);  // odd rows: tied maxima
      logits.insert(logits.end(), row.begin(), row.end());
      SamplingParams p;
      p.temperature = r % 4 == 0 ? 0.7f : 0.0f;
      p.top_k = r % 4 == 0 ? 1 : 0;
      params.push_back(Entry(p, r));
    }
    params[3].active = 0;
    const std::vector<int32_t> got = SampleOnGpu(logits, vocab, params);
    Sampler cpu;
    for (int32_t r = 0; r < rows; ++r) {
      if (!params[r].active) {
        EXPECT_EQ(got[r], -1);
        continue;
      }
      SamplingParams p;
      p.temperature = params[r].temperature;
      p.top_k = params[r].top_k;
      EXPECT_EQ(got[r], cpu.Sample({&logits[size_t(r) * vocab], size_t(vocab)}, p, r)) << r;
    }
  }
}

// The drawn token is a kept token whose id-order cumulative interval holds u * kept mass.
TEST(Sample, DrawsFromTheCpuSamplersKeptSet) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(19);
  for (int32_t vocab : {320, 32000}) {
    const int32_t rows = 300;
    std::vector<float> logits;
    std::vector<gpu::SampleEntry> params;
    std::vector<SamplingParams> cpu_params;
    for (int32_t r = 0; r < rows; ++r) {
      std::vector<float> row = RandomLogits(rng, vocab, r % 3 == 0);
      logits.insert(logits.end(), row.begin(), row.end());
      SamplingParams p;
      p.temperature = std::vector<float>{0.3f, 0.8f, 1.0f, 1.7f}[rng() % 4];
      p.top_k = std::vector<int32_t>{0, 2, 5, 40, vocab + 7}[rng() % 5];
      p.top_p = std::vector<float>{1.0f, 0.95f, 0.6f, 0.1f, 0.0f}[rng() % 5];
      p.seed = rng();
      cpu_params.push_back(p);
      params.push_back(Entry(p, rng() % 100000));
    }
    const std::vector<int32_t> got = SampleOnGpu(logits, vocab, params);
    EXPECT_EQ(SampleOnGpu(logits, vocab, params), got) << "sampling is not deterministic";
    for (int32_t r = 0; r < rows; ++r) {
      const RefDraw ref = RefSample({&logits[size_t(r) * vocab], size_t(vocab)}, cpu_params[r],
                                    params[r].index);
      const auto it = std::find(ref.kept.begin(), ref.kept.end(), got[r]);
      ASSERT_NE(it, ref.kept.end()) << "row " << r << ": token " << got[r] << " is not kept";
      const size_t i = it - ref.kept.begin();
      double before = 0, total = 0;
      for (size_t j = 0; j < ref.kept.size(); ++j) {
        if (j < i) before += ref.kept_probs[j];
        total += ref.kept_probs[j];
      }
      const double slack = 1e-9 * total;
      EXPECT_LE(before, ref.target + slack) << "row " << r;
      EXPECT_GT(before + ref.kept_probs[i], ref.target - slack) << "row " << r;
    }
  }
}

// Many draws of one row follow the softmax: the GPU's frequencies and the CPU sampler's agree.
TEST(Sample, FrequenciesFollowTheDistribution) {
  SPANSERVE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(20);
  const int32_t vocab = 64, draws = 20000;
  const std::vector<float> row = RandomLogits(rng, vocab, false);
  SamplingParams p;
  p.temperature = 2.0f;
  p.top_k = 20;
  p.top_p = 0.9f;
  p.seed = 99;
  std::vector<float> logits;
  std::vector<gpu::SampleEntry> params;
  for (int32_t i = 0; i < draws; ++i) {
    logits.insert(logits.end(), row.begin(), row.end());
    params.push_back(Entry(p, i));
  }
  const std::vector<int32_t> got = SampleOnGpu(logits, vocab, params);
  std::map<int32_t, int> gpu_counts, cpu_counts;
  Sampler cpu;
  for (int32_t i = 0; i < draws; ++i) {
    ++gpu_counts[got[i]];
    ++cpu_counts[cpu.Sample(row, p, i)];
  }
  for (const auto& [token, count] : cpu_counts) {
    const double expected = count, sigma = std::sqrt(expected) + 1;
    EXPECT_NEAR(gpu_counts[token], expected, 6 * sigma) << "token " << token;
  }
  for (const auto& [token, count] : gpu_counts) EXPECT_TRUE(cpu_counts.count(token)) << token;
}

}  // namespace
}  // namespace spanserve::testing
