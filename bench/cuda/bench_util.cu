#include "bench/cuda/bench_util.h"

#include <algorithm>
#include <vector>

namespace spanserve::bench {
namespace {

__global__ void FillKernel(uint16_t* data, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float value = static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
    data[i] = static_cast<uint16_t>(__float_as_uint(value) >> 16);
  }
}

// Sums 16-byte loads, four in flight a thread, over a grid that fills the SMs a few times; one
// word a CTA is written so the loads are kept.
__global__ void ReadKernel(const uint4* data, size_t n, uint32_t* sink) {
  uint32_t acc = 0;
  const size_t stride = size_t{gridDim.x} * blockDim.x;
  size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = __ldcs(data + i), b = __ldcs(data + i + stride);
    const uint4 c = __ldcs(data + i + 2 * stride), d = __ldcs(data + i + 3 * stride);
    acc ^= a.x ^ a.w ^ b.y ^ b.z ^ c.x ^ c.w ^ d.y ^ d.z;
  }
  for (; i < n; i += stride) acc ^= __ldcs(data + i).x;
  if (acc == 0x12345678u) sink[blockIdx.x] = acc;
}

// Times of `repeats` runs of `launch` on the default stream after two warm-ups, in ms, sorted.
template <typename Launch>
std::vector<float> SortedMs(Launch&& launch, int repeats) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<float> ms;
  for (int i = 0; i < repeats + 2; ++i) {
    cudaEventRecord(start);
    launch();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float t = 0;
    cudaEventElapsedTime(&t, start, stop);
    if (i >= 2) ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms;
}

}  // namespace

double ReadBandwidthGBps(size_t bytes, int repeats) {
  void* src = nullptr;
  uint32_t* sink = nullptr;
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  const int blocks = 8 * sms;
  if (cudaMalloc(&src, bytes) != cudaSuccess ||
      cudaMalloc(&sink, blocks * sizeof(uint32_t)) != cudaSuccess) {
    cudaFree(src);
    cudaGetLastError();
    return 0;
  }
  cudaMemset(src, 1, bytes);
  const std::vector<float> ms = SortedMs(
      [&] { ReadKernel<<<blocks, 256>>>(static_cast<const uint4*>(src), bytes / 16, sink); },
      repeats);
  cudaFree(src);
  cudaFree(sink);
  const double best = ms.front();  // the roof: the best run, not the median
  return cudaGetLastError() == cudaSuccess && best > 0 ? bytes / (best * 1e-3) / 1e9 : 0;
}

cudaError_t FillRandomBf16(uint16_t* data, size_t n, uint64_t seed, cudaStream_t stream) {
  FillKernel<<<4096, 256, 0, stream>>>(data, n, seed);
  return cudaGetLastError();
}

double CopyBandwidthGBps(size_t bytes, int repeats) {
  void *src = nullptr, *dst = nullptr;
  if (cudaMalloc(&src, bytes) != cudaSuccess || cudaMalloc(&dst, bytes) != cudaSuccess) {
    cudaFree(src);
    cudaGetLastError();
    return 0;
  }
  cudaMemset(src, 1, bytes);
  const std::vector<float> ms =
      SortedMs([&] { cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice); }, repeats);
  cudaFree(src);
  cudaFree(dst);
  const double median = ms[ms.size() / 2];
  return cudaGetLastError() == cudaSuccess && median > 0 ? 2.0 * bytes / (median * 1e-3) / 1e9 : 0;
}

}  // namespace spanserve::bench
