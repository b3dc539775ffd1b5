// CPU launcher of the fused distillation loss: OpenMP over rows, and per row
// the passes of pysd/kd_loss.h as `omp simd` loops.  The exp pass keeps its
// exponentials in a per-thread scratch row (L2-resident) so the gradient pass
// is pure multiply-adds: 2 exp per entry (3 when the hard CE needs T = 1 and T
// is not a small integer).
#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "memory.h"
#include "pysd/kd_loss.h"
#include "simd.h"

namespace pysd {
namespace kd_loss {
namespace {


template <typename In, typename A>
struct Scratch { A* ez; A* eu; A* e1; A* f; };

// Pass 2 works in blocks; before each block it prefetches the matching part of
// the next row, so that row's DRAM reads overlap this row's exponentials.
constexpr int64_t kBlock = 64;

template <typename In>
PYSD_INLINE void prefetch_range(const In* p, int64_t n) {
  constexpr int64_t kLine = 64 / int64_t(sizeof(In));
  for (int64_t j = 0; j < n; j += kLine) __builtin_prefetch(p + j, 0, 2);
}

// Gradient of an fkl / CE-only row from the exp-pass scratch rows.
template <int TF, int CE, typename A, typename Out>
PYSD_INLINE void fkl_grad(const Row<A>& r, const A* __restrict bz, const A* __restrict b1, const A* __restrict bu,
                          Out* __restrict dst, int64_t n) {
  const A cz = r.cz, c1 = r.c1, cp = r.cp, cc = r.cc;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    A v = cz * bz[j] + cc;
    if (CE != kCeShared) v += c1 * b1[j];
    if (TF != kNoTeacher) v += cp * bu[j];
    dst[j] = from_acc<Out>(v);
  }
}

template <int TF, int CE, int NP, typename In, typename A>
PYSD_INLINE void row(const Config& c, const Args<In, A>& a, int64_t i, int64_t next, const Scratch<In, A>& b) {
  const int64_t n = c.cols;
  const In* __restrict s = a.student + i * a.student_stride;
  const In* __restrict t = TF == kNoTeacher ? nullptr : a.teacher + i * a.teacher_stride;
  In* __restrict g = c.compute_grad ? a.grad + i * a.grad_stride : nullptr;
  A* __restrict bz = b.ez;
  A* __restrict bu = b.eu;
  A* __restrict b1 = b.e1;
  A* __restrict bf = b.f;
  const int64_t y = c.has_target ? a.target[i] : -1;
  const A w = a.weight ? a.weight[i] : A(1);
  const A inv_t = A(1) / A(c.temperature);
  const int npow = c.ce_power();
  const A floor = CE == kCePow ? pow_floor<A>(npow) : A(0);

  if (c.has_target && y == c.ignore_index) {
    a.loss[i] = A(0);
    if (g) std::fill(g, g + n, from_acc<In>(A(0)));
    return;
  }

  // Pass 1: row maxima (and the raw sum for label smoothing).
  Totals<A> acc;
  A ms = neg_inf<A>(), mt = neg_inf<A>();
#pragma omp simd reduction(max : ms)
  for (int64_t j = 0; j < n; ++j) ms = std::max(ms, A(to_float(s[j])));
  if (TF == kLogits || TF == kLogProbs) {
#pragma omp simd reduction(max : mt)
    for (int64_t j = 0; j < n; ++j) mt = std::max(mt, A(to_float(t[j])));
  }
  acc.ms = ms;
  acc.mt = mt;
  if (c.has_hard() && c.label_smoothing != 0.0) {
    A ssum = 0;
#pragma omp simd reduction(+ : ssum)
    for (int64_t j = 0; j < n; ++j) ssum += A(to_float(s[j])) - ms;
    acc.ssum = ssum;
  }

  // Pass 2: exponentials and their sums.
  const In* s_next = next >= 0 ? a.student + next * a.student_stride : nullptr;
  const In* t_next = (next >= 0 && TF != kNoTeacher) ? a.teacher + next * a.teacher_stride : nullptr;
  A sz = 0, su = 0, s1 = 0, fkl = 0;
  for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
    const int64_t j1 = std::min(n, j0 + kBlock);
    if (s_next) prefetch_range(s_next + j0, j1 - j0);
    if (t_next) prefetch_range(t_next + j0, j1 - j0);
#pragma omp simd reduction(+ : sz, su, s1, fkl)
    for (int64_t j = j0; j < j1; ++j) {
      Totals<A> e;
      A ez, eu, e1;
      exp_elem<TF, CE, NP>(inv_t, ms, mt, A(to_float(s[j])), TF == kNoTeacher ? A(0) : A(to_float(t[j])), npow,
                       floor, ez, eu, e1, e);
      bz[j] = ez;
      bu[j] = eu;
      b1[j] = e1;
      sz += e.sz;
      su += e.su;
      s1 += e.s1;
      fkl += e.fkl;
    }
  }
  acc.sz = sz;
  acc.su = su;
  acc.s1 = s1;
  acc.fkl = fkl;

