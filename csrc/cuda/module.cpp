// pybind11 module pysd._C_cuda: the CUDA kernels behind raw pointers and a
// stream handle.  Compiled by the host compiler; the CUDA runtime is linked
// statically, so importing works without a GPU and a call fails cleanly.
#include "../bindings.h"
#include "../bindings_llm.h"
#include "ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "pysd CUDA kernels (raw-pointer interface; use the pysd package API)";
  pysd::bind::def_kd_loss(m, [](const auto& c, const auto& a, uintptr_t stream) {
    pysd::cuda::kd_loss(c, a, stream);
  });
  pysd::bind::def_partial_labels(m, [](const auto& c, const auto& a, uintptr_t stream) {
    pysd::cuda::partial_labels(c, a, stream);
  });
  pysd::bind::def_knn_merge(m, [](const auto& t, const auto& l, uintptr_t stream) {
    pysd::cuda::knn_merge(t, l, stream);
  });
  pysd::bind::def_propagate(
      m, [](const auto& g, const auto& a, uintptr_t st) { return pysd::cuda::propagate_cg(g, a, st); },
      [](const auto& g, const auto& a, uintptr_t st) { return pysd::cuda::propagate_iterate(g, a, st); },
      [](const auto& g, const auto& a, uintptr_t st) { pysd::cuda::propagate_post(g, a, st); });
  pysd::bind::def_sparse_kd_loss(m, [](const auto& c, int phase, const auto& a, uintptr_t stream) {
    pysd::cuda::sparse_kd_loss(c, phase, a, stream);
  });
  pysd::bind::def_topk_teacher(m, [](const auto& c, const auto& a, uintptr_t stream) {
    pysd::cuda::topk_teacher(c, a, stream);
  });
  m.def("device_count", &pysd::cuda::device_count);
  m.def("build_info", [] {
    py::dict d;
    d["version"] = PYSD_VERSION;
    d["cuda_runtime"] = pysd::cuda::runtime_version();
    d["cuda_archs"] = PYSD_CUDA_ARCHS;
    return d;
  });
}
