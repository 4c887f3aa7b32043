// The operators both scan extensions register with PyTorch's dispatcher
// (CPU: selective_scan_cpu.cpp; CUDA: selective_scan_cuda.cpp, also built
// for the CPU under the SIMT emulation). A backend implements forward_impl,
// backward_impl and conv_silu_impl and registers them with
// register_scan_ops() inside TORCH_LIBRARY_IMPL(namespace, key, m): the
// `mmvim` namespace for the CPU and CUDA kernels, `mmvim_simt` for the
// emulated one (on CPU tensors). The schemas, fake (meta) implementations
// and autograd formulas are defined in Python, mmvim/ops/library.py:
//
//   scan_fwd(<direction>, <direction>_b, Tensor? z, bool reverse,
//            bool softplus, float scale, bool return_last_state)
//       -> (out, states, last)
//   scan_bwd(<direction>, <direction>_b, Tensor? z, Tensor dout,
//            Tensor states, bool reverse, bool softplus, float scale)
//       -> Tensor[]: per direction [du, ddelta, dA, dB, dC, dD, dbias], dz
//   conv_silu(Tensor x, Tensor weight, Tensor? bias, bool reverse) -> Tensor
//
// <direction>: nine tensors, x, conv_weight?, conv_bias?, delta, A, B, C,
// D?, delta_bias?, each its own argument (so autograd reaches every one).
// One direction (the second's x None), scanned from the last token when
// `reverse`, or two: the first left to right, the second right to left.
// Shapes (b batch, L tokens, E channels, N states, W conv taps, G groups):
//   x, delta, z: (b, L, E), any strides: the token-major outputs of linear
//     layers are read where they are;
//   conv_weight: (E, W), W <= 4, conv_bias (E,): the scan input is then
//     u = silu(depthwise conv of x), causal in scan order (so anti-causal in
//     tokens for a reverse direction); without them u = x;
//   A: (E, N); B, C: (b, L, G, N), any strides, size 1 (or stride 0) in a
//     dimension they are shared over (a constant (E, N) B is (1, 1, E, N));
//   D, delta_bias: (E,);
//   out: (b, L, E) contiguous, scale * (sum over directions of y) *
//     (silu(z) if z); states: what the backward needs besides the inputs;
//   dB, dC: (b, L, G, N) with the shared dimensions kept at size 1;
//   du: the gradient of u (the conv's output when there is a conv); every
//     gradient is returned (zeros for an absent D or delta_bias, an empty
//     dz without z).
// The ops allocate their outputs and mutate no input.
#pragma once

