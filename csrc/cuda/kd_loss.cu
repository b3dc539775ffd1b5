// CUDA launcher of the fused distillation loss: one block per row, the passes
// of pysd/kd_loss.h as block-strided loops with CUB block reductions.  The
// exponentials are recomputed in the gradient pass instead of being stored:
// the row is re-read from L2, and the kernel stays bandwidth-bound.
#include <stdexcept>
#include <string>

#include "block.cuh"
#include "check.cuh"
#include "pysd/kd_loss.h"

namespace pysd {
namespace kd_loss {
namespace {

constexpr int kThreads = cuda::kRowThreads;
template <typename A>
using Reduce = cuda::RowReduce<A>;
using cuda::block_max;
using cuda::block_sum;

template <int TF, int CE, typename In, typename A>
__global__ void __launch_bounds__(kThreads) kd_loss_kernel(Config c, Args<In, A> a) {
  __shared__ typename Reduce<A>::TempStorage tmp;
  __shared__ A shared;
  const int64_t i = blockIdx.x;
  const int64_t n = c.cols;
  const In* s = a.student + i * a.student_stride;
  const In* t = TF == kNoTeacher ? nullptr : a.teacher + i * a.teacher_stride;
  In* g = c.compute_grad ? a.grad + i * a.grad_stride : nullptr;
  const int64_t y = c.has_target ? a.target[i] : -1;
  const A w = a.weight ? a.weight[i] : A(1);
  const A inv_t = A(1) / A(c.temperature);
  const int npow = c.ce_power();
  const A floor = CE == kCePow ? pow_floor<A>(npow) : A(0);
  auto tval = [&](int64_t j) { return TF == kNoTeacher ? A(0) : A(to_float(t[j])); };

  if (c.has_target && y == c.ignore_index) {
    if (threadIdx.x == 0) a.loss[i] = A(0);
    if (g) for (int64_t j = threadIdx.x; j < n; j += kThreads) g[j] = from_acc<In>(A(0));
    return;
  }

  Totals<A> acc;
  A ms = neg_inf<A>(), mt = neg_inf<A>();
  for (int64_t j = threadIdx.x; j < n; j += kThreads) {
    ms = max(ms, A(to_float(s[j])));
    if (TF == kLogits || TF == kLogProbs) mt = max(mt, tval(j));
  }
  acc.ms = ms = block_max(ms, tmp, shared);
  if (TF == kLogits || TF == kLogProbs) acc.mt = mt = block_max(mt, tmp, shared);

  Totals<A> part;
  A ssum = 0;
  for (int64_t j = threadIdx.x; j < n; j += kThreads) {
    A ez, eu, e1;
    exp_elem<TF, CE>(inv_t, ms, mt, A(to_float(s[j])), tval(j), npow, floor, ez, eu, e1, part);
    ssum += A(to_float(s[j])) - ms;
  }
  acc.sz = block_sum(part.sz, tmp, shared);
  acc.su = block_sum(part.su, tmp, shared);
  acc.s1 = block_sum(part.s1, tmp, shared);
  acc.fkl = block_sum(part.fkl, tmp, shared);
  acc.ssum = block_sum(ssum, tmp, shared);

  const bool bad_target = c.has_hard() && (y < 0 || y >= n);
  const A s_target = (c.has_hard() && !bad_target) ? A(to_float(s[y])) : A(0);
  Row<A> r = finalize(c, acc, s_target, y, w, *a.grad_scale);

  const bool div_pass = TF != kNoTeacher && c.has_soft() && c.divergence != kFKL;
  const A inv_su = TF == kProbs ? A(1) : A(1) / acc.su;
  // Per-entry values shared by the divergence and gradient passes.
  auto entry = [&](int64_t j, A& ez, A& eu, A& e1, A& f, A& d) {
    Totals<A> unused;
    exp_elem<TF, CE>(inv_t, ms, mt, A(to_float(s[j])), tval(j), npow, floor, ez, eu, e1, unused);
    f = A(0);
    d = A(0);
    if (div_pass) {
      const A q = ez / acc.sz, p = eu * inv_su;
      const A lq = log_q(A(to_float(s[j])), ms, inv_t, r.log_sz);
      const A lp = TF == kProbs ? flog(p) : (tval(j) - mt) * inv_t - r.log_su;
      f = div_elem(c, q, lq, p, lp, d);
    }
  };
  if (div_pass) {
    A dsum = 0, qf = 0;
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      A ez, eu, e1, f, d;
      entry(j, ez, eu, e1, f, d);
      const A q = ez / acc.sz;
      dsum += d;
      qf += q > A(0) ? q * f : A(0);
    }
    dsum = block_sum(dsum, tmp, shared);
    qf = block_sum(qf, tmp, shared);
    finalize_divergence(c, r, dsum, qf, w);
  }
  if (threadIdx.x == 0) a.loss[i] = bad_target ? A(NAN) : r.loss;

  if (g) {
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      A ez, eu, e1, f, d;
      entry(j, ez, eu, e1, f, d);
      A v = grad_elem(r, ez, e1, eu, f);
      if (j == r.y) v += r.cy;
      g[j] = from_acc<In>(bad_target ? A(NAN) : v);
    }
  }
}

template <int TF, typename In, typename A>
void launch_tf(const Config& c, const Args<In, A>& a, cudaStream_t st) {
  const dim3 grid(static_cast<unsigned>(c.rows));
  switch (c.ce_mode()) {
    case kCeExp: kd_loss_kernel<TF, kCeExp><<<grid, kThreads, 0, st>>>(c, a); break;
    case kCePow: kd_loss_kernel<TF, kCePow><<<grid, kThreads, 0, st>>>(c, a); break;
    default: kd_loss_kernel<TF, kCeShared><<<grid, kThreads, 0, st>>>(c, a); break;
  }
}

template <typename In, typename A>
void launch(const Config& c, const Args<In, A>& a, uintptr_t stream) {
  if (c.rows == 0) return;
  if (c.rows > 0x7fffffffLL) throw std::runtime_error("pysd CUDA kd_loss: too many rows for one grid");
  auto st = reinterpret_cast<cudaStream_t>(stream);
  switch (c.teacher_format) {
    case kLogits:
    case kLogProbs: launch_tf<kLogits>(c, a, st); break;
    case kProbs: launch_tf<kProbs>(c, a, st); break;
    default: launch_tf<kNoTeacher>(c, a, st); break;
  }
  cuda::check(cudaGetLastError(), "kd_loss launch");
}

}  // namespace

void run_cuda(const Config& c, const Args<float, float>& a, uintptr_t s) { launch(c, a, s); }
void run_cuda(const Config& c, const Args<double, double>& a, uintptr_t s) { launch(c, a, s); }
void run_cuda(const Config& c, const Args<bf16_t, float>& a, uintptr_t s) { launch(c, a, s); }
void run_cuda(const Config& c, const Args<f16_t, float>& a, uintptr_t s) { launch(c, a, s); }

}  // namespace kd_loss
}  // namespace pysd
