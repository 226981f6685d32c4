// The CPU backend: its math against double-precision formulas, and whole-model steps on tiny
// random models against a double-precision forward pass with an explicit attention mask.
#include <algorithm>
#include <bit>
#include <cmath>
#include <filesystem>
#include <functional>
#include <numeric>
#include <random>
#include <string>

#include "engine/backends/cpu_backend.h"
#include "engine/backends/cpu_math.h"
#include "engine/core/attention_plan.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"
#include "gtest/gtest.h"
#include "tests/cpp/tiny_model.h"

namespace spanserve {
namespace {

using Ranges = std::vector<TokenRange>;

// max |a - b| / max |b|: the error relative to the reference's scale.
template <typename A, typename B>
double RelErr(const A* a, const B* b, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(double{a[i]} - double{b[i]}));
    scale = std::max(scale, std::abs(double{b[i]}));
  }
  return scale > 0 ? diff / scale : diff;
}

std::vector<float> RandomVector(std::mt19937& rng, int64_t n, float scale = 1.0f) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// ---------------------------------------------------------------------------------------------
// cpu_math

TEST(CpuMath, HalfAndBf16ToFloat) {
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xc000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x3555), 0.333251953125f);
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(HalfToFloat(0x83ff), -std::ldexp(1023.0f, -24));
  EXPECT_EQ(std::bit_cast<uint32_t>(HalfToFloat(0x8000)), 0x80000000u);  // -0
  EXPECT_TRUE(std::isinf(HalfToFloat(0x7c00)));
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7e00)));
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0xc0a0), -5.0f);
  EXPECT_EQ(Bf16ToFloat(0x3eab), 0.333984375f);
  // Every finite half and every bf16 goes back to its bits through the loader's encoders.
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const uint16_t b = static_cast<uint16_t>(bits);
    if ((b & 0x7c00) != 0x7c00) ASSERT_EQ(FloatToHalf(HalfToFloat(b)), b) << bits;
    if ((b & 0x7f80) != 0x7f80) ASSERT_EQ(FloatToBf16(Bf16ToFloat(b)), b) << bits;
  }
}

TEST(CpuMath, RmsNormMatchesDouble) {
  std::mt19937 rng(1);
  for (int32_t n : {1, 7, 64, 4096}) {
    std::vector<float> x = RandomVector(rng, n, 3.0f), w = RandomVector(rng, n), out(n);
    RmsNorm(x.data(), w.data(), n, 1e-5f, out.data());
    double sum = 0;
    for (float v : x) sum += double{v} * v;
    std::vector<double> ref(n);
    for (int32_t i = 0; i < n; ++i) ref[i] = x[i] / std::sqrt(sum / n + 1e-5) * w[i];
    EXPECT_LT(RelErr(out.data(), ref.data(), n), 1e-6) << n;
  }
}

TEST(CpuMath, RopeRotatesHalvesLikeHuggingFace) {
  std::mt19937 rng(2);
  const int32_t heads = 3;
  for (int32_t hd : {2, 8, 64, 128}) {
    for (float theta : {10000.0f, 500000.0f}) {
      for (int32_t pos : {0, 1, 7, 100, 4095}) {
        std::vector<float> x = RandomVector(rng, heads * hd), cos(hd / 2), sin(hd / 2);
        std::vector<float> rotated = x;
        ModelConfig config;
        config.head_dim = hd;
        config.rope_theta = theta;
        RopeCosSin(pos, RopeInverseFrequencies(config).data(), hd / 2, cos.data(), sin.data());
        ApplyRope(rotated.data(), heads, hd, cos.data(), sin.data());
        // x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1].
        std::vector<double> ref(heads * hd);
        for (int32_t h = 0; h < heads; ++h) {
          for (int32_t i = 0; i < hd; ++i) {
            const int32_t pair = i % (hd / 2);
            const double angle = pos * std::pow(double{theta}, -2.0 * pair / hd);
            const double x1 = x[h * hd + pair], x2 = x[h * hd + pair + hd / 2];
            const double rot = i < hd / 2 ? -x2 : x1;
            ref[h * hd + i] = x[h * hd + i] * std::cos(angle) + rot * std::sin(angle);
          }
        }
        EXPECT_LT(RelErr(rotated.data(), ref.data(), heads * hd), 1e-6) << hd << " " << pos;
      }
    }
  }
}

TEST(CpuMath, SiluMulAndLinearMatchDouble) {
  std::mt19937 rng(3);
  const int32_t n = 257;
  std::vector<float> gate = RandomVector(rng, n, 8.0f), up = RandomVector(rng, n), out(n);
  SiluMul(gate.data(), up.data(), n, out.data());
  std::vector<double> ref(n);
  for (int32_t i = 0; i < n; ++i) ref[i] = gate[i] / (1 + std::exp(-double{gate[i]})) * up[i];
  EXPECT_LT(RelErr(out.data(), ref.data(), n), 1e-6);

  const int32_t rows = 5, in = 33, outs = 17;
  std::vector<float> x = RandomVector(rng, rows * in), w = RandomVector(rng, outs * in);
  std::vector<float> y(rows * outs);
  Linear(x.data(), rows, in, w.data(), outs, y.data());
  std::vector<double> y_ref(rows * outs, 0.0);
  for (int32_t r = 0; r < rows; ++r) {
    for (int32_t o = 0; o < outs; ++o) {
      for (int32_t i = 0; i < in; ++i) y_ref[r * outs + o] += double{x[r * in + i]} * w[o * in + i];
    }
  }
  EXPECT_LT(RelErr(y.data(), y_ref.data(), rows * outs), 1e-6);
}

