// pybind11 module pysd._C: the CPU kernels behind raw pointers.  Python
// passes data pointers, sizes and strides; validation happened in pysd.ops.
#include <omp.h>

#include "../bindings.h"
#include "../bindings_llm.h"
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
  pysd::bind::def_sparse_kd_loss(m, [](const auto& c, int phase, const auto& a, uintptr_t) {
    pysd::cpu::sparse_kd_loss(c, phase, a);
  });
  pysd::bind::def_topk_teacher(m, [](const auto& c, const auto& a, uintptr_t) { pysd::cpu::topk_teacher(c, a); });
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
