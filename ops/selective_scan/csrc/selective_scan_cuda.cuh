// CUDA kernels of the selective scan, forward and backward, one direction
// or the two directions of Vim in one launch.
//
// Per batch b, channel e, state n and scan step s of a direction (token
// t = s, or L - 1 - s for a reverse direction):
//   u_s = silu(conv_bias + sum_k conv_w[k] * x_{s - W + 1 + k})  (fused conv;
//         u_s = x_s without one), x beyond the sequence is 0
//   d_s = softplus(delta_s + bias)   (or delta_s + bias)
//   h_s = exp(d_s * A_n) * h_{s-1} + d_s * u_s * B_{s,n}
//   y_s = sum_n C_{s,n} * h_s + D * u_s
//   out_t = scale * (sum over directions of y) * silu(z_t)
//
// Layout: every (batch, token, channel) tensor is read through its strides,
// so the token-major (b, L, E) outputs of the linear layers (x and z as
// halves of in_proj's output, B and C as slices of x_proj's) are read where
// they are, in their dtype; out, du, ddelta, dz are (b, L, E) contiguous.
//
// Parallel over tokens: a block is kChannels neighbouring channels (x)
// times token_threads (y) times the directions (z). Each thread holds
// kItems consecutive scan steps of a tile of token_threads * kItems steps;
// the block walks the tiles in scan order, both directions in lockstep from
// opposite ends. Per tile and state n, every thread combines its steps into
// one affine map h -> a * h + b; the maps are scanned across the token
// threads (shuffles within a warp, a shared-memory pass across warps) and
// the state entering the tile (kept in shared memory) is applied, so each
// step's state is computed once with one exponential. A warp is kChannels
// channels x (32 / kChannels) token threads: the loads of one step are
// kChannels neighbouring channels of one token row.
//
// The directions meet in the middle: the direction reaching a token first
// leaves its y in a float32 buffer, the other adds its own, applies the
// gate and the scale and writes out (deterministic, no atomics); in the
// tile both reach at once, after a barrier.
//
// Backward: the block walks the tiles in reverse, recomputes each tile's
// states from the state saved at its start (forward pass of that tile),
// then runs the adjoint recurrence q_s = a_s * (g_s * C_s + q_{s+1}) as a
// reverse scan of the same kind. dB / dC are summed over the channels of a
// group within the warp before one atomic add per (token, n); dA, dD and
// delta_bias are summed in shared memory before one atomic per channel.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>

#include "selective_scan_cuda.h"
#include "simt.h"

