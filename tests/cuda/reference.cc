#include "tests/cuda/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "engine/model/safetensors.h"
#include "kernels/sample_uniform.h"

namespace spanserve::testing {

uint16_t ToBf16(float x) { return FloatToBf16(x); }

std::vector<double> RefAttention(std::span<const float> q, const float* k_cache,
                                 const float* v_cache, const KvLayout& layout, int32_t kv_head,
                                 std::span<const KvChunk> chunks, double scale) {
  const int32_t hd = layout.head_dim;
  std::vector<double> scores;
  std::vector<const float*> values;
  for (const KvChunk& c : chunks) {
    const int64_t tile = layout.TileOffset(c.block, kv_head);
    for (int32_t t = c.begin; t < c.end; ++t) {
      const float* k = k_cache + tile + int64_t{t} * hd;
      double dot = 0;
      for (int32_t d = 0; d < hd; ++d) dot += double{q[d]} * k[d];
      scores.push_back(dot * scale);
      values.push_back(v_cache + tile + int64_t{t} * hd);
    }
  }
  std::vector<double> out(hd, 0.0);
  if (scores.empty()) return out;
  const double max = *std::max_element(scores.begin(), scores.end());
  double sum = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    const double p = std::exp(scores[i] - max);
    sum += p;
    for (int32_t d = 0; d < hd; ++d) out[d] += p * values[i][d];
  }
  for (double& o : out) o /= sum;
  return out;
}

std::vector<KvChunk> CausalChunks(std::span<const int32_t> block_table, int32_t block_size,
                                  int32_t position) {
  std::vector<KvChunk> chunks;
  for (int32_t l = 0; l * block_size <= position; ++l) {
    chunks.push_back({block_table[l], 0, std::min(block_size, position + 1 - l * block_size)});
  }
  return chunks;
}

std::vector<double> RefRmsNorm(std::span<const float> y, std::span<const float> weight, double eps) {
  double sum = 0;
  for (float v : y) sum += double{v} * v;
  const double inv = 1.0 / std::sqrt(sum / y.size() + eps);
  std::vector<double> out(y.size());
  for (size_t i = 0; i < y.size(); ++i) out[i] = y[i] * inv * weight[i];
  return out;
}

std::vector<double> RefRope(std::span<const double> head, int32_t position,
                            std::span<const double> inv_freq) {
  const size_t hd = head.size(), half = hd / 2;
  std::vector<double> out(hd);
  for (size_t i = 0; i < half; ++i) {
    const double angle = position * inv_freq[i];
    const double c = std::cos(angle), s = std::sin(angle);
    out[i] = head[i] * c - head[i + half] * s;
    out[i + half] = head[i + half] * c + head[i] * s;
  }
  return out;
}

RefDraw RefSample(std::span<const float> logits, const SamplingParams& params, uint64_t index) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  const int32_t k = params.top_k > 0 ? std::min(params.top_k, vocab) : vocab;
  order.resize(k);
  std::vector<double> probs(k);
  double total = 0;
  for (int32_t i = 0; i < k; ++i) {
    probs[i] = static_cast<float>(std::exp((logits[order[i]] - double{logits[order[0]]}) /
                                           params.temperature));
    total += probs[i];
  }
  int32_t keep = k;
  if (params.top_p < 1.0f) {
    double mass = 0;
    for (int32_t i = 0; i < k; ++i) {
      mass += probs[i];
      if (mass >= params.top_p * total) {
        keep = i + 1;
        break;
      }
    }
  }
  RefDraw draw;
  std::vector<std::pair<int32_t, double>> kept;
  for (int32_t i = 0; i < keep; ++i) {
    if (probs[i] > 0) kept.push_back({order[i], probs[i]});
  }
  std::sort(kept.begin(), kept.end());
  double kept_total = 0;
  for (const auto& [id, p] : kept) {
    draw.kept.push_back(id);
    draw.kept_probs.push_back(p);
    kept_total += p;
  }
  draw.target = CounterUniform(params.seed, index) * kept_total;
  double cumulative = 0;
  for (const auto& [id, p] : kept) {
    cumulative += p;
    if (draw.target < cumulative) {
      draw.token = id;
      break;
    }
  }
  if (draw.token < 0 && !kept.empty()) draw.token = kept.back().first;
  return draw;
}

RefGemmResult RefGemm(std::span<const float> x, std::span<const float> w, int32_t rows,
                      int32_t in, std::span<const int32_t> cols) {
  RefGemmResult ref;
  ref.y.reserve(size_t(rows) * cols.size());
  ref.magnitude.reserve(ref.y.capacity());
  for (int32_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + size_t(r) * in;
    for (const int32_t c : cols) {
      const float* wc = w.data() + size_t(c) * in;
      double sum = 0, magnitude = 0;
      for (int32_t k = 0; k < in; ++k) {
        const double p = double{xr[k]} * wc[k];
        sum += p;
        magnitude += std::abs(p);
      }
      ref.y.push_back(sum);
      ref.magnitude.push_back(magnitude);
    }
  }
  return ref;
}

double MaxRelErr(std::span<const float> a, std::span<const double> b) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i])) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

}  // namespace spanserve::testing
