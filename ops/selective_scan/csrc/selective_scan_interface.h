// The Python interface both scan extensions export (CPU: selective_scan_cpu
// .cpp, CUDA: selective_scan_cuda.cpp). A backend implements forward_impl
// and backward_impl over one or two directions and calls bind_scan().
//
//   scan_fwd(u, delta, A, Bt, Ct, D?, bias?, z?, softplus, reverse,
//            return_last_state) -> [out, acc, last_state]
//   scan_bwd(u, delta, A, Bt, Ct, D?, bias?, z?, dout, acc, softplus,
//            reverse) -> [du, ddelta, dA, dBt, dCt, dD, dbias, dz]
//   bi_scan_fwd / bi_scan_bwd: the same for a forward direction and a
//            reverse one (the "_b" tensors), with out scaled by `scale`.
#pragma once

// ATen and torch's pybind11 casters: a third of the compile time of
// <torch/extension.h>, which adds the whole C++ frontend
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include <atomic>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mmvim_scan {

// One direction's tensors, as the kernels receive them.
struct DirTensors {
  at::Tensor u, delta, A, Bt, Ct;
  std::optional<at::Tensor> D, bias;
  bool reverse;
};

using Tensors = std::vector<at::Tensor>;
using OptTensor = std::optional<at::Tensor>;
// (directions, z, scale, softplus, return_last_state) -> [out, acc, last]
using ForwardImpl = Tensors (*)(const std::vector<DirTensors>&,
                                const OptTensor&, double, bool, bool);
// (directions, z, dout, acc, scale, softplus) -> per direction
// [du, ddelta, dA, dBt, dCt, dD, dbias], then dz
using BackwardImpl = Tensors (*)(const std::vector<DirTensors>&,
                                 const OptTensor&, const at::Tensor&,
                                 const at::Tensor&, double, bool);

// What a backend accepts; the checks below are shared by every binding.
struct Backend {
  const char* name;            // for messages: "CPU", "CUDA"
  c10::DeviceType device;      // where its tensors live
  bool float32_weights;        // A, B, C, D, bias float32 with float32 /
                               // float16 / bfloat16 data (CUDA); otherwise
                               // every tensor in u's float32/float64 (CPU)
  int64_t max_state;           // largest N the kernels are built for; 0: any
};

struct Sizes {
  int64_t batch, dim, length, state, groups;
};

// Checks every input of a call (dout and acc for the backward pass) and
// returns the sizes. Each message names the argument and what it must be:
// the kernels index raw memory, so a wrong shape would read out of bounds.
inline Sizes check_inputs(const Backend& backend,
                          const std::vector<DirTensors>& dirs,
                          const std::optional<at::Tensor>& z,
                          const at::Tensor* dout = nullptr,
                          const at::Tensor* acc = nullptr) {
  const std::string who = std::string("selective scan ") + backend.name +
                          " kernel: ";
  const auto& u = dirs.at(0).u;
  TORCH_CHECK(u.dim() == 3, who, "u must be (batch, dim, length), got ",
              u.sizes());
  TORCH_CHECK(dirs[0].A.dim() == 2, who, "A must be (dim, state), got ",
              dirs[0].A.sizes());
  TORCH_CHECK(dirs[0].Bt.dim() == 4, who,
              "B must be (batch, groups, length, state) after the transpose "
              "of the Python wrapper, got ", dirs[0].Bt.sizes());
  const Sizes s{u.size(0), u.size(1), u.size(2), dirs[0].A.size(1),
                dirs[0].Bt.size(1)};
  TORCH_CHECK(s.groups > 0 && s.dim % s.groups == 0, who, "B and C have ",
              s.groups, " groups, which must be at least 1 and divide the ",
              s.dim, " channels of u");
  TORCH_CHECK(backend.max_state == 0 || s.state <= backend.max_state, who,
              "state size N = ", s.state, " is above the ", backend.max_state,
              " this kernel supports; use the reference (MMVIM_SCAN_IMPL=ref)");
  const std::vector<int64_t> bc{s.batch, s.groups, s.length, s.state};
  std::vector<std::pair<const char*, const at::Tensor*>> data, weights;
  for (const auto& d : dirs) {
    TORCH_CHECK(d.u.sizes() == u.sizes() && d.delta.sizes() == u.sizes(), who,
                "u and delta of every direction must be (batch, dim, length) "
                "= ", u.sizes(), ", got ", d.u.sizes(), " and ",
                d.delta.sizes());
    TORCH_CHECK(d.A.sizes() == dirs[0].A.sizes() &&
                    d.A.size(0) == s.dim,
                who, "A of every direction must be (dim, state) = (", s.dim,
                ", ", s.state, "), got ", d.A.sizes());
    TORCH_CHECK(d.Bt.sizes() == at::IntArrayRef(bc) &&
                    d.Ct.sizes() == at::IntArrayRef(bc),
                who, "B and C must be (batch, groups, length, state) = ",
                at::IntArrayRef(bc), " to match u and A, got ", d.Bt.sizes(),
                " and ", d.Ct.sizes());
    for (const auto* opt : {&d.D, &d.bias}) {
      if (!*opt) continue;
      TORCH_CHECK((*opt)->dim() == 1 && (*opt)->size(0) == s.dim, who,
                  opt == &d.D ? "D" : "delta_bias", " must be (dim,) = (",
                  s.dim, ",), got ", (*opt)->sizes());
      weights.push_back({opt == &d.D ? "D" : "delta_bias", &**opt});
    }
    data.insert(data.end(), {{"u", &d.u}, {"delta", &d.delta}});
    weights.insert(weights.end(), {{"A", &d.A}, {"B", &d.Bt}, {"C", &d.Ct}});
  }
  if (z) {
    TORCH_CHECK(z->sizes() == u.sizes(), who, "z must be (batch, dim, length) "
                "= ", u.sizes(), ", got ", z->sizes());
    data.push_back({"z", &*z});
  }
  if (dout) {
    TORCH_CHECK(dout->sizes() == u.sizes(), who, "the output gradient must "
                "be (batch, dim, length) = ", u.sizes(), ", got ",
                dout->sizes());
    data.push_back({"the output gradient", dout});
  }
  if (acc) {
    TORCH_CHECK(acc->sizes() == u.sizes(), who, "acc must be the (batch, "
                "dim, length) = ", u.sizes(), " tensor the forward returned, "
                "got ", acc->sizes());
  }
  const auto dtype = u.scalar_type();
  if (backend.float32_weights) {
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf ||
                    dtype == at::kBFloat16,
                who, "u must be float32, float16 or bfloat16, got ", dtype);
  } else {
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, who,
                "u must be float32 or float64, got ", dtype);
  }
  const auto weight_dtype = backend.float32_weights ? at::kFloat : dtype;
  for (const auto& [name, x] : data)
    TORCH_CHECK(x->scalar_type() == dtype, who, name,
                " must have u's dtype ", dtype, ", got ", x->scalar_type());
  for (const auto& [name, x] : weights)
    TORCH_CHECK(x->scalar_type() == weight_dtype, who, name, " must be ",
                weight_dtype, ", got ", x->scalar_type());
  if (acc) {
    TORCH_CHECK(acc->scalar_type() == weight_dtype, who, "acc must be ",
                weight_dtype, " as the forward returned it, got ",
                acc->scalar_type());
    data.push_back({"acc", acc});
  }
  data.insert(data.end(), weights.begin(), weights.end());
  for (const auto& [name, x] : data) {
    TORCH_CHECK(x->device().type() == backend.device &&
                    x->device() == u.device(),
                who, name, " is on ", x->device(), "; every input must be on "
                "u's device ", u.device());
    TORCH_CHECK(x->is_contiguous(), who, name, " must be contiguous (call "
                ".contiguous() on it)");
  }
  return s;
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

