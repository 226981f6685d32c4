// The decode step's GEMMs (y[m, n] = x[m, k] . w[n, k]^T, bf16 in, fp32 accumulate) at the
// decode row counts, side by side in one run: cublasGemmEx with the default algorithm (what
// CudaBackend::Gemm called before the decode GEMM), our decode GEMM (kernels/decode_gemm.cu:
// tensor cores, and its CUDA-core check variant; algo_index is the split count), and every
// algorithm cuBLASLt's heuristic offers, fp32 and bf16 output. A decode GEMM reads its weight
// once, so each time is also given as the weight's read bandwidth and as a fraction of the
// streaming read roof measured in the same run. Prints CSV; a '#' line per shape and row count
// gives the decode GEMM's largest difference from cublasGemmEx.
//   cuda_gemm_bench [--shapes llama7b|llama3_8b] [--rows 1 16 64] [--algos 16] [--splits 0 4]
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/cuda/bench_util.h"
#include "kernels/kernels.h"
#include "kernels/launch_plan.h"

namespace {

#define CHECK_CUDA(x)                                                                   \
  do {                                                                                  \
    if (cudaError_t e_ = (x); e_ != cudaSuccess) {                                      \
      std::fprintf(stderr, "%s: %s (line %d)\n", #x, cudaGetErrorString(e_), __LINE__); \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)
#define CHECK_BLAS(x)                                                                       \
  do {                                                                                      \
    if (cublasStatus_t s_ = (x); s_ != CUBLAS_STATUS_SUCCESS) {                             \
      std::fprintf(stderr, "%s: %s (line %d)\n", #x, cublasGetStatusString(s_), __LINE__); \
      std::exit(1);                                                                         \
    }                                                                                       \
  } while (0)

struct Shape {
  const char* name;
  int n, k;
};

std::vector<Shape> ShapesOf(const std::string& model) {
  if (model == "llama3_8b") {
    return {{"qkv", 6144, 4096}, {"o", 4096, 4096}, {"gate_up", 28672, 4096},
            {"down", 4096, 14336}, {"lm_head", 128256, 4096}};
  }
  return {{"qkv", 12288, 4096}, {"o", 4096, 4096}, {"gate_up", 22016, 4096},
          {"down", 4096, 11008}, {"lm_head", 32000, 4096}};
}

constexpr size_t kWorkspaceBytes = 32 << 20;

// max |a - b| / max |b| over n floats on the device.
double MaxRelDiff(const float* a, const float* b, size_t n) {
  std::vector<float> ha(n), hb(n);
  CHECK_CUDA(cudaMemcpy(ha.data(), a, n * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(hb.data(), b, n * 4, cudaMemcpyDeviceToHost));
  double diff = 0, scale = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!(std::abs(ha[i] - hb[i]) <= diff)) diff = std::abs(double{ha[i]} - hb[i]);  // NaN sticks
    scale = std::max(scale, std::abs(double{hb[i]}));
  }
  return scale > 0 ? diff / scale : diff;
}

// Median of `repeats` timed runs of `launch` (after two warm-ups), each over a weight copy the
// previous run did not leave in L2 (the decode step reads each weight once per step).
template <typename Launch>
float MedianUs(Launch&& launch, int repeats, cudaStream_t stream) {
  cudaEvent_t begin, end;
  CHECK_CUDA(cudaEventCreate(&begin));
  CHECK_CUDA(cudaEventCreate(&end));
  std::vector<float> us;
  for (int r = 0; r < repeats + 2; ++r) {
    CHECK_CUDA(cudaEventRecord(begin, stream));
    launch(r);
    CHECK_CUDA(cudaEventRecord(end, stream));
    CHECK_CUDA(cudaEventSynchronize(end));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, begin, end));
    if (r >= 2) us.push_back(1e3f * ms);
  }
  cudaEventDestroy(begin);
  cudaEventDestroy(end);
  std::nth_element(us.begin(), us.begin() + us.size() / 2, us.end());
  return us[us.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"decode GEMMs: cublasGemmEx default against cuBLASLt's algorithms"};
  std::string model = "llama7b";
  std::vector<int> rows = {1, 16, 64};
  std::vector<int> splits = {0};
  int max_algos = 16, repeats = 20;
  app.add_option("--shapes", model, "llama7b or llama3_8b");
  app.add_option("--rows", rows, "decode rows (m)");
  app.add_option("--algos", max_algos, "cuBLASLt heuristic results to time");
  app.add_option("--repeats", repeats, "timed runs a case");
  app.add_option("--splits", splits, "decode GEMM split counts (0: its own choice)");
  CLI11_PARSE(app, argc, argv);

  const double roof_gbps = spanserve::bench::ReadBandwidthGBps(size_t{2} << 30, 10);
  std::printf("# streaming read roof %.0f GB/s\n", roof_gbps);
  std::printf("shape,m,n,k,variant,out,algo_index,us,weight_gbps,roof_fraction\n");

  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  cublasHandle_t blas;
  cublasLtHandle_t lt;
  CHECK_BLAS(cublasCreate(&blas));
  CHECK_BLAS(cublasSetStream(blas, stream));
  CHECK_BLAS(cublasLtCreate(&lt));
  void* workspace;
  CHECK_CUDA(cudaMalloc(&workspace, kWorkspaceBytes));
  CHECK_BLAS(cublasSetWorkspace(blas, workspace, kWorkspaceBytes));
  int sms = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));

