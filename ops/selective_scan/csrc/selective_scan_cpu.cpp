// Selective scan on the CPU: forward and backward, float32 and float64,
// one or two directions fused in one call (the Vim bidirectional scan), with
// the same interface as the CUDA kernel (selective_scan_interface.h).
//
// Per batch b, channel e, state n, scan step s of one direction (token
// t = s, or L - 1 - s for a reverse direction):
//   u_s = silu(conv_bias + sum_k conv_w[k] * x_{s-W+1+k})   (or u_s = x_s)
//   d_s = softplus(delta_s + bias)          (or delta_s + bias)
//   h_s = exp(d_s * A_n) * h_{s-1} + d_s * u_s * B_sn
//   y_s = sum_n h_sn * C_sn + D * u_s
// The call returns out_t = scale * (sum over directions of y_t) *
// (silu(z_t) if z given), token-major (b, L, E).
//
// Work is split in blocks of kLanes channels that share their B row and
// their C row, one SIMD lane per channel: B and C of a token are scalars
// broadcast to every lane, so the forward pass needs no horizontal sum.
// Each block gathers its channels (any strides: the token-major outputs of
// the linear layers are read where they are) into lane-major scratch
// buffers (token-major, kLanes wide), with the depthwise conv, softplus,
// the z gate and their derivatives computed on the way in and out, so no
// element-wise ATen op or (B, E, L) temporary is needed. The backward pass
// recomputes the states of a block (no (B, E, L, N) tensor is kept, and the
// forward saves no states).
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

// A block: channels e0 .. e0 + count - 1 (count <= kLanes), all in B
// group gB and C group gC.
struct Block {
  int64_t e0, gB, gC;
  int count;
};

// Blocks of kLanes channels that never straddle a B or a C group (a B
// shared by nothing but its own channel makes blocks of one lane).
template <typename T>
std::vector<Block> make_blocks(const Sizes& s) {
  constexpr int W = kLanes<T>;
  const int64_t perB = s.dim / s.B_groups, perC = s.dim / s.C_groups;
  std::vector<Block> blocks;
  for (int64_t e = 0; e < s.dim;) {
    const int64_t end = std::min({e + W, (e / perB + 1) * perB,
                                  (e / perC + 1) * perC});
    blocks.push_back(Block{e, e / perB, e / perC, static_cast<int>(end - e)});
    e = end;
  }
  return blocks;
}

// Raw pointers and strides of one direction.
template <typename T>
struct Direction {
  const T* x;
  int64_t x_sb, x_st, x_se;
  const T* conv_w;  // (E, W) or null
  const T* conv_b;  // (E,) or null
  int conv_width;
  const T* delta;
  int64_t d_sb, d_st, d_se;
  const T* A;       // (E, N)
  const T* B;
  int64_t B_sb, B_st, B_sg, B_sn;
  const T* C;
  int64_t C_sb, C_st, C_sg, C_sn;
  const T* D;       // (E,) or null
  const T* bias;    // (E,) or null
  bool reverse;

  // B and C of a block's group at token t, state n
  T Bv(int64_t b, const Block& blk, int64_t t, int64_t n) const {
    return B[b * B_sb + t * B_st + blk.gB * B_sg + n * B_sn];
  }
  T Cv(int64_t b, const Block& blk, int64_t t, int64_t n) const {
    return C[b * C_sb + t * C_st + blk.gC * C_sg + n * C_sn];
  }
};

template <typename T>
Direction<T> pointers(const DirTensors& d) {
  Direction<T> p{};
  p.x = d.x.data_ptr<T>();
  p.x_sb = d.x.stride(0), p.x_st = d.x.stride(1), p.x_se = d.x.stride(2);
  p.conv_w = d.conv_weight ? d.conv_weight->data_ptr<T>() : nullptr;
  p.conv_b = d.conv_bias ? d.conv_bias->data_ptr<T>() : nullptr;
  p.conv_width = d.conv_weight ? static_cast<int>(d.conv_weight->size(1)) : 0;
  p.delta = d.delta.data_ptr<T>();
  p.d_sb = d.delta.stride(0), p.d_st = d.delta.stride(1), p.d_se = d.delta.stride(2);
  p.A = d.A.data_ptr<T>();
  p.B = d.B.data_ptr<T>();
  p.B_sb = d.B.stride(0), p.B_st = d.B.stride(1), p.B_sg = d.B.stride(2),
  p.B_sn = d.B.stride(3);
  p.C = d.C.data_ptr<T>();
  p.C_sb = d.C.stride(0), p.C_st = d.C.stride(1), p.C_sg = d.C.stride(2),
  p.C_sn = d.C.stride(3);
  p.D = d.D ? d.D->data_ptr<T>() : nullptr;
  p.bias = d.bias ? d.bias->data_ptr<T>() : nullptr;
  p.reverse = d.reverse;
  return p;
}

