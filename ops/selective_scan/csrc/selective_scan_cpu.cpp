// Selective scan on the CPU: forward and backward, float32 and float64,
// one or two directions fused in one call (the Vim bidirectional scan).
//
// Per batch b, channel e, state n, token t of one direction:
//   d_t = softplus(delta_t + bias)          (or delta_t + bias)
//   h_t = exp(d_t * A_n) * h_prev + d_t * u_t * B_tn
//   y_t = sum_n h_tn * C_tn + D * u_t
// where h_prev is the state of the previous token in scan order (t - 1, or
// t + 1 for a reverse direction). The call returns
//   out_t = scale * (sum over directions of y_t) * (silu(z_t) if z given).
//
// Work is split in blocks of kLanes channels of one B/C group, one SIMD
// lane per channel: B and C of a token are scalars broadcast to every lane,
// so the forward pass needs no horizontal sum. Each block copies its
// channels into lane-major scratch buffers (token-major, kLanes wide), with
// softplus, the z gate and their derivatives computed on the way in and out,
// so no element-wise ATen op or (B, E, L) temporary is needed. The backward
// pass recomputes the states of a block (no (B, E, L, N) tensor is kept).
//
// Layouts at the kernel boundary (prepared by mmvim/ops/selective_scan_cpu.py):
//   u, delta, z, out: (b, E, L); A: (E, N); Bt, Ct: (b, G, L, N) (B and C
//   transposed so a token's N values are adjacent); D, bias: (E,).
#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "selective_scan_interface.h"

namespace {

using mmvim_scan::DirTensors;
using mmvim_scan::new_output;
using mmvim_scan::Sizes;

// exp, log for float written without calls so that loops vectorise:
// Cody-Waite range reduction and a degree-7 polynomial (relative error
// < 1e-7 over the float range); Cephes' logf polynomial. double uses the
// standard library (gradcheck runs in double).
inline float fast_exp(float x) {
  x = std::max(-87.0f, std::min(88.0f, x));
  const float k = (x * 1.4426950408889634f + 12582912.0f) - 12582912.0f;
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9841270e-4f;
  p = p * r + 1.3888889e-3f;
  p = p * r + 8.3333333e-3f;
  p = p * r + 4.1666667e-2f;
  p = p * r + 1.6666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline double fast_exp(double x) { return std::exp(x); }

inline float fast_log(float x) {  // x > 0, normal
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const int32_t e = ((bits >> 23) & 0xff) - 127;
  const int32_t mbits = (bits & 0x007fffff) | 0x3f800000;
  float m;
  std::memcpy(&m, &mbits, sizeof(m));
  const float big = m > 1.41421356f ? 1.0f : 0.0f;
  m = m * (1.0f - 0.5f * big);
  const float ef = static_cast<float>(e) + big;
  const float f = m - 1.0f, z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float y = f * z * p - 2.12194440e-4f * ef - 0.5f * z;
  return f + y + 0.693359375f * ef;
}
inline double fast_log(double x) { return std::log(x); }

// log1p(q) for q in [0, 1]: log(1 + q) * q / ((1 + q) - 1) keeps small q
// accurate; where 1 + q rounds to 1, log1p(q) = q. Blends, no branches.
template <typename T>
inline T log1p_unit(T q) {
  const T u = T(1) + q;
  const T m = u - T(1);
  const T exact = m == T(0) ? T(1) : T(0);
  return exact * q + (T(1) - exact) * fast_log(u) * (q / (m + exact));
}

// x <- softplus(x) = max(x, 0) + log1p(exp(-|x|)) over a buffer, in two
// passes (one fused loop does not vectorise); tmp is scratch of size n.
template <typename T>
void softplus_inplace(T* x, T* tmp, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) tmp[i] = fast_exp(-std::fabs(x[i]));
#pragma omp simd
  for (int64_t i = 0; i < n; ++i)
    x[i] = (x[i] > T(0) ? x[i] : T(0)) + log1p_unit(tmp[i]);
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + fast_exp(-x));
}

