// CPU helpers: vector math declarations and runtime ISA dispatch.
#pragma once

// glibc's libmvec ships SSE/AVX2/AVX-512 variants of these (x86-64 vector
// function ABI).  math.h only advertises them under -ffast-math; declaring
// the `simd` attribute here lets `#pragma omp simd` loops call them while the
// kernels keep IEEE semantics for inf and NaN.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
extern "C" {
__attribute__((simd("notinbranch"))) float expf(float) noexcept;
__attribute__((simd("notinbranch"))) float logf(float) noexcept;
__attribute__((simd("notinbranch"))) double exp(double) noexcept;
__attribute__((simd("notinbranch"))) double log(double) noexcept;
}
// Hot row functions are compiled once per ISA and picked at load time (ifunc).
// Clones are named by ISA feature, never by "arch=": GCC resolves "arch=haswell"
// with __builtin_cpu_is, which is false on every AMD CPU, so AVX2 EPYCs ran the
// SSE2 scalar path (4x slower).  PYSD_ISA_ACTIVE mirrors the resolver's choice.
#define PYSD_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define PYSD_ISA_PATHS "avx512f,avx2,sse2"
#define PYSD_ISA_ACTIVE                                                   \
  (__builtin_cpu_supports("avx512f") ? "avx512f"                          \
                                     : __builtin_cpu_supports("avx2") ? "avx2" : "sse2")
#else
#define PYSD_ISA_CLONES
#define PYSD_ISA_PATHS "default"
#define PYSD_ISA_ACTIVE "default"
#endif

#define PYSD_INLINE inline __attribute__((always_inline))
