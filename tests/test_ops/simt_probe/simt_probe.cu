// Probe kernels for the SIMT emulation (tests/test_ops/test_simt_emulation.py).
//
// The first group computes values whose expected results the test derives
// from CUDA's documented semantics; they run under the emulator on the CPU
// and, with nvcc, on a GPU. The second group breaks a rule on purpose (a
// collective some lanes skip, a deadlock, an out-of-bounds read): the
// emulator must stop each with an error naming it; they never run on a GPU.
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include <cstdint>

#include "simt.h"

// a named namespace: the emulator names kernels by their exported symbol
namespace simt_probe {

constexpr unsigned kFull = 0xffffffffu;

// out: (threads, 8) int32 per thread:
// [xor-butterfly sum, inclusive shfl_up scan, shfl_down by 1, broadcast of
//  lane 7, ballot of odd lanes, any(lane == 5), all(lane < 32), width-8 xor]
__global__ void warp_ops(const int* in, int* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x & 31;
  const int v = in[i];
  int sum = v;
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(kFull, sum, o);
  int scan = v;
  for (int o = 1; o < 32; o <<= 1) {
    const int up = __shfl_up_sync(kFull, scan, o);
    if (lane >= o) scan += up;
  }
  int* row = out + i * 8;
  row[0] = sum;
  row[1] = scan;
  row[2] = __shfl_down_sync(kFull, v, 1);
  row[3] = __shfl_sync(kFull, v, 7);
  row[4] = static_cast<int>(__ballot_sync(kFull, lane & 1));
  row[5] = __any_sync(kFull, lane == 5);
  row[6] = __all_sync(kFull, lane < 32);
  row[7] = __shfl_xor_sync(kFull, v, 4, 8);
}

// Block sums through static shared memory and a tree of __syncthreads,
// the same through dynamic shared memory, and the total by atomicAdd.
__global__ void block_sums(const float* in, float* sums, float* total,
                           int* counts) {
  __shared__ float tile[256];
  MMVIM_DYNAMIC_SHARED(float, dyn);
  const int t = threadIdx.x;
  const float v = in[blockIdx.x * blockDim.x + t];
  tile[t] = v;
  dyn[t] = 2.f * v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) {
      tile[t] += tile[t + s];
      dyn[t] += dyn[t + s];
    }
    __syncthreads();
  }
  const int positive = __syncthreads_count(v > 0.f);
  if (t == 0) {
    sums[2 * blockIdx.x] = tile[0];
    sums[2 * blockIdx.x + 1] = dyn[0];
    counts[blockIdx.x] = positive;
    atomicAdd(total, tile[0]);
  }
}

// --- rule breakers (emulator only) -------------------------------------
__global__ void lanes_skip_shuffle(int* out) {
  const int lane = threadIdx.x & 31;
  if (lane >= 16) return;  // half the warp leaves: the full mask is a lie
  out[lane] = __shfl_xor_sync(kFull, lane, 1);
}

__global__ void lanes_at_different_shuffles(int* out) {
  const int lane = threadIdx.x & 31;
  int v = lane;
  if (lane & 1)
    v = __shfl_xor_sync(kFull, v, 1);
  else
    v = __shfl_xor_sync(kFull, v, 2);
  out[lane] = v;
}