// A filled K/V pool and one sequence's block table over it, in shuffled order.
struct TestPool {
  KvLayout layout;
  std::vector<float> k, v;
  std::vector<int32_t> table;

  TestPool(std::mt19937& rng, KvLayout l, int32_t num_blocks, int32_t seq_len) : layout(l) {
    k = RandomVector(rng, num_blocks * layout.block_elems(), 2.0f);
    v = RandomVector(rng, num_blocks * layout.block_elems());
    std::vector<int32_t> blocks(num_blocks);
    std::iota(blocks.begin(), blocks.end(), 0);
    std::shuffle(blocks.begin(), blocks.end(), rng);
    table.assign(blocks.begin(), blocks.begin() + DenseBlocks(seq_len - 1, layout.block_size));
  }
  const float* K(int32_t pos, int32_t kv_head) const { return &k[Offset(pos, kv_head)]; }
  const float* V(int32_t pos, int32_t kv_head) const { return &v[Offset(pos, kv_head)]; }
  int64_t Offset(int32_t pos, int32_t kv_head) const {
    const int32_t B = layout.block_size;
    return layout.TileOffset(table[pos / B], kv_head) + int64_t{pos % B} * layout.head_dim;
  }
};

// Softmax attention in double over the positions where attended[p] is true.
std::vector<double> BruteForceAttention(const TestPool& pool, int32_t kv_head, const float* q,
                                        const std::vector<bool>& attended, float scale) {
  const int32_t hd = pool.layout.head_dim;
  std::vector<double> scores, out(hd, 0.0);
  std::vector<int32_t> positions;
  for (int32_t p = 0; p < static_cast<int32_t>(attended.size()); ++p) {
    if (!attended[p]) continue;
    double dot = 0;
    for (int32_t d = 0; d < hd; ++d) dot += double{q[d]} * pool.K(p, kv_head)[d];
    scores.push_back(dot * scale);
    positions.push_back(p);
  }
  const double max = *std::max_element(scores.begin(), scores.end());
  double sum = 0;
  for (double& s : scores) sum += (s = std::exp(s - max));
  for (size_t i = 0; i < positions.size(); ++i) {
    for (int32_t d = 0; d < hd; ++d) out[d] += scores[i] / sum * pool.V(positions[i], kv_head)[d];
  }
  return out;
}

// Random attended ranges over [0, len): gaps inside blocks, partial and whole blocks.
Ranges RandomRanges(std::mt19937& rng, int32_t len) {
  Ranges ranges;
  std::uniform_int_distribution<int32_t> step(0, 9);
  for (int32_t pos = step(rng); pos < len;) {
    const int32_t end = std::min(len, pos + 1 + step(rng));
    ranges.push_back({pos, end});
    pos = end + 1 + step(rng);
  }
  if (ranges.empty()) ranges.push_back({len - 1, len});
  return ranges;
}

TEST(CpuMath, AttendChunksMatchesMaskedSoftmax) {
  std::mt19937 rng(4);
  for (int32_t B : {1, 3, 16, 32}) {
    for (int32_t hd : {16, 64}) {
      const KvLayout layout{2, B, hd};
      const int32_t len = 150;
      TestPool pool(rng, layout, DenseBlocks(len - 1, B) + 5, len);
      for (int trial = 0; trial < 20; ++trial) {
        const Ranges ranges = RandomRanges(rng, len);
        std::vector<KvChunk> chunks;
        AppendRangeChunks(ranges, pool.table, B, &chunks);
        std::vector<bool> attended(len, false);
        for (const TokenRange& r : ranges) {
          for (int32_t p = r.begin; p < r.end; ++p) attended[p] = true;
        }
        const int32_t kv_head = trial % 2;
        const std::vector<float> q = RandomVector(rng, hd, 2.0f);
        std::vector<float> out(hd);
        const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
        AttendChunks(q.data(), pool.k.data(), pool.v.data(), layout, kv_head, chunks, scale,
                     out.data());
        const std::vector<double> ref = BruteForceAttention(pool, kv_head, q.data(), attended, scale);
        EXPECT_LT(RelErr(out.data(), ref.data(), hd), 1e-5) << "B " << B << " trial " << trial;
      }
    }
  }
}

TEST(CpuMath, AttendCausalMatchesMaskedSoftmax) {
  std::mt19937 rng(5);
  for (int32_t B : {1, 5, 16}) {
    const KvLayout layout{3, B, 32};
    const int32_t len = 100;
    TestPool pool(rng, layout, DenseBlocks(len - 1, B) + 2, len);
    for (int32_t pos : {0, 1, B - 1, B, 57, len - 1}) {
      if (pos < 0) continue;
      std::vector<bool> attended(len, false);
      std::fill(attended.begin(), attended.begin() + pos + 1, true);
      const std::vector<float> q = RandomVector(rng, 32, 2.0f);
      std::vector<float> out(32);
      AttendCausal(q.data(), pool.k.data(), pool.v.data(), layout, 2, pool.table, pos, 0.25f,
                   out.data());
      const std::vector<double> ref = BruteForceAttention(pool, 2, q.data(), attended, 0.25f);
      EXPECT_LT(RelErr(out.data(), ref.data(), 32), 1e-5) << "B " << B << " pos " << pos;
    }
  }
}

