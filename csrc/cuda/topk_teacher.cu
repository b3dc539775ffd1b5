// CUDA launcher of the offline teacher pass: one block per row.  The row max and
// the sum of exp((x - max)/T) are block reductions; the top-k is the shared
// header's heap run by thread 0 over the row (k entries in shared memory), the
// small and obvious version: rows run in parallel across the grid.
#include <stdexcept>

#include "block.cuh"
#include "check.cuh"
#include "pysd/topk_teacher.h"

namespace pysd {
namespace topk_teacher {
namespace {

constexpr int kThreads = cuda::kRowThreads;
template <typename A>
using Reduce = cuda::RowReduce<A>;

template <typename In, typename A>
__global__ void __launch_bounds__(kThreads) topk_kernel(Config c, Args<In, A> a) {
  __shared__ typename Reduce<A>::TempStorage tmp;
  __shared__ A shared;
  extern __shared__ unsigned char smem[];
  int64_t* hi = reinterpret_cast<int64_t*>(smem);
  A* hv = reinterpret_cast<A*>(hi + c.k);
  const int64_t i = blockIdx.x, n = c.cols, k = c.k;
  const In* x = a.logits + i * a.stride;
  const A inv_t = A(1) / A(c.temperature);

  A m = neg_inf<A>();
  for (int64_t j = threadIdx.x; j < n; j += kThreads) m = max(m, A(to_float(x[j])));
  m = cuda::block_max(m, tmp, shared);
  A sum = 0;
  for (int64_t j = threadIdx.x; j < n; j += kThreads) sum += fexp_le0((A(to_float(x[j])) - m) * inv_t);
  sum = Reduce<A>(tmp).Sum(sum);
  if (threadIdx.x != 0) return;
  for (int64_t j = 0; j < k; ++j) { hv[j] = A(to_float(x[j])); hi[j] = j; }
  heapify(hv, hi, k);
  for (int64_t j = k; j < n; ++j) offer(hv, hi, k, A(to_float(x[j])), j);
  write_row(c, a, i, hv, hi, m, inv_t, sum);
}

template <typename In, typename A>
void launch(const Config& c, const Args<In, A>& a, uintptr_t stream) {
  if (c.rows == 0 || c.k == 0) return;
  if (c.rows > 0x7fffffffLL) throw std::runtime_error("pysd CUDA topk_teacher: too many rows for one grid");
  const size_t smem = size_t(c.k) * (sizeof(int64_t) + sizeof(A));
  if (smem > 48 * 1024) throw std::runtime_error("pysd CUDA topk_teacher: k too large for shared memory");
  topk_kernel<In, A><<<dim3(unsigned(c.rows)), kThreads, smem, reinterpret_cast<cudaStream_t>(stream)>>>(c, a);
  cuda::check(cudaGetLastError(), "topk_teacher launch");
}

}  // namespace

void run_cuda(const Config& c, const Args<float, float>& a, uintptr_t s) { launch(c, a, s); }
void run_cuda(const Config& c, const Args<double, double>& a, uintptr_t s) { launch(c, a, s); }
void run_cuda(const Config& c, const Args<bf16_t, float>& a, uintptr_t s) { launch(c, a, s); }
void run_cuda(const Config& c, const Args<f16_t, float>& a, uintptr_t s) { launch(c, a, s); }

}  // namespace topk_teacher
}  // namespace pysd
