// CPU launcher of the partial-label refinement: OpenMP over rows, each row
// selected by the streaming passes of pysd/partial_labels.h.
#include <omp.h>

#include <algorithm>

#include "pysd/partial_labels.h"
#include "simd.h"

namespace pysd {
namespace partial_labels {
namespace {


template <typename In>
PYSD_INLINE void row(const Config& c, const Args<In>& a, int64_t i) {
  using A = acc_t<In>;
  const int64_t n = c.cols;
  const In* __restrict p = a.probs + i * a.probs_stride;
  In* __restrict o = a.out + i * a.out_stride;
  const bool top = from_top(n, c.k);
  Key<A> last = no_key<A>();
  for (int64_t pass = 0, m = passes(n, c.k); pass < m; ++pass) {
    Key<A> best = no_key<A>();
    for (int64_t j = 0; j < n; ++j) offer(top, last, Key<A>{A(to_float(p[j])), j}, best);
    last = best;
  }
  A mass = 0;
  if (c.renormalize) {
    for (int64_t j = 0; j < n; ++j) {
      const Key<A> e{A(to_float(p[j])), j};
      if (selected(top, last, e)) mass += e.value;
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    const Key<A> e{A(to_float(p[j])), j};
    o[j] = from_acc<In>(selected(top, last, e) ? out_value(c, e.value, mass) : A(0));
  }
}

template <typename In>
void launch(const Config& c, const Args<In>& a) {
  if (c.rows == 0 || c.cols == 0) return;
  const int64_t work = c.rows * c.cols * std::min(c.k, c.cols - c.k + 1);
  const bool parallel = work >= (int64_t(1) << 15) && c.rows > 1;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < c.rows; ++i) row(c, a, i);
}

}  // namespace

void run_cpu(const Config& c, const Args<float>& a) { launch(c, a); }
void run_cpu(const Config& c, const Args<double>& a) { launch(c, a); }
void run_cpu(const Config& c, const Args<bf16_t>& a) { launch(c, a); }
void run_cpu(const Config& c, const Args<f16_t>& a) { launch(c, a); }

}  // namespace partial_labels
}  // namespace pysd