// Lane-major scratch of one thread: (L, W) buffers and (N, W) states.
template <typename T>
struct Scratch {
  std::vector<T> u, d, acc, tmp, g, du, dd, H, h, Ab, dh, dAb;
  Scratch(int64_t L, int64_t N, bool backward) {
    constexpr int W = kLanes<T>;
    for (auto* v : {&u, &d, &acc, &tmp}) v->assign(L * W, T(0));
    for (auto* v : {&h, &Ab, &dh, &dAb}) v->assign(N * W, T(0));
    if (backward) {
      for (auto* v : {&g, &du, &dd}) v->assign(L * W, T(0));
      H.assign(L * N * W, T(0));
    }
  }
};

// Gather u (the depthwise conv + silu of x when the direction has a conv,
// causal in scan order) and the final delta (bias added, softplus applied)
// of a block's channels into the lane-major scratch, by token; padding lanes
// are zero. pre, when given, receives the conv's output before silu (the
// backward of silu needs it).
template <typename T>
void load_block(const Direction<T>& dir, const Sizes& s, int64_t b,
                const Block& blk, bool softplus, Scratch<T>& sc) {
  constexpr int W = kLanes<T>;
  const int64_t L = s.length;
  const int K = dir.conv_width;
  const int n = blk.count;
  // token rows outer, lanes inner: a token's channels are neighbours in
  // the token-major inputs, so each row is one or two cache lines
  T bias[W], cb[W];
  for (int w = 0; w < W; ++w) {
    bias[w] = (w < n && dir.bias) ? dir.bias[blk.e0 + w] : T(0);
    cb[w] = (w < n && dir.conv_b) ? dir.conv_b[blk.e0 + w] : T(0);
  }
  const T* x0 = dir.x + b * dir.x_sb + blk.e0 * dir.x_se;
  const T* d0 = dir.delta + b * dir.d_sb + blk.e0 * dir.d_se;
  for (int64_t t = 0; t < L; ++t) {
    T* d = sc.d.data() + t * W;
    const T* drow = d0 + t * dir.d_st;
    for (int w = 0; w < W; ++w)
      d[w] = w < n ? drow[w * dir.d_se] + bias[w] : T(0);
    T* u = sc.u.data() + t * W;
    if (!dir.conv_w) {
      const T* xrow = x0 + t * dir.x_st;
      for (int w = 0; w < W; ++w) u[w] = w < n ? xrow[w * dir.x_se] : T(0);
      continue;
    }
    for (int w = 0; w < W; ++w) u[w] = cb[w];
    // tap k reads the token K - 1 - k scan steps back: before t for a
    // forward direction, after it for a reverse one
    for (int k = 0; k < K; ++k) {
      const int64_t src = dir.reverse ? t + (K - 1 - k) : t - (K - 1 - k);
      if (src < 0 || src >= L) continue;
      const T* xrow = x0 + src * dir.x_st;
      for (int w = 0; w < n; ++w)
        u[w] += dir.conv_w[(blk.e0 + w) * K + k] * xrow[w * dir.x_se];
    }
  }
  if (dir.conv_w) {
    // silu(v) = v * sigmoid(v), vectorised over the block
    const int64_t n = L * W;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) sc.tmp[i] = fast_exp(-sc.u[i]);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) sc.u[i] = sc.u[i] / (T(1) + sc.tmp[i]);
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
    for (int64_t n = 0; n < N; ++n) {
      const T bn = dir.Bv(b, blk, t, n), cn = dir.Cv(b, blk, t, n);
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
// adds dA (E, N), dD (E,) and the thread's per-lane dB, dC of this block's
// groups: (L, N, W) from dBw / dCw, or (N, W) where B / C is shared over
// the tokens (B_per_token / C_per_token false).
template <typename T>
void block_backward(const Direction<T>& dir, const Sizes& s, int64_t b,
                    const Block& blk, Scratch<T>& sc, T* dA, T* dD, T* dBw,
                    T* dCw, bool B_per_token, bool C_per_token) {
  constexpr int W = kLanes<T>;
  const int64_t L = s.length, N = s.state;
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
    const T* Ht = sc.H.data() + t * N * W;
    const T* Hp = step == 0 ? nullptr : sc.H.data() + t_prev * N * W;
    T* dBt = dBw + (B_per_token ? t : 0) * N * W;
    T* dCt = dCw + (C_per_token ? t : 0) * N * W;
    for (int64_t n = 0; n < N; ++n) {
      const T bn = dir.Bv(b, blk, t, n), cn = dir.Cv(b, blk, t, n);
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
                                       /*max_state=*/0,
                                       /*max_conv_width=*/0};

// z of a block's lane w at token t (strided), or 1 without z.
template <typename T>
struct Gate {
  const T* z;
  int64_t sb, st, se;
  T at(int64_t b, int64_t t, int64_t e) const {
    return z[b * sb + t * st + e * se];
  }
};

template <typename T>
Gate<T> gate_of(const std::optional<at::Tensor>& z) {
  if (!z) return Gate<T>{nullptr, 0, 0, 0};
  return Gate<T>{z->data_ptr<T>(), z->stride(0), z->stride(1), z->stride(2)};
}

// Returns [out (b, L, E), states (empty: the backward recomputes), last].
std::vector<at::Tensor> forward_impl(const std::vector<DirTensors>& dirs,
                                     const std::optional<at::Tensor>& z,
                                     double scale, bool softplus,
                                     bool return_last_state) {
  const Sizes s = mmvim_scan::check_inputs(kBackend, dirs, z);
  const auto options = dirs[0].x.options();
  auto out = new_output({s.batch, s.length, s.dim}, options);
  auto last = return_last_state ? at::zeros({s.batch, s.dim, s.state}, options)
                                : at::empty({0, s.dim, s.state}, options);
  AT_DISPATCH_FLOATING_TYPES(dirs[0].x.scalar_type(), "selective_scan_fwd", [&] {
    using T = scalar_t;
    constexpr int W = kLanes<T>;
    std::vector<Direction<T>> ds;
    for (const auto& d : dirs) ds.push_back(pointers<T>(d));
    const auto blocks = make_blocks<T>(s);
    const int64_t nb = static_cast<int64_t>(blocks.size());
    const int64_t L = s.length, N = s.state, E = s.dim;
    const Gate<T> gz = gate_of<T>(z);
    T* outp = out.data_ptr<T>();
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
                         ? last.data_ptr<T>() + b * E * N
                         : nullptr;
          block_forward<T>(ds[k], s, b, blk, sc, true, false, lastp);
        }
        for (int64_t t = 0; t < L; ++t) {
          T* o = outp + (b * L + t) * E + blk.e0;
          const T* a = sc.acc.data() + t * W;
          for (int w = 0; w < blk.count; ++w) {
            const T zt = gz.z ? gz.at(b, t, blk.e0 + w) : T(0);
            o[w] = T(scale) * a[w] * (gz.z ? zt * sigmoid(zt) : T(1));
          }
        }
      }
    });
  });
  return {out, at::empty({0}, options), last};
}

