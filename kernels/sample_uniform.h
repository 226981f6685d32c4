// The counter-based uniform behind sampling, one definition for the CPU sampler and the GPU
// sampling kernel: a token's draw depends only on (seed, index of the output token).
#pragma once

#include <cstdint>

#include "kernels/host_device.h"

namespace spanserve {

// Uniform in [0, 1) from (seed, index): splitmix64 of a Weyl step, 53 bits.
SPANSERVE_HOST_DEVICE inline double CounterUniform(uint64_t seed, uint64_t index) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

}  // namespace spanserve
