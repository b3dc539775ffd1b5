// Per-row math of the distillation loss against a sparse (top-k) teacher,
// shared by the CPU and CUDA launchers.  Written so that a row's student
// statistics can be computed over pieces of the vocabulary and merged, and the
// gradient then applied piece by piece: the fused single-row kernel, the
// vocabulary-chunked fused linear head and a vocabulary-parallel head all run
// the same four steps.
//
//   teacher_row   k entries -> log p_e of every distinct in-range id, the log
//                 probability of one tail atom and the tail size (O(k), once).
//   accumulate    a piece [v0, v0 + w) of the student row -> Stats (max, sum of
//                 exp, ...), plus the student logit at each teacher id and at
//                 the target that fall in the piece.  `merge` combines the
//                 Stats of two pieces (online log-sum-exp); gathered logits are
//                 owned by one piece each and merge by addition.
//   jsd_tail      (jsd with tail="uniform" only) a second sweep over each piece
//                 once the merged max / sum are known: the tail's divergence
//                 terms, which are not a function of O(1) statistics.
//   finalize      merged Stats + teacher row + gathered logits -> the row loss,
//                 the affine gradient coefficients (Coef) and one correction
//                 per teacher entry (delta_e).
//   apply         a piece -> dL/ds for its entries: the affine formula for
//                 every entry, then delta_e added at the teacher ids and cy at
//                 the target that lie in the piece.
//
// Notation: z = s/T, q = softmax(z) over the FULL vocabulary V, e_c =
// exp((s_c - ms)/T) with ms the row max, S = sum e_c.  The teacher is a
// distribution over "atoms": its k entries (p_e), plus a tail that depends on
// the policy (kRenormalize: none; kBucket: one atom of mass p_t against the
// student's q_t = 1 - sum_e q_e; kUniform: each of the V - k other classes
// with mass p_t).  Re-tempering raises every atom's probability to r = T_gen/T
// and renormalizes.  The gradient w.r.t. z of D = sum_a F(p_a, q_a) is
// q_c (g_a(c) - sum_c' q_c' g_a(c')) with g = dF/dq_a, which gives the
// per-class formulas in `finalize`.
#pragma once

#include "pysd/kd_loss.h"

namespace pysd {
namespace sparse_kd_loss {

using kd_loss::kFKL;
using kd_loss::kJSD;
using kd_loss::kRKL;

enum Tail : int { kRenormalize = 0, kBucket = 1, kUniform = 2 };
// Same codes as kd_loss::TeacherFormat.
enum Format : int { kLogits = 0, kProbs = 1, kLogProbs = 2 };
// Kernel phases: kFused runs every step on whole rows; the others are the
// piecewise entry points (see the comment at the top).
enum Phase : int { kFused = 0, kStats = 1, kJsdTail = 2, kFinalize = 3, kApply = 4 };

constexpr int kNumStats = 8;   // layout of Stats as a row of A
constexpr int kNumCoef = 12;   // layout of Coef as a row of A

struct Config {
  int64_t rows = 0, vocab = 0, k = 0;
  int64_t v0 = 0, width = 0;   // the piece of the vocabulary a phase sees
  int divergence = kFKL, format = kLogProbs, tail = kRenormalize;
  double beta = 0.5, temperature = 1.0;
  double retemper = 1.0;       // r = T_gen / T
  double soft_coef = 1.0;      // soft_weight * (T^2 if scale_t2)
  double hard_weight = 0.0, label_smoothing = 0.0;
  int64_t ignore_index = -100;
  bool has_target = false, compute_grad = false;