// channels per block: one 64-byte vector
template <typename T>
constexpr int kLanes = 64 / sizeof(T);

// A block: channels e0 .. e0 + count - 1 of group g (count <= kLanes).
struct Block {
  int64_t e0, g;
  int count;
};

// Blocks of kLanes channels that never straddle two B/C groups.
template <typename T>
std::vector<Block> make_blocks(const Sizes& s) {
  constexpr int W = kLanes<T>;
  const int64_t per_group = s.dim / s.groups;
  std::vector<Block> blocks;
  for (int64_t g = 0; g < s.groups; ++g)
    for (int64_t e = 0; e < per_group; e += W)
      blocks.push_back(Block{g * per_group + e, g,
                             static_cast<int>(std::min<int64_t>(W, per_group - e))});
  return blocks;
}

// Raw pointers of one direction.
template <typename T>
struct Direction {
  const T* u;      // (b, E, L)
  const T* delta;  // (b, E, L)
  const T* A;      // (E, N)
  const T* Bt;     // (b, G, L, N)
  const T* Ct;     // (b, G, L, N)
  const T* D;      // (E,) or null
  const T* bias;   // (E,) or null
  bool reverse;
};

template <typename T>
Direction<T> pointers(const DirTensors& d) {
  return Direction<T>{d.u.data_ptr<T>(),
                      d.delta.data_ptr<T>(),
                      d.A.data_ptr<T>(),
                      d.Bt.data_ptr<T>(),
                      d.Ct.data_ptr<T>(),
                      d.D ? d.D->data_ptr<T>() : nullptr,
                      d.bias ? d.bias->data_ptr<T>() : nullptr,
                      d.reverse};
}

// Lane-major scratch of one thread: (L, W) buffers and (N, W) states.
template <typename T>
struct Scratch {
  std::vector<T> u, d, acc, tmp, g, du, dd, H, h, Ab, dh, dAb, row;
  Scratch(int64_t L, int64_t N, bool backward) {
    constexpr int W = kLanes<T>;
    for (auto* v : {&u, &d, &acc, &tmp}) v->assign(L * W, T(0));
    row.assign(L, T(0));
    for (auto* v : {&h, &Ab, &dh, &dAb}) v->assign(N * W, T(0));
    if (backward) {
      for (auto* v : {&g, &du, &dd}) v->assign(L * W, T(0));
      H.assign(L * N * W, T(0));
    }
  }
};

// Copy u and the final delta (bias added, softplus applied) of a block's
// channels into the lane-major scratch; padding lanes are zero.
template <typename T>
void load_block(const Direction<T>& dir, const Sizes& s, int64_t b,
                const Block& blk, bool softplus, Scratch<T>& sc) {
  constexpr int W = kLanes<T>;
  const int64_t L = s.length;
  for (int w = 0; w < W; ++w) {
    if (w >= blk.count) {
      for (int64_t t = 0; t < L; ++t) sc.u[t * W + w] = sc.d[t * W + w] = T(0);
      continue;
    }
    const int64_t e = blk.e0 + w;
    const T* u = dir.u + (b * s.dim + e) * L;
    const T* delta = dir.delta + (b * s.dim + e) * L;
    const T bias = dir.bias ? dir.bias[e] : T(0);
    for (int64_t t = 0; t < L; ++t) {
      sc.u[t * W + w] = u[t];
      sc.d[t * W + w] = delta[t] + bias;
    }
  }
  if (softplus) softplus_inplace(sc.d.data(), sc.tmp.data(), L * W);
}

// Flush denormals to zero while a kernel runs: long decays of the state
// would otherwise hit the slow denormal path of x86 CPUs.
class DenormalsAreZero {
 public:
  DenormalsAreZero() {
#if defined(__SSE__)
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | 0x8040);
#endif
  }
  ~DenormalsAreZero() {
#if defined(__SSE__)
    _mm_setcsr(saved_);
#endif
  }

 private:
  unsigned int saved_ = 0;
};

