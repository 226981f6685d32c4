// Kernel benchmark of the causal prefill attention (kernels/prefill_attention.cu): the
// tensor-core kernel (PrefillAttentionArgs::tensor_cores = true, the default) against the
// CUDA-core one (false) on the same jobs, with the metadata the backend builds
// (gpu::BuildStepPlan, prefill_tile_rows = gpu::PrefillTileRows(group), jobs longest first);
// and the tensor-core kernel again on the jobs in row order (tc_row_order_us; order_gain: its
// time over tc_us; its output must equal tc's bit for bit). A step of S sequences of `context`
// prompt tokens each, every row a causal row at positions 0..context-1 (S x context = --rows
// query rows), KV block size 16, each sequence's blocks consecutive in the pool; q, K and V
// random bf16. Launches alternate (tc, cuda cores, tc in row order, tc, ...), each timed alone
// with CUDA events; times are medians. FLOPs: 4 x head_dim x heads x sum over rows of
// (position + 1) (Q K^T and P V, causal). max_rel_diff: max |tc - cuda_core| / max |cuda_core|
// over the bf16 outputs. Exits non-zero on a launch error, max_rel_diff > --tolerance or a
// row-order output that differs.
//
// Run: cuda_prefill_bench --csv prefill.csv [--iters 20] [--shapes summ,llama3_8b]
//                         [--contexts 512,2048,4096] [--rows 8192]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/cuda/bench_util.h"
#include "engine/backends/backend.h"
#include "engine/backends/cpu_math.h"
#include "engine/backends/cuda_step_plan.h"
#include "kernels/kernels.h"
#include "kernels/launch_plan.h"

