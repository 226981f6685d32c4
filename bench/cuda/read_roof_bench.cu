// How fast an SM array can stream pieces of device memory into registers or shared memory, by
// three load paths, with the pieces in address order or scattered over a larger pool: the roof
// the decode attention kernels (and SDPA) work against, and what a block-16 paged cache (4 KiB
// pieces at random addresses) costs at it.
//   ldg     16-byte loads to registers, 16 in flight a thread (no shared memory)
//   cpasync 16-byte cp.async into a 3-stage shared-memory ring, as the decode kernels do
//   bulk    one thread issues cp.async.bulk (the copy engine) of whole pieces into an
//           mbarrier-tracked ring; every thread then reads the stage
// Each CTA takes every grid-th piece of the list (static) or grabs the next ones from a
// counter (dynamic). Prints CSV: method, order, piece bytes, CTAs, median and best GB/s.
// The cpasync and bulk rows read each piece's index just before its copy and wait for it, so
// they measure that latency as well (1.2-2.7 TB/s on the H100), not the roof; ldg reads its
// indices ahead.
//   nvcc -O3 -std=c++17 -I. -gencode=arch=compute_90a,code=sm_90a bench/cuda/read_roof_bench.cu
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kernels/common.cuh"

#define CHECK(x)                                                                  \
  do {                                                                            \
    cudaError_t e_ = (x);                                                         \
    if (e_ != cudaSuccess) {                                                      \
      std::fprintf(stderr, "%s: %s (line %d)\n", #x, cudaGetErrorString(e_), __LINE__); \
      std::exit(1);                                                               \
    }                                                                             \
  } while (0)

namespace {

constexpr int kThreads = 128;

struct Work {
  const char* pool;
  const int64_t* pieces;  // piece i starts at pool + pieces[i] * piece_bytes
  int64_t num_pieces;
  int piece_bytes;        // a multiple of kThreads * 16
  int* counter;           // dynamic assignment: next piece to take; nullptr: static
  uint32_t* sink;         // one word a CTA, so that the loads are not dropped
};

// The next `n` pieces of this CTA: static (every grid-th) or from the counter.
__device__ __forceinline__ int64_t FirstOfNext(const Work& w, int64_t* cursor, int n, int* shared) {
  if (w.counter == nullptr) {
    const int64_t first = *cursor;
    *cursor += int64_t{gridDim.x} * n;
    return first;
  }
  __syncthreads();
  if (threadIdx.x == 0) *shared = atomicAdd(w.counter, n);
  __syncthreads();
  return *shared;
}

constexpr int kLdgInFlight = 16;

__global__ void __launch_bounds__(kThreads) LdgRead(Work w) {
  __shared__ int grabbed;
  const int words = w.piece_bytes / (kThreads * 16);  // 16-byte words a thread per piece
  const int per_round = max(1, kLdgInFlight / words);
  int64_t cursor = int64_t{blockIdx.x} * per_round;
  uint32_t x = 0;
  for (;;) {
    const int64_t first = FirstOfNext(w, &cursor, per_round, &grabbed);
    if (first >= w.num_pieces) break;
    uint4 v[kLdgInFlight];
#pragma unroll
    for (int i = 0; i < kLdgInFlight; ++i) {
      const int64_t p = first + i / words;
      v[i] = make_uint4(0, 0, 0, 0);
      if (i < per_round * words && p < w.num_pieces) {
        const char* base = w.pool + w.pieces[p] * w.piece_bytes;
        v[i] = spanserve::gpu::LoadStreaming(base + (int64_t{i % words} * kThreads + threadIdx.x) * 16);
      }
    }
#pragma unroll
    for (int i = 0; i < kLdgInFlight; ++i) x ^= v[i].x ^ v[i].y ^ v[i].z ^ v[i].w;
  }
  if (x == 0x12345678u) w.sink[blockIdx.x] = x;  // almost never: keeps the loads alive
}

__device__ __forceinline__ void CopyAsync16(void* smem, const void* gmem) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem) : "memory");
}

constexpr int kRingStages = 3;
constexpr int kRingStageBytes = 16 * 1024;

