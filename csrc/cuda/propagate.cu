// CUDA launcher of label propagation (pysd/propagate.h): a warp per row with
// lanes over the C columns (coalesced Z rows), rows spread over a fixed set of
// warps.  Each lane owns the partial sums of its columns in its warp's slot of
// `part`, so the per-column totals are added in a fixed order (deterministic,
// no atomics).  Per-column scalars and the stop test stay on the device: a
// `done` flag turns the remaining launches into no-ops, and the host syncs
// once, at the end, to read the iteration count.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "check.cuh"
#include "pysd/propagate.h"

namespace pysd {
namespace propagate {
namespace {

constexpr int kWarps = 8, kThreads = 32 * kWarps, kMaxBlocks = 128;

struct State {
  double* part;        // (warps, cols) partial sums
  double* total;       // (cols,)
  double* yy;          // (cols,) ||y||^2 (iterate)
  Column* col;         // (cols,) CG scalars
  long long* flip;     // (warps,)
  long long* stats;    // [iterations, flips]
  int* done;
  int64_t warps;
};

__device__ int64_t warp_id() { return (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; }
__device__ int lane() { return threadIdx.x % 32; }

template <typename T>
__global__ void init_kernel(int64_t n, int64_t cols, const T* src, T* dst, T* zero, State s) {
  double* part = s.part + warp_id() * cols;
  for (int64_t c = lane(); c < cols; c += 32) part[c] = 0;
  for (int64_t i = warp_id(); i < n; i += s.warps) {
    for (int64_t c = lane(); c < cols; c += 32) {
      const T v = src[i * cols + c];
      dst[i * cols + c] = v;
      if (zero) zero[i * cols + c] = T(0);
      part[c] += double(v) * double(v);
    }
  }
}

__global__ void reduce_kernel(int64_t cols, State s, double* out) {
  if (*s.done) return;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < cols; c += int64_t(gridDim.x) * blockDim.x) {
    double t = 0;
    for (int64_t w = 0; w < s.warps; ++w) t += s.part[w * cols + c];
    out[c] = t;
  }
}

// Argmax (first maximum) of a warp-distributed row.
template <typename T>
__device__ int64_t warp_argmax(const T* row, int64_t cols) {
  T best = row[0];
  int64_t arg = 0;
  for (int64_t c = lane(); c < cols; c += 32) {
    if (row[c] > best || (row[c] == best && c < arg)) { best = row[c]; arg = c; }
  }
  for (int o = 16; o > 0; o /= 2) {
    const T ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t oa = __shfl_xor_sync(0xffffffffu, arg, o);
    if (ob > best || (ob == best && oa < arg)) { best = ob; arg = oa; }
  }
  return arg;
}

// One warp per row, one lane per column: `elem(acc, ic, part_c)` receives
// acc = (S z)[i, c], the flat index ic = i * cols + c and the warp's partial
// sum of column c (zeroed here) for the per-column reductions.
template <typename T, typename Elem>
__device__ void sweep_rows(const Csr<T>& g, int64_t cols, const T* z, const State& s, Elem elem) {
  double* part = s.part + warp_id() * cols;
  for (int64_t c = lane(); c < cols; c += 32) part[c] = 0;
  for (int64_t i = warp_id(); i < g.n; i += s.warps) {
    for (int64_t c = lane(); c < cols; c += 32) {
      T acc = 0;
      gather_row<false>(g, i, z, cols, c, 1, &acc);
      elem(acc, i * cols + c, part[c]);
    }
  }
}

template <typename T>
__global__ void matvec_kernel(Csr<T> g, int64_t cols, T alpha, const T* p, T* q, State s) {
  if (*s.done) return;
  sweep_rows(g, cols, p, s, [&](T acc, int64_t ic, double& part) { q[ic] = cg_matvec_elem(alpha, acc, p[ic], part); });
}

template <typename T>
__global__ void update_kernel(int64_t n, int64_t cols, T* x, T* r, const T* p, const T* q, State s) {
  if (*s.done) return;
  double* part = s.part + warp_id() * cols;
  for (int64_t c = lane(); c < cols; c += 32) part[c] = 0;
  for (int64_t i = warp_id(); i < n; i += s.warps) {
    for (int64_t c = lane(); c < cols; c += 32) {
      const int64_t e = i * cols + c;
      cg_update_elem(T(s.col[c].a), p[e], q[e], x[e], r[e], part[c]);
    }
  }
}

template <typename T>
__global__ void direction_kernel(int64_t n, int64_t cols, T* p, const T* r, State s) {
  if (*s.done) return;
  for (int64_t i = warp_id(); i < n; i += s.warps) {
    for (int64_t c = lane(); c < cols; c += 32) p[i * cols + c] = r[i * cols + c] + T(s.col[c].b) * p[i * cols + c];
  }
}

// Per-column CG scalars (one thread: C scalar updates are negligible).
__global__ void cg_scalars_kernel(int64_t cols, int phase, double tol, int64_t step, State s) {
  if (*s.done) return;
  int any = 0;
  for (int64_t c = 0; c < cols; ++c) {
    if (phase == 0) cg_init(s.col[c], s.total[c], tol);
    else if (phase == 1) cg_step(s.col[c], s.total[c]);
    else cg_direction(s.col[c], s.total[c]);
    any |= s.col[c].active;
  }
  if (phase == 2) s.stats[0] = step + 1;
  if (!any) *s.done = 1;
}

__global__ void cg_residual_kernel(int64_t cols, State s, double* residual) {
  for (int64_t c = 0; c < cols; ++c) residual[c] = cg_residual(s.col[c]);
}

template <typename T>
__global__ void zhou_kernel(Csr<T> g, int64_t cols, T alpha, const T* y, const T* zc, T* zn, State s) {
  if (*s.done) return;
  sweep_rows(g, cols, zc, s,
             [&](T acc, int64_t ic, double& part) { zn[ic] = zhou_elem(alpha, acc, y[ic], zc[ic], part); });
}

// Rows whose argmax differs between the last two iterates (z0, z1), per warp.
template <typename T>
__global__ void flips_kernel(int64_t n, int64_t cols, const T* z0, const T* z1, State s) {
  long long flips = 0;
  for (int64_t i = warp_id(); i < n; i += s.warps) {
    flips += warp_argmax(z0 + i * cols, cols) != warp_argmax(z1 + i * cols, cols);
  }
  if (lane() == 0) s.flip[warp_id()] = flips;
}

__global__ void zhou_check_kernel(int64_t cols, double tol, int64_t step, State s, double* residual) {
  if (*s.done) return;
  bool converged = true;
  for (int64_t c = 0; c < cols; ++c) {
    const double yn = sqrt(s.yy[c]), dn = sqrt(s.total[c]);
    residual[c] = yn > 0 ? dn / yn : 0.0;
    converged &= !(yn > 0) || dn < tol * yn;
  }
  s.stats[0] = step + 1;
  if (converged) *s.done = 1;
}

__global__ void flips_total_kernel(State s) {
  long long f = 0;
  for (int64_t w = 0; w < s.warps; ++w) f += s.flip[w];
  s.stats[1] = s.stats[0] > 0 ? f : 0;
}

template <typename T>
__global__ void post_kernel(Csr<T> g, PostArgs<T> a) {
  const int64_t cols = a.cols;
  for (int64_t i = warp_id(); i < g.n; i += int64_t(gridDim.x) * kWarps) {
    const T* z = a.z + i * cols;
    RowStats<T> st;
    for (int64_t c = lane(); c < cols; c += 32) row_stats_elem(st, z[c], c);
    for (int o = 16; o > 0; o /= 2) {
      RowStats<T> other;
      other.l1 = __shfl_xor_sync(0xffffffffu, st.l1, o);
      other.zlogz = __shfl_xor_sync(0xffffffffu, st.zlogz, o);
      other.top = __shfl_xor_sync(0xffffffffu, st.top, o);
      other.arg = __shfl_xor_sync(0xffffffffu, st.arg, o);
      row_stats_merge(st, other);
    }
    const int64_t gi = a.given[i];
    const RowOut<T> out = row_finish(st, gi >= 0 ? z[gi] : T(0), cols);
    T* oos = a.oos + i * cols;
    T sum = 0;
    for (int64_t c = lane(); c < cols; c += 32) {
      a.scores[i * cols + c] = (z[c] > T(0) ? z[c] : T(0)) * out.inv_l1;
      T acc = 0;
      gather_row<true>(g, i, a.z_ext, cols, c, 1, &acc);
      acc = acc > T(0) ? acc : T(0);
      oos[c] = acc;
      sum += acc;
    }
    for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const T inv = sum > T(0) ? T(1) / sum : T(0);
    for (int64_t c = lane(); c < cols; c += 32) oos[c] *= inv;
    if (lane() == 0) {
      a.labels[i] = st.arg;
      a.confidence[i] = out.confidence;
      a.weight[i] = out.weight;
      a.margin[i] = out.margin;
    }
  }
}

int blocks_for(int64_t n) { return int(std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks, (n + kWarps - 1) / kWarps))); }

// Scratch of one solve, stream-ordered (cudaMallocAsync), freed before returning.
struct Scratch {
  cudaStream_t st;
  void* mem = nullptr;
  State s{};
  Scratch(int64_t cols, int64_t warps, cudaStream_t stream) : st(stream) {
    const size_t part = size_t(warps * cols) * 8, vec = size_t(cols) * 8, colb = size_t(cols) * sizeof(Column);
    const size_t bytes = part + 2 * vec + colb + size_t(warps) * 8 + 16 + 16;
    cuda::check(cudaMallocAsync(&mem, bytes, st), "propagate scratch");
    cuda::check(cudaMemsetAsync(mem, 0, bytes, st), "propagate scratch");
    char* m = static_cast<char*>(mem);
    s.part = reinterpret_cast<double*>(m); m += part;
    s.total = reinterpret_cast<double*>(m); m += vec;
    s.yy = reinterpret_cast<double*>(m); m += vec;
    s.col = reinterpret_cast<Column*>(m); m += colb;
    s.flip = reinterpret_cast<long long*>(m); m += size_t(warps) * 8;
    s.stats = reinterpret_cast<long long*>(m); m += 16;
    s.done = reinterpret_cast<int*>(m);
    s.warps = warps;
  }
  ~Scratch() { cudaFreeAsync(mem, st); }
  void read_stats(long long* host) {
    cuda::check(cudaMemcpyAsync(host, s.stats, 16, cudaMemcpyDeviceToHost, st), "propagate stats");
    cuda::check(cudaStreamSynchronize(st), "propagate");
  }
};

template <typename T>
int64_t cg_launch(const Csr<T>& g, const CgArgs<T>& a, uintptr_t stream) {
  auto st = reinterpret_cast<cudaStream_t>(stream);
  const int blocks = blocks_for(g.n);
  const int64_t cols = a.cols;
  Scratch sc(cols, int64_t(blocks) * kWarps, st);
  const State s = sc.s;
  const T al = T(a.alpha);
  init_kernel<<<blocks, kThreads, 0, st>>>(g.n, cols, a.r, a.p, a.x, s);
  reduce_kernel<<<1, 256, 0, st>>>(cols, s, s.total);
  cg_scalars_kernel<<<1, 1, 0, st>>>(cols, 0, a.tol, 0, s);
  for (int64_t step = 0; step < a.max_iter; ++step) {
    matvec_kernel<<<blocks, kThreads, 0, st>>>(g, cols, al, a.p, a.q, s);
    reduce_kernel<<<1, 256, 0, st>>>(cols, s, s.total);
    cg_scalars_kernel<<<1, 1, 0, st>>>(cols, 1, a.tol, step, s);
    update_kernel<<<blocks, kThreads, 0, st>>>(g.n, cols, a.x, a.r, a.p, a.q, s);
    reduce_kernel<<<1, 256, 0, st>>>(cols, s, s.total);
    cg_scalars_kernel<<<1, 1, 0, st>>>(cols, 2, a.tol, step, s);
    direction_kernel<<<blocks, kThreads, 0, st>>>(g.n, cols, a.p, a.r, s);
  }
  cg_residual_kernel<<<1, 1, 0, st>>>(cols, s, a.residual);
  cuda::check(cudaGetLastError(), "propagate cg launch");
  long long stats[2];
  sc.read_stats(stats);
  return stats[0];
}

template <typename T>
std::pair<int64_t, int64_t> iterate_launch(const Csr<T>& g, const IterArgs<T>& a, uintptr_t stream) {
  auto st = reinterpret_cast<cudaStream_t>(stream);
  const int blocks = blocks_for(g.n);
  const int64_t cols = a.cols;
  Scratch sc(cols, int64_t(blocks) * kWarps, st);
  const State s = sc.s;
  const T al = T(a.alpha);
  cuda::check(cudaMemsetAsync(a.residual, 0, size_t(cols) * 8, st), "propagate residual");
  init_kernel<<<blocks, kThreads, 0, st>>>(g.n, cols, a.y, a.z0, static_cast<T*>(nullptr), s);
  reduce_kernel<<<1, 256, 0, st>>>(cols, s, s.yy);
  for (int64_t step = 0; step < a.max_iter; ++step) {
    const T* zc = step % 2 ? a.z1 : a.z0;
    T* zn = step % 2 ? a.z0 : a.z1;
    zhou_kernel<<<blocks, kThreads, 0, st>>>(g, cols, al, a.y, zc, zn, s);
    reduce_kernel<<<1, 256, 0, st>>>(cols, s, s.total);
    zhou_check_kernel<<<1, 1, 0, st>>>(cols, a.tol, step, s, a.residual);
  }
  flips_kernel<<<blocks, kThreads, 0, st>>>(g.n, cols, static_cast<const T*>(a.z0), static_cast<const T*>(a.z1), s);
  flips_total_kernel<<<1, 1, 0, st>>>(s);
  cuda::check(cudaGetLastError(), "propagate iterate launch");
  long long stats[2];
  sc.read_stats(stats);
  return {stats[0], stats[1]};
}

template <typename T>
void post_launch(const Csr<T>& g, const PostArgs<T>& a, uintptr_t stream) {
  if (g.n == 0) return;
  auto st = reinterpret_cast<cudaStream_t>(stream);
  const int blocks = int(std::min<int64_t>((g.n + kWarps - 1) / kWarps, 65535));
  post_kernel<<<blocks, kThreads, 0, st>>>(g, a);
  cuda::check(cudaGetLastError(), "propagate post launch");
}

}  // namespace

int64_t cg_cuda(const Csr<float>& g, const CgArgs<float>& a, uintptr_t s) { return cg_launch(g, a, s); }
int64_t cg_cuda(const Csr<double>& g, const CgArgs<double>& a, uintptr_t s) { return cg_launch(g, a, s); }
std::pair<int64_t, int64_t> iterate_cuda(const Csr<float>& g, const IterArgs<float>& a, uintptr_t s) {
  return iterate_launch(g, a, s);
}
std::pair<int64_t, int64_t> iterate_cuda(const Csr<double>& g, const IterArgs<double>& a, uintptr_t s) {
  return iterate_launch(g, a, s);
}
void post_cuda(const Csr<float>& g, const PostArgs<float>& a, uintptr_t s) { post_launch(g, a, s); }
void post_cuda(const Csr<double>& g, const PostArgs<double>& a, uintptr_t s) { post_launch(g, a, s); }

}  // namespace propagate
}  // namespace pysd
