// Instantiation of the CUDA scan kernels for float inputs (one dtype per
// compile unit keeps the builds small and parallel).
#include "selective_scan_cuda.cuh"

namespace mmvim_scan {
MMVIM_SCAN_INSTANTIATE(float)
}  // namespace mmvim_scan
