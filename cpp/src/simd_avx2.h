// Pieces shared by the AVX2 kernel files (the float32 and the 16-bit ones).
// Include only from files compiled with -mavx2 -mfma.
#pragma once

#include <immintrin.h>

#include <cstddef>

namespace sparknn::kernels_avx2 {

// The horizontal sum of an AVX register.
inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

// One step of an accumulation: acc + (a - b)^2 (kL2) or acc + a * b, fused.
template <bool kL2>
inline __m256 term(__m256 a, __m256 b, __m256 acc) {
    if constexpr (kL2) {
        const __m256 d = _mm256_sub_ps(a, b);
        return _mm256_fmadd_ps(d, d, acc);
    } else {
        return _mm256_fmadd_ps(a, b, acc);
    }
}

// The accumulations below read the stored rows through a loader L: L::Value is
// the stored type, L::load(p) gives 8 values at p as float32, L::one(v) one
// value (for the scalar tail).

// sum, plus the terms of values i..dim-1 (fewer than 8) one at a time, in order.
// Left to the compiler: GCC vectorises part of the float32 tail (products, then
// ordered adds) but fuses each 16-bit term, so the two can differ in the last bit.
template <class L, bool kL2>
inline float scalar_tail(float sum, const float* a, const typename L::Value* b, size_t i, size_t dim) {
    for (; i < dim; ++i) {
        const float v = L::one(b[i]);
        if constexpr (kL2) {
            const float d = a[i] - v;
            sum += d * d;
        } else {
            sum += a[i] * v;
        }
    }
    return sum;
}

// sum (a - b)^2 (kL2) or sum a * b over dim values: 16 per step into acc0 and
// acc1, then 8 into acc0, then the scalar tail. rows4 keeps this order.
template <class L, bool kL2>
inline float row(const float* a, const typename L::Value* b, size_t dim) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= dim; i += 16) {
        acc0 = term<kL2>(_mm256_loadu_ps(a + i), L::load(b + i), acc0);
        acc1 = term<kL2>(_mm256_loadu_ps(a + i + 8), L::load(b + i + 8), acc1);
    }
    for (; i + 8 <= dim; i += 8) acc0 = term<kL2>(_mm256_loadu_ps(a + i), L::load(b + i), acc0);
    return scalar_tail<L, kL2>(hsum(_mm256_add_ps(acc0, acc1)), a, b, i, dim);
}

// Four rows at once, each accumulated exactly as row accumulates one (the same
// lanes, the same order, the same scalar tail), so the results are the same bits.
template <class L, bool kL2>
inline void rows4(const float* a, const typename L::Value* const* b, size_t dim, float* out) {
    __m256 acc0[4], acc1[4];
    for (int t = 0; t < 4; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= dim; i += 16) {
        const __m256 a0 = _mm256_loadu_ps(a + i), a1 = _mm256_loadu_ps(a + i + 8);
        for (int t = 0; t < 4; ++t) {
            acc0[t] = term<kL2>(a0, L::load(b[t] + i), acc0[t]);
            acc1[t] = term<kL2>(a1, L::load(b[t] + i + 8), acc1[t]);
        }
    }
    for (; i + 8 <= dim; i += 8) {
        const __m256 a0 = _mm256_loadu_ps(a + i);
        for (int t = 0; t < 4; ++t) acc0[t] = term<kL2>(a0, L::load(b[t] + i), acc0[t]);
    }
    for (int t = 0; t < 4; ++t) out[t] = scalar_tail<L, kL2>(hsum(_mm256_add_ps(acc0[t], acc1[t])), a, b[t], i, dim);
}

}  // namespace sparknn::kernels_avx2
