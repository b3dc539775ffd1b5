// CPU memory helpers shared by the launchers.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
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

}  // namespace cpu
}  // namespace pysd
