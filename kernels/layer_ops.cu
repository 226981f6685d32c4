// The elementwise kernels of a layer: embedding, residual add fused with RMSNorm, RoPE fused
// with the write of K and V into the paged cache, SiLU-multiply. Each reads and writes its rows
// once; all of them are memory-bound and small next to the matrix products. At decode sizes
// (tens of rows) they are latency-bound instead: each thread issues all its loads before it
// uses any (16-byte vectors, several a thread), so a launch costs about one memory round trip
// rather than one a loop iteration (AddRmsNorm took 16 us for 64 rows of 4096 that way).
// Each may be launched early (programmatic dependent launch, `early_launch`): what does not
// depend on the kernel ahead (the norm's weight, RoPE's angles from the step's plan) is read
// before the wait, and the kernel behind may launch as soon as the wait returns.
#include <algorithm>
#include <cstdint>

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
  WaitThenAllowDependents();
  const int64_t r = blockIdx.x;
  const uint16_t* src = table + int64_t{tokens[r]} * hidden;
  for (int i = threadIdx.x; i < hidden; i += kRowThreads) x[r * hidden + i] = Bf16BitsToFloat(src[i]);
}

constexpr int kNormThreads = 512;
constexpr int kNormVecs = 4;  // float4s a thread holds in registers: rows of up to 8192 floats

__device__ __forceinline__ float4 Add4(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}
__device__ __forceinline__ float Dot4(float4 a) {
  return a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
}
// y * inv_rms * w as four bf16, in one 8-byte store.
__device__ __forceinline__ void StoreNormed4(uint2* dst, float4 y, float4 w, float inv_rms) {
  const uint32_t lo = FloatToBf16Bits(y.x * inv_rms * w.x) |
                      uint32_t{FloatToBf16Bits(y.y * inv_rms * w.y)} << 16;
  const uint32_t hi = FloatToBf16Bits(y.z * inv_rms * w.z) |
                      uint32_t{FloatToBf16Bits(y.w * inv_rms * w.w)} << 16;
  *dst = make_uint2(lo, hi);
}

// AddRmsNorm over rows whose width is a multiple of 4 (and 16-byte aligned): the first
// kNormVecs float4s of each thread stay in registers between the two passes; a wider row's
// rest is read twice.
__global__ void __launch_bounds__(kNormThreads)
    AddRmsNormVec4Kernel(float* __restrict__ x, const float* __restrict__ delta,
                         const float* __restrict__ weight, const int32_t* __restrict__ row_map,
                         int32_t hidden, float eps, bool write_back, uint16_t* __restrict__ out) {
  const int64_t i = blockIdx.x;
  const int n4 = hidden / 4;
  const float4* w4 = reinterpret_cast<const float4*>(weight);
  const float4 zero = make_float4(0, 0, 0, 0);
  float4 held_w[kNormVecs];  // the weight does not depend on the kernel ahead
#pragma unroll
  for (int v = 0; v < kNormVecs; ++v) {
    const int j = threadIdx.x + v * kNormThreads;
    held_w[v] = j < n4 ? w4[j] : zero;
  }
  WaitThenAllowDependents();  // row_map is written by no kernel, but x and delta are
  const int64_t r = row_map != nullptr ? row_map[i] : i;
  float4* xr = reinterpret_cast<float4*>(x + r * hidden);
  const float4* dr = delta != nullptr ? reinterpret_cast<const float4*>(delta + r * hidden) : nullptr;
  uint2* o4 = reinterpret_cast<uint2*>(out + i * hidden);
  float4 held[kNormVecs];
  float sum_squares = 0.0f;
#pragma unroll
  for (int v = 0; v < kNormVecs; ++v) {
    const int j = threadIdx.x + v * kNormThreads;
    held[v] = j < n4 ? Add4(xr[j], dr != nullptr ? dr[j] : zero) : zero;
    sum_squares += Dot4(held[v]);
  }
  for (int j = threadIdx.x + kNormVecs * kNormThreads; j < n4; j += kNormThreads) {
    const float4 y = Add4(xr[j], dr != nullptr ? dr[j] : zero);
    if (write_back) xr[j] = y;
    sum_squares += Dot4(y);
  }
  const float inv_rms = 1.0f / sqrtf(BlockSum(sum_squares) / hidden + eps);
#pragma unroll
  for (int v = 0; v < kNormVecs; ++v) {
    const int j = threadIdx.x + v * kNormThreads;
    if (j >= n4) continue;
    if (write_back) xr[j] = held[v];
    StoreNormed4(o4 + j, held[v], held_w[v], inv_rms);
  }
  for (int j = threadIdx.x + kNormVecs * kNormThreads; j < n4; j += kNormThreads) {
    // This thread wrote xr[j] above, so it reads its own value back.
    const float4 y = write_back ? xr[j] : Add4(xr[j], dr != nullptr ? dr[j] : zero);
    StoreNormed4(o4 + j, y, w4[j], inv_rms);
  }
}

