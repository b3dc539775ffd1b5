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
// Clones are psABI levels, which GCC resolves by feature (__builtin_cpu_supports),
// never by processor name: "arch=haswell" goes through __builtin_cpu_is, false
// on every AMD CPU, so AVX2 EPYCs once ran the SSE2 clone (4x slower).  A level,
// not the bare "avx2" feature: that clone had no FMA, so every polynomial step of
// exp / log was a multiply and an add (x86-64-v3 = AVX2 + FMA + BMI2 + F16C).
// PYSD_ISA_ACTIVE mirrors the resolver's choice; isa_fma_probe shows what ran.
#define PYSD_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define PYSD_ISA_PATHS "x86-64-v4,x86-64-v3,x86-64"
#define PYSD_ISA_ACTIVE                                                                  \
  (__builtin_cpu_supports("x86-64-v4")   ? "x86-64-v4"                                   \
   : __builtin_cpu_supports("x86-64-v3") ? "x86-64-v3"                                   \
                                         : "x86-64")
#else
#define PYSD_ISA_CLONES
#define PYSD_ISA_PATHS "default"
#define PYSD_ISA_ACTIVE "default"
#endif

#define PYSD_INLINE inline __attribute__((always_inline))