  const A s_target = (c.has_hard() && y >= 0 && y < n) ? A(to_float(s[y])) : A(0);
  const bool bad_target = c.has_hard() && (y < 0 || y >= n);
  Row<A> r = finalize(c, acc, s_target, y, w, *a.grad_scale);

  // Pass 3 (rkl / jsd): the divergence, which the gradient needs.
  const bool div_pass = TF != kNoTeacher && c.has_soft() && c.divergence != kFKL;
  if (div_pass) {
    const A log_sz = r.log_sz, log_su = r.log_su, inv_sz = A(1) / acc.sz;
    const A inv_su = TF == kProbs ? A(1) : A(1) / acc.su;
    A dsum = 0, qf = 0;
#pragma omp simd reduction(+ : dsum, qf)
    for (int64_t j = 0; j < n; ++j) {
      const A q = bz[j] * inv_sz;
      const A p = bu[j] * inv_su;
      const A lq = log_q(A(to_float(s[j])), ms, inv_t, log_sz);
      const A lp = TF == kProbs ? flog(p) : (A(to_float(t[j])) - mt) * inv_t - log_su;
      A d;
      const A f = div_elem(c, q, lq, p, lp, d);
      bf[j] = f;
      dsum += d;
      qf += q > A(0) ? q * f : A(0);
    }
    finalize_divergence(c, r, dsum, qf, w);
  }
  // An out-of-range class index can only reach here when validation was
  // skipped (torch.compile); make it loud rather than read out of bounds.
  a.loss[i] = bad_target ? A(NAN) : r.loss;

  // Pass 4: the gradient.
  if (g) {
    if (div_pass) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) g[j] = from_acc<In>(grad_elem(r, bz[j], b1[j], bu[j], bf[j]));
    } else if (std::is_same<In, float>::value && cpu::stream_rows()) {
      // float rows go through the scratch row and leave with streaming stores
      // (see stream_copy); the class fix-up happens before they leave.
      float* out = reinterpret_cast<float*>(bf);
      fkl_grad<TF, CE>(r, bz, b1, bu, out, n);
      if (r.y >= 0 && r.y < n) out[r.y] += float(r.cy);
      if (bad_target) std::fill(out, out + n, float(NAN));
      cpu::stream_copy(reinterpret_cast<float*>(g), out, n);
      return;
    } else {
      fkl_grad<TF, CE>(r, bz, b1, bu, g, n);
    }
    if (r.y >= 0 && r.y < n) {
      g[r.y] = from_acc<In>(A(to_float(g[r.y])) + r.cy);
    } else if (bad_target) {
      std::fill(g, g + n, from_acc<In>(A(NAN)));
    }
  }
}

// The row a thread prefetches while on row i of its block [.., r1); -1 after the last.
PYSD_INLINE int64_t next_row(int64_t i, int64_t r1) { return i + 1 < r1 ? i + 1 : int64_t(-1); }

template <int TF, typename In, typename A>
PYSD_INLINE void rows_tf(const Config& c, const Args<In, A>& a, int64_t r0, int64_t r1,
                         const Scratch<In, A>& b) {
  switch (c.ce_mode()) {
    case kCeExp: for (int64_t i = r0; i < r1; ++i) row<TF, kCeExp, 0>(c, a, i, next_row(i, r1), b); break;
    case kCePow: for (int64_t i = r0; i < r1; ++i) row<TF, kCePow, 0>(c, a, i, next_row(i, r1), b); break;
    default: for (int64_t i = r0; i < r1; ++i) row<TF, kCeShared, 0>(c, a, i, next_row(i, r1), b); break;
  }
}

template <typename In, typename A>
PYSD_INLINE Scratch<In, A> scratch_rows(const Config& c, A* scratch) {
  const int64_t n = c.cols;
  return Scratch<In, A>{scratch, scratch + n, scratch + 2 * n, scratch + 3 * n};
}