__global__ void threads_skip_syncthreads(int* out) {
  if (threadIdx.x >= 32) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void deadlock(int* out) {
  const int lane = threadIdx.x & 31;
  if (lane == 3)
    out[0] = __shfl_sync(kFull, lane, 0);
  else
    __syncthreads();
}

__global__ void shuffle_outside_mask(int* out) {
  const int lane = threadIdx.x & 31;
  if (lane < 16) out[lane] = __shfl_sync(0x0000ffffu, lane, 20);
}

__global__ void read_past_end(const float* in, float* out, int n) {
  out[0] = in[n];  // one element past the end: AddressSanitizer's to find
}

at::Tensor run_warp_ops(at::Tensor in) {
  TORCH_CHECK(in.scalar_type() == at::kInt && in.is_contiguous() &&
              in.numel() % 64 == 0);
  auto out = at::zeros({in.numel(), 8}, in.options());
  mmvim_scan::launch_kernel(warp_ops, dim3(in.numel() / 64), dim3(64), 0,
                            nullptr, in.data_ptr<int>(), out.data_ptr<int>());
  return out;
}

std::vector<at::Tensor> run_block_sums(at::Tensor in, int64_t threads,
                                          int64_t dynamic_smem) {
  TORCH_CHECK(in.scalar_type() == at::kFloat && in.numel() % threads == 0);
  const int blocks = static_cast<int>(in.numel() / threads);
  auto sums = at::zeros({blocks, 2}, in.options());
  auto total = at::zeros({1}, in.options());
  auto counts = at::zeros({blocks}, in.options().dtype(at::kInt));
  mmvim_scan::launch_kernel(block_sums, dim3(blocks),
                            dim3(static_cast<unsigned>(threads)),
                            static_cast<size_t>(dynamic_smem), nullptr,
                            in.data_ptr<float>(), sums.data_ptr<float>(),
                            total.data_ptr<float>(), counts.data_ptr<int>());
  return {sums, total, counts};
}

void allow_dynamic_smem(int64_t bytes) {
  TORCH_CHECK(cudaFuncSetAttribute(block_sums,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(bytes)) == cudaSuccess,
              "cudaFuncSetAttribute refused ", bytes, " bytes");
}

void run_rule_breaker(const std::string& name, at::Tensor buffer) {
  int* out = buffer.data_ptr<int>();
  const dim3 one(1), warp(32), two_warps(64);
  if (name == "lanes_skip_shuffle")
    mmvim_scan::launch_kernel(lanes_skip_shuffle, one, warp, 0, nullptr, out);
  else if (name == "lanes_at_different_shuffles")
    mmvim_scan::launch_kernel(lanes_at_different_shuffles, one, warp, 0,
                              nullptr, out);
  else if (name == "threads_skip_syncthreads")
    mmvim_scan::launch_kernel(threads_skip_syncthreads, one, two_warps, 0,
                              nullptr, out);
  else if (name == "deadlock")
    mmvim_scan::launch_kernel(deadlock, one, warp, 0, nullptr, out);
  else if (name == "shuffle_outside_mask")
    mmvim_scan::launch_kernel(shuffle_outside_mask, one, warp, 0, nullptr,
                              out);
  else if (name == "too_many_threads")
    mmvim_scan::launch_kernel(lanes_skip_shuffle, one, dim3(2048), 0, nullptr,
                              out);
  else
    TORCH_CHECK(false, "unknown rule breaker ", name);
}

void run_read_past_end(at::Tensor in) {
  auto out = at::zeros({1}, in.options());
  mmvim_scan::launch_kernel(read_past_end, dim3(1), dim3(1), 0, nullptr,
                            in.data_ptr<float>(), out.data_ptr<float>(),
                            static_cast<int>(in.numel()));
}

}  // namespace simt_probe

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace simt_probe;
  m.def("warp_ops", &run_warp_ops);
  m.def("block_sums", &run_block_sums);
  m.def("allow_dynamic_smem", &allow_dynamic_smem);
  m.def("rule_breaker", &run_rule_breaker);
  m.def("read_past_end", &run_read_past_end);
#if defined(MMVIM_SIMT_EMULATION)
  m.def("launches", [] {
    std::lock_guard<std::mutex> lock(mmvim_simt::registry_mutex());
    std::vector<std::string> names;
    for (const auto& r : mmvim_simt::launch_records())
      names.push_back(r.kernel + " " + std::to_string(r.grid.x) + "x" +
                      std::to_string(r.block.x) + " smem " +
                      std::to_string(r.dynamic_smem));
    mmvim_simt::launch_records().clear();
    return names;
  });
#endif
}
