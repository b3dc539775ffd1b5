// CPU launcher of the sparse-teacher distillation loss: OpenMP over rows, the
// steps of pysd/sparse_kd_loss.h per row.  The fused phase keeps the row's
// exponentials in a per-thread scratch row (L2-resident), so the gradient
// sweep is multiply-adds only; the piecewise phases recompute them.
#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "memory.h"
#include "pysd/sparse_kd_loss.h"
#include "simd.h"

namespace pysd {
namespace sparse_kd_loss {
namespace {


template <typename A>
struct Work {
  std::vector<int64_t> kid;
  std::vector<A> lp, gs, delta, bz, b1;
  Work(int64_t k, int64_t w) : kid(std::max<int64_t>(k, 1)), lp(kid.size()), gs(kid.size()), delta(kid.size()),
                               bz(std::max<int64_t>(w, 1)), b1(bz.size()) {}
};

// Statistics of one piece (n entries); `bz` / `b1` receive the exponentials when non-null.
template <typename In, typename A>
PYSD_INLINE Stats<A> piece_stats(const Config& c, const In* __restrict s, int64_t n, A* __restrict bz,
                                 A* __restrict b1) {
  Stats<A> st;
  const A inv_t = A(1) / A(c.temperature);
  A ms = neg_inf<A>();
#pragma omp simd reduction(max : ms)
  for (int64_t j = 0; j < n; ++j) ms = std::max(ms, A(to_float(s[j])));
  st.ms = ms;
  if (c.needs_ssum()) {  // before the early return: a piece of -inf logits makes the sum -inf
    A ssum = 0;
#pragma omp simd reduction(+ : ssum)
    for (int64_t j = 0; j < n; ++j) ssum += A(to_float(s[j]));
    st.ssum = ssum;
  }
  if (n == 0 || ms == neg_inf<A>()) return st;
  A sz = 0, s1 = 0, w = 0;
  if (bz) {
#pragma omp simd reduction(+ : sz)
    for (int64_t j = 0; j < n; ++j) {
      const A e = fexp_le0((A(to_float(s[j])) - ms) * inv_t);
      bz[j] = e;
      sz += e;
    }
  } else {
#pragma omp simd reduction(+ : sz)
    for (int64_t j = 0; j < n; ++j) sz += fexp_le0((A(to_float(s[j])) - ms) * inv_t);
  }
  if (c.separate_ce()) {
#pragma omp simd reduction(+ : s1)
    for (int64_t j = 0; j < n; ++j) {
      const A e = fexp_le0(A(to_float(s[j])) - ms);
      if (b1) b1[j] = e;
      s1 += e;
    }
  }
  if (c.needs_w()) {
#pragma omp simd reduction(+ : w)
    for (int64_t j = 0; j < n; ++j) {
      const A zc = (A(to_float(s[j])) - ms) * inv_t, e = fexp_le0(zc);
      w += e > A(0) ? e * zc : A(0);
    }
  }
  st.sz = sz; st.s1 = s1; st.w = w;
  return st;
}

// Adds the student logits at the teacher ids and the target that lie in [v0, v0 + n).
template <typename In, typename A>
PYSD_INLINE void gather(const Config& c, const In* s, int64_t n, const int64_t* kid, int64_t y, A* gs, Stats<A>& st) {
  for (int64_t e = 0; e < c.k; ++e) {
    const int64_t j = kid[e] - c.v0;
    if (kid[e] >= 0 && j >= 0 && j < n) gs[e] += A(to_float(s[j]));
  }
  const int64_t jy = y - c.v0;
  if (c.has_hard() && y >= 0 && jy >= 0 && jy < n) st.sy += A(to_float(s[jy]));
}

// jsd with a uniform tail: every class of the piece summed as a tail class of log-probability lpt.
template <typename In, typename A>
PYSD_INLINE void jsd_tail(const Config& c, const In* s, int64_t n, A lpt, Stats<A>& st) {
  const A inv_t = A(1) / A(c.temperature), beta = A(c.beta), log_sz = flog(st.sz), ms = st.ms;
  A jd = 0, jq = 0;
#pragma omp simd reduction(+ : jd, jq)
  for (int64_t j = 0; j < n; ++j) {
    A d = 0, q = 0;
    jsd_tail_elem(beta, inv_t, ms, log_sz, lpt, A(to_float(s[j])), d, q);
    jd += d;
    jq += q;
  }
  st.jd += jd;
  st.jq += jq;
}

// Gradient of one piece: affine sweep, then the per-entry and target fix-ups.
// `bz` / `b1` hold the piece's exponentials (fused phase) or are null
// (recomputed).  With `out` (a float piece on a CPU with streaming stores, see
// cpu::stream_copy) the row is built in the scratch row `out` and streamed to g.
template <typename In, typename A>
PYSD_INLINE void apply_piece(const Config& c, const Coef<A>& co, const In* __restrict s, int64_t n,
                             const A* bz, const A* __restrict b1, const int64_t* kid, const A* delta,
                             int64_t y, In* __restrict g, A* out = nullptr) {
  if (co.valid != co.valid) {
    std::fill(g, g + n, from_acc<In>(A(NAN)));
    return;
  }
  if (co.valid == A(0)) {
    std::fill(g, g + n, from_acc<In>(A(0)));
    return;
  }
  const A inv_t = A(1) / A(c.temperature), ms = co.ms, cz = co.cz, cc = co.cc;
  const bool affine = co.cw == A(0) && co.cj == A(0) && co.c1 == A(0);
  if (out != nullptr && affine && bz != nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] = cz * bz[j] + cc;
    for (int64_t e = 0; e < c.k; ++e) {
      const int64_t j = kid[e] - c.v0;
      if (kid[e] >= 0 && j >= 0 && j < n) out[j] += delta[e];
    }
    const int64_t jy = y - c.v0;
    if (y >= 0 && jy >= 0 && jy < n) out[jy] += co.cy;
    cpu::stream_copy(reinterpret_cast<float*>(g), reinterpret_cast<const float*>(out), n);
    return;
  }
  if (affine) {
    if (bz) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) g[j] = from_acc<In>(cz * bz[j] + cc);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) g[j] = from_acc<In>(cz * fexp_le0((A(to_float(s[j])) - ms) * inv_t) + cc);
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const A sv = A(to_float(s[j]));
      const A ez = bz ? bz[j] : fexp_le0((sv - ms) * inv_t);
      const A e1 = co.c1 == A(0) ? A(0) : (b1 ? b1[j] : fexp_le0(sv - ms));
      g[j] = from_acc<In>(apply_elem(c, co, inv_t, sv, ez, e1));
    }
  }
  for (int64_t e = 0; e < c.k; ++e) {
    const int64_t j = kid[e] - c.v0;
    if (kid[e] >= 0 && j >= 0 && j < n) g[j] = from_acc<In>(A(to_float(g[j])) + delta[e]);
  }
  const int64_t jy = y - c.v0;
  if (y >= 0 && jy >= 0 && jy < n) g[jy] = from_acc<In>(A(to_float(g[jy])) + co.cy);
}

