// CUDA launcher of the sparse-teacher distillation loss, fused phase: one block
// per row.  Block reductions give the row statistics; thread 0 runs the O(k)
// teacher and finalize steps of pysd/sparse_kd_loss.h from shared memory; every
// thread then applies the gradient formula to its strided entries.  The
// piecewise phases are CPU-only (the host raises for them).
#include <stdexcept>

#include "block.cuh"
#include "check.cuh"
#include "pysd/sparse_kd_loss.h"

namespace pysd {
namespace sparse_kd_loss {
namespace {

constexpr int kThreads = cuda::kRowThreads;
template <typename A>
using Reduce = cuda::RowReduce<A>;
using cuda::block_max;
using cuda::block_sum;

template <typename In, typename A>
__global__ void __launch_bounds__(kThreads) sparse_kd_kernel(Config c, Args<In, A> a) {
  __shared__ typename Reduce<A>::TempStorage tmp;
  __shared__ A shared;
  __shared__ A lpt;                // the teacher's tail atom, for every thread
  __shared__ A coef[kNumCoef];     // the row's Coef, for every thread
  extern __shared__ unsigned char smem[];
  int64_t* kid = reinterpret_cast<int64_t*>(smem);
  A* lp = reinterpret_cast<A*>(kid + c.k);
  A* gs = lp + c.k;
  A* delta = gs + c.k;

  const int64_t i = blockIdx.x, n = c.width, k = c.k;
  const In* s = a.student + i * a.student_stride;
  In* g = a.grad ? a.grad + i * a.grad_stride : nullptr;
  const int64_t y = c.has_target ? a.target[i] : -1;
  const A w = a.weight ? a.weight[i] : A(1);
  const A inv_t = A(1) / A(c.temperature);
  if (c.has_target && y == c.ignore_index) {
    if (threadIdx.x == 0) a.loss[i] = A(0);
    if (g) for (int64_t j = threadIdx.x; j < n; j += kThreads) g[j] = from_acc<In>(A(0));
    return;
  }
  TeacherRow<A> tr;  // thread 0's
  if (threadIdx.x == 0) {
    tr = teacher_row(c, a.ids + i * k, a.vals + i * k, kid, lp);
    lpt = tr.lpt;
  }
  __syncthreads();

  A ms = neg_inf<A>();
  for (int64_t j = threadIdx.x; j < n; j += kThreads) ms = max(ms, A(to_float(s[j])));
  ms = block_max(ms, tmp, shared);
  A sz = 0, s1 = 0, wsum = 0, ssum = 0;
  for (int64_t j = threadIdx.x; j < n; j += kThreads) {
    const A sv = A(to_float(s[j])), zc = (sv - ms) * inv_t, e = fexp(zc);
    sz += e;
    if (c.separate_ce()) s1 += fexp(sv - ms);
    if (c.needs_w() && e > A(0)) wsum += e * zc;
    ssum += sv;
  }
  sz = block_sum(sz, tmp, shared);
  s1 = block_sum(s1, tmp, shared);
  wsum = block_sum(wsum, tmp, shared);
  ssum = block_sum(ssum, tmp, shared);
  A jd = 0, jq = 0;
  if (c.jsd_uniform()) {
    const A log_sz = flog(sz), beta = A(c.beta);
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      jsd_tail_elem(beta, inv_t, ms, log_sz, lpt, A(to_float(s[j])), jd, jq);
    }
    jd = block_sum(jd, tmp, shared);
    jq = block_sum(jq, tmp, shared);
  }
  if (threadIdx.x == 0) {
    Stats<A> t;
    t.ms = ms; t.sz = sz; t.s1 = s1; t.w = wsum; t.ssum = ssum; t.jd = jd; t.jq = jq;
    for (int64_t e = 0; e < k; ++e) gs[e] = kid[e] >= 0 ? A(to_float(s[kid[e]])) : A(0);
    t.sy = (c.has_hard() && y >= 0 && y < n) ? A(to_float(s[y])) : A(0);
    Coef<A> cf;
    a.loss[i] = finalize(c, t, tr, kid, lp, gs, y, w, A(*a.grad_scale) * w, cf, delta);
    cf.store(coef);
  }
  __syncthreads();
  if (!g) return;
  Coef<A> cf;
  cf.load(coef);
  const bool bad = cf.valid != cf.valid;
  for (int64_t j = threadIdx.x; j < n; j += kThreads) {
    const A sv = A(to_float(s[j]));
    const A ez = fexp((sv - cf.ms) * inv_t), e1 = cf.c1 != A(0) ? fexp(sv - cf.ms) : A(0);
    g[j] = from_acc<In>(bad ? A(NAN) : apply_elem(c, cf, inv_t, sv, ez, e1));
  }
  __syncthreads();
  if (bad) return;
  // Distinct ids after teacher_row: one writer per entry.
  for (int64_t e = threadIdx.x; e < k; e += kThreads) {
    if (kid[e] >= 0) g[kid[e]] = from_acc<In>(A(to_float(g[kid[e]])) + delta[e]);
  }
  __syncthreads();
  if (threadIdx.x == 0 && y >= 0 && y < n) g[y] = from_acc<In>(A(to_float(g[y])) + cf.cy);
}

template <typename In, typename A>
void launch(const Config& c, int phase, const Args<In, A>& a, uintptr_t stream) {
  if (phase != kFused) throw std::runtime_error("pysd CUDA sparse_kd_loss: only the fused phase runs on the GPU");
  if (c.rows == 0) return;
  if (c.rows > 0x7fffffffLL) throw std::runtime_error("pysd CUDA sparse_kd_loss: too many rows for one grid");
  const size_t smem = size_t(c.k) * (sizeof(int64_t) + 3 * sizeof(A));
  if (smem > 48 * 1024) throw std::runtime_error("pysd CUDA sparse_kd_loss: k too large for shared memory");
  sparse_kd_kernel<In, A><<<dim3(unsigned(c.rows)), kThreads, smem, reinterpret_cast<cudaStream_t>(stream)>>>(c, a);
  cuda::check(cudaGetLastError(), "sparse_kd_loss launch");
}

}  // namespace

void run_cuda(const Config& c, int p, const Args<float, float>& a, uintptr_t s) { launch(c, p, a, s); }
void run_cuda(const Config& c, int p, const Args<double, double>& a, uintptr_t s) { launch(c, p, a, s); }
void run_cuda(const Config& c, int p, const Args<bf16_t, float>& a, uintptr_t s) { launch(c, p, a, s); }
void run_cuda(const Config& c, int p, const Args<f16_t, float>& a, uintptr_t s) { launch(c, p, a, s); }

}  // namespace sparse_kd_loss
}  // namespace pysd