// ATen and torch's pybind11 casters: a third of the compile time of
// <torch/extension.h>, which adds the whole C++ frontend
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mmvim_scan {

using OptTensor = std::optional<at::Tensor>;
using Tensors = std::vector<at::Tensor>;

// One direction's tensors, as the kernels receive them.
struct DirTensors {
  at::Tensor x;
  OptTensor conv_weight, conv_bias;
  at::Tensor delta, A, B, C;
  OptTensor D, bias;
  bool reverse;
};

// What a backend accepts; the checks below are shared by every binding.
struct Backend {
  const char* name;            // for messages: "CPU", "CUDA"
  c10::DeviceType device;      // where its tensors live
  bool float32_weights;        // A, D, bias, conv float32 with float32 /
                               // float16 / bfloat16 data, B and C in the
                               // data dtype or float32 (CUDA); otherwise
                               // every tensor in x's float32/float64 (CPU)
  int64_t max_state;           // largest N the kernels take; 0: any
  int64_t max_conv_width;      // widest depthwise conv fused; 0: any
};

struct Sizes {
  int64_t batch, dim, length, state, B_groups, C_groups, conv_width;
};

// Checks every input of a call (dout and states for the backward pass) and
// returns the sizes. Each message names the argument and what it must be:
// the kernels index raw memory, so a wrong shape would read out of bounds.
inline Sizes check_inputs(const Backend& backend,
                          const std::vector<DirTensors>& dirs,
                          const OptTensor& z,
                          const at::Tensor* dout = nullptr) {
  const std::string who = std::string("selective scan ") + backend.name +
                          " kernel: ";
  TORCH_CHECK(!dirs.empty() && dirs.size() <= 2, who,
              "one or two directions, got ", dirs.size());
  const auto& x = dirs[0].x;
  TORCH_CHECK(x.dim() == 3, who, "x must be (batch, length, dim), got ",
              x.sizes());
  TORCH_CHECK(dirs[0].A.dim() == 2, who, "A must be (dim, state), got ",
              dirs[0].A.sizes());
  Sizes s{x.size(0), x.size(2), x.size(1), dirs[0].A.size(1), 0, 0, 0};
  TORCH_CHECK(backend.max_state == 0 || s.state <= backend.max_state, who,
              "state size N = ", s.state, " is above the ", backend.max_state,
              " this kernel supports; use the reference (MMVIM_SCAN_IMPL=ref)");
  std::vector<std::pair<const char*, const at::Tensor*>> data, weights, bc;
  for (size_t k = 0; k < dirs.size(); ++k) {
    const auto& d = dirs[k];
    TORCH_CHECK(d.x.sizes() == x.sizes() && d.delta.sizes() == x.sizes(), who,
                "x and delta of every direction must be (batch, length, dim) "
                "= ", x.sizes(), ", got ", d.x.sizes(), " and ",
                d.delta.sizes());
    TORCH_CHECK(d.A.dim() == 2 && d.A.size(0) == s.dim &&
                    d.A.size(1) == s.state,
                who, "A of every direction must be (dim, state) = (", s.dim,
                ", ", s.state, "), got ", d.A.sizes());
    for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"B", &d.B},
                                  {"C", &d.C}}) {
      TORCH_CHECK(t->dim() == 4 && t->size(0) == s.batch &&
                      t->size(1) == s.length && t->size(3) == s.state,
                  who, name, " must be (batch, length, groups, state) = (",
                  s.batch, ", ", s.length, ", G, ", s.state, "), got ",
                  t->sizes());
      const int64_t groups = t->size(2);
      TORCH_CHECK(groups > 0 && s.dim % groups == 0, who, name, " has ",
                  groups, " groups, which must be at least 1 and divide the ",
                  s.dim, " channels");
      int64_t& first = name[0] == 'B' ? s.B_groups : s.C_groups;
      TORCH_CHECK(k == 0 || first == groups, who, name, " must have the same "
                  "groups in both directions");
      first = groups;
      for (int64_t i = 0; i < 4; ++i)
        TORCH_CHECK(t->stride(i) >= 0, who, name, " has a negative stride");
      bc.push_back({name, t});
    }
    TORCH_CHECK(d.conv_weight.has_value() || !d.conv_bias.has_value(), who,
                "conv_bias without conv_weight");
    if (d.conv_weight) {
      const auto& w = *d.conv_weight;
      TORCH_CHECK(w.dim() == 2 && w.size(0) == s.dim && w.size(1) > 0, who,
                  "conv_weight must be (dim, width) = (", s.dim, ", W), got ",
                  w.sizes());
      TORCH_CHECK(backend.max_conv_width == 0 ||
                      w.size(1) <= backend.max_conv_width,
                  who, "a conv of width ", w.size(1), " is wider than the ",
                  backend.max_conv_width, " this kernel fuses");
      TORCH_CHECK(k == 0 || s.conv_width == w.size(1), who,
                  "both directions' convs must have the same width");
      s.conv_width = w.size(1);
      weights.push_back({"conv_weight", &w});
    } else {
      TORCH_CHECK(k == 0 || s.conv_width == 0, who,
                  "a conv in one direction only");
    }
    for (const auto* opt : {&d.D, &d.bias, &d.conv_bias}) {
      if (!*opt) continue;
      const char* name = opt == &d.D ? "D" : opt == &d.bias ? "delta_bias"
                                                            : "conv_bias";
      TORCH_CHECK((*opt)->dim() == 1 && (*opt)->size(0) == s.dim, who, name,
                  " must be (dim,) = (", s.dim, ",), got ", (*opt)->sizes());
      weights.push_back({name, &**opt});
    }
    data.insert(data.end(), {{"x", &d.x}, {"delta", &d.delta}});
    weights.push_back({"A", &d.A});
  }
  if (z) {
    TORCH_CHECK(z->sizes() == x.sizes(), who, "z must be (batch, length, "
                "dim) = ", x.sizes(), ", got ", z->sizes());
    data.push_back({"z", &*z});
  }
  if (dout) {
    TORCH_CHECK(dout->sizes() == x.sizes(), who, "the output gradient must "
                "be (batch, length, dim) = ", x.sizes(), ", got ",
                dout->sizes());
    data.push_back({"the output gradient", dout});
  }
  const auto dtype = x.scalar_type();
  if (backend.float32_weights) {
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf ||
                    dtype == at::kBFloat16,
                who, "x must be float32, float16 or bfloat16, got ", dtype);
  } else {
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, who,
                "x must be float32 or float64, got ", dtype);
  }
  const auto weight_dtype = backend.float32_weights ? at::kFloat : dtype;
  for (const auto& [name, t] : data)
    TORCH_CHECK(t->scalar_type() == dtype, who, name,
                " must have x's dtype ", dtype, ", got ", t->scalar_type());
  for (const auto& [name, t] : weights)
    TORCH_CHECK(t->scalar_type() == weight_dtype, who, name, " must be ",
                weight_dtype, ", got ", t->scalar_type());
  const auto bc_dtype = bc[0].second->scalar_type();
  for (const auto& [name, t] : bc) {
    TORCH_CHECK(t->scalar_type() == bc_dtype &&
                    (bc_dtype == dtype || bc_dtype == weight_dtype),
                who, name, " must be in x's dtype or ", weight_dtype,
                ", the same for B and C, got ", t->scalar_type());
  }
  data.insert(data.end(), weights.begin(), weights.end());
  data.insert(data.end(), bc.begin(), bc.end());
  for (const auto& [name, t] : data) {
    TORCH_CHECK(t->device().type() == backend.device &&
                    t->device() == x.device(),
                who, name, " is on ", t->device(), "; every input must be on "
                "x's device ", x.device());
  }
  for (const auto& [name, t] : weights)
    TORCH_CHECK(t->is_contiguous(), who, name, " must be contiguous");
  if (dout)
    TORCH_CHECK(dout->is_contiguous(), who, "the output gradient must be "
                "contiguous");
  return s;
}

