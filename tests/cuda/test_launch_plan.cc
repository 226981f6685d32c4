// The CUDA backend's launch metadata, on the CPU: split assignment, the decode kernel's pass
// geometry, the graph buckets, and the packed blob of a step read back against its batch.
#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "engine/backends/cuda_step_plan.h"
#include "gtest/gtest.h"
#include "kernels/decode_geometry.h"
#include "kernels/decode_gemm_layout.h"
#include "kernels/launch_plan.h"
#include "tests/cuda/random_batch.h"

namespace spanserve::gpu {
namespace {

using testing::RandomBatch;
using testing::RandomBatchSpec;
using testing::RandomRanges;

std::vector<KvChunk> RandomRowChunks(std::mt19937& rng, int32_t block_size, int32_t len) {
  std::vector<int32_t> table((len + block_size - 1) / block_size);
  for (int32_t& b : table) b = static_cast<int32_t>(rng() % 10000);
  std::vector<KvChunk> chunks;
  AppendRangeChunks(RandomRanges(rng, len), table, block_size, &chunks);
  return chunks;
}

int64_t Cost(std::span<const KvChunk> chunks) {
  int64_t cost = 0;
  for (const KvChunk& c : chunks) cost += c.end - c.begin + kChunkCost;
  return cost;
}

int64_t LargestCost(std::span<const KvChunk> chunks) {
  int64_t largest = 0;
  for (const KvChunk& c : chunks) largest = std::max(largest, Cost({&c, 1}));
  return largest;
}

TEST(SplitChunks, CoversTheRowInOrderWithBalancedSplits) {
  std::mt19937 rng(1);
  for (int trial = 0; trial < 500; ++trial) {
    const int32_t B = 1 << (rng() % 9);
    const std::vector<KvChunk> chunks = RandomRowChunks(rng, B, 1 + rng() % 5000);
    const int32_t n = static_cast<int32_t>(chunks.size());
    for (int32_t max_splits : {1, 2, 7, kMaxSplits}) {
      for (int32_t min_tokens : {1, 64, 128}) {
        std::vector<int32_t> bounds(max_splits + 1, -1);
        SplitChunks(chunks, max_splits, min_tokens, 7, bounds.data());
        ASSERT_EQ(bounds.front(), 7);
        ASSERT_EQ(bounds.back(), 7 + n);
        for (int32_t s = 0; s < max_splits; ++s) ASSERT_LE(bounds[s], bounds[s + 1]);
        const int64_t total = Cost(chunks);
        const int64_t wanted = std::clamp<int64_t>((total + min_tokens - 1) / min_tokens, 1, max_splits);
        const int64_t largest_chunk = LargestCost(chunks);
        int32_t used = 0;
        for (int32_t s = 0; s < max_splits; ++s) {
          const std::span<const KvChunk> part(chunks.data() + bounds[s] - 7, bounds[s + 1] - bounds[s]);
          used += !part.empty();
          // No split holds much more than its share.
          EXPECT_LE(Cost(part), (total + wanted - 1) / wanted + largest_chunk) << trial;
        }
        EXPECT_LE(used, wanted);
      }
    }
  }
}

// Split 0 takes the lead share (to within a chunk), the others share the rest as even splits
// of it would; a rest under min_split_tokens stays in split 0.
TEST(SplitChunks, LeadSplitTakesItsShareAndTheOthersTheRest) {
  std::mt19937 rng(2);
  for (int trial = 0; trial < 500; ++trial) {
    const int32_t B = 1 << (rng() % 9);
    const std::vector<KvChunk> chunks = RandomRowChunks(rng, B, 1 + rng() % 5000);
    const int32_t n = static_cast<int32_t>(chunks.size());
    const int64_t total = Cost(chunks);
    const int64_t largest_chunk = LargestCost(chunks);
    for (int32_t max_splits : {2, 5, kMaxSplits}) {
      for (int32_t lead : {50, 80, 95}) {
        for (int32_t min_tokens : {1, 128}) {
          std::vector<int32_t> bounds(max_splits + 1, -1), rest(max_splits, -1);
          SplitChunks(chunks, max_splits, min_tokens, 7, bounds.data(), lead);
          ASSERT_EQ(bounds.front(), 7);
          ASSERT_EQ(bounds.back(), 7 + n);
          for (int32_t s = 0; s < max_splits; ++s) ASSERT_LE(bounds[s], bounds[s + 1]);
          const int64_t first = Cost({chunks.data(), size_t(bounds[1] - 7)});
          if (first == total) {  // all in split 0: the rest of a lead share was too small
            EXPECT_LT(total - (total * lead + 99) / 100, min_tokens + largest_chunk) << trial;
            continue;
          }
          EXPECT_GE(first * 100, total * lead) << trial;
          EXPECT_LT((first - largest_chunk) * 100, total * lead) << trial;
          const int32_t k = bounds[1] - 7;
          SplitChunks({chunks.data() + k, size_t(n - k)}, max_splits - 1, min_tokens, bounds[1],
                      rest.data());
          EXPECT_TRUE(std::equal(rest.begin(), rest.end(), bounds.begin() + 1)) << trial;
        }
      }
    }
  }
}

// A lead layout only for the CUDA-core kernel where even splitting gives one wave of one split
// a row (and over several waves when asked); elsewhere SplitsFor and MinSplitTokensFor.
TEST(SplitLayoutFor, LeadsOneWaveOfOneSplitCudaCoreRowsOnly) {
  for (int32_t rows = 1; rows <= 256; ++rows) {
    for (const auto& [kv, group] : {std::pair{32, 1}, std::pair{16, 2}, std::pair{8, 4}}) {
      const int32_t even = SplitsFor(rows, kv, group, 128, 132);
      const int32_t even_tokens = MinSplitTokensFor(rows, kv, group, 128, 132);
      const bool one_wave = int64_t{rows} * kv <= int64_t{DecodeCtasPerSm(DecodeKernel::kAuto, 128, group)} * 132;
      const bool cuda_cores = group < 4;
      for (const bool multi_wave : {false, true}) {
        const SplitLayout off = SplitLayoutFor(rows, kv, group, 128, 132, DecodeKernel::kAuto,
                                               {0, 4, 512, multi_wave});
        EXPECT_EQ(off.splits, even);
        EXPECT_EQ(off.min_split_tokens, even_tokens);
        EXPECT_EQ(off.lead_percent, 0);
        const SplitLayout on = SplitLayoutFor(rows, kv, group, 128, 132, DecodeKernel::kAuto,
                                              {85, 4, 512, multi_wave});
        if (cuda_cores && (one_wave ? even == 1 : multi_wave)) {
          EXPECT_EQ(on.splits, 5) << rows;
          EXPECT_EQ(on.min_split_tokens, 512);
          EXPECT_EQ(on.lead_percent, 85);
        } else {
          EXPECT_EQ(on.splits, even) << rows;
          EXPECT_EQ(on.min_split_tokens, even_tokens);
          EXPECT_EQ(on.lead_percent, 0);
        }
      }
    }
  }
  // LLaMA-7B batch 16 (512 CUDA-core CTAs), not LLaMA-3-8B batch 16 (128 tensor-core CTAs) or
  // batch 1 (16 even splits).
  EXPECT_EQ(SplitLayoutFor(16, 32, 1, 128, 132).lead_percent, 85);
  EXPECT_EQ(SplitLayoutFor(16, 8, 4, 128, 132).lead_percent, 0);
  EXPECT_EQ(SplitLayoutFor(1, 32, 1, 128, 132).lead_percent, 0);
  EXPECT_EQ(MaxRowSplits(16, 32, 1, 128, 132), 16 * 5);
}

// Room for ceil(ctas / SMs) CTAs a SM and not one more, unless the kernel's own shared memory
// already allows no more (or the device's per-CTA limit does not allow the padding).
TEST(EvenPlacementSmem, LeavesRoomForAnEvenPlacementOnly) {
  const SmLimits h100{132, 233472, 1024, 232448};
  auto fits = [&](int64_t smem) { return h100.smem_per_sm / (smem + h100.reserved_smem_per_cta); };
  for (const int32_t kernel_smem : {0, 16 * 1024, 48 * 1024, 96 * 1024, 150 * 1024}) {
    for (const int64_t ctas : {1, 8, 128, 132, 133, 200, 264, 265, 396, 512, 528, 2048}) {
      const int32_t smem = EvenPlacementSmem(kernel_smem, ctas, h100);
      const int64_t per_sm = (ctas + 131) / 132;
      EXPECT_GE(smem, kernel_smem);
      EXPECT_LE(smem, h100.max_smem_per_cta);
      EXPECT_EQ(smem % 16, 0);
      if (fits(kernel_smem) <= per_sm) {
        EXPECT_EQ(smem, kernel_smem) << kernel_smem << " " << ctas;
      } else {
        EXPECT_EQ(fits(smem), per_sm) << kernel_smem << " " << ctas;
      }
    }
  }
  // The tensor-core kernel (96 KiB) at LLaMA-3-8B batch 16 (128 CTAs): one a SM.
  EXPECT_EQ(fits(EvenPlacementSmem(96 * 1024, 128, h100)), 1);
  EXPECT_EQ(EvenPlacementSmem(96 * 1024, 128, SmLimits{}), 96 * 1024);  // limits unknown
}

TEST(FillSplitHeads, EarlyEntriesEndAtTheFirstWrittenBlock) {
  std::vector<ChunkEntry> chunks;
  for (int32_t b = 10; b < 22; ++b) chunks.push_back({b, 0 | (16 << 16)});
  const int32_t bounds[] = {0, 3, 12, 12};  // 3 entries, 9, and an empty split
  SplitHead heads[3];
  const std::vector<int32_t> kv_block = {17, 12, 17, 30};
  const WrittenBlockSet written(kv_block);
  FillSplitHeads(bounds, 3, chunks.data(), 5, written, heads);
  EXPECT_EQ(heads[0].early_entries, 2);  // block 12
  EXPECT_EQ(heads[1].early_entries, 4);  // block 17, entry 7
  EXPECT_EQ(heads[2].early_entries, kSplitHeadEntries);
  const std::vector<int32_t> only_30 = {30};
  FillSplitHeads(bounds, 3, chunks.data(), 5, WrittenBlockSet(only_30), heads);
  // Entries past a split's end read nothing: they count as early.
  for (const SplitHead& h : heads) EXPECT_EQ(h.early_entries, kSplitHeadEntries);
}

TEST(WrittenBlockSet, HoldsExactlyTheWrittenBlocks) {
  const std::vector<int32_t> kv_block = {17, 12, 17, 30, 0, 64, 63};
  const WrittenBlockSet written(kv_block);
  for (int32_t b = -3; b < 200; ++b) {
    EXPECT_EQ(written.contains(b), std::count(kv_block.begin(), kv_block.end(), b) > 0) << b;
  }
  EXPECT_FALSE(WrittenBlockSet(std::vector<int32_t>{}).contains(0));
  EXPECT_FALSE(written.contains(std::numeric_limits<int32_t>::max()));
}

TEST(SplitChunks, EmptyRowHasEmptySplits) {
  std::vector<int32_t> bounds(5, -1);
  SplitChunks({}, 4, 128, 3, bounds.data());
  for (int32_t b : bounds) EXPECT_EQ(b, 3);
}

TEST(SplitsFor, FillTheSmsOnceOrEvenTheLastWave) {
  for (DecodeKernel kernel : {DecodeKernel::kAuto, DecodeKernel::kCudaCores, DecodeKernel::kTensorCores}) {
    for (int32_t hd : {64, 128}) {
      for (int32_t group : {1, 2, 4, 8}) {
        const int64_t fill = int64_t{DecodeCtasToFill(kernel, hd, group)} * 132;
        const int64_t slots = int64_t{DecodeCtasPerSm(kernel, hd, group)} * 132;
        ASSERT_LE(DecodeCtasToFill(kernel, hd, group), DecodeCtasPerSm(kernel, hd, group));
        for (int32_t rows : {1, 2, 16, 24, 40, 48, 64, 256, 2048}) {
          for (int32_t kv : {1, 8, 32}) {
            const int64_t ctas = int64_t{rows} * kv;
            const int32_t s = SplitsFor(rows, kv, group, hd, 132, kernel);
            const int32_t min_tokens = MinSplitTokensFor(rows, kv, group, hd, 132, kernel);
            ASSERT_GE(s, 1);
            ASSERT_LE(s, kMaxSplits);
            if (ctas <= slots) {  // one wave: the most splits within `fill` CTAs
              if (s > 1) EXPECT_LE(ctas * s, fill);
              if (s < kMaxSplits) EXPECT_GT(ctas * (s + 1), fill);
              EXPECT_EQ(min_tokens, kMinSplitTokens);
              continue;
            }
            // Several waves: the fewest of 1, 2, 4, 8 whose last wave is >= 90% full, from 4 for
            // the CUDA-core kernel at 2.5 waves or more.
            const bool from4 = ResolveDecodeKernel(kernel, group) == DecodeKernel::kCudaCores &&
                               2 * ctas >= 5 * slots;
            auto last_wave_full = [&](int32_t n) {
              const int64_t waves = (ctas * n + slots - 1) / slots;
              return 10 * ctas * n >= 9 * waves * slots;
            };
            EXPECT_TRUE(s == 1 || s == 2 || s == 4 || s == 8) << s;
            EXPECT_TRUE(last_wave_full(s) || s == 8) << rows << " x " << kv << ": " << s;
            if (from4) EXPECT_GE(s, 4);
            for (int32_t fewer = from4 ? 4 : 1; fewer < s; fewer *= 2) {
              EXPECT_FALSE(last_wave_full(fewer));
            }
            EXPECT_EQ(min_tokens, kMinWaveSplitTokens);
          }
        }
      }
    }
  }
  // Several waves (H100, 132 SMs): LLaMA-3-8B batch 40 is 1.2 waves of 264 tensor-core CTAs,
  // batch 48 1.45, batch 64 1.94; LLaMA-7B batch 24 1.45 waves of 528 CUDA-core CTAs.
  EXPECT_EQ(SplitsFor(40, 8, 4, 128, 132), 4);
  EXPECT_EQ(SplitsFor(48, 8, 4, 128, 132), 2);
  EXPECT_EQ(SplitsFor(24, 32, 1, 128, 132), 2);
  EXPECT_EQ(SplitsFor(32, 32, 1, 128, 132), 1);   // 1.94 waves
  EXPECT_EQ(SplitsFor(64, 32, 1, 128, 132), 4);   // 3.9 waves of CUDA-core CTAs
  EXPECT_EQ(SplitsFor(128, 8, 4, 128, 132), 1);   // 3.9 waves of tensor-core CTAs
  EXPECT_EQ(MinSplitTokensFor(40, 8, 4, 128, 132), kMinWaveSplitTokens);
  EXPECT_EQ(MinSplitTokensFor(16, 8, 4, 128, 132), kMinSplitTokens);
  // Tensor cores (kAuto's choice for groups of 4), one CTA a SM at head dim 128: LLaMA-3-8B.
  EXPECT_EQ(SplitsFor(16, 8, 4, 128, 132), 1);   // 128 CTAs on 132 SMs
  EXPECT_EQ(SplitsFor(1, 8, 4, 128, 132), 16);
  EXPECT_EQ(SplitsFor(64, 8, 4, 128, 132), 1);
  // CUDA cores, two CTAs a SM.
  EXPECT_EQ(SplitsFor(16, 8, 4, 128, 132, DecodeKernel::kCudaCores), 2);
  EXPECT_EQ(SplitsFor(1, 32, 1, 128, 132), 8);   // LLaMA-7B, batch 1
  EXPECT_EQ(SplitsFor(1, 1, 1, 64, 132), kMaxSplits);
}

TEST(DecodeGemmPlanFor, HalfTheSmsWithSplitsOfSeveralStages) {
  // LLaMA-7B's linear layers on an H100 (132 SMs): the counts measured fastest there.
  struct Case {
    int32_t out, in, tiles, splits;
  };
  for (const Case& c : {Case{12288, 4096, 96, 1}, Case{4096, 4096, 32, 2},
                        Case{22016, 4096, 172, 1}, Case{4096, 11008, 32, 2},
                        Case{32000, 4096, 250, 1}}) {
    const DecodeGemmPlan plan = DecodeGemmPlanFor(c.out, c.in, 132);
    EXPECT_EQ(plan.tiles, c.tiles) << c.out << "x" << c.in;
    EXPECT_EQ(plan.splits, c.splits) << c.out << "x" << c.in;
    EXPECT_TRUE(plan.splits == 1 || 2 * int64_t{plan.tiles} * plan.splits <= 132);
  }
  for (int32_t out : {1, 100, 1001, 4098, 128256}) {
    for (int32_t in : {8, 64, 200, 256, 4096, 11008, 14336}) {
      for (int32_t sms : {1, 16, 132}) {
        const DecodeGemmPlan plan = DecodeGemmPlanFor(out, in, sms);
        ASSERT_EQ(plan.k_blocks, (in + kDecodeGemmTileK - 1) / kDecodeGemmTileK);
        ASSERT_GE(plan.splits, 1);
        ASSERT_LE(plan.splits, kDecodeGemmMaxSplits);
        // Every split has stages, and several unless there is one split.
        ASSERT_TRUE(plan.splits == 1 || plan.k_blocks / plan.splits >= kDecodeGemmMinSplitBlocks)
            << out << "x" << in << " at " << sms << " SMs";
        ASSERT_TRUE(plan.splits == 1 || 2 * int64_t{plan.tiles} * plan.splits <= sms);
      }
    }
  }
  // A forced count, capped by the stages.
  EXPECT_EQ(DecodeGemmPlanFor(4096, 4096, 132, 3).splits, 3);
  EXPECT_EQ(DecodeGemmPlanFor(4096, 128, 132, 16).splits, 2);
  // At most a cluster's CTAs (the splits of a tile merge in one cluster).
  EXPECT_EQ(DecodeGemmPlanFor(4096, 4096, 132, 16).splits, kDecodeGemmMaxSplits);
}

TEST(DecodeGemmTakes, DecodeRowsAndWholeCopies) {
  EXPECT_TRUE(DecodeGemmTakes(1, 12288, 4096));
  EXPECT_TRUE(DecodeGemmTakes(64, 1001, 4096));
  EXPECT_TRUE(DecodeGemmTakes(7, 128256, 8));
  EXPECT_FALSE(DecodeGemmTakes(0, 4096, 4096));
  EXPECT_FALSE(DecodeGemmTakes(65, 4096, 4096));
  EXPECT_FALSE(DecodeGemmTakes(16, 4096, 4100));  // not whole 16-byte copies
  EXPECT_FALSE(DecodeGemmTakes(16, 0, 4096));
  EXPECT_TRUE(DecodeGemmTakes(16, 4096 * kDecodeGemmTileCols + 1, 4096));  // no tile limit
}

// The decode GEMM's fragment index math, replayed on the CPU through the PTX ISA's layouts:
// a stage's copies into the swizzled tiles, ldmatrix.x4 from the lanes' row addresses (lane l
// receives row l / 4, elements 2 (l % 4) and + 1, of matrix j, whose row r is at the address
// lane 8j + r gives), and what mma.m16n8k16 (bf16, row.col) expects in each register.
namespace decode_gemm_check {

using namespace decode_gemm;  // NOLINT

// Tile element (row, k) encoded as its own value, so that a register says where it came from.
uint16_t Code(int row, int k) { return static_cast<uint16_t>(row * kTileK + k); }

// A [rows][kTileK] tile as the kernel's copies leave it in shared memory; every piece once.
std::vector<uint16_t> FillTile(int rows) {
  std::vector<uint16_t> smem(size_t(rows) * kTileK, 0xffff);
  std::vector<int> writes(size_t(rows) * kRowPieces, 0);
  for (int i = 0; i < rows * kRowPieces / kThreads; ++i) {
    for (int t = 0; t < kThreads; ++t) {
      const int row = CopyRow(i, t), piece = CopyPiece(t);
      ++writes[size_t(row) * kRowPieces + piece];
      for (int e = 0; e < 8; ++e) smem[Swizzled(row, piece) + e] = Code(row, piece * 8 + e);
    }
  }
  for (int n : writes) EXPECT_EQ(n, 1);
  return smem;
}

// The two bf16 of register j of every lane after ldmatrix.x4, from element offsets by lane.
struct Regs {
  uint16_t lo[32][4], hi[32][4];
};
Regs LdMatrixX4(const std::vector<uint16_t>& smem, const int (&offset)[32]) {
  Regs r;
  for (int lane = 0; lane < 32; ++lane) {
    for (int j = 0; j < 4; ++j) {
      const int row_start = offset[8 * j + lane / 4];
      r.lo[lane][j] = smem[row_start + 2 * (lane % 4)];
      r.hi[lane][j] = smem[row_start + 2 * (lane % 4) + 1];
    }
  }
  return r;
}

// 8 lanes of one ldmatrix phase (or 8 threads of one copy) hit 8 different 16-byte bank groups.
void ExpectConflictFree(const int* offsets, int count) {
  std::set<int> groups;
  for (int i = 0; i < count; ++i) groups.insert((offsets[i] * 2 / 16) % 8);
  EXPECT_EQ(groups.size(), size_t(count));
}

}  // namespace decode_gemm_check

TEST(DecodeGemmLayout, LdmatrixGivesTheMmaFragments) {
  using namespace decode_gemm;  // NOLINT
  using namespace decode_gemm_check;  // NOLINT
  const std::vector<uint16_t> w = FillTile(kTileCols), x = FillTile(64);
  for (int warp = 0; warp < kWarps; ++warp) {
    for (int ks = 0; ks < kKSteps; ++ks) {
      // B: w rows are n, k along the row; registers b0 = (k 2t, 2t + 1; n g), b1 = k + 8.
      for (int np = 0; np < kColTiles / 2; ++np) {
        int offset[32];
        for (int lane = 0; lane < 32; ++lane) {
          offset[lane] = Swizzled(warp * kWarpCols + BRow(lane) + 16 * np, 2 * ks + BPiece(lane));
        }
        for (int phase = 0; phase < 4; ++phase) ExpectConflictFree(offset + 8 * phase, 8);
        const Regs r = LdMatrixX4(w, offset);
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane / 4, t = lane % 4;
          for (int j = 0; j < 4; ++j) {
            const int nt = 2 * np + j / 2;  // registers 0, 1: n tile 2np; 2, 3: 2np + 1
            const int n = warp * kWarpCols + nt * 8 + g, k = 16 * ks + 2 * t + 8 * (j % 2);
            ASSERT_EQ(r.lo[lane][j], Code(n, k)) << "B warp " << warp << " lane " << lane << " reg " << j;
            ASSERT_EQ(r.hi[lane][j], Code(n, k + 1)) << "B warp " << warp << " lane " << lane;
          }
        }
      }
      // A: x rows; a0 = (row g, k 2t, 2t + 1), a1 = row g + 8, a2 = k + 8, a3 = both.
      for (int mt = 0; mt < 4; ++mt) {
        int offset[32];
        for (int lane = 0; lane < 32; ++lane) {
          offset[lane] = Swizzled(16 * mt + ARow(lane), 2 * ks + APiece(lane));
        }
        for (int phase = 0; phase < 4; ++phase) ExpectConflictFree(offset + 8 * phase, 8);
        const Regs r = LdMatrixX4(x, offset);
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane / 4, t = lane % 4;
          for (int j = 0; j < 4; ++j) {
            const int row = 16 * mt + g + 8 * (j % 2), k = 16 * ks + 2 * t + 8 * (j / 2);
            ASSERT_EQ(r.lo[lane][j], Code(row, k)) << "A lane " << lane << " reg " << j;
            ASSERT_EQ(r.hi[lane][j], Code(row, k + 1)) << "A lane " << lane << " reg " << j;
          }
        }
      }
    }
  }
  // C: c0, c1 = (row g, columns 2t, 2t + 1), c2, c3 = row g + 8.
  for (int lane = 0; lane < 32; ++lane) {
    for (int e = 0; e < 4; ++e) {
      EXPECT_EQ(AccRow(lane, e), lane / 4 + 8 * (e >= 2));
      EXPECT_EQ(AccCol(lane, e), 2 * (lane % 4) + (e & 1));
    }
  }
  // The copies: 8 consecutive threads write one row's 8 pieces, in 8 bank groups.
  for (int i = 0; i < 2; ++i) {
    for (int t0 = 0; t0 < kThreads; t0 += 8) {
      int offset[8];
      for (int t = 0; t < 8; ++t) offset[t] = Swizzled(CopyRow(i, t0 + t), CopyPiece(t0 + t));
      ExpectConflictFree(offset, 8);
    }
  }
}

