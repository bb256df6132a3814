// AVX2 + FMA kernels. This file alone is compiled with -mavx2 -mfma; it is only
// called after the dispatcher has checked the CPU supports both.
#include <immintrin.h>

#include "distance_kernels.h"
#include "simd_avx2.h"

namespace sparknn::kernels_avx2 {
namespace {

struct F32 {
    using Value = float;
    static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
    static float one(float v) { return v; }
};

}  // namespace

float l2sq(const float* a, const float* b, size_t dim) { return row<F32, true>(a, b, dim); }
float dot(const float* a, const float* b, size_t dim) { return row<F32, false>(a, b, dim); }
void l2sq_x4(const float* a, const float* const* b, size_t dim, float* out) { rows4<F32, true>(a, b, dim, out); }
void dot_x4(const float* a, const float* const* b, size_t dim, float* out) { rows4<F32, false>(a, b, dim, out); }

// Eight sub-quantizers per step: their codes widened to 32-bit lanes, offset
// to rows j * 256 of the table, and looked up with one gather.
void pq_scan(const float* table, const uint8_t* codes, size_t n, size_t m, float offset, float* out) {
    const __m256i rows = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(256));
    for (size_t r = 0; r < n; ++r) {
        const uint8_t* code = codes + r * m;
        __m256 acc = _mm256_setzero_ps();
        size_t j = 0;
        for (; j + 8 <= m; j += 8) {
            long long bytes;
            __builtin_memcpy(&bytes, code + j, 8);
            const __m256i c = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes));
            const __m256i idx = _mm256_add_epi32(c, rows);
            acc = _mm256_add_ps(acc, _mm256_i32gather_ps(table + j * 256, idx, 4));
        }
        float tail = 0;
        for (; j < m; ++j) tail += table[j * 256 + code[j]];
        out[r] = offset + (hsum(acc) + tail);
    }
}

}  // namespace sparknn::kernels_avx2
