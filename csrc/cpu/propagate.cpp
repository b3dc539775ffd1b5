// CPU launcher of label propagation (pysd/propagate.h): the whole solve runs
// in one OpenMP region.  Rows are split into fixed blocks of kBlock rows whose
// per-column partial sums land in `part[block][column]` and are added in block
// order, so results do not depend on the thread count.  One gather pass over
// the graph per iteration; the per-row column accumulator stays in L1.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops.h"
#include "simd.h"

namespace pysd {
namespace cpu {
namespace {

using namespace prop;
constexpr int64_t kBlock = 64;

int64_t num_blocks(int64_t n) { return (n + kBlock - 1) / kBlock; }

// Column totals of the block partials, in block order (call inside the region).
void reduce_columns(const std::vector<double>& part, int64_t blocks, int64_t cols, std::vector<double>& total) {
#pragma omp for schedule(static)
  for (int64_t c = 0; c < cols; ++c) {
    double s = 0;
    for (int64_t b = 0; b < blocks; ++b) s += part[b * cols + c];
    total[c] = s;
  }
}

template <typename T>
PYSD_INLINE int64_t argmax_row(const T* z, int64_t cols) {
  int64_t arg = 0;
  for (int64_t c = 1; c < cols; ++c) arg = z[c] > z[arg] ? c : arg;
  return arg;
}

template <typename T>
PYSD_INLINE void cg_impl(const Csr<T>& g, int64_t cols, T* x, T* r, T* p, T* q, double* residual,
                         double alpha, int64_t max_iter, double tol, int64_t* iterations) {
  const int64_t n = g.n, blocks = num_blocks(n);
  std::vector<double> part(blocks * cols), total(cols);
  std::vector<Column> col(cols);
  const T al = T(alpha);
  bool any_active = false;
  int64_t it = 0;
#pragma omp parallel
  {
    std::vector<T> acc(cols);
    std::vector<double> loc(cols);
    // r holds b on entry (x0 = 0): p = r, x = 0, partial b.b.
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      std::fill(loc.begin(), loc.end(), 0.0);
      for (int64_t i = blk * kBlock; i < std::min(n, (blk + 1) * kBlock); ++i) {
        T* __restrict ri = r + i * cols;
        T* __restrict pi = p + i * cols;
        T* __restrict xi = x + i * cols;
        double* __restrict l = loc.data();
        PYSD_SIMD
        for (int64_t c = 0; c < cols; ++c) {
          pi[c] = ri[c];
          xi[c] = T(0);
          l[c] += double(ri[c]) * double(ri[c]);
        }
      }
      std::copy(loc.begin(), loc.end(), part.begin() + blk * cols);
    }
    reduce_columns(part, blocks, cols, total);
#pragma omp single
    {
      any_active = false;
      for (int64_t c = 0; c < cols; ++c) {
        cg_init(col[c], total[c], tol);
        any_active |= col[c].active != 0;
      }
    }
    for (int64_t step = 0; step < max_iter && any_active; ++step) {
      // q = (I - alpha S) p and p.q
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        std::fill(loc.begin(), loc.end(), 0.0);
        for (int64_t i = blk * kBlock; i < std::min(n, (blk + 1) * kBlock); ++i) {
          std::fill(acc.begin(), acc.end(), T(0));
          gather_row<false>(g, i, p, cols, 0, 1, cols, acc.data());
          const T* __restrict pi = p + i * cols;
          T* __restrict qi = q + i * cols;
          const T* __restrict a = acc.data();
          double* __restrict l = loc.data();
          PYSD_SIMD
          for (int64_t c = 0; c < cols; ++c) qi[c] = cg_matvec_elem(al, a[c], pi[c], l[c]);
        }
        std::copy(loc.begin(), loc.end(), part.begin() + blk * cols);
      }
      reduce_columns(part, blocks, cols, total);
#pragma omp single
      for (int64_t c = 0; c < cols; ++c) cg_step(col[c], total[c]);
      // x += a p, r -= a q and r.r (finished columns have a = 0)
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        std::fill(loc.begin(), loc.end(), 0.0);
        for (int64_t i = blk * kBlock; i < std::min(n, (blk + 1) * kBlock); ++i) {
          T* __restrict xi = x + i * cols;
          T* __restrict ri = r + i * cols;
          const T* __restrict pi = p + i * cols;
          const T* __restrict qi = q + i * cols;
          double* __restrict l = loc.data();
          const Column* cl = col.data();
          PYSD_SIMD
          for (int64_t c = 0; c < cols; ++c) cg_update_elem(T(cl[c].a), pi[c], qi[c], xi[c], ri[c], l[c]);
        }
        std::copy(loc.begin(), loc.end(), part.begin() + blk * cols);
      }
      reduce_columns(part, blocks, cols, total);
#pragma omp single
      {
        any_active = false;
        for (int64_t c = 0; c < cols; ++c) {
          cg_direction(col[c], total[c]);
          any_active |= col[c].active != 0;
        }
        it = step + 1;
      }
      if (!any_active) break;
      // p = r + b p
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        T* __restrict pi = p + i * cols;
        const T* __restrict ri = r + i * cols;
        const Column* cl = col.data();
        PYSD_SIMD
        for (int64_t c = 0; c < cols; ++c) pi[c] = ri[c] + T(cl[c].b) * pi[c];
      }
    }
  }
  for (int64_t c = 0; c < cols; ++c) residual[c] = cg_residual(col[c]);
  *iterations = it;
}

