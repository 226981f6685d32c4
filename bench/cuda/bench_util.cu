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

}  // namespace

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
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<float> ms;
  for (int i = 0; i < repeats + 2; ++i) {
    cudaEventRecord(start);
    cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float t = 0;
    cudaEventElapsedTime(&t, start, stop);
    if (i >= 2) ms.push_back(t);  // two warm-ups
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(src);
  cudaFree(dst);
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  return cudaGetLastError() == cudaSuccess && median > 0 ? 2.0 * bytes / (median * 1e-3) / 1e9 : 0;
}

}  // namespace spanserve::bench
