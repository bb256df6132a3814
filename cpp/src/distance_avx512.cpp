// AVX-512F kernels. This file alone is compiled with -mavx512f; the tail is a
// masked load, so odd dimensions need no scalar loop.
#include <immintrin.h>

#include "distance_kernels.h"
#include "simd_avx512.h"

namespace sparknn::kernels_avx512 {
namespace {

// Float32 rows: the tail is a masked load (no copy).
struct F32 {
    using Value = float;
    static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
    static __m512 tail(const float* p, size_t n) { return _mm512_maskz_loadu_ps(mask_first(n), p); }
};

}  // namespace

float l2sq(const float* a, const float* b, size_t dim) { return row<F32, true>(a, b, dim); }
float dot(const float* a, const float* b, size_t dim) { return row<F32, false>(a, b, dim); }
void l2sq_x4(const float* a, const float* const* b, size_t dim, float* out) { rows4<F32, true>(a, b, dim, out); }
void dot_x4(const float* a, const float* const* b, size_t dim, float* out) { rows4<F32, false>(a, b, dim, out); }

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
