// CPU launcher of label propagation (pysd/propagate.h).  The whole solve runs
// in one OpenMP region; its passes call the row-block kernels below, which are
// compiled once per ISA (target_clones: the outlined OpenMP body itself is
// not).  Rows are split into fixed blocks of kBlock rows whose per-column
// partial sums land in `part[block][column]` and are added in block order, so
// results depend neither on the thread count nor on which thread ran a block.
// One gather pass over the graph per iteration; the column accumulator of a
// row stays in L1.
#if defined(__GNUC__) && !defined(__clang__)
// GCC's -O3 unroll-and-jam fuses two edges of the short tail gather into a
// scalar loop that ran 3x slower than the whole vector path; keep it off here.
#pragma GCC optimize("no-loop-unroll-and-jam")
#endif
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "pysd/propagate.h"
#include "simd.h"

namespace pysd {
namespace propagate {
namespace {

constexpr int64_t kBlock = 64;
// Row blocks are handed out kGrab at a time (dynamic schedule): on a machine shared with other
// processes a descheduled thread then delays a pass by a few blocks, not by its static half of
// the rows.  Results stay deterministic: partial sums are per block and added in block order.
constexpr int kGrab = 4;

// acc = S_i. z (cols,) in register-blocked chunks of 96, 32 and 16 columns (6,
// 2 and 1 zmm of floats), each chunk one walk over the row's edges, then the
// last < 16 columns.
template <bool CLIP, typename T>
PYSD_INLINE void gather(const Csr<T>& g, int64_t i, const T* z, int64_t cols, T* acc) {
  int64_t c0 = 0;
  for (; c0 + 96 <= cols; c0 += 96) gather_chunk<CLIP, 96>(g, i, z, cols, c0, acc + c0);
  for (; c0 + 32 <= cols; c0 += 32) gather_chunk<CLIP, 32>(g, i, z, cols, c0, acc + c0);
  for (; c0 + 16 <= cols; c0 += 16) gather_chunk<CLIP, 16>(g, i, z, cols, c0, acc + c0);
  if (c0 < cols) {
    std::fill(acc + c0, acc + cols, T(0));
    gather_row<CLIP>(g, i, z, cols, c0, cols - c0, acc + c0);
  }
}

// Asks for every cache line of the neighbour rows of row i.  Called two rows
// ahead of the gather: the neighbours sit at random places of z, which the
// hardware prefetchers cannot predict (a Zhou step at N=100k, C=100 went from
// ~84 to ~67 ms on a 2-core AMD EPYC; results are unchanged).
template <typename T>
PYSD_INLINE void prefetch_neighbours(const Csr<T>& g, int64_t i, const T* z, int64_t cols) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t e = g.indptr[i]; e < g.indptr[i + 1]; ++e) {
    const T* zj = z + int64_t(g.indices[e]) * cols;
    for (int64_t c = 0; c < cols; c += kLine) __builtin_prefetch(zj + c, 0, 3);
  }
}

// ---- row-block kernels: rows [r0, r1), partial sums into loc (cols,) ----

template <typename T>
PYSD_INLINE void copy_block(const T* src, T* dst, T* zero, int64_t cols, int64_t r0, int64_t r1, double* loc) {
  for (int64_t i = r0; i < r1; ++i) {
    const T* __restrict s = src + i * cols;
    T* __restrict d = dst + i * cols;
    double* __restrict l = loc;
    PYSD_SIMD
    for (int64_t c = 0; c < cols; ++c) {
      d[c] = s[c];
      l[c] += double(s[c]) * double(s[c]);
    }
    if (zero) std::fill(zero + i * cols, zero + (i + 1) * cols, T(0));
  }
}

// `p_ext`: the rows the gather reads (p itself for a whole graph).
template <typename T>
PYSD_INLINE void matvec_block(const Csr<T>& g, const T* p_ext, const T* p, T* q, int64_t cols, T alpha, int64_t r0,
                              int64_t r1, T* acc, double* loc) {
  for (int64_t i = r0; i < r1; ++i) {
    if (i + 2 < r1) prefetch_neighbours(g, i + 2, p_ext, cols);
    gather<false>(g, i, p_ext, cols, acc);
    const T* __restrict pi = p + i * cols;
    T* __restrict qi = q + i * cols;
    const T* __restrict a = acc;
    double* __restrict l = loc;
    PYSD_SIMD
    for (int64_t c = 0; c < cols; ++c) qi[c] = cg_matvec_elem(alpha, a[c], pi[c], l[c]);
  }
}

template <typename T>
PYSD_INLINE void update_block(T* x, T* r, const T* p, const T* q, const T* step, int64_t cols, int64_t r0,
                              int64_t r1, double* loc) {
  for (int64_t i = r0; i < r1; ++i) {
    T* __restrict xi = x + i * cols;
    T* __restrict ri = r + i * cols;
    const T* __restrict pi = p + i * cols;
    const T* __restrict qi = q + i * cols;
    const T* __restrict a = step;
    double* __restrict l = loc;
    PYSD_SIMD
    for (int64_t c = 0; c < cols; ++c) cg_update_elem(a[c], pi[c], qi[c], xi[c], ri[c], l[c]);
  }
}

template <typename T>
PYSD_INLINE void direction_block(T* p, const T* r, const T* beta, int64_t cols, int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; ++i) {
    T* __restrict pi = p + i * cols;
    const T* __restrict ri = r + i * cols;
    const T* __restrict b = beta;
    PYSD_SIMD
    for (int64_t c = 0; c < cols; ++c) pi[c] = ri[c] + b[c] * pi[c];
  }
}

