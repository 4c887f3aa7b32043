// Host side of the CUDA selective scan: checks, allocation, dispatch on the
// input dtype, Python bindings. Same functions and return values as the CPU
// kernel (selective_scan_cpu.cpp), so one Python wrapper serves both.
#include <torch/extension.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>
#include <vector>

#include "selective_scan_cuda.h"
#include "selective_scan_interface.h"

namespace {

using mmvim_scan::DirTensors;
using mmvim_scan::new_output;
using mmvim_scan::ScanParams;

// Calls f(T{}) with T the kernel's element type for u's dtype (the three
// the kernels are instantiated for; check() has rejected the others).
template <typename F>
void dispatch_dtype(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(c10::Half{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    default: TORCH_CHECK(false, "selective scan CUDA kernel: unsupported dtype ", dtype);
  }
}

void check(const std::vector<DirTensors>& dirs,
           const std::optional<torch::Tensor>& z,
           const std::vector<torch::Tensor>& extra_io) {
  const auto& u = dirs[0].u;
  TORCH_CHECK(u.is_cuda(), "selective scan CUDA kernel: u must be a CUDA tensor");
  TORCH_CHECK(u.dim() == 3, "selective scan: u must be (batch, dim, length)");
  const auto dtype = u.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "selective scan CUDA kernel: u must be float32, float16 or bfloat16");
  TORCH_CHECK(dirs[0].A.size(1) <= 64,
              "selective scan CUDA kernel: state size N must be at most 64");
  const auto& Bt = dirs[0].Bt;
  TORCH_CHECK(Bt.dim() == 4 && Bt.size(0) == u.size(0) && Bt.size(2) == u.size(2) &&
                  Bt.size(3) == dirs[0].A.size(1),
              "selective scan: B and C must be (batch, groups, state, length) "
              "matching u and A");
  TORCH_CHECK(u.size(1) % Bt.size(1) == 0,
              "selective scan: B/C groups must divide the channels");
  std::vector<torch::Tensor> same_dtype(extra_io), fp32;
  if (z) same_dtype.push_back(*z);
  for (const auto& d : dirs) {
    TORCH_CHECK(d.u.sizes() == u.sizes() && d.delta.sizes() == u.sizes(),
                "selective scan: u and delta of every direction must be "
                "(batch, dim, length) of the same size");
    TORCH_CHECK(d.A.dim() == 2 && d.A.size(0) == u.size(1) &&
                    d.A.size(1) == dirs[0].A.size(1),
                "selective scan: A must be (dim, state)");
    TORCH_CHECK(d.Bt.sizes() == Bt.sizes() && d.Ct.sizes() == Bt.sizes(),
                "selective scan: B and C of every direction must have the same shape");
    same_dtype.insert(same_dtype.end(), {d.u, d.delta});
    fp32.insert(fp32.end(), {d.A, d.Bt, d.Ct});
    if (d.D) fp32.push_back(*d.D);
    if (d.bias) fp32.push_back(*d.bias);
  }
  for (const auto& x : same_dtype) {
    TORCH_CHECK(x.scalar_type() == dtype,
                "selective scan CUDA kernel: u, delta, z and dout must share a dtype");
  }
  for (const auto& x : fp32) {
    TORCH_CHECK(x.scalar_type() == at::kFloat,
                "selective scan CUDA kernel: A, B, C, D and delta_bias must be float32");
  }
  for (const auto& x : same_dtype) fp32.push_back(x);
  for (const auto& x : fp32) {
    TORCH_CHECK(x.is_cuda() && x.get_device() == u.get_device(),
                "selective scan CUDA kernel: all inputs must be on u's device");
    TORCH_CHECK(x.is_contiguous(), "selective scan CUDA kernel: inputs must be contiguous");
  }
}

ScanParams base_params(const std::vector<DirTensors>& dirs,
                       const std::optional<torch::Tensor>& z, bool softplus,
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

std::vector<torch::Tensor> forward_impl(const std::vector<DirTensors>& dirs,
                                        const std::optional<torch::Tensor>& z,
                                        double scale, bool softplus,
                                        bool return_last_state) {
  check(dirs, z, {});
  const auto& u = dirs[0].u;
  const c10::cuda::CUDAGuard guard(u.device());
  auto f32 = u.options().dtype(at::kFloat);
  auto out = new_output(u.sizes(), u.options());
  auto acc = new_output(u.sizes(), f32);
  auto last = new_output({return_last_state ? u.size(0) : 0, u.size(1), dirs[0].A.size(1)}, f32);
  ScanParams p = base_params(dirs, z, softplus, scale);
  p.out = out.data_ptr();
  p.acc = acc.data_ptr<float>();
  p.last = return_last_state ? last.data_ptr<float>() : nullptr;
  if (u.numel() > 0) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_dtype(u.scalar_type(), [&](auto tag) {
      mmvim_scan::launch_scan_fwd<decltype(tag)>(p, stream);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {out, acc, last};
}

std::vector<torch::Tensor> backward_impl(const std::vector<DirTensors>& dirs,
                                         const std::optional<torch::Tensor>& z,
                                         const torch::Tensor& dout_in,
                                         const torch::Tensor& acc,
                                         double scale, bool softplus) {
  auto dout = dout_in.contiguous();
  check(dirs, z, {dout});
  TORCH_CHECK(acc.scalar_type() == at::kFloat && acc.sizes() == dirs[0].u.sizes(),
              "selective scan CUDA kernel: acc must be the float32 (batch, dim, length) "
              "tensor the forward returned");
  const auto& u = dirs[0].u;
  const c10::cuda::CUDAGuard guard(u.device());
  auto f32 = u.options().dtype(at::kFloat);
  const int64_t N = dirs[0].A.size(1);
  const int64_t n_chunks = (u.size(2) + mmvim_scan::kChunk - 1) / mmvim_scan::kChunk;
  const int64_t threads = mmvim_scan::kThreads;
  const int64_t dim_padded = (u.size(1) + threads - 1) / threads * threads;
  auto gy = torch::empty({u.size(0), dim_padded, u.size(2)}, f32);
  auto checkpoints = torch::empty({u.size(0), dim_padded, n_chunks, N}, f32);
  ScanParams p = base_params(dirs, z, softplus, scale);
  p.dim_padded = dim_padded;
  p.dout = dout.data_ptr();
  p.acc_in = acc.data_ptr<float>();
  p.gy = gy.data_ptr<float>();
  p.checkpoints = checkpoints.data_ptr<float>();
  std::vector<torch::Tensor> grads;
  for (size_t k = 0; k < dirs.size(); ++k) {
    const auto& d = dirs[k];
    grads.push_back(new_output(d.u.sizes(), d.u.options()));      // du
    grads.push_back(new_output(d.delta.sizes(), d.u.options()));  // ddelta
    grads.push_back(torch::zeros_like(d.A));                       // dA
    grads.push_back(torch::zeros_like(d.Bt));                      // dBt
    grads.push_back(torch::zeros_like(d.Ct));                      // dCt
    grads.push_back(torch::zeros({u.size(1)}, f32));               // dD
    grads.push_back(torch::zeros({u.size(1)}, f32));               // dbias
    p.du[k] = grads[k * 7].data_ptr();
    p.ddelta[k] = grads[k * 7 + 1].data_ptr();
    p.dA[k] = grads[k * 7 + 2].data_ptr<float>();
    p.dBt[k] = grads[k * 7 + 3].data_ptr<float>();
    p.dCt[k] = grads[k * 7 + 4].data_ptr<float>();
    p.dD[k] = grads[k * 7 + 5].data_ptr<float>();
    p.dbias[k] = grads[k * 7 + 6].data_ptr<float>();
  }
  auto dz = z ? new_output(z->sizes(), z->options()) : torch::empty({0}, u.options());
  p.dz = z ? dz.data_ptr() : nullptr;
  if (u.numel() > 0) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_dtype(u.scalar_type(), [&](auto tag) {
      mmvim_scan::launch_scan_bwd<decltype(tag)>(p, stream);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  grads.push_back(dz);
  return grads;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  mmvim_scan::bind_scan(m, forward_impl, backward_impl, "CUDA");
}