template <typename In, typename A>
PYSD_INLINE void rows(const Config& c, const Args<In, A>& a, int64_t r0, int64_t r1, A* scratch) {
  const Scratch<In, A> b = scratch_rows<In>(c, scratch);
  switch (c.teacher_format) {
    case kLogits:
    case kLogProbs: rows_tf<kLogits>(c, a, r0, r1, b); break;
    case kProbs: rows_tf<kProbs>(c, a, r0, r1, b); break;
    default: rows_tf<kNoTeacher>(c, a, r0, r1, b); break;
  }
}

// One ISA-dispatched entry per storage type.
PYSD_ISA_CLONES void rows_f32(const Config& c, const Args<float, float>& a, int64_t r0, int64_t r1,
                              float* s) { rows(c, a, r0, r1, s); }
PYSD_ISA_CLONES void rows_f64(const Config& c, const Args<double, double>& a, int64_t r0, int64_t r1,
                              double* s) { rows(c, a, r0, r1, s); }
PYSD_ISA_CLONES void rows_bf16(const Config& c, const Args<bf16_t, float>& a, int64_t r0, int64_t r1,
                               float* s) { rows(c, a, r0, r1, s); }
PYSD_ISA_CLONES void rows_f16(const Config& c, const Args<f16_t, float>& a, int64_t r0, int64_t r1,
                              float* s) { rows(c, a, r0, r1, s); }

// Float rows with a logit teacher and a hard term at T = 2 or 4 (the usual
// distillation temperatures): the T = 1 softmax is a compile-time power of the
// soft one, in entries of their own, since next to the generic power's loop
// the register allocator spills this one's (~12% of the kernel at T = 4).
template <int NP>
PYSD_INLINE void rows_pow(const Config& c, const Args<float, float>& a, int64_t r0, int64_t r1, float* s) {
  const Scratch<float, float> b = scratch_rows<float>(c, s);
  for (int64_t i = r0; i < r1; ++i) row<kLogits, kCePow, NP>(c, a, i, next_row(i, r1), b);
}
PYSD_ISA_CLONES void rows_f32_pow2(const Config& c, const Args<float, float>& a, int64_t r0, int64_t r1,
                                   float* s) { rows_pow<2>(c, a, r0, r1, s); }
PYSD_ISA_CLONES void rows_f32_pow4(const Config& c, const Args<float, float>& a, int64_t r0, int64_t r1,
                                   float* s) { rows_pow<4>(c, a, r0, r1, s); }

template <typename In, typename A, typename Fn>
void launch(const Config& c, const Args<In, A>& a, Fn fn) {
  if (c.rows == 0) return;
  if (a.grad != nullptr && a.grad_stride == c.cols) {
    cpu::advise_huge_pages(a.grad, size_t(c.rows) * size_t(c.cols) * sizeof(In));
  }
  // Rows are independent; each thread takes one contiguous block of rows so it
  // can prefetch its next row.
  const int64_t work = c.rows * std::max<int64_t>(c.cols, 1);
  const bool parallel = work >= (int64_t(1) << 15) && c.rows > 1;
#pragma omp parallel if (parallel)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t chunk = (c.rows + nt - 1) / nt;
    const int64_t r0 = std::min(c.rows, t * chunk), r1 = std::min(c.rows, r0 + chunk);
    if (r0 < r1) {
      std::vector<A> scratch(4 * std::max<int64_t>(c.cols, 1));
      fn(c, a, r0, r1, scratch.data());
    }
  }
}

}  // namespace

void run_cpu(const Config& c, const Args<float, float>& a) {
  // ce_power() is nonzero exactly when the hard CE takes the power path (kCePow)
  const bool logit_teacher = c.teacher_format == kLogits || c.teacher_format == kLogProbs;
  const int power = logit_teacher ? c.ce_power() : 0;
  launch(c, a, power == 2 ? rows_f32_pow2 : power == 4 ? rows_f32_pow4 : rows_f32);
}
void run_cpu(const Config& c, const Args<double, double>& a) { launch(c, a, rows_f64); }
void run_cpu(const Config& c, const Args<bf16_t, float>& a) { launch(c, a, rows_bf16); }
void run_cpu(const Config& c, const Args<f16_t, float>& a) { launch(c, a, rows_f16); }

}  // namespace kd_loss
}  // namespace pysd