template <typename In, typename A>
PYSD_INLINE void row(const Config& c, int phase, const Args<In, A>& a, int64_t i, Work<A>& wk) {
  const int64_t k = c.k, n = c.width;
  const In* s = a.student + i * a.student_stride;
  In* g = a.grad ? a.grad + i * a.grad_stride : nullptr;
  const int64_t y = c.has_target ? a.target[i] : -1;
  const bool ignored = c.has_target && y == c.ignore_index;
  int64_t* kid = wk.kid.data();
  A* lp = wk.lp.data();
  const TeacherRow<A> tr = teacher_row(c, a.ids + i * k, a.vals + i * k, kid, lp);
  const A w = a.weight ? a.weight[i] : A(1);
  const A gscale = A(*a.grad_scale) * w;

  if (phase == kFused) {
    if (ignored) {
      a.loss[i] = A(0);
      if (g) std::fill(g, g + n, from_acc<In>(A(0)));
      return;
    }
    A* gs = wk.gs.data();
    std::fill(gs, gs + k, A(0));
    Stats<A> st = piece_stats(c, s, n, wk.bz.data(), c.separate_ce() ? wk.b1.data() : (A*)nullptr);
    gather(c, s, n, kid, y, gs, st);
    if (c.jsd_uniform()) jsd_tail(c, s, n, tr.lpt, st);
    Coef<A> co;
    a.loss[i] = finalize(c, st, tr, kid, lp, gs, y, w, gscale, co, wk.delta.data());
    // a float row is staged in place of its exponentials (b1 is free unless the CE needs it)
    A* out = std::is_same<In, float>::value && cpu::stream_rows() ? wk.bz.data() : nullptr;
    if (g) apply_piece(c, co, s, n, wk.bz.data(), wk.b1.data(), kid, wk.delta.data(), y, g, out);
  } else if (phase == kStats) {
    if (ignored) return;
    Stats<A> tot;
    tot.load(a.stats + i * kNumStats);
    Stats<A> st = piece_stats(c, s, n, (A*)nullptr, (A*)nullptr);
    gather(c, s, n, kid, y, a.gathered + i * k, st);
    merge(c, tot, st);
    tot.store(a.stats + i * kNumStats);
  } else if (phase == kJsdTail) {
    if (ignored) return;
    Stats<A> tot;
    tot.load(a.stats + i * kNumStats);
    jsd_tail(c, s, n, tr.lpt, tot);
    tot.store(a.stats + i * kNumStats);
  } else if (phase == kFinalize) {
    Stats<A> st;
    st.load(a.stats + i * kNumStats);
    Coef<A> co;
    a.loss[i] = finalize(c, st, tr, kid, lp, a.gathered + i * k, y, w, gscale, co, a.delta + i * k);
    co.store(a.coef + i * kNumCoef);
  } else {  // kApply
    Coef<A> co;
    co.load(a.coef + i * kNumCoef);
    apply_piece(c, co, s, n, (const A*)nullptr, (const A*)nullptr, kid, a.delta + i * k, y, g);
  }
}