TEST(DecodeGemmLayout, SplitsCoverTheStagesInOrder) {
  for (int k_blocks : {1, 4, 64, 172, 224}) {
    for (int splits = 1; splits <= std::min(k_blocks, kDecodeGemmMaxSplits); ++splits) {
      EXPECT_EQ(decode_gemm::SplitBegin(0, splits, k_blocks), 0);
      EXPECT_EQ(decode_gemm::SplitBegin(splits, splits, k_blocks), k_blocks);
      for (int s = 0; s < splits; ++s) {
        const int len = decode_gemm::SplitBegin(s + 1, splits, k_blocks) -
                        decode_gemm::SplitBegin(s, splits, k_blocks);
        EXPECT_GE(len, k_blocks / splits);
        EXPECT_LE(len, k_blocks / splits + 1);
      }
    }
  }
}

TEST(MaxRowSplits, CoversEveryRowCount) {
  for (const int32_t kv : {1, 8, 32}) {
    const int64_t most = MaxRowSplits(300, kv, 4, 128, 132);
    for (int32_t rows = 1; rows <= 300; ++rows) {
      EXPECT_LE(int64_t{rows} * SplitsFor(rows, kv, 4, 128, 132), most);
    }
    EXPECT_GE(most, 300);
  }
}

TEST(GraphBucket, CoversEachSizeWithFewBuckets) {
  std::set<int32_t> buckets;
  int32_t previous = 0;
  for (int32_t n = 1; n <= 256; ++n) {
    const int32_t b = GraphBucket(n);
    EXPECT_GE(b, n);
    EXPECT_GE(b, previous);
    EXPECT_EQ(GraphBucket(b), b);
    EXPECT_LT(b - n, n);                          // less than double
    if (n >= 32) EXPECT_LE(b - n, n / 4 + 1);     // then at most about a quarter
    buckets.insert(b);
    previous = b;
  }
  EXPECT_LE(buckets.size(), 24u);
}

