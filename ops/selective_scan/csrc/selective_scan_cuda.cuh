// CUDA kernels of the selective scan: forward and backward, one or two
// directions (the Vim bidirectional scan) in one launch.
//
// Same semantics and boundary layouts as selective_scan_cpu.cpp:
//   u, delta, z, out: (b, E, L) in float / half / bfloat16;
//   A: (E, N), Bt, Ct: (b, G, L, N), D, bias: (E,), all float32;
//   acc (sum over directions of y, before scale and gate): (b, E, L) float32.
//
// One thread per (b, e) channel runs the recurrence over the tokens with the
// state in registers; the threads of a warp are 32 neighbouring channels, so
// the B and C of a token are broadcast loads. The backward pass stores the
// state at the start of every kChunk tokens, then walks the chunks in
// reverse, recomputing each chunk's states into a small local array (no
// (B, E, L, N) tensor). dB and dC are summed over the channels of a warp with
// shuffles before one atomic add per warp.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>

#include "selective_scan_cuda.h"
#include "simt.h"

namespace mmvim_scan {

// float / c10::Half / c10::BFloat16 convert to and from float on the device
template <typename T>
__device__ __forceinline__ float to_float(T x) {
  return static_cast<float>(x);
}
template <typename T>
__device__ __forceinline__ T from_float(float x) {
  return static_cast<T>(x);
}

__device__ __forceinline__ float softplus_f(float x) {
  return x <= 20.f ? log1pf(__expf(x)) : x;
}
__device__ __forceinline__ float sigmoid_f(float x) {
  return 1.f / (1.f + __expf(-x));
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Adds x (one value per lane) into *dst: one atomic per warp when every
// lane of the warp targets the same address, one per lane otherwise.
__device__ __forceinline__ void add_over_channels(float* dst, float x,
                                                  bool uniform, bool valid) {
  if (uniform) {
    const float total = warp_sum(valid ? x : 0.f);
    if ((threadIdx.x & 31) == 0) atomicAdd(dst, total);
  } else if (valid) {
    atomicAdd(dst, x);
  }
}

template <typename T, int kMaxN>
__global__ void __launch_bounds__(kThreads)
    scan_fwd_kernel(ScanParams p) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t b = blockIdx.y;
  if (e >= p.dim) return;
  const int64_t L = p.length, N = p.state;
  const int64_t g = e / (p.dim / p.groups);
  const int64_t row = (b * p.dim + e) * L;
  for (int k = 0; k < p.ndirs; ++k) {
    const DirParams& dir = p.dirs[k];
    const T* u = static_cast<const T*>(dir.u) + row;
    const T* delta = static_cast<const T*>(dir.delta) + row;
    const float* Bt = dir.Bt + (b * p.groups + g) * L * N;
    const float* Ct = dir.Ct + (b * p.groups + g) * L * N;
    const float D = dir.D ? dir.D[e] : 0.f;
    const float bias = dir.bias ? dir.bias[e] : 0.f;
    float h[kMaxN], A2[kMaxN];
#pragma unroll
    for (int n = 0; n < kMaxN; ++n) {
      h[n] = 0.f;
      A2[n] = n < N ? dir.A[e * N + n] * 1.4426950408889634f : 0.f;
    }
    for (int64_t step = 0; step < L; ++step) {
      const int64_t t = dir.reverse ? L - 1 - step : step;
      float d = to_float(delta[t]) + bias;
      if (p.softplus) d = softplus_f(d);
      const float uu = to_float(u[t]);
      const float du = d * uu;
      const float* Bn = Bt + t * N;
      const float* Cn = Ct + t * N;
      float y = D * uu;
#pragma unroll
      for (int n = 0; n < kMaxN; ++n) {
        if (n < N) {
          h[n] = exp2f(d * A2[n]) * h[n] + du * Bn[n];
          y += h[n] * Cn[n];
        }
      }
      p.acc[row + t] = k == 0 ? y : p.acc[row + t] + y;
    }
    if (k == 0 && p.last) {
#pragma unroll
      for (int n = 0; n < kMaxN; ++n)
        if (n < N) p.last[(b * p.dim + e) * N + n] = h[n];
    }
  }
  const T* z = p.z ? static_cast<const T*>(p.z) + row : nullptr;
  T* out = static_cast<T*>(p.out) + row;
  for (int64_t t = 0; t < L; ++t) {
    float o = p.scale * p.acc[row + t];
    if (z) {
      const float zt = to_float(z[t]);
      o *= zt * sigmoid_f(zt);
    }
    out[t] = from_float<T>(o);
  }
}

template <typename T, int kMaxN>
__global__ void __launch_bounds__(kThreads)
    scan_bwd_kernel(ScanParams p) {
  const int64_t e_raw = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool valid = e_raw < p.dim;
  // lanes past the last channel read its inputs (in bounds) but write only
  // their own scratch rows and add nothing; they stay alive for the warp
  // reductions
  const int64_t e = valid ? e_raw : p.dim - 1;
  const int64_t b = blockIdx.y;
  const int64_t L = p.length, N = p.state;
  const int64_t g = e / (p.dim / p.groups);
  const int64_t row = (b * p.dim + e) * L;
  const int64_t n_chunks = (L + kChunk - 1) / kChunk;
  const int64_t scratch_row = b * p.dim_padded + e_raw;
  float* gy = p.gy + scratch_row * L;
  float* ck = p.checkpoints + scratch_row * n_chunks * N;

  // the gate: out = scale * acc * silu(z)
  {
    const T* dout = static_cast<const T*>(p.dout) + row;
    const T* z = p.z ? static_cast<const T*>(p.z) + row : nullptr;
    T* dz = p.dz ? static_cast<T*>(p.dz) + row : nullptr;
    for (int64_t t = 0; t < L; ++t) {
      const float go = p.scale * to_float(dout[t]);
      if (z) {
        const float zt = to_float(z[t]), sg = sigmoid_f(zt);
        if (valid)
          dz[t] = from_float<T>(go * p.acc_in[row + t] * sg *
                                (1.f + zt * (1.f - sg)));
        gy[t] = go * zt * sg;
      } else {
        gy[t] = go;
      }
    }
  }

  for (int k = 0; k < p.ndirs; ++k) {
    const DirParams& dir = p.dirs[k];
    const T* u = static_cast<const T*>(dir.u) + row;
    const T* delta = static_cast<const T*>(dir.delta) + row;
    const float* Bt = dir.Bt + (b * p.groups + g) * L * N;
    const float* Ct = dir.Ct + (b * p.groups + g) * L * N;
    float* dBt = p.dBt[k] + (b * p.groups + g) * L * N;
    float* dCt = p.dCt[k] + (b * p.groups + g) * L * N;
    T* du_out = static_cast<T*>(p.du[k]) + row;
    T* dd_out = static_cast<T*>(p.ddelta[k]) + row;
    const float D = dir.D ? dir.D[e] : 0.f;
    const float bias = dir.bias ? dir.bias[e] : 0.f;
    float A2[kMaxN], h[kMaxN];
#pragma unroll
    for (int n = 0; n < kMaxN; ++n) {
      A2[n] = n < N ? dir.A[e * N + n] * 1.4426950408889634f : 0.f;
      h[n] = 0.f;
    }
    // pass 1: the state before each chunk, in scan order
    for (int64_t step = 0; step < L; ++step) {
      if (step % kChunk == 0) {
#pragma unroll
        for (int n = 0; n < kMaxN; ++n)
          if (n < N) ck[(step / kChunk) * N + n] = h[n];
      }
      const int64_t t = dir.reverse ? L - 1 - step : step;
      float d = to_float(delta[t]) + bias;
      if (p.softplus) d = softplus_f(d);
      const float du = d * to_float(u[t]);
      const float* Bn = Bt + t * N;
#pragma unroll
      for (int n = 0; n < kMaxN; ++n)
        if (n < N) h[n] = exp2f(d * A2[n]) * h[n] + du * Bn[n];
    }
    // pass 2: chunks in reverse, states recomputed into hs
    float dh[kMaxN], dA_acc[kMaxN];
#pragma unroll
    for (int n = 0; n < kMaxN; ++n) dh[n] = dA_acc[n] = 0.f;
    float dD_acc = 0.f, dbias_acc = 0.f;
    float hs[kChunk][kMaxN];
    for (int64_t c = n_chunks - 1; c >= 0; --c) {
      const int64_t first = c * kChunk;
      const int count = static_cast<int>(L - first < kChunk ? L - first : kChunk);
#pragma unroll
      for (int n = 0; n < kMaxN; ++n) h[n] = n < N ? ck[c * N + n] : 0.f;
      for (int j = 0; j < count; ++j) {
        const int64_t t = dir.reverse ? L - 1 - (first + j) : first + j;
        float d = to_float(delta[t]) + bias;
        if (p.softplus) d = softplus_f(d);
        const float du = d * to_float(u[t]);
        const float* Bn = Bt + t * N;
#pragma unroll
        for (int n = 0; n < kMaxN; ++n) {
          if (n < N) h[n] = exp2f(d * A2[n]) * h[n] + du * Bn[n];
          hs[j][n] = h[n];
        }
      }
      for (int j = count - 1; j >= 0; --j) {
        const int64_t t = dir.reverse ? L - 1 - (first + j) : first + j;
        const float raw = to_float(delta[t]) + bias;
        const float d = p.softplus ? softplus_f(raw) : raw;
        const float uu = to_float(u[t]);
        const float gt = gy[t];
        const float* Bn = Bt + t * N;
        const float* Cn = Ct + t * N;
        float dd = 0.f, du = gt * D;
        dD_acc += gt * uu;
#pragma unroll
        for (int n = 0; n < kMaxN; ++n) {
          if (n < N) {
            const float hp = j > 0 ? hs[j - 1][n] : ck[c * N + n];
            add_over_channels(dCt + t * N + n, gt * hs[j][n],
                              p.warp_uniform_group, valid);
            const float grad_h = dh[n] + gt * Cn[n];
            const float a = exp2f(d * A2[n]);
            const float An = A2[n] * 0.6931471805599453f;
            dd += grad_h * (An * a * hp + uu * Bn[n]);
            dA_acc[n] += grad_h * d * a * hp;
            du += grad_h * d * Bn[n];
            add_over_channels(dBt + t * N + n, grad_h * d * uu,
                              p.warp_uniform_group, valid);
            dh[n] = a * grad_h;
          }
        }
        const float ddelta = p.softplus ? dd * sigmoid_f(raw) : dd;
        dbias_acc += ddelta;
        if (valid) {
          du_out[t] = from_float<T>(du);
          dd_out[t] = from_float<T>(ddelta);
        }
      }
    }
    if (valid) {
#pragma unroll
      for (int n = 0; n < kMaxN; ++n)
        if (n < N) atomicAdd(p.dA[k] + e * N + n, dA_acc[n]);
      atomicAdd(p.dD[k] + e, dD_acc);
      atomicAdd(p.dbias[k] + e, dbias_acc);
    }
  }
}

#define MMVIM_SCAN_DISPATCH_N(N, ...)                                        \
  do {                                                                       \
    if ((N) <= 16) {                                                         \
      constexpr int kN = 16;                                                 \
      __VA_ARGS__();                                                         \
    } else if ((N) <= 32) {                                                  \
      constexpr int kN = 32;                                                 \
      __VA_ARGS__();                                                         \
    } else {                                                                 \
      constexpr int kN = 64;                                                 \
      __VA_ARGS__();                                                         \
    }                                                                        \
  } while (0)

#define MMVIM_SCAN_INSTANTIATE(T)                                            \
  template <>                                                                \
  void launch_scan_fwd<T>(const ScanParams& p, cudaStream_t stream) {        \
    const dim3 grid((p.dim + kThreads - 1) / kThreads, p.batch);             \
    MMVIM_SCAN_DISPATCH_N(p.state, [&] {                                     \
      launch_kernel(scan_fwd_kernel<T, kN>, grid, kThreads, 0, stream, p);   \
    });                                                                      \
  }                                                                          \
  template <>                                                                \
  void launch_scan_bwd<T>(const ScanParams& p, cudaStream_t stream) {        \
    const dim3 grid((p.dim + kThreads - 1) / kThreads, p.batch);             \
    MMVIM_SCAN_DISPATCH_N(p.state, [&] {                                     \
      launch_kernel(scan_bwd_kernel<T, kN>, grid, kThreads, 0, stream, p);   \
    });                                                                      \
  }

}  // namespace mmvim_scan
