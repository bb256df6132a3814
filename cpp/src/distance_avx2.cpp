// AVX2 + FMA kernels. This file alone is compiled with -mavx2 -mfma; it is only
// called after the dispatcher has checked the CPU supports both.
#include <immintrin.h>

#include "distance_kernels.h"
#include "simd_avx2.h"

namespace sparknn::kernels_avx2 {

float l2sq(const float* a, const float* b, size_t dim) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= dim; i += 16) {
        const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        acc0 = _mm256_fmadd_ps(d0, d0, acc0);
        acc1 = _mm256_fmadd_ps(d1, d1, acc1);
    }
    for (; i + 8 <= dim; i += 8) {
        const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        acc0 = _mm256_fmadd_ps(d, d, acc0);
    }
    float sum = hsum(_mm256_add_ps(acc0, acc1));
    for (; i < dim; ++i) {
        const float d = a[i] - b[i];
        sum += d * d;
    }
    return sum;
}

float dot(const float* a, const float* b, size_t dim) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= dim; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    for (; i + 8 <= dim; i += 8) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    }
    float sum = hsum(_mm256_add_ps(acc0, acc1));
    for (; i < dim; ++i) sum += a[i] * b[i];
    return sum;
}

// Four rows at once, each accumulated exactly as l2sq / dot accumulate one
// (the same lanes, the same order, the same scalar tail), so the results are the same bits.
template <bool kL2>
void x4(const float* a, const float* const* b, size_t dim, float* out) {
    __m256 acc0[4], acc1[4];
    for (int t = 0; t < 4; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= dim; i += 16) {
        const __m256 a0 = _mm256_loadu_ps(a + i), a1 = _mm256_loadu_ps(a + i + 8);
        for (int t = 0; t < 4; ++t) {
            acc0[t] = term<kL2>(a0, _mm256_loadu_ps(b[t] + i), acc0[t]);
            acc1[t] = term<kL2>(a1, _mm256_loadu_ps(b[t] + i + 8), acc1[t]);
        }
    }
    for (; i + 8 <= dim; i += 8) {
        const __m256 a0 = _mm256_loadu_ps(a + i);
        for (int t = 0; t < 4; ++t) acc0[t] = term<kL2>(a0, _mm256_loadu_ps(b[t] + i), acc0[t]);
    }
    for (int t = 0; t < 4; ++t) {
        float sum = hsum(_mm256_add_ps(acc0[t], acc1[t]));
        for (size_t j = i; j < dim; ++j) {
            if constexpr (kL2) {
                const float d = a[j] - b[t][j];
                sum += d * d;
            } else {
                sum += a[j] * b[t][j];
            }
        }
        out[t] = sum;
    }
}

void l2sq_x4(const float* a, const float* const* b, size_t dim, float* out) { x4<true>(a, b, dim, out); }
void dot_x4(const float* a, const float* const* b, size_t dim, float* out) { x4<false>(a, b, dim, out); }

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