// A row's chunks cut into pieces: the same tokens of the same blocks, in order, each piece at
// most PieceTokens(block size) long and empty only where its chunk was.
TEST(CutIntoPieces, SameTokensInShortPieces) {
  std::mt19937 rng(4);
  for (int32_t B = 1; B <= 256; B += (B < 40 ? 1 : 23)) {
    std::vector<KvChunk> chunks = RandomRowChunks(rng, B, 1 + rng() % 1500);
    chunks.insert(chunks.begin() + rng() % (chunks.size() + 1), {7, 3 % B, 3 % B});  // empty
    std::vector<KvChunk> pieces = {{1, 0, 1}};  // appended to, not replaced
    CutIntoPieces(chunks, B, &pieces);
    ASSERT_EQ(pieces.front(), (KvChunk{1, 0, 1}));
    std::vector<std::pair<int32_t, int32_t>> want, got;  // (block, token)
    int32_t empty = 0;
    for (const KvChunk& c : chunks) {
      for (int32_t t = c.begin; t < c.end; ++t) want.push_back({c.block, t});
    }
    for (size_t i = 1; i < pieces.size(); ++i) {
      const KvChunk& p = pieces[i];
      ASSERT_LE(p.end - p.begin, PieceTokens(B)) << "B " << B;
      ASSERT_LE(p.begin, p.end);
      empty += p.begin == p.end;
      for (int32_t t = p.begin; t < p.end; ++t) got.push_back({p.block, t});
    }
    EXPECT_EQ(got, want) << "B " << B;
    EXPECT_EQ(empty, 1);
  }
}