namespace mmvim_scan {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;

template <typename T>
__device__ __forceinline__ float to_float(T x) {
  return static_cast<float>(x);
}
template <typename T>
__device__ __forceinline__ T from_float(float x) {
  return static_cast<T>(x);
}

__device__ __forceinline__ float sigmoid_f(float x) {
  return 1.f / (1.f + __expf(-x));
}
__device__ __forceinline__ float softplus_f(float x) {
  return x <= 20.f ? log1pf(__expf(x)) : x;
}

// An affine step h -> a * h + b; then(f, g) applies f first.
struct Step {
  float a, b;
};
__device__ __forceinline__ Step then(Step first, Step second) {
  return Step{first.a * second.a, second.a * first.b + second.b};
}

// Where a thread sits in its block.
struct Lane {
  int c;       // channel lane, 0 .. kChannels - 1
  int j;       // token thread, 0 .. token_threads - 1
  int d;       // direction
  int slot;    // the direction's place in the block's shared memory
  int w;       // warp of its direction: j / kRowThreads
  int r;       // row within the warp: j % kRowThreads
  int warps;   // warps per direction
};

// The forward has both directions in a block (threadIdx.z), the backward
// one per block (blockIdx.z).
__device__ __forceinline__ Lane lane_of(const ScanParams& p, bool dir_per_block) {
  Lane l;
  l.c = threadIdx.x;
  l.j = threadIdx.y;
  l.d = dir_per_block ? blockIdx.z : threadIdx.z;
  l.slot = threadIdx.z;
  l.w = l.j / kRowThreads;
  l.r = l.j % kRowThreads;
  l.warps = p.token_threads / kRowThreads;
  return l;
}

// Exclusive scan of the threads' steps over the token threads of one
// (direction, channel), in scan order (reverse = false) or against it.
// agg: shared [ndirs][warps][kChannels] Steps of this scan's parity. One
// __syncthreads; the caller alternates the parity between scans.
__device__ __forceinline__ Step block_scan(Step mine, bool reverse,
                                           Step* agg, const Lane& l) {
  // inclusive within the warp's rows (row r is token thread w * R + r)
  Step incl = mine;
#pragma unroll
  for (int o = 1; o < kRowThreads; o <<= 1) {
    Step other;
    if (!reverse) {
      other.a = __shfl_up_sync(kFullMask, incl.a, o * kChannels);
      other.b = __shfl_up_sync(kFullMask, incl.b, o * kChannels);
      if (l.r >= o) incl = then(other, incl);
    } else {
      other.a = __shfl_down_sync(kFullMask, incl.a, o * kChannels);
      other.b = __shfl_down_sync(kFullMask, incl.b, o * kChannels);
      if (l.r + o < kRowThreads) incl = then(other, incl);
    }
  }
  // the row that ends the warp in scan order holds the warp's total
  const int last_row = reverse ? 0 : kRowThreads - 1;
  Step* mine_agg = agg + (l.slot * l.warps) * kChannels;
  if (l.r == last_row) mine_agg[l.w * kChannels + l.c] = incl;
  // exclusive within the warp: the inclusive value of the row before
  Step before;
  if (!reverse) {
    before.a = __shfl_up_sync(kFullMask, incl.a, kChannels);
    before.b = __shfl_up_sync(kFullMask, incl.b, kChannels);
  } else {
    before.a = __shfl_down_sync(kFullMask, incl.a, kChannels);
    before.b = __shfl_down_sync(kFullMask, incl.b, kChannels);
  }
  const bool first_row = reverse ? l.r == kRowThreads - 1 : l.r == 0;
  __syncthreads();
  Step prefix{1.f, 0.f};
  if (!reverse) {
    for (int w = 0; w < l.w; ++w) prefix = then(prefix, mine_agg[w * kChannels + l.c]);
  } else {
    for (int w = l.warps - 1; w > l.w; --w)
      prefix = then(prefix, mine_agg[w * kChannels + l.c]);
  }
  return first_row ? prefix : then(prefix, before);
}

// One direction's view of a (b, L, E) tensor, by scan step.
template <typename T>
__device__ __forceinline__ float load_step(const void* base, const Strides3& s,
                                           int64_t b, int64_t t, int64_t e) {
  return to_float(static_cast<const T*>(base)[b * s.b + t * s.t + e * s.e]);
}

__device__ __forceinline__ int64_t token_of(const DirParams& dir, int64_t L,
                                            int64_t s) {
  return dir.reverse ? L - 1 - s : s;
}

template <typename TB>
__device__ __forceinline__ float load_bc(const void* base, const Strides4& s,
                                         int64_t b, int64_t t, int64_t g,
                                         int64_t n) {
  return to_float(
      static_cast<const TB*>(base)[b * s.b + t * s.t + g * s.g + n * s.n]);
}

// u (after the fused conv) and the final delta of a thread's steps.
// Steps past the end give u = 0, d = 0: the identity step, contributing
// nothing.
template <typename T>
__device__ __forceinline__ void load_inputs(const ScanParams& p,
                                            const DirParams& dir, int64_t b,
                                            int64_t e, int64_t s0,
                                            float (&u)[kItems],
                                            float (&dl)[kItems]) {
  const int64_t L = p.length;
  constexpr int kHalo = kMaxConvWidth - 1;
  const bool conv = dir.conv_weight != nullptr;
  // taps aligned to the last one: w4[k] multiplies x_{s - kHalo + k}
  float w4[kMaxConvWidth];
#pragma unroll
  for (int k = 0; k < kMaxConvWidth; ++k) {
    const int src = k - (kMaxConvWidth - p.conv_width);
    w4[k] = conv ? (src >= 0 ? dir.conv_weight[e * p.conv_width + src] : 0.f)
                 : (k == kMaxConvWidth - 1 ? 1.f : 0.f);
  }
  const float cb = conv && dir.conv_bias ? dir.conv_bias[e] : 0.f;
  float xv[kItems + kHalo];
#pragma unroll
  for (int q = 0; q < kItems + kHalo; ++q) {
    const int64_t s = s0 - kHalo + q;
    xv[q] = (s >= 0 && s < L && (conv || q >= kHalo))
                ? load_step<T>(dir.x, dir.x_stride, b, token_of(dir, L, s), e)
                : 0.f;
  }
  const float bias = dir.bias ? dir.bias[e] : 0.f;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int64_t s = s0 + i;
    float v = cb;
#pragma unroll
    for (int k = 0; k < kMaxConvWidth; ++k) v += w4[k] * xv[i + k];
    const bool in = s < L;
    u[i] = in ? (conv ? v * sigmoid_f(v) : v) : 0.f;
    const float raw = in ? load_step<T>(dir.delta, dir.delta_stride, b,
                                        token_of(dir, L, s), e) + bias
                         : 0.f;
    dl[i] = in ? (p.softplus ? softplus_f(raw) : raw) : 0.f;
  }
}