template <typename T>
PYSD_INLINE int64_t argmax_row(const T* z, int64_t cols) {
  int64_t arg = 0;
  for (int64_t c = 1; c < cols; ++c) arg = z[c] > z[arg] ? c : arg;
  return arg;
}

// `zc_ext`: the rows the gather reads (zc itself for a whole graph).
template <typename T>
PYSD_INLINE void zhou_block(const Csr<T>& g, const T* y, const T* zc_ext, const T* zc, T* zn, int64_t cols, T alpha,
                            int64_t r0, int64_t r1, T* acc, double* loc) {
  for (int64_t i = r0; i < r1; ++i) {
    if (i + 2 < r1) prefetch_neighbours(g, i + 2, zc_ext, cols);
    gather<false>(g, i, zc_ext, cols, acc);
    const T* __restrict zo = zc + i * cols;
    const T* __restrict yi = y + i * cols;
    T* __restrict zw = zn + i * cols;
    const T* __restrict a = acc;
    double* __restrict l = loc;
    PYSD_SIMD
    for (int64_t c = 0; c < cols; ++c) zw[c] = zhou_elem(alpha, a[c], yi[c], zo[c], l[c]);
  }
}

// Rows whose argmax (first maximum) differs between two iterates.
template <typename T>
PYSD_INLINE int64_t flips_block(const T* z0, const T* z1, int64_t cols, int64_t r0, int64_t r1) {
  int64_t flips = 0;
  for (int64_t i = r0; i < r1; ++i) flips += argmax_row(z0 + i * cols, cols) != argmax_row(z1 + i * cols, cols);
  return flips;
}

template <typename T>
PYSD_INLINE void post_block(const Csr<T>& g, const PostArgs<T>& a, int64_t r0, int64_t r1, T* acc) {
  const int64_t cols = a.cols;
  for (int64_t i = r0; i < r1; ++i) {
    const T* __restrict zi = a.z + i * cols;
    RowStats<T> s;
    for (int64_t c = 0; c < cols; ++c) row_stats_elem(s, zi[c], c);
    const int64_t gi = a.given[i];
    const RowOut<T> o = row_finish(s, gi >= 0 ? zi[gi] : T(0), cols);
    T* __restrict si = a.scores + i * cols;
    const T inv = o.inv_l1;
    PYSD_SIMD
    for (int64_t c = 0; c < cols; ++c) si[c] = (zi[c] > T(0) ? zi[c] : T(0)) * inv;
    a.labels[i] = s.arg;
    a.confidence[i] = o.confidence;
    a.weight[i] = o.weight;
    a.margin[i] = o.margin;

    if (i + 2 < r1) prefetch_neighbours(g, i + 2, a.z_ext, cols);
    gather<true>(g, i, a.z_ext, cols, acc);
    T sum = 0;
    PYSD_SIMD
    for (int64_t c = 0; c < cols; ++c) {
      acc[c] = acc[c] > T(0) ? acc[c] : T(0);
      sum += acc[c];
    }
    const T inv_sum = sum > T(0) ? T(1) / sum : T(0);
    T* __restrict oi = a.oos + i * cols;
    PYSD_SIMD
    for (int64_t c = 0; c < cols; ++c) oi[c] = acc[c] * inv_sum;
  }
}

