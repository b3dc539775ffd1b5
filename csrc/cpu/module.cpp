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
  m.def("build_info", [] {
    py::dict d;
    d["version"] = PYSD_VERSION;
    d["compiler"] = PYSD_COMPILER;
    d["isa_paths"] = PYSD_ISA_PATHS;
    d["isa_active"] = PYSD_ISA_ACTIVE;
    d["openmp"] = std::to_string(_OPENMP);
    d["max_threads"] = omp_get_max_threads();
    return d;
  });
}
