// CUDA launcher of the partial-label refinement: one warp per row.  Each pass
// of pysd/partial_labels.h is a lane-strided scan followed by a shuffle
// reduction of the (value, index) keys, so no shared or scratch memory is used.
#include <stdexcept>
#include <string>

#include "pysd/partial_labels.h"

namespace pysd {
namespace partial_labels {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr unsigned kFull = 0xffffffffu;

template <typename A>
__device__ Key<A> warp_merge(bool top, Key<A> k) {
  for (int off = kWarp / 2; off > 0; off /= 2) {
    Key<A> o;
    o.value = __shfl_xor_sync(kFull, k.value, off);
    o.index = __shfl_xor_sync(kFull, k.index, off);
    k = merge(top, k, o);
  }
  return k;
}

template <typename A>
__device__ A warp_sum(A v) {
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

template <typename In>
__global__ void __launch_bounds__(kThreads) partial_labels_kernel(Config c, Args<In> a) {
  using A = acc_t<In>;
  const int64_t i = (int64_t(blockIdx.x) * kThreads + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (i >= c.rows) return;  // whole warps exit together: rows map to warps
  const int64_t n = c.cols;
  const In* p = a.probs + i * a.probs_stride;
  In* o = a.out + i * a.out_stride;
  const bool top = from_top(n, c.k);
  Key<A> last = no_key<A>();
  for (int64_t pass = 0, m = passes(n, c.k); pass < m; ++pass) {
    Key<A> best = no_key<A>();
    for (int64_t j = lane; j < n; j += kWarp) offer(top, last, Key<A>{A(to_float(p[j])), j}, best);
    last = warp_merge(top, best);
  }
  A mass = 0;
  if (c.renormalize) {
    for (int64_t j = lane; j < n; j += kWarp) {
      const Key<A> e{A(to_float(p[j])), j};
      if (selected(top, last, e)) mass += e.value;
    }
    mass = warp_sum(mass);
  }
  for (int64_t j = lane; j < n; j += kWarp) {
    const Key<A> e{A(to_float(p[j])), j};
    o[j] = from_acc<In>(selected(top, last, e) ? out_value(c, e.value, mass) : A(0));
  }
}

template <typename In>
void launch(const Config& c, const Args<In>& a, uintptr_t stream) {
  if (c.rows == 0 || c.cols == 0) return;
  constexpr int64_t rows_per_block = kThreads / kWarp;
  const int64_t blocks = (c.rows + rows_per_block - 1) / rows_per_block;
  if (blocks > 0x7fffffffLL) throw std::runtime_error("pysd CUDA partial_labels: too many rows for one grid");
  partial_labels_kernel<In><<<dim3(unsigned(blocks)), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(c, a);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("pysd CUDA partial_labels launch: ") + cudaGetErrorString(err));
  }
}

}  // namespace

void run_cuda(const Config& c, const Args<float>& a, uintptr_t s) { launch(c, a, s); }
void run_cuda(const Config& c, const Args<double>& a, uintptr_t s) { launch(c, a, s); }
void run_cuda(const Config& c, const Args<bf16_t>& a, uintptr_t s) { launch(c, a, s); }
void run_cuda(const Config& c, const Args<f16_t>& a, uintptr_t s) { launch(c, a, s); }

}  // namespace partial_labels
}  // namespace pysd