// As the decode kernels: each thread copies 16-byte words of a stage and reads back its own.
__global__ void __launch_bounds__(kThreads) CpAsyncRead(Work w) {
  extern __shared__ __align__(16) char ring[];
  __shared__ int grabbed;
  const int per_stage = kRingStageBytes / w.piece_bytes;  // pieces a stage (>= 1)
  const int words = w.piece_bytes / (kThreads * 16);
  int64_t cursor = int64_t{blockIdx.x} * per_stage;
  int64_t first[kRingStages];
  auto issue = [&](int s) {
    first[s] = FirstOfNext(w, &cursor, per_stage, &grabbed);
    for (int i = 0; i < per_stage * words; ++i) {
      const int64_t p = first[s] + i / words;
      if (p < w.num_pieces) {
        CopyAsync16(ring + s * kRingStageBytes + (i * kThreads + threadIdx.x) * 16,
                    w.pool + w.pieces[p] * w.piece_bytes + (int64_t{i % words} * kThreads + threadIdx.x) * 16);
      }
    }
    asm volatile("cp.async.commit_group;\n" ::: "memory");
  };
  for (int s = 0; s < kRingStages - 1; ++s) issue(s);
  uint32_t x = 0;
  for (int k = 0;; ++k) {
    const int s = k % kRingStages;
    if (first[s] >= w.num_pieces) break;
    issue((k + kRingStages - 1) % kRingStages);
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kRingStages - 1) : "memory");
    for (int i = 0; i < per_stage * words; ++i) {
      const uint4 v = *reinterpret_cast<const uint4*>(ring + s * kRingStageBytes + (i * kThreads + threadIdx.x) * 16);
      x ^= v.x ^ v.y ^ v.z ^ v.w;
    }
  }
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  if (x == 0x12345678u) w.sink[blockIdx.x] = x;
}

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// One piece a stage, kBulkStages deep; thread 0 issues, everyone waits on the stage's mbarrier.
template <int kBulkStages>
__global__ void __launch_bounds__(kThreads) BulkRead(Work w) {
  extern __shared__ __align__(16) char bulk_ring[];
  __shared__ __align__(8) uint64_t full[kBulkStages];
  __shared__ int grabbed;
  const int words = w.piece_bytes / (kThreads * 16);
  if (threadIdx.x == 0) {
    for (int s = 0; s < kBulkStages; ++s) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(SmemAddr(&full[s])));
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  int64_t cursor = blockIdx.x;
  int64_t piece[kBulkStages];
  auto issue = [&](int s) {
    piece[s] = FirstOfNext(w, &cursor, 1, &grabbed);
    if (threadIdx.x == 0 && piece[s] < w.num_pieces) {
      const uint32_t bar = SmemAddr(&full[s]);
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar),
                   "r"(w.piece_bytes) : "memory");
      asm volatile(
          "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
              SmemAddr(bulk_ring + int64_t{s} * w.piece_bytes)),
          "l"(w.pool + w.pieces[piece[s]] * w.piece_bytes), "r"(w.piece_bytes), "r"(bar)
          : "memory");
    }
  };
  for (int s = 0; s < kBulkStages; ++s) issue(s);
  uint32_t x = 0;
  for (int k = 0;; ++k) {
    const int s = k % kBulkStages;
    if (piece[s] >= w.num_pieces) break;
    const uint32_t parity = (k / kBulkStages) & 1;
    const uint32_t bar = SmemAddr(&full[s]);
    asm volatile(
        "{\n .reg .pred done;\n wait:\n"
        " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        " @!done bra wait;\n}" ::"r"(bar), "r"(parity) : "memory");
    for (int i = 0; i < words; ++i) {
      const uint4 v = *reinterpret_cast<const uint4*>(bulk_ring + int64_t{s} * w.piece_bytes + (i * kThreads + threadIdx.x) * 16);
      x ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    __syncthreads();  // the stage is read: it may be refilled
    issue(s);
  }
  if (x == 0x12345678u) w.sink[blockIdx.x] = x;
}

struct Method {
  std::string name;
  void (*kernel)(Work);
  int smem;       // dynamic shared memory a CTA
  int ctas_per_sm;
};

}  // namespace

