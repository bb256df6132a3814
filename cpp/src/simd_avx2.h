// Pieces shared by the AVX2 kernel files (the float32 and the 16-bit ones).
// Include only from files compiled with -mavx2 -mfma.
#pragma once

#include <immintrin.h>

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

}  // namespace sparknn::kernels_avx2
