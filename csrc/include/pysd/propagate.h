// Row math of label propagation over a CSR graph S (N x N) with C label
// columns, shared by the CPU and CUDA launchers.
//
//   Zhou step   z_i <- alpha * sum_j S_ij z_j + y_i            (solver "iterate")
//   CG matvec   q_i  = p_i - alpha * sum_j S_ij p_j            (A = I - alpha S)
//   CG update   x += a_c p,  r -= a_c q,  p <- r + b_c p       (per-column a_c, b_c)
//
// A thread (CPU) or lane (CUDA) gathers a strided set of columns of one row;
// the element functions also accumulate the per-column partial sums (squared
// changes, p.q, r.r) that the launchers reduce in a fixed block order, so a
// run is deterministic.  Per-column scalars follow scipy.sparse.linalg.cg
// (x0 = 0, stop when ||r|| < tol * ||b||, checked before each iteration).
#pragma once

#include <utility>

#include "pysd/common.h"

#if defined(__CUDA_ARCH__) || !defined(_OPENMP)
#define PYSD_SIMD
#else
#define PYSD_SIMD _Pragma("omp simd")
#endif

namespace pysd {
namespace propagate {

// Solver codes (pysd._codes.Solver mirrors them; a test checks the two agree).
enum Solver : int { kCg = 0, kIterate = 1 };

template <typename T>
struct Csr {
  const int64_t* indptr = nullptr;   // (n + 1,)
  const int32_t* indices = nullptr;  // (nnz,)
  const T* values = nullptr;         // (nnz,)
  int64_t n = 0;
};

// Buffers of one call, all (n, cols) row-major unless noted.
template <typename T>
struct CgArgs {
  int64_t cols = 0;
  T *x = nullptr, *r = nullptr, *p = nullptr, *q = nullptr;  // r holds b on entry; x is the solution
  double* residual = nullptr;                                // (cols,) ||r|| / ||b||
  double alpha = 0.99, tol = 1e-6;
  int64_t max_iter = 20;
};

template <typename T>
struct IterArgs {
  int64_t cols = 0;
  const T* y = nullptr;            // seeds
  T *z0 = nullptr, *z1 = nullptr;  // iterate t is left in z0 (t even) or z1 (t odd)
  double* residual = nullptr;      // (cols,) ||z_t - z_{t-1}|| / ||y||
  double alpha = 0.99, tol = 1e-6;
  int64_t max_iter = 20;
};

template <typename T>
struct PostArgs {
  int64_t cols = 0;
  const T* z = nullptr;             // solver output
  const T* z_ext = nullptr;         // rows the neighbour gather reads (g.indices index it): z for a
                                    // whole graph, the local rows with their halo for a shard
  const int64_t* given = nullptr;   // (n,) given label or -1
  T *scores = nullptr, *oos = nullptr;
  int64_t* labels = nullptr;        // (n,)
  T *confidence = nullptr, *weight = nullptr, *margin = nullptr;  // (n,)
};

// acc[k] += sum_j S_ij * z[j, c0 + k] (clipped at 0 when CLIP) for k < cnt:
// the CPU takes a whole row (cnt = C), a CUDA lane one column (cnt = 1).
template <bool CLIP, typename T, typename A>
PYSD_HD void gather_row(const Csr<T>& g, int64_t i, const T* __restrict__ z, int64_t ld, int64_t c0, int64_t cnt,
                        A* __restrict__ acc) {
  for (int64_t e = g.indptr[i]; e < g.indptr[i + 1]; ++e) {
    const A s = A(g.values[e]);
    const T* __restrict__ zj = z + int64_t(g.indices[e]) * ld + c0;
    PYSD_SIMD
    for (int64_t k = 0; k < cnt; ++k) {
      const A v = A(zj[k]);
      acc[k] += s * (CLIP ? (v > A(0) ? v : A(0)) : v);
    }
  }
}

// out[k] = sum_j S_ij * z[j, c0 + k] for a full chunk of W columns, the
// accumulators held in registers across the row's edges (the CPU's main path;
// gather_row covers the tail chunk).
template <bool CLIP, int W, typename T, typename A>
PYSD_HD void gather_chunk(const Csr<T>& g, int64_t i, const T* __restrict__ z, int64_t ld, int64_t c0,
                          A* __restrict__ out) {
  A acc[W];
  for (int k = 0; k < W; ++k) acc[k] = A(0);
  for (int64_t e = g.indptr[i]; e < g.indptr[i + 1]; ++e) {
    const A s = A(g.values[e]);
    const T* __restrict__ zj = z + int64_t(g.indices[e]) * ld + c0;
    PYSD_SIMD
    for (int k = 0; k < W; ++k) {
      const A v = A(zj[k]);
      acc[k] += s * (CLIP ? (v > A(0) ? v : A(0)) : v);
    }
  }
  for (int k = 0; k < W; ++k) out[k] = acc[k];
}

// One entry of the Zhou step; `d2` accumulates the squared change.
template <typename A, typename D>
PYSD_HD A zhou_elem(A alpha, A sz, A y, A z_old, D& d2) {
  const A zn = alpha * sz + y;
  const D d = D(zn) - D(z_old);
  d2 += d * d;
  return zn;
}

// q = (I - alpha S) p for one entry; `pq` accumulates p.q.
template <typename A, typename D>
PYSD_HD A cg_matvec_elem(A alpha, A sp, A p, D& pq) {
  const A q = p - alpha * sp;
  pq += D(p) * D(q);
  return q;
}

// x += a p, r -= a q for one entry; `rr` accumulates r.r.
template <typename A, typename D>
PYSD_HD void cg_update_elem(A a, A p, A q, A& x, A& r, D& rr) {
  x += a * p;
  r -= a * q;
  rr += D(r) * D(r);
}

// Per-column CG state (double, whatever the data type).
struct Column {
  double bnorm = 0, atol = 0;  // ||b||, tol * ||b||
  double rho = 0;              // r.r of the current residual
  double a = 0, b = 0;         // step and direction coefficients of this iteration
  int32_t iters = 0;           // x updates performed
  int32_t active = 0;          // still iterating
};

// Column setup from b.b (x0 = 0, so r = p = b).  scipy returns b itself (= 0)
// when ||b|| == 0, and stops before the first step when ||b|| < tol ||b||.
PYSD_HD void cg_init(Column& c, double bb, double tol) {
  c.bnorm = sqrt(bb);
  c.atol = tol * c.bnorm;
  c.rho = bb;
  c.a = c.b = 0;
  c.iters = 0;
  c.active = c.bnorm != 0.0 && !(c.bnorm < c.atol);
}

// Step length from p.Ap; a column whose p.Ap is exactly 0 (the residual
// vanished with tol = 0) stops instead of dividing by zero.
PYSD_HD void cg_step(Column& c, double pq) {
  if (c.active && pq == 0.0) c.active = 0;
  c.a = c.active ? c.rho / pq : 0.0;
}

// After the x / r update: count the iteration, test convergence and set the
// direction coefficient (0 for finished columns, which keeps p bounded).
PYSD_HD void cg_direction(Column& c, double rr) {
  if (!c.active) {
    c.b = 0;
    return;
  }
  c.iters += 1;
  c.b = rr / c.rho;
  c.rho = rr;
  if (sqrt(rr) < c.atol) {
    c.active = 0;
    c.b = 0;
  }
}

// Relative residual ||r|| / ||b|| of a column (0 for an empty column).
PYSD_HD double cg_residual(const Column& c) { return c.bnorm > 0 ? sqrt(c.rho) / c.bnorm : 0.0; }

// The column updates of one CG phase over all columns, from the column totals of the pass before
// (b.b, p.q, r.r); the step / direction coefficients go to `step` / `beta` in the data type.
// init and direction return whether any column is still active.
inline bool cg_init_columns(Column* col, const double* bb, int64_t cols, double tol) {
  bool any = false;
  for (int64_t c = 0; c < cols; ++c) {
    cg_init(col[c], bb[c], tol);
    any |= col[c].active != 0;
  }
  return any;
}

template <typename T>
void cg_step_columns(Column* col, const double* pq, T* step, int64_t cols) {
  for (int64_t c = 0; c < cols; ++c) {
    cg_step(col[c], pq[c]);
    step[c] = T(col[c].a);
  }
}

// The relative change ||dz|| / ||y|| of each column after a Zhou step, from the totals y.y and
// dz.dz; returns whether every column has converged (||dz|| < tol ||y||, or no seed mass).
inline bool zhou_check_columns(const double* yy, const double* d2, double* residual, int64_t cols, double tol) {
  bool converged = true;
  for (int64_t c = 0; c < cols; ++c) {
    const double ynorm = sqrt(yy[c]), dnorm = sqrt(d2[c]);
    residual[c] = ynorm > 0 ? dnorm / ynorm : 0.0;
    converged &= !(ynorm > 0) || dnorm < tol * ynorm;
  }
  return converged;
}

template <typename T>
bool cg_direction_columns(Column* col, const double* rr, T* beta, int64_t cols) {
  bool any = false;
  for (int64_t c = 0; c < cols; ++c) {
    cg_direction(col[c], rr[c]);
    beta[c] = T(col[c].b);
    any |= col[c].active != 0;
  }
  return any;
}

// Running statistics of one clipped score row z+ = max(z, 0).
template <typename A>
struct RowStats {
  A l1 = 0, zlogz = 0, top = 0;
  int64_t arg = -1;  // first maximum among positive entries, -1 for a zero row
};

template <typename A>
PYSD_HD void row_stats_elem(RowStats<A>& s, A z, int64_t c) {
  const A v = z > A(0) ? z : A(0);
  s.l1 += v;
  s.zlogz += xlogy(v, v);
  if (v > s.top) {
    s.top = v;
    s.arg = c;
  }
}

// Merges two partial row statistics (CUDA lanes); ties keep the lower column.
template <typename A>
PYSD_HD void row_stats_merge(RowStats<A>& s, const RowStats<A>& o) {
  s.l1 += o.l1;
  s.zlogz += o.zlogz;
  if (o.top > s.top || (o.top == s.top && o.arg >= 0 && (s.arg < 0 || o.arg < s.arg))) {
    s.top = o.top;
    s.arg = o.arg;
  }
}

// Per-row outputs: with p = z+ / sum z+, confidence = max p, the raw entropy
// weight 1 - H(p) / log C (1 when C == 1) and margin = p[label] - p[given];
// all 0 for a zero row.  `inv_l1` scales z+ to the scores p (LP-DeepSSL's L1 rows).
template <typename A>
struct RowOut {
  A inv_l1 = 0, confidence = 0, weight = 0, margin = 0;
};

template <typename A>
PYSD_HD RowOut<A> row_finish(const RowStats<A>& s, A given_value, int64_t cols) {
  RowOut<A> o;
  if (!(s.l1 > A(0))) return o;
  o.inv_l1 = A(1) / s.l1;
  o.confidence = s.top / s.l1;
  const A h = flog(s.l1) - s.zlogz / s.l1;  // -sum p log p
  o.weight = cols > 1 ? A(1) - h / flog(A(cols)) : A(1);
  o.margin = (s.top - (given_value > A(0) ? given_value : A(0))) / s.l1;
  return o;
}


// Launchers: csrc/cpu/propagate.cpp (the whole solve in one OpenMP region) and
// csrc/cuda/propagate.cu (the host waits for the stream once, at the end of the solve, for
// the iteration count and, for iterate, the rows whose argmax flipped in the last step).
void cg_cpu(const Csr<float>& g, const CgArgs<float>& a, int64_t* iterations);
void cg_cpu(const Csr<double>& g, const CgArgs<double>& a, int64_t* iterations);
void iterate_cpu(const Csr<float>& g, const IterArgs<float>& a, int64_t* iterations, int64_t* flips);
void iterate_cpu(const Csr<double>& g, const IterArgs<double>& a, int64_t* iterations, int64_t* flips);
void post_cpu(const Csr<float>& g, const PostArgs<float>& a);
void post_cpu(const Csr<double>& g, const PostArgs<double>& a);

// Steps of the CPU solvers for a driver outside C++ (pysd.distributed runs the halo exchange and
// the all-reduces between them).  Each is one OpenMP pass over the g.n local rows with the kernels
// and the fixed block order of cg_cpu / iterate_cpu, so a driver that runs them in the order of
// those solvers gets their results bit for bit.  `g.indices` index the `*_ext` arrays (the local
// rows and the halo rows they reference); `sums` (cols,) receives the per-column sums over the
// local rows of the squares of `src` (copy), p.q (matvec), r.r after the update (update) and the
// squared change (zhou).
template <typename T>
void copy_step_cpu(const T* src, T* dst, T* zero, int64_t n, int64_t cols, double* sums);  // dst = src, zero = 0
template <typename T>
void matvec_step_cpu(const Csr<T>& g, const T* p_ext, const T* p, T* q, int64_t cols, double alpha, double* sums);
template <typename T>
void update_step_cpu(T* x, T* r, const T* p, const T* q, const T* step, int64_t n, int64_t cols, double* sums);
template <typename T>
void direction_step_cpu(T* p, const T* r, const T* beta, int64_t n, int64_t cols);
template <typename T>
void zhou_step_cpu(const Csr<T>& g, const T* y, const T* z_ext, const T* z, T* out, int64_t cols, double alpha,
                   double* sums);
template <typename T>
int64_t flips_step_cpu(const T* z0, const T* z1, int64_t n, int64_t cols);

int64_t cg_cuda(const Csr<float>& g, const CgArgs<float>& a, uintptr_t stream);
int64_t cg_cuda(const Csr<double>& g, const CgArgs<double>& a, uintptr_t stream);
std::pair<int64_t, int64_t> iterate_cuda(const Csr<float>& g, const IterArgs<float>& a, uintptr_t stream);
std::pair<int64_t, int64_t> iterate_cuda(const Csr<double>& g, const IterArgs<double>& a, uintptr_t stream);
void post_cuda(const Csr<float>& g, const PostArgs<float>& a, uintptr_t stream);
void post_cuda(const Csr<double>& g, const PostArgs<double>& a, uintptr_t stream);

}  // namespace propagate
}  // namespace pysd
