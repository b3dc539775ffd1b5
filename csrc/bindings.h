// Shared pybind11 glue of the CPU (_C) and CUDA (_C_cuda) modules: turns the
// Python-side integers (pointers, sizes, strides, option codes) into kernel
// arguments and calls a launcher with the GIL released.
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "pysd/kd_loss.h"
#include "pysd/partial_labels.h"
#include "pysd/knn_graph.h"
#include "pysd/propagate.h"

namespace pysd {
namespace bind {

namespace py = pybind11;

template <typename T> T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

// `launch(config, args)` is called once with the Args<In, A> matching `dtype`.
template <typename Launch>
void def_kd_loss(py::module_& m, Launch launch) {
  m.def(
      "kd_loss",
      [launch](const std::string& dtype, int64_t rows, int64_t cols, uintptr_t student,
               int64_t student_stride, uintptr_t teacher, int64_t teacher_stride,
               uintptr_t target, uintptr_t weight, uintptr_t grad_scale, uintptr_t grad,
               int64_t grad_stride, uintptr_t loss, int divergence, int teacher_format,
               double beta, double temperature, double soft_coef, double hard_weight,
               double label_smoothing, int64_t ignore_index, uintptr_t stream) {
        kd::Config c;
        c.rows = rows; c.cols = cols; c.divergence = divergence;
        c.teacher_format = teacher_format; c.beta = beta; c.temperature = temperature;
        c.soft_coef = soft_coef; c.hard_weight = hard_weight;
        c.label_smoothing = label_smoothing; c.ignore_index = ignore_index;
        c.has_target = target != 0; c.compute_grad = grad != 0;
        auto run = [&](auto tag_in, auto tag_acc) {
          using In = decltype(tag_in);
          using A = decltype(tag_acc);
          kd::Args<In, A> a;
          a.student = ptr<const In>(student); a.student_stride = student_stride;
          a.teacher = ptr<const In>(teacher); a.teacher_stride = teacher_stride;
          a.target = ptr<const int64_t>(target); a.weight = ptr<const A>(weight);
          a.grad_scale = ptr<const double>(grad_scale);
          a.grad = ptr<In>(grad); a.grad_stride = grad_stride;
          a.loss = ptr<A>(loss);
          py::gil_scoped_release nogil;
          launch(c, a, stream);
        };
        if (dtype == "float32") run(float{}, float{});
        else if (dtype == "float64") run(double{}, double{});
        else if (dtype == "bfloat16") run(bf16_t{}, float{});
        else if (dtype == "float16") run(f16_t{}, float{});
        else throw py::type_error("kd_loss: unsupported dtype '" + dtype + "'");
      },
      py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("student"),
      py::arg("student_stride"), py::arg("teacher"), py::arg("teacher_stride"),
      py::arg("target"), py::arg("weight"), py::arg("grad_scale"), py::arg("grad"),
      py::arg("grad_stride"), py::arg("loss"), py::arg("divergence"),
      py::arg("teacher_format"), py::arg("beta"), py::arg("temperature"),
      py::arg("soft_coef"), py::arg("hard_weight"), py::arg("label_smoothing"),
      py::arg("ignore_index"), py::arg("stream") = 0);
}

// `launch(config, args, stream)` is called once with the Args<In> matching `dtype`.
template <typename Launch>
void def_partial_labels(py::module_& m, Launch launch) {
  m.def(
      "partial_labels",
      [launch](const std::string& dtype, int64_t rows, int64_t cols, uintptr_t probs,
               int64_t probs_stride, uintptr_t out, int64_t out_stride, int64_t k,
               bool renormalize, uintptr_t stream) {
        pll::Config c;
        c.rows = rows; c.cols = cols; c.k = k; c.renormalize = renormalize;
        auto run = [&](auto tag) {
          using In = decltype(tag);
          pll::Args<In> a;
          a.probs = ptr<const In>(probs); a.probs_stride = probs_stride;
          a.out = ptr<In>(out); a.out_stride = out_stride;
          py::gil_scoped_release nogil;
          launch(c, a, stream);
        };
        if (dtype == "float32") run(float{});
        else if (dtype == "float64") run(double{});
        else if (dtype == "bfloat16") run(bf16_t{});
        else if (dtype == "float16") run(f16_t{});
        else throw py::type_error("partial_labels: unsupported dtype '" + dtype + "'");
      },
      py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("probs"),
      py::arg("probs_stride"), py::arg("out"), py::arg("out_stride"), py::arg("k"),
      py::arg("renormalize"), py::arg("stream") = 0);
}

// `launch(tile, lists, stream)` merges one tile of X X^T into the top-k lists.
template <typename Launch>
void def_knn_merge(py::module_& m, Launch launch) {
  m.def(
      "knn_merge",
      [launch](const std::string& dtype, uintptr_t dots, int64_t ld, int64_t i0, int64_t i1, int64_t j0,
               int64_t j1, int64_t col_from, uintptr_t sqnorm, bool exclude_self, uintptr_t sims,
               uintptr_t idx, int64_t k, uintptr_t stream) {
        auto run = [&](auto tag) {
          using A = decltype(tag);
          knn::Tile<A> t;
          t.dots = ptr<const A>(dots); t.ld = ld;
          t.i0 = i0; t.i1 = i1; t.j0 = j0; t.j1 = j1; t.col_from = col_from;
          t.sqnorm = ptr<const A>(sqnorm); t.exclude_self = exclude_self;
          knn::Lists<A> l;
          l.sims = ptr<A>(sims); l.idx = ptr<int32_t>(idx); l.k = k;
          py::gil_scoped_release nogil;
          launch(t, l, stream);
        };
        if (dtype == "float32") run(float{});
        else if (dtype == "float64") run(double{});
        else throw py::type_error("knn_merge: unsupported dtype '" + dtype + "'");
      },
      py::arg("dtype"), py::arg("dots"), py::arg("ld"), py::arg("i0"), py::arg("i1"), py::arg("j0"),
      py::arg("j1"), py::arg("col_from"), py::arg("sqnorm"), py::arg("exclude_self"), py::arg("sims"),
      py::arg("idx"), py::arg("k"), py::arg("stream") = 0);
}

// propagate_cg / propagate_iterate / propagate_post: `cg(g, args, stream)` returns
// the iteration count, `iterate(g, args, stream)` the pair (iterations, flips).
template <typename Cg, typename Iterate, typename Post>
void def_propagate(py::module_& m, Cg cg, Iterate iterate, Post post) {
  auto csr = [](auto tag, int64_t n, uintptr_t indptr, uintptr_t indices, uintptr_t values) {
    using T = decltype(tag);
    prop::Csr<T> g;
    g.n = n; g.indptr = ptr<const int64_t>(indptr); g.indices = ptr<const int32_t>(indices);
    g.values = ptr<const T>(values);
    return g;
  };
  auto dispatch = [](const std::string& dtype, const char* op, auto run) {
    if (dtype == "float32") return run(float{});
    if (dtype == "float64") return run(double{});
    throw py::type_error(std::string(op) + ": unsupported dtype '" + dtype + "'");
  };
  m.def(
      "propagate_cg",
      [=](const std::string& dtype, int64_t n, int64_t cols, uintptr_t indptr, uintptr_t indices,
          uintptr_t values, uintptr_t x, uintptr_t r, uintptr_t p, uintptr_t q, uintptr_t residual,
          double alpha, int64_t max_iter, double tol, uintptr_t stream) {
        return dispatch(dtype, "propagate_cg", [&](auto tag) {
          using T = decltype(tag);
          prop::CgArgs<T> a;
          a.cols = cols; a.x = ptr<T>(x); a.r = ptr<T>(r); a.p = ptr<T>(p); a.q = ptr<T>(q);
          a.residual = ptr<double>(residual); a.alpha = alpha; a.max_iter = max_iter; a.tol = tol;
          const auto g = csr(tag, n, indptr, indices, values);
          py::gil_scoped_release nogil;
          return int64_t(cg(g, a, stream));
        });
      },
      py::arg("dtype"), py::arg("n"), py::arg("cols"), py::arg("indptr"), py::arg("indices"),
      py::arg("values"), py::arg("x"), py::arg("r"), py::arg("p"), py::arg("q"), py::arg("residual"),
      py::arg("alpha"), py::arg("max_iter"), py::arg("tol"), py::arg("stream") = 0);
  m.def(
      "propagate_iterate",
      [=](const std::string& dtype, int64_t n, int64_t cols, uintptr_t indptr, uintptr_t indices,
          uintptr_t values, uintptr_t y, uintptr_t z0, uintptr_t z1, uintptr_t residual, double alpha,
          int64_t max_iter, double tol, uintptr_t stream) {
        return dispatch(dtype, "propagate_iterate", [&](auto tag) {
          using T = decltype(tag);
          prop::IterArgs<T> a;
          a.cols = cols; a.y = ptr<const T>(y); a.z0 = ptr<T>(z0); a.z1 = ptr<T>(z1);
          a.residual = ptr<double>(residual); a.alpha = alpha; a.max_iter = max_iter; a.tol = tol;
          const auto g = csr(tag, n, indptr, indices, values);
          py::gil_scoped_release nogil;
          return iterate(g, a, stream);
        });
      },
      py::arg("dtype"), py::arg("n"), py::arg("cols"), py::arg("indptr"), py::arg("indices"),
      py::arg("values"), py::arg("y"), py::arg("z0"), py::arg("z1"), py::arg("residual"),
      py::arg("alpha"), py::arg("max_iter"), py::arg("tol"), py::arg("stream") = 0);
  m.def(
      "propagate_post",
      [=](const std::string& dtype, int64_t n, int64_t cols, uintptr_t indptr, uintptr_t indices,
          uintptr_t values, uintptr_t z, uintptr_t given, uintptr_t scores, uintptr_t oos,
          uintptr_t labels, uintptr_t confidence, uintptr_t weight, uintptr_t margin, uintptr_t stream) {
        dispatch(dtype, "propagate_post", [&](auto tag) {
          using T = decltype(tag);
          prop::PostArgs<T> a;
          a.cols = cols; a.z = ptr<const T>(z); a.given = ptr<const int64_t>(given);
          a.scores = ptr<T>(scores); a.oos = ptr<T>(oos); a.labels = ptr<int64_t>(labels);
          a.confidence = ptr<T>(confidence); a.weight = ptr<T>(weight); a.margin = ptr<T>(margin);
          const auto g = csr(tag, n, indptr, indices, values);
          py::gil_scoped_release nogil;
          post(g, a, stream);
          return 0;
        });
      },
      py::arg("dtype"), py::arg("n"), py::arg("cols"), py::arg("indptr"), py::arg("indices"),
      py::arg("values"), py::arg("z"), py::arg("given"), py::arg("scores"), py::arg("oos"),
      py::arg("labels"), py::arg("confidence"), py::arg("weight"), py::arg("margin"),
      py::arg("stream") = 0);
}

}  // namespace bind
}  // namespace pysd