// Forward recurrence of one loaded block. Adds y + D * u into sc.acc when
// add_y, stores the states into sc.H (L, N, W) when store_states, the last
// state into last (E, N) when not null.
template <typename T>
void block_forward(const Direction<T>& dir, const Sizes& s, int64_t b,
                   const Block& blk, Scratch<T>& sc, bool add_y,
                   bool store_states, T* last) {
  constexpr int W = kLanes<T>;
  const int64_t L = s.length, N = s.state;
  const T* Bt = dir.Bt + (b * s.groups + blk.g) * L * N;
  const T* Ct = dir.Ct + (b * s.groups + blk.g) * L * N;
  T* h = sc.h.data();
  T* Ab = sc.Ab.data();
  alignas(64) T Dl[W], du[W], y[W];
  for (int w = 0; w < W; ++w)
    Dl[w] = (w < blk.count && dir.D) ? dir.D[blk.e0 + w] : T(0);
  for (int64_t n = 0; n < N; ++n)
    for (int w = 0; w < W; ++w) {
      Ab[n * W + w] = w < blk.count ? dir.A[(blk.e0 + w) * N + n] : T(0);
      h[n * W + w] = T(0);
    }
  for (int64_t step = 0; step < L; ++step) {
    const int64_t t = dir.reverse ? L - 1 - step : step;
    const T* d = sc.d.data() + t * W;
    const T* u = sc.u.data() + t * W;
#pragma omp simd
    for (int w = 0; w < W; ++w) {
      du[w] = d[w] * u[w];
      y[w] = Dl[w] * u[w];
    }
    const T* Bn = Bt + t * N;
    const T* Cn = Ct + t * N;
    for (int64_t n = 0; n < N; ++n) {
      const T bn = Bn[n], cn = Cn[n];
      T* hn = h + n * W;
      const T* An = Ab + n * W;
#pragma omp simd
      for (int w = 0; w < W; ++w) {
        hn[w] = fast_exp(d[w] * An[w]) * hn[w] + du[w] * bn;
        y[w] += hn[w] * cn;
      }
    }
    if (store_states) std::memcpy(sc.H.data() + t * N * W, h, sizeof(T) * N * W);
    if (add_y) {
      T* acc = sc.acc.data() + t * W;
#pragma omp simd
      for (int w = 0; w < W; ++w) acc[w] += y[w];
    }
  }
  if (last)
    for (int w = 0; w < blk.count; ++w)
      for (int64_t n = 0; n < N; ++n)
        last[(blk.e0 + w) * N + n] = h[n * W + w];
}

