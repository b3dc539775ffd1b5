// pybind11 module pysd._C: the CPU kernels behind raw pointers.  Python
// passes data pointers, sizes and strides; validation happened in pysd.ops.
#include <omp.h>

#include "../bindings.h"
#include "ops.h"
#include "simd.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "pysd CPU kernels (raw-pointer interface; use the pysd package API)";
  pysd::bind::def_kd_loss(m, [](const auto& c, const auto& a, uintptr_t) { pysd::cpu::kd_loss(c, a); });
  pysd::bind::def_partial_labels(m, [](const auto& c, const auto& a, uintptr_t) {
    pysd::cpu::partial_labels(c, a);
  });
  pysd::bind::def_knn_merge(m, [](const auto& t, const auto& l, uintptr_t) { pysd::cpu::knn_merge(t, l); });
  pysd::bind::def_propagate(
      m,
      [](const auto& g, const auto& a, uintptr_t) {
        int64_t it = 0;
        pysd::cpu::propagate_cg(g, a, &it);
        return it;
      },
      [](const auto& g, const auto& a, uintptr_t) {
        int64_t it = 0, fl = 0;
        pysd::cpu::propagate_iterate(g, a, &it, &fl);
        return std::make_pair(it, fl);
      },
      [](const auto& g, const auto& a, uintptr_t) { pysd::cpu::propagate_post(g, a); });
  // OpenMP's team size is a per-thread setting: pysd._backend calls this with
  // torch.get_num_threads() before every launch, from the launching thread, so
  // the kernels follow torch.set_num_threads in any thread (DataLoader workers,
  // autograd threads, user threads) rather than the OpenMP default of all cores.
  m.def(
      "set_num_threads", [](int n) { omp_set_num_threads(n > 0 ? n : 1); }, py::arg("n"),
      "Team size of the calling thread's next OpenMP regions (omp_set_num_threads).");
  m.def("build_info", [] {
    py::dict d;
    d["version"] = PYSD_VERSION;
    d["compiler"] = PYSD_COMPILER;
    d["isa_paths"] = PYSD_ISA_PATHS;
    d["openmp"] = std::to_string(_OPENMP);
    d["max_threads"] = omp_get_max_threads();
    return d;
  });
}
