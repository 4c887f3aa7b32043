// Host side of the CUDA selective scan: checks, allocation, dispatch on the
// input dtype, Python bindings. Same functions and return values as the CPU
// kernel (selective_scan_cpu.cpp), so one Python wrapper serves both.
//
// Built twice by mmvim/ops/extension_loader.py: with nvcc for GPUs, and with
// the host compiler and MMVIM_SIMT_EMULATION for the CPU, where the same
// kernels run under simt_emulation.h on CPU tensors (the tests' device).
#include <ATen/ATen.h>

#if !defined(MMVIM_SIMT_EMULATION)
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <optional>
#include <vector>

#include "selective_scan_cuda.h"
#include "selective_scan_interface.h"

namespace {

using mmvim_scan::DirTensors;
using mmvim_scan::new_output;
using mmvim_scan::ScanParams;

#if defined(MMVIM_SIMT_EMULATION)
constexpr mmvim_scan::Backend kBackend{"CUDA (SIMT emulation)",
                                       c10::DeviceType::CPU,
                                       /*float32_weights=*/true,
                                       /*max_state=*/256,
                                       mmvim_scan::kMaxConvWidth};
struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};
cudaStream_t current_stream() { return nullptr; }
void check_launch() {}  // the emulator throws on a bad launch
#else
constexpr mmvim_scan::Backend kBackend{"CUDA", c10::DeviceType::CUDA,
                                       /*float32_weights=*/true,
                                       /*max_state=*/256,
                                       mmvim_scan::kMaxConvWidth};
using DeviceGuard = c10::cuda::CUDAGuard;
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }
void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }
#endif

