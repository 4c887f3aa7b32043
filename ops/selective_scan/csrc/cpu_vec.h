// One SIMD vector of the CPU scan kernel: Vec<T> holds kSize = 64 / sizeof(T)
// lanes (one block of channels, see selective_scan_cpu.cpp). Where the
// compiler targets AVX-512, Vec<float> is one __m512 register and exp2 uses
// vscalefps; elsewhere (float64, other CPUs) Vec<T> is GCC / Clang vectors
// of the target's native width. The special functions below are written
// once over the small set of operations both provide.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace mmvim_cpu {

// which Vec<float> this build has (the extension reports it as `simd`)
#if defined(__AVX512F__)
constexpr const char* kSimd = "avx512";
#else
constexpr const char* kSimd = "portable";
#endif

// The portable Vec: 64 bytes as GCC / Clang vectors of the target's native
// width (two AVX2 registers, four SSE or NEON registers; wider vector
// types get their comparisons lowered to scalar code), each operation
// applied part by part. Comparisons keep NaN where the AVX-512 version
// does.
#if defined(__AVX__)
constexpr int kNativeBytes = 32;
#else
constexpr int kNativeBytes = 16;
#endif

template <typename T>
struct Vec {
  static constexpr int kSize = 64 / static_cast<int>(sizeof(T));
  static constexpr int kParts = 64 / kNativeBytes;
  typedef T Part __attribute__((vector_size(kNativeBytes)));
  // what comparing two Parts gives: lanes of all ones where true
  using Lane = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef Lane Mask __attribute__((vector_size(kNativeBytes)));
  // a Part at any address (unaligned loads and stores, no aliasing rule)
  typedef T Unaligned
      __attribute__((vector_size(kNativeBytes), aligned(alignof(T)),
                     may_alias));
  static constexpr int kPartLanes = kNativeBytes / static_cast<int>(sizeof(T));
  Part p[kParts];

  static Vec load(const T* src) {
    Vec r;
    for (int i = 0; i < kParts; ++i)
      r.p[i] = *reinterpret_cast<const Unaligned*>(src + i * kPartLanes);
    return r;
  }
  static Vec broadcast(T x) {
    Vec r;
    for (int i = 0; i < kParts; ++i) r.p[i] = Part{} + x;
    return r;
  }
  void store(T* dst) const {
    for (int i = 0; i < kParts; ++i)
      *reinterpret_cast<Unaligned*>(dst + i * kPartLanes) = p[i];
  }
  // f applied part by part
  template <typename F>
  static Vec zip(const Vec& a, const Vec& b, F f) {
    Vec r;
    for (int i = 0; i < kParts; ++i) r.p[i] = f(a.p[i], b.p[i]);
    return r;
  }
  // f applied lane by lane (the standard library's functions for double)
  template <typename F>
  Vec map(F f) const {
    T lanes[kSize];
    store(lanes);
    for (int i = 0; i < kSize; ++i) lanes[i] = f(lanes[i]);
    return load(lanes);
  }
  // a where mask, else b, by bits
  static Part select(Mask mask, Part a, Part b) {
    Mask ai, bi;
    std::memcpy(&ai, &a, sizeof(Part));
    std::memcpy(&bi, &b, sizeof(Part));
    const Mask bits = (mask & ai) | (~mask & bi);
    Part out;
    std::memcpy(&out, &bits, sizeof(Part));
    return out;
  }
  friend Vec operator+(const Vec& a, const Vec& b) {
    return zip(a, b, [](Part x, Part y) { return x + y; });
  }
  friend Vec operator-(const Vec& a, const Vec& b) {
    return zip(a, b, [](Part x, Part y) { return x - y; });
  }
  friend Vec operator*(const Vec& a, const Vec& b) {
    return zip(a, b, [](Part x, Part y) { return x * y; });
  }
  friend Vec max(const Vec& a, const Vec& b) {
    return zip(a, b, [](Part x, Part y) { return select(x > y, x, y); });
  }
  friend Vec min(const Vec& a, const Vec& b) {
    return zip(a, b, [](Part x, Part y) { return select(x < y, x, y); });
  }
  friend Vec reciprocal(const Vec& a) {
    return zip(a, a, [](Part x, Part) { return T(1) / x; });
  }
  friend Vec abs(const Vec& a) {
    return zip(a, a, [](Part x, Part) { return select(x < T(0), -x, x); });
  }
  // a * b + c
  friend Vec fma(const Vec& a, const Vec& b, const Vec& c) {
    return a * b + c;
  }
};

// 2^x: the standard library for double; for float 2^round(x) times a
// degree-5 minimax polynomial of the fraction in [-1/2, 1/2] with p(0) = 1
// exactly (relative error < 1.9e-7 evaluated in float). exp2_finite may
// skip the clamp that keeps infinite arguments right.
inline Vec<double> exp2(const Vec<double>& a) {
  return a.map([](double x) { return std::exp2(x); });
}
inline Vec<double> exp2_finite(const Vec<double>& a) { return exp2(a); }

// the float polynomial's coefficients, highest degree first
constexpr float kExp2Poly[] = {1.326472731e-3f, 9.671512991e-3f,
                               5.550733581e-2f, 2.402224243e-1f,
                               6.931470037e-1f, 1.0f};