// Backward recurrence of one loaded block, given dL/dy in sc.g and the
// states in sc.H. Writes dL/du and dL/d(final delta) into sc.du, sc.dd;
// adds dA (E, N), dD (E,) and the thread's per-lane dB, dC (L, N, W) of
// this block's group.
template <typename T>
void block_backward(const Direction<T>& dir, const Sizes& s, int64_t b,
                    const Block& blk, Scratch<T>& sc, T* dA, T* dD, T* dBw,
                    T* dCw) {
  constexpr int W = kLanes<T>;
  const int64_t L = s.length, N = s.state;
  const T* Bt = dir.Bt + (b * s.groups + blk.g) * L * N;
  const T* Ct = dir.Ct + (b * s.groups + blk.g) * L * N;
  T* Ab = sc.Ab.data();
  T* dh = sc.dh.data();
  T* dAb = sc.dAb.data();
  for (int64_t n = 0; n < N * W; ++n) dh[n] = dAb[n] = T(0);
  alignas(64) T Dl[W], dDl[W], dd[W], du[W], zero[W];
  for (int w = 0; w < W; ++w) {
    Dl[w] = (w < blk.count && dir.D) ? dir.D[blk.e0 + w] : T(0);
    dDl[w] = zero[w] = T(0);
  }
  for (int64_t step = L - 1; step >= 0; --step) {
    const int64_t t = dir.reverse ? L - 1 - step : step;
    const int64_t t_prev = dir.reverse ? t + 1 : t - 1;
    const T* d = sc.d.data() + t * W;
    const T* u = sc.u.data() + t * W;
    const T* g = sc.g.data() + t * W;
#pragma omp simd
    for (int w = 0; w < W; ++w) {
      dd[w] = T(0);
      du[w] = g[w] * Dl[w];
      dDl[w] += g[w] * u[w];
    }
    const T* Bn = Bt + t * N;
    const T* Cn = Ct + t * N;
    const T* Ht = sc.H.data() + t * N * W;
    const T* Hp = step == 0 ? nullptr : sc.H.data() + t_prev * N * W;
    T* dBt = dBw + t * N * W;
    T* dCt = dCw + t * N * W;
    for (int64_t n = 0; n < N; ++n) {
      const T bn = Bn[n], cn = Cn[n];
      const T* An = Ab + n * W;
      const T* hp = Hp ? Hp + n * W : zero;
      const T* ht = Ht + n * W;
      T* dhn = dh + n * W;
      T* dAn = dAb + n * W;
      T* dBn = dBt + n * W;
      T* dCn = dCt + n * W;
#pragma omp simd
      for (int w = 0; w < W; ++w) {
        dCn[w] += g[w] * ht[w];
        const T grad_h = dhn[w] + g[w] * cn;
        const T a = fast_exp(d[w] * An[w]);
        dd[w] += grad_h * (An[w] * a * hp[w] + u[w] * bn);
        dAn[w] += grad_h * d[w] * a * hp[w];
        du[w] += grad_h * d[w] * bn;
        dBn[w] += grad_h * d[w] * u[w];
        dhn[w] = a * grad_h;
      }
    }
    T* dut = sc.du.data() + t * W;
    T* ddt = sc.dd.data() + t * W;
#pragma omp simd
    for (int w = 0; w < W; ++w) {
      dut[w] = du[w];
      ddt[w] = dd[w];
    }
  }
  for (int w = 0; w < blk.count; ++w) {
    const int64_t e = blk.e0 + w;
    dD[e] += dDl[w];
    for (int64_t n = 0; n < N; ++n) dA[e * N + n] += dAb[n * W + w];
  }
}

constexpr mmvim_scan::Backend kBackend{"CPU", c10::DeviceType::CPU,
                                       /*float32_weights=*/false,
                                       /*max_state=*/0};

// Returns [out, acc, last_state]; acc = sum over directions of y (before
// the scale and the z gate), kept for the backward pass.
std::vector<at::Tensor> forward_impl(const std::vector<DirTensors>& dirs,
                                        const std::optional<at::Tensor>& z,
                                        double scale, bool softplus,
                                        bool return_last_state) {
  const Sizes s = mmvim_scan::check_inputs(kBackend, dirs, z);
  const auto& u0 = dirs[0].u;
  auto out = new_output(u0.sizes(), u0.options());
  auto acc = new_output(u0.sizes(), u0.options());
  auto last = new_output({return_last_state ? s.batch : 0, s.dim, s.state},
                         u0.options());
  AT_DISPATCH_FLOATING_TYPES(dirs[0].u.scalar_type(), "selective_scan_fwd", [&] {
    using T = scalar_t;
    constexpr int W = kLanes<T>;
    std::vector<Direction<T>> ds;
    for (const auto& d : dirs) ds.push_back(pointers<T>(d));
    const auto blocks = make_blocks<T>(s);
    const int64_t nb = static_cast<int64_t>(blocks.size());
    const int64_t L = s.length, N = s.state;
    const T* zp = z ? z->data_ptr<T>() : nullptr;
    T* outp = out.data_ptr<T>();
    T* accp = acc.data_ptr<T>();
    at::parallel_for(0, s.batch * nb, 1, [&](int64_t begin, int64_t end) {
      DenormalsAreZero ftz;
      Scratch<T> sc(L, N, false);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / nb;
        const Block& blk = blocks[i % nb];
        std::fill(sc.acc.begin(), sc.acc.end(), T(0));
        for (size_t k = 0; k < ds.size(); ++k) {
          load_block<T>(ds[k], s, b, blk, softplus, sc);
          T* lastp = (k == 0 && return_last_state)
                         ? last.data_ptr<T>() + b * s.dim * N
                         : nullptr;
          block_forward<T>(ds[k], s, b, blk, sc, true, false, lastp);
        }
        for (int w = 0; w < blk.count; ++w) {
          const int64_t row = (b * s.dim + blk.e0 + w) * L;
          T* a = accp + row;
          T* o = outp + row;
          for (int64_t t = 0; t < L; ++t) a[t] = sc.acc[t * W + w];
          if (zp) {
            const T* zr = zp + row;
_Pragma("omp simd")
            for (int64_t t = 0; t < L; ++t)
              o[t] = T(scale) * a[t] * zr[t] * sigmoid(zr[t]);
          } else {
_Pragma("omp simd")
            for (int64_t t = 0; t < L; ++t) o[t] = T(scale) * a[t];
          }
        }
      }
    });
  });
  return {out, acc, last};
}

