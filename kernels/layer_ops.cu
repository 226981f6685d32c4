// The elementwise kernels of a layer: embedding, residual add fused with RMSNorm, RoPE fused
// with the write of K and V into the paged cache, SiLU-multiply. Each reads and writes its rows
// once; all of them are memory-bound and small next to the matrix products.
#include <algorithm>

#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace spanserve::gpu {
namespace {

constexpr int kRowThreads = 256;

// Sum over the CTA, returned to every thread.
__device__ float BlockSum(float v) {
  __shared__ float warp_sums[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = WarpSum<32>(v);
  __syncthreads();  // warp_sums may still be read by a previous call
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x / 32) ? warp_sums[lane] : 0.0f;
  return WarpSum<32>(v);
}

__global__ void __launch_bounds__(kRowThreads)
    EmbeddingKernel(const int32_t* tokens, const uint16_t* table, int32_t hidden, float* x) {
  const int64_t r = blockIdx.x;
  const uint16_t* src = table + int64_t{tokens[r]} * hidden;
  for (int i = threadIdx.x; i < hidden; i += kRowThreads) x[r * hidden + i] = Bf16BitsToFloat(src[i]);
}

__global__ void __launch_bounds__(kRowThreads)
    AddRmsNormKernel(float* x, const float* delta, const float* weight, const int32_t* row_map,
                     int32_t hidden, float eps, bool write_back, uint16_t* out) {
  const int64_t i = blockIdx.x;
  const int64_t r = row_map != nullptr ? row_map[i] : i;
  float* xr = x + r * hidden;
  const float* dr = delta != nullptr ? delta + r * hidden : nullptr;
  float sum_squares = 0.0f;
  for (int j = threadIdx.x; j < hidden; j += kRowThreads) {
    const float y = xr[j] + (dr != nullptr ? dr[j] : 0.0f);
    if (write_back) xr[j] = y;
    sum_squares = fmaf(y, y, sum_squares);
  }
  const float inv_rms = 1.0f / sqrtf(BlockSum(sum_squares) / hidden + eps);
  for (int j = threadIdx.x; j < hidden; j += kRowThreads) {
    // This thread wrote xr[j] above, so it reads its own value back.
    const float y = write_back ? xr[j] : xr[j] + (dr != nullptr ? dr[j] : 0.0f);
    out[i * hidden + j] = FloatToBf16Bits(y * inv_rms * weight[j]);
  }
}

// One CTA per row: the angles once in shared memory (double, as the CPU backend computes them),
// then Q to q_out and K, V to the cache slot.
__global__ void __launch_bounds__(kRowThreads) RopeWriteKvKernel(const RopeKvArgs a) {
  AllowDependentLaunch();  // decode attention may start; it waits for this grid before it
                           // reads q or a block this step writes
  __shared__ float cos_sin[2][128];
  const int64_t r = blockIdx.x;
  const int hd = a.head_dim, half = hd / 2, H = a.num_heads, KVH = a.num_kv_heads;
  const int32_t position = a.positions[r];
  for (int i = threadIdx.x; i < half; i += kRowThreads) {
    const double angle = position * a.inv_freq[i];
    cos_sin[0][i] = static_cast<float>(cos(angle));
    cos_sin[1][i] = static_cast<float>(sin(angle));
  }
  __syncthreads();
  const float* row = a.qkv + r * (H + 2 * KVH) * hd;
  const float* bias = a.qkv_bias;
  auto at = [row, bias](int j) { return bias != nullptr ? row[j] + bias[j] : row[j]; };
  const int64_t slot = (int64_t{a.kv_block[r]} * KVH * a.block_size + a.kv_offset[r]) * hd;
  const int64_t head_stride = int64_t{a.block_size} * hd;  // between KV heads of a block
  // Rotated pairs of Q (heads [0, H)) and K (heads [H, H + KVH)).
  for (int idx = threadIdx.x; idx < (H + KVH) * half; idx += kRowThreads) {
    const int h = idx / half, i = idx % half;
    const float x0 = at(h * hd + i), x1 = at(h * hd + i + half);
    const float c = cos_sin[0][i], s = cos_sin[1][i];
    const uint16_t y0 = FloatToBf16Bits(x0 * c - x1 * s);
    const uint16_t y1 = FloatToBf16Bits(x1 * c + x0 * s);
    uint16_t* dst = h < H ? a.q_out + (r * H + h) * hd : a.k_cache + slot + (h - H) * head_stride;
    dst[i] = y0;
    dst[i + half] = y1;
  }
  const int v_begin = (H + KVH) * hd;
  for (int idx = threadIdx.x; idx < KVH * hd; idx += kRowThreads) {
    const int h = idx / hd, d = idx % hd;
    a.v_cache[slot + h * head_stride + d] = FloatToBf16Bits(at(v_begin + idx));
  }
}

__global__ void SiluMulKernel(const float* gate_up, int32_t rows, int32_t inter, uint16_t* out) {
  const int64_t n = int64_t{rows} * inter;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < n;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = idx / inter, i = idx % inter;
    const float gate = gate_up[r * 2 * inter + i], up = gate_up[r * 2 * inter + inter + i];
    out[idx] = FloatToBf16Bits(gate / (1.0f + expf(-gate)) * up);
  }
}

}  // namespace

cudaError_t LaunchEmbedding(const int32_t* tokens, const uint16_t* table, int32_t rows,
                            int32_t hidden, float* x, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  EmbeddingKernel<<<rows, kRowThreads, 0, stream>>>(tokens, table, hidden, x);
  return cudaGetLastError();
}

cudaError_t LaunchAddRmsNorm(float* x, const float* delta, const float* weight,
                             const int32_t* row_map, int32_t rows, int32_t hidden, float eps,
                             bool write_back, uint16_t* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  AddRmsNormKernel<<<rows, kRowThreads, 0, stream>>>(x, delta, weight, row_map, hidden, eps,
                                                     write_back, out);
  return cudaGetLastError();
}

cudaError_t LaunchRopeWriteKv(const RopeKvArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  if (a.head_dim % 2 != 0 || a.head_dim > 256) return cudaErrorInvalidValue;
  RopeWriteKvKernel<<<a.rows, kRowThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t LaunchSiluMul(const float* gate_up, int32_t rows, int32_t inter, uint16_t* out,
                          cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int64_t n = int64_t{rows} * inter;
  const int blocks = static_cast<int>(std::min<int64_t>((n + 255) / 256, 4096));
  SiluMulKernel<<<blocks, 256, 0, stream>>>(gate_up, rows, inter, out);
  return cudaGetLastError();
}

}  // namespace spanserve::gpu