// One ISA-dispatched entry per kernel and data type.
#define PYSD_PROP_CLONES(T)                                                                                 \
  PYSD_ISA_CLONES void k_copy(const T* s, T* d, T* z, int64_t c, int64_t r0, int64_t r1, double* l) {      \
    copy_block(s, d, z, c, r0, r1, l);                                                                     \
  }                                                                                                        \
  PYSD_ISA_CLONES void k_matvec(const Csr<T>& g, const T* px, const T* p, T* q, int64_t c, T al, int64_t r0,  \
                                int64_t r1, T* acc, double* l) {                                           \
    matvec_block(g, px, p, q, c, al, r0, r1, acc, l);                                                      \
  }                                                                                                        \
  PYSD_ISA_CLONES void k_update(T* x, T* r, const T* p, const T* q, const T* a, int64_t c, int64_t r0,       \
                                int64_t r1, double* l) {                                                   \
    update_block(x, r, p, q, a, c, r0, r1, l);                                                             \
  }                                                                                                        \
  PYSD_ISA_CLONES void k_direction(T* p, const T* r, const T* b, int64_t c, int64_t r0, int64_t r1) {      \
    direction_block(p, r, b, c, r0, r1);                                                                   \
  }                                                                                                        \
  PYSD_ISA_CLONES void k_zhou(const Csr<T>& g, const T* y, const T* zx, const T* zc, T* zn, int64_t c, T al,   \
                              int64_t r0, int64_t r1, T* acc, double* l) {                                 \
    zhou_block(g, y, zx, zc, zn, c, al, r0, r1, acc, l);                                                   \
  }                                                                                                        \
  PYSD_ISA_CLONES int64_t k_flips(const T* z0, const T* z1, int64_t c, int64_t r0, int64_t r1) {           \
    return flips_block(z0, z1, c, r0, r1);                                                                 \
  }                                                                                                        \
  PYSD_ISA_CLONES void k_post(const Csr<T>& g, const PostArgs<T>& a, int64_t r0, int64_t r1, T* acc) {      \
    post_block(g, a, r0, r1, acc);                                                                         \
  }
PYSD_PROP_CLONES(float)
PYSD_PROP_CLONES(double)
#undef PYSD_PROP_CLONES

// ---- drivers ----

int64_t num_blocks(int64_t n) { return (n + kBlock - 1) / kBlock; }

// Runs `fn(r0, r1, loc)` over the row blocks and leaves the column
// totals of the partial sums in `total` (call inside the parallel region).
// Block b's partial sums into part[b * cols, (b + 1) * cols).
template <typename Fn>
PYSD_INLINE void block_partials(int64_t n, int64_t cols, int64_t b, std::vector<double>& part,
                                std::vector<double>& loc, Fn& fn) {
  std::fill(loc.begin(), loc.end(), 0.0);
  fn(b * kBlock, std::min(n, (b + 1) * kBlock), loc.data());
  std::copy(loc.begin(), loc.end(), part.begin() + b * cols);
}

// Column c's total of the block partial sums, added in block order.
PYSD_INLINE double column_total(const std::vector<double>& part, int64_t blocks, int64_t cols, int64_t c) {
  double s = 0;
  for (int64_t b = 0; b < blocks; ++b) s += part[b * cols + c];
  return s;
}

template <typename Fn>
void blocks_reduce(int64_t n, int64_t cols, std::vector<double>& part, std::vector<double>& loc, double* total,
                   Fn fn) {
  const int64_t blocks = num_blocks(n);
#pragma omp for schedule(dynamic, kGrab)
  for (int64_t b = 0; b < blocks; ++b) block_partials(n, cols, b, part, loc, fn);
#pragma omp for schedule(static)
  for (int64_t c = 0; c < cols; ++c) total[c] = column_total(part, blocks, cols, c);
}

