// The CUDA runtime, or its emulation on the CPU (simt_emulation.h) when
// MMVIM_SIMT_EMULATION is defined: kernels include this instead of
// <cuda_runtime.h> and launch through launch_kernel, which is exactly
// kernel<<<grid, block, smem, stream>>>(args...) under nvcc.
#pragma once

#if defined(MMVIM_SIMT_EMULATION)
#include "simt_emulation.h"
// extern __shared__ T name[] has no host spelling: kernels declare their
// dynamic shared memory with this macro
#define MMVIM_DYNAMIC_SHARED(T, name) \
  T* name = reinterpret_cast<T*>(::mmvim_simt::block().dynamic_smem)
#else
#include <cuda_runtime.h>
#define MMVIM_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

#include <cstddef>
#include <utility>

namespace mmvim_scan {

#if defined(MMVIM_SIMT_EMULATION) || defined(__CUDACC__)
template <typename... Params, typename... Args>
inline void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block,
                          size_t smem, cudaStream_t stream, Args&&... args) {
#if defined(MMVIM_SIMT_EMULATION)
  (void)stream;
  ::mmvim_simt::launch(reinterpret_cast<const void*>(kernel), grid, block,
                       smem, [&] { kernel(static_cast<Params>(args)...); });
#else
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
#endif
}
#endif

}  // namespace mmvim_scan