// dB / dC of a direction: (b or 1, L or 1, G, N) as bc_grad_shape.
struct BCGrad {
  bool per_batch, per_token;
  int64_t groups;
};

BCGrad bc_grad(const at::Tensor& t) {
  return BCGrad{t.stride(0) != 0, t.stride(1) != 0, t.size(2)};
}

// Returns per direction [du, ddelta, dA, dB, dC, dD, dbias], then dz; du
// is the gradient of u (the conv's output when there is a conv).
std::vector<at::Tensor> backward_impl(const std::vector<DirTensors>& dirs,
                                      const std::optional<at::Tensor>& z,
                                      const at::Tensor& dout_in,
                                      const at::Tensor& states, double scale,
                                      bool softplus) {
  auto dout = dout_in.contiguous();
  const Sizes s = mmvim_scan::check_inputs(kBackend, dirs, z, &dout);
  const auto options = dirs[0].x.options();
  mmvim_scan::check_states(kBackend, states, dirs[0].x,
                           dirs[0].x.scalar_type(), 0);
  const int64_t L = s.length, N = s.state, E = s.dim;
  const size_t nd = dirs.size();
  const int threads = at::get_num_threads();

  std::vector<at::Tensor> grads;  // per direction, 7 entries
  std::vector<BCGrad> gB, gC;
  for (const auto& d : dirs) {
    grads.push_back(new_output({s.batch, L, E}, options));  // du
    grads.push_back(new_output({s.batch, L, E}, options));  // ddelta
    grads.push_back(at::zeros_like(d.A));                   // dA
    grads.push_back(at::zeros(mmvim_scan::bc_grad_shape(d.B), options));  // dB
    grads.push_back(at::zeros(mmvim_scan::bc_grad_shape(d.C), options));  // dC
    grads.push_back(at::zeros({E}, options));               // dD
    grads.push_back(at::zeros({E}, options));               // dbias
    gB.push_back(bc_grad(d.B));
    gC.push_back(bc_grad(d.C));
  }
  auto dz = z ? new_output({s.batch, L, E}, options) : at::empty({0}, options);

  AT_DISPATCH_FLOATING_TYPES(dirs[0].x.scalar_type(), "selective_scan_bwd", [&] {
    using T = scalar_t;
    constexpr int W = kLanes<T>;
    std::vector<Direction<T>> ds;
    for (const auto& d : dirs) ds.push_back(pointers<T>(d));
    const auto blocks = make_blocks<T>(s);
    const int64_t nb = static_cast<int64_t>(blocks.size());
    const Gate<T> gz = gate_of<T>(z);
    const T* doutp = dout.data_ptr<T>();
    T* dzp = z ? dz.data_ptr<T>() : nullptr;
    // per thread and direction: per-lane dB, dC of every group,
    // (G, L or 1, N, W)
    auto lane_size = [&](const BCGrad& g) {
      return g.groups * (g.per_token ? L : 1) * N * W;
    };
    std::vector<std::vector<T>> dBw(threads * nd), dCw(threads * nd);
    for (int64_t b = 0; b < s.batch; ++b) {
      for (size_t k = 0; k < nd; ++k)
        for (int tid = 0; tid < threads; ++tid) {
          dBw[tid * nd + k].assign(lane_size(gB[k]), T(0));
          dCw[tid * nd + k].assign(lane_size(gC[k]), T(0));
        }
      // blocks of one batch element own distinct channels: dA, dD, dbias
      // rows are written by one thread each
      at::parallel_for(0, nb, 1, [&](int64_t begin, int64_t end) {
        DenormalsAreZero ftz;
        const int tid = at::get_thread_num();
        Scratch<T> sc(L, N, true);
        for (int64_t i = begin; i < end; ++i) {
          const Block& blk = blocks[i];
          // the gate: out = scale * y * silu(z), so dL/dy = scale * dout * silu(z)
          for (int64_t t = 0; t < L; ++t) {
            const T* go = doutp + (b * L + t) * E + blk.e0;
            for (int w = 0; w < W; ++w) {
              T g = T(0);
              if (w < blk.count) {
                const T zt = gz.z ? gz.at(b, t, blk.e0 + w) : T(0);
                g = T(scale) * go[w] * (gz.z ? zt * sigmoid(zt) : T(1));
              }
              sc.g[t * W + w] = g;
            }
          }
          std::fill(sc.acc.begin(), sc.acc.end(), T(0));
          for (size_t k = 0; k < nd; ++k) {
            const size_t slot = tid * nd + k;
            T* gr_du = grads[k * 7].data_ptr<T>();
            T* gr_dd = grads[k * 7 + 1].data_ptr<T>();
            T* gr_bias = grads[k * 7 + 6].data_ptr<T>();
            const int64_t Lb = gB[k].per_token ? L : 1, Lc = gC[k].per_token ? L : 1;
            load_block<T>(ds[k], s, b, blk, softplus, sc);
            // states for the backward, and y (for dz) into sc.acc
            block_forward<T>(ds[k], s, b, blk, sc, true, true, nullptr);
            block_backward<T>(ds[k], s, b, blk, sc,
                              grads[k * 7 + 2].data_ptr<T>(),
                              grads[k * 7 + 5].data_ptr<T>(),
                              dBw[slot].data() + blk.gB * Lb * N * W,
                              dCw[slot].data() + blk.gC * Lc * N * W,
                              gB[k].per_token, gC[k].per_token);
            // back through delta = softplus(delta_raw + bias); sc.d holds
            // softplus(raw), and sigmoid(raw) = 1 - exp(-softplus(raw))
            T bias_grad[W] = {};
            for (int64_t t = 0; t < L; ++t) {
              T* dd_row = gr_dd + (b * L + t) * E + blk.e0;
              T* du_row = gr_du + (b * L + t) * E + blk.e0;
              for (int w = 0; w < blk.count; ++w) {
                T dd = sc.dd[t * W + w];
                if (softplus) dd *= -std::expm1(-sc.d[t * W + w]);
                bias_grad[w] += dd;
                dd_row[w] = dd;
                du_row[w] = sc.du[t * W + w];
              }
            }
            for (int w = 0; w < blk.count; ++w) gr_bias[blk.e0 + w] += bias_grad[w];
          }
          if (dzp) {
            for (int64_t t = 0; t < L; ++t) {
              const T* go = doutp + (b * L + t) * E + blk.e0;
              T* dzr = dzp + (b * L + t) * E + blk.e0;
              for (int w = 0; w < blk.count; ++w) {
                const T zt = gz.at(b, t, blk.e0 + w), sg = sigmoid(zt);
                dzr[w] = T(scale) * go[w] * sc.acc[t * W + w] * sg *
                         (T(1) + zt * (T(1) - sg));
              }
            }
          }
        }
      });
      // lanes and threads -> dB, dC of this batch element
      for (size_t k = 0; k < nd; ++k) {
        for (int which = 0; which < 2; ++which) {
          const BCGrad& g = which == 0 ? gB[k] : gC[k];
          auto& lanes = which == 0 ? dBw : dCw;
          const int64_t Lg = g.per_token ? L : 1;
          T* dst = grads[k * 7 + 3 + which].data_ptr<T>() +
                   (g.per_batch ? b : 0) * Lg * g.groups * N;
          // lane buffers are (G, Lg, N, W); dB is (Lg, G, N) per batch
          for (int tid = 0; tid < threads; ++tid) {
            const T* src = lanes[tid * nd + k].data();
            for (int64_t gi = 0; gi < g.groups; ++gi)
              for (int64_t t = 0; t < Lg; ++t)
                for (int64_t n = 0; n < N; ++n) {
                  const T* v = src + ((gi * Lg + t) * N + n) * W;
                  T sum = T(0);
                  for (int w = 0; w < W; ++w) sum += v[w];
                  dst[(t * g.groups + gi) * N + n] += sum;
                }
          }
        }
      }
    }
  });
  grads.push_back(dz);
  return grads;
}