TEST(CpuMath, AttendNothingGivesZeros) {
  std::vector<float> k(16, 1.0f), v(16, 1.0f), q(4, 1.0f), out(4, 7.0f);
  AttendChunks(q.data(), k.data(), v.data(), {1, 4, 4}, 0, {}, 1.0f, out.data());
  EXPECT_EQ(out, std::vector<float>(4, 0.0f));
}

// ---------------------------------------------------------------------------------------------
// Tiny models in memory

struct TinySpec {
  int32_t hidden = 32, inter = 48, layers = 2, heads = 4, kv_heads = 2, head_dim = 8, vocab = 40;
  DType dtype = DType::kF32;
  bool tied = false;
  bool poison_last_token = false;  // the last token's embedding is NaN (F32 only)
  uint32_t seed = 7;
};

// Weights are k * 2^-(7 + shift) for integers |k| <= 255 (norms: 1 + k/128, |k| <= 31), exact
// in f32, f16 and bf16 alike.
class WeightMaker {
 public:
  WeightMaker(const TinySpec& spec, ModelWeights* weights)
      : spec_(spec), weights_(weights), rng_(spec.seed) {}

  TensorView Make(const std::string& name, std::vector<int64_t> shape, float offset, int shift) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    const int max_k = offset != 0 ? 31 : 255;  // norm weights 1 + k/128 stay within 8 bits
    std::uniform_int_distribution<int> k(-max_k, max_k);
    std::vector<float> values(numel);
    for (float& v : values) v = offset + std::ldexp(static_cast<float>(k(rng_)), -7 - shift);
    TensorView view{name, spec_.dtype, shape, nullptr};
    view.data = Store(values);
    return view;
  }

  const void* Store(const std::vector<float>& values) {
    if (spec_.dtype == DType::kF32) return Keep(values);
    std::vector<uint16_t> bits(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      bits[i] = spec_.dtype == DType::kF16 ? FloatToHalf(values[i]) : FloatToBf16(values[i]);
    }
    return Keep(bits);
  }

 private:
  template <typename T>
  const void* Keep(const std::vector<T>& v) {
    auto owned = std::make_shared<std::vector<T>>(v);
    weights_->storage.push_back(owned);
    return owned->data();
  }
  const TinySpec& spec_;
  ModelWeights* weights_;
  std::mt19937 rng_;
};

std::shared_ptr<Model> MakeTinyModel(const TinySpec& spec) {
  auto model = std::make_shared<Model>();
  ModelConfig& c = model->config;
  c.hidden_size = spec.hidden;
  c.intermediate_size = spec.inter;
  c.num_layers = spec.layers;
  c.num_heads = spec.heads;
  c.num_kv_heads = spec.kv_heads;
  c.head_dim = spec.head_dim;
  c.vocab_size = spec.vocab;
  c.max_position_embeddings = 512;
  c.tie_word_embeddings = spec.tied;
  ModelWeights& w = model->weights;
  WeightMaker make(spec, &w);
  const int64_t h = spec.hidden, q = spec.heads * spec.head_dim, kv = spec.kv_heads * spec.head_dim;
  w.embed = make.Make("embed", {spec.vocab, h}, 0, 0);
  if (spec.poison_last_token) {
    float* embed = const_cast<float*>(static_cast<const float*>(w.embed.data));
    std::fill_n(embed + (spec.vocab - 1) * h, h, std::nanf(""));
  }
  for (int32_t l = 0; l < spec.layers; ++l) {
    LayerWeights lw;
    lw.attn_norm = make.Make("attn_norm", {h}, 1, 0);
    lw.wq = make.Make("wq", {q, h}, 0, 2);
    lw.wk = make.Make("wk", {kv, h}, 0, 2);
    lw.wv = make.Make("wv", {kv, h}, 0, 2);
    lw.wo = make.Make("wo", {h, q}, 0, 3);
    lw.ffn_norm = make.Make("ffn_norm", {h}, 1, 0);
    lw.w_gate = make.Make("w_gate", {spec.inter, h}, 0, 2);
    lw.w_up = make.Make("w_up", {spec.inter, h}, 0, 2);
    lw.w_down = make.Make("w_down", {h, spec.inter}, 0, 3);
    w.layers.push_back(lw);
  }
  w.final_norm = make.Make("final_norm", {h}, 1, 0);
  w.lm_head = spec.tied ? w.embed : make.Make("lm_head", {spec.vocab, h}, 0, 0);
  return model;
}

// ---------------------------------------------------------------------------------------------
// A double-precision forward pass of an F32 model where position p attends exactly ranges[p].

using Matrix = std::vector<std::vector<double>>;

const float* F32(const TensorView& t) { return static_cast<const float*>(t.data); }

Matrix LinearRef(const Matrix& x, const TensorView& w) {
  const int64_t outs = w.shape[0], in = w.shape[1];
  Matrix y(x.size(), std::vector<double>(outs, 0.0));
  for (size_t r = 0; r < x.size(); ++r) {
    for (int64_t o = 0; o < outs; ++o) {
      for (int64_t i = 0; i < in; ++i) y[r][o] += x[r][i] * F32(w)[o * in + i];
    }
  }
  return y;
}