template <typename T>
void cg_impl(const Csr<T>& g, const CgArgs<T>& a, int64_t* iterations) {
  const int64_t n = g.n, cols = a.cols;
  std::vector<double> part(num_blocks(n) * cols), total(cols);
  std::vector<Column> col(cols);
  std::vector<T> step(cols), beta(cols);
  const T al = T(a.alpha);
  bool any_active = false;
  int64_t it = 0;
#pragma omp parallel
  {
    std::vector<T> acc(cols);
    std::vector<double> loc(cols);
    // r holds b on entry (x0 = 0): p = r, x = 0.
    blocks_reduce(n, cols, part, loc, total.data(), [&](int64_t r0, int64_t r1, double* l) {
      k_copy(a.r, a.p, a.x, cols, r0, r1, l);
    });
#pragma omp single
    any_active = cg_init_columns(col.data(), total.data(), cols, a.tol);
    for (int64_t s = 0; s < a.max_iter && any_active; ++s) {
      blocks_reduce(n, cols, part, loc, total.data(), [&](int64_t r0, int64_t r1, double* l) {
        k_matvec(g, a.p, a.p, a.q, cols, al, r0, r1, acc.data(), l);
      });
#pragma omp single
      cg_step_columns(col.data(), total.data(), step.data(), cols);
      blocks_reduce(n, cols, part, loc, total.data(), [&](int64_t r0, int64_t r1, double* l) {
        k_update(a.x, a.r, a.p, a.q, step.data(), cols, r0, r1, l);
      });
#pragma omp single
      {
        any_active = cg_direction_columns(col.data(), total.data(), beta.data(), cols);
        it = s + 1;
      }
      if (!any_active) break;
#pragma omp for schedule(dynamic, kGrab)
      for (int64_t b = 0; b < num_blocks(n); ++b) {
        k_direction(a.p, a.r, beta.data(), cols, b * kBlock, std::min(n, (b + 1) * kBlock));
      }
    }
  }
  for (int64_t c = 0; c < cols; ++c) a.residual[c] = cg_residual(col[c]);
  *iterations = it;
}

template <typename T>
void iterate_impl(const Csr<T>& g, const IterArgs<T>& a, int64_t* iterations, int64_t* flips) {
  const int64_t n = g.n, cols = a.cols, blocks = num_blocks(n);
  std::vector<double> part(blocks * cols), yy(cols), total(cols);
  const T al = T(a.alpha);
  bool done = false;
  int64_t it = 0, nflips = 0;
  std::fill(a.residual, a.residual + cols, 0.0);
#pragma omp parallel
  {
    std::vector<T> acc(cols);
    std::vector<double> loc(cols);
    blocks_reduce(n, cols, part, loc, yy.data(), [&](int64_t r0, int64_t r1, double* l) {
      k_copy(a.y, a.z0, static_cast<T*>(nullptr), cols, r0, r1, l);
    });
    for (int64_t s = 0; s < a.max_iter && !done; ++s) {
      const T* zc = s % 2 ? a.z1 : a.z0;
      T* zn = s % 2 ? a.z0 : a.z1;
      blocks_reduce(n, cols, part, loc, total.data(), [&](int64_t r0, int64_t r1, double* l) {
        k_zhou(g, a.y, zc, zc, zn, cols, al, r0, r1, acc.data(), l);
      });
#pragma omp single
      {
        done = zhou_check_columns(yy.data(), total.data(), a.residual, cols, a.tol);
        it = s + 1;
      }
    }
    // Both buffers still hold the last two iterates: count argmax flips once.
    if (it > 0) {
#pragma omp for schedule(dynamic, kGrab) reduction(+ : nflips)
      for (int64_t b = 0; b < blocks; ++b) nflips += k_flips(a.z0, a.z1, cols, b * kBlock, std::min(n, (b + 1) * kBlock));
    }
  }
  *iterations = it;
  *flips = nflips;
}

template <typename T>
void post_impl(const Csr<T>& g, const PostArgs<T>& a) {
  const int64_t n = g.n;
#pragma omp parallel
  {
    std::vector<T> acc(a.cols);
#pragma omp for schedule(dynamic, kGrab)
    for (int64_t b = 0; b < num_blocks(n); ++b) k_post(g, a, b * kBlock, std::min(n, (b + 1) * kBlock), acc.data());
  }
}

// One pass of `fn(r0, r1, acc, loc)` over the row blocks in its own parallel region, the column
// totals of its partial sums into `sums` (the steps of the *_step_cpu API).  The totals are added
// after the region, by the caller's thread: one synchronisation per pass, the join.
template <typename T, typename Fn>
void pass_reduce(int64_t n, int64_t cols, double* sums, Fn fn) {
  const int64_t blocks = num_blocks(n);
  std::vector<double> part(blocks * cols);
#pragma omp parallel
  {
    std::vector<T> acc(cols);
    std::vector<double> loc(cols);
    auto pass = [&](int64_t r0, int64_t r1, double* l) { fn(r0, r1, acc.data(), l); };
#pragma omp for schedule(dynamic, kGrab) nowait
    for (int64_t b = 0; b < blocks; ++b) block_partials(n, cols, b, part, loc, pass);
  }
  for (int64_t c = 0; c < cols; ++c) sums[c] = column_total(part, blocks, cols, c);
}

}  // namespace