// The states tensor handed back to the backward: the forward's, untouched.
inline void check_states(const Backend& backend, const at::Tensor& states,
                         const at::Tensor& x, at::ScalarType dtype,
                         int64_t numel) {
  const std::string who = std::string("selective scan ") + backend.name +
                          " kernel: ";
  TORCH_CHECK(states.device() == x.device(), who, "states is on ",
              states.device(), "; every input must be on x's device ",
              x.device());
  TORCH_CHECK(states.scalar_type() == dtype && states.numel() == numel, who,
              "states must be the ", dtype, " tensor of ", numel,
              " elements the forward returned, got ", states.scalar_type(),
              " with ", states.numel());
  TORCH_CHECK(states.is_contiguous(), who, "states must be contiguous");
}

// Tests set this so that every output starts as NaN: an element a kernel
// forgets to write then fails the comparison with the reference.
inline std::atomic<bool>& poison_outputs() {
  static std::atomic<bool> flag{false};
  return flag;
}

inline at::Tensor new_output(at::IntArrayRef sizes,
                             const at::TensorOptions& options) {
  return poison_outputs()
             ? at::full(sizes, std::numeric_limits<double>::quiet_NaN(),
                        options)
             : at::empty(sizes, options);
}

// dB / dC: B's shape with the dimensions it is shared over kept at 1.
inline std::vector<int64_t> bc_grad_shape(const at::Tensor& t) {
  return {t.stride(0) == 0 ? 1 : t.size(0), t.stride(1) == 0 ? 1 : t.size(1),
          t.size(2), t.size(3)};
}