namespace spanserve::bench {
namespace {

constexpr int32_t kBlockSize = 16;

struct Shape {
  std::string name;
  int32_t heads, kv_heads, head_dim;
};

const std::vector<Shape>& KnownShapes() {
  static const std::vector<Shape> shapes = {
      {"summ", 6, 3, 64}, {"llama7b", 32, 32, 128}, {"llama3_8b", 32, 8, 128}};
  return shapes;
}

struct Result {
  std::string shape;
  int32_t context = 0, rows = 0;
  double tc_us = 0, tc_tflops = 0, cc_us = 0, cc_tflops = 0, speedup = 0, max_rel_diff = 0;
  double tc_row_order_us = 0, order_gain = 0;
  bool order_same_bits = false;
};

bool Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::fprintf(stderr, "cuda error in %s: %s\n", what, cudaGetErrorString(e));
  return false;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Device buffers freed on scope exit.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  bool Alloc(size_t bytes, const char* what) {
    return Check(cudaMalloc(&ptr_, std::max<size_t>(bytes, 16)), what);
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

// S sequences of `context` prompt rows each, all causal, blocks consecutive per sequence.
StepBatch PrefillBatch(int32_t num_seqs, int32_t context) {
  StepBatch batch;
  const int32_t blocks_per_seq = (context + kBlockSize - 1) / kBlockSize;
  for (int32_t s = 0; s < num_seqs; ++s) {
    StepSequence seq;
    seq.row_begin = batch.num_rows();
    seq.num_rows = context;
    seq.table_begin = static_cast<int32_t>(batch.block_tables.size());
    seq.num_blocks = blocks_per_seq;
    for (int32_t b = 0; b < blocks_per_seq; ++b) batch.block_tables.push_back(s * blocks_per_seq + b);
    for (int32_t p = 0; p < context; ++p) {
      AttentionRow row;
      row.seq = s;
      row.causal = true;
      batch.rows.push_back(row);
      batch.token_ids.push_back(0);
      batch.positions.push_back(p);
    }
    batch.seqs.push_back(seq);
  }
  return batch;
}

bool Run(const Shape& s, int32_t context, int32_t total_rows, int iters, cudaStream_t stream,
         Result* result) {
  const int32_t group = s.heads / s.kv_heads, hd = s.head_dim;
  const int32_t num_seqs = std::max(1, total_rows / context);
  const StepBatch batch = PrefillBatch(num_seqs, context);
  const int32_t n = batch.num_rows();
  const int64_t num_blocks = static_cast<int64_t>(batch.block_tables.size());

  gpu::PlanOptions options;
  options.block_size = kBlockSize;
  options.num_splits = 1;
  options.prefill_tile_rows = gpu::PrefillTileRows(group);
  const gpu::PlanLayout layout = gpu::PlanLayout::For(gpu::NeededCapacity(batch, options));
  std::vector<uint8_t> blob(layout.total);
  const gpu::StepPlan plan = gpu::BuildStepPlan(batch, options, layout, blob.data());
  options.prefill_longest_first = false;
  std::vector<uint8_t> row_order_blob(layout.total);
  gpu::BuildStepPlan(batch, options, layout, row_order_blob.data());
  const size_t jobs_bytes = size_t(plan.prefill_jobs) * sizeof(gpu::PrefillJob);

  const size_t kv_elems = size_t(num_blocks) * s.kv_heads * kBlockSize * hd;
  const size_t q_elems = size_t(n) * s.heads * hd;
  DeviceBuffer blob_dev, row_jobs, k, v, q, out_tc, out_cc, out_row;
  bool ok = blob_dev.Alloc(layout.total, "metadata") && row_jobs.Alloc(jobs_bytes, "jobs") &&
            k.Alloc(kv_elems * 2, "K cache") && v.Alloc(kv_elems * 2, "V cache") &&
            q.Alloc(q_elems * 2, "q") && out_tc.Alloc(q_elems * 2, "out") &&
            out_cc.Alloc(q_elems * 2, "out") && out_row.Alloc(q_elems * 2, "out");
  if (!ok) return false;
  const uint32_t seed = static_cast<uint32_t>(context * 7 + s.heads * 131 + s.kv_heads * 17 + hd);
  ok = Check(cudaMemcpy(blob_dev.as<void>(), blob.data(), layout.total, cudaMemcpyHostToDevice),
             "metadata") &&
       Check(cudaMemcpy(row_jobs.as<void>(), row_order_blob.data() + layout.prefill_jobs,
                        jobs_bytes, cudaMemcpyHostToDevice),
             "jobs") &&
       Check(FillRandomBf16(k.as<uint16_t>(), kv_elems, seed + 1, stream), "fill") &&
       Check(FillRandomBf16(v.as<uint16_t>(), kv_elems, seed + 2, stream), "fill") &&
       Check(FillRandomBf16(q.as<uint16_t>(), q_elems, seed + 3, stream), "fill") &&
       Check(cudaMemsetAsync(out_tc.as<void>(), 0xff, q_elems * 2, stream), "poison") &&
       Check(cudaMemsetAsync(out_cc.as<void>(), 0xff, q_elems * 2, stream), "poison") &&
       Check(cudaMemsetAsync(out_row.as<void>(), 0xff, q_elems * 2, stream), "poison") &&
       Check(cudaStreamSynchronize(stream), "fill");
  if (!ok) return false;

  const uint8_t* base = blob_dev.as<uint8_t>();
  gpu::PrefillAttentionArgs tc{};
  tc.q = q.as<uint16_t>();
  tc.k_cache = k.as<uint16_t>();
  tc.v_cache = v.as<uint16_t>();
  tc.jobs = reinterpret_cast<const gpu::PrefillJob*>(base + layout.prefill_jobs);
  tc.positions = reinterpret_cast<const int32_t*>(base + layout.positions);
  tc.block_tables = reinterpret_cast<const int32_t*>(base + layout.block_tables);
  tc.num_jobs = plan.prefill_jobs;
  tc.num_heads = s.heads;
  tc.num_kv_heads = s.kv_heads;
  tc.head_dim = hd;
  tc.block_size = kBlockSize;
  tc.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  tc.out = out_tc.as<uint16_t>();
  tc.tensor_cores = true;
  gpu::PrefillAttentionArgs cc = tc;
  cc.out = out_cc.as<uint16_t>();
  cc.tensor_cores = false;
  gpu::PrefillAttentionArgs tc_row = tc;
  tc_row.jobs = row_jobs.as<gpu::PrefillJob>();
  tc_row.out = out_row.as<uint16_t>();

  auto launch = [&](const gpu::PrefillAttentionArgs& args) {
    return Check(gpu::LaunchPrefillAttention(args, stream),
                 args.tensor_cores ? "prefill (tensor cores)" : "prefill (cuda cores)");
  };
  // Warm-up (also the outputs compared below).
  for (int i = 0; i < 2 && ok; ++i) ok = launch(tc) && launch(cc) && launch(tc_row);
  ok = ok && Check(cudaStreamSynchronize(stream), "warm-up");
  if (!ok) return false;

  // Interleaved: events e[4i] .. e[4i+3] around launch i of each kernel.
  std::vector<cudaEvent_t> events(size_t(iters) * 4, nullptr);
  for (cudaEvent_t& e : events) ok = ok && Check(cudaEventCreate(&e), "event");
  for (int i = 0; i < iters && ok; ++i) {
    ok = Check(cudaEventRecord(events[4 * i], stream), "event") && launch(tc) &&
         Check(cudaEventRecord(events[4 * i + 1], stream), "event") && launch(cc) &&
         Check(cudaEventRecord(events[4 * i + 2], stream), "event") && launch(tc_row) &&
         Check(cudaEventRecord(events[4 * i + 3], stream), "event");
  }
  ok = ok && Check(cudaStreamSynchronize(stream), "timing");
  std::vector<double> tc_us, cc_us, row_us;
  for (int i = 0; i < iters && ok; ++i) {
    float a = 0, b = 0, c = 0;
    ok = Check(cudaEventElapsedTime(&a, events[4 * i], events[4 * i + 1]), "elapsed") &&
         Check(cudaEventElapsedTime(&b, events[4 * i + 1], events[4 * i + 2]), "elapsed") &&
         Check(cudaEventElapsedTime(&c, events[4 * i + 2], events[4 * i + 3]), "elapsed");
    tc_us.push_back(1e3 * a);
    cc_us.push_back(1e3 * b);
    row_us.push_back(1e3 * c);
  }
  for (cudaEvent_t e : events) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  if (!ok) return false;

  std::vector<uint16_t> got_tc(q_elems), got_cc(q_elems), got_row(q_elems);
  ok = Check(cudaMemcpy(got_tc.data(), out_tc.as<void>(), q_elems * 2, cudaMemcpyDeviceToHost),
             "download") &&
       Check(cudaMemcpy(got_row.data(), out_row.as<void>(), q_elems * 2, cudaMemcpyDeviceToHost),
             "download") &&
       Check(cudaMemcpy(got_cc.data(), out_cc.as<void>(), q_elems * 2, cudaMemcpyDeviceToHost),
             "download");
  if (!ok) return false;
  double max_diff = 0, max_ref = 0;
  bool finite = true;
  for (size_t i = 0; i < q_elems; ++i) {
    const double a = Bf16ToFloat(got_tc[i]), b = Bf16ToFloat(got_cc[i]);
    if (!std::isfinite(a) || !std::isfinite(b)) finite = false;
    max_diff = std::max(max_diff, std::fabs(a - b));
    max_ref = std::max(max_ref, std::fabs(b));
  }

  double attended = 0;  // sum over rows of (position + 1)
  for (const int32_t p : batch.positions) attended += p + 1.0;
  const double flops = 4.0 * hd * s.heads * attended;
  result->shape = s.name;
  result->context = context;
  result->rows = n;
  result->tc_us = Median(tc_us);
  result->cc_us = Median(cc_us);
  result->tc_tflops = result->tc_us > 0 ? flops / (result->tc_us * 1e6) : 0;
  result->cc_tflops = result->cc_us > 0 ? flops / (result->cc_us * 1e6) : 0;
  result->speedup = result->tc_us > 0 ? result->cc_us / result->tc_us : 0;
  result->tc_row_order_us = Median(row_us);
  result->order_gain = result->tc_us > 0 ? result->tc_row_order_us / result->tc_us : 0;
  result->order_same_bits = got_row == got_tc;
  result->max_rel_diff = finite && max_ref > 0 ? max_diff / max_ref : INFINITY;
  return true;
}

std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> items;
  size_t begin = 0;
  while (begin <= s.size()) {
    const size_t end = std::min(s.find(',', begin), s.size());
    if (end > begin) items.push_back(s.substr(begin, end - begin));
    begin = end + 1;
  }
  return items;
}

int Main(int argc, char** argv) {
  CLI::App app{"Prefill attention: tensor-core kernel against the CUDA-core kernel"};
  std::string csv_path, shapes_arg = "summ,llama7b,llama3_8b", contexts_arg = "512,2048,4096";
  int iters = 20;
  int32_t rows = 8192;
  double tolerance = 2e-2;
  app.add_option("--csv", csv_path, "write the results as CSV here");
  app.add_option("--iters", iters, "timed launches of each kernel")->check(CLI::Range(1, 100000));
  app.add_option("--shapes", shapes_arg, "comma list of summ, llama7b, llama3_8b");
  app.add_option("--contexts", contexts_arg, "comma list of prompt lengths");
  app.add_option("--rows", rows, "query rows a step (rows / context sequences)")
      ->check(CLI::Range(1, 1 << 24));
  app.add_option("--tolerance", tolerance, "largest max_rel_diff that passes");
  CLI11_PARSE(app, argc, argv);

  std::vector<Shape> shapes;
  for (const std::string& name : SplitList(shapes_arg)) {
    const auto it = std::find_if(KnownShapes().begin(), KnownShapes().end(),
                                 [&](const Shape& s) { return s.name == name; });
    if (it == KnownShapes().end()) {
      std::fprintf(stderr, "unknown shape %s (summ, llama7b, llama3_8b)\n", name.c_str());
      return 2;
    }
    shapes.push_back(*it);
  }
  std::vector<int32_t> contexts;
  for (const std::string& c : SplitList(contexts_arg)) {
    char* end = nullptr;
    const long value = std::strtol(c.c_str(), &end, 10);
    if (end == c.c_str() || *end != '\0' || value < 1 || value > (1 << 24)) {
      std::fprintf(stderr, "bad context %s\n", c.c_str());
      return 2;
    }
    contexts.push_back(static_cast<int32_t>(value));
  }

  std::FILE* csv = nullptr;
  if (!csv_path.empty()) {
    csv = std::fopen(csv_path.c_str(), "w");
    if (csv == nullptr) {
      std::fprintf(stderr, "cannot write %s\n", csv_path.c_str());
      return 1;
    }
    std::fprintf(csv, "shape,context,rows,tc_us,tc_tflops,cuda_core_us,cuda_core_tflops,speedup,"
                      "max_rel_diff,tc_row_order_us,order_gain,order_same_bits\n");
  }
  cudaStream_t stream = nullptr;
  if (!Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream")) return 1;

  std::printf("%-10s %7s %7s %11s %9s %11s %9s %8s %12s %11s %10s\n", "shape", "context", "rows",
              "tc_us", "tc_tflops", "cc_us", "cc_tflops", "speedup", "max_rel_diff", "row_ord_us",
              "order_gain");
  bool failed = false;
  for (const Shape& s : shapes) {
    for (const int32_t context : contexts) {
      Result r;
      if (!Run(s, context, rows, iters, stream, &r)) {
        std::fprintf(stderr, "%s context %d: failed\n", s.name.c_str(), context);
        failed = true;
        continue;
      }
      const bool agree = r.max_rel_diff <= tolerance && r.order_same_bits;
      failed = failed || !agree;
      std::printf("%-10s %7d %7d %11.1f %9.2f %11.1f %9.2f %8.2f %12.3e %11.1f %10.3f%s\n",
                  r.shape.c_str(), r.context, r.rows, r.tc_us, r.tc_tflops, r.cc_us, r.cc_tflops,
                  r.speedup, r.max_rel_diff, r.tc_row_order_us, r.order_gain,
                  agree ? "" : "  MISMATCH");
      std::fflush(stdout);
      if (csv != nullptr) {
        std::fprintf(csv, "%s,%d,%d,%.3f,%.4f,%.3f,%.4f,%.4f,%.6e,%.3f,%.4f,%d\n", r.shape.c_str(),
                     r.context, r.rows, r.tc_us, r.tc_tflops, r.cc_us, r.cc_tflops, r.speedup,
                     r.max_rel_diff, r.tc_row_order_us, r.order_gain, r.order_same_bits ? 1 : 0);
        std::fflush(csv);
      }
    }
  }
  cudaStreamDestroy(stream);
  if (csv != nullptr) std::fclose(csv);
  if (failed) std::fprintf(stderr, "FAILED: a launch failed or max_rel_diff > %g\n", tolerance);
  return failed ? 1 : 0;
}

}  // namespace
}  // namespace spanserve::bench

int main(int argc, char** argv) { return spanserve::bench::Main(argc, argv); }
