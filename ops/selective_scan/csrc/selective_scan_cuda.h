// Parameters and launchers of the CUDA selective-scan kernels, shared by
// the host binding (selective_scan_cuda.cpp) and the kernels
// (selective_scan_cuda.cuh); plain C++, no device code.
#pragma once

#include <cstdint>

#include "simt.h"

namespace mmvim_scan {

// A block is kChannels neighbouring channels (threadIdx.x) x token threads
// (threadIdx.y) x directions (threadIdx.z); each thread holds kItems
// consecutive scan steps of a tile of token_threads * kItems steps.
constexpr int kChannels = 8;
constexpr int kItems = 8;
constexpr int kMaxDirs = 2;
constexpr int kMaxConvWidth = 4;
constexpr int kRowThreads = 32 / kChannels;  // token threads per warp
// at most 2 x 8 x 32 = 512 threads a forward block (both directions), 256
// a backward one (one direction)
constexpr int kMaxTokenThreads = 32;

// Strides, in elements, of a (batch, token, channel) tensor.
struct Strides3 {
  int64_t b, t, e;
};
// Strides of B or C as (batch, token, group, state); 0 where B is shared.
struct Strides4 {
  int64_t b, t, g, n;
};

struct DirParams {
  // the scan input u: x itself, or silu(depthwise causal conv(x)) in scan
  // order when conv_weight is set (anti-causal in tokens for a reverse
  // direction)
  const void* x;
  Strides3 x_stride;
  const float* conv_weight;  // (E, conv_width), may be null
  const float* conv_bias;    // (E,), may be null
  const void* delta;         // data dtype
  Strides3 delta_stride;
  const float* A;            // (E, N)
  const void* B;             // data dtype or float32 (bc_float)
  Strides4 B_stride;
  int64_t B_groups;          // E / B_groups channels share a B row
  const void* C;
  Strides4 C_stride;
  int64_t C_groups;
  const float* D;            // (E,), may be null
  const float* bias;         // (E,), may be null
  bool reverse;
  // backward outputs
  void* du;        // (b, L, E) data dtype: gradient of u (the conv output)
  void* ddelta;    // (b, L, E) data dtype
  float* dA;       // (E, N)
  float* dB;       // (b or 1, L or 1, G, N): B's shape with shared dims kept 1
  float* dC;
  float* dD;       // (E,)
  float* dbias;    // (E,)
};

struct ScanParams {
  DirParams dirs[kMaxDirs];
  int ndirs;
  const void* z;  // (b, L, E) data dtype, may be null
  Strides3 z_stride;
  int64_t batch, dim, length, state;
  int conv_width;
  int token_threads;  // blockDim.y
  int64_t tiles;      // ceil(L / (token_threads * kItems))
  bool softplus;
  float scale;
  // how many neighbouring channel lanes share a B (C) row: they sum dB (dC)
  // before one atomic add (1: every lane adds its own)
  int B_lanes, C_lanes;
  void* out;          // (b, L, E) data dtype, contiguous
  float* ybuf;        // float32 y: forward (b, L, E), the first direction's
                      // at each token (bi only); backward (ndirs, b, L, E)
  float* tile_states; // (ndirs, b, E, tiles, N): each tile's start state
  float* last;        // (b, E, N) of direction 0, may be null
  const void* dout;   // (b, L, E) data dtype, contiguous (backward)
  void* dz;           // (b, L, E) data dtype, may be null (backward)
};

// silu(depthwise conv(x)): one thread per output element.
struct ConvParams {
  const void* x;
  Strides3 x_stride;
  const float* weight;  // (E, width)
  const float* bias;    // (E,), may be null
  int width;
  bool reverse;
  int64_t batch, length, dim;
  void* out;            // (b, L, E) contiguous, x's dtype
};

template <typename T>
void launch_conv_silu(const ConvParams& p, cudaStream_t stream);

// Launchers, instantiated per (data, B/C) type pair in
// selective_scan_cuda_*.cu; bc_float: B and C are float32.
template <typename T>
void launch_scan_fwd(const ScanParams& p, bool bc_float, cudaStream_t stream);
template <typename T>
void launch_scan_bwd(const ScanParams& p, bool bc_float, cudaStream_t stream);

}  // namespace mmvim_scan