// Returns per direction [du, ddelta, dA, dBt, dCt, dD, dbias], then dz.
std::vector<at::Tensor> backward_impl(const std::vector<DirTensors>& dirs,
                                         const std::optional<at::Tensor>& z,
                                         const at::Tensor& dout_in,
                                         const at::Tensor& acc,
                                         double scale, bool softplus) {
  auto dout = dout_in.contiguous();
  const Sizes s = mmvim_scan::check_inputs(kBackend, dirs, z, &dout, &acc);
  const int64_t L = s.length, N = s.state, G = s.groups;
  const size_t nd = dirs.size();
  const int threads = at::get_num_threads();

  std::vector<at::Tensor> grads;  // per direction, 7 entries
  for (const auto& d : dirs) {
    grads.push_back(new_output(d.u.sizes(), d.u.options()));          // du
    grads.push_back(new_output(d.delta.sizes(), d.delta.options()));  // ddelta
    grads.push_back(at::zeros_like(d.A));                // dA
    grads.push_back(at::zeros_like(d.Bt));               // dBt
    grads.push_back(at::zeros_like(d.Ct));               // dCt
    grads.push_back(at::zeros({s.dim}, d.u.options()));  // dD
    grads.push_back(at::zeros({s.dim}, d.u.options()));  // dbias
  }
  auto dz = z ? new_output(z->sizes(), z->options())
              : at::empty({0}, dout.options());

  AT_DISPATCH_FLOATING_TYPES(dirs[0].u.scalar_type(), "selective_scan_bwd", [&] {
    using T = scalar_t;
    constexpr int W = kLanes<T>;
    std::vector<Direction<T>> ds;
    for (const auto& d : dirs) ds.push_back(pointers<T>(d));
    const auto blocks = make_blocks<T>(s);
    const int64_t nb = static_cast<int64_t>(blocks.size());
    const int64_t LNW = L * N * W;
    const T* zp = z ? z->data_ptr<T>() : nullptr;
    const T* doutp = dout.data_ptr<T>();
    const T* accp = acc.data_ptr<T>();
    T* dzp = z ? dz.data_ptr<T>() : nullptr;
    // per thread and direction: per-lane dB, dC of every group (G, L, N, W)
    std::vector<std::vector<T>> dBw(threads * nd), dCw(threads * nd);
    for (int64_t b = 0; b < s.batch; ++b) {
      for (auto& v : dBw) v.assign(G * LNW, T(0));
      for (auto& v : dCw) v.assign(G * LNW, T(0));
      // blocks of one batch element own distinct channels: dA, dD, dbias
      // rows are written by one thread each
      at::parallel_for(0, nb, 1, [&](int64_t begin, int64_t end) {
        DenormalsAreZero ftz;
        const int tid = at::get_thread_num();
        Scratch<T> sc(L, N, true);
        for (int64_t i = begin; i < end; ++i) {
          const Block& blk = blocks[i];
          // the gate: out = scale * acc * silu(z)
          for (int w = 0; w < W; ++w) {
            if (w >= blk.count) {
              for (int64_t t = 0; t < L; ++t) sc.g[t * W + w] = T(0);
              continue;
            }
            const int64_t row = (b * s.dim + blk.e0 + w) * L;
            const T* go = doutp + row;
            T* gy = sc.row.data();
            if (zp) {
              const T* zr = zp + row;
              const T* a = accp + row;
              T* dzr = dzp + row;
_Pragma("omp simd")
              for (int64_t t = 0; t < L; ++t) {
                const T sg = sigmoid(zr[t]);
                dzr[t] = T(scale) * go[t] * a[t] * sg * (T(1) + zr[t] * (T(1) - sg));
                gy[t] = T(scale) * go[t] * zr[t] * sg;
              }
            } else {
_Pragma("omp simd")
              for (int64_t t = 0; t < L; ++t) gy[t] = T(scale) * go[t];
            }
            for (int64_t t = 0; t < L; ++t) sc.g[t * W + w] = gy[t];
          }
          for (size_t k = 0; k < nd; ++k) {
            const size_t slot = tid * nd + k;
            T* gr_du = grads[k * 7].data_ptr<T>();
            T* gr_dd = grads[k * 7 + 1].data_ptr<T>();
            T* gr_bias = grads[k * 7 + 6].data_ptr<T>();
            load_block<T>(ds[k], s, b, blk, softplus, sc);
            block_forward<T>(ds[k], s, b, blk, sc, false, true, nullptr);
            block_backward<T>(ds[k], s, b, blk, sc,
                              grads[k * 7 + 2].data_ptr<T>(),
                              grads[k * 7 + 5].data_ptr<T>(),
                              dBw[slot].data() + blk.g * LNW,
                              dCw[slot].data() + blk.g * LNW);
            // back through delta = softplus(delta_raw + bias)
            for (int w = 0; w < blk.count; ++w) {
              const int64_t e = blk.e0 + w;
              const int64_t row = (b * s.dim + e) * L;
              const T* delta = ds[k].delta + row;
              const T bias = ds[k].bias ? ds[k].bias[e] : T(0);
              T* dd = gr_dd + row;
              T* du = gr_du + row;
              for (int64_t t = 0; t < L; ++t) {
                dd[t] = sc.dd[t * W + w];
                du[t] = sc.du[t * W + w];
              }
              T bias_grad = T(0);
              if (softplus) {
_Pragma("omp simd reduction(+ : bias_grad)")
                for (int64_t t = 0; t < L; ++t) {
                  dd[t] *= sigmoid(delta[t] + bias);
                  bias_grad += dd[t];
                }
              } else {
                for (int64_t t = 0; t < L; ++t) bias_grad += dd[t];
              }
              gr_bias[e] += bias_grad;
            }
          }
        }
      });
      // lanes and threads -> dB, dC of this batch element
      for (size_t k = 0; k < nd; ++k) {
        T* dB = grads[k * 7 + 3].data_ptr<T>() + b * G * L * N;
        T* dC = grads[k * 7 + 4].data_ptr<T>() + b * G * L * N;
        for (int tid = 0; tid < threads; ++tid) {
          const T* pb = dBw[tid * nd + k].data();
          const T* pc = dCw[tid * nd + k].data();
          for (int64_t j = 0; j < G * L * N; ++j) {
            T sb = T(0), sc = T(0);
            for (int w = 0; w < W; ++w) {
              sb += pb[j * W + w];
              sc += pc[j * W + w];
            }
            dB[j] += sb;
            dC[j] += sc;
          }
        }
      }
    }
  });
  grads.push_back(dz);
  return grads;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  mmvim_scan::bind_scan(m, forward_impl, backward_impl, "CPU");
}