int main(int argc, char** argv) {
  size_t read_bytes = size_t{2} << 30, pool_bytes = size_t{6} << 30;
  int reps = 15;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--read-mib") read_bytes = std::stoull(argv[i + 1]) << 20;
    else if (flag == "--pool-mib") pool_bytes = std::stoull(argv[i + 1]) << 20;
    else if (flag == "--reps") reps = std::stoi(argv[i + 1]);
  }
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  char* pool = nullptr;
  CHECK(cudaMalloc(&pool, pool_bytes));
  CHECK(cudaMemset(pool, 0x5a, pool_bytes));
  uint32_t* sink = nullptr;
  int* counter = nullptr;
  int64_t* pieces_dev = nullptr;
  CHECK(cudaMalloc(&sink, 64 * 1024 * sizeof(uint32_t)));
  CHECK(cudaMalloc(&counter, sizeof(int)));

  // Reference: cudaMemcpy device to device, read + write counted.
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  {
    std::vector<float> ms;
    for (int r = 0; r < reps + 2; ++r) {
      CHECK(cudaEventRecord(start));
      CHECK(cudaMemcpyAsync(pool + read_bytes, pool, read_bytes, cudaMemcpyDeviceToDevice));
      CHECK(cudaEventRecord(stop));
      CHECK(cudaEventSynchronize(stop));
      float t = 0;
      CHECK(cudaEventElapsedTime(&t, start, stop));
      if (r >= 2) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    std::printf("method,order,assign,piece_bytes,ctas,median_gbps,best_gbps\n");
    std::printf("memcpy,address,-,-,-,%.1f,%.1f\n", 2.0 * read_bytes / (ms[ms.size() / 2] * 1e6),
                2.0 * read_bytes / (ms[0] * 1e6));
  }

  const std::vector<Method> methods = {
      {"ldg", LdgRead, 0, 8},
      {"cpasync", CpAsyncRead, kRingStages * kRingStageBytes, 4},
      {"bulk4", BulkRead<4>, 0, 0},  // shared memory and CTAs a SM set per piece size below
      {"bulk8", BulkRead<8>, 0, 0},
      {"bulk16", BulkRead<16>, 0, 0},
  };
  std::mt19937_64 rng(7);
  for (int piece_bytes : {4096, 8192, 32768}) {
    const int64_t n = static_cast<int64_t>(read_bytes / piece_bytes);
    const int64_t pool_pieces = static_cast<int64_t>(pool_bytes / piece_bytes);
    for (const std::string order : {"address", "shuffled"}) {
      std::vector<int64_t> pieces(pool_pieces);
      for (int64_t i = 0; i < pool_pieces; ++i) pieces[i] = i;
      if (order == "shuffled") {
        for (int64_t i = 0; i < n; ++i) {  // a partial Fisher-Yates: n distinct pool pieces
          std::uniform_int_distribution<int64_t> pick(i, pool_pieces - 1);
          std::swap(pieces[i], pieces[pick(rng)]);
        }
      }
      CHECK(cudaFree(pieces_dev));
      CHECK(cudaMalloc(&pieces_dev, n * sizeof(int64_t)));
      CHECK(cudaMemcpy(pieces_dev, pieces.data(), n * sizeof(int64_t), cudaMemcpyHostToDevice));
      for (Method m : methods) {
        if (m.name.rfind("bulk", 0) == 0) {
          const int stages = std::stoi(m.name.substr(4));
          m.smem = stages * piece_bytes;
          if (m.smem > 200 * 1024) continue;
          m.ctas_per_sm = std::min(8, (227 * 1024) / (m.smem + 1024));
        }
        if (m.name == "cpasync" && piece_bytes > kRingStageBytes) continue;
        CHECK(cudaFuncSetAttribute(m.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, m.smem));
        for (const bool dynamic : {false, true}) {
          const int ctas = sms * m.ctas_per_sm;
          Work w{pool, pieces_dev, n, piece_bytes, dynamic ? counter : nullptr, sink};
          std::vector<float> ms;
          for (int r = 0; r < reps + 2; ++r) {
            CHECK(cudaMemset(counter, 0, sizeof(int)));
            CHECK(cudaEventRecord(start));
            m.kernel<<<ctas, kThreads, m.smem>>>(w);
            CHECK(cudaEventRecord(stop));
            CHECK(cudaEventSynchronize(stop));
            CHECK(cudaGetLastError());
            float t = 0;
            CHECK(cudaEventElapsedTime(&t, start, stop));
            if (r >= 2) ms.push_back(t);
          }
          std::sort(ms.begin(), ms.end());
          const double bytes = double(n) * piece_bytes;
          std::printf("%s,%s,%s,%d,%d,%.1f,%.1f\n", m.name.c_str(), order.c_str(),
                      dynamic ? "dynamic" : "static", piece_bytes, ctas,
                      bytes / (ms[ms.size() / 2] * 1e6), bytes / (ms[0] * 1e6));
          std::fflush(stdout);
        }
      }
    }
  }
  return 0;
}