// The decode kernel's walk (its pass cursor and slot mapping, shared with it) reads every
// attended token of every piece exactly once and nothing else, for every block size and pass
// width, empty chunks included.
TEST(PassGeometry, VisitsEveryAttendedTokenOnce) {
  std::mt19937 rng(2);
  for (int32_t slots : {16, 32, 64, 128}) {
    for (int32_t B = 1; B <= 256; B += (B < 40 ? 1 : 23)) {
      const PassGeometry g = PassGeometry::For(PieceTokens(B), slots);
      for (int trial = 0; trial < 3; ++trial) {
        std::vector<KvChunk> row = RandomRowChunks(rng, B, 1 + rng() % 1500);
        for (int e = 0; e < 3; ++e) {  // empty chunks, which the engine does not make
          const int32_t at = static_cast<int32_t>(rng() % (row.size() + 1)), t = rng() % B;
          row.insert(row.begin() + at, {static_cast<int32_t>(rng() % 100), t, t});
        }
        std::vector<KvChunk> chunks;
        CutIntoPieces(row, B, &chunks);
        // A split of the row: chunks [first, last).
        const int32_t n = static_cast<int32_t>(chunks.size());
        const int32_t first = static_cast<int32_t>(rng() % (n + 1));
        const int32_t last = first + static_cast<int32_t>(rng() % (n - first + 1));
        auto sub_passes = [&](int c) { return g.SubPasses(chunks[c].begin, chunks[c].end); };
        std::map<std::pair<int32_t, int32_t>, int> visits;  // (chunk, token)
        int32_t c0 = first, sub = -1, passes = 0;
        for (g.NextPass(last, sub_passes, &c0, &sub); c0 < last;
             g.NextPass(last, sub_passes, &c0, &sub)) {
          ASSERT_LT(++passes, 100000);
          for (int32_t j = 0; j < slots; ++j) {
            const int32_t c = c0 + g.SlotChunk(j);
            if (!g.SlotUsed(j) || c >= last) continue;
            const int32_t t = chunks[c].begin + sub * g.slots_per_chunk + g.SlotToken(j);
            if (t < chunks[c].end) ++visits[{c, t}];
          }
        }
        int64_t expected = 0;
        for (int32_t c = first; c < last; ++c) {
          for (int32_t t = chunks[c].begin; t < chunks[c].end; ++t) {
            ASSERT_EQ((visits[{c, t}]), 1) << "B " << B << " slots " << slots;
          }
          expected += chunks[c].end - chunks[c].begin;
        }
        ASSERT_EQ(static_cast<int64_t>(visits.size()), expected) << "B " << B;
      }
    }
  }
}