Matrix NormRef(const Matrix& x, const TensorView& w, double eps) {
  Matrix y = x;
  for (auto& row : y) {
    double sum = 0;
    for (double v : row) sum += v * v;
    const double inv = 1 / std::sqrt(sum / row.size() + eps);
    for (size_t i = 0; i < row.size(); ++i) row[i] *= inv * F32(w)[i];
  }
  return y;
}

void RopeRef(Matrix* x, int32_t heads, int32_t hd, double theta) {
  for (size_t p = 0; p < x->size(); ++p) {
    for (int32_t h = 0; h < heads; ++h) {
      for (int32_t i = 0; i < hd / 2; ++i) {
        const double angle = p * std::pow(theta, -2.0 * i / hd);
        double& a = (*x)[p][h * hd + i];
        double& b = (*x)[p][h * hd + i + hd / 2];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(angle) - b0 * std::sin(angle);
        b = b0 * std::cos(angle) + a0 * std::sin(angle);
      }
    }
  }
}

Matrix AttentionRef(const Matrix& q, const Matrix& k, const Matrix& v,
                    const std::vector<Ranges>& ranges, const ModelConfig& c) {
  const int32_t hd = c.head_dim, group = c.num_heads / c.num_kv_heads;
  Matrix out(q.size(), std::vector<double>(c.num_heads * hd, 0.0));
  for (size_t p = 0; p < q.size(); ++p) {
    for (int32_t h = 0; h < c.num_heads; ++h) {
      const int32_t kvh = h / group;
      std::vector<std::pair<int32_t, double>> scores;
      for (const TokenRange& r : ranges[p]) {
        for (int32_t t = r.begin; t < r.end; ++t) {
          double dot = 0;
          for (int32_t d = 0; d < hd; ++d) dot += q[p][h * hd + d] * k[t][kvh * hd + d];
          scores.push_back({t, dot / std::sqrt(double(hd))});
        }
      }
      double max = -INFINITY, sum = 0;
      for (auto& [t, s] : scores) max = std::max(max, s);
      for (auto& [t, s] : scores) sum += (s = std::exp(s - max));
      for (auto& [t, s] : scores) {
        for (int32_t d = 0; d < hd; ++d) out[p][h * hd + d] += s / sum * v[t][kvh * hd + d];
      }
    }
  }
  return out;
}

Matrix ReferenceLogits(const Model& model, const std::vector<int32_t>& tokens,
                       const std::vector<Ranges>& ranges) {
  const ModelConfig& c = model.config;
  const ModelWeights& w = model.weights;
  Matrix x(tokens.size(), std::vector<double>(c.hidden_size));
  for (size_t p = 0; p < tokens.size(); ++p) {
    for (int32_t i = 0; i < c.hidden_size; ++i) x[p][i] = F32(w.embed)[tokens[p] * c.hidden_size + i];
  }
  auto add = [](Matrix* x, const Matrix& y) {
    for (size_t r = 0; r < x->size(); ++r) {
      for (size_t i = 0; i < y[r].size(); ++i) (*x)[r][i] += y[r][i];
    }
  };
  for (const LayerWeights& lw : w.layers) {
    Matrix xn = NormRef(x, lw.attn_norm, c.rms_norm_eps);
    Matrix q = LinearRef(xn, lw.wq), k = LinearRef(xn, lw.wk), v = LinearRef(xn, lw.wv);
    RopeRef(&q, c.num_heads, c.head_dim, c.rope_theta);
    RopeRef(&k, c.num_kv_heads, c.head_dim, c.rope_theta);
    add(&x, LinearRef(AttentionRef(q, k, v, ranges, c), lw.wo));
    xn = NormRef(x, lw.ffn_norm, c.rms_norm_eps);
    Matrix gate = LinearRef(xn, lw.w_gate);
    const Matrix up = LinearRef(xn, lw.w_up);
    for (size_t r = 0; r < gate.size(); ++r) {
      for (size_t i = 0; i < gate[r].size(); ++i) gate[r][i] *= up[r][i] / (1 + std::exp(-gate[r][i]));
    }
    add(&x, LinearRef(gate, lw.w_down));
  }
  return LinearRef(NormRef(x, w.final_norm, c.rms_norm_eps), w.lm_head);
}

// ---------------------------------------------------------------------------------------------
// Driving a backend

std::vector<Ranges> DenseRanges(int32_t len) {
  std::vector<Ranges> ranges(len);
  for (int32_t p = 0; p < len; ++p) ranges[p] = {{0, p + 1}};
  return ranges;
}

