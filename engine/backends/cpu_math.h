// The CPU backend's math as plain functions over float pointers. They are also the references
// the CUDA kernels are tested against, so they stay simple and exact: fp32 data, one obvious loop
// per formula, no layout tricks.
#pragma once

#include <cstdint>
#include <span>

#include "engine/core/types.h"

namespace spanserve {

constexpr int32_t kMaxBlockSize = 256;

// fp16 / bf16 bit patterns to fp32 (exact: every value of both formats is a float).
float HalfToFloat(uint16_t bits);
float Bf16ToFloat(uint16_t bits);

// y[rows, out] = x[rows, in] * w[out, in]^T (a Hugging Face Linear), through BLAS.
void Linear(const float* x, int32_t rows, int32_t in, const float* w, int32_t out, float* y);

// out = x / sqrt(mean(x^2) + eps) * weight, over n values (Hugging Face LlamaRMSNorm).
void RmsNorm(const float* x, const float* weight, int32_t n, float eps, float* out);

// cos and sin of position * inv_freq[i] for i < half, computed in double (inv_freq: the
// model's RopeInverseFrequencies).
void RopeCosSin(int32_t position, const double* inv_freq, int32_t half, float* cos_out,
                float* sin_out);

// Rotates the pairs (x[i], x[i + head_dim/2]) of each head by the angles (rotate_half).
void ApplyRope(float* x, int32_t num_heads, int32_t head_dim, const float* cos, const float* sin);

// out[i] = silu(gate[i]) * up[i]; out may alias gate.
void SiluMul(const float* gate, const float* up, int32_t n, float* out);

// x[i] += y[i].
void AddInPlace(float* x, const float* y, int64_t n);

// Adds bias[n] to each of x's rows [rows][n] (a Linear's bias).
void AddBias(float* x, int32_t rows, int32_t n, const float* bias);

// One layer's K or V pool: [num_blocks][num_kv_heads][block_size][head_dim], fp32.
struct KvLayout {
  int32_t num_kv_heads = 0;
  int32_t block_size = 0;
  int32_t head_dim = 0;

  int64_t tile_elems() const { return int64_t{block_size} * head_dim; }
  int64_t block_elems() const { return num_kv_heads * tile_elems(); }
  // Start of the [block_size][head_dim] tile of (block, kv_head).
  int64_t TileOffset(int32_t block, int32_t kv_head) const {
    return (int64_t{block} * num_kv_heads + kv_head) * tile_elems();
  }
};

// Writes one token's K and V (num_kv_heads * head_dim values each) into slot `slot` of `block`.
void WriteKv(const float* k, const float* v, const KvLayout& layout, int32_t block, int32_t slot,
             float* k_cache, float* v_cache);

// Running softmax-weighted sum of V rows: out = acc / sum once all tokens are in.
struct OnlineSoftmax {
  float max = 0;
  float sum = 0;
  float* acc = nullptr;  // [head_dim]
};

// Folds tokens [begin, end) of one K/V tile into the running softmax of query q.
void AttendTile(const float* q, const float* k_tile, const float* v_tile, int32_t head_dim,
                int32_t begin, int32_t end, float scale, OnlineSoftmax* state);

// Attention of one query head (q: head_dim values) over exactly the tokens of `chunks`, all in
// KV head `kv_head`. out[head_dim]; zeros when the chunks hold no token.
void AttendChunks(const float* q, const float* k_cache, const float* v_cache,
                  const KvLayout& layout, int32_t kv_head, std::span<const KvChunk> chunks,
                  float scale, float* out);

// Attention of one query head over every token [0, position] through a block table.
void AttendCausal(const float* q, const float* k_cache, const float* v_cache,
                  const KvLayout& layout, int32_t kv_head, std::span<const int32_t> block_table,
                  int32_t position, float scale, float* out);

}  // namespace spanserve