__device__ __forceinline__ float gate(const ScanParams& p, float zt) {
  return p.scale * (p.z ? zt * sigmoid_f(zt) : 1.f);
}

// Tile of the other direction that reaches scan step s's token, and in
// which pass (forward: tile index; backward: tiles walked in reverse).
__device__ __forceinline__ int64_t other_tile(const ScanParams& p, int64_t s) {
  return (p.length - 1 - s) / (int64_t(p.token_threads) * kItems);
}

// Shared memory (floats) of a block holding `dirs` directions: two parities
// of scan aggregates, the carried states (forward) or adjoints (backward)
// of two tiles, and the backward's per-channel sums.
__host__ __device__ __forceinline__ int64_t agg_floats(const ScanParams& p,
                                                       int dirs) {
  return int64_t(2) * dirs * (p.token_threads / kRowThreads) * kChannels * 2;
}
__host__ __device__ __forceinline__ int64_t carry_floats(const ScanParams& p,
                                                         int dirs) {
  return int64_t(2) * dirs * p.state * kChannels;
}

template <typename T, typename TB>
__global__ void __launch_bounds__(512) scan_fwd_kernel(ScanParams p) {
  MMVIM_DYNAMIC_SHARED(float, smem);
  const Lane l = lane_of(p, false);
  const DirParams& dir = p.dirs[l.d];
  const int64_t b = blockIdx.y, L = p.length, N = p.state, E = p.dim;
  const int64_t e_raw = int64_t(blockIdx.x) * kChannels + l.c;
  const bool valid_e = e_raw < E;
  const int64_t e = valid_e ? e_raw : E - 1;  // idle lanes compute, write nothing
  const int64_t gB = e / (E / dir.B_groups), gC = e / (E / dir.C_groups);
  const int64_t TS = int64_t(p.token_threads) * kItems;
  Step* agg = reinterpret_cast<Step*>(smem);
  const int64_t agg_half = agg_floats(p, p.ndirs) / 4;  // Steps per parity
  float* carry = smem + agg_floats(p, p.ndirs);  // [2][ndirs][N][kChannels]
  auto carry_at = [&](int par, int64_t n) -> float& {
    return carry[((par * p.ndirs + l.d) * N + n) * kChannels + l.c];
  };
  for (int64_t n = l.j; n < N; n += p.token_threads) carry_at(0, n) = 0.f;
  float* states = p.tile_states +
                  ((l.d * p.batch + b) * E + e) * p.tiles * N;  // [tiles][N]
  const float D = dir.D ? dir.D[e] : 0.f;
  int scans = 0;
  __syncthreads();
  for (int64_t k = 0; k < p.tiles; ++k) {
    const int par = k & 1;
    const int64_t s0 = k * TS + int64_t(l.j) * kItems;
    float u[kItems], dl[kItems], y[kItems];
    load_inputs<T>(p, dir, b, e, s0, u, dl);
#pragma unroll
    for (int i = 0; i < kItems; ++i) y[i] = D * u[i];
    for (int64_t n = 0; n < N; ++n) {
      const float A2 = dir.A[e * N + n] * kLog2e;
      float a[kItems], bu[kItems];
      Step mine{1.f, 0.f};
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const int64_t s = s0 + i;
        const float Bv = s < L ? load_bc<TB>(dir.B, dir.B_stride, b,
                                             token_of(dir, L, s), gB, n)
                               : 0.f;
        a[i] = exp2f(dl[i] * A2);
        bu[i] = dl[i] * u[i] * Bv;
        mine = then(mine, Step{a[i], bu[i]});
      }
      const Step before =
          block_scan(mine, false, agg + (scans++ & 1) * agg_half, l);
      float h = before.a * carry_at(par, n) + before.b;
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const int64_t s = s0 + i;
        h = a[i] * h + bu[i];
        const float Cv = s < L ? load_bc<TB>(dir.C, dir.C_stride, b,
                                             token_of(dir, L, s), gC, n)
                               : 0.f;
        y[i] += Cv * h;
      }
      if (l.j == p.token_threads - 1) {
        carry_at(par ^ 1, n) = h;
        if (k + 1 < p.tiles && valid_e) states[(k + 1) * N + n] = h;
      }
    }
    // out: alone, or meeting the other direction
    T* out = static_cast<T*>(p.out);
    bool after_barrier[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int64_t s = s0 + i;
      after_barrier[i] = false;
      if (s >= L || !valid_e) continue;
      const int64_t t = token_of(dir, L, s);
      const int64_t at = (b * L + t) * E + e;
      const float zt = p.z ? load_step<T>(p.z, p.z_stride, b, t, e) : 0.f;
      if (p.ndirs == 1) {
        out[at] = from_float<T>(y[i] * gate(p, zt));
        continue;
      }
      const int64_t k_other = other_tile(p, s);
      if (k_other > k || (k_other == k && l.d == 1)) {
        p.ybuf[at] = y[i];
      } else if (k_other < k) {
        out[at] = from_float<T>((y[i] + p.ybuf[at]) * gate(p, zt));
      } else {
        after_barrier[i] = true;
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (!after_barrier[i]) continue;
      const int64_t t = token_of(dir, L, s0 + i);
      const int64_t at = (b * L + t) * E + e;
      const float zt = p.z ? load_step<T>(p.z, p.z_stride, b, t, e) : 0.f;
      out[at] = from_float<T>((y[i] + p.ybuf[at]) * gate(p, zt));
    }
  }
  if (p.last && l.d == 0 && valid_e) {
    for (int64_t n = l.j; n < N; n += p.token_threads)
      p.last[(b * E + e) * N + n] = carry_at(p.tiles & 1, n);
  }
}

