// Pieces shared by the AVX-512 kernel files (the float32 and the 16-bit ones).
// Include only from files compiled with -mavx512f.
#pragma once

#include <immintrin.h>

#include <cstddef>

namespace sparknn::kernels_avx512 {

// One step of an accumulation: acc + (a - b)^2 (kL2) or acc + a * b, fused.
template <bool kL2>
inline __m512 term(__m512 a, __m512 b, __m512 acc) {
    if constexpr (kL2) {
        const __m512 d = _mm512_sub_ps(a, b);
        return _mm512_fmadd_ps(d, d, acc);
    } else {
        return _mm512_fmadd_ps(a, b, acc);
    }
}

// The first n < 16 lanes.
inline __mmask16 mask_first(size_t n) { return static_cast<__mmask16>((1u << n) - 1u); }

// The accumulations below read the stored rows through a loader L: L::Value is
// the stored type, L::load(p) gives 16 values at p as float32, L::tail(p, n)
// the last n < 16 with zeros after them (a zero adds nothing to either sum).
// The query a is always float32; its tail is a masked load.

// sum (a - b)^2 (kL2) or sum a * b over dim values: 32 per step into acc0 and
// acc1, then 16 into acc0, then the tail into acc1. rows4 keeps this order.
template <class L, bool kL2>
inline float row(const float* a, const typename L::Value* b, size_t dim) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        acc0 = term<kL2>(_mm512_loadu_ps(a + i), L::load(b + i), acc0);
        acc1 = term<kL2>(_mm512_loadu_ps(a + i + 16), L::load(b + i + 16), acc1);
    }
    for (; i + 16 <= dim; i += 16) acc0 = term<kL2>(_mm512_loadu_ps(a + i), L::load(b + i), acc0);
    if (i < dim) acc1 = term<kL2>(_mm512_maskz_loadu_ps(mask_first(dim - i), a + i), L::tail(b + i, dim - i), acc1);
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

// Four rows at once, each accumulated exactly as row accumulates one (the
// same lanes, the same order), so the results are the same bits.
template <class L, bool kL2>
inline void rows4(const float* a, const typename L::Value* const* b, size_t dim, float* out) {
    __m512 acc0[4], acc1[4];
    for (int t = 0; t < 4; ++t) acc0[t] = acc1[t] = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        const __m512 a0 = _mm512_loadu_ps(a + i), a1 = _mm512_loadu_ps(a + i + 16);
        for (int t = 0; t < 4; ++t) {
            acc0[t] = term<kL2>(a0, L::load(b[t] + i), acc0[t]);
            acc1[t] = term<kL2>(a1, L::load(b[t] + i + 16), acc1[t]);
        }
    }
    for (; i + 16 <= dim; i += 16) {
        const __m512 a0 = _mm512_loadu_ps(a + i);
        for (int t = 0; t < 4; ++t) acc0[t] = term<kL2>(a0, L::load(b[t] + i), acc0[t]);
    }
    if (i < dim) {
        const __m512 a0 = _mm512_maskz_loadu_ps(mask_first(dim - i), a + i);
        for (int t = 0; t < 4; ++t) acc1[t] = term<kL2>(a0, L::tail(b[t] + i, dim - i), acc1[t]);
    }
    for (int t = 0; t < 4; ++t) out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t]));
}

}  // namespace sparknn::kernels_avx512