// Calls f(T{}) with T the kernel's element type for u's dtype (the three
// the kernels are instantiated for; check_inputs has rejected the others).
template <typename F>
void dispatch_dtype(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(c10::Half{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    default: TORCH_CHECK(false, "selective scan CUDA kernel: unsupported dtype ", dtype);
  }
}

mmvim_scan::Strides3 strides3(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2)};
}
mmvim_scan::Strides4 strides4(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename T>
const T* data_or_null(const std::optional<at::Tensor>& t) {
  return t ? t->data_ptr<T>() : nullptr;
}

// Lanes of a block's kChannels that share one B (C) row: all of them, the
// channels of a group, or each its own.
int shared_lanes(int64_t dim, int64_t groups) {
  const int64_t per_group = dim / groups;
  if (per_group % mmvim_scan::kChannels == 0) return mmvim_scan::kChannels;
  if (mmvim_scan::kChannels % per_group == 0) return static_cast<int>(per_group);
  return 1;
}

ScanParams base_params(const std::vector<DirTensors>& dirs,
                       const mmvim_scan::Sizes& s,
                       const std::optional<at::Tensor>& z, bool softplus,
                       double scale) {
  ScanParams p{};
  TORCH_CHECK(dirs.size() == 1 || (!dirs[0].reverse && dirs[1].reverse),
              "selective scan ", kBackend.name, " kernel: two directions "
              "must be a forward and a reverse one");
  p.ndirs = static_cast<int>(dirs.size());
  for (size_t k = 0; k < dirs.size(); ++k) {
    const auto& d = dirs[k];
    auto& q = p.dirs[k];
    q.x = d.x.data_ptr();
    q.x_stride = strides3(d.x);
    q.conv_weight = data_or_null<float>(d.conv_weight);
    q.conv_bias = data_or_null<float>(d.conv_bias);
    q.delta = d.delta.data_ptr();
    q.delta_stride = strides3(d.delta);
    q.A = d.A.data_ptr<float>();
    q.B = d.B.data_ptr();
    q.B_stride = strides4(d.B);
    q.B_groups = s.B_groups;
    q.C = d.C.data_ptr();
    q.C_stride = strides4(d.C);
    q.C_groups = s.C_groups;
    q.D = data_or_null<float>(d.D);
    q.bias = data_or_null<float>(d.bias);
    q.reverse = d.reverse;
  }
  p.z = z ? z->data_ptr() : nullptr;
  if (z) p.z_stride = strides3(*z);
  p.batch = s.batch;
  p.dim = s.dim;
  p.length = s.length;
  p.state = s.state;
  p.conv_width = static_cast<int>(s.conv_width);
  // token threads: enough for one tile over a short sequence, at most
  // kMaxTokenThreads (the same in the forward and the backward, whose
  // tiles must match)
  const int64_t needed = (s.length + mmvim_scan::kItems - 1) / mmvim_scan::kItems;
  int tt = static_cast<int>(std::min<int64_t>(mmvim_scan::kMaxTokenThreads,
                                              std::max<int64_t>(needed, 1)));
  tt = (tt + mmvim_scan::kRowThreads - 1) / mmvim_scan::kRowThreads *
       mmvim_scan::kRowThreads;
  p.token_threads = tt;
  const int64_t tile = int64_t(tt) * mmvim_scan::kItems;
  p.tiles = std::max<int64_t>(1, (s.length + tile - 1) / tile);
  p.softplus = softplus;
  p.scale = static_cast<float>(scale);
  p.B_lanes = shared_lanes(s.dim, s.B_groups);
  p.C_lanes = shared_lanes(s.dim, s.C_groups);
  return p;
}

bool bc_is_float(const DirTensors& d) {
  return d.B.scalar_type() == at::kFloat && d.x.scalar_type() != at::kFloat;
}

int64_t states_numel(const ScanParams& p) {
  return int64_t(p.ndirs) * p.batch * p.dim * p.tiles * p.state;
}

std::vector<at::Tensor> forward_impl(const std::vector<DirTensors>& dirs,
                                     const std::optional<at::Tensor>& z,
                                     double scale, bool softplus,
                                     bool return_last_state) {
  const auto s = mmvim_scan::check_inputs(kBackend, dirs, z);
  const auto& x = dirs[0].x;
  const DeviceGuard guard(x.device());
  auto f32 = x.options().dtype(at::kFloat);
  ScanParams p = base_params(dirs, s, z, softplus, scale);
  auto out = new_output({s.batch, s.length, s.dim}, x.options());
  auto ybuf = at::empty({p.ndirs == 2 ? s.batch : 0, s.length, s.dim}, f32);
  // zeros: the first tile's entry is never written (it starts at 0), and
  // an op's outputs must not hold uninitialised memory
  auto states = at::zeros({states_numel(p)}, f32);
  auto last = return_last_state ? at::zeros({s.batch, s.dim, s.state}, f32)
                                : at::empty({0, s.dim, s.state}, f32);
  p.out = out.data_ptr();
  p.ybuf = p.ndirs == 2 ? ybuf.data_ptr<float>() : nullptr;
  p.tile_states = states.data_ptr<float>();
  p.last = return_last_state ? last.data_ptr<float>() : nullptr;
  if (out.numel() > 0) {
    dispatch_dtype(x.scalar_type(), [&](auto tag) {
      mmvim_scan::launch_scan_fwd<decltype(tag)>(p, bc_is_float(dirs[0]),
                                                 current_stream());
    });
    check_launch();
  }
  return {out, states, last};
}

std::vector<at::Tensor> backward_impl(const std::vector<DirTensors>& dirs,
                                      const std::optional<at::Tensor>& z,
                                      const at::Tensor& dout_in,
                                      const at::Tensor& states, double scale,
                                      bool softplus) {
  auto dout = dout_in.contiguous();
  const auto s = mmvim_scan::check_inputs(kBackend, dirs, z, &dout);
  const auto& x = dirs[0].x;
  const DeviceGuard guard(x.device());
  auto f32 = x.options().dtype(at::kFloat);
  ScanParams p = base_params(dirs, s, z, softplus, scale);
  mmvim_scan::check_states(kBackend, states, x, at::kFloat, states_numel(p));
  // each direction's y, for dz
  auto ybuf = at::empty({z ? p.ndirs : 0, s.batch, s.length, s.dim}, f32);
  p.ybuf = z ? ybuf.data_ptr<float>() : nullptr;
  p.tile_states = const_cast<float*>(states.data_ptr<float>());
  p.dout = dout.data_ptr();
  std::vector<at::Tensor> grads;
  for (size_t k = 0; k < dirs.size(); ++k) {
    const auto& d = dirs[k];
    auto& q = p.dirs[k];
    grads.push_back(new_output({s.batch, s.length, s.dim}, x.options()));  // du
    grads.push_back(new_output({s.batch, s.length, s.dim}, x.options()));  // ddelta
    grads.push_back(at::zeros({s.dim, s.state}, f32));                     // dA
    grads.push_back(at::zeros(mmvim_scan::bc_grad_shape(d.B), f32));       // dB
    grads.push_back(at::zeros(mmvim_scan::bc_grad_shape(d.C), f32));       // dC
    grads.push_back(at::zeros({s.dim}, f32));                              // dD
    grads.push_back(at::zeros({s.dim}, f32));                              // dbias
    const size_t first = k * 7;
    q.du = grads[first].data_ptr();
    q.ddelta = grads[first + 1].data_ptr();
    q.dA = grads[first + 2].data_ptr<float>();
    q.dB = grads[first + 3].data_ptr<float>();
    q.dC = grads[first + 4].data_ptr<float>();
    q.dD = grads[first + 5].data_ptr<float>();
    q.dbias = grads[first + 6].data_ptr<float>();
  }
  auto dz = z ? new_output({s.batch, s.length, s.dim}, x.options())
              : at::empty({0}, x.options());
  p.dz = z ? dz.data_ptr() : nullptr;
  if (dout.numel() > 0) {
    dispatch_dtype(x.scalar_type(), [&](auto tag) {
      mmvim_scan::launch_scan_bwd<decltype(tag)>(p, bc_is_float(dirs[0]),
                                                 current_stream());
    });
    check_launch();
  }
  grads.push_back(dz);
  return grads;
}

at::Tensor conv_silu_impl(const at::Tensor& x, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias,
                          bool reverse) {
  mmvim_scan::check_conv_inputs(kBackend, x, weight, bias);
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              "depthwise conv + SiLU ", kBackend.name, " kernel: x must be "
              "float32, float16 or bfloat16, got ", dtype);
  const DeviceGuard guard(x.device());
  auto out = new_output({x.size(0), x.size(1), x.size(2)}, x.options());
  mmvim_scan::ConvParams p{};
  p.x = x.data_ptr();
  p.x_stride = strides3(x);
  p.weight = weight.data_ptr<float>();
  p.bias = data_or_null<float>(bias);
  p.width = static_cast<int>(weight.size(1));
  p.reverse = reverse;
  p.batch = x.size(0);
  p.length = x.size(1);
  p.dim = x.size(2);
  p.out = out.data_ptr();
  if (out.numel() > 0) {
    dispatch_dtype(dtype, [&](auto tag) {
      mmvim_scan::launch_conv_silu<decltype(tag)>(p, current_stream());
    });
    check_launch();
  }
  return out;
}

}  // namespace