  // Enough weight copies that one run's weight is out of L2 (50 MB) when it is read again.
  for (const Shape& shape : ShapesOf(model)) {
    const size_t w_elems = size_t(shape.n) * shape.k;
    const int copies = std::max<int>(2, int((size_t{200} << 20) / (2 * w_elems)) + 1);
    std::vector<uint16_t*> w(copies);
    for (auto& p : w) {
      CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&p), 2 * w_elems));
      CHECK_CUDA(spanserve::bench::FillRandomBf16(p, w_elems, 1, stream));
    }
    const int max_m = *std::max_element(rows.begin(), rows.end());
    uint16_t* x;
    void* y;
    CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&x), 2 * size_t(max_m) * shape.k));
    CHECK_CUDA(cudaMalloc(&y, 4 * size_t(max_m) * shape.n));
    // The decode GEMM's output, checked against cublasGemmEx's.
    float* y_ours;
    CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&y_ours), 4 * size_t(max_m) * shape.n));
    CHECK_CUDA(spanserve::bench::FillRandomBf16(x, size_t(max_m) * shape.k, 2, stream));
    const double weight_bytes = 2.0 * w_elems;
    auto report = [&](int m, const char* variant, const char* out, int algo, float us) {
      const double gbps = weight_bytes / (us * 1e3);
      std::printf("%s,%d,%d,%d,%s,%s,%d,%.2f,%.0f,%.3f\n", shape.name, m, shape.n, shape.k,
                  variant, out, algo, us, gbps, gbps / roof_gbps);
    };
    for (int m : rows) {
      const float one = 1.0f, zero = 0.0f;
      const float gemm_ex = MedianUs([&](int r) {
        CHECK_BLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, shape.n, m, shape.k, &one,
                                w[r % copies], CUDA_R_16BF, shape.k, x, CUDA_R_16BF, shape.k,
                                &zero, y, CUDA_R_32F, shape.n, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
      }, repeats, stream);
      report(m, "gemm_ex_default", "f32", -1, gemm_ex);

      using spanserve::gpu::DecodeGemmKernel;
      for (const DecodeGemmKernel kernel : {DecodeGemmKernel::kTensorCores, DecodeGemmKernel::kCudaCores}) {
        const bool tc = kernel == DecodeGemmKernel::kTensorCores;
        if (!spanserve::gpu::DecodeGemmTakes(m, shape.n, shape.k)) continue;
        for (const int split_count : splits) {
          auto args = [&](int r) {
            spanserve::gpu::DecodeGemmArgs a{x, w[r % copies], y_ours, m, shape.n, shape.k};
            a.splits = split_count;
            a.kernel = kernel;
            return a;
          };
          // cublasGemmEx's y of the last copy against ours of the same.
          CHECK_BLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, shape.n, m, shape.k, &one,
                                  w[0], CUDA_R_16BF, shape.k, x, CUDA_R_16BF, shape.k, &zero, y,
                                  CUDA_R_32F, shape.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
          CHECK_CUDA(spanserve::gpu::LaunchDecodeGemm(args(0), stream));
          CHECK_CUDA(cudaStreamSynchronize(stream));
          const int used = spanserve::gpu::DecodeGemmPlanFor(shape.n, shape.k, sms, split_count).splits;
          std::printf("# %s m %d %s splits %d: max |decode_gemm - gemm_ex| / max |gemm_ex| %.2e\n",
                      shape.name, m, tc ? "tensor cores" : "cuda cores", used,
                      MaxRelDiff(y_ours, static_cast<const float*>(y), size_t(m) * shape.n));
          const float us = MedianUs([&](int r) {
            CHECK_CUDA(spanserve::gpu::LaunchDecodeGemm(args(r), stream));
          }, repeats, stream);
          report(m, tc ? "decode_gemm" : "decode_gemm_cuda_cores", "f32", used, us);
        }
      }

      for (cudaDataType_t out_type : {CUDA_R_32F, CUDA_R_16BF}) {
        const char* out_name = out_type == CUDA_R_32F ? "f32" : "bf16";
        cublasLtMatmulDesc_t op;
        CHECK_BLAS(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        const cublasOperation_t trans = CUBLAS_OP_T;
        CHECK_BLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &trans,
                                                  sizeof(trans)));
        cublasLtMatrixLayout_t a, b, c;
        CHECK_BLAS(cublasLtMatrixLayoutCreate(&a, CUDA_R_16BF, shape.k, shape.n, shape.k));
        CHECK_BLAS(cublasLtMatrixLayoutCreate(&b, CUDA_R_16BF, shape.k, m, shape.k));
        CHECK_BLAS(cublasLtMatrixLayoutCreate(&c, out_type, shape.n, m, shape.n));
        cublasLtMatmulPreference_t pref;
        CHECK_BLAS(cublasLtMatmulPreferenceCreate(&pref));
        const size_t ws = kWorkspaceBytes;
        CHECK_BLAS(cublasLtMatmulPreferenceSetAttribute(
            pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
        std::vector<cublasLtMatmulHeuristicResult_t> found(max_algos);
        int count = 0;
        CHECK_BLAS(cublasLtMatmulAlgoGetHeuristic(lt, op, a, b, c, c, pref, max_algos,
                                                  found.data(), &count));
        float best = 1e30f;
        int best_index = -1;
        for (int i = 0; i < count; ++i) {
          const float us = MedianUs([&](int r) {
            CHECK_BLAS(cublasLtMatmul(lt, op, &one, w[r % copies], a, x, b, &zero, y, c, y, c,
                                      &found[i].algo, workspace, ws, stream));
          }, repeats, stream);
          report(m, "lt_heuristic", out_name, i, us);
          if (us < best) best = us, best_index = i;
        }
        if (best_index >= 0) report(m, "lt_best", out_name, best_index, best);
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(a);
        cublasLtMatrixLayoutDestroy(b);
        cublasLtMatrixLayoutDestroy(c);
        cublasLtMatmulDescDestroy(op);
      }
      std::fflush(stdout);
    }
    for (auto* p : w) cudaFree(p);
    cudaFree(x);
    cudaFree(y);
    cudaFree(y_ours);
  }
  cublasLtDestroy(lt);
  cublasDestroy(blas);
  cudaFree(workspace);
  return 0;
}
