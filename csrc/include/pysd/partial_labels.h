// Per-row math of the partial-label (PLL) refinement, shared by the CPU and
// CUDA launchers.  A row keeps its top-k classes: 1/k each, or the teacher's
// probabilities on them renormalised.
//
// Ranking order: higher probability first; equal probabilities rank the lower
// class index first.  So the selection is deterministic and identical on every
// backend (torch.topk leaves ties unspecified).
//
// Selection needs no scratch memory, which keeps one thread (CPU) or one warp
// (CUDA) per row free of allocations: the boundary key (the class of rank k-1)
// is found by streaming passes over the row, each pass finding the next key in
// ranking order.  From the top that takes k passes; when k > C/2 it is cheaper
// to walk up from the bottom (C-k passes to the key of rank k), so a row costs
// O(C * min(k, C-k)) comparisons.  An entry is selected iff it ranks no later
// than the boundary.
#pragma once

#include "pysd/common.h"

namespace pysd {
namespace partial_labels {

// Options shared by every row.
struct Config {
  int64_t rows = 0, cols = 0;
  int64_t k = 2;
  bool renormalize = false;
};

template <typename In>
struct Args {
  const In* probs = nullptr; int64_t probs_stride = 0;  // (rows, cols), unit column stride
  In* out = nullptr; int64_t out_stride = 0;             // (rows, cols), unit column stride
};

// A (probability, class index) pair; `index < 0` means "none yet".
template <typename A>
struct Key {
  A value;
  int64_t index;
};

template <typename A>
PYSD_HD Key<A> no_key() { return Key<A>{A(0), -1}; }

// True when `a` ranks strictly before `b` (higher value, then lower index).
template <typename A>
PYSD_HD bool before(Key<A> a, Key<A> b) {
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

// Direction of a pass: from the top (the best key ranked after `prev`) or from
// the bottom (the worst key ranked before `prev`).
PYSD_HD bool from_top(int64_t cols, int64_t k) { return k <= cols - k; }
PYSD_HD int64_t passes(int64_t cols, int64_t k) { return from_top(cols, k) ? k : cols - k; }

// One element of a pass: offer `cand` as the pass result `best`.
template <typename A>
PYSD_HD void offer(bool top, Key<A> prev, Key<A> cand, Key<A>& best) {
  if (top) {
    if ((prev.index < 0 || before(prev, cand)) && (best.index < 0 || before(cand, best))) best = cand;
  } else {
    if ((prev.index < 0 || before(cand, prev)) && (best.index < 0 || before(best, cand))) best = cand;
  }
}

// Merge two partial pass results (CUDA warp reduction).
template <typename A>
PYSD_HD Key<A> merge(bool top, Key<A> a, Key<A> b) {
  if (a.index < 0) return b;
  if (b.index < 0) return a;
  return (top ? before(b, a) : before(a, b)) ? b : a;
}

// After the passes, `last` is the key of rank k-1 (from the top) or of rank k
// (from the bottom; none when k == C).  Whether entry `cand` is among the top k:
template <typename A>
PYSD_HD bool selected(bool top, Key<A> last, Key<A> cand) {
  return top ? !before(last, cand) : (last.index < 0 || before(cand, last));
}

// Output value of a selected entry.  `mass` is the sum of the selected
// probabilities; a row whose top-k mass is 0 falls back to 1/k.
template <typename A>
PYSD_HD A out_value(const Config& c, A value, A mass) {
  return (c.renormalize && mass > A(0)) ? value / mass : A(1) / A(c.k);
}


// Launchers: csrc/cpu/partial_labels.cpp (OpenMP over rows) and csrc/cuda/partial_labels.cu.
void run_cpu(const Config& c, const Args<float>& a);
void run_cpu(const Config& c, const Args<double>& a);
void run_cpu(const Config& c, const Args<bf16_t>& a);
void run_cpu(const Config& c, const Args<f16_t>& a);
void run_cuda(const Config& c, const Args<float>& a, uintptr_t stream);
void run_cuda(const Config& c, const Args<double>& a, uintptr_t stream);
void run_cuda(const Config& c, const Args<bf16_t>& a, uintptr_t stream);
void run_cuda(const Config& c, const Args<f16_t>& a, uintptr_t stream);

}  // namespace partial_labels
}  // namespace pysd
