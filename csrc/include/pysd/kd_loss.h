// Per-row math of the fused distillation loss, shared by the CPU and CUDA
// launchers.  A row is processed in passes over its C entries:
//
//   1. max pass      ms = max s, mt = max t (teacher logits / log-probs)
//   2. exp pass      sums of exp((s-ms)/T), exp((t-mt)/T), exp(s-ms) and the
//                    forward-KL accumulator (one `exp_elem` per entry)
//   3. (rkl / jsd)   the divergence itself, which the gradient needs
//   4. grad pass     dL/ds for every entry (`grad_elem`)
//
// `finalize` turns the pass-2/3 totals into the row loss and the scalar
// coefficients of the gradient, so each pass is a flat loop the compiler can
// vectorize (CPU) or a strided block loop (CUDA).
//
// Notation: z = s/T and u = t/T (teacher logits or log-probs), q = softmax(z),
// p = softmax(u) or the given probabilities, q1 = softmax(s) for the hard CE.
#pragma once

#include "pysd/common.h"

namespace pysd {
namespace kd_loss {

enum Divergence : int { kFKL = 0, kRKL = 1, kJSD = 2 };
enum TeacherFormat : int { kNoTeacher = -1, kLogits = 0, kProbs = 1, kLogProbs = 2 };
// How the hard CE gets softmax(s) at T = 1: shared with the soft term (T = 1),
// its own exp, or an integer power of the soft term's exponential.
enum CeMode : int { kCeShared = 0, kCeExp = 1, kCePow = 2 };

// Options shared by every row.
struct Config {
  int64_t rows = 0, cols = 0;
  int divergence = kFKL;
  int teacher_format = kNoTeacher;
  double beta = 0.5;
  double temperature = 1.0;
  double soft_coef = 1.0;        // soft_weight * (T^2 if scale_t2)
  double hard_weight = 0.0;      // weight of CE(softmax(s), target)
  double label_smoothing = 0.0;
  int64_t ignore_index = -100;
  bool has_target = false;
  bool compute_grad = false;