// The depthwise conv + SiLU feeding x_proj (the CUDA scan computes it
// again inside; the CPU scan reads its output): x (b, L, E) any strides,
// weight (E, W), bias (E,) ->
// silu(conv) (b, L, E) contiguous, causal in tokens, or anti-causal when
// reverse. Checks shared by the bindings.
inline void check_conv_inputs(const Backend& backend, const at::Tensor& x,
                              const at::Tensor& weight,
                              const OptTensor& bias) {
  const std::string who = std::string("depthwise conv + SiLU ") +
                          backend.name + " kernel: ";
  TORCH_CHECK(x.dim() == 3, who, "x must be (batch, length, dim), got ",
              x.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == x.size(2) &&
                  weight.size(1) > 0,
              who, "weight must be (dim, width) = (", x.size(2), ", W), got ",
              weight.sizes());
  TORCH_CHECK(backend.max_conv_width == 0 ||
                  weight.size(1) <= backend.max_conv_width,
              who, "a conv of width ", weight.size(1), " is wider than the ",
              backend.max_conv_width, " this kernel takes");
  TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == x.size(2)), who,
              "bias must be (dim,) = (", x.size(2), ",)");
  const auto weight_dtype =
      backend.float32_weights ? at::kFloat : x.scalar_type();
  for (const at::Tensor* t : {&weight, bias ? &*bias : nullptr}) {
    if (!t) continue;
    TORCH_CHECK(t->scalar_type() == weight_dtype && t->is_contiguous() &&
                    t->device() == x.device(),
                who, "weight and bias must be contiguous ", weight_dtype,
                " on x's device");
  }
  TORCH_CHECK(x.device().type() == backend.device, who, "x is on ",
              x.device());
}

using ConvImpl = at::Tensor (*)(const at::Tensor&, const at::Tensor&,
                                const OptTensor&, bool);

// (directions, z, scale, softplus, return_last_state) -> [out, states, last]
using ForwardImpl = Tensors (*)(const std::vector<DirTensors>&,
                                const OptTensor&, double, bool, bool);
// (directions, z, dout, states, scale, softplus) -> per direction
// [du, ddelta, dA, dB, dC, dD, dbias], then dz
using BackwardImpl = Tensors (*)(const std::vector<DirTensors>&,
                                 const OptTensor&, const at::Tensor&,
                                 const at::Tensor&, double, bool);

constexpr size_t kTensorsPerDirection = 9;
using Dir = std::array<OptTensor, kTensorsPerDirection>;

// B or C of size 1 in batch or tokens, shared over them -> expanded to
// (b, L, G, N) with stride 0 there (a view), as the kernels read it.
inline at::Tensor broadcast_bc(const at::Tensor& t, const at::Tensor& x) {
  if (t.dim() != 4 || x.dim() != 3 || (t.size(0) != 1 && t.size(1) != 1))
    return t;
  const int64_t batch = t.size(0) == 1 ? x.size(0) : t.size(0);
  const int64_t length = t.size(1) == 1 ? x.size(1) : t.size(1);
  return t.expand({batch, length, t.size(2), t.size(3)});
}