template <typename T>
const T* At(const std::vector<uint8_t>& blob, size_t offset) {
  return reinterpret_cast<const T*>(blob.data() + offset);
}

// Builds the plan of random batches (padded when they are decode steps) and reads every array
// back against the batch.
TEST(BuildStepPlan, BlobHoldsTheBatch) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 300; ++trial) {
    RandomBatchSpec spec;
    spec.block_size = 1 << (rng() % 9);
    spec.decode_only = trial % 3 == 0;
    const StepBatch batch = RandomBatch(rng, spec);
    ASSERT_TRUE(ValidateStepBatch(batch, spec.num_blocks, spec.block_size, spec.vocab).ok());
    const int32_t n = batch.num_rows();
    PlanOptions options;
    options.block_size = spec.block_size;
    options.pad_rows = IsDecodeStep(batch) && rng() % 2 ? GraphBucket(n) : 0;
    options.num_splits = 1 + static_cast<int32_t>(rng() % kMaxSplits);
    options.min_split_tokens = rng() % 2 ? 1 : 128;
    options.prefill_tile_rows = 1 << (rng() % 7);
    options.prefill_longest_first = rng() % 2;
    options.scratch_block = spec.num_blocks;
    const PlanCapacity need = NeededCapacity(batch, options);
    const PlanLayout layout = PlanLayout::For(need);
    std::vector<uint8_t> blob(layout.total, 0xab);
    const StepPlan plan = BuildStepPlan(batch, options, layout, blob.data());
    const bool padded = options.pad_rows > 0;
    const int32_t S = options.num_splits, B = spec.block_size;

    ASSERT_EQ(plan.rows, std::max(n, options.pad_rows));
    ASSERT_LE(plan.rows, need.rows);
    ASSERT_LE(plan.chunks, need.chunks);
    ASSERT_LE(int64_t{plan.decode_rows} * S, need.row_splits);
    ASSERT_LE(plan.prefill_jobs, need.prefill_jobs);
    ASSERT_LE(plan.logit_rows, need.logit_rows);
    std::set<int32_t> written;  // the blocks the step's rows write
    for (int32_t r = 0; r < plan.rows; ++r) written.insert(At<int32_t>(blob, layout.kv_block)[r]);
    for (int32_t r = 0; r < plan.rows; ++r) {
      const int32_t kv_block = At<int32_t>(blob, layout.kv_block)[r];
      const int32_t kv_offset = At<int32_t>(blob, layout.kv_offset)[r];
      if (r >= n) {
        EXPECT_EQ(kv_block, options.scratch_block);
        EXPECT_EQ(At<int32_t>(blob, layout.token_ids)[r], 0);
        continue;
      }
      const StepSequence& seq = batch.seqs[batch.rows[r].seq];
      const int32_t pos = batch.positions[r];
      EXPECT_EQ(At<int32_t>(blob, layout.token_ids)[r], batch.token_ids[r]);
      EXPECT_EQ(At<int32_t>(blob, layout.positions)[r], pos);
      EXPECT_EQ(kv_block, batch.block_tables[seq.table_begin + pos / B]);
      EXPECT_EQ(kv_offset, pos % B);
    }
    EXPECT_EQ(0, std::memcmp(blob.data() + layout.block_tables, batch.block_tables.data(),
                             batch.block_tables.size() * sizeof(int32_t)));

    // Decode rows: the non-causal rows (then the padding) in order, their splits concatenating
    // to exactly their chunk lists cut into pieces.
    std::vector<int32_t> expected_rows;
    for (int32_t r = 0; r < plan.rows; ++r) {
      if (r >= n || !batch.rows[r].causal) expected_rows.push_back(r);
    }
    ASSERT_EQ(plan.decode_rows, static_cast<int32_t>(expected_rows.size()));
    const ChunkEntry* chunks = At<ChunkEntry>(blob, layout.chunks);
    for (int32_t i = 0; i < plan.decode_rows; ++i) {
      const SplitHead* heads = At<SplitHead>(blob, layout.split_heads) + int64_t{i} * S;
      const int32_t r = heads[0].q_row;
      ASSERT_EQ(r, expected_rows[i]);
      std::vector<KvChunk> got;
      const int32_t used = heads[0].row_splits;
      ASSERT_GE(used, 0);
      ASSERT_LE(used, S);
      for (int32_t s = 0; s < S; ++s) {
        const SplitHead& head = heads[s];
        ASSERT_EQ(head.row_splits, used);
        ASSERT_EQ(head.q_row, r);
        // The splits that hold chunks first, then the empty ones.
        ASSERT_EQ(head.chunk_begin < head.chunk_end, s < used) << "row " << r << " split " << s;
        if (s > 0) ASSERT_EQ(head.chunk_begin, heads[s - 1].chunk_end);
        for (int32_t c = head.chunk_begin; c < head.chunk_end; ++c) {
          got.push_back({chunks[c].block, chunks[c].range & 0xffff, chunks[c].range >> 16});
        }
        // The head's copies of the split's first entries, empty past its end; the early ones
        // end at the first in a block the step writes.
        int32_t early = kSplitHeadEntries;
        for (int32_t k = 0; k < kSplitHeadEntries; ++k) {
          const int32_t c = head.chunk_begin + k;
          const ChunkEntry want = c < head.chunk_end ? chunks[c] : ChunkEntry{0, 0};
          ASSERT_EQ(head.first[k].block, want.block) << "row " << r << " split " << s << " entry " << k;
          ASSERT_EQ(head.first[k].range, want.range) << "row " << r << " split " << s << " entry " << k;
          if (c < head.chunk_end && written.count(want.block) && early == kSplitHeadEntries) early = k;
        }
        ASSERT_EQ(head.early_entries, early) << "row " << r << " split " << s;
      }
      ASSERT_GE(heads[0].chunk_begin, 0);
      ASSERT_LE(heads[S - 1].chunk_end, plan.chunks);
      std::vector<KvChunk> want;
      if (r < n) {
        CutIntoPieces({batch.chunks.data() + batch.rows[r].chunk_begin,
                       static_cast<size_t>(batch.rows[r].chunk_end - batch.rows[r].chunk_begin)},
                      B, &want);
      }
      ASSERT_EQ(got, want) << "row " << r;
    }

    // Prefill jobs: every causal row once, in tiles of consecutive rows of one sequence; in row
    // order, or longest first (max_position not increasing, row order among equals).
    std::vector<int32_t> covered;
    const PrefillJob* jobs = At<PrefillJob>(blob, layout.prefill_jobs);
    for (int32_t j = 0; j < plan.prefill_jobs; ++j) {
      const PrefillJob& job = jobs[j];
      if (j > 0 && options.prefill_longest_first) {
        ASSERT_GE(jobs[j - 1].max_position, job.max_position);
        if (jobs[j - 1].max_position == job.max_position) {
          ASSERT_LT(jobs[j - 1].row_begin, job.row_begin);
        }
      } else if (j > 0) {
        ASSERT_LT(jobs[j - 1].row_begin, job.row_begin);
      }
      ASSERT_GE(job.num_rows, 1);
      ASSERT_LE(job.num_rows, options.prefill_tile_rows);
      const int32_t seq = batch.rows[job.row_begin].seq;
      EXPECT_EQ(job.table_begin, batch.seqs[seq].table_begin);
      int32_t max_position = 0;
      for (int32_t r = job.row_begin; r < job.row_begin + job.num_rows; ++r) {
        ASSERT_TRUE(batch.rows[r].causal);
        ASSERT_EQ(batch.rows[r].seq, seq);
        max_position = std::max(max_position, batch.positions[r]);
        covered.push_back(r);
      }
      EXPECT_EQ(job.max_position, max_position);
    }
    std::vector<int32_t> causal_rows;
    for (int32_t r = 0; r < n; ++r) {
      if (batch.rows[r].causal) causal_rows.push_back(r);
    }
    std::sort(covered.begin(), covered.end());
    EXPECT_EQ(covered, causal_rows);

    // Logits rows and sampling parameters.
    ASSERT_EQ(plan.seq_logit_row.size(), batch.seqs.size());
    EXPECT_EQ(plan.logit_rows, padded ? plan.rows : need.logit_rows);
    std::vector<bool> seen(plan.logit_rows, false);
    for (size_t s = 0; s < batch.seqs.size(); ++s) {
      const StepSequence& seq = batch.seqs[s];
      const int32_t i = plan.seq_logit_row[s];
      if (!seq.sample) {
        EXPECT_EQ(i, -1);
        continue;
      }
      ASSERT_GE(i, 0);
      ASSERT_LT(i, plan.logit_rows);
      seen[i] = true;
      EXPECT_EQ(At<int32_t>(blob, layout.logit_rows)[i], seq.row_begin + seq.num_rows - 1);
      const SampleEntry& e = At<SampleEntry>(blob, layout.samples)[i];
      EXPECT_EQ(e.active, seq.forced_token < 0);
      EXPECT_EQ(e.temperature, seq.sampling.temperature);
      EXPECT_EQ(e.top_k, seq.sampling.top_k);
      EXPECT_EQ(e.top_p, seq.sampling.top_p);
      EXPECT_EQ(e.seed, seq.sampling.seed);
      EXPECT_EQ(e.index, seq.sample_index);
    }
    for (int32_t i = 0; i < plan.logit_rows; ++i) {
      if (seen[i]) continue;
      ASSERT_TRUE(padded) << "logits row " << i << " belongs to no sampled sequence";
      EXPECT_EQ(At<int32_t>(blob, layout.logit_rows)[i], i);
      EXPECT_EQ(At<SampleEntry>(blob, layout.samples)[i].active, 0);
    }
  }
}

