// Block-sparse paged decode attention on tensor cores (mma.sync m16n8k16, bf16 in, fp32 out),
// for groups of query heads sharing a KV head; decode_attention.cu launches it.
//
// A CTA takes one (row, KV head, split), as the CUDA-core kernel does. Each of its 4 warps
// takes 16-token tiles, one per pass (a pass is 64 token slots, walked by PassGeometry over the
// pieces), and keeps its own online softmax; the warps combine at the end (FinishDecodeCta).
// Tokens are the MMA's M: S^T = K Q^T, [16 tokens] x [8 heads], with the group's heads padded
// to 8 (Q^T stays in registers as the B operand), then O^T += V^T P^T, [head dim] x [8 heads],
// with P^T moved into the B operand's layout by movmatrix. A warp copies its own tiles with
// cp.async, kStages - 1 passes ahead, into shared memory swizzled so that ldmatrix reads 8
// rows from 8 different bank groups; it needs no CTA barrier in the loop, only __syncwarp.
#include "kernels/decode_attention_common.cuh"
#include "kernels/decode_geometry.h"

namespace spanserve::gpu {
namespace {

constexpr int kStages = 3;      // passes in shared memory: one computed, two in flight
constexpr int kTileTokens = 16; // tokens of a warp's tile: the MMA's M
constexpr int kHeadsPadded = 8; // the MMA's N

template <int HD>
constexpr int TcSmemBytes() {
  return kStages * kDecodeWarps * 2 * kTileTokens * HD * int{sizeof(uint16_t)};
}

// The transpose of an 8x8 bf16 matrix held one row a 4 lanes (row lane / 4, columns
// 2 (lane % 4) and + 1), in the same layout.
__device__ __forceinline__ uint32_t TransposeMatrix(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

template <int HD, int G>
__global__ void __launch_bounds__(kDecodeThreads, DecodeCtasPerSm(DecodeKernel::kTensorCores, HD, G))
    DecodeAttentionTcKernel(const DecodeAttentionArgs a) {
  static_assert(G <= kHeadsPadded);
  constexpr int T = kDecodeWarps * kTileTokens;  // token slots per pass
  constexpr int PIECES = HD / 8;                 // 16-byte pieces per token row
  constexpr int KSTEPS = HD / 16;                // MMA k steps over the head dim (and d tiles)
  constexpr int COPIES = kTileTokens * PIECES / 32;  // pieces a lane copies per tile, K and V each
  constexpr int TILE = kTileTokens * HD;         // bf16 elements of one K (or V) tile
  extern __shared__ __align__(128) uint16_t smem[];  // [kStages][warps][K, V][16][HD], swizzled

  const auto [row, kv_head, split] = DecodeItemOf(a);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int quad = lane / 4, pair = lane % 4;  // MMA fragment coordinates
  const SplitHead* head = a.split_heads + int64_t{row} * a.num_splits + split;
  const int c_begin = head->chunk_begin, c_end = head->chunk_end, row_splits = head->row_splits;
  const int early_entries = head->early_entries;
  const int64_t q_row = head->q_row;
  if (split >= max(row_splits, 1)) return;  // empty: the row's tokens are in its other splits

  const float q_scale = a.scale * kLog2e;  // scores in the log2 domain, for exp2f
  // This lane's heads (columns of S^T and O^T): 2 pair and 2 pair + 1.
  float m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f};
  float o[KSTEPS][4];  // O^T tile d: (16 d + quad, 2 pair + {0, 1}), then rows + 8
#pragma unroll
  for (int d = 0; d < KSTEPS; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;

  const int B = a.block_size;
  const PassGeometry geometry = PassGeometry::For(PieceTokens(B), T);
  const int L = geometry.slots_per_chunk;
  const int64_t head_offset = int64_t{kv_head} * B * HD;
  const int64_t block_stride = int64_t{a.num_kv_heads} * B * HD;
  auto sub_passes = [&](int c) {
    const ChunkEntry e = a.chunks[c];
    return geometry.SubPasses(ChunkBegin(e), ChunkEnd(e));
  };
  // Where the tokens this lane copies (rows ROWS i + row0) and its two S^T rows (quad,
  // quad + 8) fall in a pass, worked out once: the mapping's divisions are by a run-time length.
  struct Slot {
    int chunk, token;
    bool used;
  };
  auto slot_of = [&](int t) {
    const int j = warp * kTileTokens + t;
    return Slot{geometry.SlotChunk(j), geometry.SlotToken(j), geometry.SlotUsed(j)};
  };
  // Where this lane's copies go: copy i takes piece `piece` of tile row ROWS * i + row0.
  constexpr int ROWS = 32 / PIECES;  // tile rows a copy instruction covers
  const int piece = lane % PIECES, row0 = lane / PIECES;
  Slot copy_slot[COPIES];
#pragma unroll
  for (int i = 0; i < COPIES; ++i) copy_slot[i] = slot_of(ROWS * i + row0);
  const Slot row_slot[2] = {slot_of(quad), slot_of(quad + 8)};
  // Offset in the cache of a slot's token in the pass at (c0, sub), or -1 where it has none.
  auto token_offset = [&](int c0, int sub, const Slot& slot) -> int64_t {
    const int c = c0 + slot.chunk;
    if (!slot.used || c >= c_end) return -1;
    const ChunkEntry e = a.chunks[c];
    const int token = ChunkBegin(e) + sub * L + slot.token;
    if (token >= ChunkEnd(e)) return -1;
    return e.block * block_stride + head_offset + int64_t{token} * HD;
  };

  // Blocks of 16 tokens or more: this warp's tile of pass p is one piece, chunk entry
  // c_begin + p * kDecodeWarps + warp (4 pieces a pass), prefetched (smaller blocks read their
  // entries in the pass).
  ChunkPrefetch prefetch(a.chunks, head, c_begin, c_end, warp, kDecodeWarps, L == kTileTokens);

  // Copies this warp's tile of the pass at the issue cursor into `stage`, moves the cursor on;
  // one commit group per call (empty past the end). Returns which of this lane's S^T rows
  // (tokens quad and quad + 8) hold a token, as bits.
  int issue_c0 = c_begin, issue_sub = -1, passes = 0;
  geometry.NextPass(c_end, sub_passes, &issue_c0, &issue_sub);
  auto issue = [&](int stage) {
    uint32_t valid_bits = 0;
    if (issue_c0 < c_end) {
      uint16_t* k_tile = smem + (stage * kDecodeWarps + warp) * 2 * TILE;
      uint16_t* v_tile = k_tile + TILE;
      if (L == kTileTokens) {
        // One entry, prefetched; past c_end it is empty. A whole tile (the common case) takes
        // 16-byte copies at fixed offsets from one address: no per-copy selects.
        const ChunkEntry e = prefetch.Get(passes);
        const int count = ChunkEnd(e) - ChunkBegin(e);
        const int64_t first = e.block * block_stride + head_offset +
                              int64_t{ChunkBegin(e) + row0} * HD + piece * 8;
        const uint16_t* k_src = a.k_cache + first;
        const uint16_t* v_src = a.v_cache + first;
        if (count == kTileTokens) {
#pragma unroll
          for (int i = 0; i < COPIES; ++i) {
            const int dst = TileOffset<HD>(ROWS * i + row0, piece);
            CopyAsync16(k_tile + dst, k_src + ROWS * i * HD);
            CopyAsync16(v_tile + dst, v_src + ROWS * i * HD);
          }
        } else {
#pragma unroll
          for (int i = 0; i < COPIES; ++i) {
            const int dst = TileOffset<HD>(ROWS * i + row0, piece);
            const bool valid = ROWS * i + row0 < count;  // else zeros, nothing read
            CopyAsync16(k_tile + dst, valid ? k_src + ROWS * i * HD : a.k_cache, valid);
            CopyAsync16(v_tile + dst, valid ? v_src + ROWS * i * HD : a.v_cache, valid);
          }
        }
        valid_bits = uint32_t{quad < count} | uint32_t{quad + 8 < count} << 1;
      } else {
        // Every slot's chunk entry is read before the first copy is issued: a copy is a
        // compiler memory barrier, so reads between copies would each wait a full latency.
        int64_t offset[COPIES];  // of each copy's token in the cache, -1 where it has none
#pragma unroll
        for (int i = 0; i < COPIES; ++i) offset[i] = token_offset(issue_c0, issue_sub, copy_slot[i]);
        valid_bits = uint32_t{token_offset(issue_c0, issue_sub, row_slot[0]) >= 0} |
                     uint32_t{token_offset(issue_c0, issue_sub, row_slot[1]) >= 0} << 1;
#pragma unroll
        for (int i = 0; i < COPIES; ++i) {
          const int dst = TileOffset<HD>(ROWS * i + row0, piece);
          const bool valid = offset[i] >= 0;
          const int64_t src = valid ? offset[i] + piece * 8 : 0;
          CopyAsync16(k_tile + dst, a.k_cache + src, valid);
          CopyAsync16(v_tile + dst, a.v_cache + src, valid);
        }
      }
      ++passes;
      geometry.NextPass(c_end, sub_passes, &issue_c0, &issue_sub);
    }
    CopyAsyncCommit();
    return valid_bits;
  };

  // ldmatrix row addresses: K as the A operand (lanes 8-15 and 24-31: tokens 8-15; lanes
  // 16-31: the k step's second piece); V transposed as the A operand of O^T (lanes 8-15 and
  // 24-31: the d tile's second piece; lanes 16-31: tokens 8-15).
  const int k_token = (lane & 7) + (lane & 8), k_piece = lane >> 4;
  const int v_token = (lane & 7) + ((lane >> 4) << 3), v_piece = (lane >> 3) & 1;

  // Everything above read the step's plan only.
  // Q^T as the B operand: head `quad`, dims 16k + 2 pair (+1) and + 8; heads past G are zero.
  uint32_t q_frag[KSTEPS][2];
  auto load_q = [&] {
    const uint32_t* qh = reinterpret_cast<const uint32_t*>(
        a.q + (q_row * a.num_heads + kv_head * G + (quad < G ? quad : 0)) * HD);
#pragma unroll
    for (int k = 0; k < KSTEPS; ++k) {
      q_frag[k][0] = quad < G ? qh[8 * k + pair] : 0u;
      q_frag[k][1] = quad < G ? qh[8 * k + 4 + pair] : 0u;
    }
  };
  uint32_t in_flight[kStages - 1];
  StartPipeline(early_entries, geometry.chunks_per_pass, issue, load_q, in_flight);
  for (int p = 0, stage = 0; p < passes; ++p, stage = stage + 1 < kStages ? stage + 1 : 0) {
    __syncwarp();  // every lane has read the stage that the next issue overwrites
    const uint32_t valid_bits = in_flight[0];
#pragma unroll
    for (int s = 0; s + 1 < kStages - 1; ++s) in_flight[s] = in_flight[s + 1];
    in_flight[kStages - 2] = issue(stage > 0 ? stage - 1 : kStages - 1);  // computed last pass
    CopyAsyncWait<kStages - 1>();  // this lane's copies of pass p have landed
    __syncwarp();                  // and every lane's
    const uint16_t* k_tile = smem + (stage * kDecodeWarps + warp) * 2 * TILE;
    const uint16_t* v_tile = k_tile + TILE;

    // S^T = K Q^T: rows tokens quad and quad + 8, columns heads 2 pair and + 1. Even and odd
    // k steps accumulate apart: two chains of dependent MMAs, each half as long (the loop is
    // latency-bound with 2 warps a scheduler).
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f}, s_odd[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int k = 0; k < KSTEPS; ++k) {
      uint32_t kf[4];
      LoadMatrixX4(kf, k_tile + TileOffset<HD>(k_token, 2 * k + k_piece));
      Mma16816(k % 2 ? s_odd : s, kf, q_frag[k][0], q_frag[k][1]);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) s[e] += s_odd[e];
    const bool valid_lo = valid_bits & 1, valid_hi = valid_bits & 2;
    s[0] = valid_lo ? s[0] * q_scale : kNegInf;
    s[1] = valid_lo ? s[1] * q_scale : kNegInf;
    s[2] = valid_hi ? s[2] * q_scale : kNegInf;
    s[3] = valid_hi ? s[3] * q_scale : kNegInf;

    // Online softmax per head over the tile's 16 tokens: the 8 lanes of a pair hold them.
    float p_tile[4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = fmaxf(s[h], s[h + 2]);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
      mx = fmaxf(mx, m[h]);
      if (mx == kNegInf) {  // no token yet for this head
        p_tile[h] = p_tile[h + 2] = 0.0f;
        continue;
      }
      const float correction = exp2f(m[h] - mx);
      m[h] = mx;
      l[h] *= correction;
#pragma unroll
      for (int d = 0; d < KSTEPS; ++d) {
        o[d][h] *= correction;
        o[d][h + 2] *= correction;
      }
      p_tile[h] = exp2f(s[h] - mx);
      p_tile[h + 2] = exp2f(s[h + 2] - mx);
      l[h] += p_tile[h] + p_tile[h + 2];
    }

    // P^T (tokens x heads) as the B operand (k = tokens, n = heads): transposed 8x8 halves.
    const uint32_t p_lo = TransposeMatrix(PackBf16x2(p_tile[0], p_tile[1]));  // tokens 0-7
    const uint32_t p_hi = TransposeMatrix(PackBf16x2(p_tile[2], p_tile[3]));  // tokens 8-15
    // O^T += V^T P^T, a 16-dim tile at a time.
#pragma unroll
    for (int d = 0; d < KSTEPS; ++d) {
      uint32_t vf[4];
      LoadMatrixX4Trans(vf, v_tile + TileOffset<HD>(v_token, 2 * d + v_piece));
      Mma16816(o[d], vf, p_lo, p_hi);
    }
  }
  CopyAsyncWait<0>();
  // The next kernel may launch once every CTA is here. Not at the start: then a launch's CTAs,
  // waiting beside running ones, let the one after them launch too, and they pile up (+8% at
  // LLaMA-3-8B batch 16 2k, launched back to back).
  AllowDependentLaunch();

  // Each head's sum over the warp's tokens (m is already the same across a pair's lanes).
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 4);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 8);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 16);
  }
  // Combine the warps, in the shared memory the stages used.
  __syncthreads();
  float* sm_acc = reinterpret_cast<float*>(smem);      // [warps][G][HD]
  float* sm_m = sm_acc + kDecodeWarps * G * HD;        // [warps][G]
  float* sm_l = sm_m + kDecodeWarps * G;               // [warps][G]
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int g = 2 * pair + h;
    if (g >= G) continue;
    if (quad == 0) {
      sm_m[warp * G + g] = m[h];
      sm_l[warp * G + g] = l[h];
    }
    float* acc = sm_acc + (warp * G + g) * HD;
