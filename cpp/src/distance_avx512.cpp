// AVX-512F kernels. This file alone is compiled with -mavx512f; the tail is a
// masked load, so odd dimensions need no scalar loop.
#include <immintrin.h>

#include "distance_kernels.h"
#include "simd_avx512.h"

namespace sparknn::kernels_avx512 {

float l2sq(const float* a, const float* b, size_t dim) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        const __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
        acc0 = _mm512_fmadd_ps(d0, d0, acc0);
        acc1 = _mm512_fmadd_ps(d1, d1, acc1);
    }
    for (; i + 16 <= dim; i += 16) {
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        acc0 = _mm512_fmadd_ps(d, d, acc0);
    }
    if (i < dim) {
        const __mmask16 m = static_cast<__mmask16>((1u << (dim - i)) - 1u);
        const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
        acc1 = _mm512_fmadd_ps(d, d, acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

float dot(const float* a, const float* b, size_t dim) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    }
    for (; i + 16 <= dim; i += 16) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    }
    if (i < dim) {
        const __mmask16 m = static_cast<__mmask16>((1u << (dim - i)) - 1u);
        acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

// Four rows at once, each accumulated exactly as l2sq / dot accumulate one
// (the same lanes, the same order), so the results are the same bits.
template <bool kL2>
void x4(const float* a, const float* const* b, size_t dim, float* out) {
    __m512 acc0[4], acc1[4];
    for (int t = 0; t < 4; ++t) acc0[t] = acc1[t] = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        const __m512 a0 = _mm512_loadu_ps(a + i), a1 = _mm512_loadu_ps(a + i + 16);
        for (int t = 0; t < 4; ++t) {
            acc0[t] = term<kL2>(a0, _mm512_loadu_ps(b[t] + i), acc0[t]);
            acc1[t] = term<kL2>(a1, _mm512_loadu_ps(b[t] + i + 16), acc1[t]);
        }
    }
    for (; i + 16 <= dim; i += 16) {
        const __m512 a0 = _mm512_loadu_ps(a + i);
        for (int t = 0; t < 4; ++t) acc0[t] = term<kL2>(a0, _mm512_loadu_ps(b[t] + i), acc0[t]);
    }
    if (i < dim) {
        const __mmask16 m = static_cast<__mmask16>((1u << (dim - i)) - 1u);
        const __m512 a0 = _mm512_maskz_loadu_ps(m, a + i);
        for (int t = 0; t < 4; ++t) acc1[t] = term<kL2>(a0, _mm512_maskz_loadu_ps(m, b[t] + i), acc1[t]);
    }
    for (int t = 0; t < 4; ++t) out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t]));
}

void l2sq_x4(const float* a, const float* const* b, size_t dim, float* out) { x4<true>(a, b, dim, out); }
void dot_x4(const float* a, const float* const* b, size_t dim, float* out) { x4<false>(a, b, dim, out); }

// Sixteen sub-quantizers per step: their codes widened to 32-bit lanes,
// offset to rows j * 256 of the table, and looked up with one gather; a last
// partial step gathers under a mask (its code bytes copied to a zeroed block).
void pq_scan(const float* table, const uint8_t* codes, size_t n, size_t m, float offset, float* out) {
    const __m512i rows = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(256));
    const size_t full = m / 16 * 16, rest = m - full;
    const __mmask16 tail_mask = static_cast<__mmask16>((1u << rest) - 1u);
    for (size_t r = 0; r < n; ++r) {
        const uint8_t* code = codes + r * m;
        __m512 acc = _mm512_setzero_ps();
        for (size_t j = 0; j < full; j += 16) {
            const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(code + j)));
            acc = _mm512_add_ps(acc, _mm512_i32gather_ps(_mm512_add_epi32(c, rows), table + j * 256, 4));
        }
        if (rest != 0) {
            alignas(16) uint8_t last[16] = {};
            for (size_t t = 0; t < rest; ++t) last[t] = code[full + t];
            const __m512i c = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(last)));
            acc = _mm512_add_ps(acc, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), tail_mask,
                                                                _mm512_add_epi32(c, rows), table + full * 256, 4));
        }
        out[r] = offset + _mm512_reduce_add_ps(acc);
    }
}

}  // namespace sparknn::kernels_avx512