TEST(PlanLayout, ArraysAreAlignedAndApart) {
  const PlanCapacity cap{100, 7, 33, 1000, 250, 12};
  const PlanLayout l = PlanLayout::For(cap);
  const std::vector<std::pair<size_t, size_t>> arrays = {
      {l.token_ids, 100 * 4}, {l.positions, 100 * 4}, {l.kv_block, 100 * 4},
      {l.kv_offset, 100 * 4}, {l.split_heads, 250 * sizeof(SplitHead)},
      {l.prefill_jobs, 12 * sizeof(PrefillJob)}, {l.logit_rows, 7 * 4},
      {l.samples, 7 * sizeof(SampleEntry)}, {l.block_tables, 33 * 4},
      {l.chunks, 1000 * sizeof(ChunkEntry)}};
  for (size_t i = 0; i < arrays.size(); ++i) {
    EXPECT_EQ(arrays[i].first % 256, 0u);
    const size_t end = arrays[i].first + arrays[i].second;
    EXPECT_LE(end, i + 1 < arrays.size() ? arrays[i + 1].first : l.total);
  }
  EXPECT_TRUE(cap.Covers(cap));
  PlanCapacity bigger = cap;
  bigger.chunks += 1;
  EXPECT_FALSE(cap.Covers(bigger));
  EXPECT_TRUE(cap.Max(bigger).Covers(bigger));
}

