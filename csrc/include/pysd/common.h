// Shared definitions for the CPU and CUDA kernels: host/device qualifiers, the
// 16-bit float storage types and their conversions, and small numeric helpers.
// Everything here is framework-free so the same code runs in both launchers.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define PYSD_HD __host__ __device__ __forceinline__
#else
#define PYSD_HD inline __attribute__((always_inline))
#endif

namespace pysd {

// Storage-only 16-bit floats.  Math is always done in float; the conversions
// are bit-exact with PyTorch's (round to nearest even, NaN preserved), and are
// written branch-light so the CPU loops still vectorize.
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };

PYSD_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f; std::memcpy(&f, &u, 4); return f;
#endif
}
PYSD_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u; std::memcpy(&u, &f, 4); return u;
#endif
}

PYSD_HD float to_float(float x) { return x; }
PYSD_HD double to_float(double x) { return x; }
PYSD_HD float to_float(bf16_t x) { return bits_to_float(uint32_t(x.bits) << 16); }
PYSD_HD float to_float(f16_t x) {
  // Half to float by rebiasing the exponent; denormals through one float subtract.
  const uint32_t h = x.bits;
  uint32_t o = (h & 0x7fffu) << 13;
  const uint32_t exp = o & (0x7c00u << 13);
  o += (127u - 15u) << 23;
  if (exp == (0x7c00u << 13)) {
    o += (128u - 16u) << 23;  // inf / nan
  } else if (exp == 0) {
    o += 1u << 23;
    o = float_to_bits(bits_to_float(o) - bits_to_float(113u << 23));
  }
  return bits_to_float(o | ((h & 0x8000u) << 16));
}

template <typename T> PYSD_HD T from_float(float x);
template <> PYSD_HD float from_float<float>(float x) { return x; }
template <> PYSD_HD bf16_t from_float<bf16_t>(float x) {
  uint32_t u = float_to_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{uint16_t((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{uint16_t(u >> 16)};
}
template <> PYSD_HD f16_t from_float<f16_t>(float x) {
  uint32_t f = float_to_bits(x);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint32_t o;
  if (f >= ((127u + 16u) << 23)) {
    o = f > (255u << 23) ? 0x7e00u : 0x7c00u;  // overflow -> inf, nan stays nan
  } else if (f < (113u << 23)) {
    const float magic = bits_to_float(((127u - 15u) + (23u - 10u) + 1u) << 23);
    o = float_to_bits(bits_to_float(f) + magic) - float_to_bits(magic);
  } else {
    const uint32_t mant_odd = (f >> 13) & 1u;
    f += ((15u - 127u) << 23) + 0xfffu + mant_odd;
    o = f >> 13;
  }
  return f16_t{uint16_t(o | (sign >> 16))};
}

// Accumulation type: double for double inputs, float otherwise.
template <typename T> struct acc { using type = float; };
template <> struct acc<double> { using type = double; };
template <typename T> using acc_t = typename acc<T>::type;

template <typename T> PYSD_HD T from_acc(acc_t<T> x) { return from_float<T>(float(x)); }
template <> PYSD_HD double from_acc<double>(double x) { return x; }

// exp / log spelled per type so the CPU compiler maps them to vector variants.
#if defined(__CUDA_ARCH__)
PYSD_HD float fexp(float x) { return expf(x); }
PYSD_HD float fexp_le0(float x) { return expf(x); }
#else
// Inline float exp for the CPU vector loops: a call into libmvec clobbers every
// vector register, so a loop with two calls spends more time spilling than in
// exp itself.  exp(x) = 2^k exp(r), k = round(x / ln 2), |r| <= ln 2 / 2, and a
// degree-6 minimax polynomial for exp(r): relative error under 1 float eps over
// the whole range (tests/test_fexp.py).  k is rounded by adding 1.5 * 2^23, which leaves
// it in the low mantissa bits: no float-to-int conversion in the dependency
// chain.  Results below 2^-126 flush to 0 (softmax terms that small are
// invisible next to the row's largest term, which is 1); +inf above 88.72,
// NaN stays NaN.
template <bool TOP = false>
PYSD_HD float exp_poly(float xc) {  // xc within [-87.34, 88.72]; TOP: xc may exceed 127.5 ln 2
  const float shift = 12582912.0f;  // 1.5 * 2^23
  const float t = xc * 1.44269504f + shift;
  const float k = t - shift;
  float r = xc - k * 0.693145751953125f;  // ln 2 split in two for an exact k * ln2
  r = r - k * 1.428606765330187e-06f;
  float p = 0.0013843653723597527f;
  p = p * r + 0.00837415549904108f;
  p = p * r + 0.04166800156235695f;
  p = p * r + 0.16666431725025177f;
  p = p * r + 0.4999999403953552f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t e = float_to_bits(t) - 0x4B400000u + 127u;  // biased exponent of 2^k
  if (!TOP) return p * bits_to_float(e << 23);
  // k = 128 for xc in (88.38, 88.72]: 2^128 is not a float, so scale by 2^127 and then by 2.
  const bool top = e > 254u;
  return p * bits_to_float((top ? e - 1u : e) << 23) * (top ? 2.0f : 1.0f);
}
PYSD_HD float fexp(float x) {
  const float lo = -87.336544f, hi = 88.72283f;
  const float e = exp_poly<true>(x < lo ? lo : (x > hi ? hi : x));
  return x < lo ? 0.0f : (x > hi ? INFINITY : e);
}
// exp of a shifted softmax term x = (s - max) / T <= 0 (or NaN): without the
// overflow branches the vector loop carries half the blends of fexp.
PYSD_HD float fexp_le0(float x) {
  const float lo = -87.336544f;
  const float e = exp_poly(x < lo ? lo : x);
  return x < lo ? 0.0f : e;
}
#endif
PYSD_HD double fexp_le0(double x) { return exp(x); }
PYSD_HD double fexp(double x) { return exp(x); }
PYSD_HD float flog(float x) { return logf(x); }
PYSD_HD double flog(double x) { return log(x); }

template <typename A> PYSD_HD A neg_inf() { return -INFINITY; }

// x * log(y) with the convention 0 * log(anything) = 0 (as torch.xlogy).
template <typename A> PYSD_HD A xlogy(A x, A y) { return x == A(0) ? A(0) : x * flog(y); }

}  // namespace pysd
