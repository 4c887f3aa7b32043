// Instantiation of the CUDA scan kernels for c10::Half inputs (one dtype per
// compile unit keeps the builds small and parallel).
#include "selective_scan_cuda.cuh"

namespace mmvim_scan {
MMVIM_SCAN_INSTANTIATE(c10::Half)
}  // namespace mmvim_scan
