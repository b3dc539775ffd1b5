// pybind11 module pysd._C_cuda: the CUDA kernels behind raw pointers and a
// stream handle.  Compiled by the host compiler; the CUDA runtime is linked
// statically, so importing works without a GPU and a call fails cleanly.
// Each op's glue lives in csrc/bind/<op>.h: one include and one def_cuda line per op.
#include "../bind/kd_loss.h"
#include "../bind/knn_graph.h"
#include "../bind/partial_labels.h"
#include "../bind/propagate.h"
#include "../bind/sparse_kd_loss.h"
#include "../bind/topk_teacher.h"
#include "runtime.h"

namespace py = pybind11;

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "pysd CUDA kernels (raw-pointer interface; use the pysd package API)";
  pysd::kd_loss::def_cuda(m);
  pysd::knn_graph::def_cuda(m);
  pysd::partial_labels::def_cuda(m);
  pysd::propagate::def_cuda(m);
  pysd::sparse_kd_loss::def_cuda(m);
  pysd::topk_teacher::def_cuda(m);
  m.def("device_count", &pysd::cuda::device_count);
  m.def("build_info", [] {
    py::dict d;
    d["version"] = PYSD_VERSION;
    d["cuda_runtime"] = pysd::cuda::runtime_version();
    d["cuda_archs"] = PYSD_CUDA_ARCHS;
    return d;
  });
}
