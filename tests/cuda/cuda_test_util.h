// GPU test support: skipping where no GPU is visible, device arrays, random bf16 data.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/backends/cuda_backend.h"
#include "gtest/gtest.h"
#include "tests/cuda/reference.h"

// First statement of every test that needs a GPU.
#define SPANSERVE_SKIP_WITHOUT_GPU()                                                   \
  if (::spanserve::CudaDeviceCount() == 0)                                             \
  GTEST_SKIP() << "no CUDA device visible; this test runs on the GPU machine "          \
                  "(scripts/device/README.md)"

namespace spanserve::testing {

// A device array that copies to and from host vectors; Poison() fills it with 0xff bytes
// (NaN for fp32 and bf16, -1 for int32) so that unwritten elements show.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : n_(n) {
    EXPECT_EQ(cudaMalloc(&ptr_, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { Upload(host); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(ptr_); }

  void Upload(const std::vector<T>& host) {
    ASSERT_EQ(host.size(), n_);
    ASSERT_EQ(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<T> Download() const {
    std::vector<T> host(n_);
    EXPECT_EQ(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }
  void Poison() { EXPECT_EQ(cudaMemset(ptr_, 0xff, n_ * sizeof(T)), cudaSuccess); }
  T* get() const { return static_cast<T*>(ptr_); }
  size_t size() const { return n_; }

 private:
  void* ptr_ = nullptr;
  size_t n_ = 0;
};

// n random bf16 values, uniform in [-scale, scale); *values gets the floats they stand for.
inline std::vector<uint16_t> RandomBf16(std::mt19937& rng, size_t n, float scale,
                                        std::vector<float>* values) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<uint16_t> bits(n);
  values->resize(n);
  for (size_t i = 0; i < n; ++i) {
    bits[i] = ToBf16(dist(rng));
    (*values)[i] = Bf16ToFloat(bits[i]);
  }
  return bits;
}

inline std::vector<float> ToFloats(const std::vector<uint16_t>& bits) {
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = Bf16ToFloat(bits[i]);
  return out;
}

// Waits for the GPU and fails the test on any launch or execution error.
inline void SyncOk(cudaError_t launch) {
  ASSERT_EQ(launch, cudaSuccess) << cudaGetErrorString(launch);
  const cudaError_t e = cudaDeviceSynchronize();
  ASSERT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
}

}  // namespace spanserve::testing