// Any width: one float at a time.
__global__ void __launch_bounds__(kRowThreads)
    AddRmsNormKernel(float* x, const float* delta, const float* weight, const int32_t* row_map,
                     int32_t hidden, float eps, bool write_back, uint16_t* out) {
  WaitThenAllowDependents();
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
// then Q to q_out and K, V to the cache slot, with the loads of several pairs issued together.
constexpr int kRopeThreads = 512;
__global__ void __launch_bounds__(kRopeThreads) RopeWriteKvKernel(const RopeKvArgs a) {
  __shared__ float cos_sin[2][128];
  const int64_t r = blockIdx.x;
  const int hd = a.head_dim, half = hd / 2, H = a.num_heads, KVH = a.num_kv_heads;
  const int32_t position = a.positions[r];
  for (int i = threadIdx.x; i < half; i += kRopeThreads) {
    const double angle = position * a.inv_freq[i];
    cos_sin[0][i] = static_cast<float>(cos(angle));
    cos_sin[1][i] = static_cast<float>(sin(angle));
  }
  // The angles came from the step's plan; q, K and V from the kernel ahead. Decode attention
  // may launch now: it waits for this grid before it reads q or a block this step writes.
  WaitThenAllowDependents();
  __syncthreads();
  const float* __restrict__ row = a.qkv + r * (H + 2 * KVH) * hd;
  const float* __restrict__ bias = a.qkv_bias;
  auto at = [row, bias](int j) { return bias != nullptr ? row[j] + bias[j] : row[j]; };
  const int64_t slot = (int64_t{a.kv_block[r]} * KVH * a.block_size + a.kv_offset[r]) * hd;
  const int64_t head_stride = int64_t{a.block_size} * hd;  // between KV heads of a block
  // Rotated pairs of Q (heads [0, H)) and K (heads [H, H + KVH)).
#pragma unroll 4
  for (int idx = threadIdx.x; idx < (H + KVH) * half; idx += kRopeThreads) {
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
#pragma unroll 4
  for (int idx = threadIdx.x; idx < KVH * hd; idx += kRopeThreads) {
    const int h = idx / hd, d = idx % hd;
    a.v_cache[slot + h * head_stride + d] = FloatToBf16Bits(at(v_begin + idx));
  }
}

__device__ __forceinline__ float Silu(float gate) { return gate / (1.0f + expf(-gate)); }

// SiluMul for widths that are a multiple of 4: one float4 of gate and of up a thread, 32-bit
// index arithmetic (the launch checks rows * inter < 2^31).
__global__ void SiluMulVec4Kernel(const float4* __restrict__ gate_up, int32_t rows, int32_t inter4,
                                  uint2* __restrict__ out) {
  WaitThenAllowDependents();
  const int32_t n = rows * inter4;
  for (int32_t idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += gridDim.x * blockDim.x) {
    const int32_t r = idx / inter4, i = idx - r * inter4;
    const float4 g = gate_up[int64_t{r} * 2 * inter4 + i];
    const float4 u = gate_up[int64_t{r} * 2 * inter4 + inter4 + i];
    const uint32_t lo = FloatToBf16Bits(Silu(g.x) * u.x) | uint32_t{FloatToBf16Bits(Silu(g.y) * u.y)} << 16;
    const uint32_t hi = FloatToBf16Bits(Silu(g.z) * u.z) | uint32_t{FloatToBf16Bits(Silu(g.w) * u.w)} << 16;
    out[idx] = make_uint2(lo, hi);
  }
}

__global__ void SiluMulKernel(const float* gate_up, int32_t rows, int32_t inter, uint16_t* out) {
  WaitThenAllowDependents();
  const int64_t n = int64_t{rows} * inter;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < n;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = idx / inter, i = idx % inter;
    const float gate = gate_up[r * 2 * inter + i], up = gate_up[r * 2 * inter + inter + i];
    out[idx] = FloatToBf16Bits(Silu(gate) * up);
  }
}

bool Aligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;  // null counts as aligned
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
                             bool write_back, uint16_t* out, cudaStream_t stream,
                             bool early_launch) {
  if (rows == 0) return cudaSuccess;
  const bool vec4 = hidden % 4 == 0 && Aligned(x, 16) && Aligned(delta, 16) &&
                    Aligned(weight, 16) && Aligned(out, 8);
  return vec4 ? LaunchMaybeEarly(early_launch, AddRmsNormVec4Kernel, rows, kNormThreads, 0, stream,
                                 x, delta, weight, row_map, hidden, eps, write_back, out)
              : LaunchMaybeEarly(early_launch, AddRmsNormKernel, rows, kRowThreads, 0, stream, x,
                                 delta, weight, row_map, hidden, eps, write_back, out);
}

cudaError_t LaunchRopeWriteKv(const RopeKvArgs& a, cudaStream_t stream, bool early_launch) {
  if (a.rows == 0) return cudaSuccess;
  if (a.head_dim % 2 != 0 || a.head_dim > 256) return cudaErrorInvalidValue;
  return LaunchMaybeEarly(early_launch, RopeWriteKvKernel, a.rows, kRopeThreads, 0, stream, a);
}

cudaError_t LaunchSiluMul(const float* gate_up, int32_t rows, int32_t inter, uint16_t* out,
                          cudaStream_t stream, bool early_launch) {
  if (rows == 0) return cudaSuccess;
  const int64_t n = int64_t{rows} * inter;
  if (inter % 4 == 0 && n < (int64_t{1} << 31) && Aligned(gate_up, 16) && Aligned(out, 8)) {
    const int blocks = static_cast<int>(std::min<int64_t>((n / 4 + 255) / 256, 4096));
    return LaunchMaybeEarly(early_launch, SiluMulVec4Kernel, blocks, 256, 0, stream,
                            reinterpret_cast<const float4*>(gate_up), rows, inter / 4,
                            reinterpret_cast<uint2*>(out));
  }
  const int blocks = static_cast<int>(std::min<int64_t>((n + 255) / 256, 4096));
  return LaunchMaybeEarly(early_launch, SiluMulKernel, blocks, 256, 0, stream, gate_up, rows,
                          inter, out);
}

}  // namespace spanserve::gpu