// Sums v over the `lanes` neighbouring channel lanes of a group (a power of
// two dividing kChannels); every lane takes part.
__device__ __forceinline__ float group_sum(float v, int lanes) {
#pragma unroll
  for (int o = kChannels / 2; o > 0; o >>= 1) {
    const float other = __shfl_xor_sync(kFullMask, v, o);
    if (o < lanes) v += other;
  }
  return v;
}

template <typename T, typename TB>
__global__ void __launch_bounds__(256) scan_bwd_kernel(ScanParams p) {
  MMVIM_DYNAMIC_SHARED(float, smem);
  const Lane l = lane_of(p, true);
  const DirParams& dir = p.dirs[l.d];
  const int64_t b = blockIdx.y, L = p.length, N = p.state, E = p.dim;
  const int64_t e_raw = int64_t(blockIdx.x) * kChannels + l.c;
  const bool valid_e = e_raw < E;
  const int64_t e = valid_e ? e_raw : E - 1;
  const int64_t gB = e / (E / dir.B_groups), gC = e / (E / dir.C_groups);
  const int64_t TS = int64_t(p.token_threads) * kItems;
  Step* agg = reinterpret_cast<Step*>(smem);
  const int64_t agg_half = agg_floats(p, 1) / 4;
  float* qcarry = smem + agg_floats(p, 1);    // [2][N][kChannels]
  float* dA_sum = qcarry + carry_floats(p, 1);  // [N][kChannels]
  float* dDb_sum = dA_sum + N * kChannels;      // [2][kChannels]: dD, dbias
  auto qcarry_at = [&](int par, int64_t n) -> float& {
    return qcarry[(par * N + n) * kChannels + l.c];
  };
  for (int64_t n = l.j; n < N; n += p.token_threads) {
    qcarry_at(0, n) = 0.f;
    dA_sum[n * kChannels + l.c] = 0.f;
  }
  if (l.j < 2) dDb_sum[l.j * kChannels + l.c] = 0.f;
  const float* states = p.tile_states + ((l.d * p.batch + b) * E + e) * p.tiles * N;
  const float D = dir.D ? dir.D[e] : 0.f;
  // B / C shared by every token (constant B): no per-token reduction
  const bool b_per_token = dir.B_stride.t != 0, c_per_token = dir.C_stride.t != 0;
  const int64_t dB_b = dir.B_stride.b != 0 ? b : 0;
  const int64_t dC_b = dir.C_stride.b != 0 ? b : 0;
  const int64_t dB_L = b_per_token ? L : 1, dC_L = c_per_token ? L : 1;
  float dD_acc = 0.f, dbias_acc = 0.f;
  int scans = 0;
  __syncthreads();
  for (int64_t kk = 0; kk < p.tiles; ++kk) {
    const int par = kk & 1;
    const int64_t k = p.tiles - 1 - kk;  // tile in scan order
    const int64_t s0 = k * TS + int64_t(l.j) * kItems;
    float u[kItems], dl[kItems], gy[kItems], yr[kItems], du[kItems],
        ddl[kItems];
    load_inputs<T>(p, dir, b, e, s0, u, dl);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int64_t s = s0 + i;
      gy[i] = 0.f;
      if (s < L) {
        const int64_t t = token_of(dir, L, s);
        const float go = to_float(static_cast<const T*>(p.dout)[(b * L + t) * E + e]);
        const float zt = p.z ? load_step<T>(p.z, p.z_stride, b, t, e) : 0.f;
        gy[i] = go * gate(p, zt);
      }
      yr[i] = D * u[i];
      du[i] = D * gy[i];
      ddl[i] = 0.f;
      dD_acc += gy[i] * u[i];
    }
    for (int64_t n = 0; n < N; ++n) {
      const float An = dir.A[e * N + n];
      const float A2 = An * kLog2e;
      // B and C are loaded again where needed (cache hits): registers are
      // what bounds this kernel
      auto B_at = [&](int64_t s) {
        return s < L ? load_bc<TB>(dir.B, dir.B_stride, b, token_of(dir, L, s), gB, n)
                     : 0.f;
      };
      auto C_at = [&](int64_t s) {
        return s < L ? load_bc<TB>(dir.C, dir.C_stride, b, token_of(dir, L, s), gC, n)
                     : 0.f;
      };
      float a[kItems], bu[kItems], hp[kItems];
      Step mine{1.f, 0.f};
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        a[i] = exp2f(dl[i] * A2);
        bu[i] = dl[i] * u[i] * B_at(s0 + i);
        mine = then(mine, Step{a[i], bu[i]});
      }
      // the states of the tile, from the state saved at its start
      const Step before =
          block_scan(mine, false, agg + (scans++ & 1) * agg_half, l);
      const float h_start = k == 0 ? 0.f : states[k * N + n];
      float h = before.a * h_start + before.b;
      // the adjoint q_s = a_s * (g_s * C_s + q_{s+1}) of the thread's steps
      // as one map of the q after them: q_first = P * q_after + R, with
      // R = sum_i (prod_{j<i} a_j) * a_i g_i C_i
      Step rmine{1.f, 0.f};
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const float Cv = C_at(s0 + i);
        hp[i] = h;
        h = a[i] * h + bu[i];
        yr[i] += Cv * h;
        rmine.b += rmine.a * a[i] * gy[i] * Cv;
        rmine.a *= a[i];
      }
      const Step after =
          block_scan(rmine, true, agg + (scans++ & 1) * agg_half, l);
      float q = after.a * qcarry_at(par, n) + after.b;
      float dA_acc = 0.f, dB_const = 0.f, dC_const = 0.f;