at::Tensor conv_silu_impl(const at::Tensor& x, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias,
                          bool reverse) {
  mmvim_scan::check_conv_inputs(kBackend, x, weight, bias);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "depthwise conv + SiLU CPU kernel: x must be float32 or float64");
  const int64_t batch = x.size(0), L = x.size(1), E = x.size(2);
  const int64_t K = weight.size(1);
  auto out = new_output({batch, L, E}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_silu", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    const int64_t sb = x.stride(0), st = x.stride(1), se = x.stride(2);
    // taps outer, channels inner: one vectorisable pass per tap and row
    std::vector<T> taps(K * E), bias_row(E, T(0));
    for (int64_t e = 0; e < E; ++e) {
      for (int64_t k = 0; k < K; ++k)
        taps[k * E + e] = weight.data_ptr<T>()[e * K + k];
      if (bias) bias_row[e] = bias->data_ptr<T>()[e];
    }
    T* op = out.data_ptr<T>();
    at::parallel_for(0, batch * L, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / L, t = i % L;
        T* o = op + i * E;
        std::copy(bias_row.begin(), bias_row.end(), o);
        for (int64_t k = 0; k < K; ++k) {
          const int64_t back = K - 1 - k;
          const int64_t src = reverse ? t + back : t - back;
          if (src < 0 || src >= L) continue;
          const T* row = xp + b * sb + src * st;
          const T* w = taps.data() + k * E;
          for (int64_t e = 0; e < E; ++e) o[e] += w[e] * row[e * se];
        }
        for (int64_t e = 0; e < E; ++e) o[e] = o[e] * sigmoid(o[e]);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mmvim, CPU, m) {
  mmvim_scan::register_scan_ops(m, forward_impl, backward_impl,
                                conv_silu_impl);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  mmvim_scan::bind_test_switches(m);
}
