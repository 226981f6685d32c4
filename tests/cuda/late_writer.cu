#include "tests/cuda/late_writer.h"

#include <cstdint>

#include "kernels/common.cuh"

namespace spanserve::testing {
namespace {

constexpr int kMaxCopies = kMaxLateCopies;

struct LateCopies {
  LateCopy copy[kMaxCopies];
  int count, delay_us;
};

__global__ void LateCopyKernel(const LateCopies c) {
  gpu::AllowDependentLaunch();
  const uint64_t until = clock64() + static_cast<uint64_t>(c.delay_us) * 2000;  // cycles at up to 2 GHz
  while (clock64() < until) __nanosleep(1000);
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int i = 0; i < c.count; ++i) {
    const uint4* src = static_cast<const uint4*>(c.copy[i].src);
    uint4* dst = static_cast<uint4*>(c.copy[i].dst);
    const int64_t n = static_cast<int64_t>(c.copy[i].bytes / 16);
    for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < n; j += stride) dst[j] = src[j];
  }
}

}  // namespace

cudaError_t LaunchLateCopies(const LateCopy* copies, int count, int delay_us, cudaStream_t stream) {
  if (count < 0 || count > kMaxCopies) return cudaErrorInvalidValue;
  LateCopies c{};
  for (int i = 0; i < count; ++i) {
    if (copies[i].bytes % 16 != 0) return cudaErrorInvalidValue;
    c.copy[i] = copies[i];
  }
  c.count = count;
  c.delay_us = delay_us;
  LateCopyKernel<<<16, 256, 0, stream>>>(c);  // a few SMs: the decode kernel's CTAs fit beside
  return cudaGetLastError();
}

}  // namespace spanserve::testing