template <typename T>
PYSD_INLINE void iterate_impl(const Csr<T>& g, int64_t cols, const T* y, T* z0, T* z1, double* residual,
                              double alpha, int64_t max_iter, double tol, int64_t* iterations, int64_t* flips) {
  const int64_t n = g.n, blocks = num_blocks(n);
  std::vector<double> part(blocks * cols), yy(cols), total(cols);
  std::vector<int64_t> flip_part(blocks);
  const T al = T(alpha);
  bool done = false;
  int64_t it = 0, last_flips = 0;
#pragma omp parallel
  {
    std::vector<T> acc(cols);
    std::vector<double> loc(cols);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      std::fill(loc.begin(), loc.end(), 0.0);
      for (int64_t i = blk * kBlock; i < std::min(n, (blk + 1) * kBlock); ++i) {
        const T* __restrict yi = y + i * cols;
        T* __restrict zi = z0 + i * cols;
        double* __restrict l = loc.data();
        PYSD_SIMD
        for (int64_t c = 0; c < cols; ++c) {
          zi[c] = yi[c];
          l[c] += double(yi[c]) * double(yi[c]);
        }
      }
      std::copy(loc.begin(), loc.end(), part.begin() + blk * cols);
    }
    reduce_columns(part, blocks, cols, yy);
    for (int64_t step = 0; step < max_iter && !done; ++step) {
      const T* zc = step % 2 ? z1 : z0;
      T* zn = step % 2 ? z0 : z1;
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        std::fill(loc.begin(), loc.end(), 0.0);
        int64_t nflip = 0;
        for (int64_t i = blk * kBlock; i < std::min(n, (blk + 1) * kBlock); ++i) {
          std::fill(acc.begin(), acc.end(), T(0));
          gather_row<false>(g, i, zc, cols, 0, 1, cols, acc.data());
          const T* __restrict zo = zc + i * cols;
          const T* __restrict yi = y + i * cols;
          T* __restrict zw = zn + i * cols;
          const T* __restrict a = acc.data();
          double* __restrict l = loc.data();
          PYSD_SIMD
          for (int64_t c = 0; c < cols; ++c) zw[c] = zhou_elem(al, a[c], yi[c], zo[c], l[c]);
          nflip += argmax_row(zo, cols) != argmax_row(zw, cols);
        }
        std::copy(loc.begin(), loc.end(), part.begin() + blk * cols);
        flip_part[blk] = nflip;
      }
      reduce_columns(part, blocks, cols, total);
#pragma omp single
      {
        bool converged = true;
        for (int64_t c = 0; c < cols; ++c) {
          const double ynorm = std::sqrt(yy[c]), dnorm = std::sqrt(total[c]);
          residual[c] = ynorm > 0 ? dnorm / ynorm : 0.0;
          converged &= !(ynorm > 0) || dnorm < tol * ynorm;
        }
        last_flips = 0;
        for (int64_t b = 0; b < blocks; ++b) last_flips += flip_part[b];
        it = step + 1;
        done = converged;
      }
    }
  }
  if (it == 0) std::fill(residual, residual + cols, 0.0);
  *iterations = it;
  *flips = last_flips;
}