  PYSD_HD bool has_teacher() const { return teacher_format != kNoTeacher; }
  PYSD_HD bool teacher_is_logits() const {
    return teacher_format == kLogits || teacher_format == kLogProbs;
  }
  PYSD_HD bool has_soft() const { return has_teacher() && soft_coef != 0.0; }
  PYSD_HD bool has_hard() const { return has_target && hard_weight != 0.0; }
  // The hard CE needs softmax(s) at T = 1 separately only when T != 1.
  PYSD_HD bool separate_ce() const { return has_hard() && temperature != 1.0; }
  // For a small integer T, exp(s - m) = exp((s - m) / T)^T: multiplies instead of an exp.
  PYSD_HD int ce_power() const {
    const double r = floor(temperature + 0.5);
    return (separate_ce() && temperature == r && r >= 2.0 && r <= 16.0) ? int(r) : 0;
  }
  PYSD_HD int ce_mode() const { return !separate_ce() ? kCeShared : ce_power() ? kCePow : kCeExp; }
};

// Raw pointers and row strides of one call.  `In` is the storage type of the
// logits and of the gradient; `A` the accumulation type (float or double).
template <typename In, typename A>
struct Args {
  const In* student = nullptr; int64_t student_stride = 0;
  const In* teacher = nullptr; int64_t teacher_stride = 0;
  const int64_t* target = nullptr;   // (rows,) or null
  const A* weight = nullptr;         // (rows,) or null
  const double* grad_scale = nullptr;  // 0-d: d(reduced loss)/d(row loss) before weights
  In* grad = nullptr; int64_t grad_stride = 0;  // (rows, cols) or null
  A* loss = nullptr;                 // (rows,) weighted per-row loss
};

// Totals of the max and exp passes of one row.
template <typename A>
struct Totals {
  A ms = neg_inf<A>(), mt = neg_inf<A>();
  A sz = 0, su = 0, s1 = 0;   // sum exp((s-ms)/T), exp((t-mt)/T) or sum p, exp(s-ms)
  A fkl = 0;                  // sum p * (log p - log q) minus the lse terms (see finalize)
  A ssum = 0;                 // sum (s - ms), for label smoothing
};

// Smallest x in (0, 1] whose n-th power is still a normal number: below it the
// power is flushed to 0 before multiplying, which avoids denormal slow paths.
template <typename A>
PYSD_HD A pow_floor(int n) {
  const A min_exp = sizeof(A) == 4 ? A(-126) : A(-1022);
  return fexp(A(0.6931471805599453) * min_exp / A(n));
}

// One entry of the exp pass, specialized on the teacher format TF and on how
// the hard CE gets its T = 1 softmax (CE, a CeMode), so that the vector loops
// compute only the exponentials they use.  Returns exp((s-ms)/T) in `ez`; `eu`
// receives exp((t-mt)/T) (logits) or t (probs), `e1` exp(s-ms).  `n` and
// `floor` are the power and its flush threshold for kCePow; NP > 0 is n known
// at compile time (2 or 4, the usual distillation temperatures), which takes
// the power's blends out of the vector loop.
template <int TF, int CE, int NP = 0, typename A>
PYSD_HD void exp_elem(A inv_t, A ms, A mt, A s, A t, int n, A floor, A& ez, A& eu, A& e1, Totals<A>& acc) {
  const A zs = (s - ms) * inv_t;
  ez = fexp_le0(zs);
  acc.sz += ez;
  if (TF == kLogits || TF == kLogProbs) {
    const A us = (t - mt) * inv_t;
    eu = fexp_le0(us);
    acc.su += eu;
    // eu == 0 guards a -inf teacher logit against 0 * inf.
    acc.fkl += eu > A(0) ? eu * (us - zs) : A(0);
  } else if (TF == kProbs) {
    eu = t;
    acc.su += t;
    acc.fkl += t > A(0) ? t * (flog(t) - zs) : A(0);
  } else {
    eu = A(0);
  }
  if (CE == kCeExp) {
    e1 = fexp_le0(s - ms);
  } else if (CE == kCePow) {
    const A x1 = ez > floor ? ez : A(0), x2 = x1 * x1;
    if (NP == 2) {
      e1 = x2;
    } else if (NP == 4) {
      e1 = x2 * x2;
    } else {
      // Branch-free binary powering (n <= 16) so the vector loop stays a straight line.
      const A x4 = x2 * x2, x8 = x4 * x4;
      e1 = (n & 1 ? x1 : A(1)) * (n & 2 ? x2 : A(1)) * (n & 4 ? x4 : A(1)) * (n & 8 ? x8 : A(1)) *
           (n & 16 ? x8 * x8 : A(1));
    }
  } else {
    e1 = A(0);
  }
  acc.s1 += e1;
}

// Row results: the weighted loss and the gradient coefficients such that
//   dL/ds_j = cz*ez_j + c1*e1_j + cp*p_j + cc + cq*ez_j*(f_j - fsub) + [j == y]*cy
// where ez, e1 are the exp-pass values, p_j the teacher's unnormalized
// probability (eu_j) and f_j the divergence's per-entry term (rkl/jsd).
template <typename A>
struct Row {
  A loss = 0;
  A cz = 0, c1 = 0, cp = 0, cc = 0, cq = 0, fsub = 0, cy = 0;
  int64_t y = -1;
  bool valid = true;
  A log_sz = 0, log_su = 0, divergence = 0;  // needed by the rkl/jsd passes
};

// log q_j of one entry, from the raw values and row totals.
template <typename A>
PYSD_HD A log_q(A s, A ms, A inv_t, A log_sz) { return (s - ms) * inv_t - log_sz; }


// Per-entry divergence term for rkl and jsd, given q_j, p_j and their logs.
// rkl:  D = sum q (log q - log p);  f = log q - log p
// jsd:  D = beta KL(p||M) + (1-beta) KL(q||M), M = beta p + (1-beta) q;
//       f = log q - log M, and `d` receives the entry's share of D.
template <typename A>
PYSD_HD A div_elem(const Config& c, A q, A lq, A p, A lp, A& d) {
  if (c.divergence == kRKL) {
    const A f = lq - lp;
    d = q > A(0) ? q * f : A(0);
    return f;
  }
  // log M in log space: beta*p + (1-beta)*q underflows to 0 (and log M to
  // -inf) long before log p and log q do.
  const A beta = A(c.beta);
  const A a = flog(beta) + lp, b = flog(A(1) - beta) + lq;
  const A hi = a > b ? a : b, lo = a > b ? b : a;
  const A lm = hi + flog(A(1) + fexp(lo - hi));
  const A f = lq - lm;
  d = (p > A(0) ? beta * p * (lp - lm) : A(0)) + (q > A(0) ? (A(1) - beta) * q * f : A(0));
  return f;
}

// Row loss and gradient coefficients from the exp-pass totals.  For rkl / jsd
// `finalize` is called before the divergence pass, then `finalize_divergence`
// adds the divergence once its total `dsum` (and, for jsd, sum q*f) is known.
template <typename A>
PYSD_HD Row<A> finalize(const Config& c, const Totals<A>& acc, A s_target, int64_t y,
                        A weight, double grad_scale) {
  Row<A> r;
  const bool ignored = c.has_target && y == c.ignore_index;
  r.valid = !ignored;
  if (ignored) return r;  // zero loss, zero gradient
  const A inv_t = A(1) / A(c.temperature);
  const A g = A(grad_scale) * weight;
  r.log_sz = flog(acc.sz);
  A loss = 0;

  if (c.has_hard()) {
    const A hw = A(c.hard_weight), eps = A(c.label_smoothing);
    const A log_s1 = c.separate_ce() ? flog(acc.s1) : r.log_sz;
    const A nll = log_s1 - (s_target - acc.ms);
    const A smooth = log_s1 - acc.ssum / A(c.cols);
    loss += hw * ((A(1) - eps) * nll + eps * smooth);
    const A cq1 = g * hw / (c.separate_ce() ? acc.s1 : acc.sz);
    if (c.separate_ce()) r.c1 = cq1; else r.cz = cq1;
    r.cc = -g * hw * eps / A(c.cols);
    r.cy = -g * hw * (A(1) - eps);
    r.y = y;
  }

  if (c.has_soft()) {
    const A coef = A(c.soft_coef);
    const A gs = g * coef * inv_t;  // d/ds = (1/T) d/dz
    if (c.teacher_is_logits()) {
      r.log_su = flog(acc.su);
    }
    if (c.divergence == kFKL) {
      // logits: KL = sum p((u-mu) - (z-mz)) - log su + log sz
      // probs:  KL = sum (p log p - p (z-mz)) + psum log sz
      A kl;
      if (c.teacher_is_logits()) {
        kl = acc.fkl / acc.su - r.log_su + r.log_sz;
        r.cp = -gs / acc.su;
        r.cz += gs / acc.sz;
      } else {
        kl = acc.fkl + acc.su * r.log_sz;
        r.cp = -gs;
        r.cz += gs * acc.su / acc.sz;  // psum * q
      }
      loss += coef * kl;
      r.divergence = kl;
    } else {
      r.cq = gs * (c.divergence == kJSD ? A(1) - A(c.beta) : A(1)) / acc.sz;
    }
  }
  r.loss = loss * weight;
  return r;
}

// Completes an rkl / jsd row once the divergence pass has summed `dsum` (the
// divergence) and `qf` (sum q*f, which the gradient subtracts).
template <typename A>
PYSD_HD void finalize_divergence(const Config& c, Row<A>& r, A dsum, A qf, A weight) {
  if (!r.valid || !c.has_soft() || c.divergence == kFKL) return;
  r.divergence = dsum;
  r.fsub = qf;  // rkl: sum q f is the divergence itself
  r.loss += A(c.soft_coef) * dsum * weight;
}

// One entry of the gradient; `p` is eu_j (teacher logits) or t_j (probs).
template <typename A>
PYSD_HD A grad_elem(const Row<A>& r, A ez, A e1, A p, A f) {
  A g = r.cz * ez + r.c1 * e1 + r.cp * p + r.cc;
  // ez == 0 (an underflowed q_j) contributes nothing, even where f is infinite.
  if (r.cq != A(0)) g += ez > A(0) ? r.cq * ez * (f - r.fsub) : A(0);
  return g;
}


// Launchers: csrc/cpu/kd_loss.cpp (OpenMP over rows) and csrc/cuda/kd_loss.cu
// (enqueued on `stream`, a cudaStream_t as an integer; CUDA errors throw std::runtime_error).
void run_cpu(const Config& c, const Args<float, float>& a);
void run_cpu(const Config& c, const Args<double, double>& a);
void run_cpu(const Config& c, const Args<bf16_t, float>& a);
void run_cpu(const Config& c, const Args<f16_t, float>& a);
void run_cuda(const Config& c, const Args<float, float>& a, uintptr_t stream);
void run_cuda(const Config& c, const Args<double, double>& a, uintptr_t stream);
void run_cuda(const Config& c, const Args<bf16_t, float>& a, uintptr_t stream);
void run_cuda(const Config& c, const Args<f16_t, float>& a, uintptr_t stream);

}  // namespace kd_loss
}  // namespace pysd