#pragma unroll
      for (int i = kItems - 1; i >= 0; --i) {
        const int64_t s = s0 + i;
        const float Bv = B_at(s), Cv = C_at(s);
        const float dh = gy[i] * Cv + q;
        const float hi = a[i] * hp[i] + dl[i] * u[i] * Bv;
        const bool in = s < L;
        du[i] += dh * dl[i] * Bv;
        ddl[i] += in ? dh * (An * a[i] * hp[i] + u[i] * Bv) : 0.f;
        dA_acc += dh * dl[i] * a[i] * hp[i];
        const float dBv = valid_e ? dh * dl[i] * u[i] : 0.f;
        const float dCv = valid_e ? gy[i] * hi : 0.f;
        const int64_t t = in ? token_of(dir, L, s) : 0;
        // a group's lanes sum first (the leader of an idle group is idle)
        if (b_per_token) {
          const float sum = group_sum(dBv, p.B_lanes);
          if (in && valid_e && l.c % p.B_lanes == 0)
            atomicAdd(dir.dB + ((dB_b * dB_L + t) * dir.B_groups + gB) * N + n, sum);
        } else {
          dB_const += dBv;
        }
        if (c_per_token) {
          const float sum = group_sum(dCv, p.C_lanes);
          if (in && valid_e && l.c % p.C_lanes == 0)
            atomicAdd(dir.dC + ((dC_b * dC_L + t) * dir.C_groups + gC) * N + n, sum);
        } else {
          dC_const += dCv;
        }
        q = a[i] * dh;
      }
      if (l.j == 0) qcarry_at(par ^ 1, n) = q;
      atomicAdd(&dA_sum[n * kChannels + l.c], dA_acc);
      if (!b_per_token && valid_e)
        atomicAdd(dir.dB + (dB_b * dir.B_groups + gB) * N + n, dB_const);
      if (!c_per_token && valid_e)
        atomicAdd(dir.dC + (dC_b * dir.C_groups + gC) * N + n, dC_const);
    }
    // du, ddelta of the tile, and this direction's y for dz
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int64_t s = s0 + i;
      if (s >= L || !valid_e) continue;
      const int64_t at = (b * L + token_of(dir, L, s)) * E + e;
      // d softplus(x) / dx = sigmoid(x) = 1 - exp(-softplus(x))
      const float ddelta = p.softplus ? ddl[i] * -expm1f(-dl[i]) : ddl[i];
      dbias_acc += ddelta;
      static_cast<T*>(dir.du)[at] = from_float<T>(du[i]);
      static_cast<T*>(dir.ddelta)[at] = from_float<T>(ddelta);
      if (p.z) p.ybuf[l.d * p.batch * L * E + at] = yr[i];
    }
  }
  atomicAdd(&dDb_sum[l.c], dD_acc);
  atomicAdd(&dDb_sum[kChannels + l.c], dbias_acc);
  __syncthreads();
  if (!valid_e) return;
  for (int64_t n = l.j; n < N; n += p.token_threads)
    atomicAdd(dir.dA + e * N + n, dA_sum[n * kChannels + l.c]);
  if (l.j == 0) {
    atomicAdd(dir.dD + e, dDb_sum[l.c]);
    atomicAdd(dir.dbias + e, dDb_sum[kChannels + l.c]);
  }
}