TEST(IsDecodeStep, OneNonCausalRowPerSequence) {
  std::mt19937 rng(4);
  RandomBatchSpec spec;
  spec.decode_only = true;
  StepBatch batch = RandomBatch(rng, spec);
  EXPECT_TRUE(IsDecodeStep(batch));
  batch.logits_mode = LogitsMode::kAllRows;
  EXPECT_FALSE(IsDecodeStep(batch));
  batch.logits_mode = LogitsMode::kSampled;
  batch.rows[0].causal = true;
  EXPECT_FALSE(IsDecodeStep(batch));
}


// The branch-free checks still find each bad entry, and the message names it.
TEST(ValidateStepBatch, RefusesABadChunkOrTableEntry) {
  std::mt19937 rng(11);
  RandomBatchSpec spec;
  spec.decode_only = true;
  const StepBatch good = RandomBatch(rng, spec);
  ASSERT_TRUE(ValidateStepBatch(good, spec.num_blocks, spec.block_size, spec.vocab).ok());
  ASSERT_FALSE(good.chunks.empty());
  const size_t last = good.chunks.size() - 1;
  for (int bad = 0; bad < 5; ++bad) {
    StepBatch b = good;
    KvChunk& c = b.chunks[last];
    if (bad == 0) c.block = spec.num_blocks;
    if (bad == 1) c.block = -1;
    if (bad == 2) c.end = spec.block_size + 1;
    if (bad == 3) c.begin = c.end + 1;
    if (bad == 4) b.block_tables.back() = spec.num_blocks;
    const absl::Status s = ValidateStepBatch(b, spec.num_blocks, spec.block_size, spec.vocab);
    EXPECT_FALSE(s.ok()) << bad;
    EXPECT_NE(s.message().find(bad == 4 ? "block table entry" : "bad chunk"), std::string::npos)
        << s.message();
  }
}

}  // namespace
}  // namespace spanserve::gpu