// the CUDA kernel serves mmvim's ops on CUDA tensors; built under the SIMT
// emulation it serves the mmvim_simt twins on CPU tensors
#if defined(MMVIM_SIMT_EMULATION)
TORCH_LIBRARY_IMPL(mmvim_simt, CPU, m) {
#else
TORCH_LIBRARY_IMPL(mmvim, CUDA, m) {
#endif
  mmvim_scan::register_scan_ops(m, forward_impl, backward_impl,
                                conv_silu_impl);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  mmvim_scan::bind_test_switches(m);
#if defined(MMVIM_SIMT_EMULATION)
  m.def(
      "simt_launches",
      [] {
        std::lock_guard<std::mutex> lock(mmvim_simt::registry_mutex());
        std::vector<pybind11::dict> out;
        for (const auto& r : mmvim_simt::launch_records()) {
          pybind11::dict d;
          d["kernel"] = r.kernel;
          d["grid"] = pybind11::make_tuple(r.grid.x, r.grid.y, r.grid.z);
          d["block"] = pybind11::make_tuple(r.block.x, r.block.y, r.block.z);
          d["dynamic_smem"] = r.dynamic_smem;
          out.push_back(d);
        }
        mmvim_simt::launch_records().clear();
        return out;
      },
      "the kernel launches since the last call: name, grid, block, dynamic "
      "shared memory bytes (emulator only)");
  m.def("simt_set_dry_run", [](bool on) { mmvim_simt::dry_run() = on; },
        "record launches without running them (emulator only; outputs are "
        "left unwritten)");
#endif
}
