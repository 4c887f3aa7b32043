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
// their C row, one SIMD lane per channel (Vec<T>, cpu_vec.h: one AVX-512
// register for float where the CPU has it): B and C of a token are scalars
// broadcast to every lane, so the forward pass needs no horizontal sum.
// Each block gathers its channels (any strides: the token-major outputs of
// the linear layers are read where they are, their rows prefetched a few
// tokens ahead) into lane-major rows, kChunk tokens at a time in the
// forward pass, with the depthwise conv, softplus, the z gate and their
// derivatives computed on the way in and out, so no element-wise ATen op
// or (B, E, L) temporary is needed. exp(delta A) is exp2(delta A log2 e),
// a polynomial and an exponent scaling. The backward pass recomputes the
// states of a block (no (B, E, L, N) tensor is kept, and the forward saves
// no states). mixer_forward runs Vim's whole mixer between in_proj and
// out_proj in one call.
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

#include "cpu_vec.h"
#include "selective_scan_interface.h"

namespace {

using mmvim_scan::DirTensors;
using mmvim_scan::new_output;
using mmvim_scan::Sizes;

using mmvim_cpu::Vec;

// channels per block: one 64-byte vector
template <typename T>
constexpr int kLanes = Vec<T>::kSize;

// tokens per chunk of the forward pass
constexpr int64_t kChunk = 64;

// tokens ahead whose rows are prefetched: a block reads one cache line of
// each token-major row, a stride the hardware prefetchers do not follow
constexpr int64_t kAhead = 8;

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

// Lane-major scratch of one thread for the backward pass: (L, W) rows of
// u, delta, y and their gradients, the (L, N, W) states, (N, W) buffers.
template <typename T>
struct Scratch {
  std::vector<T> u, d, acc, g, du, dd, H, h, Ab, A2, dh, dAb;
  Scratch(int64_t L, int64_t N) {
    constexpr int W = kLanes<T>;
    for (auto* v : {&u, &d, &acc, &g, &du, &dd}) v->assign(L * W, T(0));
    for (auto* v : {&h, &Ab, &A2, &dh, &dAb}) v->assign(N * W, T(0));
    H.assign(L * N * W, T(0));
  }
};

// The lanes of a block from a row of channels with stride `stride`: one
// vector load where the block is full and contiguous, else lane by lane
// with the padding lanes zero.
template <typename T>
Vec<T> load_lanes(const T* row, int64_t stride, int count) {
  if (count == Vec<T>::kSize && stride == 1) return Vec<T>::load(row);
  alignas(64) T lanes[Vec<T>::kSize] = {};
  for (int w = 0; w < count; ++w) lanes[w] = row[w * stride];
  return Vec<T>::load(lanes);
}

template <typename T>
void store_lanes(const Vec<T>& v, T* row, int64_t stride, int count) {
  if (count == Vec<T>::kSize && stride == 1) return v.store(row);
  alignas(64) T lanes[Vec<T>::kSize];
  v.store(lanes);
  for (int w = 0; w < count; ++w) row[w * stride] = lanes[w];
}

// A per-channel (E,) parameter's lanes, zero without it.
template <typename T>
Vec<T> param_lanes(const T* p, const Block& blk) {
  return p ? load_lanes(p + blk.e0, 1, blk.count) : Vec<T>::broadcast(T(0));
}

// Gather u (the depthwise conv + silu of x when the direction has a conv,
// causal in scan order) and the final delta (bias added, softplus applied)
// of a block's channels at the tokens [t_lo, t_hi) into lane-major rows
// t - t_lo of u_rows and d_rows; padding lanes of u are zero. A token's
// channels are neighbours in the token-major inputs, so each row is one
// vector load.
template <typename T>
void load_block(const Direction<T>& dir, const Sizes& s, int64_t b,
                const Block& blk, int64_t t_lo, int64_t t_hi, bool softplus,
                T* d_rows, T* u_rows) {
  using V = Vec<T>;
  constexpr int W = kLanes<T>;
  const int64_t L = s.length;
  const int K = dir.conv_width;
  const int n = blk.count;
  const V bias = param_lanes(dir.bias, blk), conv_b = param_lanes(dir.conv_b, blk);
  std::vector<V> taps(K);  // tap k's weights of the block's channels
  for (int k = 0; k < K; ++k)
    taps[k] = load_lanes(dir.conv_w + blk.e0 * K + k, K, n);
  const T* x0 = dir.x + b * dir.x_sb + blk.e0 * dir.x_se;
  const T* d0 = dir.delta + b * dir.d_sb + blk.e0 * dir.d_se;
  for (int64_t i = 0; i < t_hi - t_lo; ++i) {  // in scan order
    const int64_t t = dir.reverse ? t_hi - 1 - i : t_lo + i;
    const int64_t ahead = dir.reverse ? t - kAhead : t + kAhead;
    if (ahead >= 0 && ahead < L) {
      __builtin_prefetch(d0 + ahead * dir.d_st);
      __builtin_prefetch(x0 + ahead * dir.x_st);
    }
    const int64_t row = (t - t_lo) * W;
    const V d = load_lanes(d0 + t * dir.d_st, dir.d_se, n) + bias;
    (softplus ? mmvim_cpu::softplus(d) : d).store(d_rows + row);
    if (!dir.conv_w) {
      load_lanes(x0 + t * dir.x_st, dir.x_se, n).store(u_rows + row);
      continue;
    }
    // tap k reads the token K - 1 - k scan steps back: before t for a
    // forward direction, after it for a reverse one
    V u = conv_b;
    for (int k = 0; k < K; ++k) {
      const int64_t src = dir.reverse ? t + (K - 1 - k) : t - (K - 1 - k);
      if (src < 0 || src >= L) continue;
      u = fma(taps[k], load_lanes(x0 + src * dir.x_st, dir.x_se, n), u);
    }
    mmvim_cpu::silu(u).store(u_rows + row);
  }
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

// A log2(e) of a block's lanes into A2 (N, W) (the recurrences compute
// exp(delta A) as exp2(delta A log2(e))), and A into A where not null (the
// backward needs it); padding lanes are zero.
template <typename T>
void load_A(const Direction<T>& dir, const Block& blk, int64_t N, T* A,
            T* A2) {
  constexpr int W = kLanes<T>;
  for (int64_t n = 0; n < N; ++n) {
    const Vec<T> a = load_lanes(dir.A + blk.e0 * N + n, N, blk.count);
    if (A) a.store(A + n * W);
    (a * Vec<T>::broadcast(mmvim_cpu::kLog2e<T>)).store(A2 + n * W);
  }
}

// Forward recurrence of one block over the tokens [t_lo, t_hi), in scan
// order, from the state h (N, W), which it leaves at the last token; u and
// delta are rows t - t_lo of u_rows and d_rows (load_block). emit(t, y)
// receives y_t + D u_t of each token; H, where not null, receives the
// states (rows t - t_lo, (N, W) each). kN > 0 is the state size known at
// compile time: the N state vectors then stay in registers.
template <int kN, typename T, typename Emit>
void block_forward(const Direction<T>& dir, int64_t N_, int64_t b,
                   const Block& blk, int64_t t_lo, int64_t t_hi, const T* A2,
                   T* h, const T* d_rows, const T* u_rows, T* H, Emit emit) {
  using V = Vec<T>;
  constexpr int W = kLanes<T>;
  const int64_t N = kN > 0 ? kN : N_;
  const V D = param_lanes(dir.D, blk);
  const T* B0 = dir.B + b * dir.B_sb + blk.gB * dir.B_sg;
  const T* C0 = dir.C + b * dir.C_sb + blk.gC * dir.C_sg;
  const int64_t B_sn = dir.B_sn, C_sn = dir.C_sn;
  V hr[kN > 0 ? kN : 1];
  if constexpr (kN > 0)
    for (int n = 0; n < kN; ++n) hr[n] = V::load(h + n * W);
  for (int64_t i = 0; i < t_hi - t_lo; ++i) {
    const int64_t t = dir.reverse ? t_hi - 1 - i : t_lo + i;
    const int64_t row = t - t_lo;
    const V d = V::load(d_rows + row * W), u = V::load(u_rows + row * W);
    const V du = d * u;
    V y = D * u;
    const T* Bt = B0 + t * dir.B_st;
    const T* Ct = C0 + t * dir.C_st;
    if constexpr (kN > 0) {
      V y_odd = V::broadcast(T(0));  // two sums: half the add chain
#pragma GCC unroll 64
      for (int n = 0; n < kN; ++n) {
        hr[n] = fma(exp2_finite(d * V::load(A2 + n * W)), hr[n],
                    du * V::broadcast(Bt[n * B_sn]));
        if (n % 2)
          y_odd = fma(hr[n], V::broadcast(Ct[n * C_sn]), y_odd);
        else
          y = fma(hr[n], V::broadcast(Ct[n * C_sn]), y);
      }
      y = y + y_odd;
      if (H)
        for (int n = 0; n < kN; ++n) hr[n].store(H + (row * N + n) * W);
    } else {
      for (int64_t n = 0; n < N; ++n) {
        const V hn = fma(exp2_finite(d * V::load(A2 + n * W)), V::load(h + n * W),
                         du * V::broadcast(Bt[n * B_sn]));
        hn.store(h + n * W);
        y = fma(hn, V::broadcast(Ct[n * C_sn]), y);
      }
      if (H) std::memcpy(H + row * N * W, h, sizeof(T) * N * W);
    }
    emit(t, y);
  }
  if constexpr (kN > 0)
    for (int n = 0; n < kN; ++n) hr[n].store(h + n * W);
}

// block_forward with the state size fixed at compile time where it is
// Vim's 16.
template <typename T, typename Emit>
void block_forward_any(const Direction<T>& dir, int64_t N, int64_t b,
                       const Block& blk, int64_t t_lo, int64_t t_hi,
                       const T* A2, T* h, const T* d_rows, const T* u_rows,
                       T* H, Emit emit) {
  if (N == 16)
    block_forward<16>(dir, N, b, blk, t_lo, t_hi, A2, h, d_rows, u_rows, H,
                      emit);
  else
    block_forward<0>(dir, N, b, blk, t_lo, t_hi, A2, h, d_rows, u_rows, H,
                     emit);
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
  using V = Vec<T>;
  constexpr int W = kLanes<T>;
  const int64_t L = s.length, N = s.state;
  const T* Ab = sc.Ab.data();
  const T* A2 = sc.A2.data();
  T* dh = sc.dh.data();
  T* dAb = sc.dAb.data();
  std::fill(sc.dh.begin(), sc.dh.end(), T(0));
  std::fill(sc.dAb.begin(), sc.dAb.end(), T(0));
  const V D = param_lanes(dir.D, blk), zero = V::broadcast(T(0));
  V dDl = zero;
  const T* B0 = dir.B + b * dir.B_sb + blk.gB * dir.B_sg;
  const T* C0 = dir.C + b * dir.C_sb + blk.gC * dir.C_sg;
  for (int64_t step = L - 1; step >= 0; --step) {
    const int64_t t = dir.reverse ? L - 1 - step : step;
    const int64_t t_prev = dir.reverse ? t + 1 : t - 1;
    const V d = V::load(sc.d.data() + t * W), u = V::load(sc.u.data() + t * W);
    const V g = V::load(sc.g.data() + t * W);
    V dd = zero, du = g * D;
    dDl = fma(g, u, dDl);
    const T* Ht = sc.H.data() + t * N * W;
    const T* Hp = step == 0 ? nullptr : sc.H.data() + t_prev * N * W;
    T* dBt = dBw + (B_per_token ? t : 0) * N * W;
    T* dCt = dCw + (C_per_token ? t : 0) * N * W;
    const T* Bt = B0 + t * dir.B_st;
    const T* Ct = C0 + t * dir.C_st;
    for (int64_t n = 0; n < N; ++n) {
      const V bn = V::broadcast(Bt[n * dir.B_sn]);
      const V cn = V::broadcast(Ct[n * dir.C_sn]);
      const V a = exp2_finite(d * V::load(A2 + n * W));
      const V a_hp = Hp ? a * V::load(Hp + n * W) : zero;
      fma(g, V::load(Ht + n * W), V::load(dCt + n * W)).store(dCt + n * W);
      const V grad_h = fma(g, cn, V::load(dh + n * W));
      const V gd = grad_h * d;
      dd = fma(grad_h, fma(V::load(Ab + n * W), a_hp, u * bn), dd);
      fma(gd, a_hp, V::load(dAb + n * W)).store(dAb + n * W);
      du = fma(gd, bn, du);
      fma(gd, u, V::load(dBt + n * W)).store(dBt + n * W);
      (a * grad_h).store(dh + n * W);
    }
    du.store(sc.du.data() + t * W);
    dd.store(sc.dd.data() + t * W);
  }
  alignas(64) T dD_lanes[W];
  dDl.store(dD_lanes);
  for (int w = 0; w < blk.count; ++w) {
    const int64_t e = blk.e0 + w;
    dD[e] += dD_lanes[w];
    for (int64_t n = 0; n < N; ++n) dA[e * N + n] += dAb[n * W + w];
  }
}

constexpr mmvim_scan::Backend kBackend{"CPU", c10::DeviceType::CPU,
                                       /*float32_weights=*/false,
                                       /*max_state=*/0,
                                       /*max_conv_width=*/0};

// z of a block's lanes at token t (strided), when the call has a gate.
template <typename T>
struct Gate {
  const T* z;
  int64_t sb, st, se;
  Vec<T> lanes(int64_t b, int64_t t, const Block& blk) const {
    return load_lanes(z + b * sb + t * st + blk.e0 * se, se, blk.count);
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
    const size_t nd = ds.size();
    const Vec<T> sv = Vec<T>::broadcast(T(scale));
    // One block of batch element b, direction by direction, in chunks of
    // kChunk tokens (its rows of u and delta stay in the L1 cache). y goes
    // straight into out: the first direction stores it, the last adds its
    // own and applies the gate, out = scale * y * silu(z).
    auto run_block = [&](int64_t b, const Block& blk, T* A2, T* h,
                         T* d_rows, T* u_rows) {
      T* o0 = outp + b * L * E + blk.e0;
      for (size_t k = 0; k < nd; ++k) {
        const Direction<T>& dir = ds[k];
        const bool first = k == 0, final = k + 1 == nd;
        auto emit = [&](int64_t t, Vec<T> y) {
          T* o = o0 + t * E;
          const int64_t ahead = dir.reverse ? t - kAhead : t + kAhead;
          if (ahead >= 0 && ahead < L) {
            __builtin_prefetch(o0 + ahead * E, 1);
            if (final && gz.z)
              __builtin_prefetch(gz.z + b * gz.sb + ahead * gz.st +
                                 blk.e0 * gz.se);
          }
          if (!first) y = y + load_lanes(o, 1, blk.count);
          if (final) {
            y = y * sv;
            if (gz.z) y = y * mmvim_cpu::silu(gz.lanes(b, t, blk));
          }
          store_lanes(y, o, 1, blk.count);
        };
        load_A<T>(dir, blk, N, nullptr, A2);
        std::fill(h, h + N * W, T(0));
        for (int64_t c = 0; c < L; c += kChunk) {  // scan steps [c, c_end)
          const int64_t c_end = std::min(c + kChunk, L);
          const int64_t t_lo = dir.reverse ? L - c_end : c;
          const int64_t t_hi = dir.reverse ? L - c : c_end;
          load_block<T>(dir, s, b, blk, t_lo, t_hi, softplus, d_rows, u_rows);
          block_forward_any<T>(dir, N, b, blk, t_lo, t_hi, A2, h, d_rows, u_rows,
                           nullptr, emit);
        }
        if (first && return_last_state) {
          T* lastp = last.data_ptr<T>() + b * E * N;
          for (int w = 0; w < blk.count; ++w)
            for (int64_t n = 0; n < N; ++n)
              lastp[(blk.e0 + w) * N + n] = h[n * W + w];
        }
      }
    };
    at::parallel_for(0, s.batch * nb, 1, [&](int64_t begin, int64_t end) {
      DenormalsAreZero ftz;
      std::vector<T> A2(N * W), h(N * W);
      std::vector<T> d_rows(kChunk * W), u_rows(kChunk * W);
      for (int64_t i = begin; i < end; ++i)
        run_block(i / nb, blocks[i % nb], A2.data(), h.data(), d_rows.data(),
                  u_rows.data());
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
        Scratch<T> sc(L, N);
        for (int64_t i = begin; i < end; ++i) {
          const Block& blk = blocks[i];
          // the gate: out = scale * y * silu(z), so dL/dy = scale * dout * silu(z)
          const Vec<T> sv = Vec<T>::broadcast(T(scale));
          for (int64_t t = 0; t < L; ++t) {
            Vec<T> g = sv * load_lanes(doutp + (b * L + t) * E + blk.e0, 1,
                                       blk.count);
            if (gz.z) g = g * mmvim_cpu::silu(gz.lanes(b, t, blk));
            g.store(sc.g.data() + t * W);
          }
          std::fill(sc.acc.begin(), sc.acc.end(), T(0));
          for (size_t k = 0; k < nd; ++k) {
            const size_t slot = tid * nd + k;
            T* gr_du = grads[k * 7].data_ptr<T>();
            T* gr_dd = grads[k * 7 + 1].data_ptr<T>();
            T* gr_bias = grads[k * 7 + 6].data_ptr<T>();
            const int64_t Lb = gB[k].per_token ? L : 1, Lc = gC[k].per_token ? L : 1;
            load_block<T>(ds[k], s, b, blk, 0, L, softplus, sc.d.data(),
                          sc.u.data());
            // states for the backward, and y (for dz) into sc.acc
            load_A(ds[k], blk, N, sc.Ab.data(), sc.A2.data());
            std::fill(sc.h.begin(), sc.h.end(), T(0));
            block_forward_any<T>(ds[k], N, b, blk, 0, L, sc.A2.data(),
                             sc.h.data(), sc.d.data(), sc.u.data(),
                             sc.H.data(), [&](int64_t t, Vec<T> y) {
                               T* acc = sc.acc.data() + t * W;
                               (Vec<T>::load(acc) + y).store(acc);
                             });
            block_backward<T>(ds[k], s, b, blk, sc,
                              grads[k * 7 + 2].data_ptr<T>(),
                              grads[k * 7 + 5].data_ptr<T>(),
                              dBw[slot].data() + blk.gB * Lb * N * W,
                              dCw[slot].data() + blk.gC * Lc * N * W,
                              gB[k].per_token, gC[k].per_token);
            // back through delta = softplus(raw), raw = delta + bias:
            // d softplus(raw) / d raw = sigmoid(raw)
            const Direction<T>& dir = ds[k];
            const Vec<T> bias = param_lanes(dir.bias, blk);
            const T* d0 = dir.delta + b * dir.d_sb + blk.e0 * dir.d_se;
            Vec<T> bias_grad = Vec<T>::broadcast(T(0));
            for (int64_t t = 0; t < L; ++t) {
              Vec<T> dd = Vec<T>::load(sc.dd.data() + t * W);
              if (softplus)
                dd = dd * mmvim_cpu::sigmoid(
                              load_lanes(d0 + t * dir.d_st, dir.d_se, blk.count) +
                              bias);
              bias_grad = bias_grad + dd;
              store_lanes(dd, gr_dd + (b * L + t) * E + blk.e0, 1, blk.count);
              store_lanes(Vec<T>::load(sc.du.data() + t * W),
                          gr_du + (b * L + t) * E + blk.e0, 1, blk.count);
            }
            alignas(64) T bias_lanes[W];
            bias_grad.store(bias_lanes);
            for (int w = 0; w < blk.count; ++w) gr_bias[blk.e0 + w] += bias_lanes[w];
          }
          if (dzp) {
            // d silu(z) / dz = sigmoid(z) (1 + z (1 - sigmoid(z)))
            const Vec<T> sv = Vec<T>::broadcast(T(scale));
            const Vec<T> one = Vec<T>::broadcast(T(1));
            for (int64_t t = 0; t < L; ++t) {
              const Vec<T> zt = gz.lanes(b, t, blk), sg = mmvim_cpu::sigmoid(zt);
              const Vec<T> go = load_lanes(doutp + (b * L + t) * E + blk.e0, 1,
                                           blk.count);
              store_lanes(sv * go * Vec<T>::load(sc.acc.data() + t * W) * sg *
                              fma(zt, one - sg, one),
                          dzp + (b * L + t) * E + blk.e0, 1, blk.count);
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

// One token's row of the depthwise conv + SiLU: out[e] = silu(bias[e] +
// sum_j taps[j][e] * rows[j][e * se]) over the n taps whose token exists.
template <typename T>
void conv_silu_row(const T* const* rows, const T* const* taps, int n,
                   int64_t se, const T* bias, T* out, int64_t E) {
  using V = Vec<T>;
  constexpr int W = kLanes<T>;
  int64_t e0 = 0;
  if (se == 1)
    for (; e0 + W <= E; e0 += W) {
      V o = V::load(bias + e0);
      for (int j = 0; j < n; ++j)
        o = fma(V::load(taps[j] + e0), V::load(rows[j] + e0), o);
      mmvim_cpu::silu(o).store(out + e0);
    }
  for (; e0 < E; e0 += W) {
    const int count = static_cast<int>(std::min<int64_t>(W, E - e0));
    V o = load_lanes(bias + e0, 1, count);
    for (int j = 0; j < n; ++j)
      o = fma(load_lanes(taps[j] + e0, 1, count),
              load_lanes(rows[j] + e0 * se, se, count), o);
    store_lanes(mmvim_cpu::silu(o), out + e0, 1, count);
  }
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
      std::vector<const T*> rows(K), row_taps(K);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / L, t = i % L;
        int n = 0;  // the taps whose token exists
        for (int64_t k = 0; k < K; ++k) {
          const int64_t back = K - 1 - k;
          const int64_t src = reverse ? t + back : t - back;
          if (src < 0 || src >= L) continue;
          rows[n] = xp + b * sb + src * st;
          row_taps[n++] = taps.data() + k * E;
        }
        conv_silu_row<T>(rows.data(), row_taps.data(), n, se, bias_row.data(),
                         op + i * E, E);
      }
    });
  });
  return out;
}

// The Vim mixer between in_proj and out_proj in one call, the CPU kernel's
// path of mmvim/ops/bimamba_inner.py (_forward; its _compose is the same
// in Python): per direction u = silu(depthwise conv(x)) (the second
// anti-causal), x_dbl = x_proj(u), delta = dt_proj(x_dbl[..., :R]), then
// the scan of both directions with the gate. The same ATen ops and kernels
// (under the caller's autocast), without a Python call per op: that
// overhead was a sixth of a Vim-Ti layer at 224x224. params: per direction
// conv weight (E, 1, K), conv bias (E,), x_proj weight, dt_proj weight,
// dt_proj bias, A_log, D. Returns [out in xz's dtype, states (empty)].
std::vector<at::Tensor> mixer_forward(const at::Tensor& xz,
                                      const std::vector<at::Tensor>& params,
                                      int64_t dt_rank, int64_t d_state,
                                      double scale) {
  TORCH_CHECK(xz.dim() == 3 && xz.size(2) % 2 == 0 && params.size() == 14,
              "mixer_forward: xz (b, L, 2E) and 14 parameters, got ",
              xz.sizes(), " and ", params.size());
  const auto compute = xz.scalar_type() == at::kDouble ? at::kDouble
                                                       : at::kFloat;
  const int64_t E = xz.size(2) / 2;
  const at::Tensor x = xz.narrow(2, 0, E);
  const at::Tensor xc = x.to(compute);
  std::vector<DirTensors> dirs;
  for (int k = 0; k < 2; ++k) {
    const at::Tensor* p = params.data() + 7 * k;
    const at::Tensor u =
        conv_silu_impl(xc, p[0].reshape({E, -1}).to(compute).contiguous(),
                       p[1].to(compute).contiguous(), k == 1)
            .to(x.scalar_type());
    const at::Tensor x_dbl = at::linear(u, p[2]);  // (b, L, R + 2N)
    const at::Tensor delta = at::linear(x_dbl.narrow(2, 0, dt_rank), p[3]);
    dirs.push_back(DirTensors{
        u.to(compute), std::nullopt, std::nullopt, delta.to(compute),
        -at::exp(p[5].to(compute)),
        x_dbl.narrow(2, dt_rank, d_state).unsqueeze(2).to(compute),
        x_dbl.narrow(2, dt_rank + d_state, d_state).unsqueeze(2).to(compute),
        p[6].to(compute), p[4].to(compute), k == 1});
  }
  auto r = forward_impl(dirs, xz.narrow(2, E, E).to(compute), scale,
                        /*softplus=*/true, /*return_last_state=*/false);
  return {r[0].to(xz.scalar_type()), r[1]};
}

// exp2, exp, sigmoid, silu and softplus of the kernel's Vec<T>, elementwise
// over a 1-D float32 / float64 tensor (for the tests of their accuracy and
// of infinities and NaN).
std::vector<at::Tensor> special_functions(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() == 1 && (x_in.scalar_type() == at::kFloat ||
                                  x_in.scalar_type() == at::kDouble),
              "special_functions: a 1-D float32 or float64 tensor");
  const at::Tensor x = x_in.contiguous();
  std::vector<at::Tensor> out;
  for (int i = 0; i < 5; ++i) out.push_back(at::empty_like(x));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "special_functions", [&] {
    using T = scalar_t;
    constexpr int W = kLanes<T>;
    const T* xp = x.data_ptr<T>();
    for (int64_t i = 0; i < x.numel(); i += W) {
      const int count = static_cast<int>(std::min<int64_t>(W, x.numel() - i));
      const Vec<T> v = load_lanes(xp + i, 1, count);
      const Vec<T> r[5] = {exp2(v), mmvim_cpu::exp(v), mmvim_cpu::sigmoid(v),
                           mmvim_cpu::silu(v), mmvim_cpu::softplus(v)};
      for (int k = 0; k < 5; ++k)
        store_lanes(r[k], out[k].data_ptr<T>() + i, 1, count);
    }
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
  m.attr("simd") = mmvim_cpu::kSimd;
  m.def("special_functions", &special_functions,
        "exp2, exp, sigmoid, silu, softplus of the kernel's vector code "
        "(tests)");
  m.def("mixer_forward", &mixer_forward,
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        "Vim's mixer between in_proj and out_proj (bimamba_inner) in one "
        "call");
}