// dz = dout * scale * (sum over directions of y) * silu'(z), from the y the
// backward blocks left in ybuf (ndirs, b, L, E): one thread per element.
template <typename T>
__global__ void __launch_bounds__(256) gate_grad_kernel(ScanParams p) {
  const int64_t count = p.batch * p.length * p.dim;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const int64_t e = i % p.dim, bt = i / p.dim;
  const int64_t t = bt % p.length, b = bt / p.length;
  float y = p.ybuf[i];
  if (p.ndirs == 2) y += p.ybuf[count + i];
  const float zt = load_step<T>(p.z, p.z_stride, b, t, e), sg = sigmoid_f(zt);
  const float go = to_float(static_cast<const T*>(p.dout)[i]);
  static_cast<T*>(p.dz)[i] = from_float<T>(go * p.scale * y * sg *
                                           (1.f + zt * (1.f - sg)));
}

template <typename T>
__global__ void __launch_bounds__(256) conv_silu_kernel(ConvParams p) {
  const int64_t count = p.batch * p.length * p.dim;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const int64_t e = i % p.dim, bt = i / p.dim;
  const int64_t t = bt % p.length, b = bt / p.length;
  float v = p.bias ? p.bias[e] : 0.f;
  for (int k = 0; k < p.width; ++k) {
    const int64_t back = p.width - 1 - k;
    const int64_t src = p.reverse ? t + back : t - back;
    if (src >= 0 && src < p.length)
      v += p.weight[e * p.width + k] * load_step<T>(p.x, p.x_stride, b, src, e);
  }
  static_cast<T*>(p.out)[i] = from_float<T>(v * sigmoid_f(v));
}

