// Small device helpers shared by the kernels: bf16 packing, 16-byte loads and cp.async copies,
// warp reductions, launches, tensor-core fragments.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace spanserve::gpu {

constexpr float kNegInf = -__builtin_huge_valf();
constexpr float kLog2e = 1.4426950408889634f;  // scores in the log2 domain, for exp2f

// Eight bf16 values in one 16-byte word to fp32 (bf16 is the top half of an fp32).
__device__ __forceinline__ void Bf16x8ToFloat(const uint4& raw, float (&out)[8]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(words[i] << 16);
    out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}

__device__ __forceinline__ uint16_t FloatToBf16Bits(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

__device__ __forceinline__ float Bf16BitsToFloat(uint16_t bits) {
  return __uint_as_float(uint32_t{bits} << 16);
}

// A read-only 16-byte load that does not allocate in L1 (streamed KV data).
__device__ __forceinline__ uint4 LoadStreaming(const void* ptr) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(ptr));
  return v;
}

// Programmatic dependent launch (sm_90): a kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start while the kernel before it in the
// stream is still running. It must call WaitForPreviousGrid before it reads anything that kernel
// writes, or writes anything that kernel reads or writes: the wait returns once that grid has
// finished and its writes are visible (at once when there is no such grid).
// AllowDependentLaunch lets the next such kernel start before this one ends.
__device__ __forceinline__ void WaitForPreviousGrid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void AllowDependentLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
// The start of a kernel that may be launched early: wait for the kernel ahead, then let the one
// behind launch. Allowing only after the wait keeps at most one early launch waiting behind a
// running kernel (allowed before it, launches pile up: kernels/NOTES.md, seventh run).
__device__ __forceinline__ void WaitThenAllowDependents() {
  WaitForPreviousGrid();
  AllowDependentLaunch();
}

// kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch when
// `early` (the kernel must wait, WaitForPreviousGrid, before it touches what the kernel ahead
// reads or writes), in thread block clusters of `cluster` CTAs where that is not 1 x 1 x 1.
template <typename... Params, typename... Args>
cudaError_t LaunchClustered(bool early, dim3 cluster, void (*kernel)(Params...), dim3 grid,
                            dim3 block, size_t smem, cudaStream_t stream, Args... args) {
  cudaLaunchAttribute attrs[2] = {};
  unsigned count = 0;
  if (cluster.x * cluster.y * cluster.z > 1) {
    attrs[count].id = cudaLaunchAttributeClusterDimension;
    attrs[count].val.clusterDim.x = cluster.x;
    attrs[count].val.clusterDim.y = cluster.y;
    attrs[count].val.clusterDim.z = cluster.z;
    ++count;
  }
  if (early) {
    attrs[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[count].val.programmaticStreamSerializationAllowed = 1;
    ++count;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attrs;
  config.numAttrs = count;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}
template <typename... Params, typename... Args>
cudaError_t LaunchMaybeEarly(bool early, void (*kernel)(Params...), dim3 grid, dim3 block,
                             size_t smem, cudaStream_t stream, Args... args) {
  return LaunchClustered(early, dim3(1, 1, 1), kernel, grid, block, smem, stream, args...);
}

// 16 bytes global -> shared, bypassing L1; zero-filled when !valid (nothing is read then).
// The L2 fetches 256 bytes a miss: 1-2% faster at the memory roof for both decode attention kernels than no
// hint or 128 (measured side by side, bench/results/cuda/2026-11-23/session4).
__device__ __forceinline__ void CopyAsync16(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void CopyAsync16(void* smem, const void* gmem) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem) : "memory");
}
__device__ __forceinline__ void CopyAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void CopyAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

template <int kWidth>
__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int offset = kWidth / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ __forceinline__ float WarpMax(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

// Tensor-core fragments (mma.sync), shared by the attention kernels and the decode GEMM.
__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// Four 8x8 bf16 matrices from shared memory, row addresses from lanes 8i..8i+7 for matrix i.
__device__ __forceinline__ void LoadMatrixX4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(row))
               : "memory");
}
// The same four matrices, transposed: lane l gets rows 2 (l % 4) and + 1 at column l / 4 of each,
// the B operand of mma.sync from a row-major [k][n] tile.
__device__ __forceinline__ void LoadMatrixX4Trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(row))
               : "memory");
}
__device__ __forceinline__ uint32_t PackBf16x2(float lo, float hi) {  // lo in the low half
  return uint32_t{FloatToBf16Bits(lo)} | uint32_t{FloatToBf16Bits(hi)} << 16;
}
// Element offset of 16-byte piece `piece` of row `token` in a [rows][HD] bf16 tile: pieces are
// XOR-swizzled by the row's low 3 bits, so the 8 rows an ldmatrix reads at one piece column
// sit in 8 different 16-byte bank groups.
template <int HD>
__device__ __forceinline__ int TileOffset(int token, int piece) {
  return token * HD + ((piece ^ (token & 7)) * 8);
}
// c += a b: a 16x16 (row), b 16x8 (col), c 16x8 fp32.
__device__ __forceinline__ void Mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace spanserve::gpu
