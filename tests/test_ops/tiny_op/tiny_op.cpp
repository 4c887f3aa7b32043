// The smallest extension the JIT loader can build (seconds, no ATen): the
// loader's tests build it where the scan kernels would take a minute.
#include <pybind11/pybind11.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("answer", [] { return 42; });
}
