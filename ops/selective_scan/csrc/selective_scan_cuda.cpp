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
                                       /*max_state=*/64};
struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};
cudaStream_t current_stream() { return nullptr; }
void check_launch() {}  // the emulator throws on a bad launch
#else
constexpr mmvim_scan::Backend kBackend{"CUDA", c10::DeviceType::CUDA,
                                       /*float32_weights=*/true,
                                       /*max_state=*/64};
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

ScanParams base_params(const std::vector<DirTensors>& dirs,
                       const std::optional<at::Tensor>& z, bool softplus,
                       double scale) {
  ScanParams p{};
  const auto& u = dirs[0].u;
  p.ndirs = static_cast<int>(dirs.size());
  for (size_t k = 0; k < dirs.size(); ++k) {
    const auto& d = dirs[k];
    p.dirs[k] = mmvim_scan::DirParams{
        d.u.data_ptr(), d.delta.data_ptr(), d.A.data_ptr<float>(),
        d.Bt.data_ptr<float>(), d.Ct.data_ptr<float>(),
        d.D ? d.D->data_ptr<float>() : nullptr,
        d.bias ? d.bias->data_ptr<float>() : nullptr, d.reverse};
  }
  p.z = z ? z->data_ptr() : nullptr;
  p.batch = u.size(0);
  p.dim = u.size(1);
  p.length = u.size(2);
  p.state = dirs[0].A.size(1);
  p.groups = dirs[0].Bt.size(1);
  p.softplus = softplus;
  p.scale = static_cast<float>(scale);
  p.warp_uniform_group = (p.dim / p.groups) % 32 == 0;
  return p;
}

std::vector<at::Tensor> forward_impl(const std::vector<DirTensors>& dirs,
                                        const std::optional<at::Tensor>& z,
                                        double scale, bool softplus,
                                        bool return_last_state) {
  mmvim_scan::check_inputs(kBackend, dirs, z);
  const auto& u = dirs[0].u;
  const DeviceGuard guard(u.device());
  auto f32 = u.options().dtype(at::kFloat);
  auto out = new_output(u.sizes(), u.options());
  auto acc = new_output(u.sizes(), f32);
  auto last = new_output({return_last_state ? u.size(0) : 0, u.size(1), dirs[0].A.size(1)}, f32);
  ScanParams p = base_params(dirs, z, softplus, scale);
  p.out = out.data_ptr();
  p.acc = acc.data_ptr<float>();
  p.last = return_last_state ? last.data_ptr<float>() : nullptr;
  if (u.numel() > 0) {
    dispatch_dtype(u.scalar_type(), [&](auto tag) {
      mmvim_scan::launch_scan_fwd<decltype(tag)>(p, current_stream());
    });
    check_launch();
  } else if (return_last_state) {
    last.zero_();  // no token: the state stays at its zero start
  }
  return {out, acc, last};
}

std::vector<at::Tensor> backward_impl(const std::vector<DirTensors>& dirs,
                                         const std::optional<at::Tensor>& z,
                                         const at::Tensor& dout_in,
                                         const at::Tensor& acc,
                                         double scale, bool softplus) {
  auto dout = dout_in.contiguous();
  mmvim_scan::check_inputs(kBackend, dirs, z, &dout, &acc);
  const auto& u = dirs[0].u;
  const DeviceGuard guard(u.device());
  auto f32 = u.options().dtype(at::kFloat);
  const int64_t N = dirs[0].A.size(1);
  const int64_t n_chunks = (u.size(2) + mmvim_scan::kChunk - 1) / mmvim_scan::kChunk;
  const int64_t threads = mmvim_scan::kThreads;
  const int64_t dim_padded = (u.size(1) + threads - 1) / threads * threads;
  auto gy = at::empty({u.size(0), dim_padded, u.size(2)}, f32);
  auto checkpoints = at::empty({u.size(0), dim_padded, n_chunks, N}, f32);
  ScanParams p = base_params(dirs, z, softplus, scale);
  p.dim_padded = dim_padded;
  p.dout = dout.data_ptr();
  p.acc_in = acc.data_ptr<float>();
  p.gy = gy.data_ptr<float>();
  p.checkpoints = checkpoints.data_ptr<float>();
  std::vector<at::Tensor> grads;
  for (size_t k = 0; k < dirs.size(); ++k) {
    const auto& d = dirs[k];
    grads.push_back(new_output(d.u.sizes(), d.u.options()));      // du
    grads.push_back(new_output(d.delta.sizes(), d.u.options()));  // ddelta
    grads.push_back(at::zeros_like(d.A));                       // dA
    grads.push_back(at::zeros_like(d.Bt));                      // dBt
    grads.push_back(at::zeros_like(d.Ct));                      // dCt
    grads.push_back(at::zeros({u.size(1)}, f32));               // dD
    grads.push_back(at::zeros({u.size(1)}, f32));               // dbias
    p.du[k] = grads[k * 7].data_ptr();
    p.ddelta[k] = grads[k * 7 + 1].data_ptr();
    p.dA[k] = grads[k * 7 + 2].data_ptr<float>();
    p.dBt[k] = grads[k * 7 + 3].data_ptr<float>();
    p.dCt[k] = grads[k * 7 + 4].data_ptr<float>();
    p.dD[k] = grads[k * 7 + 5].data_ptr<float>();
    p.dbias[k] = grads[k * 7 + 6].data_ptr<float>();
  }
  auto dz = z ? new_output(z->sizes(), z->options()) : at::empty({0}, u.options());
  p.dz = z ? dz.data_ptr() : nullptr;
  if (u.numel() > 0) {
    dispatch_dtype(u.scalar_type(), [&](auto tag) {
      mmvim_scan::launch_scan_bwd<decltype(tag)>(p, current_stream());
    });
    check_launch();
  }
  grads.push_back(dz);
  return grads;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  mmvim_scan::bind_scan(m, forward_impl, backward_impl, kBackend.name);
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
#endif
}
