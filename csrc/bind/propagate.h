// pybind11 glue of propagate: one call runs the solver and the row post-processing
// (no Python between them); module.cpp calls def_cpu or def_cuda.
#pragma once

#include <pybind11/stl.h>

#include <tuple>

#include "common.h"
#include "pysd/propagate.h"

namespace pysd {
namespace propagate {

// `cg(g, args, stream)` returns the iteration count, `iterate(g, args, stream)` the pair
// (iterations, flips), `post(g, args, stream)` writes the row outputs.
//
// Buffers: `seeds` (n, cols) is overwritten (cg keeps its residual there); `a`, `b`, `c` are
// (n, cols) work buffers that end up holding (raw Z, scores, oos scores) in the order given
// by the returned `slots`: indices into (a, b, c).
template <typename Cg, typename Iterate, typename Post>
void def(pybind11::module_& m, Cg cg, Iterate iterate, Post post) {
  namespace py = pybind11;
  using bind::ptr;
  bind::export_codes(m, "propagate.Solver", {{"CG", kCg}, {"ITERATE", kIterate}});
  m.def(
      "propagate",
      [=](const std::string& dtype, int solver, int64_t n, int64_t cols, uintptr_t indptr, uintptr_t indices,
          uintptr_t values, uintptr_t seeds, uintptr_t given, uintptr_t a, uintptr_t b, uintptr_t c,
          uintptr_t residual, uintptr_t labels, uintptr_t confidence, uintptr_t weight, uintptr_t margin,
          double alpha, int64_t max_iter, double tol, uintptr_t stream) {
        if (solver != kCg && solver != kIterate) throw py::value_error("propagate: unknown solver code");
        return bind::dispatch<false>(dtype, "propagate", [&](auto tag) {
          using T = decltype(tag);
          Csr<T> g;
          g.n = n; g.indptr = ptr<const int64_t>(indptr); g.indices = ptr<const int32_t>(indices);
          g.values = ptr<const T>(values);
          int64_t it = 0, flips = -1;
          int z = 0, scores = 0, oos = 0;  // slots of the outputs in (a, b, c)
          const uintptr_t slot[3] = {a, b, c};
          py::gil_scoped_release nogil;
          if (solver == kCg) {
            CgArgs<T> s;
            s.cols = cols; s.x = ptr<T>(a); s.r = ptr<T>(seeds); s.p = ptr<T>(b); s.q = ptr<T>(c);
            s.residual = ptr<double>(residual); s.alpha = alpha; s.max_iter = max_iter; s.tol = tol;
            it = cg(g, s, stream);
            z = 0; scores = 2; oos = 1;  // x; q and p are free after the solve
          } else {
            IterArgs<T> s;
            s.cols = cols; s.y = ptr<const T>(seeds); s.z0 = ptr<T>(a); s.z1 = ptr<T>(b);
            s.residual = ptr<double>(residual); s.alpha = alpha; s.max_iter = max_iter; s.tol = tol;
            std::tie(it, flips) = iterate(g, s, stream);
            z = it % 2; scores = 1 - z; oos = 2;  // the last iterate; the other buffer is free
          }
          PostArgs<T> p;
          p.cols = cols; p.z = ptr<const T>(slot[z]); p.given = ptr<const int64_t>(given);
          p.scores = ptr<T>(slot[scores]); p.oos = ptr<T>(slot[oos]); p.labels = ptr<int64_t>(labels);
          p.confidence = ptr<T>(confidence); p.weight = ptr<T>(weight); p.margin = ptr<T>(margin);
          post(g, p, stream);
          return std::make_tuple(it, flips, std::make_tuple(z, scores, oos));
        });
      },
      py::kw_only(), py::arg("dtype"), py::arg("solver"), py::arg("n"), py::arg("cols"), py::arg("indptr"),
      py::arg("indices"), py::arg("values"), py::arg("seeds"), py::arg("given"), py::arg("a"), py::arg("b"),
      py::arg("c"), py::arg("residual"), py::arg("labels"), py::arg("confidence"), py::arg("weight"),
      py::arg("margin"), py::arg("alpha"), py::arg("max_iter"), py::arg("tol"), py::arg("stream") = 0);
}

inline void def_cpu(pybind11::module_& m) {
  def(
      m,
      [](const auto& g, const auto& a, uintptr_t) {
        int64_t it = 0;
        cg_cpu(g, a, &it);
        return it;
      },
      [](const auto& g, const auto& a, uintptr_t) {
        int64_t it = 0, fl = 0;
        iterate_cpu(g, a, &it, &fl);
        return std::make_pair(it, fl);
      },
      [](const auto& g, const auto& a, uintptr_t) { post_cpu(g, a); });
}

inline void def_cuda(pybind11::module_& m) {
  def(
      m, [](const auto& g, const auto& a, uintptr_t st) { return cg_cuda(g, a, st); },
      [](const auto& g, const auto& a, uintptr_t st) { return iterate_cuda(g, a, st); },
      [](const auto& g, const auto& a, uintptr_t st) { post_cuda(g, a, st); });
}

}  // namespace propagate
}  // namespace pysd
