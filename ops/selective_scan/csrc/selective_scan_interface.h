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

#include <torch/extension.h>

#include <atomic>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace mmvim_scan {

// One direction's tensors, as the kernels receive them.
struct DirTensors {
  torch::Tensor u, delta, A, Bt, Ct;
  std::optional<torch::Tensor> D, bias;
  bool reverse;
};

using Tensors = std::vector<torch::Tensor>;
using OptTensor = std::optional<torch::Tensor>;
// (directions, z, scale, softplus, return_last_state) -> [out, acc, last]
using ForwardImpl = Tensors (*)(const std::vector<DirTensors>&,
                                const OptTensor&, double, bool, bool);
// (directions, z, dout, acc, scale, softplus) -> per direction
// [du, ddelta, dA, dBt, dCt, dD, dbias], then dz
using BackwardImpl = Tensors (*)(const std::vector<DirTensors>&,
                                 const OptTensor&, const torch::Tensor&,
                                 const torch::Tensor&, double, bool);

// Tests set this so that every output starts as NaN: an element a kernel
// forgets to write then fails the comparison with the reference.
inline std::atomic<bool>& poison_outputs() {
  static std::atomic<bool> flag{false};
  return flag;
}

inline torch::Tensor new_output(at::IntArrayRef sizes,
                                const torch::TensorOptions& options) {
  return poison_outputs()
             ? torch::full(sizes, std::numeric_limits<double>::quiet_NaN(),
                           options)
             : torch::empty(sizes, options);
}

inline void bind_scan(pybind11::module& m, ForwardImpl forward,
                      BackwardImpl backward, const std::string& device) {
  namespace py = pybind11;
  m.def("set_poison_outputs", [](bool on) { poison_outputs() = on; },
        "fill every output with NaN before the kernel writes it (tests)");
  m.def(
      "scan_fwd",
      [forward](torch::Tensor u, torch::Tensor delta, torch::Tensor A,
                torch::Tensor Bt, torch::Tensor Ct, OptTensor D,
                OptTensor bias, OptTensor z, bool softplus, bool reverse,
                bool return_last_state) {
        return forward({DirTensors{u, delta, A, Bt, Ct, D, bias, reverse}},
                       z, 1.0, softplus, return_last_state);
      },
      ("selective scan forward (" + device + ")").c_str());
  m.def(
      "scan_bwd",
      [backward](torch::Tensor u, torch::Tensor delta, torch::Tensor A,
                 torch::Tensor Bt, torch::Tensor Ct, OptTensor D,
                 OptTensor bias, OptTensor z, torch::Tensor dout,
                 torch::Tensor acc, bool softplus, bool reverse) {
        return backward({DirTensors{u, delta, A, Bt, Ct, D, bias, reverse}},
                        z, dout, acc, 1.0, softplus);
      },
      ("selective scan backward (" + device + ")").c_str());
  m.def(
      "bi_scan_fwd",
      [forward](torch::Tensor u, torch::Tensor delta, torch::Tensor A,
                torch::Tensor Bt, torch::Tensor Ct, OptTensor D,
                OptTensor bias, torch::Tensor u_b, torch::Tensor delta_b,
                torch::Tensor A_b, torch::Tensor Bt_b, torch::Tensor Ct_b,
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
      [backward](torch::Tensor u, torch::Tensor delta, torch::Tensor A,
                 torch::Tensor Bt, torch::Tensor Ct, OptTensor D,
                 OptTensor bias, torch::Tensor u_b, torch::Tensor delta_b,
                 torch::Tensor A_b, torch::Tensor Bt_b, torch::Tensor Ct_b,
                 OptTensor D_b, OptTensor bias_b, OptTensor z,
                 torch::Tensor dout, torch::Tensor acc, bool softplus,
                 double scale) {
        return backward({DirTensors{u, delta, A, Bt, Ct, D, bias, false},
                         DirTensors{u_b, delta_b, A_b, Bt_b, Ct_b, D_b,
                                    bias_b, true}},
                        z, dout, acc, scale, softplus);
      },
      ("bidirectional selective scan backward (" + device + ")").c_str());
}

}  // namespace mmvim_scan
