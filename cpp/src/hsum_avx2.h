// The horizontal sum of an AVX register, shared by the AVX2 kernel files (the
// float32 and the 16-bit ones). Include only from files compiled with -mavx2.
#pragma once

#include <immintrin.h>

namespace sparknn::kernels_avx2 {

inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

}  // namespace sparknn::kernels_avx2