std::unique_ptr<Backend> MakeBackend(std::shared_ptr<const Model> model, int32_t block_size,
                                     int32_t num_blocks) {
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      CreateCpuBackend(std::move(model), {.block_size = block_size, .num_blocks = num_blocks});
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

// A step of one sequence with rows at `positions` (token tokens[p] each). In a multi-row step a
// dense row runs causal; every other row gets the chunks of its ranges.
StepBatch SequenceStep(const std::vector<int32_t>& positions, const std::vector<int32_t>& tokens,
                       const std::vector<Ranges>& ranges, const std::vector<int32_t>& table,
                       int32_t block_size) {
  StepBatch batch;
  batch.logits_mode = LogitsMode::kAllRows;
  for (int32_t p : positions) {
    AttentionRow row;
    const bool dense = ranges[p] == Ranges{{0, p + 1}};
    if (dense && positions.size() > 1) {
      row.causal = true;
    } else {
      row.chunk_begin = static_cast<int32_t>(batch.chunks.size());
      AppendRangeChunks(ranges[p], table, block_size, &batch.chunks);
      row.chunk_end = static_cast<int32_t>(batch.chunks.size());
    }
    batch.rows.push_back(row);
    batch.token_ids.push_back(tokens[p]);
    batch.positions.push_back(p);
  }
  batch.seqs.push_back({.row_begin = 0, .num_rows = static_cast<int32_t>(positions.size()),
                        .num_blocks = static_cast<int32_t>(table.size())});
  batch.block_tables = table;
  return batch;
}

// Runs a whole sequence in steps of the given sizes; returns the logits of every position.
std::vector<float> RunSequence(Backend* backend, const std::vector<int32_t>& tokens,
                               const std::vector<Ranges>& ranges,
                               const std::vector<int32_t>& table,
                               const std::vector<int32_t>& step_sizes) {
  std::vector<float> logits;
  int32_t begin = 0;
  for (int32_t size : step_sizes) {
    std::vector<int32_t> positions(size);
    std::iota(positions.begin(), positions.end(), begin);
    begin += size;
    StepOutput out;
    absl::Status status =
        backend->Step(SequenceStep(positions, tokens, ranges, table, backend->block_size()), &out);
    EXPECT_TRUE(status.ok()) << status;
    logits.insert(logits.end(), out.logits.begin(), out.logits.end());
  }
  EXPECT_EQ(begin, static_cast<int32_t>(tokens.size()));
  return logits;
}

std::vector<int32_t> Steps(int32_t len, int32_t first, int32_t each) {
  std::vector<int32_t> steps = {std::min(first, len)};
  for (int32_t done = steps[0]; done < len; done += each) steps.push_back(std::min(each, len - done));
  return steps;
}

std::vector<int32_t> ShuffledTable(int32_t len, int32_t block_size, int32_t num_blocks,
                                   uint32_t seed) {
  std::vector<int32_t> blocks(num_blocks);
  std::iota(blocks.begin(), blocks.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  blocks.resize(DenseBlocks(len - 1, block_size));
  return blocks;
}

std::vector<int32_t> RandomTokens(int32_t len, int32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> tokens(len);
  for (int32_t& t : tokens) t = dist(rng);
  return tokens;
}

void ExpectRowsNear(const std::vector<float>& logits, const Matrix& ref, double tol,
                    const std::string& what) {
  ASSERT_EQ(logits.size(), ref.size() * ref[0].size()) << what;
  const int64_t vocab = ref[0].size();
  for (size_t p = 0; p < ref.size(); ++p) {
    EXPECT_LT(RelErr(&logits[p * vocab], ref[p].data(), vocab), tol) << what << " row " << p;
  }
}

// ---------------------------------------------------------------------------------------------
// Whole-model tests

struct ModelCase {
  int32_t block_size;
  int32_t kv_heads;  // 4: MHA, 2 or 1: GQA
};

class DenseAgreement : public testing::TestWithParam<ModelCase> {};

TEST_P(DenseAgreement, PrefillDecodeAndChunkedMatchReference) {
  const ModelCase mc = GetParam();
  TinySpec spec;
  spec.kv_heads = mc.kv_heads;
  std::shared_ptr<Model> model = MakeTinyModel(spec);
  const int32_t len = 37, B = mc.block_size, num_blocks = DenseBlocks(len - 1, B) + 3;
  const std::vector<int32_t> tokens = RandomTokens(len, spec.vocab, 11);
  const std::vector<Ranges> ranges = DenseRanges(len);
  const Matrix ref = ReferenceLogits(*model, tokens, ranges);

  auto run = [&](const std::vector<int32_t>& steps, uint32_t table_seed) {
    std::unique_ptr<Backend> backend = MakeBackend(model, B, num_blocks);
    return RunSequence(backend.get(), tokens, ranges, ShuffledTable(len, B, num_blocks, table_seed),
                       steps);
  };
  const std::vector<float> prefill = run({len}, 1);
  const std::vector<float> decode = run(Steps(len, 1, 1), 2);
  const std::vector<float> chunked = run(Steps(len, 5, 5), 3);
  ExpectRowsNear(prefill, ref, 1e-5, "prefill");
  ExpectRowsNear(decode, ref, 1e-5, "decode");
  ExpectRowsNear(chunked, ref, 1e-5, "chunked");
  EXPECT_LT(RelErr(decode.data(), prefill.data(), prefill.size()), 1e-5);
  EXPECT_LT(RelErr(chunked.data(), prefill.data(), prefill.size()), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(BlockSizesAndHeads, DenseAgreement,
                         testing::Values(ModelCase{1, 2}, ModelCase{16, 2}, ModelCase{32, 2},
                                         ModelCase{1, 4}, ModelCase{16, 4}, ModelCase{32, 1}),
                         [](const testing::TestParamInfo<ModelCase>& info) {
                           return "B" + std::to_string(info.param.block_size) + "_kv" +
                                  std::to_string(info.param.kv_heads);
                         });

// Positions from 20 on attend the sink, one referenced range and their own segment.
std::vector<Ranges> SparseRanges(int32_t len, TokenRange referenced) {
  std::vector<Ranges> ranges = DenseRanges(len);
  for (int32_t p = 20; p < len; ++p) ranges[p] = {{0, 2}, referenced, {20, p + 1}};
  return ranges;
}

class SparseRows : public testing::TestWithParam<int32_t> {};

TEST_P(SparseRows, MatchMaskedReferenceAndDependOnTheirChunks) {
  const int32_t B = GetParam(), len = 40, num_blocks = DenseBlocks(len - 1, B) + 2;
  TinySpec spec;
  std::shared_ptr<Model> model = MakeTinyModel(spec);
  const std::vector<int32_t> tokens = RandomTokens(len, spec.vocab, 12);
  const std::vector<int32_t> table = ShuffledTable(len, B, num_blocks, 4);
  const std::vector<Ranges> ranges = SparseRanges(len, {8, 13});
  const Matrix ref = ReferenceLogits(*model, tokens, ranges);

  // Prefill the dense part, then the sparse rows one by one and all in one step.
  std::unique_ptr<Backend> decode = MakeBackend(model, B, num_blocks);
  ExpectRowsNear(RunSequence(decode.get(), tokens, ranges, table, Steps(len, 20, 1)), ref, 1e-5,
                 "decode");
  std::unique_ptr<Backend> together = MakeBackend(model, B, num_blocks);
  ExpectRowsNear(RunSequence(together.get(), tokens, ranges, table, {20, 20}), ref, 1e-5, "step");

  // Another referenced range changes the sparse rows, and the backend follows.
  const std::vector<Ranges> other = SparseRanges(len, {13, 18});
  const Matrix other_ref = ReferenceLogits(*model, tokens, other);
  EXPECT_GT(RelErr(other_ref[len - 1].data(), ref[len - 1].data(), spec.vocab), 1e-3);
  std::unique_ptr<Backend> backend = MakeBackend(model, B, num_blocks);
  ExpectRowsNear(RunSequence(backend.get(), tokens, other, table, {20, 20}), other_ref, 1e-5,
                 "other");
}

INSTANTIATE_TEST_SUITE_P(BlockSizes, SparseRows, testing::Values(1, 4, 16));

// Overwrites every unlisted position's K and V with NaN (a token whose embedding is NaN): the
// sparse row must not change, and a dense row must turn NaN (the poison works).
TEST(SparseRows, NeverReadUnlistedTokens) {
  for (int32_t B : {1, 4, 16}) {
    const int32_t len = 40, num_blocks = DenseBlocks(len - 1, B) + 2;
    TinySpec spec;
    spec.poison_last_token = true;
    std::shared_ptr<Model> model = MakeTinyModel(spec);
    const std::vector<int32_t> tokens = RandomTokens(len, spec.vocab - 1, 13);
    const std::vector<int32_t> table = ShuffledTable(len, B, num_blocks, 5);
    const std::vector<Ranges> ranges = SparseRanges(len, {8, 13});
    std::unique_ptr<Backend> backend = MakeBackend(model, B, num_blocks);
    // The last row runs alone, as it will again after the poison: same shapes, same bits.
    const std::vector<float> clean = RunSequence(backend.get(), tokens, ranges, table, {20, 19, 1});
    const std::vector<float> last_row(clean.end() - spec.vocab, clean.end());

    std::vector<int32_t> poisoned = tokens, unlisted;
    for (int32_t p = 0; p < 20; ++p) {
      if (p >= 2 && !(p >= 8 && p < 13)) {
        unlisted.push_back(p);
        poisoned[p] = spec.vocab - 1;
      }
    }
    StepOutput out;
    ASSERT_TRUE(backend->Step(SequenceStep(unlisted, poisoned, DenseRanges(len), table, B), &out).ok());
    ASSERT_TRUE(backend->Step(SequenceStep({len - 1}, tokens, ranges, table, B), &out).ok());
    EXPECT_EQ(out.logits, last_row) << "B " << B;

    std::vector<Ranges> dense = DenseRanges(len);
    ASSERT_TRUE(backend->Step(SequenceStep({len - 2, len - 1}, tokens, dense, table, B), &out).ok());
    EXPECT_TRUE(std::isnan(out.logits.back())) << "B " << B;
  }
}

// Two sequences and a bystander in one batch: the output per logits mode, sampling and forcing.
TEST(CpuBackend, LogitsModesSamplingAndForcedTokens) {
  TinySpec spec;
  std::shared_ptr<Model> model = MakeTinyModel(spec);
  const std::vector<int32_t> tokens = RandomTokens(9, spec.vocab, 14);
  const Matrix ref = ReferenceLogits(*model, tokens, DenseRanges(9));
  std::unique_ptr<Backend> backend = MakeBackend(model, 4, 12);

  // Seq 0: 5 prompt rows (blocks 0, 1). Seq 1: one row at position 0 (block 5). Seq 2: 9 rows
  // (blocks 7, 3, 9), not sampled.
  StepBatch batch;
  auto add_seq = [&](int32_t rows, std::vector<int32_t> blocks, bool sample, int32_t forced) {
    const int32_t s = static_cast<int32_t>(batch.seqs.size());
    batch.seqs.push_back({.row_begin = batch.num_rows(), .num_rows = rows,
                          .table_begin = static_cast<int32_t>(batch.block_tables.size()),
                          .num_blocks = static_cast<int32_t>(blocks.size()), .sample = sample,
                          .forced_token = forced});
    batch.block_tables.insert(batch.block_tables.end(), blocks.begin(), blocks.end());
    for (int32_t p = 0; p < rows; ++p) {
      batch.rows.push_back({.seq = s, .causal = true});
      batch.token_ids.push_back(tokens[p]);
      batch.positions.push_back(p);
    }
  };
  add_seq(5, {0, 1}, true, -1);
  add_seq(1, {5}, true, 7);
  add_seq(9, {7, 3, 9}, false, -1);
  const int32_t V = spec.vocab;

  StepOutput all;
  batch.logits_mode = LogitsMode::kAllRows;
  ASSERT_TRUE(backend->Step(batch, &all).ok());
  ASSERT_EQ(all.logits.size(), size_t(15 * V));
  for (int32_t p = 0; p < 5; ++p) EXPECT_LT(RelErr(&all.logits[p * V], ref[p].data(), V), 1e-5);
  EXPECT_LT(RelErr(&all.logits[5 * V], ref[0].data(), V), 1e-5);
  for (int32_t p = 0; p < 9; ++p) EXPECT_LT(RelErr(&all.logits[(6 + p) * V], ref[p].data(), V), 1e-5);
  const int32_t argmax = static_cast<int32_t>(
      std::max_element(&all.logits[4 * V], &all.logits[5 * V]) - &all.logits[4 * V]);
  EXPECT_EQ(all.tokens, (std::vector<int32_t>{argmax, 7, -1}));

  StepOutput sampled;
  batch.logits_mode = LogitsMode::kSampled;
  ASSERT_TRUE(backend->Step(batch, &sampled).ok());
  ASSERT_EQ(sampled.logits.size(), size_t(2 * V));
  // The same rows' logits, to rounding: OpenBLAS picks its kernel by the row count, so a
  // 2-row and a 15-row lm_head GEMM may differ in the last bits (they do on this CI's CPU).
  std::vector<double> row4(&all.logits[4 * V], &all.logits[5 * V]);
  std::vector<double> row5(&all.logits[5 * V], &all.logits[6 * V]);
  EXPECT_LT(RelErr(&sampled.logits[0], row4.data(), V), 1e-6);
  EXPECT_LT(RelErr(&sampled.logits[V], row5.data(), V), 1e-6);
  EXPECT_EQ(sampled.tokens, all.tokens);

  StepOutput none;
  none.logits.assign(3, 1.0f);
  batch.logits_mode = LogitsMode::kNone;
  ASSERT_TRUE(backend->Step(batch, &none).ok());
  EXPECT_TRUE(none.logits.empty());
  EXPECT_EQ(none.tokens, all.tokens);

  // Sampling with temperature draws from (seed, sample_index): deterministic per index.
  batch.seqs[0].sampling = {.temperature = 1.0f, .seed = 3};
  StepOutput a, b;
  ASSERT_TRUE(backend->Step(batch, &a).ok());
  ASSERT_TRUE(backend->Step(batch, &b).ok());
  EXPECT_EQ(a.tokens, b.tokens);
}

TEST(CpuBackend, HalfAndBf16WeightsGiveTheF32Result) {
  for (bool tied : {false, true}) {
    TinySpec spec;
    spec.tied = tied;
    const std::vector<int32_t> tokens = RandomTokens(11, spec.vocab, 15);
    std::vector<std::vector<float>> results;
    for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
      spec.dtype = dtype;
      std::unique_ptr<Backend> backend = MakeBackend(MakeTinyModel(spec), 16, 2);
      results.push_back(RunSequence(backend.get(), tokens, DenseRanges(11), {0}, {11}));
    }
    EXPECT_EQ(results[0], results[1]) << "tied " << tied;
    EXPECT_EQ(results[0], results[2]) << "tied " << tied;
    spec.dtype = DType::kF32;
    ExpectRowsNear(results[0], ReferenceLogits(*MakeTinyModel(spec), tokens, DenseRanges(11)),
                   1e-5, "f32");
  }
}

// A model directory loaded by LoadModel: F32 weights are used from the mapping and must give the
// reference; F16/BF16 files are converted and must agree across prefill, decode and chunked.
TEST(CpuBackend, LoadedTinyModelMatchesReferenceInEveryPhase) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (bool tied : {false, true}) {
      TinyModelSpec spec;
      spec.dtype = dtype;
      spec.tied = tied;
      const std::string dir = WriteTinyModelDir(spec, MakeTempDir("cpu_backend_test"));
      absl::StatusOr<std::unique_ptr<Model>> loaded = LoadModel(dir);
      std::filesystem::remove_all(dir);  // the mappings stay valid
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      std::shared_ptr<const Model> model = std::move(*loaded);
      const int32_t len = 29, B = 8, num_blocks = DenseBlocks(len - 1, B) + 1;
      const std::vector<int32_t> tokens = RandomTokens(len, spec.vocab, 17);
      const std::vector<Ranges> ranges = DenseRanges(len);
      auto run = [&](const std::vector<int32_t>& steps) {
        std::unique_ptr<Backend> backend = MakeBackend(model, B, num_blocks);
        return RunSequence(backend.get(), tokens, ranges, ShuffledTable(len, B, num_blocks, 6),
                           steps);
      };
      const std::vector<float> prefill = run({len});
      const std::string what = std::string(DTypeName(dtype)) + (tied ? " tied" : "");
      EXPECT_LT(RelErr(run(Steps(len, 1, 1)).data(), prefill.data(), prefill.size()), 1e-5) << what;
      EXPECT_LT(RelErr(run(Steps(len, 5, 5)).data(), prefill.data(), prefill.size()), 1e-5) << what;
      if (dtype == DType::kF32) ExpectRowsNear(prefill, ReferenceLogits(*model, tokens, ranges), 1e-5, what);
    }
  }
}

TEST(CpuBackend, RejectsBadBatches) {
  TinySpec spec;
  std::unique_ptr<Backend> backend = MakeBackend(MakeTinyModel(spec), 4, 6);
  const std::vector<int32_t> tokens = RandomTokens(8, spec.vocab, 16);
  std::vector<Ranges> ranges = DenseRanges(8);
  ranges[6] = {{0, 2}, {5, 7}};
  // Rows 5 (causal), 6 (chunks), 7 (causal) of a sequence in blocks 2, 0.
  const StepBatch good = SequenceStep({5, 6, 7}, tokens, ranges, {2, 0}, 4);
  StepOutput out;
  ASSERT_TRUE(backend->Step(good, &out).ok());

  std::vector<std::pair<std::string, std::function<void(StepBatch*)>>> cases = {
      {"table block -1", [](StepBatch* b) { b->block_tables[0] = -1; }},
      {"table block past pool", [](StepBatch* b) { b->block_tables[1] = 6; }},
      {"chunk block past pool", [](StepBatch* b) { b->chunks[0].block = 6; }},
      {"chunk block -1", [](StepBatch* b) { b->chunks[1].block = -1; }},
      {"chunk end past block", [](StepBatch* b) { b->chunks[0].end = 5; }},
      {"chunk begin -1", [](StepBatch* b) { b->chunks[0].begin = -1; }},
      {"chunk begin > end", [](StepBatch* b) { b->chunks[1].begin = 4; }},
      {"chunk list past chunks", [](StepBatch* b) { b->rows[1].chunk_end = 9; }},
      {"chunk list backwards", [](StepBatch* b) { b->rows[1].chunk_begin = 2, b->rows[1].chunk_end = 1; }},
      {"position past table", [](StepBatch* b) { b->positions[2] = 8; }},
      {"position -1", [](StepBatch* b) { b->positions[0] = -1; }},
      {"token past vocab", [&](StepBatch* b) { b->token_ids[1] = spec.vocab; }},
      {"token -1", [](StepBatch* b) { b->token_ids[0] = -1; }},
      {"row seq missing", [](StepBatch* b) { b->rows[0].seq = 1; }},
      {"seq rows past batch", [](StepBatch* b) { b->seqs[0].num_rows = 4; }},
      {"row outside its seq", [](StepBatch* b) { b->seqs[0].num_rows = 2; }},
      {"table past batch", [](StepBatch* b) { b->seqs[0].num_blocks = 3; }},
      {"sizes differ", [](StepBatch* b) { b->positions.pop_back(); }},
      {"forced past vocab", [&](StepBatch* b) { b->seqs[0].sample = true, b->seqs[0].forced_token = spec.vocab; }},
      {"sample without rows", [](StepBatch* b) { b->seqs.push_back({.row_begin = 3, .sample = true}); }},
  };
  for (auto& [what, mutate] : cases) {
    StepBatch bad = good;
    mutate(&bad);
    EXPECT_EQ(backend->Step(bad, &out).code(), absl::StatusCode::kInvalidArgument) << what;
  }
  EXPECT_TRUE(backend->Step(good, &out).ok());
}

TEST(CpuBackend, PoolSizingAndBadOptions) {
  TinySpec spec;  // 2 layers, 2 KV heads, head_dim 8
  std::shared_ptr<Model> model = MakeTinyModel(spec);
  EXPECT_EQ(KvBlockBytes(model->config, 16, 4), 2 * 2 * 2 * 16 * 8 * 4);
  EXPECT_EQ(KvBlockBytes(model->config, 16, 2), 2 * 2 * 2 * 16 * 8 * 2);
  auto made = CreateCpuBackend(model, {.block_size = 16, .num_blocks = 0, .memory_bytes = 10 * 4096 + 100});
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ((*made)->num_kv_blocks(), 10);
  EXPECT_EQ((*made)->block_size(), 16);
  EXPECT_EQ((*made)->vocab_size(), spec.vocab);
  EXPECT_EQ((*made)->name(), "cpu");
  EXPECT_FALSE(CreateCpuBackend(model, {.block_size = 16, .memory_bytes = 4095}).ok());
  EXPECT_FALSE(CreateCpuBackend(model, {.block_size = 0, .num_blocks = 4}).ok());
  EXPECT_FALSE(CreateCpuBackend(model, {.block_size = 257, .num_blocks = 4}).ok());
  EXPECT_TRUE(CreateCpuBackend(model, {.block_size = 256, .num_blocks = 1}).ok());
  EXPECT_FALSE(CreateCpuBackend(nullptr, {.num_blocks = 1}).ok());
}

TEST(CpuBackend, RejectsWeightsThatDoNotFitTheConfig) {
  TinySpec spec;
  std::shared_ptr<Model> model = MakeTinyModel(spec);
  model->weights.layers[1].wk.shape = {16, 31};
  absl::StatusOr<std::unique_ptr<Backend>> made = CreateCpuBackend(model, {.num_blocks = 1});
  EXPECT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(made.status().message().find("wk"), std::string::npos) << made.status();
  model = MakeTinyModel(spec);
  model->weights.layers.pop_back();
  EXPECT_FALSE(CreateCpuBackend(model, {.num_blocks = 1}).ok());
  model = MakeTinyModel(spec);
  model->config.num_kv_heads = 3;
  EXPECT_FALSE(CreateCpuBackend(model, {.num_blocks = 1}).ok());
}

}  // namespace
}  // namespace spanserve