  PYSD_HD bool has_soft() const { return soft_coef != 0.0; }
  PYSD_HD bool has_hard() const { return has_target && hard_weight != 0.0; }
  PYSD_HD bool separate_ce() const { return has_hard() && temperature != 1.0; }
  PYSD_HD bool jsd_uniform() const { return has_soft() && divergence == kJSD && tail == kUniform; }
  // sum of e_c * (s_c - ms)/T: only rkl with a uniform tail needs it.
  PYSD_HD bool needs_w() const { return has_soft() && divergence == kRKL && tail == kUniform; }
  // raw sum of s: label smoothing and fkl with a uniform tail.
  PYSD_HD bool needs_ssum() const {
    return (has_hard() && label_smoothing != 0.0) || (has_soft() && divergence == kFKL && tail == kUniform);
  }
};

// Student statistics of a row or of a piece of it.  sz, s1, w are relative to
// ms; `ssum`, `sy` are raw; `jd`, `jq` the jsd-uniform tail sums.
template <typename A>
struct Stats {
  A ms = neg_inf<A>();
  A sz = 0;      // sum exp((s - ms)/T)
  A s1 = 0;      // sum exp(s - ms)           (hard CE when T != 1)
  A w = 0;       // sum exp((s - ms)/T) (s - ms)/T
  A ssum = 0;    // sum s
  A sy = 0;      // s at the target (0 when the target is in another piece)
  A jd = 0, jq = 0;  // sum over all classes of the jsd term and q f, as if every class were a tail class

