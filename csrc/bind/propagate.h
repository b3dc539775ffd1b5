// pybind11 glue of propagate: one call runs the solver and the row post-processing
// (no Python between them); module.cpp calls def_cpu or def_cuda.
#pragma once

#include <pybind11/stl.h>

#include <algorithm>
#include <tuple>
#include <vector>

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
          p.cols = cols; p.z = p.z_ext = ptr<const T>(slot[z]); p.given = ptr<const int64_t>(given);
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

// Per-column CG state of a stepped solve (propagate_cg_update / propagate_cg_direction advance it).
struct CgColumns {
  std::vector<Column> col;
};

template <typename T>
Csr<T> csr(int64_t n, uintptr_t indptr, uintptr_t indices, uintptr_t values) {
  Csr<T> g;
  g.n = n; g.indptr = bind::ptr<const int64_t>(indptr); g.indices = bind::ptr<const int32_t>(indices);
  g.values = bind::ptr<const T>(values);
  return g;
}

// The CPU solver steps (pysd/propagate.h, *_step_cpu) for a driver in Python: pysd/_cpp/propagate.py
// runs them with the halo exchange and all-reduces of pysd.distributed between them.  Pointers as
// in `propagate`; `sums` is (cols,) float64; `indices` index the *_ext arrays.
inline void def_steps_cpu(pybind11::module_& m) {
  namespace py = pybind11;
  using bind::ptr;
  py::class_<CgColumns>(m, "PropagateCgColumns")
      .def(py::init([](int64_t cols, uintptr_t bb, double tol) {
             CgColumns s;
             s.col.resize(cols);
             cg_init_columns(s.col.data(), ptr<const double>(bb), cols, tol);
             return s;
           }),
           py::kw_only(), py::arg("cols"), py::arg("bb"), py::arg("tol"),
           "Column state after x0 = 0 from the (cols,) float64 totals b.b.")
      .def_property_readonly("active", [](const CgColumns& s) {
        return std::any_of(s.col.begin(), s.col.end(), [](const Column& c) { return c.active != 0; });
      })
      .def("residual", [](const CgColumns& s, uintptr_t out) {
        for (size_t c = 0; c < s.col.size(); ++c) ptr<double>(out)[c] = cg_residual(s.col[c]);
      }, py::arg("out"), "||r|| / ||b|| per column into (cols,) float64 `out`.");
  m.def("propagate_copy_step", [](const std::string& dtype, int64_t n, int64_t cols, uintptr_t src, uintptr_t dst,
                                  uintptr_t zero, uintptr_t sums) {
    bind::dispatch<false>(dtype, "propagate_copy_step", [&](auto tag) {
      using T = decltype(tag);
      py::gil_scoped_release nogil;
      copy_step_cpu(ptr<const T>(src), ptr<T>(dst), ptr<T>(zero), n, cols, ptr<double>(sums));
    });
  }, py::kw_only(), py::arg("dtype"), py::arg("n"), py::arg("cols"), py::arg("src"), py::arg("dst"),
     py::arg("zero"), py::arg("sums"));
  m.def("propagate_matvec_step", [](const std::string& dtype, int64_t n, int64_t cols, uintptr_t indptr,
                                    uintptr_t indices, uintptr_t values, uintptr_t p_ext, uintptr_t p, uintptr_t q,
                                    double alpha, uintptr_t sums) {
    bind::dispatch<false>(dtype, "propagate_matvec_step", [&](auto tag) {
      using T = decltype(tag);
      py::gil_scoped_release nogil;
      matvec_step_cpu(csr<T>(n, indptr, indices, values), ptr<const T>(p_ext), ptr<const T>(p), ptr<T>(q), cols,
                      alpha, ptr<double>(sums));
    });
  }, py::kw_only(), py::arg("dtype"), py::arg("n"), py::arg("cols"), py::arg("indptr"), py::arg("indices"),
     py::arg("values"), py::arg("p_ext"), py::arg("p"), py::arg("q"), py::arg("alpha"), py::arg("sums"));
  m.def("propagate_cg_update_step", [](const std::string& dtype, CgColumns& s, int64_t n, uintptr_t x, uintptr_t r,
                                       uintptr_t p, uintptr_t q, uintptr_t pq, uintptr_t sums) {
    bind::dispatch<false>(dtype, "propagate_cg_update_step", [&](auto tag) {
      using T = decltype(tag);
      const int64_t cols = int64_t(s.col.size());
      std::vector<T> step(cols);
      py::gil_scoped_release nogil;
      cg_step_columns(s.col.data(), ptr<const double>(pq), step.data(), cols);
      update_step_cpu(ptr<T>(x), ptr<T>(r), ptr<const T>(p), ptr<const T>(q), step.data(), n, cols, ptr<double>(sums));
    });
  }, py::kw_only(), py::arg("dtype"), py::arg("columns"), py::arg("n"), py::arg("x"), py::arg("r"), py::arg("p"),
     py::arg("q"), py::arg("pq"), py::arg("sums"),
     "Step lengths from the p.q totals `pq`, then x += a p, r -= a q (r.r sums into `sums`).");
  m.def("propagate_cg_direction_step", [](const std::string& dtype, CgColumns& s, int64_t n, uintptr_t p,
                                          uintptr_t r, uintptr_t rr) {
    return bind::dispatch<false>(dtype, "propagate_cg_direction_step", [&](auto tag) {
      using T = decltype(tag);
      const int64_t cols = int64_t(s.col.size());
      std::vector<T> beta(cols);
      py::gil_scoped_release nogil;
      const bool any = cg_direction_columns(s.col.data(), ptr<const double>(rr), beta.data(), cols);
      if (any) direction_step_cpu(ptr<T>(p), ptr<const T>(r), beta.data(), n, cols);
      return any;
    });
  }, py::kw_only(), py::arg("dtype"), py::arg("columns"), py::arg("n"), py::arg("p"), py::arg("r"), py::arg("rr"),
     "Convergence and direction coefficients from the r.r totals `rr`, then p = r + beta p unless every "
     "column stopped; returns whether any column is still active.");
  m.def("propagate_zhou_step", [](const std::string& dtype, int64_t n, int64_t cols, uintptr_t indptr,
                                  uintptr_t indices, uintptr_t values, uintptr_t y, uintptr_t z_ext, uintptr_t z,
                                  uintptr_t out, double alpha, uintptr_t sums) {
    bind::dispatch<false>(dtype, "propagate_zhou_step", [&](auto tag) {
      using T = decltype(tag);
      py::gil_scoped_release nogil;
      zhou_step_cpu(csr<T>(n, indptr, indices, values), ptr<const T>(y), ptr<const T>(z_ext), ptr<const T>(z),
                    ptr<T>(out), cols, alpha, ptr<double>(sums));
    });
  }, py::kw_only(), py::arg("dtype"), py::arg("n"), py::arg("cols"), py::arg("indptr"), py::arg("indices"),
     py::arg("values"), py::arg("y"), py::arg("z_ext"), py::arg("z"), py::arg("out"), py::arg("alpha"),
     py::arg("sums"));
  m.def("propagate_zhou_check", [](int64_t cols, uintptr_t yy, uintptr_t d2, double tol, uintptr_t residual) {
    return zhou_check_columns(ptr<const double>(yy), ptr<const double>(d2), ptr<double>(residual), cols, tol);
  }, py::kw_only(), py::arg("cols"), py::arg("yy"), py::arg("d2"), py::arg("tol"), py::arg("residual"),
     "||dz|| / ||y|| per column into `residual` from the totals `yy`, `d2`; returns whether all converged.");
  m.def("propagate_flips_step", [](const std::string& dtype, int64_t n, int64_t cols, uintptr_t z0, uintptr_t z1) {
    return bind::dispatch<false>(dtype, "propagate_flips_step", [&](auto tag) {
      using T = decltype(tag);
      py::gil_scoped_release nogil;
      return flips_step_cpu(ptr<const T>(z0), ptr<const T>(z1), n, cols);
    });
  }, py::kw_only(), py::arg("dtype"), py::arg("n"), py::arg("cols"), py::arg("z0"), py::arg("z1"));
  m.def("propagate_post_step", [](const std::string& dtype, int64_t n, int64_t cols, uintptr_t indptr,
                                  uintptr_t indices, uintptr_t values, uintptr_t z_ext, uintptr_t z, uintptr_t given,
                                  uintptr_t scores, uintptr_t oos, uintptr_t labels, uintptr_t confidence,
                                  uintptr_t weight, uintptr_t margin) {
    bind::dispatch<false>(dtype, "propagate_post_step", [&](auto tag) {
      using T = decltype(tag);
      PostArgs<T> a;
      a.cols = cols; a.z = ptr<const T>(z); a.z_ext = ptr<const T>(z_ext); a.given = ptr<const int64_t>(given);
      a.scores = ptr<T>(scores); a.oos = ptr<T>(oos); a.labels = ptr<int64_t>(labels);
      a.confidence = ptr<T>(confidence); a.weight = ptr<T>(weight); a.margin = ptr<T>(margin);
      py::gil_scoped_release nogil;
      post_cpu(csr<T>(n, indptr, indices, values), a);
    });
  }, py::kw_only(), py::arg("dtype"), py::arg("n"), py::arg("cols"), py::arg("indptr"), py::arg("indices"),
     py::arg("values"), py::arg("z_ext"), py::arg("z"), py::arg("given"), py::arg("scores"), py::arg("oos"),
     py::arg("labels"), py::arg("confidence"), py::arg("weight"), py::arg("margin"));
}

inline void def_cpu(pybind11::module_& m) {
  def_steps_cpu(m);
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
