// pybind11 glue of partial_labels (keyword-only arguments); module.cpp calls def_cpu or def_cuda.
#pragma once

#include "common.h"
#include "pysd/partial_labels.h"

namespace pysd {
namespace partial_labels {

// `launch(config, args, stream)` is called once with the Args<In> matching `dtype`.
template <typename Launch>
void def(pybind11::module_& m, Launch launch) {
  namespace py = pybind11;
  using bind::ptr;
  m.def(
      "partial_labels",
      [launch](const std::string& dtype, int64_t rows, int64_t cols, uintptr_t probs, int64_t probs_stride,
               uintptr_t out, int64_t out_stride, int64_t k, bool renormalize, uintptr_t stream) {
        Config c;
        c.rows = rows; c.cols = cols; c.k = k; c.renormalize = renormalize;
        bind::dispatch<true>(dtype, "partial_labels", [&](auto tag) {
          using In = decltype(tag);
          Args<In> a;
          a.probs = ptr<const In>(probs); a.probs_stride = probs_stride;
          a.out = ptr<In>(out); a.out_stride = out_stride;
          py::gil_scoped_release nogil;
          launch(c, a, stream);
        });
      },
      py::kw_only(), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("probs"),
      py::arg("probs_stride"), py::arg("out"), py::arg("out_stride"), py::arg("k"), py::arg("renormalize"),
      py::arg("stream") = 0);
}

inline void def_cpu(pybind11::module_& m) {
  def(m, [](const auto& c, const auto& a, uintptr_t) { run_cpu(c, a); });
}
inline void def_cuda(pybind11::module_& m) {
  def(m, [](const auto& c, const auto& a, uintptr_t stream) { run_cuda(c, a, stream); });
}

}  // namespace partial_labels
}  // namespace pysd