  PYSD_HD void load(const A* p) { ms = p[0]; sz = p[1]; s1 = p[2]; w = p[3]; ssum = p[4]; sy = p[5]; jd = p[6]; jq = p[7]; }
  PYSD_HD void store(A* p) const { p[0] = ms; p[1] = sz; p[2] = s1; p[3] = w; p[4] = ssum; p[5] = sy; p[6] = jd; p[7] = jq; }
};

// Combines the statistics of two disjoint pieces (b into a), rescaling the
// sums to the larger max.  Exact for any order of merging.
template <typename A>
PYSD_HD void merge(const Config& c, Stats<A>& a, const Stats<A>& b) {
  const A inv_t = A(1) / A(c.temperature);
  const A m = a.ms > b.ms ? a.ms : b.ms;
  if (m == neg_inf<A>()) {
    a.ssum += b.ssum; a.sy += b.sy;
    return;
  }
  const A da = a.ms == neg_inf<A>() ? A(0) : (a.ms - m) * inv_t;
  const A db = b.ms == neg_inf<A>() ? A(0) : (b.ms - m) * inv_t;
  const A fa = a.ms == neg_inf<A>() ? A(0) : fexp(da), fb = b.ms == neg_inf<A>() ? A(0) : fexp(db);
  a.w = fa * (a.w + da * a.sz) + fb * (b.w + db * b.sz);
  a.sz = fa * a.sz + fb * b.sz;
  const A ga = a.ms == neg_inf<A>() ? A(0) : fexp(a.ms - m), gb = b.ms == neg_inf<A>() ? A(0) : fexp(b.ms - m);
  a.s1 = ga * a.s1 + gb * b.s1;
  a.ssum += b.ssum; a.sy += b.sy; a.jd += b.jd; a.jq += b.jq;
  a.ms = m;
}

// The teacher side of one row, independent of the student.
template <typename A>
struct TeacherRow {
  A lpt = neg_inf<A>();  // log p of one tail atom (the bucket, or each uniform tail class)
  A nu = 0;              // number of uniform tail classes (V - distinct ids)
  A mass = 0;            // 1 when the row has a teacher distribution, 0 when it has none
  bool bad = false;      // an id >= V (only reachable when validation was skipped)
};

PYSD_HD double log_add(double a, double b) {
  if (a == -INFINITY) return b;
  if (b == -INFINITY) return a;
  const double hi = a > b ? a : b, lo = a > b ? b : a;
  return hi + log1p(exp(lo - hi));
}

// Normalized log-probabilities of one row's entries.  `ids`/`vals` are the k
// stored entries; on return kid[e] is ids[e] for the first occurrence of each
// in-range id and -1 for padding (id < 0), duplicates and bad ids, and lp[e]
// its log-probability (-inf where kid[e] == -1).  Duplicates add their
// probabilities (as a scatter-add would).  Computed in double: O(k) per row.
template <typename A>
PYSD_HD TeacherRow<A> teacher_row(const Config& c, const int64_t* ids, const A* vals, int64_t* kid, A* lp) {
  TeacherRow<A> tr;
  double distinct = 0, pk = 0;
  for (int64_t e = 0; e < c.k; ++e) {
    const int64_t id = ids[e];
    kid[e] = -1;
    lp[e] = neg_inf<A>();
    if (id < 0) continue;
    if (id >= c.vocab) { tr.bad = true; continue; }
    const double l = c.format == kProbs ? log(double(vals[e])) : double(vals[e]);
    int64_t owner = -1;
    for (int64_t e2 = 0; e2 < e; ++e2) {
      if (kid[e2] == id) { owner = e2; break; }
    }
    if (owner >= 0) {
      lp[owner] = A(log_add(double(lp[owner]), l));
    } else {
      kid[e] = id;
      lp[e] = A(l);
      distinct += 1;
    }
  }
  // Log weights after re-tempering, and their normalizer.
  const double r = c.retemper;
  double norm = -INFINITY;
  for (int64_t e = 0; e < c.k; ++e) {
    if (kid[e] < 0) continue;
    if (c.format != kLogits) pk += exp(double(lp[e]));
    const double a = r * double(lp[e]);
    lp[e] = A(a);
    norm = log_add(norm, a);
  }
  const double m = pk < 1.0 ? 1.0 - pk : 0.0;  // the stored distribution's missing mass
  double atom = -INFINITY;
  if (c.tail == kBucket) {
    // The bucket holds the classes no entry names; with none left it does not exist.
    atom = m > 0 && distinct < double(c.vocab) ? r * log(m) : -INFINITY;
    norm = log_add(norm, atom);
  } else if (c.tail == kUniform) {
    const double nu = double(c.vocab) - distinct;
    tr.nu = A(nu);
    if (nu > 0 && m > 0) {
      atom = r * log(m / nu);
      norm = log_add(norm, log(nu) + atom);
    }
  }
  if (norm == -INFINITY) {  // no mass anywhere: the row has no soft term
    for (int64_t e = 0; e < c.k; ++e) lp[e] = neg_inf<A>();
    return tr;
  }
  tr.mass = A(1);
  for (int64_t e = 0; e < c.k; ++e) {
    if (kid[e] >= 0) lp[e] = A(double(lp[e]) - norm);
  }
  tr.lpt = A(atom - norm);
  return tr;
}

// The affine gradient of a row:
//   dL/ds_c = cz e_c + cw e_c zc + c1 exp(s_c - ms) + cc + cj e_c (f_c - qf)
// with zc = (s_c - ms)/T; the last term (jsd, uniform tail) has the per-class
// f_c = log q_c - log(beta p_t + (1 - beta) q_c).  Then + delta_e at each
// teacher id and + cy at the target.  Stored as a row of kNumCoef values.
template <typename A>
struct Coef {
  A ms = 0, log_sz = 0, cz = 0, cw = 0, c1 = 0, cc = 0, cy = 0, cj = 0, qf = 0, lpt = 0;
  A valid = 0;   // 0: ignored row (zero gradient); NaN marks a bad row
  A pad = 0;
  PYSD_HD void load(const A* p) {
    ms = p[0]; log_sz = p[1]; cz = p[2]; cw = p[3]; c1 = p[4]; cc = p[5]; cy = p[6]; cj = p[7]; qf = p[8];
    lpt = p[9]; valid = p[10]; pad = p[11];
  }
  PYSD_HD void store(A* p) const {
    p[0] = ms; p[1] = log_sz; p[2] = cz; p[3] = cw; p[4] = c1; p[5] = cc; p[6] = cy; p[7] = cj; p[8] = qf;
    p[9] = lpt; p[10] = valid; p[11] = pad;
  }
};

// jsd per-atom term, as kd_loss::div_elem with divergence = jsd: returns f, adds to d.
template <typename A>
PYSD_HD A jsd_elem(A beta, A q, A lq, A p, A lp, A& d) {
  const A a = flog(beta) + lp, b = flog(A(1) - beta) + lq;
  const A hi = a > b ? a : b, lo = a > b ? b : a;
  const A lm = hi == neg_inf<A>() ? hi : hi + flog(A(1) + fexp(lo - hi));
  const A f = lq - lm;
  d = (p > A(0) ? beta * p * (lp - lm) : A(0)) + (q > A(0) ? (A(1) - beta) * q * f : A(0));
  return f;
}

// One class's contribution to the jsd-uniform tail sums, given the merged max
// and log-sum: treats the class as a tail class of probability p_t.
template <typename A>
PYSD_HD void jsd_tail_elem(A beta, A inv_t, A ms, A log_sz, A lpt, A s, A& jd, A& jq) {
  const A lq = (s - ms) * inv_t - log_sz;
  const A q = fexp(lq);
  A d;
  const A f = jsd_elem(beta, q, lq, fexp(lpt), lpt, d);
  jd += d;
  jq += q > A(0) ? q * f : A(0);
}

// Row loss (weighted), gradient coefficients and the per-entry corrections.
// `gs[e]` is the student logit at kid[e]; `y` the target (or -1).  `g` is
// grad_scale * weight (d reduced loss / d row loss).
template <typename A>
PYSD_HD A finalize(const Config& c, const Stats<A>& st, const TeacherRow<A>& tr, const int64_t* kid, const A* lp,
                   const A* gs, int64_t y, A weight, A g, Coef<A>& co, A* delta) {
  for (int64_t e = 0; e < c.k; ++e) delta[e] = A(0);
  co = Coef<A>();
  if (c.has_target && y == c.ignore_index) return A(0);
  const bool bad = tr.bad || (c.has_hard() && (y < 0 || y >= c.vocab));
  if (bad) {
    co.valid = A(NAN);
    return A(NAN);
  }
  co.valid = A(1);
  const A inv_t = A(1) / A(c.temperature), beta = A(c.beta);
  const A V = A(c.vocab);
  co.ms = st.ms;
  co.log_sz = flog(st.sz);
  co.lpt = tr.lpt;
  A loss = 0;

  if (c.has_hard()) {
    const A hw = A(c.hard_weight), eps = A(c.label_smoothing);
    const A log_s1 = c.separate_ce() ? flog(st.s1) : co.log_sz;
    const A nll = log_s1 - (st.sy - st.ms);
    const A smooth = eps != A(0) ? log_s1 - (st.ssum / V - st.ms) : A(0);
    loss += hw * ((A(1) - eps) * nll + eps * smooth);
    const A cq1 = g * hw / (c.separate_ce() ? st.s1 : st.sz);
    if (c.separate_ce()) co.c1 = cq1; else co.cz = cq1;
    co.cc = -g * hw * eps / V;
    co.cy = -g * hw * (A(1) - eps);
  }

  if (c.has_soft() && tr.mass > A(0)) {
    const A gsc = g * A(c.soft_coef) * inv_t;
    const A log_sz = co.log_sz, inv_sz = A(1) / st.sz;
    const A pt = fexp(tr.lpt), lpt = tr.lpt;
    // The student's top-k mass, and what the K entries contribute to the sums.
    A qk = 0, sum_lq = 0, sum_qlq = 0;
    for (int64_t e = 0; e < c.k; ++e) {
      if (kid[e] < 0) continue;
      const A lq = (gs[e] - st.ms) * inv_t - log_sz;
      const A q = fexp(lq);
      qk += q;
      sum_lq += lq;
      sum_qlq += q > A(0) ? q * lq : A(0);
    }
    const A qt = qk < A(1) ? A(1) - qk : A(0);
    const A lqt = flog(qt);
    const bool uniform = c.tail == kUniform && tr.nu > A(0);
    // Tail gradient (w.r.t. z) = aq q_c + aw q_c zc + b; per-entry gradient G_e.
    A D = 0, aq = 0, aw = 0, b = 0, qf = 0, fj = 0;
    if (c.divergence == kFKL) {
      for (int64_t e = 0; e < c.k; ++e) {
        const A p = fexp(lp[e]);
        if (kid[e] >= 0 && p > A(0)) D += p * (lp[e] - ((gs[e] - st.ms) * inv_t - log_sz));
      }
      aq = A(1);
      if (c.tail == kBucket && pt > A(0)) {
        D += pt * (lpt - lqt);
        aq = A(1) - pt / qt;
      } else if (uniform && pt > A(0)) {
        const A all_lq = (st.ssum - V * st.ms) * inv_t - V * log_sz;
        D += tr.nu * pt * lpt - pt * (all_lq - sum_lq);
        b = -pt;
      }
    } else if (c.divergence == kRKL) {
      for (int64_t e = 0; e < c.k; ++e) {
        if (kid[e] < 0) continue;
        const A lq = (gs[e] - st.ms) * inv_t - log_sz, q = fexp(lq);
        D += q > A(0) ? q * (lq - lp[e]) : A(0);
      }
      if (c.tail == kBucket) {
        D += qt > A(0) ? qt * (lqt - lpt) : A(0);
      } else if (uniform) {
        const A all_qlq = st.w * inv_sz - log_sz;
        D += (all_qlq - sum_qlq) - (qt > A(0) ? qt * lpt : A(0));
      }
      // A tail the student has no mass in contributes q_c (...) -> 0.
      if (c.tail == kBucket) aq = qt > A(0) ? lqt - lpt - D : A(0);
      else if (uniform) { aq = -log_sz - lpt - D; aw = A(1); }
    } else {
      for (int64_t e = 0; e < c.k; ++e) {
        if (kid[e] < 0) continue;
        const A lq = (gs[e] - st.ms) * inv_t - log_sz, q = fexp(lq);
        A d;
        const A f = jsd_elem(beta, q, lq, fexp(lp[e]), lp[e], d);
        D += d;
        qf += q > A(0) ? q * f : A(0);
      }
      if (c.tail == kRenormalize) {
        fj = -flog(A(1) - beta);  // log q - log((1 - beta) q) for a class the teacher leaves at 0
        D += (A(1) - beta) * qt * fj;
        qf += qt * fj;
      } else if (c.tail == kBucket) {
        A d;
        const A f = jsd_elem(beta, qt, lqt, pt, lpt, d);
        fj = qt > A(0) ? f : A(0);  // f = -inf at q_t = 0 multiplies q_c = 0 only
        D += d;
        qf += qt * fj;
      } else if (uniform) {
        // The tail pass summed every class as a tail class; take the K entries back out.
        A dk = 0, qfk = 0;
        for (int64_t e = 0; e < c.k; ++e) {
          if (kid[e] < 0) continue;
          jsd_tail_elem(beta, inv_t, st.ms, log_sz, lpt, gs[e], dk, qfk);
        }
        D += st.jd - dk;
        qf += st.jq - qfk;
      }
      if (!uniform) aq = (A(1) - beta) * (fj - qf);
    }
    // Per-entry corrections: the entry's own gradient minus the tail formula at its logit.
    for (int64_t e = 0; e < c.k; ++e) {
      if (kid[e] < 0) continue;
      const A zc = (gs[e] - st.ms) * inv_t, lq = zc - log_sz, q = fexp(lq), p = fexp(lp[e]);
      A ge, te;
      if (c.divergence == kFKL) {
        ge = q - p;
        te = aq * q + b;
      } else if (c.divergence == kRKL) {
        ge = q > A(0) ? q * (lq - lp[e] - D) : A(0);
        te = aq * q + aw * q * zc;
      } else {
        A d;
        const A f = jsd_elem(beta, q, lq, p, lp[e], d);
        ge = q > A(0) ? (A(1) - beta) * q * (f - qf) : A(0);
        if (uniform) {
          const A ft = jsd_elem(beta, q, lq, pt, lpt, d);
          te = q > A(0) ? (A(1) - beta) * q * (ft - qf) : A(0);
        } else {
          te = aq * q;
        }
      }
      delta[e] = gsc * (ge - te);
    }
    co.cz += gsc * aq * inv_sz;
    co.cw = gsc * aw * inv_sz;
    co.cc += gsc * b;
    if (c.divergence == kJSD && uniform) co.cj = gsc * (A(1) - beta) * inv_sz;
    co.qf = qf;
    loss += A(c.soft_coef) * D;
  }
  return loss * weight;
}

// dL/ds of one entry from the row's coefficients (before the delta_e and cy fix-ups).
template <typename A>
PYSD_HD A apply_elem(const Config& c, const Coef<A>& co, A inv_t, A s, A ez, A e1) {
  const A zc = (s - co.ms) * inv_t;
  A v = co.cz * ez + co.c1 * e1 + co.cc;
  if (co.cw != A(0)) v += ez > A(0) ? co.cw * ez * zc : A(0);
  if (co.cj != A(0) && ez > A(0)) {
    A d;
    const A lq = zc - co.log_sz;
    const A f = jsd_elem(A(c.beta), fexp(lq), lq, fexp(co.lpt), co.lpt, d);
    v += co.cj * ez * (f - co.qf);
  }
  return v;
}

}  // namespace sparse_kd_loss
}  // namespace pysd

