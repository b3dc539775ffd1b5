// pybind11 glue of topk_teacher: keyword-only arguments → topk_teacher::Config / Args,
// then the launcher with the GIL released.  module.cpp calls def_cpu or def_cuda.
#pragma once

#include "common.h"
#include "pysd/topk_teacher.h"

namespace pysd {
namespace topk_teacher {

// `launch(config, args, stream)` is called once with the Args<In, A> matching `dtype`.
template <typename Launch>
void def(pybind11::module_& m, Launch launch) {
  namespace py = pybind11;
  using bind::ptr;
  m.def(
      "topk_teacher",
      [launch](const std::string& dtype, int64_t rows, int64_t cols, int64_t k, uintptr_t logits, int64_t stride,
               uintptr_t indices, uintptr_t values, double temperature, int format, uintptr_t stream) {
        Config c;
        c.rows = rows; c.cols = cols; c.k = k; c.temperature = temperature; c.format = format;
        bind::dispatch<true>(dtype, "topk_teacher", [&](auto tag_in) {
          using In = decltype(tag_in);
          using A = typename acc<In>::type;
          Args<In, A> a;
          a.logits = ptr<const In>(logits); a.stride = stride;
          a.indices = ptr<int64_t>(indices); a.values = ptr<A>(values);
          py::gil_scoped_release nogil;
          launch(c, a, stream);
        });
      },
      py::kw_only(), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("k"), py::arg("logits"),
      py::arg("stride"), py::arg("indices"), py::arg("values"), py::arg("temperature"), py::arg("format"),
      py::arg("stream") = 0);
}

inline void def_cpu(pybind11::module_& m) {
  def(m, [](const auto& c, const auto& a, uintptr_t) { run_cpu(c, a); });
}
inline void def_cuda(pybind11::module_& m) {
  def(m, [](const auto& c, const auto& a, uintptr_t stream) { run_cuda(c, a, stream); });
}

}  // namespace topk_teacher
}  // namespace pysd
