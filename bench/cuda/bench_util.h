// GPU helpers of the CUDA benchmarks: random bf16 fill on the device, the copy bandwidth that
// the attention and step timings are measured against.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace spanserve::bench {

// data[i] = a bf16 value in [-1, 1) hashed from (seed, i).
cudaError_t FillRandomBf16(uint16_t* data, size_t n, uint64_t seed, cudaStream_t stream);

// Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written (the median
// of `repeats` copies of `bytes` bytes). Returns 0 on an error.
double CopyBandwidthGBps(size_t bytes, int repeats);

// Read-only streaming bandwidth in GB/s (bytes read; the best of `repeats` passes over `bytes`
// bytes): the roof of a kernel that only reads, above the copy bandwidth. Returns 0 on an error.
double ReadBandwidthGBps(size_t bytes, int repeats);

}  // namespace spanserve::bench