// The operators' arguments (nine per direction; the second direction
// absent when its x is) -> the kernels' directions.
inline std::vector<DirTensors> to_dirs(const Dir& first, const Dir& second,
                                       bool reverse) {
  std::vector<DirTensors> out;
  for (const Dir* d : {&first, &second}) {
    const bool is_second = d == &second;
    if (is_second && !(*d)[0].has_value()) break;
    for (int i : {0, 3, 4, 5, 6})
      TORCH_CHECK((*d)[i].has_value(), "selective scan: x, delta, A, B and "
                  "C are required", is_second ? " for the second direction"
                                              : "");
    // two directions: the first left to right, the second right to left
    const bool rev = is_second || (reverse && !second[0].has_value());
    TORCH_CHECK(!(reverse && second[0].has_value()), "selective scan: "
                "reverse applies to one direction; of two, the second is "
                "scanned right to left");
    out.push_back(DirTensors{*(*d)[0], (*d)[1], (*d)[2], *(*d)[3], *(*d)[4],
                             broadcast_bc(*(*d)[5], *(*d)[0]),
                             broadcast_bc(*(*d)[6], *(*d)[0]), (*d)[7],
                             (*d)[8], rev});
  }
  return out;
}

// the first direction's x, delta, A, B and C are required
#define MMVIM_SCAN_FIRST_ARGS                                                \
  const at::Tensor &x, const OptTensor &conv_weight,                         \
      const OptTensor &conv_bias, const at::Tensor &delta,                   \
      const at::Tensor &A, const at::Tensor &B, const at::Tensor &C,         \
      const OptTensor &D, const OptTensor &delta_bias
#define MMVIM_SCAN_SECOND_ARGS                                               \
  const OptTensor &x_b, const OptTensor &conv_weight_b,                      \
      const OptTensor &conv_bias_b, const OptTensor &delta_b,                \
      const OptTensor &A_b, const OptTensor &B_b, const OptTensor &C_b,      \
      const OptTensor &D_b, const OptTensor &delta_bias_b
#define MMVIM_SCAN_DIRS(reverse)                                             \
  to_dirs(Dir{x, conv_weight, conv_bias, delta, A, B, C, D, delta_bias},     \
          Dir{x_b, conv_weight_b, conv_bias_b, delta_b, A_b, B_b, C_b, D_b,  \
              delta_bias_b},                                                 \
          reverse)

// Registers one backend's kernels for the ops of mmvim/ops/library.py;
// called inside TORCH_LIBRARY_IMPL(namespace, dispatch key, m).
inline void register_scan_ops(torch::Library& m, ForwardImpl forward,
                              BackwardImpl backward, ConvImpl conv) {
  m.impl("conv_silu", conv);
  m.impl("scan_fwd",
         [forward](MMVIM_SCAN_FIRST_ARGS, MMVIM_SCAN_SECOND_ARGS,
                   const OptTensor& z, bool reverse, bool softplus,
                   double scale, bool return_last_state) {
           const auto r = forward(MMVIM_SCAN_DIRS(reverse), z, scale,
                                  softplus, return_last_state);
           return std::make_tuple(r[0], r[1], r[2]);
         });
  m.impl("scan_bwd",
         [backward](MMVIM_SCAN_FIRST_ARGS, MMVIM_SCAN_SECOND_ARGS,
                    const OptTensor& z, const at::Tensor& dout,
                    const at::Tensor& states, bool reverse, bool softplus,
                    double scale) {
           return backward(MMVIM_SCAN_DIRS(reverse), z, dout, states, scale,
                           softplus);
         });
}

#undef MMVIM_SCAN_FIRST_ARGS
#undef MMVIM_SCAN_SECOND_ARGS
#undef MMVIM_SCAN_DIRS

// What the Python module of an extension keeps besides the ops: the
// switch tests use to poison the outputs.
inline void bind_test_switches(pybind11::module& m) {
  m.def("set_poison_outputs", [](bool on) { poison_outputs() = on; },
        "fill every output with NaN before the kernel writes it (tests)");
}

}  // namespace mmvim_scan
