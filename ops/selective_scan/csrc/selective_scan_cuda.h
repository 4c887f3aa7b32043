// Parameters and launchers of the CUDA selective-scan kernels, shared by
// the host binding (selective_scan_cuda.cpp) and the kernels
// (selective_scan_cuda.cuh); plain C++, no device code.
#pragma once

#include "simt.h"

#include <cstdint>

namespace mmvim_scan {

constexpr int kThreads = 128;
constexpr int kChunk = 16;
constexpr int kMaxDirs = 2;

struct DirParams {
  const void* u;
  const void* delta;
  const float* A;
  const float* Bt;
  const float* Ct;
  const float* D;     // may be null
  const float* bias;  // may be null
  bool reverse;
};

struct ScanParams {
  DirParams dirs[kMaxDirs];
  int ndirs;
  const void* z;  // may be null
  int64_t batch, dim, length, state, groups;
  bool softplus;
  float scale;
  // forward outputs
  void* out;
  float* acc;
  float* last;  // may be null
  // backward inputs / outputs
  const void* dout;
  const float* acc_in;
  // scratch, one row per thread (E rounded up to whole blocks: E_pad)
  int64_t dim_padded;
  float* gy;           // (b, E_pad, L)
  float* checkpoints;  // (b, E_pad, n_chunks, N)
  void* du[kMaxDirs];
  void* ddelta[kMaxDirs];
  float* dA[kMaxDirs];
  float* dBt[kMaxDirs];
  float* dCt[kMaxDirs];
  float* dD[kMaxDirs];
  float* dbias[kMaxDirs];
  void* dz;  // may be null
  bool warp_uniform_group;  // all lanes of a warp share one B/C group
};

// Launchers, instantiated per input dtype in selective_scan_cuda_*.cu.
template <typename T>
void launch_scan_fwd(const ScanParams& p, cudaStream_t stream);
template <typename T>
void launch_scan_bwd(const ScanParams& p, cudaStream_t stream);

}  // namespace mmvim_scan
