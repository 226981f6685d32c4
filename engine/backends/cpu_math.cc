#include "engine/backends/cpu_math.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

namespace spanserve {

float HalfToFloat(uint16_t bits) {
  const uint32_t sign = uint32_t{bits & 0x8000u} << 16;
  const uint32_t exponent = (bits >> 10) & 0x1f;
  const uint32_t mantissa = bits & 0x3ff;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

float Bf16ToFloat(uint16_t bits) { return std::bit_cast<float>(uint32_t{bits} << 16); }

// The output features are split across OpenMP threads, each running a single-threaded BLAS
// product on its slice: one thread pool for the whole backend (OpenBLAS's own threads spinning
// against OpenMP's made steps up to 100x slower on 2 cores), and a row's result does not
// depend on how many rows the step has.
void Linear(const float* x, int32_t rows, int32_t in, const float* w, int32_t out, float* y) {
  if (rows == 0) return;
  static const bool single_threaded_blas = [] {
#ifdef SPANSERVE_OPENBLAS  // the reference BLAS (SPANSERVE_BLAS_VENDOR=Generic) has no threads
    openblas_set_num_threads(1);
#endif
    return true;
  }();
  (void)single_threaded_blas;
  constexpr int32_t kMinSlice = 64;
  const int32_t slices = std::max(1, std::min(omp_get_max_threads(), out / kMinSlice));
#pragma omp parallel for num_threads(slices) if (slices > 1)
  for (int32_t s = 0; s < slices; ++s) {
    const int32_t begin = static_cast<int32_t>(int64_t{out} * s / slices);
    const int32_t end = static_cast<int32_t>(int64_t{out} * (s + 1) / slices);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, end - begin, in, 1.0f, x, in,
                w + int64_t{begin} * in, in, 0.0f, y + begin, out);
  }
}

void RmsNorm(const float* x, const float* weight, int32_t n, float eps, float* out) {
  double sum_squares = 0;
  for (int32_t i = 0; i < n; ++i) sum_squares += double{x[i]} * x[i];
  const float inv_rms = static_cast<float>(1.0 / std::sqrt(sum_squares / n + eps));
  for (int32_t i = 0; i < n; ++i) out[i] = x[i] * inv_rms * weight[i];
}

void RopeCosSin(int32_t position, const double* inv_freq, int32_t half, float* cos_out,
                float* sin_out) {
  for (int32_t i = 0; i < half; ++i) {
    const double angle = position * inv_freq[i];
    cos_out[i] = static_cast<float>(std::cos(angle));
    sin_out[i] = static_cast<float>(std::sin(angle));
  }
}

void ApplyRope(float* x, int32_t num_heads, int32_t head_dim, const float* cos, const float* sin) {
  const int32_t half = head_dim / 2;
  for (int32_t h = 0; h < num_heads; ++h) {
    float* head = x + int64_t{h} * head_dim;
    for (int32_t i = 0; i < half; ++i) {
      const float x0 = head[i];
      const float x1 = head[i + half];
      head[i] = x0 * cos[i] - x1 * sin[i];
      head[i + half] = x1 * cos[i] + x0 * sin[i];
    }
  }
}

void AddBias(float* x, int32_t rows, int32_t n, const float* bias) {
  for (int32_t r = 0; r < rows; ++r) AddInPlace(x + int64_t{r} * n, bias, n);
}

void SiluMul(const float* gate, const float* up, int32_t n, float* out) {
  for (int32_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void AddInPlace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void WriteKv(const float* k, const float* v, const KvLayout& layout, int32_t block, int32_t slot,
             float* k_cache, float* v_cache) {
  const size_t bytes = sizeof(float) * layout.head_dim;
  for (int32_t h = 0; h < layout.num_kv_heads; ++h) {
    const int64_t offset = layout.TileOffset(block, h) + int64_t{slot} * layout.head_dim;
    std::memcpy(k_cache + offset, k + int64_t{h} * layout.head_dim, bytes);
    std::memcpy(v_cache + offset, v + int64_t{h} * layout.head_dim, bytes);
  }
}

void AttendTile(const float* q, const float* k_tile, const float* v_tile, int32_t head_dim,
                int32_t begin, int32_t end, float scale, OnlineSoftmax* state) {
  if (begin >= end) return;
  float scores[kMaxBlockSize];
  float tile_max = -std::numeric_limits<float>::infinity();
  for (int32_t t = begin; t < end; ++t) {
    const float* k = k_tile + int64_t{t} * head_dim;
    float dot = 0;
    for (int32_t d = 0; d < head_dim; ++d) dot += q[d] * k[d];
    scores[t - begin] = dot * scale;
    tile_max = std::max(tile_max, scores[t - begin]);
  }
  // Rescale what was summed so far to the new maximum (exp(-inf) = 0 on the first tile).
  if (tile_max > state->max) {
    const float rescale = std::exp(state->max - tile_max);
    state->sum *= rescale;
    for (int32_t d = 0; d < head_dim; ++d) state->acc[d] *= rescale;
    state->max = tile_max;
  }
  for (int32_t t = begin; t < end; ++t) {
    const float p = std::exp(scores[t - begin] - state->max);
    const float* v = v_tile + int64_t{t} * head_dim;
    state->sum += p;
    for (int32_t d = 0; d < head_dim; ++d) state->acc[d] += p * v[d];
  }
}

namespace {

OnlineSoftmax StartSoftmax(float* out, int32_t head_dim) {
  std::fill(out, out + head_dim, 0.0f);
  return {-std::numeric_limits<float>::infinity(), 0.0f, out};
}

void FinishSoftmax(const OnlineSoftmax& state, int32_t head_dim) {
  if (state.sum == 0) return;  // no token: the output stays zero
  const float inv_sum = 1.0f / state.sum;
  for (int32_t d = 0; d < head_dim; ++d) state.acc[d] *= inv_sum;
}

}  // namespace

void AttendChunks(const float* q, const float* k_cache, const float* v_cache,
                  const KvLayout& layout, int32_t kv_head, std::span<const KvChunk> chunks,
                  float scale, float* out) {
  OnlineSoftmax state = StartSoftmax(out, layout.head_dim);
  for (const KvChunk& chunk : chunks) {
    const int64_t tile = layout.TileOffset(chunk.block, kv_head);
    AttendTile(q, k_cache + tile, v_cache + tile, layout.head_dim, chunk.begin, chunk.end, scale,
               &state);
  }
  FinishSoftmax(state, layout.head_dim);
}

void AttendCausal(const float* q, const float* k_cache, const float* v_cache,
                  const KvLayout& layout, int32_t kv_head, std::span<const int32_t> block_table,
                  int32_t position, float scale, float* out) {
  OnlineSoftmax state = StartSoftmax(out, layout.head_dim);
  for (int32_t logical = 0; logical * layout.block_size <= position; ++logical) {
    const int32_t end = std::min(layout.block_size, position + 1 - logical * layout.block_size);
    const int64_t tile = layout.TileOffset(block_table[logical], kv_head);
    AttendTile(q, k_cache + tile, v_cache + tile, layout.head_dim, 0, end, scale, &state);
  }
  FinishSoftmax(state, layout.head_dim);
}

}  // namespace spanserve