inline dim3 scan_grid(const ScanParams& p, bool dir_per_block) {
  return dim3(static_cast<unsigned>((p.dim + kChannels - 1) / kChannels),
              static_cast<unsigned>(p.batch), dir_per_block ? p.ndirs : 1);
}

template <typename Kernel>
void launch_with_smem(Kernel kernel, dim3 grid, dim3 block, int64_t smem,
                      const ScanParams& p, cudaStream_t stream) {
  if (smem > 48 * 1024)
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(smem));
  launch_kernel(kernel, grid, block, static_cast<size_t>(smem), stream, p);
}

template <typename T, typename TB>
void launch_fwd(const ScanParams& p, cudaStream_t stream) {
  const int64_t smem = (agg_floats(p, p.ndirs) + carry_floats(p, p.ndirs)) * 4;
  launch_with_smem(scan_fwd_kernel<T, TB>, scan_grid(p, false),
                   dim3(kChannels, p.token_threads, p.ndirs), smem, p, stream);
}

template <typename T, typename TB>
void launch_bwd(const ScanParams& p, cudaStream_t stream) {
  const int64_t smem = (agg_floats(p, 1) + carry_floats(p, 1) +
                        p.state * kChannels + 2 * kChannels) * 4;
  launch_with_smem(scan_bwd_kernel<T, TB>, scan_grid(p, true),
                   dim3(kChannels, p.token_threads, 1), smem, p, stream);
  if (p.z) {
    const int64_t count = p.batch * p.length * p.dim;
    launch_kernel(gate_grad_kernel<T>,
                  dim3(static_cast<unsigned>((count + 255) / 256)), dim3(256),
                  0, stream, p);
  }
}

template <typename T>
void launch_conv(const ConvParams& p, cudaStream_t stream) {
  const int64_t count = p.batch * p.length * p.dim;
  launch_kernel(conv_silu_kernel<T>,
                dim3(static_cast<unsigned>((count + 255) / 256)), dim3(256), 0,
                stream, p);
}

#define MMVIM_SCAN_INSTANTIATE(T)                                             \
  template <>                                                                 \
  void launch_conv_silu<T>(const ConvParams& p, cudaStream_t stream) {        \
    launch_conv<T>(p, stream);                                                \
  }                                                                           \
  template <>                                                                 \
  void launch_scan_fwd<T>(const ScanParams& p, bool bc_float,                 \
                          cudaStream_t stream) {                              \
    if (bc_float)                                                             \
      launch_fwd<T, float>(p, stream);                                        \
    else                                                                      \
      launch_fwd<T, T>(p, stream);                                            \
  }                                                                           \
  template <>                                                                 \
  void launch_scan_bwd<T>(const ScanParams& p, bool bc_float,                 \
                          cudaStream_t stream) {                              \
    if (bc_float)                                                             \
      launch_bwd<T, float>(p, stream);                                        \
    else                                                                      \
      launch_bwd<T, T>(p, stream);                                            \
  }

}  // namespace mmvim_scan
