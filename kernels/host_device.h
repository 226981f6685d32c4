// Marks functions that the CUDA kernels and the host code (CPU tests included) share.
#pragma once

#if defined(__CUDACC__)
#define SPANSERVE_HOST_DEVICE __host__ __device__
#else
#define SPANSERVE_HOST_DEVICE
#endif
