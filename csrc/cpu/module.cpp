// pybind11 module pysd._C: the CPU kernels behind raw pointers.  Python passes
// data pointers, sizes and strides; validation happened in pysd.ops.  Each op's
// glue lives in csrc/bind/<op>.h: one include and one def_cpu line per op.
#include <omp.h>

#include "../bind/kd_loss.h"
#include "../bind/knn_graph.h"
#include "../bind/partial_labels.h"
#include "../bind/propagate.h"
#include "../bind/sparse_kd_loss.h"
#include "../bind/topk_teacher.h"
#include "simd.h"

namespace py = pybind11;

namespace {
// a * b + c through the ISA dispatch: with a = 1 + 2^-23, b = 1 - 2^-23, c = -1 it is
// -2^-46 when the running clone fuses the multiply-add and 0 when it rounds a * b to 1.
PYSD_ISA_CLONES float isa_fma_probe(float a, float b, float c) { return a * b + c; }

// The kernels' float exp (pysd/common.h) through the same dispatch, for its accuracy test.
PYSD_ISA_CLONES void fexp_array(const float* x, float* out, int64_t n, bool nonpositive) {
  for (int64_t i = 0; i < n; ++i) out[i] = nonpositive ? pysd::fexp_le0(x[i]) : pysd::fexp(x[i]);
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pysd CPU kernels (raw-pointer interface; use the pysd package API)";
  pysd::kd_loss::def_cpu(m);
  pysd::knn_graph::def_cpu(m);
  pysd::partial_labels::def_cpu(m);
  pysd::propagate::def_cpu(m);
  pysd::sparse_kd_loss::def_cpu(m);
  pysd::topk_teacher::def_cpu(m);
  // OpenMP's team size is a per-thread setting: pysd._backend calls this with
  // torch.get_num_threads() before every launch, from the launching thread, so
  // the kernels follow torch.set_num_threads in any thread (DataLoader workers,
  // autograd threads, user threads) rather than the OpenMP default of all cores.
  m.def(
      "set_num_threads", [](int n) { omp_set_num_threads(n > 0 ? n : 1); }, py::arg("n"),
      "Team size of the calling thread's next OpenMP regions (omp_set_num_threads).");
  m.def(
      "fexp",
      [](uintptr_t x, uintptr_t out, int64_t n, bool nonpositive) {
        fexp_array(reinterpret_cast<const float*>(x), reinterpret_cast<float*>(out), n, nonpositive);
      },
      py::arg("x"), py::arg("out"), py::arg("n"), py::arg("nonpositive"),
      "out[i] = exp(x[i]) by the kernels' float exp (fexp_le0 when nonpositive): float32 buffers of n.");
  m.def("build_info", [] {
    py::dict d;
    d["version"] = PYSD_VERSION;
    d["compiler"] = PYSD_COMPILER;
    d["isa_paths"] = PYSD_ISA_PATHS;
    d["isa_active"] = PYSD_ISA_ACTIVE;
    volatile float one_up = 1.0f + 0x1p-23f, one_down = 1.0f - 0x1p-23f;
    d["isa_fma"] = isa_fma_probe(one_up, one_down, -1.0f) != 0.0f;
    d["openmp"] = std::to_string(_OPENMP);
    d["max_threads"] = omp_get_max_threads();
    return d;
  });
}
