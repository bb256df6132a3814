// Scalar conversions between float32 and the two 16-bit formats, rounding to
// nearest even (as F16C's vcvtps2ph does), subnormals included. The SIMD
// kernels must agree with these bit for bit; tests compare them.
#pragma once

#include <cstdint>
#include <cstring>

namespace sparknn::half {

inline uint32_t bits_of(float f) {
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    return x;
}
inline float float_of(uint32_t x) {
    float f;
    std::memcpy(&f, &x, sizeof f);
    return f;
}

// Rounds the integer m / 2^shift (shift >= 1) to nearest, ties to even.
inline uint32_t round_shift(uint32_t m, uint32_t shift) {
    const uint32_t result = m >> shift, rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    return result + (rest > half || (rest == half && (result & 1u)) ? 1u : 0u);
}

inline uint16_t fp16_from_float(float f) {
    const uint32_t x = bits_of(f);
    const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) return sign | 0x7E00u;             // NaN (quiet)
    if (ax >= 0x477FF000u) return sign | 0x7C00u;            // >= 65520 rounds to inf
    if (ax >= 0x38800000u) {                                 // a normal half: re-bias 127 -> 15
        return sign | static_cast<uint16_t>(round_shift(ax - 0x38000000u, 13));  // a carry bumps the exponent
    }
    const uint32_t e = ax >> 23;  // a half subnormal (or zero): units of 2^-24
    if (e < 102) return sign;     // below 2^-25: rounds to zero
    return sign | static_cast<uint16_t>(round_shift((ax & 0x7FFFFFu) | 0x800000u, 126 - e));
}

inline float fp16_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float
        const float v = static_cast<float>(m) * 0x1p-24f;
        return float_of(bits_of(v) | sign);
    }
    if (e == 31) return float_of(sign | 0x7F800000u | (m << 13));
    return float_of(sign | ((e + 112) << 23) | (m << 13));
}

inline uint16_t bf16_from_float(float f) {
    const uint32_t x = bits_of(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // NaN stays NaN
    return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);  // overflow carries into inf
}

inline float bf16_to_float(uint16_t h) { return float_of(static_cast<uint32_t>(h) << 16); }

}  // namespace sparknn::half