inline void bind_scan(pybind11::module& m, ForwardImpl forward,
                      BackwardImpl backward, const std::string& device) {
  namespace py = pybind11;
  m.def("set_poison_outputs", [](bool on) { poison_outputs() = on; },
        "fill every output with NaN before the kernel writes it (tests)");
  m.def(
      "scan_fwd",
      [forward](at::Tensor u, at::Tensor delta, at::Tensor A,
                at::Tensor Bt, at::Tensor Ct, OptTensor D,
                OptTensor bias, OptTensor z, bool softplus, bool reverse,
                bool return_last_state) {
        return forward({DirTensors{u, delta, A, Bt, Ct, D, bias, reverse}},
                       z, 1.0, softplus, return_last_state);
      },
      ("selective scan forward (" + device + ")").c_str());
  m.def(
      "scan_bwd",
      [backward](at::Tensor u, at::Tensor delta, at::Tensor A,
                 at::Tensor Bt, at::Tensor Ct, OptTensor D,
                 OptTensor bias, OptTensor z, at::Tensor dout,
                 at::Tensor acc, bool softplus, bool reverse) {
        return backward({DirTensors{u, delta, A, Bt, Ct, D, bias, reverse}},
                        z, dout, acc, 1.0, softplus);
      },
      ("selective scan backward (" + device + ")").c_str());
  m.def(
      "bi_scan_fwd",
      [forward](at::Tensor u, at::Tensor delta, at::Tensor A,
                at::Tensor Bt, at::Tensor Ct, OptTensor D,
                OptTensor bias, at::Tensor u_b, at::Tensor delta_b,
                at::Tensor A_b, at::Tensor Bt_b, at::Tensor Ct_b,
                OptTensor D_b, OptTensor bias_b, OptTensor z, bool softplus,
                double scale) {
        return forward({DirTensors{u, delta, A, Bt, Ct, D, bias, false},
                        DirTensors{u_b, delta_b, A_b, Bt_b, Ct_b, D_b, bias_b,
                                   true}},
                       z, scale, softplus, false);
      },
      ("bidirectional selective scan forward (" + device + ")").c_str());
  m.def(
      "bi_scan_bwd",
      [backward](at::Tensor u, at::Tensor delta, at::Tensor A,
                 at::Tensor Bt, at::Tensor Ct, OptTensor D,
                 OptTensor bias, at::Tensor u_b, at::Tensor delta_b,
                 at::Tensor A_b, at::Tensor Bt_b, at::Tensor Ct_b,
                 OptTensor D_b, OptTensor bias_b, OptTensor z,
                 at::Tensor dout, at::Tensor acc, bool softplus,
                 double scale) {
        return backward({DirTensors{u, delta, A, Bt, Ct, D, bias, false},
                         DirTensors{u_b, delta_b, A_b, Bt_b, Ct_b, D_b,
                                    bias_b, true}},
                        z, dout, acc, scale, softplus);
      },
      ("bidirectional selective scan backward (" + device + ")").c_str());
}

}  // namespace mmvim_scan