#if defined(__AVX512F__)
template <>
struct Vec<float> {
  static constexpr int kSize = 16;
  __m512 v;

  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec broadcast(float x) { return {_mm512_set1_ps(x)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  friend Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
  friend Vec max(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }
  friend Vec min(Vec a, Vec b) { return {_mm512_min_ps(a.v, b.v)}; }
  // 1 / a for finite a != 0: a 14-bit estimate and one Newton step
  // (relative error ~1e-7; vdivps is several times slower)
  friend Vec reciprocal(Vec a) {
    const __m512 r = _mm512_rcp14_ps(a.v);
    const __m512 e = _mm512_fnmadd_ps(a.v, r, _mm512_set1_ps(1.0f));
    return {_mm512_fmadd_ps(r, e, r)};
  }
  friend Vec abs(Vec a) { return {_mm512_abs_ps(a.v)}; }
  friend Vec fma(Vec a, Vec b, Vec c) {
    return {_mm512_fmadd_ps(a.v, b.v, c.v)};
  }
  // 2^x = 2^round(x) * 2^r, |r| <= 1/2, for finite x: vscalefps applies
  // the exponent and saturates to 0 / inf (an infinite x gives NaN: the
  // scan's recurrence, whose arguments are finite, calls this one)
  friend Vec exp2_finite(Vec a) {
    const __m512 k = _mm512_roundscale_ps(
        a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_sub_ps(a.v, k);
    __m512 p = _mm512_set1_ps(kExp2Poly[0]);
    for (int i = 1; i < 6; ++i)
      p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExp2Poly[i]));
    return {_mm512_scalef_ps(p, k)};
  }
  // 2^x for any x: clamped first (x second, so NaN stays NaN)
  friend Vec exp2(Vec a) {
    return exp2_finite(Vec{_mm512_min_ps(
        _mm512_set1_ps(128.0f),
        _mm512_max_ps(_mm512_set1_ps(-150.0f), a.v))});
  }
};
#else
// 2^k is applied as 2^(k/2) 2^(k - k/2), two normal floats, so that
// results near the overflow and underflow limits come out right
inline Vec<float> exp2(const Vec<float>& a) {
  using V = Vec<float>;
  using R = V::Part;
  return V::zip(a, a, [](R x, R) {
    x = V::select(x > 150.0f, R{} + 150.0f, x);  // NaN stays NaN
    x = V::select(x < -150.0f, R{} - 150.0f, x);
    const R k = (x + 12582912.0f) - 12582912.0f;  // round to nearest
    const R r = x - k;
    R p = R{} + kExp2Poly[0];
    for (int i = 1; i < 6; ++i) p = p * r + kExp2Poly[i];
    // NaN: p carries it (a NaN converted to int is unspecified)
    const V::Mask ki = __builtin_convertvector(V::select(k == k, k, R{}),
                                               V::Mask);
    const V::Mask k1 = ki >> 1, k2 = ki - k1;
    const V::Mask b1 = (k1 + 127) << 23, b2 = (k2 + 127) << 23;
    R s1, s2;
    std::memcpy(&s1, &b1, sizeof(R));
    std::memcpy(&s2, &b2, sizeof(R));
    return p * s1 * s2;
  });
}
inline Vec<float> exp2_finite(const Vec<float>& a) { return exp2(a); }
#endif

template <typename T>
constexpr T kLog2e = T(1.4426950408889634);

inline Vec<float> exp(const Vec<float>& x) {
  return exp2(x * Vec<float>::broadcast(kLog2e<float>));
}
inline Vec<double> exp(const Vec<double>& x) {
  return x.map([](double v) { return std::exp(v); });
}

// sigmoid(x) = 1 / (1 + exp(-x)), with exp(-x) kept finite for the
// reciprocal (for float below x = -80, where sigmoid(x) < 2e-35; NaN stays
// NaN); silu(x) = x * sigmoid(x)
template <typename T>
inline Vec<T> sigmoid(const Vec<T>& x) {
  using V = Vec<T>;
  const T cap = sizeof(T) == 4 ? T(80) : T(700);
  return reciprocal(V::broadcast(T(1)) +
                    exp(min(V::broadcast(cap), V::broadcast(T(0)) - x)));
}

template <typename T>
inline Vec<T> silu(const Vec<T>& x) {
  return x * sigmoid(x);
}

// log1p(q) for q in [0, 1]: the standard library for double; for float
// log(1 + q) = 2 atanh(s), s = q / (2 + q) in [0, 1/3], as its odd series
// to s^13 (relative error < 2e-8 before rounding, and q stays accurate
// where it is tiny).
inline Vec<double> log1p_unit(const Vec<double>& q) {
  return q.map([](double x) { return std::log1p(x); });
}

inline Vec<float> log1p_unit(const Vec<float>& q) {
  using V = Vec<float>;
  auto c = [](float x) { return V::broadcast(x); };
  const V s = q * reciprocal(c(2.0f) + q);
  const V s2 = s * s;
  V p = c(1.0f / 13);
  p = fma(p, s2, c(1.0f / 11));
  p = fma(p, s2, c(1.0f / 9));
  p = fma(p, s2, c(1.0f / 7));
  p = fma(p, s2, c(1.0f / 5));
  p = fma(p, s2, c(1.0f / 3));
  p = fma(p, s2, c(1.0f));
  return (s + s) * p;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|))
template <typename T>
inline Vec<T> softplus(const Vec<T>& x) {
  const Vec<T> zero = Vec<T>::broadcast(T(0));
  return max(x, zero) + log1p_unit(exp(zero - abs(x)));
}

}  // namespace mmvim_cpu
