// pybind11 glue of knn_graph (keyword-only arguments); module.cpp calls def_cpu or
// def_cuda.  CUDA: `knn_graph(...)` merges one tile of X X^T into the running top-k
// lists.  CPU: `knn_search(...)`, the fused search (self-join or cross).
#pragma once

#include "common.h"
#include "pysd/knn_graph.h"

namespace pysd {
namespace knn_graph {

// `launch(tile, lists, stream)` merges one tile into the lists.
template <typename Launch>
void def(pybind11::module_& m, Launch launch) {
  namespace py = pybind11;
  using bind::ptr;
  m.def(
      "knn_graph",
      [launch](const std::string& dtype, uintptr_t dots, int64_t ld, int64_t i0, int64_t i1, int64_t j0,
               int64_t j1, uintptr_t sqnorm, bool exclude_self, uintptr_t sims, uintptr_t idx,
               int64_t k, uintptr_t stream) {
        bind::dispatch<false>(dtype, "knn_graph", [&](auto tag) {
          using A = decltype(tag);
          Tile<A> t;
          t.dots = ptr<const A>(dots); t.ld = ld;
          t.i0 = i0; t.i1 = i1; t.j0 = j0; t.j1 = j1;
          t.sqnorm = ptr<const A>(sqnorm); t.exclude_self = exclude_self;
          Lists<A> l;
          l.sims = ptr<A>(sims); l.idx = ptr<int32_t>(idx); l.k = k;
          py::gil_scoped_release nogil;
          launch(t, l, stream);
        });
      },
      py::kw_only(), py::arg("dtype"), py::arg("dots"), py::arg("ld"), py::arg("i0"), py::arg("i1"),
      py::arg("j0"), py::arg("j1"), py::arg("sqnorm"), py::arg("exclude_self"),
      py::arg("sims"), py::arg("idx"), py::arg("k"), py::arg("stream") = 0);
}

inline void def_cpu(pybind11::module_& m) {
  namespace py = pybind11;
  using bind::ptr;
  m.def(
      "knn_search",
      [](const std::string& dtype, uintptr_t x, int64_t n, int64_t d, int64_t ld, uintptr_t sqnorm, uintptr_t y,
         int64_t m, int64_t ldy, uintptr_t y_sqnorm, int64_t x_id0, int64_t y_id0, bool exclude_self,
         int64_t max_block, uintptr_t sims, uintptr_t idx, int64_t k) {
        bind::dispatch<false>(dtype, "knn_search", [&](auto tag) {
          using A = decltype(tag);
          Features<A> f;
          f.x = ptr<const A>(x); f.n = n; f.d = d; f.ld = ld;
          f.sqnorm = ptr<const A>(sqnorm); f.exclude_self = exclude_self; f.max_block = max_block;
          f.y = ptr<const A>(y); f.m = m; f.ldy = ldy; f.y_sqnorm = ptr<const A>(y_sqnorm);
          f.x_id0 = x_id0; f.y_id0 = y_id0;
          Lists<A> l;
          l.sims = ptr<A>(sims); l.idx = ptr<int32_t>(idx); l.k = k;
          py::gil_scoped_release nogil;
          search_cpu(f, l);
        });
      },
      py::kw_only(), py::arg("dtype"), py::arg("x"), py::arg("n"), py::arg("d"), py::arg("ld"), py::arg("sqnorm"),
      py::arg("y") = 0, py::arg("m") = 0, py::arg("ldy") = 0, py::arg("y_sqnorm") = 0, py::arg("x_id0") = 0,
      py::arg("y_id0") = 0, py::arg("exclude_self"), py::arg("max_block"), py::arg("sims"), py::arg("idx"),
      py::arg("k"),
      "Exact top-k of x's rows (n, d) against x (y = 0: the self-join) or against y's rows (m, d) by global "
      "ids, merged into the (n, k) lists, fused (csrc/cpu/knn_graph.cpp).");
}
inline void def_cuda(pybind11::module_& m) {
  def(m, [](const auto& t, const auto& l, uintptr_t stream) { merge_cuda(t, l, stream); });
}

}  // namespace knn_graph
}  // namespace pysd
