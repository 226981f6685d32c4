// Double-precision references for the CUDA kernels' tests, as plain C++: each is the formula,
// one obvious loop, on the same (bf16-exact) inputs the kernels get.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/backends/cpu_math.h"
#include "engine/core/types.h"

namespace spanserve::testing {

// bf16 rounding of a float (nearest even), and the float it stands for.
uint16_t ToBf16(float x);
inline float RoundBf16(float x) { return Bf16ToFloat(ToBf16(x)); }

// Attention of one query head over exactly the tokens of `chunks` in KV head `kv_head`; the
// caches hold floats in the kernels' layout. Zeros when the chunks hold no token.
std::vector<double> RefAttention(std::span<const float> q, const float* k_cache,
                                 const float* v_cache, const KvLayout& layout, int32_t kv_head,
                                 std::span<const KvChunk> chunks, double scale);

// The chunks of causal attention over [0, position] through a block table.
std::vector<KvChunk> CausalChunks(std::span<const int32_t> block_table, int32_t block_size,
                                  int32_t position);

// y / sqrt(mean(y^2) + eps) * weight.
std::vector<double> RefRmsNorm(std::span<const float> y, std::span<const float> weight, double eps);

// rotate_half RoPE of one head at a position, angles position * inv_freq[i] in double.
std::vector<double> RefRope(std::span<const double> head, int32_t position,
                            std::span<const double> inv_freq);

// The sampler's kept tokens (top_k by logit, ties by id; softmax at the temperature; the
// smallest prefix reaching top_p) with their probabilities, and the draw a GPU walk in id order
// makes for CounterUniform(seed, index).
struct RefDraw {
  std::vector<int32_t> kept;          // ascending ids
  std::vector<double> kept_probs;     // unnormalized, per kept id
  int32_t token = -1;                 // the id-order draw
  double target = 0;                  // u * kept mass
};
RefDraw RefSample(std::span<const float> logits, const SamplingParams& params, uint64_t index);

// y[r][c] = sum over k of x[r][k] w[c][k] (x [rows][in], w [out][in]), in double, for the
// output columns `cols` only (y is [rows][cols.size()]); magnitude is sum |x[r][k] w[c][k]|,
// the scale of an fp32 accumulation's rounding error.
struct RefGemmResult {
  std::vector<double> y, magnitude;
};
RefGemmResult RefGemm(std::span<const float> x, std::span<const float> w, int32_t rows,
                      int32_t in, std::span<const int32_t> cols);

// max |a - b| / max |b| (0/0 = 0); NaN in a gives infinity.
double MaxRelErr(std::span<const float> a, std::span<const double> b);

}  // namespace spanserve::testing