template <typename In, typename A>
PYSD_INLINE void rows(const Config& c, int phase, const Args<In, A>& a, int64_t r0, int64_t r1) {
  Work<A> wk(c.k, phase == kFused ? c.width : 0);
  for (int64_t i = r0; i < r1; ++i) row(c, phase, a, i, wk);
}

PYSD_ISA_CLONES void rows_f32(const Config& c, int p, const Args<float, float>& a, int64_t r0, int64_t r1) {
  rows(c, p, a, r0, r1);
}
PYSD_ISA_CLONES void rows_f64(const Config& c, int p, const Args<double, double>& a, int64_t r0, int64_t r1) {
  rows(c, p, a, r0, r1);
}
PYSD_ISA_CLONES void rows_bf16(const Config& c, int p, const Args<bf16_t, float>& a, int64_t r0, int64_t r1) {
  rows(c, p, a, r0, r1);
}
PYSD_ISA_CLONES void rows_f16(const Config& c, int p, const Args<f16_t, float>& a, int64_t r0, int64_t r1) {
  rows(c, p, a, r0, r1);
}

template <typename In, typename A, typename Fn>
void launch(const Config& c, int phase, const Args<In, A>& a, Fn fn) {
  if (c.rows == 0) return;
  if (a.grad != nullptr && a.grad_stride == c.width) {
    cpu::advise_huge_pages(a.grad, size_t(c.rows) * size_t(c.width) * sizeof(In));
  }
  const int64_t work = c.rows * std::max<int64_t>(c.width + c.k * c.k, 1);
  const bool parallel = work >= (int64_t(1) << 15) && c.rows > 1;
#pragma omp parallel if (parallel)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t chunk = (c.rows + nt - 1) / nt;
    const int64_t r0 = std::min(c.rows, t * chunk), r1 = std::min(c.rows, r0 + chunk);
    if (r0 < r1) fn(c, phase, a, r0, r1);
  }
}

}  // namespace

void run_cpu(const Config& c, int phase, const Args<float, float>& a) { launch(c, phase, a, rows_f32); }
void run_cpu(const Config& c, int phase, const Args<double, double>& a) { launch(c, phase, a, rows_f64); }
void run_cpu(const Config& c, int phase, const Args<bf16_t, float>& a) { launch(c, phase, a, rows_bf16); }
void run_cpu(const Config& c, int phase, const Args<f16_t, float>& a) { launch(c, phase, a, rows_f16); }

}  // namespace sparse_kd_loss
}  // namespace pysd
