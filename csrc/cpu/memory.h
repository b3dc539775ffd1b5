// CPU memory helpers shared by the launchers.
#pragma once

#include <cstddef>
#include <cstdint>

#include <algorithm>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#endif

namespace pysd {
namespace cpu {

// Fresh output buffers (torch.empty) are untouched anonymous memory: the first
// write faults every 4 KiB page in, which for a (1024, 32000) float gradient
// costs more than the kernel itself.  Asking for transparent huge pages on the
// buffer's interior cuts the faults 512-fold.  Advisory only: errors (no THP,
// not anonymous memory) are ignored and change nothing but speed.
inline void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (p == nullptr || bytes < 2 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

// A gradient row is written once and never read back by the kernel, so
// streaming stores skip the read-for-ownership of every cache line: a quarter
// of the DRAM traffic of a float row.  The row is staged in an L2-resident
// scratch row and leaves with `stream_copy`; stream_rows() says whether that
// pays (an AVX or AVX-512 CPU), else the kernels write the row directly.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// The head and tail of the row go through plain stores; the aligned middle streams.
__attribute__((target("avx512f"))) inline void stream_copy_avx512(float* dst, const float* src, int64_t n) {
  int64_t j = 0;
  for (; j < n && (reinterpret_cast<uintptr_t>(dst + j) & 63) != 0; ++j) dst[j] = src[j];
  for (; j + 16 <= n; j += 16) _mm512_stream_ps(dst + j, _mm512_loadu_ps(src + j));
  for (; j < n; ++j) dst[j] = src[j];
  _mm_sfence();
}
__attribute__((target("avx"))) inline void stream_copy_avx(float* dst, const float* src, int64_t n) {
  int64_t j = 0;
  for (; j < n && (reinterpret_cast<uintptr_t>(dst + j) & 31) != 0; ++j) dst[j] = src[j];
  for (; j + 8 <= n; j += 8) _mm256_stream_ps(dst + j, _mm256_loadu_ps(src + j));
  for (; j < n; ++j) dst[j] = src[j];
  _mm_sfence();
}
inline bool stream_rows() {
  static const bool ok = __builtin_cpu_supports("avx");
  return ok;
}
inline void stream_copy(float* dst, const float* src, int64_t n) {
  static const bool wide = __builtin_cpu_supports("avx512f");
  if (wide) {
    stream_copy_avx512(dst, src, n);
  } else {
    stream_copy_avx(dst, src, n);
  }
}
#else
inline bool stream_rows() { return false; }
inline void stream_copy(float* dst, const float* src, int64_t n) { std::copy(src, src + n, dst); }
#endif

}  // namespace cpu
}  // namespace pysd