template <typename T>
PYSD_INLINE void post_impl(const Csr<T>& g, int64_t cols, const T* z, const int64_t* given, T* scores, T* oos,
                           int64_t* labels, T* confidence, T* weight, T* margin) {
  const int64_t n = g.n;
#pragma omp parallel
  {
    std::vector<T> acc(cols);
#pragma omp for schedule(static, kBlock)
    for (int64_t i = 0; i < n; ++i) {
      const T* __restrict zi = z + i * cols;
      RowStats<T> s;
      for (int64_t c = 0; c < cols; ++c) row_stats_elem(s, zi[c], c);
      const int64_t gi = given[i];
      const RowOut<T> o = row_finish(s, gi >= 0 ? zi[gi] : T(0), cols);
      T* __restrict si = scores + i * cols;
      const T inv = o.inv_l2;
      PYSD_SIMD
      for (int64_t c = 0; c < cols; ++c) si[c] = (zi[c] > T(0) ? zi[c] : T(0)) * inv;
      labels[i] = s.arg;
      confidence[i] = o.confidence;
      weight[i] = o.weight;
      margin[i] = o.margin;

      std::fill(acc.begin(), acc.end(), T(0));
      gather_row<true>(g, i, z, cols, 0, 1, cols, acc.data());
      T sum = 0;
      for (int64_t c = 0; c < cols; ++c) {
        acc[c] = acc[c] > T(0) ? acc[c] : T(0);
        sum += acc[c];
      }
      const T inv_sum = sum > T(0) ? T(1) / sum : T(0);
      T* __restrict oi = oos + i * cols;
      PYSD_SIMD
      for (int64_t c = 0; c < cols; ++c) oi[c] = acc[c] * inv_sum;
    }
  }
}

// One ISA-dispatched entry per data type.
PYSD_ISA_CLONES void cg_f32(const Csr<float>& g, int64_t c, float* x, float* r, float* p, float* q, double* res,
                            double al, int64_t mi, double tol, int64_t* it) {
  cg_impl(g, c, x, r, p, q, res, al, mi, tol, it);
}
PYSD_ISA_CLONES void cg_f64(const Csr<double>& g, int64_t c, double* x, double* r, double* p, double* q,
                            double* res, double al, int64_t mi, double tol, int64_t* it) {
  cg_impl(g, c, x, r, p, q, res, al, mi, tol, it);
}
PYSD_ISA_CLONES void it_f32(const Csr<float>& g, int64_t c, const float* y, float* z0, float* z1, double* res,
                            double al, int64_t mi, double tol, int64_t* it, int64_t* fl) {
  iterate_impl(g, c, y, z0, z1, res, al, mi, tol, it, fl);
}
PYSD_ISA_CLONES void it_f64(const Csr<double>& g, int64_t c, const double* y, double* z0, double* z1,
                            double* res, double al, int64_t mi, double tol, int64_t* it, int64_t* fl) {
  iterate_impl(g, c, y, z0, z1, res, al, mi, tol, it, fl);
}
PYSD_ISA_CLONES void post_f32(const Csr<float>& g, int64_t c, const float* z, const int64_t* gv, float* s,
                              float* o, int64_t* l, float* cf, float* w, float* m) {
  post_impl(g, c, z, gv, s, o, l, cf, w, m);
}
PYSD_ISA_CLONES void post_f64(const Csr<double>& g, int64_t c, const double* z, const int64_t* gv, double* s,
                              double* o, int64_t* l, double* cf, double* w, double* m) {
  post_impl(g, c, z, gv, s, o, l, cf, w, m);
}

}  // namespace

void propagate_cg(const Csr<float>& g, const CgArgs<float>& a, int64_t* it) {
  cg_f32(g, a.cols, a.x, a.r, a.p, a.q, a.residual, a.alpha, a.max_iter, a.tol, it);
}
void propagate_cg(const Csr<double>& g, const CgArgs<double>& a, int64_t* it) {
  cg_f64(g, a.cols, a.x, a.r, a.p, a.q, a.residual, a.alpha, a.max_iter, a.tol, it);
}
void propagate_iterate(const Csr<float>& g, const IterArgs<float>& a, int64_t* it, int64_t* fl) {
  it_f32(g, a.cols, a.y, a.z0, a.z1, a.residual, a.alpha, a.max_iter, a.tol, it, fl);
}
void propagate_iterate(const Csr<double>& g, const IterArgs<double>& a, int64_t* it, int64_t* fl) {
  it_f64(g, a.cols, a.y, a.z0, a.z1, a.residual, a.alpha, a.max_iter, a.tol, it, fl);
}
void propagate_post(const Csr<float>& g, const PostArgs<float>& a) {
  post_f32(g, a.cols, a.z, a.given, a.scores, a.oos, a.labels, a.confidence, a.weight, a.margin);
}
void propagate_post(const Csr<double>& g, const PostArgs<double>& a) {
  post_f64(g, a.cols, a.z, a.given, a.scores, a.oos, a.labels, a.confidence, a.weight, a.margin);
}

}  // namespace cpu
}  // namespace pysd