#pragma unroll
    for (int d = 0; d < KSTEPS; ++d) {
      acc[16 * d + quad] = o[d][h];
      acc[16 * d + quad + 8] = o[d][h + 2];
    }
  }
  __syncthreads();
  FinishDecodeCta<HD, G, kDecodeWarps>(a, sm_acc, row, kv_head, split, row_splits, q_row);
}

template <int HD, int G>
cudaError_t LaunchTc(const DecodeAttentionArgs& a, cudaStream_t stream) {
  constexpr int kSmem = TcSmemBytes<HD>();
  static_assert(kSmem >= (kDecodeWarps * G * HD + 2 * kDecodeWarps * G) * 4,
                "the warps combine in the stages' shared memory");
  return LaunchDecodeKernel<DecodeAttentionTcKernel<HD, G>>(kSmem, a, stream);
}

template <int HD>
cudaError_t LaunchTcForHeadDim(const DecodeAttentionArgs& a, cudaStream_t stream) {
  switch (a.num_heads / a.num_kv_heads) {
    case 1: return LaunchTc<HD, 1>(a, stream);
    case 2: return LaunchTc<HD, 2>(a, stream);
    case 4: return LaunchTc<HD, 4>(a, stream);
    case 8: return LaunchTc<HD, 8>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t LaunchDecodeAttentionTc(const DecodeAttentionArgs& a, cudaStream_t stream) {
  return a.head_dim == 64 ? LaunchTcForHeadDim<64>(a, stream) : LaunchTcForHeadDim<128>(a, stream);
}

}  // namespace spanserve::gpu