template <typename T>
void copy_step_cpu(const T* src, T* dst, T* zero, int64_t n, int64_t cols, double* sums) {
  pass_reduce<T>(n, cols, sums, [&](int64_t r0, int64_t r1, T*, double* l) {
    k_copy(src, dst, zero, cols, r0, r1, l);
  });
}

template <typename T>
void matvec_step_cpu(const Csr<T>& g, const T* p_ext, const T* p, T* q, int64_t cols, double alpha, double* sums) {
  pass_reduce<T>(g.n, cols, sums, [&](int64_t r0, int64_t r1, T* acc, double* l) {
    k_matvec(g, p_ext, p, q, cols, T(alpha), r0, r1, acc, l);
  });
}

template <typename T>
void update_step_cpu(T* x, T* r, const T* p, const T* q, const T* step, int64_t n, int64_t cols, double* sums) {
  pass_reduce<T>(n, cols, sums, [&](int64_t r0, int64_t r1, T*, double* l) {
    k_update(x, r, p, q, step, cols, r0, r1, l);
  });
}

template <typename T>
void direction_step_cpu(T* p, const T* r, const T* beta, int64_t n, int64_t cols) {
#pragma omp parallel for schedule(dynamic, kGrab)
  for (int64_t b = 0; b < num_blocks(n); ++b) k_direction(p, r, beta, cols, b * kBlock, std::min(n, (b + 1) * kBlock));
}

template <typename T>
void zhou_step_cpu(const Csr<T>& g, const T* y, const T* z_ext, const T* z, T* out, int64_t cols, double alpha,
                   double* sums) {
  pass_reduce<T>(g.n, cols, sums, [&](int64_t r0, int64_t r1, T* acc, double* l) {
    k_zhou(g, y, z_ext, z, out, cols, T(alpha), r0, r1, acc, l);
  });
}

template <typename T>
int64_t flips_step_cpu(const T* z0, const T* z1, int64_t n, int64_t cols) {
  int64_t flips = 0;
#pragma omp parallel for schedule(dynamic, kGrab) reduction(+ : flips)
  for (int64_t b = 0; b < num_blocks(n); ++b) flips += k_flips(z0, z1, cols, b * kBlock, std::min(n, (b + 1) * kBlock));
  return flips;
}

#define PYSD_PROP_STEPS(T)                                                                                  \
  template void copy_step_cpu<T>(const T*, T*, T*, int64_t, int64_t, double*);                             \
  template void matvec_step_cpu<T>(const Csr<T>&, const T*, const T*, T*, int64_t, double, double*);       \
  template void update_step_cpu<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t, double*);       \
  template void direction_step_cpu<T>(T*, const T*, const T*, int64_t, int64_t);                           \
  template void zhou_step_cpu<T>(const Csr<T>&, const T*, const T*, const T*, T*, int64_t, double, double*); \
  template int64_t flips_step_cpu<T>(const T*, const T*, int64_t, int64_t);
PYSD_PROP_STEPS(float)
PYSD_PROP_STEPS(double)
#undef PYSD_PROP_STEPS

void cg_cpu(const Csr<float>& g, const CgArgs<float>& a, int64_t* it) { cg_impl(g, a, it); }
void cg_cpu(const Csr<double>& g, const CgArgs<double>& a, int64_t* it) { cg_impl(g, a, it); }
void iterate_cpu(const Csr<float>& g, const IterArgs<float>& a, int64_t* it, int64_t* fl) {
  iterate_impl(g, a, it, fl);
}
void iterate_cpu(const Csr<double>& g, const IterArgs<double>& a, int64_t* it, int64_t* fl) {
  iterate_impl(g, a, it, fl);
}
void post_cpu(const Csr<float>& g, const PostArgs<float>& a) { post_impl(g, a); }
void post_cpu(const Csr<double>& g, const PostArgs<double>& a) { post_impl(g, a); }

}  // namespace propagate
}  // namespace pysd