namespace pysd {
namespace sparse_kd_loss {

// Raw pointers of one call.  `student` points at class v0 of row 0 (a piece
// of width c.width); ids / vals are (rows, k) contiguous; the per-row arrays
// of the piecewise phases are (rows, kNumStats), (rows, k), (rows, kNumCoef),
// (rows, k) contiguous.  `In` is the logits' storage type, `A` the accumulation type.
template <typename In, typename A>
struct Args {
  const In* student = nullptr; int64_t student_stride = 0;
  const int64_t* ids = nullptr; const A* vals = nullptr;
  const int64_t* target = nullptr;
  const A* weight = nullptr;
  const double* grad_scale = nullptr;
  In* grad = nullptr; int64_t grad_stride = 0;
  A* loss = nullptr;
  A* stats = nullptr; A* gathered = nullptr; A* coef = nullptr; A* delta = nullptr;
};

}  // namespace sparse_kd_loss
}  // namespace pysd

namespace pysd {
namespace sparse_kd_loss {

// Launchers: csrc/cpu/sparse_kd_loss.cpp (every phase, OpenMP over rows) and
// csrc/cuda/sparse_kd_loss.cu (the fused phase only, enqueued on `stream`, a
// cudaStream_t as an integer; CUDA errors throw std::runtime_error).
void run_cpu(const Config& c, int phase, const Args<float, float>& a);
void run_cpu(const Config& c, int phase, const Args<double, double>& a);
void run_cpu(const Config& c, int phase, const Args<bf16_t, float>& a);
void run_cpu(const Config& c, int phase, const Args<f16_t, float>& a);
void run_cuda(const Config& c, int phase, const Args<float, float>& a, uintptr_t stream);
void run_cuda(const Config& c, int phase, const Args<double, double>& a, uintptr_t stream);
void run_cuda(const Config& c, int phase, const Args<bf16_t, float>& a, uintptr_t stream);
void run_cuda(const Config& c, int phase, const Args<f16_t, float>& a, uintptr_t stream);

}  // namespace sparse_kd_loss
}  // namespace pysd
